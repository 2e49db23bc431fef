"""Wake long-poll waiters when a job (or a queue) changes, instead of polling on a timer."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict


class Notifier:
    """Per-key wake-ups within one server process (keys: job ids, ``queue:<name>``).

    ``notify`` may be called from any thread: sync routes run in a thread pool,
    and an ``asyncio.Event`` set off its loop would not wake the loop until
    something else did. A waiter still re-reads the store after waking (and at
    least every ``fallback_s``), so a change made by another process is seen too.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        #: The server is stopping: every wait returns at once, so no long poll holds it up.
        self.closed = False

    def notify(self, key: str) -> None:
        """Wake every waiter on ``key``."""
        if self._loop is None:
            return  # nobody has waited yet
        if threading.get_ident() == self._loop_thread:
            self._wake(key)
        else:
            try:
                self._loop.call_soon_threadsafe(self._wake, key)
            except RuntimeError:  # the loop is closed: the server is stopping
                pass

    def _wake(self, key: str) -> None:
        for ev in self._waiters.pop(key, ()):
            ev.set()

    def close(self) -> None:
        """Wake every waiter, and make every later :meth:`wait` return at once.

        Called in the loop when the server starts to stop: it then waits for the
        requests in flight, and a long poll would hold it up for its whole timeout.
        """
        self.closed = True
        for key in list(self._waiters):
            self._wake(key)

    async def wait(self, keys: list[str], timeout: float) -> None:
        """Until one of ``keys`` is notified, or ``timeout`` seconds (at once once closed)."""
        if self.closed:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        ev = asyncio.Event()
        for k in keys:
            self._waiters[k].add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            for k in keys:
                s = self._waiters.get(k)
                if s is not None:
                    s.discard(ev)
                    if not s:
                        self._waiters.pop(k, None)
