"""Directories a worker process owns while it lives, and telling those of dead ones.

The owner holds an ``flock`` on a lock file for the directory's life; the kernel
drops it when the process dies, however it dies. A directory whose lock nobody
holds is abandoned, unless it is too young to tell: its owner may not hold the
lock yet.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


def hold(lock: Path) -> int:
    """Take ``lock`` (made if needed) until the returned descriptor is closed."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def abandoned(path: Path, lock: Path, older_than_s: float) -> bool:
    """True if ``path`` was made over ``older_than_s`` ago and nobody holds ``lock``."""
    try:
        if time.time() - path.lstat().st_mtime < older_than_s:
            return False
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False  # gone meanwhile, or another user's
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its owner lives
    finally:
        os.close(fd)
    return True
