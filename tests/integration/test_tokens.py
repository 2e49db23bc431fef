"""Tokens through the running server: an admin issues, lists and revokes them
(``/api/v1/admin/``, ``dask-kotta token``), a normal user cannot, and offline credentials
are written only for a data dir a running service serves (``DATA_DIR/served.json``)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import requests
from kotta_testing import free_port, own_name, wait_for

MALLORY = own_name("mallory")  # the other_user fixture's
ADMIN = "/api/v1/admin/tokens"


def token_cli(*args: str, auth: Path | None = None, cwd: Path | None = None):
    """`dask-kotta token ARGS` (with ``--auth-file auth`` if given), as a user runs it."""
    cmd = [sys.executable, "-m", "dask_kotta.cli", "token", *args]
    if auth is not None:
        cmd += ["--auth-file", str(auth)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def bearer(auth: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {json.loads(Path(auth).read_text())['token']}"}


def test_an_admin_makes_a_token_for_a_new_user_who_then_runs_a_job(service, tmp_path):
    path = tmp_path / "newbie.auth"
    out = token_cli("newbie", "-o", str(path), "--label", "ci", auth=service.auth_file)
    assert out.returncode == 0, out.stderr
    creds = json.loads(path.read_text())
    token_id = hashlib.sha256(creds["token"].encode()).hexdigest()[:12]
    assert f"wrote {path} for user 'newbie' (token {token_id})" in out.stdout, out.stdout
    assert creds["url"] == service.url, "the server's own URL"
    assert path.stat().st_mode & 0o077 == 0, "credentials are their owner's only"
    script = tmp_path / "hello.sh"
    script.write_text("echo hello from newbie\n")
    sent = service.cli("submit", str(script), "--walltime", "0.5", "--wait", auth=path)
    assert sent.returncode == 0 and "hello from newbie" in sent.stdout, sent.stderr
    assert service.konn(path).user["name"] == "newbie"
    log = service.log()
    assert creds["token"] not in log and f"made token {token_id} for user 'newbie'" in log


def test_a_normal_user_is_refused_every_admin_route(service, other_user, tmp_path):
    mallory = bearer(other_user)
    attempts = [
        ("POST", ADMIN, {"json": {"name": "mallory-friend", "admin": True}}),
        ("GET", ADMIN, {}),
        ("GET", ADMIN + "?user=tester", {}),
        ("DELETE", ADMIN + "/" + "0" * 12, {}),
    ]
    for method, path, kw in attempts:
        r = requests.request(method, service.url + path, headers=mallory, timeout=30, **kw)
        assert r.status_code == 403, (method, path, r.text)
        assert f"user '{MALLORY}' is not an admin" in r.json()["detail"], r.text
        anonymous = requests.request(method, service.url + path, timeout=30, **kw)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
    # Nothing was made: no user, no token.
    listed = requests.get(service.url + ADMIN, params={"user": "mallory-friend"},
                          headers=bearer(service.auth_file), timeout=30)  # fmt: skip
    assert listed.status_code == 200 and listed.json() == {"tokens": []}, listed.text
    # The CLI says so in one line, and writes nothing.
    for args in (["friend", "-o", str(tmp_path / "friend.auth")], ["--list"],
                 ["--revoke", "0" * 12]):  # fmt: skip
        out = token_cli(*args, auth=other_user)
        assert out.returncode == 1, out
        (line,) = out.stderr.strip().splitlines()
        assert f"user '{MALLORY}' is not an admin" in line and "needs an admin token" in line
    assert not (tmp_path / "friend.auth").exists()


def test_the_list_shows_labels_and_expiry_and_no_secret(service, tmp_path):
    path = tmp_path / "lister.auth"
    made = token_cli("lister", "-o", str(path), "--label", "laptop", "--expires", "30d",
                     auth=service.auth_file)  # fmt: skip
    assert made.returncode == 0 and "valid until" in made.stdout, made.stderr
    secret = json.loads(path.read_text())["token"]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    r = requests.get(service.url + ADMIN, params={"user": "lister"},
                     headers=bearer(service.auth_file), timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    (t,) = r.json()["tokens"]
    assert set(t) == {"id", "user", "created_at", "label", "expires_at", "expired"}
    assert (t["id"], t["user"], t["label"], t["expired"]) == (digest[:12], "lister", "laptop",
                                                              False)  # fmt: skip
    assert 29.9 * 86400 < t["expires_at"] - time.time() <= 30 * 86400
    assert secret not in r.text and digest not in r.text
    everyone = requests.get(service.url + ADMIN, headers=bearer(service.auth_file), timeout=30)
    assert {"tester", "lister"} <= {t["user"] for t in everyone.json()["tokens"]}
    listed = token_cli("--list", "lister", auth=service.auth_file)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.strip().splitlines()
    assert line.startswith(digest[:12]) and "lister  (expires " in line and "laptop" in line
    assert secret not in listed.stdout and digest not in listed.stdout


def test_a_token_revoked_through_the_server_is_refused_within_a_second(service, tmp_path):
    path = tmp_path / "leaving.auth"
    assert token_cli("leaving", "-o", str(path), auth=service.auth_file).returncode == 0
    token_id = hashlib.sha256(json.loads(path.read_text())["token"].encode()).hexdigest()[:12]
    whoami = service.url + "/api/v1/whoami"
    assert requests.get(whoami, headers=bearer(path), timeout=10).json()["name"] == "leaving"
    out = token_cli("--revoke", token_id[:8], auth=service.auth_file)
    assert out.returncode == 0, out.stderr
    assert f"revoked token {token_id[:8]} of user 'leaving'" in out.stdout, out.stdout
    revoked = time.monotonic()
    wait_for(lambda: requests.get(whoami, headers=bearer(path), timeout=10).status_code == 401,
             5, "the revoked token to be refused")  # fmt: skip
    assert time.monotonic() - revoked < 1.5
    assert token_id not in token_cli("--list", auth=service.auth_file).stdout
    again = token_cli("--revoke", token_id, auth=service.auth_file)
    assert again.returncode == 1 and f"no token has an id starting '{token_id}'" in again.stderr
    bad = token_cli("--revoke", "xyz", auth=service.auth_file)
    assert bad.returncode == 1 and "'xyz' is not a token id" in bad.stderr, bad.stderr


def test_a_new_admin_made_through_the_server_can_make_tokens(service, tmp_path):
    boss = tmp_path / "boss.auth"
    assert token_cli("boss", "-o", str(boss), "--admin", auth=service.auth_file).returncode == 0
    out = token_cli("worker-bee", "-o", str(tmp_path / "bee.auth"), auth=boss)
    assert out.returncode == 0, out.stderr
    assert service.konn(tmp_path / "bee.auth").user["name"] == "worker-bee"
    # Its own credentials file is never the one it writes over.
    same = token_cli("boss", "-o", str(boss), auth=boss)
    assert same.returncode == 2 and "is the admin credentials file" in same.stderr


def test_bad_requests_name_the_problem(service):
    admin = bearer(service.auth_file)
    for body, says in [
        ({"name": "   "}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": "ok", "expires_in_s": 0}, "expires_in_s"),
        ({"name": "ok", "label": "l" * 129}, "label"),
        ({"name": "ok", "admin": "yes"}, "admin"),
    ]:
        r = requests.post(service.url + ADMIN, json=body, headers=admin, timeout=30)
        assert r.status_code == 422 and says in r.json()["detail"], (body, r.text)


def test_an_unreachable_server_is_named(tmp_path):
    auth = tmp_path / "gone.auth"
    url = f"http://127.0.0.1:{free_port()}"
    auth.write_text(json.dumps({"url": url, "token": "kt_whatever"}))
    out = token_cli("someone", "-o", str(tmp_path / "someone.auth"), auth=auth)
    assert out.returncode == 1, out
    (line,) = out.stderr.strip().splitlines()
    assert f"cannot reach the Kotta server at {url}" in line and str(auth) in line, line
    assert not (tmp_path / "someone.auth").exists()


def test_offline_credentials_only_for_a_data_dir_someone_serves(service, tmp_path):
    data = tmp_path / "data"
    first = token_cli("first", "-o", str(tmp_path / "first.auth"), "--data-dir", str(data),
                      "--new", "--admin", "--url", "http://kotta.example:8765")  # fmt: skip
    assert first.returncode == 0 and "(an admin)" in first.stdout, first.stderr
    assert json.loads((tmp_path / "first.auth").read_text())["url"] == "http://kotta.example:8765"
    # The store exists now, but nobody serves it: no credentials without --new.
    out = token_cli("second", "-o", str(tmp_path / "second.auth"), "--data-dir", str(data))
    assert out.returncode == 2 and "nobody serves" in out.stderr, out.stderr
    assert not (tmp_path / "second.auth").exists()
    # A served.json whose process is gone (a kill -9) is no server either.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (data / "served.json").write_text(json.dumps(
        {"url": "http://127.0.0.1:1", "pid": gone.pid, "host": _host(), "started_at": 0}))  # fmt: skip
    out = token_cli("second", "-o", str(tmp_path / "second.auth"), "--data-dir", str(data))
    assert out.returncode == 2 and "nobody serves" in out.stderr, out.stderr
    # Listing needs no server.
    listed = token_cli("--list", "--data-dir", str(data))
    assert listed.returncode == 0 and "first" in listed.stdout, listed.stderr
    # The running service's data dir: its URL comes from its served.json.
    path = tmp_path / "served.auth"
    out = token_cli("offline-user", "-o", str(path), "--data-dir", str(service.data_dir))
    assert out.returncode == 0, out.stderr
    assert json.loads(path.read_text())["url"] == service.url
    assert service.konn(path).user["name"] == "offline-user"


def test_a_second_up_on_a_served_data_dir_fails_naming_its_url(service, tmp_path):
    cmd = [sys.executable, "-m", "dask_kotta.cli", "up", "--data-dir", str(service.data_dir),
           "--port", str(free_port()), "--auth-file", str(tmp_path / "auth.file")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1, out
    (line,) = out.stderr.strip().splitlines()
    assert f"is already served by {service.url}" in line, line
    assert "starting a LocalCluster" not in out.stdout and not (tmp_path / "auth.file").exists()
    # The running one is untouched, and still named as the server.
    served = json.loads((service.data_dir / "served.json").read_text())
    assert served["url"] == service.url
    assert requests.get(service.url + "/api/v1/whoami", headers=bearer(service.auth_file),
                        timeout=10).status_code == 200  # fmt: skip


def _host() -> str:
    import socket

    return socket.gethostname()
