"""What the slots of one worker process share: timed calls, and which servers have stopped.

A worker runs several slots (one per unit of each queue's resource), each
running jobs one after another. Their jobs need calls at due times: a lease
renewal every ``heartbeat_s``, a phase report 0.2 s after the phase began
if the job is still in it, a flush of kept ends. One thread per job for that
would cost more than the short jobs themselves, so a :class:`SlotHost` runs
them all:

- one *timer thread* keeps a heap of ``(due, call)`` and runs each call at
  its time; those calls are quick checks (is the job still running?);
- what such a check decides to send goes to a *pool*, so one slow request
  holds up no other job's heartbeat (threads are made only as calls overlap:
  one, unless the server is slow);
- the *stopped servers*: a stopping server calls :func:`~.slots.end_slots`
  on every worker with its slots' secret, and every slot holding it ends at
  once instead of retrying an unreachable server (which would hold up the
  worker's close). A server never comes back with the same secret, so these
  are remembered for the process's life, over any number of slot runs.

Lifecycle: the host of a process is made by the first slot to start (or by
``end_slots``); :meth:`SlotHost.running` holds its threads while a slot runs,
and the last slot to stop closes them. A test makes its own with
``SlotHost()`` and ends it with :meth:`SlotHost.close`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .api import RunnerAPI
from .reporting import beat

log = logging.getLogger("dask_kotta.runner")

#: Threads at most for the timed calls that talk to the server.
POOL_THREADS = 32
#: How often a pausing slot looks whether its worker is closing, in seconds.
CLOSING_CHECK_S = 0.1


class _Timers(threading.Thread):
    """Runs quick calls at due times, until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="kotta-timers")
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False

    def add(self, due: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        """Drop the calls not due yet; the thread ends."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            _logged(fn)


def _logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.debug("slot timer call failed", exc_info=True)


def _stop(timers: _Timers | None, pool: ThreadPoolExecutor | None) -> None:
    if timers is not None:
        timers.stop()
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


class SlotHost:
    """The timer thread, the pool and the stopped servers of one worker's slots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timers: _Timers | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = 0
        self._ended_tokens: set[str] = set()
        self._ended = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[SlotHost]:
        """Held by each slot while it runs; the last one out closes the threads."""
        with self._lock:
            self._slots += 1
        try:
            yield self
        finally:
            with self._lock:
                self._slots -= 1
                # Taken in the same hold of the lock: a slot starting meanwhile makes new ones.
                threads = self._detach() if self._slots == 0 else (None, None)
            _stop(*threads)

    def close(self) -> None:
        """Stop the timer thread and the pool; calls not due or not started are dropped.

        Used again, the host starts new ones.
        """
        with self._lock:
            threads = self._detach()
        _stop(*threads)

    def _detach(self) -> tuple[_Timers | None, ThreadPoolExecutor | None]:
        threads = self._timers, self._pool
        self._timers = self._pool = None
        return threads

    # -- timed calls --------------------------------------------------------------------

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run the quick ``fn`` on the timer thread ``delay`` seconds from now."""
        with self._lock:
            if self._timers is None or not self._timers.is_alive():
                self._timers = _Timers()
                self._timers.start()
            timers = self._timers
        timers.add(time.monotonic() + delay, fn)

    def background(self, fn: Callable[[], None]) -> None:
        """Run ``fn``, which talks to the server, on the pool for timed calls."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="kotta-timed")
            pool = self._pool
        pool.submit(_logged, fn)

    # -- stopped servers ----------------------------------------------------------------

    def end(self, token: str) -> None:
        """The server whose slots hold ``token`` is stopping: they end now."""
        self._ended_tokens.add(token)
        self._ended.set()

    def ended(self, token: str) -> bool:
        """Whether the server of ``token`` said it is stopping."""
        return token in self._ended_tokens

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a server says it is stopping or the worker closes."""
        deadline = time.monotonic() + seconds
        while not self._ended.wait(min(CLOSING_CHECK_S, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or worker_closing():
                return


def worker_closing() -> bool:
    """Whether the dask worker this runs in is closing (a slot then ends, not retries)."""
    try:
        from distributed import get_worker

        return get_worker().status.name in ("closing", "closing_gracefully", "closed", "failed")
    except (ImportError, ValueError):
        return False


class TimerHeartbeat:
    """A lease (``reporting.Lease``) kept by a host's timer thread instead of a thread of its own."""

    def __init__(self, api: RunnerAPI, interval: float, host: SlotHost):
        self.api, self.interval, self.host = api, interval, host
        self.lost: str | None = None
        self._stopped = False

    def start(self) -> None:
        self.host.later(self.interval, self._due)

    def _due(self) -> None:
        if not self._stopped:
            self.host.background(self._beat)

    def _beat(self) -> None:
        self.lost = beat(self.api)
        if self.lost is None and not self._stopped:
            self.host.later(self.interval, self._due)

    def stop(self) -> None:
        self._stopped = True


_process_host: SlotHost | None = None
_process_lock = threading.Lock()


def process_host() -> SlotHost:
    """This worker process's host, made on first use (see the module docstring)."""
    global _process_host
    with _process_lock:
        if _process_host is None:
            _process_host = SlotHost()
        return _process_host
