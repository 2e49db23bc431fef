"""The control plane is closed to jobs: TLS on the dask cluster, a private data directory.

A job runs inside a dask worker. Over a plain connection it could run code in the
scheduler (`run_on_scheduler`) and read the slot secret and other jobs' dispatch tokens
from task arguments; with the service's files readable it could read the job store and
every user's objects. These tests drive real `dask-kotta up`/`server`/`worker` processes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
from distributed import Client
from kotta_testing import DaskCluster, Service, free_port, wait_for

from kotta import KottaJob
from kotta.kotta_functions import *  # noqa: F403

# Run in a process of its own, as an attacker's job would be: for each (address, kind of
# credentials, how) it prints whether the cluster let it in. `client` opens a
# distributed.Client and calls run_on_scheduler; `comm` opens a bare comm (what `rpc` and
# every handler call ride on) and asks for `identity`.
PROBE = r"""
import asyncio, json, os, ssl, sys
from distributed import Client
from distributed.comm import connect
from distributed.security import Security

def security(kind):
    if kind == "none":
        return None
    if kind == "other-ca":
        return Security.temporary()
    if kind.startswith("inline:"):
        t = json.loads(kind[len("inline:"):])
        return Security(require_encryption=True, tls_ca_file=t["ca"], tls_client_cert=t["cert"],
                        tls_client_key=t["key"])
    d = kind[len("files:"):]
    return Security(require_encryption=True, tls_ca_file=f"{d}/ca.pem",
                    tls_client_cert=f"{d}/cert.pem", tls_client_key=f"{d}/key.pem")

def client(address, kind):
    with Client(address, security=security(kind), timeout="3s") as c:
        c.run_on_scheduler(os.getpid)

async def comm(address, kind):
    if kind == "no-cert":  # TLS as an attacker tries it: no certificate, any server accepted
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        kw = {"ssl_context": ctx, "require_encryption": True}
    else:
        sec = security(kind)
        kw = sec.get_connection_args("client") if sec else {}
    c = await connect(address, timeout="3s", **kw)
    try:
        await c.write({"op": "identity", "reply": True})
        await c.read()
    finally:
        c.abort()

out = []
for how, address, kind in json.loads(sys.argv[1]):
    try:
        client(address, kind) if how == "client" else asyncio.run(comm(address, kind))
        out.append("connected")
    except (OSError, TimeoutError) as e:
        out.append("refused")
    except TypeError as e:  # distributed's client will not even try tls:// without a context
        assert "TLS expects a `ssl_context`" in str(e), e
        out.append("refused")
print(json.dumps(out))
"""


def _probe(attempts: list[tuple[str, str, str]]) -> list[str]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(attempts)],
        capture_output=True, text=True, timeout=60 + 10 * len(attempts),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _refused(address: str, kind: str = "none") -> bool:
    """True if a distributed.Client with credentials ``kind`` cannot get in."""
    return _probe([("client", address, kind)]) == ["refused"]


def _as_plain_tcp(address: str) -> str:
    return "tcp://" + address.split("://", 1)[1]


def _inline(tls_dir: Path) -> str:
    """Credentials holding the PEM texts themselves (they outlive the files' renewal)."""
    t = {k: (tls_dir / f"{k}.pem").read_text() for k in ("ca", "cert", "key")}
    return "inline:" + json.dumps(t)


def _private_everywhere(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) with any group or other permission bit."""
    loose = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            mode = os.lstat(name).st_mode
            if mode & 0o077:
                loose.append(f"{stat.filemode(mode)} {name}")
    return sorted(set(loose))


def _live_in_group(pgid: int) -> list[str]:
    left = []
    for p in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except (ProcessLookupError, psutil.Error):
            pass
    return left


def _stopped_cleanly(svc: Service, sig: int, group: bool = False) -> None:
    """Send ``sig`` to `up` (or its whole group, as a terminal's Ctrl-C does): all of it ends."""
    pgid = svc.proc.proc.pid
    if group:
        os.killpg(pgid, sig)
    else:
        svc.proc.proc.send_signal(sig)
    assert svc.proc.proc.wait(30) == 0, svc.log()[-3000:]
    wait_for(lambda: not _live_in_group(pgid), 15, "every process of `up` to end")
    assert "stopped." in svc.log()
    # Ctrl-C reaches the worker processes too: they wait to be closed, with no traceback.
    assert "Traceback" not in svc.log() and "KeyboardInterrupt" not in svc.log(), svc.log()[-3000:]


# -- `dask-kotta up`: the session's service ------------------------------------------------


def test_up_cluster_refuses_clients_without_its_certificates(service):
    address = service.dask_address()
    assert address.startswith("tls://127.0.0.1:"), address
    # With `up`'s certificates (only the operator can read them) the cluster answers:
    # the refusals below are about the certificates, not a wrong address.
    with Client(address, security=service.dask_security(), timeout=30) as c:
        info = c.scheduler_info()
        assert c.run_on_scheduler(os.getpid) != os.getpid()
        api_pid = service.proc.proc.pid
        assert c.run_on_scheduler(os.getpid) != api_pid, "the scheduler runs apart from the API"
        servers = [address, *info["workers"]]
        servers += [w["nanny"] for w in info["workers"].values() if w.get("nanny")]
    assert len(servers) == 1 + 2 * service.workers, servers
    assert all(s.startswith("tls://") for s in servers), servers

    # No certificate at all, a certificate of another CA, or plain tcp to the same port;
    # below the client, no handler (run_function, broadcast, identity...) on the scheduler,
    # the workers or their nannies answers a connection without this cluster's certificate.
    attempts = [("client", address, "none"), ("client", address, "other-ca"),
                ("client", _as_plain_tcp(address), "none")]  # fmt: skip
    for server in servers:
        attempts += [("comm", server, "no-cert"), ("comm", server, "other-ca"),
                     ("comm", _as_plain_tcp(server), "none")]  # fmt: skip
    ours = f"files:{service.tls_dir}"
    attempts += [("comm", address, ours), ("client", address, ours)]  # the probe can get in
    results = _probe(attempts)
    assert results[:-2] == ["refused"] * (len(attempts) - 2), list(
        zip(attempts, results, strict=True)
    )
    assert results[-2:] == ["connected"] * 2, list(zip(attempts, results, strict=True))


def test_up_cluster_http_answers_only_health(service):
    """The scheduler's and workers' HTTP servers need no credentials: only /health is left."""
    api = service.proc.proc.pid
    ports = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != api and os.getpgid(p.pid) == api:
                ports |= {c.laddr.port for c in p.net_connections("tcp") if c.status == "LISTEN"}
        except (ProcessLookupError, psutil.Error):
            pass
    healthy = 0
    for port in sorted(ports):
        base = f"http://127.0.0.1:{port}"
        try:
            health = requests.get(base + "/health", timeout=3)
        except requests.RequestException:
            continue  # a TLS comm port
        healthy += health.ok
        for path in ("/info/main/workers.html", "/json/index.html", "/metrics", "/statics/"):
            assert requests.get(base + path, timeout=3).status_code == 404, base + path
    assert healthy == 1 + service.workers, ports  # the scheduler's and each worker's


def test_tls_files_are_owner_only(service):
    d = service.tls_dir
    st = d.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    names = sorted(p.name for p in d.iterdir())
    assert names == ["ca.pem", "cert.pem", "key.pem"], names  # no CA key: nothing more is signed
    for p in d.iterdir():
        st = p.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid(), p
    assert "PRIVATE KEY" in (d / "key.pem").read_text()


def test_data_dir_has_no_group_or_other_bits(service, konn):
    script = KottaJob(
        script="mkdir -p sub/deeper && echo a > out.txt && echo b > sub/deeper/b.txt",
        outputs="out.txt, sub/deeper/b.txt",
        walltime=0.5,
    )
    script.submit(konn)

    @kottajob(konn, "Test", 0.5)
    def big():
        return "x" * 200_000  # kept as an object, not inline

    assert len(big()) == 200_000
    assert script.wait(konn, maxwait=60) and script.status(konn) == "completed", script.info
    assert {o.file for o in script.outputs} >= {"out.txt", "b.txt"}
    data = service.data_dir
    assert (data / "jobs.sqlite-wal").exists() and (data / "objects").is_dir()
    assert _private_everywhere(data) == []


# -- `up` restarted: an old data dir, new certificates, stops that leave nothing ---------


def test_up_fixes_old_modes_renews_certificates_and_stops_cleanly(tmp_path):
    data = tmp_path / "svc" / "data"
    (data / "objects").mkdir(parents=True)
    (data / "jobs.sqlite").touch()  # an empty file is an empty SQLite database
    for p, mode in ((data, 0o755), (data / "objects", 0o755), (data / "jobs.sqlite", 0o644)):
        p.chmod(mode)
    svc = Service(tmp_path / "svc", workers=1)
    try:
        svc.start()
        assert "was mode 0755; made it 0700" in svc.log()
        konn = svc.konn()
        job = KottaJob(script="echo one > o.txt", outputs="o.txt", walltime=0.5)
        job.submit(konn)
        assert job.wait(konn, maxwait=60) and job.status(konn) == "completed", job.info
        assert _private_everywhere(data) == []
        first_ca = (svc.tls_dir / "ca.pem").read_bytes()
        first = _inline(svc.tls_dir)
        _stopped_cleanly(svc, signal.SIGTERM)

        svc.start()
        assert (svc.tls_dir / "ca.pem").read_bytes() != first_ca, "certificates are per start"
        address = svc.dask_address()
        ours = f"files:{svc.tls_dir}"
        results = _probe([("client", address, first), ("client", address, ours)])
        assert results == ["refused", "connected"], "the last start's certificates open nothing now"
        konn = svc.konn()
        assert job.status(konn) == "completed"
        again = KottaJob(script="echo two", walltime=0.5)
        again.submit(konn)
        assert again.wait(konn, maxwait=60) and again.status(konn) == "completed", again.info
        _stopped_cleanly(svc, signal.SIGINT, group=True)  # Ctrl-C in a terminal
    finally:
        svc.stop()


def test_up_stops_when_its_cluster_dies(tmp_path):
    """The cluster now lives in its own process: if it dies, `up` stops (status 1), whole."""
    svc = Service(tmp_path / "svc", workers=1)
    try:
        svc.start()
        up = psutil.Process(svc.proc.proc.pid)
        (child,) = [
            c for c in up.children() if "dask_kotta.server.cluster" in " ".join(c.cmdline())
        ]
        child.kill()
        assert svc.proc.proc.wait(60) == 1, svc.log()[-3000:]
        assert "the local dask cluster exited" in svc.log()
        wait_for(lambda: not _live_in_group(up.pid), 15, "every process of `up` to end")
    finally:
        svc.stop()


# -- scale-out: `server --scheduler tls://` and `worker` with certificates ------------------


def test_server_and_workers_over_tls(tmp_path):
    cluster = DaskCluster(tmp_path / "cluster", workers=1, queues=("Test=2",), tls=True).start()
    svc = Service(tmp_path / "svc", scheduler=cluster.address, extra=cluster.tls_args)
    try:
        assert cluster.address.startswith("tls://")
        assert (
            _probe([("client", cluster.address, "none"), ("client", cluster.address, "other-ca")])
            == ["refused"] * 2
        )
        svc.start()
        konn = svc.konn()

        @kottajob(konn, "Test", 0.5)
        def add(a, b):
            return a + b

        assert add(2, 3) == 5
        svc.stop()

        # The same certificates from dask's configuration (environment) instead of options.
        t = cluster.tls
        svc.extra = []
        svc.env = {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": t["ca_file"],
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": t["cert"],
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": t["key"],
        }
        svc.start()
        konn = svc.konn()
        job = KottaJob(script="echo over tls", walltime=0.5)
        job.submit(konn)
        assert job.wait(konn, maxwait=60) and job.status(konn) == "completed", job.info
        assert _private_everywhere(svc.data_dir) == []
    finally:
        svc.stop()
        cluster.stop()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DISTRIBUTED__COMM__TLS")}
    return subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, says",
    [
        (["server", "--scheduler", "tls://127.0.0.1:1"], "--tls-ca-file"),
        (["worker", "tls://127.0.0.1:1"], "--tls-ca-file"),
        (
            [
                "server",
                "--scheduler",
                "tcp://127.0.0.1:1",
                "--tls-ca-file",
                "ca.pem",
                "--tls-cert",
                "ca.pem",
            ],
            "is not tls://",
        ),  # fmt: skip
        (["worker", "tls://127.0.0.1:1", "--tls-cert", "ca.pem"], "go together"),
        (
            [
                "server",
                "--scheduler",
                "tls://127.0.0.1:1",
                "--tls-ca-file",
                "missing.pem",
                "--tls-cert",
                "ca.pem",
            ],
            "missing.pem does not exist",
        ),  # fmt: skip
        (["up", "--tls-ca-file", "ca.pem"], "go with --scheduler"),
    ],
)
def test_tls_options_are_checked_before_starting(tmp_path, args, says):
    (tmp_path / "ca.pem").write_text("not used\n")
    port = ["--port", str(free_port()), "--data-dir", str(tmp_path / "d")]
    r = _cli(*args, *(port if args[0] != "worker" else []), cwd=tmp_path)
    assert r.returncode != 0 and says in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_cluster_start_failure_is_reported(tmp_path):
    """If the cluster process cannot start, `up` says so and leaves nothing behind."""
    # A TLS setting distributed refuses: the cluster process fails as it builds its Security.
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TLS__MIN_VERSION": "1.0"}
    p = subprocess.Popen(
        [sys.executable, "-m", "dask_kotta.cli", "up", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "d"), "--auth-file", str(tmp_path / "auth")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 1, (out, err)
        assert "error: the local dask cluster failed to start" in err, err
        wait_for(lambda: not _live_in_group(p.pid), 15, "nothing left of `up`")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
