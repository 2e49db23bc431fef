"""Dispatch: how pending jobs reach runners on the dask cluster.

The job store is the queue and the source of truth in both modes; dask.distributed
decides where runners run, through each queue's worker resource (``Test=4``).

``slots`` (the default): one long-running *slot* task per resource unit of a
queue, e.g. 8 slot tasks for two workers started with ``Test=4``. A slot asks
the server for the next jobs of its queue (``POST /api/v1/runner/next``, a
long-poll that records the ends of the jobs the slot ran and claims the oldest
pending ones, returning their leases, dispatch tokens and small payloads in
one answer), runs them like any runner, and asks again. Dispatch then costs
a share of one request instead of a dask task round trip (~10 ms here); see
``runner/slots.py`` for how many a slot takes at once. Slots authenticate with a secret made by this server process;
after a restart an old slot's next request is refused and it ends, while the
job it was running keeps its own dispatch token and finishes normally. Slots
are kept at the cluster's resource count: started when workers join, placed
again by distributed when their worker dies.

``tasks`` (``DASK_KOTTA_DISPATCH=tasks``): one dask task per job attempt. Each
attempt gets a fresh dispatch token (its hash is stored on the job) and is
submitted with the queue's resource. A task whose claim finds the job already
taken (an older attempt re-run by distributed, or a job cancelled meanwhile)
simply returns. Tasks are ``fire_and_forget``: if this server process dies,
runners already placed keep going and report to the restarted server.

Either way the lease makes sure one job never runs twice at once, and a job a
runner lost goes back to pending, where either mode picks it up again.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from distributed import Client, Future, Security, fire_and_forget

from ..runner.outbox import CourierPlugin
from ..runner.runner import run_job
from ..runner.slots import end_slots, run_slot
from ..store.jobs import JobStore
from .auth import hash_token
from .notify import Notifier

log = logging.getLogger("dask_kotta.server")

#: ``slots`` or ``tasks``; see the module docstring.
DISPATCH_VAR = "DASK_KOTTA_DISPATCH"
#: How often the slot count is compared with the cluster's resources, in seconds.
SLOT_CHECK_S = 2.0


class Engine:
    """Hands pending jobs to runners on a dask.distributed cluster."""

    def __init__(
        self,
        store: JobStore,
        scheduler: str,
        public_url: str,
        on_change: Callable[[str], None],
        queues: list[str] | None = None,
        notifier: Notifier | None = None,
        mode: str | None = None,
        security: Security | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        #: ``distributed.Security`` for a tls:// scheduler; None: plain tcp or dask's config.
        self.security = security
        self.public_url = public_url
        self.on_change = on_change
        self.queues = list(queues or [])
        self.notifier = notifier or Notifier()
        self.mode = mode or os.environ.get(DISPATCH_VAR, "slots")
        if self.mode not in ("slots", "tasks"):
            raise ValueError(f"{DISPATCH_VAR} must be 'slots' or 'tasks', not {self.mode!r}")
        if not self.queues:
            self.mode = "tasks"  # slots need to know the queues they serve
        self.client: Client | None = None
        self._futures: dict[str, object] = {}
        self._tasks: set[asyncio.Task] = set()
        self._slots: dict[str, list] = {q: [] for q in self.queues}
        self._slot_token = secrets.token_urlsafe(32)
        self._slot_hash = hash_token(self._slot_token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.client = await Client(
            self.scheduler,
            asynchronous=True,
            name="dask-kotta-server",
            timeout=30,
            security=self.security,
        )
        try:
            # Ends kept on a worker's disk go out when it starts (a restarted one included).
            await self.client.register_plugin(CourierPlugin())
        except Exception:  # an old or odd cluster: workers start their courier at their first job
            log.warning("could not register the outbox plugin on the workers", exc_info=True)
        if self.mode == "slots":
            self._spawn(self._keep_slots())

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.client is not None:
            if self.mode == "slots":
                try:
                    await asyncio.wait_for(self.client.run(end_slots, self._slot_token), 5)
                except Exception:  # workers gone or slow: their slots end on their own
                    log.debug("could not end the slots", exc_info=True)
            await self.client.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _started(self) -> tuple[asyncio.AbstractEventLoop, Client]:
        if self._loop is None or self.client is None:
            raise RuntimeError("the engine has not been started")
        return self._loop, self.client

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self, job_id: str, queue: str) -> int | None:
        """Hand a pending job to a runner.

        In ``tasks`` mode this starts its next attempt and returns the attempt
        number; in ``slots`` mode it wakes the slots waiting on ``queue`` (the
        slot that claims the job starts the attempt) and returns None.
        Safe to call from any thread.
        """
        if self.mode == "slots":
            self.notifier.notify(f"queue:{queue}")
            return None
        loop, client = self._started()
        if threading.get_ident() != self._loop_thread:
            # A sync route (thread pool): the dask client and the watchers live on the loop.
            loop.call_soon_threadsafe(self.dispatch, job_id, queue)
            return None
        token = secrets.token_urlsafe(24)
        attempt = self.store.dispatch(job_id, hash_token(token))
        if attempt is None:
            return None
        fut = client.submit(
            run_job,
            self.public_url,
            job_id,
            attempt,
            token,
            key=f"kotta-{job_id}-{attempt}",
            resources={queue: 1},
            pure=False,
            retries=0,
        )
        fire_and_forget(fut)
        self._futures[job_id] = fut
        self._spawn(self._watch(job_id, attempt, fut))
        return attempt

    async def _watch(self, job_id: str, attempt: int, fut: Future) -> None:
        try:
            await fut
        except asyncio.CancelledError:
            return
        except Exception as e:  # the runner itself died: worker killed, import error...
            reason = f"runner failed on the dask cluster: {type(e).__name__}: {e}"
            if self.store.fail_pending(job_id, attempt, reason):
                log.warning("job %s: %s", job_id, reason)
                self.on_change(job_id)
        finally:
            if self._futures.get(job_id) is fut:
                del self._futures[job_id]

    async def cancel(self, job_id: str) -> None:
        """Drop a job's queued task; a running one stops at its next heartbeat."""
        fut = self._futures.pop(job_id, None)
        if fut is not None and self.client is not None:
            try:
                await self.client.cancel([fut], force=True)
            except Exception:  # the scheduler may already have forgotten it
                log.debug("cancel of %s's task failed", job_id, exc_info=True)

    # -- slots --------------------------------------------------------------------------

    def slot_token_ok(self, token: str) -> bool:
        """True if ``token`` is this server process's slot secret."""
        return hmac.compare_digest(hash_token(token), self._slot_hash)

    def slot_count(self, queue: str) -> int:
        """How many slots of ``queue`` this server started and still has (at least 1)."""
        return max(1, sum(not f.done() for f in self._slots.get(queue, ())))

    async def wait_for_work(self, queue: str, timeout: float) -> None:
        """Until a job of ``queue`` may have become pending, or ``timeout`` seconds."""
        await self.notifier.wait([f"queue:{queue}"], timeout)

    async def _keep_slots(self) -> None:
        _, client = self._started()
        while True:
            try:
                units = await self.capacity()
                for queue in self.queues:
                    live = [f for f in self._slots[queue] if not f.done()]
                    for _ in range(units.get(queue, 0) - len(live)):
                        fut = client.submit(
                            run_slot, self.public_url, queue, self._slot_token,
                            key=f"kotta-slot-{queue}-{secrets.token_hex(6)}",
                            resources={queue: 1}, pure=False, retries=0,
                        )  # fmt: skip
                        # A running slot outlives this server process; it ends at its next
                        # request, which the next server process refuses.
                        fire_and_forget(fut)
                        live.append(fut)
                    self._slots[queue] = live
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("cannot check the slots; trying again", exc_info=True)
            await asyncio.sleep(SLOT_CHECK_S)

    async def _identity(self) -> dict:
        # An asynchronous client's scheduler_info() is a cache without the workers: ask.
        scheduler = self.client.scheduler if self.client is not None else None
        if scheduler is None:  # not connected (yet)
            return {"workers": {}}
        return await scheduler.identity(n_workers=-1)

    async def live_workers(self) -> set[str] | None:
        """Addresses of the workers the scheduler has now; None if it cannot be asked."""
        if self.client is None or self.client.scheduler is None:
            return None
        try:
            info = await self._identity()
        except Exception:  # the scheduler is unreachable: that says nothing about workers
            log.debug("could not ask the scheduler for its workers", exc_info=True)
            return None
        return set(info.get("workers", {}))

    async def capacity(self) -> dict[str, int]:
        """Resource units (job slots) per queue across the cluster's workers now."""
        info = await self._identity()
        units: dict[str, int] = {}
        for w in info.get("workers", {}).values():
            for q, n in (w.get("resources") or {}).items():
                units[q] = units.get(q, 0) + int(n)
        return units
