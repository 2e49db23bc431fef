"""A job's STDOUT and STDERR while it runs: read them from an offset, or follow them.

The server keeps what a running job printed so far (bounded: the first 256 KiB
and the last 1 MiB of each stream, with a line where it was cut) and, once
the job has ended, serves its STDOUT/STDERR outputs whole, at the same
offsets. ``Kotta.read_log`` is one read; :func:`follow` reads until the job
has ended and its logs will not grow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import defaults as d

if TYPE_CHECKING:
    from .connection import Kotta

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a job's log from the offset asked for; ``size``: where to read from next;
    ``final``: the job has ended and the log will not grow."""

    data: bytes
    size: int
    final: bool


def read_log(konn: Kotta, job_id: str, stream: str = "stdout", offset: int = 0) -> LogChunk:
    """One read of ``stream`` (``"stdout"`` or ``"stderr"``) of a job, from ``offset``."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
    r = konn.request("GET", f"/api/v1/jobs/{job_id}/logs/{stream}", params={"offset": offset})
    return LogChunk(
        r.content, int(r.headers["X-Kotta-Log-Size"]), r.headers.get("X-Kotta-Log-Final") == "1"
    )


def follow(
    konn: Kotta,
    job_id: str,
    streams: Sequence[str] = STREAMS,
    poll: float = 1.0,
    on_wait: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``(stream, bytes)`` of a job's logs as they arrive, until the job has ended and they
    are final. Between reads it waits up to ``poll`` s, less if the job ends, then calls
    ``on_wait`` with the job's record."""
    offsets = dict.fromkeys(streams, 0)
    final: set[str] = set()
    while True:
        for stream in streams:
            if stream in final:
                continue
            chunk = read_log(konn, job_id, stream, offsets[stream])
            if chunk.size < offsets[stream]:
                offsets[stream] = 0  # run again (requeued): its log starts over
                continue
            offsets[stream] = chunk.size
            if chunk.data:
                yield stream, chunk.data
            if chunk.final:
                final.add(stream)
        if len(final) == len(streams):
            return
        # A long poll: wakes at once when the job ends, so its last output comes without delay.
        job = konn.job(job_id, wait=poll)
        if on_wait is not None:
            on_wait(job)
        if job["status"] in d.TERMINAL_STATUSES:
            time.sleep(0.2)  # ended; its runner's last bytes are on their way
