"""The runner's HTTP(S) staging against a real HTTP server on loopback (no Kotta service needed).

Users' URLs on loopback are refused unless the plan allows the network, so
the plan items here allow the test server's own address (127.0.0.1/32).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import requests
from s3server import HTTPFiles

from dask_kotta.runner import stage_in
from dask_kotta.runner.guard import Guard, guarded_session
from dask_kotta.runner.guard import networks as guard_networks
from dask_kotta.runner.stage_in import fetch_http, stage_inputs
from dask_kotta.transfer import common as staging
from dask_kotta.transfer.common import StagingError, http_session
from dask_kotta.urls import staged_name

pytestmark = pytest.mark.timeout(120)

BIG = 20 * 1024 * 1024 + 12345  # three parts and a bit
LOOPBACK = ["127.0.0.1/32"]


def user(url: str, allow: list[str] = LOOPBACK) -> dict:
    """A user's input as the server's plan hands it over, with the networks the policy allows."""
    return {"url": url, "name": staged_name(url), "allow_networks": allow}


def stage(urls: list[str], dest, **kw):
    return stage_inputs([user(u) for u in urls], dest, **kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-files")
    (root / "small.txt").write_bytes(b"hello staging\n")
    (root / "empty.bin").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    server = HTTPFiles(root).start()
    yield server
    server.stop()


def _md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_small_file_arrives_whole_in_one_request(files, tmp_path):
    files.hits.clear()
    with http_session() as s:
        n = fetch_http(files.url("/files/small.txt"), tmp_path / "small.txt", s)
    assert n == 14 and (tmp_path / "small.txt").read_bytes() == b"hello staging\n"
    assert len(files.hits) == 1


def test_large_file_comes_in_parallel_ranges(files, tmp_path):
    files.hits.clear()
    dest = tmp_path / "big.bin"
    with http_session() as s:
        assert fetch_http(files.url("/files/big.bin"), dest, s) == BIG
    assert _md5(dest) == _md5(files.root / "big.bin")
    ranges = sorted(r for _, r in files.hits)
    part = stage_in.PART_SIZE
    expected = sorted(f"bytes={i}-{min(i + part, BIG) - 1}" for i in range(0, BIG, part))
    expected[0] = f"bytes=0-{part - 1}"
    assert ranges == sorted(expected)


def test_server_without_ranges_sends_it_whole(files, tmp_path):
    dest = tmp_path / "big.bin"
    with http_session() as s:
        assert fetch_http(files.url("/plain/big.bin"), dest, s) == BIG
    assert _md5(dest) == _md5(files.root / "big.bin")


def test_empty_file(files, tmp_path):
    with http_session() as s:
        assert fetch_http(files.url("/files/empty.bin"), tmp_path / "e", s) == 0
    assert (tmp_path / "e").read_bytes() == b""


def test_redirects_are_followed_for_every_part(files, tmp_path):
    sizes = stage([files.url("/redirect/big.bin"), files.url("/redirect/small.txt")], tmp_path)
    assert sizes == {"big.bin": BIG, "small.txt": 14}
    assert _md5(tmp_path / "big.bin") == _md5(files.root / "big.bin")


@pytest.mark.parametrize("code", [404, 403, 410])
def test_4xx_fails_at_once_naming_url_and_status(files, tmp_path, code):
    url = files.url(f"/status/{code}/x.csv")
    files.hits.clear()
    with pytest.raises(StagingError) as e:
        stage([url], tmp_path)
    assert url in str(e.value) and f"HTTP {code}" in str(e.value)
    assert len(files.hits) == 1  # a client error is not retried


def test_5xx_is_retried_then_fails_naming_url_and_status(files, tmp_path):
    url = files.url("/status/500/x.csv")
    files.hits.clear()
    with pytest.raises(StagingError) as e:
        stage([url], tmp_path)
    assert url in str(e.value) and "HTTP 500" in str(e.value)
    assert len(files.hits) == staging.ATTEMPTS


def test_a_transient_503_is_retried(files, tmp_path):
    assert stage([files.url("/flaky/small.txt")], tmp_path) == {"small.txt": 14}


def test_read_timeout_fails_instead_of_hanging(files, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_KOTTA_STAGING_TIMEOUT_S", "0.5")
    monkeypatch.setattr(staging, "ATTEMPTS", 2)
    url = files.url("/slow/x.csv")
    t0 = time.monotonic()
    with pytest.raises(StagingError) as e:
        stage([url], tmp_path)
    assert "timed out" in str(e.value) and url in str(e.value)
    assert time.monotonic() - t0 < 10


def test_connection_refused_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "ATTEMPTS", 1)
    from kotta_testing import free_port

    url = f"http://127.0.0.1:{free_port()}/data.csv"
    with pytest.raises(StagingError) as e:
        stage([url], tmp_path)
    assert url in str(e.value) and "cannot connect" in str(e.value)


def test_first_failure_in_input_order_is_reported(files, tmp_path):
    ok, bad = files.url("/files/small.txt"), files.url("/status/404/missing.csv")
    with pytest.raises(StagingError) as e:
        stage([ok, bad], tmp_path)
    assert "missing.csv" in str(e.value)


def test_unsupported_scheme_is_refused(tmp_path):
    with pytest.raises(StagingError, match="unsupported scheme 'ftp'"):
        stage_inputs(["ftp://host/file.txt"], tmp_path)


def test_input_names_stay_in_the_working_directory(files, tmp_path):
    from dask_kotta.errors import UnsafePathError

    with pytest.raises(UnsafePathError):
        stage_inputs([{"url": files.url("/files/small.txt"), "name": "../escape.txt"}], tmp_path)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_dispatch_headers_go_only_where_the_plan_says(files, tmp_path):
    seen = []
    orig = stage_in._http_get

    def spy(session, url, shown, headers, rng, *rest):
        seen.append((url, dict(headers)))
        return orig(session, url, shown, headers, rng, *rest)

    stage_in._http_get = spy
    try:
        plan = [
            {
                "url": "s3://b/a.txt",
                "name": "a.txt",
                "fetch": files.url("/files/small.txt"),
                "auth": "dispatch",
            },
            user(files.url("/files/empty.bin")),
        ]
        stage_inputs(plan, tmp_path, {"Authorization": "Bearer secret"})
    finally:
        stage_in._http_get = orig
    by_url = dict(seen)
    assert by_url[files.url("/files/small.txt")] == {"Authorization": "Bearer secret"}
    assert by_url[files.url("/files/empty.bin")] == {}
    assert (tmp_path / "a.txt").read_bytes() == b"hello staging\n"


# -- users' URLs may not lead into the service's network (SSRF) -------------------------------


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second server, on 127.0.0.2: the one address a plan allows in the tests below."""
    root = tmp_path_factory.mktemp("http-other")
    (root / "ok.txt").write_bytes(b"allowed host\n")
    server = HTTPFiles(root, host="127.0.0.2").start()
    yield server
    server.stop()


def test_a_loopback_url_is_refused_unless_allowed(files, tmp_path):
    url = files.url("/files/small.txt")
    files.hits.clear()
    for plan in ([url], [user(url, allow=[])], [user(url, allow=["127.0.0.2/32"])]):
        with pytest.raises(StagingError) as e:
            stage_inputs(plan, tmp_path)
        assert url in str(e.value) and "loopback" in str(e.value) and "127.0.0.1" in str(e.value)
        assert "allow_input_networks" in str(e.value)
    assert files.hits == []  # never connected
    assert not (tmp_path / "small.txt").exists()


def test_every_redirect_is_checked_and_the_refused_hop_is_never_contacted(files, other, tmp_path):
    files.hits.clear()
    inside = files.url("/files/small.txt")
    for target in (inside, "http://169.254.169.254/latest/meta-data/iam/x.json"):
        url = other.url(f"/goto/x.txt?to={target}")
        with pytest.raises(StagingError) as e:
            stage_inputs([user(url, allow=["127.0.0.2/32"])], tmp_path)
        why = str(e.value)
        blocked = "127.0.0.1" if target == inside else "169.254.169.254"
        assert other.url("/goto/x.txt") in why and f"blocked address {blocked}" in why, why
        assert "?to=" not in why  # no query in a reason
    assert files.hits == []
    # A redirect within the allowed host is followed, and its parts come from there too.
    ok = other.url("/goto/ok.txt?to=/files/ok.txt")
    assert stage_inputs([user(ok, allow=["127.0.0.2/32"])], tmp_path) == {"ok.txt": 13}


def test_a_name_that_resolves_to_loopback_is_refused_then_pinned_when_allowed(files, tmp_path):
    port = files.server.server_address[1]
    url = f"http://localhost:{port}/files/small.txt"
    with pytest.raises(StagingError, match="localhost resolves to .*loopback"):
        stage_inputs([user(url, allow=[])], tmp_path)
    # Allowed: the connection goes to a checked address, by name (Host: localhost:PORT).
    n = stage_inputs([user(url, allow=["127.0.0.0/8", "::1/128"])], tmp_path)
    assert n == {"small.txt": 14}


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]", "[::1]"]
)
def test_other_spellings_of_loopback_are_refused(files, tmp_path, host):
    port = files.server.server_address[1]
    with pytest.raises(StagingError, match="loopback"):
        stage_inputs([user(f"http://{host}:{port}/files/small.txt", allow=[])], tmp_path)


def test_user_info_and_query_never_reach_the_reason(files, tmp_path):
    port = files.server.server_address[1]
    url = f"http://alice:hunter2@127.0.0.1:{port}/files/small.txt?X-Amz-Signature=s3cr3t"
    with pytest.raises(StagingError) as e:
        stage_inputs([user(url, allow=[])], tmp_path)
    assert "hunter2" not in str(e.value) and "s3cr3t" not in str(e.value)
    assert f"127.0.0.1:{port}/files/small.txt" in str(e.value)


def test_a_refusal_from_the_server_fails_the_input(tmp_path):
    item = {"url": "s3://b/k.txt", "name": "k.txt", "error": "input 's3://b/k.txt': not granted"}
    with pytest.raises(StagingError, match="not granted"):
        stage_inputs([item], tmp_path)


# -- the connection goes to the checked address; Host, SNI and the certificate keep the name --


def _pinned(host: str, ip: str) -> Guard:
    """A guard that has checked ``host`` (a name no resolver knows) as resolving to ``ip``."""
    import ipaddress

    g = Guard()
    g.addresses[host] = [ipaddress.ip_address(ip)]
    return g


def test_a_connection_goes_to_the_checked_address_not_to_a_new_lookup(files, tmp_path):
    # kotta.invalid never resolves: the fetch works only because the socket goes to the pin.
    port = files.server.server_address[1]
    url = f"http://kotta.invalid:{port}/files/small.txt"
    g = _pinned("kotta.invalid", "127.0.0.1")
    with guarded_session(g) as s:
        n = fetch_http(url, tmp_path / "small.txt", s, guard=(g, guard_networks(["127.0.0.1/32"])))
    assert n == 14
    # Unchecked, the same session connects nowhere.
    with guarded_session(Guard()) as s, pytest.raises(StagingError, match="was not checked"):
        fetch_http(url, tmp_path / "x", s)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """HTTPS on 127.0.0.1 with a self-signed certificate for the name kotta.invalid."""
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
         "-subj", "/CN=kotta.invalid", "-addext", "subjectAltName=DNS:kotta.invalid"],
        check=True, capture_output=True,
    )  # fmt: skip
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append((self.headers.get("Host"), self.request.server_hostname))
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"tls\n")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")

    def sni(sock, name, _ctx):
        sock.server_hostname = name

    ctx.sni_callback = sni
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, d / "cert.pem", seen
    server.shutdown()
    server.server_close()


def test_tls_to_a_pinned_address_verifies_the_name(tls_server):
    server, ca, seen = tls_server
    port = server.server_address[1]
    g = _pinned("kotta.invalid", "127.0.0.1")
    g.check(f"https://kotta.invalid:{port}/x", "x", guard_networks(["127.0.0.1/32"]))
    with guarded_session(g) as s:
        r = s.get(f"https://kotta.invalid:{port}/x", verify=str(ca), timeout=10)
        assert r.content == b"tls\n"
    assert seen[-1] == (f"kotta.invalid:{port}", "kotta.invalid")  # Host header and SNI
    # The same address under another name fails the certificate check.
    g = _pinned("other.invalid", "127.0.0.1")
    g.check(f"https://other.invalid:{port}/x", "x", guard_networks(["127.0.0.1/32"]))
    with guarded_session(g) as s, pytest.raises(requests.exceptions.SSLError):
        s.get(f"https://other.invalid:{port}/x", verify=str(ca), timeout=10)
