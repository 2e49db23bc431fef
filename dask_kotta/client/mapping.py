"""``Kotta.map``: many calls of one function, packed into few jobs.

A job is one contained process group, and costs milliseconds of CPU across the
server, a worker and the job. Tens of thousands of tiny calls are served the way
``ProcessPoolExecutor.map(chunksize=)`` and Lithops' ``map`` serve them: calls go
to jobs in chunks (``calls.run_calls`` runs a chunk), and each call still gets
its own future, with its own value or its own exception and traceback.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import defaults as d
from ..calls import run_pickled
from ..errors import InvalidRequestError, JobError, JobTimeoutError
from .job import KottaJob
from .serialize import dumps_value, loads_result

if TYPE_CHECKING:
    from .connection import Kotta

#: Chunks per slot by default: enough that slots finishing early find more work (as
#: ``multiprocessing.Pool.map``'s four chunks per process), few enough that no job is tiny.
CHUNKS_PER_SLOT = 4


def default_chunksize(n_calls: int, slots: int) -> int:
    """Calls per job: ``CHUNKS_PER_SLOT`` jobs for each of the queue's slots, at least one call."""
    return max(1, -(-n_calls // (CHUNKS_PER_SLOT * max(slots, 1))))


class _Chunk:
    """One job of a map: the calls ``start``..``stop - 1``, and their outcomes once it ended."""

    def __init__(self, job: KottaJob, name: str, start: int, stop: int):
        self.job, self.name, self.start, self.stop = job, name, start, stop
        self._outcomes: list[bytes] | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def outcomes(self, konn: Kotta, timeout: float | None) -> list[bytes]:
        with self._lock:
            if self._outcomes is None and self._error is None:
                try:
                    self._outcomes = self.job.get_results(konn, timeout=timeout)
                except JobTimeoutError:
                    raise  # the caller's patience, not the job's end: ask again later
                except Exception as e:  # the job ended without its calls' results
                    self._error = e
            if self._error is not None:
                raise self._error_for_call()
            assert self._outcomes is not None
            return self._outcomes

    def _error_for_call(self) -> BaseException:
        # A copy per call: the note names the call, and the chunk's own error stays as it was.
        err = copy.copy(self._error)
        assert err is not None
        err.__traceback__ = None
        err.add_note(
            f"{self.name}: job {self.job.job_id} ran calls {self.start}-{self.stop - 1} of the "
            "map and ended without their results"
        )
        return err


class CallFuture:
    """One call of :meth:`Kotta.map`: its value, or its exception, once its job has ended.

    ``result()`` returns the call's value or raises its exception (a ``RemoteError``
    that is also an instance of the remote exception's class, with the remote
    traceback). When the job that ran the call failed as a whole (walltime, memory,
    a lost worker, cancelled), every call in it raises that job's error, with a
    note naming the calls it held. ``Kotta.gather`` takes these futures as it takes
    jobs.
    """

    def __init__(self, konn: Kotta, chunk: _Chunk, index: int):
        self._konn, self._chunk, self.index = konn, chunk, index

    def __repr__(self) -> str:
        return f"<CallFuture {self._chunk.name}[{self.index}] job={self.job_id} {self.job._status}>"

    @property
    def job(self) -> KottaJob:
        """The job that runs this call (and the other calls of its chunk)."""
        return self._chunk.job

    @property
    def job_id(self) -> str | None:
        return self._chunk.job.job_id

    def done(self) -> bool:
        """True once the call's job was last seen ended (no request is made)."""
        return self._chunk.job.done()

    def result(self, timeout: float | None = None) -> Any:
        """The call's value; raises its exception, or ``JobTimeoutError`` after ``timeout`` s."""
        return self.get_results(self._konn, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's exception, or None if it returned a value."""
        try:
            self.result(timeout)
        except JobTimeoutError:
            raise
        except Exception as e:
            return e
        return None

    def status(self, konn: Kotta | None = None) -> str:
        """The status of the call's job, asked of the server."""
        return self._chunk.job.status(konn or self._konn)

    def cancel(self, konn: Kotta | None = None) -> bool:
        """Cancel the job that holds this call, and with it the other calls of its chunk."""
        return self._chunk.job.cancel(konn or self._konn)

    # What Kotta.gather and as_completed use of a job: the same names, so they take both.
    def require_id(self) -> str:
        return self._chunk.job.require_id()

    def apply_record(self, record: dict[str, Any], konn: Kotta) -> None:
        self._chunk.job.apply_record(record, konn)

    def get_results(self, konn: Kotta, timeout: float | None = None) -> Any:
        data = self._chunk.outcomes(konn, timeout)[self.index - self._chunk.start]
        try:
            return loads_result(data, self.require_id())
        except JobError as e:
            e.add_note(f"{self._chunk.name}: call {self.index} of the map")
            raise


def map_calls(
    konn: Kotta,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    queue: str = d.QUEUE,
    walltime: float = d.WALLTIME_MIN,
    chunksize: int | None = None,
    requirements: str | None = None,
    retries: int = 0,
    keep_days: float | None = None,
) -> list[CallFuture]:
    """The body of :meth:`Kotta.map`; see there."""
    if not iterables:
        raise TypeError("map() needs at least one iterable of arguments")
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise InvalidRequestError(f"chunksize must be a whole number >= 1, not {chunksize!r}")
    calls = [(args, {}) for args in zip(*iterables, strict=False)]
    if chunksize is None:
        info = konn.queues()
        if queue not in info:
            raise InvalidRequestError(
                f"unknown queue {queue!r}; this server has: {', '.join(sorted(info))}"
            )
        chunksize = default_chunksize(len(calls), int(info[queue].get("slots") or 0))
    name = getattr(fn, "__name__", "function")
    # The function is pickled once and its bytes put in each chunk's payload, not once per job.
    pickled_fn = dumps_value(fn)  # keeps the file it was defined in, for tracebacks
    chunks: list[_Chunk] = []
    for start in range(0, len(calls), chunksize):
        part = calls[start : start + chunksize]
        stop = start + len(part)
        job = KottaJob(
            jobtype="python", jobname=f"map-{name}-{start}-{stop - 1}", queue=queue,
            walltime=walltime, requirements=requirements, retries=retries, keep_days=keep_days,
        ).with_call(run_pickled, pickled_fn, part)  # fmt: skip
        chunks.append(_Chunk(job, f"map({name})", start, stop))
    konn.submit_many([c.job for c in chunks])
    return [CallFuture(konn, c, i) for c in chunks for i in range(c.start, c.stop)]
