"""Live logs: a running job's STDOUT and STDERR as they reach the server, bounded.

A runner sends each stream's new bytes every second or so while its job runs
(``runner/live_logs.py``); this module keeps them and answers readers.

**Offsets** are positions in the stream as the job wrote it (its STDOUT file),
on every side: a runner sends ``(offset, bytes)``, a reader asks from an
offset, and ``size`` is how far the stream has reached the server. A reader
goes on from ``size``, so it sees each byte once.

**Bounded.** Per stream the server keeps the first ``LIVE_LOG_HEAD_BYTES`` and
the last ``LIVE_LOG_TAIL_BYTES`` (one object of at most their sum in the store,
rewritten as it grows), whatever the job prints; a runner never sends more
than that either (it skips what would be cut). A read that spans a cut gets a
line saying how many bytes were cut there. Once the job has ended with its
STDOUT/STDERR stored as outputs (as every job that is not cancelled or lost
does), reads come from those files, whole.

**Final.** A stream is final once it will not grow: the job ended and its
output is stored, or its runner sent its last bytes (a cancelled job's), or it
never ran, or it ended ``FINAL_AFTER_S`` ago (its runner died with it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import defaults as d
from ..errors import ConflictError, NotFoundError
from ..store.objects import job_key
from .claims import Attempt
from .jobs import own_job
from .service import Service

STREAMS = ("stdout", "stderr")
#: An ended job's live log is final this long after its end even if its runner never said so.
FINAL_AFTER_S = 10.0
#: One read-modify-write of a log object at a time (a lock per log, striped: never grows).
_locks = [threading.Lock() for _ in range(64)]


def cut_notice(n: int) -> bytes:
    """The line a reader sees where ``n`` bytes of a live log were cut."""
    return (
        f"\n[kotta: {n} bytes cut here: a live log keeps the first "
        f"{d.LIVE_LOG_HEAD_BYTES // 1024} KiB and the last {d.LIVE_LOG_TAIL_BYTES // 1024} KiB "
        "of a stream; the whole file is an output of the job once it has ended]\n"
    ).encode()


@dataclass
class LiveLog:
    """One stream's bounded log: ``head`` (bytes from 0), ``tail`` (bytes from ``tail_start``
    up to ``size``); when ``tail_start > len(head)`` the bytes between were cut."""

    attempt: int = 0
    size: int = 0
    head: bytes = b""
    tail_start: int = 0
    tail: bytes = b""
    final: bool = False
    head_max: int = field(default=d.LIVE_LOG_HEAD_BYTES, repr=False)
    tail_max: int = field(default=d.LIVE_LOG_TAIL_BYTES, repr=False)

    def append(self, offset: int, data: bytes) -> None:
        """Take the stream's bytes ``data`` from ``offset``: what is held already is skipped
        (a repeat), a gap after ``size`` is a cut (the runner skipped those bytes)."""
        if offset < self.size:
            data = data[self.size - offset :]
            offset = self.size
        if not data:
            return
        if offset == self.size == len(self.head) < self.head_max:
            take = data[: self.head_max - len(self.head)]
            self.head += take
            data, offset = data[len(take) :], offset + len(take)
            self.size = self.tail_start = offset
        if data:
            if offset == self.size:
                self.tail += data  # the tail (maybe empty) goes on where it ends
            else:
                self.tail, self.tail_start = data, offset
            if len(self.tail) > self.tail_max:
                self.tail_start += len(self.tail) - self.tail_max
                self.tail = self.tail[-self.tail_max :]
            self.size = offset + len(data)

    def read(self, offset: int) -> bytes:
        """The bytes held from ``offset`` to ``size``, with a notice where some were cut."""
        parts = []
        if offset < len(self.head):
            parts.append(self.head[offset:])
            offset = len(self.head)
        if offset < self.tail_start:
            parts.append(cut_notice(self.tail_start - offset))
            offset = self.tail_start
        parts.append(self.tail[offset - self.tail_start :])
        return b"".join(parts)

    def encode(self) -> bytes:
        meta = {"attempt": self.attempt, "size": self.size, "head": len(self.head),
                "tail_start": self.tail_start, "final": self.final}  # fmt: skip
        return json.dumps(meta).encode() + b"\n" + self.head + self.tail

    @classmethod
    def decode(cls, raw: bytes) -> LiveLog:
        line, _, rest = raw.partition(b"\n")
        meta = json.loads(line)
        n = meta["head"]
        return cls(attempt=meta["attempt"], size=meta["size"], head=rest[:n],
                   tail_start=meta["tail_start"], tail=rest[n:], final=meta["final"])  # fmt: skip


def _key(job: dict[str, Any], stream: str) -> str:
    return job_key(job["owner"], job["id"], d.LIVE_LOG_OBJECT.format(stream=stream))


def _load(s: Service, job: dict[str, Any], stream: str) -> LiveLog | None:
    try:
        return LiveLog.decode(s.objects.get_bytes(_key(job, stream)))
    except NotFoundError:
        return None


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise NotFoundError(f"no log {stream!r}: a job's logs are 'stdout' and 'stderr'")


def append(s: Service, a: Attempt, stream: str, offset: int, data: bytes, final: bool) -> int:
    """Add a runner's bytes of ``stream`` at ``offset``; returns the size now held.

    Taken from the attempt that holds the job, and from the one that was running
    it when it was cancelled (its last bytes come after the cancel);
    ``ConflictError`` from any other.
    """
    _check_stream(stream)
    job = s.store.get(a.job_id)
    if job is None or job["attempt"] != a.attempt or job["dispatch_hash"] != a.token_hash:
        raise ConflictError(f"attempt {a.attempt} no longer holds job {a.job_id}")
    with _locks[hash((a.job_id, stream)) % len(_locks)]:
        log = _load(s, job, stream)
        if log is None or log.attempt < a.attempt:
            log = LiveLog(attempt=a.attempt)  # a new attempt's output starts over
        log.append(offset, data)
        log.final = log.final or final
        s.objects.put_bytes(_key(job, stream), log.encode())
    return log.size


@dataclass
class Answer:
    """What a reader gets: the bytes from its offset, the size so far, and whether it is final."""

    body: Iterator[bytes] | bytes
    size: int
    final: bool


def _output(job: dict[str, Any], stream: str) -> dict[str, Any] | None:
    name = job["spec"].get(stream)
    return next((o for o in job["outputs"] if o["name"] == name), None)


def _skipped(f: Any, offset: int) -> Iterator[bytes]:
    """The rest of the open object ``f`` from ``offset``, in chunks; closes it."""
    try:
        try:
            f.seek(offset)
        except (AttributeError, OSError, ValueError):  # a stream (S3): read past the start
            left = offset
            while left > 0 and (skip := f.read(min(left, 1024 * 1024))):
                left -= len(skip)
        while chunk := f.read(1024 * 1024):
            yield chunk
    finally:
        f.close()


def read(s: Service, user_id: int, job_id: str, stream: str, offset: int) -> Answer:
    """``stream`` of the user's job from ``offset``; see the module docstring."""
    _check_stream(stream)
    job = own_job(s, user_id, job_id)
    ended = job["status"] in d.TERMINAL_STATUSES
    out = _output(job, stream) if ended else None
    if out is not None:
        # The whole file, as the job left it: the same offsets as the live log's.
        key = job_key(job["owner"], job["id"], out["name"])
        size = out.get("size")
        if size is None:
            size = s.objects.size(key) or 0
        if offset >= size:
            return Answer(b"", size, True)
        return Answer(_skipped(s.objects.open_read(key), offset), size, True)
    log = _load(s, job, stream)
    if log is None or (log.attempt != job["attempt"] and not ended):
        log = LiveLog(attempt=job["attempt"])  # nothing yet from the attempt running now
    final = ended and (
        log.final
        or job["t_run"] is not None  # it ran and ended, and its output is not there: none made
        or job["started_at"] is None
        or (job["ended_at"] or 0) < time.time() - FINAL_AFTER_S
        or not _ran(s, job)
    )
    return Answer(log.read(min(offset, log.size)) if offset < log.size else b"", log.size, final)


def _ran(s: Service, job: dict[str, Any]) -> bool:
    """Whether the job reached ``processing`` (so a runner may still send its last bytes)."""
    return any(e["status"] == d.PROCESSING for e in s.store.events(job["id"]))
