"""The warm template process itself: ``python -m dask_kotta.runner.template SOCK FD``.

It imports what a job child needs (``child.py``, cloudpickle), then forks one
child per request on the Unix socket ``SOCK``, reaps it and reports its exit
code; it exits when descriptor ``FD`` (a pipe only its worker holds) reads EOF.
Why it exists, its protocol and lifetimes: see ``forkserver.py``, the runner
side that starts it and talks to it.

Every module imported here is imported by every template and makes each fork
slower: keep this to the standard library (no psutil, requests, distributed,
nor ``forkserver.py``, which imports this module for :func:`open_logs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
from typing import Any


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


def _prepare(
    request: dict[str, Any], base: dict[str, str]
) -> tuple[list[str], list[tuple[str, str]], Any]:
    """In the template, before the fork: the environment variables a child unsets and sets.

    ``base`` is the template's own environment, which a child starts from.

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
    unset = [key for key in base if key not in env]
    put = [(key, value) for key, value in env.items() if base.get(key) != value]
    return unset, put, client


def _child(
    request: dict[str, Any],
    close_fds: list[int],
    prepared: tuple[list[str], list[tuple[str, str]], Any],
    stdio: tuple[Any, Any],
    prepared_view: bool,
) -> None:
    """In the forked child: become the job's process, run it, never return.

    ``prepared`` is what :func:`_prepare` made of the request; ``stdio`` the
    unbuffered streams over descriptors 1 and 2 that the template made once;
    ``prepared_view`` whether the template prepared the base of the sandboxes (then a
    sandboxed child was cloned into its namespaces by :func:`serve`).
    """
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
        sys.stdout, sys.stderr = stdio
        if request.get("sandbox"):
            from . import sandbox

            if prepared_view:
                sandbox.setup(request["sandbox"])  # this is the job's PID 1, cloned by serve()
            else:
                sandbox.contain(request["sandbox"])  # returns in PID 1; this process waits
        os.chdir(request["cwd"])
        unset, put, client = prepared
        environ = os.environ
        for key in unset:
            del environ[key]
        for key, value in put:
            environ[key] = value
        if request.get("argv"):
            argv = request["argv"]
            try:
                os.execvpe(argv[0], argv, dict(environ))
            except OSError as e:
                os.write(2, f"kotta: cannot start {argv[0]!r}: {e.strerror}\n".encode())
                code = 127
                return
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


def serve(path: str, keepalive_fd: int, view: dict[str, Any] | None = None) -> None:
    """The template's loop: fork on request, reap, report; exit when the worker goes.

    With ``view``, first prepare the base of every job's sandbox (``sandbox.prepare``).
    """
    # Warm: everything a job child needs before it runs user code (and nothing more: a
    # smaller template forks faster).
    import gc

    import cloudpickle  # noqa: F401

    from . import child, sandbox  # noqa: F401

    if view is not None:
        sandbox.prepare(view)

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
    # The environment every child starts from; the template never changes it.
    base = dict(os.environ)
    # Made once here, used by every child once it has put its logs on descriptors 1 and 2:
    # the template never writes through them, so each child inherits them as new.
    stdio = _stdio()
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
                        prepared = _prepare(request, base)
                    except Exception as e:
                        _send(conn, {"error": f"bad request: {type(e).__name__}: {e}"})
                        drop(conn)
                        continue
                    close_fds = fds()
                    sys.stderr.flush()
                    try:
                        if view is not None and request.get("sandbox"):
                            spec = request["sandbox"]
                            # Planned before the fork (see sandbox.plan); a path that is not
                            # there fails in the job's PID 1 instead, which says so on STDERR.
                            with contextlib.suppress(OSError):
                                spec["steps"] = sandbox.plan(spec)
                            pid = sandbox.clone(spec)
                        else:
                            pid = os.fork()
                    except OSError as e:
                        _send(conn, {"error": f"cannot start the job: {e}"})
                        drop(conn)
                        continue
                    if pid == 0:
                        _child(request, close_fds, prepared, stdio, view is not None)
                    owner[pid] = conn
                    by_conn[conn] = pid
                    _send(conn, {"pid": pid})
    finally:
        # The worker is gone: so are the jobs it started.
        for pid in owner:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
