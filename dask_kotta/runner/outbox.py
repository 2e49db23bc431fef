"""Ends the server could not take yet, kept on the worker's disk until it can.

An attempt's end (how it ended, with its small files and result inline) lives
in the runner's memory until the server records it. When the server cannot be
reached as the end is first sent, the runner writes it here with :func:`keep`:
one file per attempt, written whole (temp file, ``fsync``, rename), in a
directory only the worker's user can open, since the file holds the attempt's
dispatch token. A :class:`Courier` thread in each worker process delivers what
it finds, the files of worker processes that died included, until the server
records the end or refuses it for good; a kept end that still could not be
delivered after ``KEEP_S`` is dropped, and the job is run again.

The server takes the late end of an attempt it took back from a dead worker as
long as no new attempt has claimed the job (``store/attempts.py``). So a job
that ended while the server was down, on a worker that was killed before the
server came back, is not run again: its end comes from this directory, by
another worker process of the same host (or the same worker once restarted).

A worker process starts its courier when it starts (:class:`CourierPlugin`, which
the server registers), else at its first slot or job. Where: ``$KOTTA_OUTBOX_DIR`` if set; else ``$KOTTA_WORK_DIR/.outbox`` if that is set; else ``kotta-outbox`` beside the dask
worker's own directory (``dask-scratch-space``, shared by the host's workers and
kept across their restarts); else under the temp dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from distributed.diagnostics.plugin import WorkerPlugin

from .. import defaults as d
from .api import BROKEN

log = logging.getLogger("dask_kotta.runner")

#: Where the outbox is, if set (else see the module docstring).
DIR_VAR = "KOTTA_OUTBOX_DIR"
#: A kept end that could not be delivered for this long is dropped, in seconds.
KEEP_S = 7 * 86400.0
#: How often the courier tries again while ends wait, in seconds (at most; it backs off to it).
RETRY_MAX_S = 2.0
#: An end waiting longer than this (its server gone for a while, or for good) is tried only
#: every ``OLD_RETRY_S``, so that it does not keep every worker of the host busy.
OLD_S = 300.0
OLD_RETRY_S = 60.0
#: How often an idle courier looks for ends that other (dead) worker processes left.
IDLE_SCAN_S = 30.0


class OutboxError(OSError):
    """The outbox directory cannot be used (not ours, or not private)."""


def _base() -> Path:
    if os.environ.get(DIR_VAR):
        return Path(os.environ[DIR_VAR])
    configured = os.environ.get("KOTTA_WORK_DIR")
    if configured:
        return Path(configured) / ".outbox"
    try:
        from distributed import get_worker

        return Path(get_worker().local_directory).parent / "kotta-outbox"
    except (ImportError, ValueError):
        return Path(tempfile.gettempdir()) / f"kotta-outbox-{os.geteuid()}"


def directory() -> Path:
    """This worker's outbox, made private (0700) if need be.

    Raises :class:`OutboxError` if it exists and is not a directory of this user
    with no access for others: an end holds a dispatch token.
    """
    path = _base()
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OutboxError(f"{path} is not a private directory of uid {os.geteuid()}")
    return path


def _name(job_id: str, attempt: int) -> str:
    # Job ids are the server's hex ids; anything else must not name a path.
    safe = "".join(c for c in str(job_id) if c.isalnum() or c in "-_")[:64]
    return f"{safe}.{int(attempt)}.json"


def keep(server_url: str, report: dict[str, Any]) -> Path | None:
    """Write ``report`` (a slot's end: with ``id``, ``attempt``, ``token``) to the outbox.

    Returns its path, or None if it could not be kept (said in the log: the end
    then lives in memory only, as before). Wakes this process's courier.
    """
    try:
        base = directory()
        path = base / _name(report["id"], report["attempt"])
        entry = {"server": server_url.rstrip("/"), "kept_at": time.time(), "report": report}
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, TypeError, ValueError) as e:
        log.warning("job %s: could not keep its end on disk: %s", report.get("id"), e)
        return None
    courier().kick()
    return path


def drop(path: Path | None) -> None:
    """Remove a kept end once the server has it (or has refused it for good)."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def deliver(entry: dict[str, Any], session: requests.Session, timeout: float = 30.0) -> bool:
    """Send one kept end to its attempt's ``/finish``; True once the server has answered it.

    Raises nothing: False means try again later (unreachable, or the server
    failed); True means the server recorded the end or refused it for good (the
    attempt no longer holds the job, or the job is gone): keep it no longer.
    """
    report = dict(entry["report"])
    job_id, attempt, token = report.pop("id"), report.pop("attempt"), report.pop("token")
    url = f"{entry['server']}/api/v1/runner/jobs/{job_id}/finish"
    headers = {"Authorization": f"Bearer {token}", "X-Kotta-Attempt": str(attempt)}
    try:
        r = session.post(url, json=report, headers=headers,
                         timeout=(d.CONNECT_TIMEOUT_S, timeout))  # fmt: skip
    except BROKEN:
        return False
    if r.status_code == 200:
        log.info("job %s: delivered its end (attempt %s), kept on disk %.0f s", job_id, attempt,
                 time.time() - entry.get("kept_at", time.time()))  # fmt: skip
        return True
    if r.status_code >= 500 or r.status_code in (408, 429):
        return False
    # 409: the job was claimed again, cancelled or deleted meanwhile; 401/404: it is gone.
    log.warning("job %s: its end (attempt %s), kept on disk, was refused: HTTP %d %s", job_id,
                attempt, r.status_code, r.text[:200])  # fmt: skip
    return True


class Courier(threading.Thread):
    """Delivers the kept ends of this host's worker processes; one per process."""

    def __init__(self) -> None:
        super().__init__(name="kotta-outbox", daemon=True)
        self._wake = threading.Event()
        self.session = requests.Session()
        self._old_tried = -OLD_RETRY_S  # monotonic time the old ends were last tried

    def kick(self) -> None:
        """Look now: an end was just kept."""
        self._wake.set()

    def run(self) -> None:
        delay = 0.25
        while True:
            try:
                waiting = self.pass_once()
            except Exception:  # never let the courier die: ends would wait for a restart
                log.exception("outbox courier")
                waiting = True
            if waiting:
                self._wake.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                self._wake.wait(IDLE_SCAN_S)
                delay = 0.25
            self._wake.clear()

    def pass_once(self) -> bool:
        """Try each kept end once; True if some are still waiting."""
        try:
            base = directory()
            names = sorted(n for n in os.listdir(base) if n.endswith(".json"))
        except OSError:
            return False
        waiting = False
        try_old = time.monotonic() - self._old_tried >= OLD_RETRY_S
        if try_old:
            self._old_tried = time.monotonic()
        for name in names:
            path = base / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # delivered by another process meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    waiting = True  # another worker process is delivering it
                    continue
                if not path.exists():
                    continue
                try:
                    with os.fdopen(os.dup(fd)) as f:
                        entry = json.load(f)
                except ValueError:
                    log.warning("dropping an unreadable kept end: %s", path)
                    drop(path)
                    continue
                if not try_old and time.time() - entry.get("kept_at", 0) > OLD_S:
                    waiting = True
                    continue
                if deliver(entry, self.session):
                    drop(path)
                elif time.time() - entry.get("kept_at", 0) > KEEP_S:
                    log.warning("job %s: its end could not be delivered in %.0f days; dropped",
                                entry["report"].get("id"), KEEP_S / 86400)  # fmt: skip
                    drop(path)
                else:
                    waiting = True
            finally:
                os.close(fd)
        return waiting


@functools.cache
def courier() -> Courier:
    """This process's courier thread, started on first use."""
    c = Courier()
    c.start()
    return c


@functools.cache
def start() -> None:
    """Once per worker process, before its first claim: deliver the ends on disk, then start
    the courier.

    Done before the first claim so that a job whose end a dead worker process kept is
    recorded before this worker could claim it again.
    """
    first = Courier()
    try:
        first.pass_once()
    except Exception:
        log.exception("outbox: delivering the kept ends")
    finally:
        first.session.close()
    courier()


class CourierPlugin(WorkerPlugin):
    """Registered by the server on every worker, those that join or restart later included:
    the worker delivers the ends kept on disk as soon as it starts, not at its first job.

    With one dask task per job a worker may get no job at all before the server (which
    waits ``defaults.ORPHAN_GRACE_S`` after its start) takes the dead worker's jobs back.
    """

    name = "dask-kotta-outbox"
    idempotent = True

    def setup(self, worker: Any) -> None:
        # Off the worker's event loop: the first pass makes HTTP requests.
        threading.Thread(target=start, name="kotta-outbox-start", daemon=True).start()
