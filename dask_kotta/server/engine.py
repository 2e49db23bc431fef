"""Dispatch: one dask.distributed task per job attempt.

The job store is the queue; dask.distributed only decides where and when a
runner runs. Each attempt gets a fresh dispatch token (its hash is stored on
the job) and is submitted with the queue's resource, e.g. ``resources={"Test": 1}``,
so only workers started with that resource take it. A task whose claim finds
the job already taken (an older attempt re-run by distributed, or a job
cancelled meanwhile) simply returns: the lease makes sure one job never runs
twice at once.

Tasks are also ``fire_and_forget``: if this server process dies, runners
already placed keep going and report to the restarted server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from distributed import Client, fire_and_forget

from ..runner.runner import run_job
from ..store.jobs import JobStore
from .auth import hash_token

log = logging.getLogger("dask_kotta.server")


class Engine:
    """Submits runner tasks to a dask.distributed scheduler."""

    def __init__(
        self, store: JobStore, scheduler: str, public_url: str, on_change: Callable[[str], None]
    ):
        self.store = store
        self.scheduler = scheduler
        self.public_url = public_url
        self.on_change = on_change
        self.client: Client | None = None
        self._futures: dict[str, object] = {}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.client = await Client(
            self.scheduler, asynchronous=True, name="dask-kotta-server", timeout=30
        )

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.client is not None:
            await self.client.close()

    def dispatch(self, job_id: str, queue: str) -> int | None:
        """Start the next attempt of a pending job; returns the attempt number."""
        token = secrets.token_urlsafe(24)
        attempt = self.store.dispatch(job_id, hash_token(token))
        if attempt is None:
            return None
        fut = self.client.submit(
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
        task = asyncio.get_running_loop().create_task(self._watch(job_id, attempt, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return attempt

    async def _watch(self, job_id: str, attempt: int, fut) -> None:
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

    async def workers(self) -> dict:
        info = await self.client.scheduler_info() if self.client else {"workers": {}}
        return {
            addr: {"resources": w.get("resources", {}), "nthreads": w.get("nthreads")}
            for addr, w in info.get("workers", {}).items()
        }
