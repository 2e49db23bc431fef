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

    async def wait(self, keys: list[str], timeout: float) -> None:
        """Until one of ``keys`` is notified, or ``timeout`` seconds."""
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
