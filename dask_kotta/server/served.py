"""Who serves a data directory: ``DATA_DIR/served.json``, kept by ``up`` and ``server``.

A running ``up`` or ``server`` holds the file (``{"url", "pid", "host", "started_at"}``)
for as long as it runs and removes it when it stops. It answers two questions:

- Can a second service start on this data directory? Not while another one serves it:
  two servers on one SQLite store and one set of TLS keys would fight over both.
- Where is the server of this data directory? ``dask-kotta token --data-dir D`` writes
  credentials naming that URL, and refuses (unless told) to write any for a directory
  nobody serves, where they would name a server that is not there.

A file left by a process that died (``kill -9``, a crash) is stale: its pid is gone from
this host, or is another, younger process. A file written on another host (a shared
directory) cannot be checked from here and is taken as live; the message names the file
to remove if that server is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from ..errors import AlreadyServedError

#: The file's name in the data directory.
SERVED_FILE = "served.json"


@dataclass(frozen=True)
class Served:
    """What a serving process wrote: its URL, pid, host name and start time (epoch s)."""

    url: str
    pid: int
    host: str
    started_at: float

    def live(self) -> bool:
        """Whether the process that wrote this still runs (True if it is on another host)."""
        if self.host != socket.gethostname():
            return True
        try:
            proc = psutil.Process(self.pid)
            # A reused pid belongs to a process younger than the file.
            return proc.status() != psutil.STATUS_ZOMBIE and (
                proc.create_time() <= self.started_at + 1
            )
        except psutil.Error:
            return False


def served_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / SERVED_FILE


def read_served(data_dir: str | Path) -> Served | None:
    """The live service of ``data_dir``, or None: no file, a stale one, or an unreadable one."""
    found = _read(served_path(data_dir))
    return found if found is not None and found.live() else None


def _read(path: Path) -> Served | None:
    try:
        raw = json.loads(path.read_text())
        return Served(str(raw["url"]), int(raw["pid"]), str(raw["host"]), float(raw["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def claim(data_dir: str | Path, url: str) -> Served:
    """Mark ``data_dir`` as served by this process at ``url``; a stale mark is replaced.

    :class:`AlreadyServedError` (one line naming the URL) if a live service holds it.
    The directory must exist. Give the result to :func:`release` when the service stops.
    """
    path = served_path(data_dir)
    mine = Served(url, os.getpid(), socket.gethostname(), time.time())
    tmp = path.with_name(f".{SERVED_FILE}.{mine.pid}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(mine), f)
    try:
        for _ in range(3):
            try:
                # link() fails if the name exists: of two services starting at once, one wins.
                os.link(tmp, path)
                return mine
            except FileExistsError:
                pass
            other = _read(path)
            if other is not None and other.live():
                raise AlreadyServedError(
                    f"data dir {Path(data_dir).resolve()} is already served by {other.url} "
                    f"(pid {other.pid} on {other.host}); stop that one first, or give another "
                    f"--data-dir (if that server is gone, remove {path.resolve()})"
                )
            try:
                path.unlink()  # stale (its process is gone) or unreadable: take it over
            except FileNotFoundError:
                pass
        raise AlreadyServedError(f"could not claim {path}: another service keeps claiming it")
    finally:
        tmp.unlink(missing_ok=True)


def release(data_dir: str | Path, mine: Served) -> None:
    """Remove the mark :func:`claim` made, unless another process has taken it over since."""
    path = served_path(data_dir)
    if _read(path) == mine:
        path.unlink(missing_ok=True)
