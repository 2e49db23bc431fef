"""Wake long-poll waiters when a job changes, instead of polling on a timer."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Notifier:
    """Per-job wake-ups within one server process.

    A waiter still re-reads the store after waking (and at least every
    ``fallback_s``), so a change made by another process is seen too.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, job_id: str) -> None:
        for ev in self._waiters.pop(job_id, ()):
            ev.set()

    async def wait(self, job_ids: list[str], timeout: float) -> None:
        ev = asyncio.Event()
        for j in job_ids:
            self._waiters[j].add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            for j in job_ids:
                s = self._waiters.get(j)
                if s is not None:
                    s.discard(ev)
                    if not s:
                        self._waiters.pop(j, None)
