"""The warm template process that python jobs without requirements are forked from.

A fresh interpreter costs ~40 ms before a job's first line runs; a fork of a
process that has already imported the child side (``child.py``) and
cloudpickle costs about one. Forking the dask worker itself is not safe (it
has threads and an event loop), so the template is its own clean,
single-threaded process, one per worker process, started on first use::

    runner thread ──connect──► template (python -m dask_kotta.runner.forkserver SOCK FD)
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
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("dask_kotta.runner")

#: Set to "0" on a worker to run every python job in a fresh interpreter instead.
ENABLE_VAR = "KOTTA_FORKSERVER"
_START_TIMEOUT_S = 30.0


def open_logs(stdout_path: str, stderr_path: str) -> tuple[int, int]:
    """File descriptors for a child's STDOUT and STDERR, appended to (so a build log stays).

    The same path for both gives one descriptor twice, so their lines interleave in order.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    out = os.open(stdout_path, flags, 0o644)
    if stderr_path == stdout_path:
        return out, out
    # Same file under another name (a symlink, ``./x``): compared by inode once both are open,
    # which costs two fstat calls where os.path.realpath costs an lstat per path component.
    try:
        err = os.open(stderr_path, flags, 0o644)
        a, b = os.fstat(out), os.fstat(err)
    except BaseException:
        os.close(out)
        raise
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        os.close(err)
        return out, out
    return out, err


# -- runner side ------------------------------------------------------------------------


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

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kotta-fs-"))
        self.path = str(self.dir / "sock")
        read_end, self._keepalive = os.pipe()
        try:
            with open(self.dir / "forkserver.log", "ab") as errlog:
                # Its own session: a Ctrl-C meant for the worker's terminal is the worker's to handle.
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dask_kotta.runner.forkserver",
                        self.path,
                        str(read_end),
                    ],
                    pass_fds=(read_end,),
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=errlog,
                    start_new_session=True,
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
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


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
            _server = ForkServer()
        except (OSError, RuntimeError) as e:
            # Jobs still run, in fresh interpreters; try again in a minute.
            log.warning("fork server unavailable, using fresh interpreters: %s", e)
            _broken_until = time.monotonic() + 60
            return None
        return _server


def spawn(
    private: str, cwd: str, stdout_path: str, stderr_path: str, env: dict[str, str]
) -> ForkedChild | None:
    """Fork a python job's child from the template; None if no template is available."""
    server = get()
    if server is None:
        return None
    request = {"private": private, "cwd": cwd, "stdout": stdout_path, "stderr": stderr_path,
               "env": env}  # fmt: skip
    try:
        return server.spawn(request)
    except OSError as e:
        log.warning("fork server failed (%s); using a fresh interpreter", e)
        return None


# -- template side ----------------------------------------------------------------------


#: The template's environment, which it never changes: what a job's is diffed against.
_ENVIRON: dict[str, str] = {}
#: ``sys.stdout`` and ``sys.stderr`` of every job child, made once (see ``serve``).
_STDIO: tuple[Any, Any] | None = None


def _prepare(request: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]], Any]:
    """In the template, before the fork: the environment variables a child unsets and sets.

    Done here because in the child every page touched is a copy-on-write fault
    (~4 us each), and walking the whole environment touches dozens. Also takes
    out ``KOTTA_CLIENT_VERSIONS``, which ``child.main`` is handed parsed instead of
    reading (and removing) it from the environment: the job never sees it either way.
    Raises on a malformed request.
    """
    env = dict(request["env"])
    client = None
    raw = env.get("KOTTA_CLIENT_VERSIONS")
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            client = json.loads(raw or "{}")
    if isinstance(client, dict):
        del env["KOTTA_CLIENT_VERSIONS"]
    else:
        client = None  # left in the environment for child.main to read (and fail on) as before
    base = _ENVIRON or os.environ  # the latter outside a template (a test forking by hand)
    unset = [key for key in base if key not in env]
    put = [(key, value) for key, value in env.items() if base.get(key) != value]
    return unset, put, client


def _child(
    request: dict[str, Any],
    close_fds: list[int],
    prepared: tuple[list[str], list[tuple[str, str]], Any] | None = None,
) -> None:
    """In the forked child: become the job's process, run it, never return."""
    code = 1
    try:
        os.setsid()  # its own session and group: the runner kills the group, nothing else
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out, err = open_logs(request["stdout"], request["stderr"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in {null, out, err}:
            os.close(fd)
        # Unbuffered like PYTHONUNBUFFERED=1 in a fresh child: a killed job keeps what it printed.
        sys.stdout, sys.stderr = _STDIO or _stdio()
        os.chdir(request["cwd"])
        unset, put, client = prepared or _prepare(request)
        environ = os.environ
        for key in unset:
            del environ[key]
        for key, value in put:
            environ[key] = value
        # As `python -m ...` in the job's directory: its own modules import first.
        sys.path[0] = request["cwd"]
        from . import child

        sys.argv = [child.__file__, request["private"]]
        code = child.main([request["private"]], client)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stdio() -> tuple[Any, Any]:
    """Text streams over descriptors 1 and 2, unbuffered; whatever those name when written to."""
    import io

    return (
        io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True),
        io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True),
    )


def _send(conn: socket.socket, msg: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(msg).encode() + b"\n")


def serve(path: str, keepalive_fd: int) -> None:
    """The template's loop: fork on request, reap, report; exit when the worker goes."""
    # Warm: everything a job child needs before it runs user code (and nothing more: a
    # smaller template forks faster).
    import gc

    import cloudpickle  # noqa: F401

    from . import child  # noqa: F401

    gc.freeze()  # a child's collections then leave the template's objects (and pages) alone

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "reap")
    sel.register(keepalive_fd, selectors.EVENT_READ, "parent")
    pending: dict[socket.socket, bytes] = {}  # connections whose request is not complete yet
    owner: dict[int, socket.socket] = {}  # child pid -> its runner's connection
    by_conn: dict[socket.socket, int] = {}

    def fds() -> list[int]:
        return [listener.fileno(), wake_r.fileno(), wake_w.fileno(), keepalive_fd,
                *(c.fileno() for c in pending), *(c.fileno() for c in by_conn)]  # fmt: skip

    def drop(conn: socket.socket) -> None:
        sel.unregister(conn)
        pending.pop(conn, None)
        pid = by_conn.pop(conn, None)
        if pid is not None and pid in owner:
            # The runner went away mid-job: its job must not outlive it.
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            owner[pid] = None  # type: ignore[assignment]
        conn.close()

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    global _STDIO
    _ENVIRON.update(os.environ)
    # Made once here, used by every child once it has put its logs on descriptors 1 and 2:
    # the template never writes through them, so each child inherits them as new.
    _STDIO = _stdio()
    try:
        while True:
            for key, _ in sel.select():
                what = key.data
                if what == "accept":
                    conn, _ = listener.accept()
                    pending[conn] = b""
                    sel.register(conn, selectors.EVENT_READ, "conn")
                elif what == "parent":
                    return
                elif what == "reap":
                    with contextlib.suppress(OSError):
                        while wake_r.recv(4096):
                            pass
                    while True:
                        try:
                            pid, status = os.waitpid(-1, os.WNOHANG)
                        except ChildProcessError:
                            break
                        if pid == 0:
                            break
                        conn = owner.pop(pid, None)
                        if conn is not None:
                            by_conn.pop(conn, None)
                            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                else:
                    conn = key.fileobj
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        drop(conn)
                        continue
                    if conn not in pending:
                        continue  # nothing more is expected from a runner once it has its child
                    pending[conn] += data
                    if b"\n" not in pending[conn]:
                        continue
                    line = pending.pop(conn).partition(b"\n")[0]
                    try:
                        request = json.loads(line)
                        prepared = _prepare(request)
                    except Exception as e:
                        _send(conn, {"error": f"bad request: {type(e).__name__}: {e}"})
                        drop(conn)
                        continue
                    close_fds = fds()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        _child(request, close_fds, prepared)
                    owner[pid] = conn
                    by_conn[conn] = pid
                    _send(conn, {"pid": pid})
    finally:
        # The worker is gone: so are the jobs it started.
        for pid in owner:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
