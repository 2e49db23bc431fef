"""A running job's STDOUT and STDERR, sent to the server as they grow.

The job writes its streams to files in its directory, as always (they become
its STDOUT/STDERR outputs at the end). While it runs, :class:`LiveLogs` reads
what each file gained and sends it (``PUT .../logs/{stream}?offset=N``): first
``LIVE_LOG_FIRST_S`` after the start, so a job shorter than that sends
nothing, then every ``LIVE_LOG_EVERY_S`` while the files grow. It never sends
more than the server keeps (the first ``LIVE_LOG_HEAD_BYTES`` and the last
``LIVE_LOG_TAIL_BYTES``; see ``server/logs.py``): bytes that would be cut are
skipped, not read, so a job printing gigabytes costs a read of the tail per
tick. A job taken away (cancelled) sends what is left when its processes are
gone (:meth:`LiveLogs.finish`): that is all it keeps of its output.

When the sends happen is the reporting strategy's: a timer of its own for a
task's job (:class:`~.reporting.Direct`), the host's shared timer thread and
pool for a slot's (``slot_reporting.py``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import requests

from .. import defaults as d
from .api import LostJob, RunnerAPI
from .jobfiles import job_file

log = logging.getLogger("dask_kotta.runner")

#: Chunks one stream sends per tick at most (a head, then the tail past a cut).
_CHUNKS_PER_TICK = 3


class StreamTail:
    """What one of the job's stream files has that the server has not, bounded as it keeps it."""

    def __init__(self, workdir: Path, name: str):
        self.workdir, self.name = workdir, name
        self.sent = 0  # the stream's bytes up to here have reached the server
        self._f: BinaryIO | None = None

    def chunk(self) -> tuple[int, bytes] | None:
        """``(offset, bytes)`` to send next, or None while there is nothing new."""
        if self._f is None:
            # Opened once, without following what the job may have put there (jobfiles.py),
            # and kept: it is the file the job's descriptors write to.
            self._f = job_file(self.workdir, self.name)
            if self._f is None:
                return None
        fd = self._f.fileno()
        size = os.fstat(fd).st_size
        start = self.sent
        if size <= start:
            return None
        if start >= d.LIVE_LOG_HEAD_BYTES and size - start > d.LIVE_LOG_TAIL_BYTES:
            start = size - d.LIVE_LOG_TAIL_BYTES  # the server would cut what lies before
        data = os.pread(fd, min(size - start, d.LIVE_LOG_TAIL_BYTES), start)
        return (start, data) if data else None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class LiveLogs:
    """Sends one job's streams while it runs; see the module docstring.

    ``later(delay, fn)`` runs the quick ``fn`` after ``delay`` s; ``background(fn)``
    runs ``fn``, which talks to the server, where it may block.
    """

    def __init__(
        self,
        api: RunnerAPI,
        workdir: Path,
        job: Mapping[str, Any],
        later: Callable[[float, Callable[[], None]], None],
        background: Callable[[Callable[[], None]], None],
    ):
        self.api = api
        self.tails = {"stdout": StreamTail(workdir, job["stdout"])}
        if job["stderr"] != job["stdout"]:  # one file for both: it is the stdout log
            self.tails["stderr"] = StreamTail(workdir, job["stderr"])
        self._later, self._background = later, background
        self._lock = threading.Lock()  # one send at a time; stop waits for the one under way
        self._stopped = False

    def start(self) -> None:
        self._later(d.LIVE_LOG_FIRST_S, self._due)

    def _due(self) -> None:
        if not self._stopped:  # the usual case for a short job: it ended, nothing is sent
            self._background(self._tick)

    def _tick(self) -> None:
        with self._lock:
            if not self._stopped:
                try:
                    self._send(final=False, patience_s=0)
                except LostJob:
                    self._stopped = True  # taken away: finish() sends the rest, if called
                except requests.HTTPError as e:
                    if e.response is not None and e.response.status_code < 500:
                        # Refused (a server without live logs: 404): asking again each second
                        # would be refused again.
                        log.info("live log of job %s refused: %s", self.api.identity["id"], e)
                        self._stopped = True
                except Exception as e:  # the server away for now: the next tick tries again
                    log.debug("live log of job %s not sent: %s", self.api.identity["id"], e)
            if self._stopped:
                self._close()
                return
        self._later(d.LIVE_LOG_EVERY_S, self._due)

    def _send(self, final: bool, patience_s: float) -> None:
        for stream, tail in self.tails.items():
            for _ in range(_CHUNKS_PER_TICK if not final else 1_000):
                got = tail.chunk()
                if got is None:
                    break
                offset, data = got
                self.api.send_log(stream, offset, data, patience_s=patience_s)
                tail.sent = offset + len(data)
            if final:
                self.api.send_log(stream, tail.sent, b"", final=True, patience_s=patience_s)

    def stop(self) -> None:
        """Send no more (the job's processes are gone; its outputs carry its streams).

        Never waits for a send under way: that one closes the files when it is done.
        """
        self._stopped = True
        if self._lock.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._lock.release()

    def finish(self) -> None:
        """Send what is left, marked final: the job was taken away and has no outputs."""
        with self._lock:
            self._stopped = True
            try:
                self._send(final=True, patience_s=2.0)
            except Exception as e:
                log.info("job %s: the end of its live log was not sent: %s",
                         self.api.identity["id"], e)  # fmt: skip
            self._close()

    def _close(self) -> None:
        for tail in self.tails.values():
            tail.close()


def on_timer_threads(api: RunnerAPI, workdir: Path, job: Mapping[str, Any]) -> LiveLogs:
    """Started :class:`LiveLogs` whose sends run on timer threads of their own (a task's job)."""

    def later(delay: float, fn: Callable[[], None]) -> None:
        timer = threading.Timer(delay, fn)
        timer.daemon = True
        timer.start()

    logs = LiveLogs(api, workdir, job, later, lambda fn: fn())
    logs.start()
    return logs
