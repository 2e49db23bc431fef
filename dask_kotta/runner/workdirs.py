"""Jobs' working directories on a worker: made per attempt, removed after, swept after a crash.

A runner removes its job's directory when the attempt ends; a worker killed
mid-job cannot. So each directory has a lock, held by its runner for the
attempt's life, in ``.locks`` beside the directories (where the job, which owns
its own directory, cannot touch it). The first job a worker process runs in a
root removes the directories, older than a minute, whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

from . import owned

log = logging.getLogger("dask_kotta.runner")
_LOCKS = ".locks"


def root() -> Path:
    """Where this worker's jobs get their directories (``KOTTA_WORK_DIR``, else the dask
    worker's local directory, else the temp dir), swept once per process."""
    path = os.environ.get("KOTTA_WORK_DIR")
    if not path:
        try:
            from distributed import get_worker

            path = os.path.join(get_worker().local_directory, "kotta-jobs")
        except (ImportError, ValueError):
            path = os.path.join(tempfile.gettempdir(), "kotta-jobs")
    _swept(path)
    return Path(path)


@functools.cache
def _swept(path: str) -> None:
    Path(path, _LOCKS).mkdir(parents=True, exist_ok=True)
    sweep(Path(path))


class Workdir:
    """One attempt's directory, locked until :meth:`remove`."""

    def __init__(self, job_id: str, attempt: int):
        base = root()
        self.path = Path(tempfile.mkdtemp(prefix=f"{job_id}-{attempt}-", dir=base))
        self._lock = base / _LOCKS / f"{self.path.name}.lock"
        self._fd = owned.hold(self._lock)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self._lock)
        with contextlib.suppress(OSError):
            os.close(self._fd)


def sweep(base: Path, older_than_s: float = 60.0) -> int:
    """Remove the job directories under ``base`` that no live runner holds; returns how many.

    One made less than ``older_than_s`` ago may not be locked yet: it is left alone.
    """
    locks = base / _LOCKS
    removed = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        # Dot names are the runner's own (``.locks``, the outbox), never a job's directory.
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        lock = locks / f"{entry.name}.lock"
        if owned.abandoned(Path(entry.path), lock, older_than_s):
            shutil.rmtree(entry.path, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            removed += 1
    if removed:
        log.info("removed %d working directories of jobs whose worker died", removed)
    return removed
