"""Starting a server: credentials for the first user, the dask cluster, uvicorn."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

from ..errors import ConfigError
from ..store.jobs import JobStore
from .auth import hash_token, new_token

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


def issue_token(store: JobStore, user: str, path: Path, url: str) -> str:
    """Create ``user`` if new, give it a new token and write its credentials file."""
    uid = store.get_or_create_user(user)
    token = new_token()
    store.add_token(uid, hash_token(token))
    write_credentials(path, url, token)
    return token


def ensure_credentials(store: JobStore, user: str, path: Path, url: str) -> bool:
    """Keep a valid credentials file (refreshing its URL), or make one; True if a token was made."""
    path = Path(path)
    if path.exists():
        try:
            old = json.loads(path.read_text())
            token = old["token"]
        except (OSError, ValueError, KeyError, TypeError):
            token = None
        if token and store.user_for_token(hash_token(token)):
            if old.get("url") != url:
                write_credentials(path, url, token)
            return False
    issue_token(store, user, path, url)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_store(config) -> None:
    """Open the object store once before serving, so an unreachable S3 endpoint or a
    refused bucket is a one-line error instead of a traceback from the server's start."""
    from ..store.objects import open_store

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


def start_local_cluster(workers: int, slots: int, queues: list[str]):
    """A LocalCluster of process workers, each carrying every queue as a resource."""
    from distributed import LocalCluster

    resources = {q: slots for q in queues}
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=slots * len(queues) + 1,
        processes=True,
        resources=resources,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        # No statistical profiler in the workers: sampling every thread's stack every 10 ms
        # took ~9% of a worker's GIL time (py-spy), and nothing here reads its profiles.
        config={"distributed.worker.profile.enabled": False},
    )


def serve(app, host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(1)
