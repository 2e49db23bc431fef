"""The runner side of the warm template that python jobs without requirements are forked from.

A fresh interpreter costs ~40 ms before a job's first line runs; a fork of a
process that has already imported the child side (``child.py``) and
cloudpickle costs about one. Forking the dask worker itself is not safe (it
has threads and an event loop), so the template is its own clean,
single-threaded process, one per worker process, started on first use. This
module starts it (:class:`ForkServer`, :func:`get`) and asks it for job
children (:func:`spawn`); the template's own code is ``template.py``::

    runner thread ──connect──► template (python -m dask_kotta.runner.template SOCK FD)
                   ◄─{"pid"}──      └─fork─► job child: setsid, files, env, cwd -> child.main
                   ◄─{"exit"}─      (reaped by the template, exit code sent back)

Protocol, one Unix-socket connection per job, newline-delimited JSON: the
runner sends ``{"private", "cwd", "stdout", "stderr", "env"}``; the template
answers ``{"pid": N}`` once forked and ``{"exit": CODE}`` once reaped
(``CODE`` as ``Popen.returncode``: negative for a signal). The runner watches
the child through :func:`process.monitor` exactly like a Popen'd one: each job
leads its own process group, and walltime, memory limit and cancel kill that
whole group, grandchildren included.

Lifetimes: if the runner's connection closes before the child ends, the
template kills the child's group; the template exits (killing every group it
started) when the worker that started it goes away, which it sees as EOF on a
pipe only the worker holds; a job child gets ``PR_SET_PDEATHSIG`` on the
template, as a fresh child gets it on its runner. A job that dies with its
template is requeued (``Outcome.lost``), as one on a lost worker is, and the
next job starts a new template.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import owned
from .process import Outcome, monitor

log = logging.getLogger("dask_kotta.runner")

#: Set to "0" on a worker to run every python job in a fresh interpreter instead.
ENABLE_VAR = "KOTTA_FORKSERVER"
_START_TIMEOUT_S = 30.0


def template_env() -> dict[str, str]:
    """The template's environment: the jobs' allow-list, and how this Python finds its modules."""
    from .isolation import passed_env

    env = passed_env()
    env.update({k: os.environ[k] for k in ("PYTHONPATH", "PYTHONHOME") if k in os.environ})
    return env


class ForkedChild:
    """A job child forked by the template; ``wait`` reads its exit code off the connection."""

    def __init__(self, sock: socket.socket, pid: int, buf: bytes):
        self.sock, self.pid, self._buf = sock, pid, buf
        self.returncode: int | None = None
        self.lost: str | None = None  # why the child ended without us, if it did

    def wait(self, timeout: float | None) -> int | None:
        """The exit code once the template reaped the child, else None after ``timeout`` s."""
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            data = self.sock.recv(4096)
            if not data:
                # The template died: its children died with it (PDEATHSIG).
                self.lost = "the fork server died mid-job (is its worker going down?)"
                self.returncode = -signal.SIGKILL
                return self.returncode
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        self.returncode = int(json.loads(line)["exit"])
        return self.returncode

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ForkedChild:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ForkServer:
    """One template process, owned by the worker process that started it."""

    def __init__(self, view: dict[str, Any] | None = None) -> None:
        """Start a template; with ``view`` (``isolation.base_spec()``) it prepares the base of
        every job's sandbox once, so each contained job costs a few mounts, not dozens."""
        sweep_stale_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix="kotta-fs-"))
        # Held while this worker process lives: a directory whose lock is free is a dead one's.
        self._owner = owned.hold(self.dir / _OWNER_LOCK)
        self.path = str(self.dir / "sock")
        read_end, self._keepalive = os.pipe()
        try:
            with open(self.dir / "forkserver.log", "ab") as errlog:
                # Its own session: a Ctrl-C meant for the worker's terminal is the worker's to handle.
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dask_kotta.runner.template",
                        self.path,
                        str(read_end),
                        *([json.dumps(view)] if view else []),
                    ],
                    pass_fds=(read_end,),
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=errlog,
                    start_new_session=True,
                    # Every job is a fork of it: nothing of the worker's environment (its
                    # credentials) may be in its memory, /proc/PID/environ included.
                    env=template_env(),
                )
        finally:
            os.close(read_end)
        ready, _, _ = select.select([self.proc.stdout], [], [], _START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        self.proc.stdout.close()
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(f"the fork server did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return (self.dir / "forkserver.log").read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, request: dict[str, Any]) -> ForkedChild:
        """Fork one job child; raises OSError if the template cannot be reached."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                data = sock.recv(4096)
                if not data:
                    raise OSError("the fork server closed the connection")
                buf += data
            line, _, buf = buf.partition(b"\n")
            reply = json.loads(line)
            if "pid" not in reply:
                raise OSError(f"the fork server refused: {reply.get('error')}")
            return ForkedChild(sock, int(reply["pid"]), buf)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._keepalive)  # EOF tells the template to go
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._owner)


def sweep_stale_dirs(older_than_s: float = 60.0) -> int:
    """Remove the template directories of worker processes that died (killed, crashed).

    A live owner holds its directory's lock; one that was just made may not hold it
    yet, hence the age. Returns how many were removed.
    """
    removed = 0
    for path in Path(tempfile.gettempdir()).glob("kotta-fs-*"):
        if path.is_dir() and not path.is_symlink():
            if owned.abandoned(path, path / _OWNER_LOCK, older_than_s):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    if removed:
        log.info("removed %d fork-server directories of dead workers", removed)
    return removed


_OWNER_LOCK = "owner.lock"
_lock = threading.Lock()
_server: ForkServer | None = None
_broken_until = 0.0


def get() -> ForkServer | None:
    """This worker process's template, started if needed; None if it cannot run here."""
    global _server, _broken_until
    if os.environ.get(ENABLE_VAR, "1") == "0" or not hasattr(os, "fork"):
        return None
    with _lock:
        if _server is not None and _server.alive():
            return _server
        if _server is not None:
            log.warning("fork server died; starting another:\n%s", _server.log()[-2000:])
            _server.close()
            _server = None
        if time.monotonic() < _broken_until:
            return None
        try:
            from . import isolation

            view = isolation.base_spec() if isolation.available() is None else None
            _server = ForkServer(view)
        except (OSError, RuntimeError) as e:
            # Jobs still run, in fresh interpreters; try again in a minute.
            log.warning("fork server unavailable, using fresh interpreters: %s", e)
            _broken_until = time.monotonic() + 60
            return None
        return _server


def spawn(
    private: str,
    cwd: str,
    stdout_path: str,
    stderr_path: str,
    env: dict[str, str],
    argv: list[str] | None = None,
    sandbox: dict[str, Any] | None = None,
) -> ForkedChild | None:
    """Fork a job's child from the template; None if no template is available.

    The child runs the python job in ``private``, or execs ``argv`` when given;
    inside the sandbox ``sandbox`` describes, when given (see ``sandbox.py``).
    """
    server = get()
    if server is None:
        return None
    request = {"private": private, "cwd": cwd, "stdout": stdout_path, "stderr": stderr_path,
               "env": env, "argv": argv, "sandbox": sandbox}  # fmt: skip
    try:
        return server.spawn(request)
    except OSError as e:
        log.warning("fork server failed (%s); using a fresh interpreter", e)
        return None


def run_forked(
    private: str,
    cwd: str,
    stdout_path: str,
    stderr_path: str,
    env: dict[str, str],
    walltime_s: float,
    memory_bytes: int | None,
    stop_reason: Callable[[], str | None] = lambda: None,
    argv: list[str] | None = None,
    sandbox: dict | None = None,
) -> Outcome | None:
    """Run a job's child forked from the warm template; None if no template is available.

    The child runs the python job in ``private``, or execs ``argv``, in the
    sandbox ``sandbox`` describes if given. The caller falls back to
    :func:`process.run_process` on None, so a broken fork server slows jobs down but
    never fails them.
    """
    start = time.monotonic()
    child = spawn(private, cwd, stdout_path, stderr_path, env, argv, sandbox)
    if child is None:
        return None
    with child:
        return monitor(child, start, walltime_s, memory_bytes, stop_reason)
