"""The dask cluster's control plane: TLS certificates, and the local cluster of ``up``.

A job runs inside a dask worker's process tree. Whoever can talk to the scheduler can
run code in the scheduler and every worker (``run_on_scheduler``, ``client.run``) and
read every task's arguments, which carry the slot secret and the dispatch tokens. So
the cluster ``dask-kotta up`` starts speaks TLS with mutual certificates, and the
scheduler does not run inside the API server's process:

- :func:`make_certificates` makes a fresh CA and one certificate it signed, per start,
  as PEM files (0600) in a 0700 directory (``DATA_DIR/tls``). The CA's private key is
  never written anywhere, so no further certificate can be signed for this cluster,
  and a restart makes every earlier certificate useless.
- :class:`LocalClusterProcess` runs a ``LocalCluster`` (scheduler + worker processes,
  each worker carrying the queues as resources) in a child process; ``main`` below is
  that child. The API server reaches it as a TLS client. The child ends its cluster
  when its standard input closes, which is also what happens when ``up`` dies of
  SIGKILL, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

# distributed, dask and cryptography are imported where they are used: `up` imports this
# module before it starts anything, and they are slow to import.
if TYPE_CHECKING:
    from distributed.security import Security

log = logging.getLogger("dask_kotta.server")

#: Directory under the data directory that holds ``up``'s certificates.
TLS_DIR = "tls"
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"
#: How long ``up`` waits for its cluster to come up, in seconds.
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TLSFiles:
    """A CA file and a certificate and key it signed (file paths)."""

    ca_file: str
    cert: str
    key: str

    def security(self, role: str = "all") -> Security:
        """A ``distributed.Security`` that requires TLS, for a client or for every role."""
        from distributed.security import Security

        kw = {"tls_client_cert": self.cert, "tls_client_key": self.key}
        if role == "all":
            kw.update(
                tls_scheduler_cert=self.cert, tls_scheduler_key=self.key,
                tls_worker_cert=self.cert, tls_worker_key=self.key,
            )  # fmt: skip
        return Security(require_encryption=True, tls_ca_file=self.ca_file, **kw)


def _given_tls(
    scheduler: str, ca_file: str | None, cert: str | None, key: str | None, role: str
) -> bool:
    """Check the TLS options for ``scheduler``; True if certificate files were given.

    Without options, a tls:// scheduler needs dask's configuration
    (``distributed.comm.tls.ca-file`` and ``...tls.<role>.cert``/``key``, also as
    ``DASK_DISTRIBUTED__COMM__TLS__...`` variables), as ``dask worker`` reads it.
    """
    tls = scheduler.startswith("tls://")
    if not (ca_file or cert or key):
        if tls:
            from distributed.security import Security

            sec = Security()
            # Security sets its tls_* fields from dask's config by name: mypy cannot see them.
            if not (sec.tls_ca_file and getattr(sec, f"tls_{role}_cert")):  # type: ignore[attr-defined]
                raise ConfigError(
                    f"the scheduler {scheduler} uses TLS: give --tls-ca-file, --tls-cert and "
                    f"--tls-key (or distributed.comm.tls.ca-file and .{role}.cert/.key in dask's config)"
                )
        return False
    if not (ca_file and cert):
        raise ConfigError(
            "--tls-ca-file and --tls-cert go together (with --tls-key unless the cert file holds the key)"
        )
    for path in (ca_file, cert, key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file {path} does not exist")
    if not tls:
        raise ConfigError(
            f"TLS certificates were given, but the scheduler {scheduler} is not tls://"
        )
    return True


def client_security(
    scheduler: str, ca_file: str | None, cert: str | None, key: str | None
) -> Security | None:
    """The ``Security`` the API server reaches ``scheduler`` with: None for plain tcp://, or
    for a tls:// one given no files (``Client`` then reads dask's configuration)."""
    if not _given_tls(scheduler, ca_file, cert, key, "client"):
        return None
    from distributed.security import Security

    return Security(
        require_encryption=True, tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key
    )


def worker_tls_check(
    scheduler: str, ca_file: str | None, cert: str | None, key: str | None
) -> None:
    """Refuse TLS options ``dask worker`` could not use, with a reason (before exec'ing it)."""
    _given_tls(scheduler, ca_file, cert, key, "worker")


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) a directory only its owner can enter."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def make_certificates(directory: Path, days: int = 365) -> TLSFiles:
    """Write a new CA certificate and a certificate + key it signed into ``directory``.

    EC P-256 keys: each start makes two, in a few milliseconds (RSA took ~100 ms).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = private_dir(directory)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("dask-kotta up CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("dask-internal"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TLSFiles(
        str(directory / CA_FILE), str(directory / CERT_FILE), str(directory / KEY_FILE)
    )
    # The key first: a certificate on disk never points at a key from another start.
    _write_private(
        Path(files.key),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_private(Path(files.cert), cert.public_bytes(pem))
    _write_private(Path(files.ca_file), ca.public_bytes(pem))
    return files


# -- the local cluster, in a process of its own ----------------------------------------------


class LocalClusterProcess:
    """``up``'s dask cluster: a child process running a TLS ``LocalCluster``.

    Started early so that it boots while ``up`` prepares the rest; :meth:`address`
    waits for it. :meth:`close` (or the death of this process) ends it.
    """

    def __init__(self, workers: int, slots: int, queues: list[str], tls: TLSFiles, umask: int):
        args = [
            sys.executable, "-m", "dask_kotta.server.cluster",
            "--workers", str(workers), "--slots", str(slots), "--queues", ",".join(queues),
            "--tls-ca-file", tls.ca_file, "--tls-cert", tls.cert, "--tls-key", tls.key,
            "--umask", oct(umask),
        ]  # fmt: skip
        # Same process group as `up`: a terminal's Ctrl-C reaches it too (it ignores it and
        # waits for `up` to close it after the server stopped), and so does a kill of the group.
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both piped
        #: Its lifeline (closing it ends the cluster) and where it says its address.
        self._lifeline, self._out = self.proc.stdin, self.proc.stdout
        self._address: str | None = None
        self._closing = False
        #: The cluster's exit status if it ended while `up` still served (then `up` stops).
        self.died: int | None = None

    def address(self, timeout: float = START_TIMEOUT_S) -> str:
        """The scheduler's address once the cluster is up with its workers."""
        if self._address is None:
            deadline = time.monotonic() + timeout
            line = b""
            fd = self._out.fileno()
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    self.close()
                    raise ConfigError(f"the local dask cluster did not start within {timeout:.0f}s")
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.close()
                    raise ConfigError("the local dask cluster failed to start (its error is above)")
                line += chunk
            self._address = json.loads(line)["address"]
        return self._address

    def stop_with_it(self) -> None:
        """If the cluster process ends on its own, stop this process too (as SIGTERM does).

        In-process, the scheduler could not die without the server; a server left
        without its cluster would take jobs that nothing runs.
        """

        def watch() -> None:
            status = self.proc.wait()
            if not self._closing:
                self.died = status
                log.error("the local dask cluster exited (status %s); stopping", status)
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True, name="cluster-watch").start()

    def close(self, timeout: float = 20) -> None:
        """End the cluster: close its lifeline, then wait; kill it if it hangs."""
        self._closing = True
        if self.proc.poll() is None:
            try:
                self._lifeline.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("the local dask cluster did not stop within %ss; killing it", timeout)
                self.proc.kill()
                self.proc.wait()
        self._out.close()


#: At a stop, how long the local cluster's workers may take to close before they are killed.
STOP_GRACE_S = 0.5


def start_local_cluster(
    workers: int, slots: int, queues: list[str], tls: TLSFiles, umask: int | None = None
) -> LocalClusterProcess:
    """Start ``up``'s cluster in a child process; ``address()`` waits until it is up."""
    if umask is None:
        umask = os.umask(0o077)
        os.umask(umask)
    return LocalClusterProcess(workers, slots, queues, tls, umask)


#: Dask settings of the clusters Kotta starts (``up``'s; ``dask-kotta worker``'s workers):
#: what an idle cluster costs. An idle ``up`` with 2 workers used ~20% of a core with
#: dask's defaults, ~6% with these (server process included).
QUIET = {
    # No statistical profiler in the workers: sampling every thread's stack every 10 ms
    # took ~9% of a worker's GIL time (py-spy), and nothing here reads its profiles.
    "distributed.worker.profile.enabled": False,
    # Timers that wake every process every 20-500 ms: the event-loop watchdog, the system
    # and memory monitors, and work stealing (a slot is one long task: nothing to steal).
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.scheduler.work-stealing-interval": "1s",
}


def dask_setup(worker: object) -> None:
    """A dask preload, run in each of ``up``'s worker processes as it starts.

    A terminal's Ctrl-C reaches every process of ``up``'s group, these included, and
    distributed's asyncio runner turned it into a KeyboardInterrupt and a 40-line
    traceback per worker. ``up`` closes them in order (its server, then this cluster),
    so they ignore it, as this process does: with a handler, not SIG_IGN, which the
    processes they start (templates, jobs) would inherit.
    """
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
    logging.getLogger("distributed.worker").addFilter(_QuietStop(worker, stopping))


class _QuietStop(logging.Filter):
    """Drops a heartbeat's failure once the worker is being stopped.

    While ``up`` closes its cluster, a heartbeat already in flight can meet the scheduler's
    closed end (seen once in ~30 stops): distributed logs that with a traceback, for a stop
    that went as it should. A failure while the worker runs is still logged.
    """

    def __init__(self, worker: object, stopping: threading.Event) -> None:
        super().__init__()
        self.worker, self.stopping = worker, stopping

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Failed to communicate with scheduler"):
            return True
        status = getattr(getattr(self.worker, "status", None), "name", "")
        return not self.stopping.is_set() and status not in _ENDING


_ENDING = {"stopping", "stopped", "closing", "closing_gracefully", "closed", "failed"}


def quiet_env() -> dict[str, str]:
    """:data:`QUIET` as the environment variables dask reads its config from."""
    return {"DASK_" + k.upper().replace(".", "__").replace("-", "_"): str(v)
            for k, v in QUIET.items()}  # fmt: skip


def _run(opts: argparse.Namespace) -> None:
    # The workers keep the operator's umask, as workers started by `dask-kotta worker` do;
    # only `up`'s own files (the data directory) are private.
    os.umask(opts.umask)
    # A terminal's Ctrl-C reaches the whole group: `up` closes us once its server stopped.
    # A handler, not SIG_IGN, which the workers and the jobs would inherit.
    signal.signal(signal.SIGINT, lambda *_: None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = os.dup(1)
    os.dup2(2, 1)  # anything printed later goes to stderr, not into the handshake pipe

    import dask
    from distributed import LocalCluster

    # The scheduler's and workers' HTTP servers answer without any credentials: keep only
    # their health check. The default routes (/info, /json, /metrics) list every worker,
    # task key (job ids), worker log and running call stack to whoever reaches the port.
    # Set before the cluster starts: the nannies hand this config to their workers.
    dask.config.set(
        {
            "distributed.scheduler.http.routes": ["distributed.http.health"],
            "distributed.worker.http.routes": ["distributed.http.health"],
            # dask_setup below, in every worker process.
            "distributed.worker.preload": [__name__],
            **QUIET,
        }
    )
    tls = TLSFiles(opts.tls_ca_file, opts.tls_cert, opts.tls_key)
    queues = [q for q in opts.queues.split(",") if q]
    cluster = LocalCluster(
        n_workers=opts.workers,
        threads_per_worker=opts.slots * len(queues) + 1,
        processes=True,
        host="127.0.0.1",
        protocol="tls://",
        security=tls.security(),
        resources={q: opts.slots for q in queues},
        dashboard_address=None,
        # Not 8787, which another cluster on this host may hold (then with a warning).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )
    try:
        os.write(out, (json.dumps({"address": cluster.scheduler_address}) + "\n").encode())
        os.close(out)

        def lifeline() -> None:
            # EOF on stdin: `up` closed us, or died (even of SIGKILL).
            while os.read(0, 4096):
                pass
            stop.set()

        threading.Thread(target=lifeline, daemon=True).start()
        while not stop.wait(1.0):
            pass
    finally:
        # Workers first, while the scheduler still answers: closed together, a worker's
        # heartbeat in flight met the closed scheduler and logged a traceback at each stop.
        pids = [w.process.pid for w in cluster.workers.values()
                if getattr(w, "process", None) is not None and w.process.pid]  # fmt: skip
        cluster.scale(0)
        deadline = time.monotonic() + STOP_GRACE_S
        while cluster.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        # A worker running a job waits for it (its nanny kills it only after 4 s): kill it
        # now. Its jobs die with it (PDEATHSIG) and stay running in the job store, so the
        # next start takes them back and runs them again, as a slower stop did too.
        for pid in pids if cluster.workers else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cluster.close(timeout=5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="dask-kotta up's local dask cluster (internal)")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--queues", required=True)
    p.add_argument("--tls-ca-file", required=True)
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--umask", type=lambda s: int(s, 0), default=0o022)
    _run(p.parse_args(argv))
    # Everything is closed: skip the interpreter's teardown of dask's modules (~1 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
