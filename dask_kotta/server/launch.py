"""Starting a server: credentials for the first user, the dask cluster, uvicorn."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ConfigError
from ..store.objects import open_store
from .auth import hash_token, new_token

# `up` imports this module before it starts its cluster: nothing heavy (sqlalchemy, uvicorn)
# is imported at its top.
if TYPE_CHECKING:
    from ..store.jobs import JobStore
    from .service import ServerConfig

log = logging.getLogger("dask_kotta.server")


def write_credentials(path: Path, url: str, token: str) -> None:
    """Write ``{"url", "token"}`` readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f)
        f.write("\n")
    os.replace(tmp, path)


def issue_token(
    store: JobStore, user: str, path: Path, url: str, label: str | None = None,
    expires_at: float | None = None, admin: bool = False,
) -> str:  # fmt: skip
    """Create ``user`` if new (an admin too if ``admin``), give it a new token (working until
    ``expires_at``, epoch seconds; None: always) and write its credentials file.

    This writes to the store directly: the operator's offline way, and ``up``'s. Users get
    their tokens from the running server (``/api/v1/admin/tokens``).
    """
    uid = store.get_or_create_user(user)
    if admin:
        store.set_admin(user, True)
    token = new_token()
    store.add_token(uid, hash_token(token), label=label, expires_at=expires_at)
    write_credentials(path, url, token)
    return token


def ensure_credentials(store: JobStore, user: str, path: Path, url: str) -> bool:
    """Make ``user`` an admin and keep its valid credentials file (refreshing its URL), or
    make one; True if a token was made.

    A file whose token is another user's (or no longer valid) is replaced: the file ``up``
    writes is its admin's.
    """
    path = Path(path)
    store.set_admin(user, True)
    if path.exists():
        try:
            old = json.loads(path.read_text())
            token = old["token"]
        except (OSError, ValueError, KeyError, TypeError):
            token = None
        found = store.user_for_token(hash_token(token)) if isinstance(token, str) else None
        if found is not None and found["name"] == user:
            if old.get("url") != url:
                write_credentials(path, url, token)
            return False
    issue_token(store, user, path, url)
    return True


def private_umask() -> int:
    """Make this process's umask 0o077 and return the one it had.

    Whatever ``up``/``server`` create from here on (SQLite's -wal/-shm files, objects,
    directories, logs) is then its owner's only. The modes set explicitly where files are
    created keep that true in processes that did not set the umask (``dask-kotta token``).
    """
    return os.umask(0o077)


def private_data_dir(path: Path) -> int | None:
    """Make the data directory 0700 (made if missing); return an existing one's old mode if fixed.

    It holds the job store (token hashes, every user's jobs), the local object store
    (every user's objects) and the cluster's TLS keys. Call :func:`private_umask` first.
    """
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(0o700)
        return mode
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_store(config: ServerConfig) -> None:
    """Open the object store once before serving, so an unreachable S3 endpoint or a
    refused bucket is a one-line error instead of a traceback from the server's start."""
    open_store(config.store, config.data_dir)


def check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {e.strerror}; pick another --port"
            ) from None


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Make SIGTERM stop this process as Ctrl-C does, running its ``finally`` blocks.

    Its default action ends the process at once: ``up`` would then leave the stopping of
    its cluster to the cluster's lifeline, after the fact, and print nothing.
    """
    signal.signal(signal.SIGTERM, _interrupt)


def serve(app: Any, host: str, port: int, on_serving: Callable[[], None] | None = None) -> None:
    """Run the API until Ctrl-C or SIGTERM; a server that stopped that way returns normally.

    ``on_serving`` is called once the service has started and the port accepts requests
    (the banner: printed only when it is true)."""
    import uvicorn  # only a server needs it, not `up` before its cluster runs

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit and on_serving is not None:
                on_serving()

        async def shutdown(self, sockets: Any = None) -> None:
            # uvicorn waits for the requests in flight before the app's own shutdown: end
            # the long polls (runners' and clients') now, not at their timeouts.
            svc = getattr(app.state, "svc", None)
            if svc is not None:
                svc.notifier.close()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the
        # handler it replaced; the server has stopped, which is what was asked.
        if not server.started:
            raise
        return
    if not server.started:
        sys.exit(1)
