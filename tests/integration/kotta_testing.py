"""Real services for tests: a `dask-kotta up` or `server` process, a dask cluster, users.

Everything runs as subprocesses on loopback, in its own process group, and is
killed with its group at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from dask_kotta.server.cluster import quiet_env

ROOT = Path(__file__).resolve().parents[2]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_ports = random.Random()  # seeded from urandom: each test process picks its own sequence


def free_port() -> int:
    """A loopback port nothing listens on, for a service to bind a moment later.

    Not one from binding port 0: those come from the kernel's ephemeral range, which every
    outgoing connection on the host draws from too, so a service started (or restarted on
    the same port) a moment later found it taken by some client's connection. Below that
    range only listeners take ports; a random pick keeps two test processes apart.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = _ports.randrange(10_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 10000 and {low} on 127.0.0.1")


def own_name(name: str) -> str:
    """``name`` made this test process's own: the processes share the session's service, and
    one process's jobs must not show in another's listings (``-n 0``: ``name`` itself)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{name}-{worker}" if worker else name


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def stopped_on_error(thing):
    """Stop ``thing`` (its processes) if its start fails: nobody else holds it yet to stop it."""
    try:
        yield
    except BaseException:
        thing.stop()
        raise


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class Proc:
    """A subprocess in its own group, logging to a file."""

    def __init__(self, args: list[str], log: Path, cwd: Path, env: dict | None = None):
        self.args, self.log_path, self.cwd = args, log, cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.groups: list[int] = []  # every process group we started, killed at stop
        self.owned = True  # False: another test process started it and stops it

    @classmethod
    def attached(cls, pid: int, log: Path) -> Proc:
        """A process another test process started and will stop (``shared.py``)."""
        from shared import Attached

        p = cls([], log, log.parent)
        p.proc, p.owned = Attached(pid), False
        return p

    def start(self) -> Proc:
        if getattr(self, "_log", None) is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            # Not the test process's stdin: under xdist that is its channel to pytest, which a
            # service outliving the process (shared.py) would hold open.
            stdin=subprocess.DEVNULL,
        )
        self.groups.append(self.proc.pid)
        return self

    def release(self) -> None:
        """Hand the process over to whoever stops it (``shared.py``): this object forgets it,
        and no longer stops it or warns, when collected, that it still runs."""
        self._log.close()
        self.proc.returncode = 0  # what Popen.__del__ checks; the process is not ours to reap
        self.groups.clear()
        self.owned = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or not self.owned:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._record_stuck(timeout)
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.groups.clear()
        self.proc.wait()
        self._log.close()

    def _record_stuck(self, timeout: float) -> None:
        """Write to the log what a process that ignored its SIGINT for ``timeout`` s was doing
        (with py-spy, where installed), before it is killed: a stop is never that slow."""
        self._log.write(f"\n*** still running {timeout} s after SIGINT: killed ***\n".encode())
        spy = shutil.which("py-spy")
        if spy:
            self._log.flush()
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):  # the kill comes next
                subprocess.run([spy, "dump", "--pid", str(self.proc.pid)], stdout=self._log,
                               stderr=subprocess.STDOUT, timeout=30)  # fmt: skip

    def kill9(self) -> None:
        """SIGKILL the main process only (its children stay, as after a crash, until stop())."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Service:
    """A Kotta service: `dask-kotta up` (LocalCluster) or `server --scheduler`."""

    def __init__(self, base: Path, *, port: int | None = None, scheduler: str | None = None,
                 workers: int = 2, slots: int = 4, extra: list[str] | None = None, env: dict | None = None,
                 data_dir: Path | None = None, mounted: bool = False):  # fmt: skip
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or self.base / "data"
        self.auth_file = self.base / "auth.file"
        self.scheduler = scheduler
        self.workers, self.slots = workers, slots
        # mounted: ``extra`` is one _with_shared_mount made already (an attached service's).
        self.shared = self.base / "shared"
        self.extra = list(extra or []) if mounted else self._with_shared_mount(extra or [])
        # The ends its workers keep while it is away: the test's own, not the host's.
        self.env = {"KOTTA_OUTBOX_DIR": str(self.base / "outbox"), **(env or {})}
        self.proc: Proc | None = None
        self._old: list[Proc] = []  # earlier runs; a kill -9 leaves their children until stop()
        self.user = "tester"  # whose credentials auth_file holds

    def state(self) -> dict:
        """What another test process needs to attach to this running service (``shared.py``)."""
        return {"base": str(self.base), "port": self.port, "extra": self.extra, "env": self.env,
                "workers": self.workers, "slots": self.slots, "pgid": self.proc.proc.pid,
                "stop": "int"}  # fmt: skip

    @classmethod
    def attach(cls, state: dict) -> Service:
        """The service another test process started (``state()``): this process may use it,
        not stop it."""
        svc = cls(Path(state["base"]), port=state["port"], extra=state["extra"], env=state["env"],
                  workers=state["workers"], slots=state["slots"], mounted=True)  # fmt: skip
        svc.proc = Proc.attached(state["pgid"], svc.base / "service.log")
        return svc

    def as_user(self, name: str, admin: bool = False) -> Service:
        """This service, its ``auth_file`` now credentials of ``name`` (made if new)."""
        path = self.token(name, self.base / f"{name}.auth", admin=admin)
        self.auth_file, self.user = path, name
        return self

    def _with_shared_mount(self, extra: list[str]) -> list[str]:
        """``extra`` with a queue config whose queues all mount ``self.shared`` read-write.

        Jobs are contained: a directory of the test's is in their view only if a
        queue mounts it. Tests hand jobs paths under ``self.shared`` to leave marks in.
        """
        self.shared.mkdir(exist_ok=True)
        self.shared.chmod(0o1777)  # a contained job runs as a uid of its own
        extra = list(extra)
        if "--queues" in extra:
            i = extra.index("--queues")
            queues = json.loads(Path(extra[i + 1]).read_text())
            del extra[i : i + 2]
        else:
            from dask_kotta.server.queues import default_queues

            queues = {
                name: {k: v for k, v in q.to_json().items() if k in ("vcpus", "memory_bytes",
                                                                     "max_walltime_min")}
                for name, q in default_queues().items()
            }  # fmt: skip
            for q in queues.values():
                q["memory"] = q.pop("memory_bytes")
        for q in queues.values():
            q["mounts"] = [*q.get("mounts", []), f"{self.shared}:rw"]
        path = self.base / "queues.json"
        path.write_text(json.dumps(queues))
        return ["--queues", str(path), *extra]

    def args(self) -> list[str]:
        common = ["--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra]
        if self.scheduler:
            # `server` does not make users: the first one comes from `token`.
            if not self.auth_file.exists():
                self.token("tester", self.auth_file, admin=True)
            return [
                sys.executable,
                "-m",
                "dask_kotta.cli",
                "server",
                "--scheduler",
                self.scheduler,
                *common,
            ]
        return [sys.executable, "-m", "dask_kotta.cli", "up", "--auth-file", str(self.auth_file), "--user", "tester",
                "--workers", str(self.workers), "--slots", str(self.slots), *common]  # fmt: skip

    def start(self, timeout: float = 90) -> Service:
        if self.proc is not None:
            self._old.append(self.proc)
        self.proc = Proc(self.args(), self.base / "service.log", self.base, self.env).start()
        with stopped_on_error(self):
            self.wait_ready(timeout)
        return self

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 90) -> None:
        def ready():
            if not self.proc.alive():
                raise RuntimeError(f"service exited early:\n{self.proc.log()[-4000:]}")
            try:
                return requests.get(self.url + "/api/v1/health", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(ready, timeout, f"service on {self.url}")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        for old in self._old:
            old.stop()
        self._old.clear()

    def kill9(self) -> None:
        self.proc.kill9()

    def creds(self, path: Path | None = None) -> str:
        return Path(path or self.auth_file).read_text()

    def stored(self, job_id: str) -> set[str]:
        """Names of a job's objects on a local store: files, and small ones kept as rows of
        the job database (``store/blobs.py``)."""
        import sqlite3

        names = {
            str(p.relative_to(d))
            for d in (self.data_dir / "objects").glob(f"u*/{job_id}")
            for p in d.rglob("*")
            if p.is_file()
        }
        db = self.data_dir / "jobs.sqlite"
        if db.exists():
            with contextlib.closing(sqlite3.connect(db)) as c:
                rows = c.execute("SELECT key FROM job_objects WHERE job_id = ?", (job_id,))
                names |= {key.split("/", 2)[2] for (key,) in rows}
        return names

    def konn(self, path: Path | None = None):
        from kotta import Kotta

        return Kotta(self.creds(path))

    def token(self, name: str, path: Path, admin: bool = False) -> Path:
        """Credentials for user ``name`` (made if new) at ``path``: asked of the running
        service with its first user's (an admin's) credentials, as a user would; before the
        service runs (a `server`'s first user), written to its job store offline."""
        if self.proc is not None and self.proc.alive():
            # The request `dask-kotta token NAME -o PATH` makes (test_tokens runs the command
            # itself), made here: ~80 users a run, each a 0.3 CPU-s process otherwise.
            from dask_kotta import Kotta
            from dask_kotta.server.launch import write_credentials

            with contextlib.closing(Kotta(self.creds(), retry_window=0)) as konn:
                body = {"name": name, "admin": admin}
                creds = konn.request("POST", "/api/v1/admin/tokens", json=body).json()
            write_credentials(path, creds["credentials"]["url"], creds["credentials"]["token"])
            return path
        where = ["--data-dir", str(self.data_dir), "--port", str(self.port), "--new",
                 *[a for a in self.extra if a.startswith("--database")]]  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "dask_kotta.cli", "token", name, "-o", str(path), *where,
             *(["--admin"] if admin else [])],
            check=True, capture_output=True, env={**os.environ, **self.env},
        )  # fmt: skip
        return path

    def cli(self, *args: str, auth: Path | None = None, check: bool = False, timeout: float = 120):
        return subprocess.run(
            [sys.executable, "-m", "dask_kotta.cli", *args, "--auth-file", str(auth or self.auth_file)],
            capture_output=True, text=True, check=check, timeout=timeout, cwd=self.base,
        )  # fmt: skip

    def log(self) -> str:
        return self.proc.log() if self.proc else ""

    @property
    def tls_dir(self) -> Path:
        """Where `up` writes the certificates of its local cluster (new at each start)."""
        return self.data_dir / "tls"

    def dask_address(self) -> str:
        """The address of the dask scheduler this run of `up` printed."""
        for line in reversed(self.log().splitlines()):
            if line.startswith("dask "):
                return line.split()[1]
        raise LookupError(f"no dask address in the log:\n{self.log()[-2000:]}")

    def dask_security(self):
        """A `distributed.Security` with `up`'s current certificates (what the server uses)."""
        from distributed.security import Security

        d = self.tls_dir
        return Security(require_encryption=True, tls_ca_file=str(d / "ca.pem"),
                        tls_client_cert=str(d / "cert.pem"), tls_client_key=str(d / "key.pem"))  # fmt: skip


def write_temporary_certificates(directory: Path) -> dict[str, str]:
    """A throwaway self-signed certificate (its own CA) as PEM files, like an operator's.

    Made by distributed's `Security.temporary()`, not by dask-kotta's code. Returns the
    `--tls-ca-file`/`--tls-cert`/`--tls-key` paths.
    """
    from distributed.security import Security

    sec = Security.temporary()
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = {
        "ca_file": directory / "ca.pem",
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
    }
    for path, text in ((files["ca_file"], sec.tls_ca_file), (files["cert"], sec.tls_client_cert),
                       (files["key"], sec.tls_client_key)):  # fmt: skip
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return {k: str(v) for k, v in files.items()}


class DaskCluster:
    """A `dask scheduler` and Kotta workers as separate processes (the scale-out layout).

    Plain tcp:// by default; ``tls=True`` gives the scheduler and workers certificates
    made for the test (see :func:`write_temporary_certificates`) and a tls:// address.
    """

    def __init__(
        self,
        base: Path,
        workers: int = 2,
        queues: tuple[str, ...] = ("Test=4", "Prod=2"),
        tls: bool = False,
    ):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"{'tls' if tls else 'tcp'}://127.0.0.1:{self.port}"
        self.n_workers, self.queues = workers, queues
        # Added to the workers' environment; the ends they keep are the test's own.
        self.env: dict[str, str] = {"KOTTA_OUTBOX_DIR": str(self.base / "outbox")}
        self.procs: list[Proc] = []
        self.tls = write_temporary_certificates(self.base / "tls") if tls else None

    @property
    def tls_args(self) -> list[str]:
        """The `--tls-*` options of `dask scheduler`, `dask-kotta worker` and `server`."""
        if not self.tls:
            return []
        t = self.tls
        return ["--tls-ca-file", t["ca_file"], "--tls-cert", t["cert"], "--tls-key", t["key"]]

    def security(self):
        """A client `Security` for this cluster (None for plain tcp)."""
        if not self.tls:
            return None
        from distributed.security import Security

        t = self.tls
        return Security(require_encryption=True, tls_ca_file=t["ca_file"],
                        tls_client_cert=t["cert"], tls_client_key=t["key"])  # fmt: skip

    def start(self) -> DaskCluster:
        with stopped_on_error(self):
            self._start()
        return self

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        proto = ["--protocol", "tls", *self.tls_args] if self.tls else []
        sched = Proc(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--dashboard-address", ":0", "--no-show", *proto],
            self.base / "scheduler.log", self.base, quiet_env(),
        ).start()  # fmt: skip
        self.procs.append(sched)
        wait_for(lambda: _connectable(self.port), 60, "dask scheduler")
        for i in range(self.n_workers):
            args = [
                sys.executable,
                "-m",
                "dask_kotta.cli",
                "worker",
                self.address,
                "--name",
                f"w{i}",
                *self.tls_args,
            ]
            for q in self.queues:
                args += ["--queue", q]
            self.procs.append(Proc(args, self.base / f"worker{i}.log", self.base, self.env).start())
        from distributed import Client

        with Client(self.address, timeout=60, security=self.security()) as c:
            c.wait_for_workers(self.n_workers, timeout=60)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop(timeout=10)


def _connectable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def job_process(workdir: str, timeout: float = 30):
    """The host's view of a running contained job: its PID 1, found by its working directory.

    Inside its PID namespace a job sees itself as PID 1 and no parent; from the
    host (the test runs as root) it is the process whose cwd is its working
    directory and whose parent (the warm template) is elsewhere.
    """
    import psutil

    def find():
        for p in psutil.process_iter():
            try:
                if p.cwd() == workdir and p.parent().cwd() != workdir:
                    return p
            except (psutil.Error, AttributeError):
                continue
        return None

    return wait_for(find, timeout, f"the process of the job in {workdir}")


def processes_with_arg(marker: str) -> list:
    """Live processes on the host with ``marker`` in their command line."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or ()):
            found.append(p)
    return found


def policy_args(directory: Path, **policy) -> list[str]:
    """``--policy FILE`` for a service, the file holding ``policy`` as JSON (see server/policy.py)."""
    path = Path(directory) / "policy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(policy))
    return ["--policy", str(path)]


def run_script(konn, timeout: float = 120, **kw):
    """Submit a script job (walltime 2 min unless given) and wait for its end."""
    from kotta import KottaJob

    job = KottaJob(jobtype="script", **{"walltime": 2, **kw})
    job.submit(konn)
    assert job.wait(konn, maxwait=timeout), f"job {job.job_id} did not end: {job.info}"
    return job


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
