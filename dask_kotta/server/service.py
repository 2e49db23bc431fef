"""The server's state: configuration, stores, engine, and the loops that keep jobs moving.

One :class:`Service` per server process. What the API does with it lives in
modules over it, one per audience: ``jobs`` (users' jobs), ``claims`` (runners'
attempts), ``inputs`` and ``files`` (where inputs come from, uploads and outputs);
the routes (``routes_*``) only turn requests into calls of those.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import defaults as d
from ..s3client import s3_client
from ..store import retention
from ..store.blobs import Blobs, KeptSmall
from ..store.jobs import JobStore
from ..store.objects import LocalObjectStore, open_store
from ..store.presign import Presigner, presigner
from .engine import Engine
from .notify import Notifier
from .policy import Policy, load_policy
from .queues import Queue, load_queues
from .usage import StorageUsage

#: How long the server trusts a token it looked up, in seconds: a token deleted from the
#: store (or its user) is refused at most this long after. Each request would otherwise
#: cost a query; a busy client makes many per second with the same token.
TOKEN_CACHE_S = 1.0
#: Tokens remembered at most (a flood of valid tokens cannot grow the server without end).
TOKEN_CACHE_MAX = 4096

log = logging.getLogger("dask_kotta.server")


@dataclass
class ServerConfig:
    """Everything a server needs; the CLI flags map onto these fields."""

    data_dir: Path = Path(d.DATA_DIR)
    scheduler: str = ""
    public_url: str = f"http://127.0.0.1:{d.PORT}"
    database: str | None = None
    store: str | None = None
    queues_file: str | None = None
    max_payload_bytes: int = d.MAX_PAYLOAD_BYTES
    lease_s: float = d.LEASE_S
    heartbeat_s: float = d.HEARTBEAT_S
    max_requeues: int = d.MAX_REQUEUES
    #: Days an ended job is kept (``--keep``); 0 keeps every job for ever.
    keep_days: float = d.KEEP_DAYS
    #: The longest any job is kept (``--max-keep``), its own ``keep_days`` and ``keep_days``
    #: included; None: no bound.
    max_keep_days: float | None = None
    #: Jobs one user may have pending at once, all queues (``--max-pending``; 0: no limit).
    max_pending: int = d.MAX_PENDING
    #: Largest upload a user may start, in bytes (``--max-upload``; 0: no limit).
    max_upload_bytes: int = d.MAX_UPLOAD_BYTES
    #: Bytes one user may keep in the object store (``--max-storage``; 0: no limit).
    max_storage_bytes: int = d.MAX_STORAGE_BYTES
    #: Seconds a download link opens without a token (``--link-ttl``).
    link_ttl_s: float = d.LINK_TTL_S
    #: Run jobs uncontained on workers that cannot contain them (``--allow-uncontained``).
    allow_uncontained: bool = False
    #: The only user served, when jobs here cannot be contained (``uncontained`` says why).
    single_user: str | None = None
    uncontained: str = ""
    policy_file: str | None = None
    #: The dask dashboard's URL as the operator publishes it (``--dashboard-url``); the web
    #: page links to it. None: the page shows no link (up's own cluster serves none).
    dashboard_url: str | None = None
    #: ``distributed.Security`` to reach a tls:// scheduler with (None: plain tcp).
    security: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.database or str(Path(self.data_dir) / "jobs.sqlite")


class Service:
    """Owns the store, the object store and the engine for one server process."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.queues: dict[str, Queue] = load_queues(config.queues_file)
        self.policy: Policy = load_policy(config.policy_file)
        self._grant_client: Any = None
        self.store = JobStore(config.database_url)
        #: The object store, with jobs' small objects kept as rows of the job database.
        inner = open_store(config.store, config.data_dir)
        self.objects = KeptSmall(
            inner, Blobs(self.store.engine), everything=isinstance(inner, LocalObjectStore)
        )
        recount_s = float(os.environ.get("DASK_KOTTA_USAGE_RECOUNT_S", d.USAGE_RECOUNT_S))
        #: Each user's bytes in ``objects``, for the storage quota (``--max-storage``).
        self.usage = StorageUsage(self.objects, recount_s)
        self.notifier = Notifier()
        self.engine = Engine(
            self.store, config.scheduler, config.public_url, self.changed,
            queues=list(self.queues), notifier=self.notifier, security=config.security,
        )  # fmt: skip
        self._reaper: asyncio.Task | None = None
        # token hash -> (user, until): a deleted token is refused within TOKEN_CACHE_S.
        self._user_cache: dict[str, tuple[dict, float]] = {}
        self._link_key: bytes | None = None

    def link_key(self) -> bytes:
        """The secret download links are signed with, shared by every server of the store's
        database (read once per process)."""
        if self._link_key is None:
            self._link_key = bytes.fromhex(self.store.server_key("download-links"))
        return self._link_key

    def grant_presigner(self) -> Presigner:
        """Signs GETs of users' granted ``s3://`` inputs and PUTs of their granted destinations:
        the store's S3 client, or one from boto3's standard chain when the store is a local
        directory."""
        if self._grant_client is None:
            client = getattr(self.objects, "client", None)
            if client is None:
                client = s3_client()
            self._grant_client = client
        return presigner(self._grant_client)

    def changed(self, job_id: str) -> None:
        self.notifier.notify(job_id)

    def finished(self, job: dict[str, Any]) -> None:
        """Called once per job that reached a terminal status in this process."""
        took = (job.get("ended_at") or time.time()) - job["submitted_at"]
        log.info(
            "job %s %-9s %s %s in %.2fs%s",
            job["id"], job["status"], job["queue"], job.get("name") or job["jobtype"], took,
            f" ({job['reason']})" if job.get("reason") else "",
        )  # fmt: skip
        self.notifier.notify(job["id"])

    async def start(self) -> None:
        if self.policy.s3_grants or self.policy.s3_write_grants:
            self.grant_presigner()  # making a boto3 client takes ~0.1 s: not in a submit
        await self.engine.start()
        # Runners could not heartbeat while we were down: give them one lease to reconnect.
        renewed = self.store.extend_leases(self.config.lease_s)
        pending = self.store.pending()
        for job in pending:
            self.engine.dispatch(job["id"], job["queue"])
        if renewed or pending:
            log.info(
                "resumed: %d running job(s) kept, %d pending job(s) dispatched",
                renewed,
                len(pending),
            )
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        await self.engine.close()
        self.usage.close()
        self.store.close()

    def user_for_token_hash(self, token_hash: str) -> dict | None:
        """The user of a token, looked up at most once per ``TOKEN_CACHE_S`` per token."""
        now = time.monotonic()
        hit = self._user_cache.get(token_hash)
        if hit is not None and hit[1] > now:
            return hit[0]
        user = self.store.user_for_token(token_hash)
        if user is None:
            self._user_cache.pop(token_hash, None)
            return None
        if len(self._user_cache) >= TOKEN_CACHE_MAX:
            self._user_cache = {k: v for k, v in self._user_cache.items() if v[1] > now}
            if len(self._user_cache) >= TOKEN_CACHE_MAX:
                self._user_cache.clear()
        until = now + TOKEN_CACHE_S
        if user.get("expires_at") is not None:  # not trusted past its expiry, even cached
            until = min(until, now + user["expires_at"] - time.time())
        self._user_cache[token_hash] = (user, until)
        return user

    def forget_tokens(self, id_prefix: str) -> None:
        """Drop the cached look-ups of the tokens whose hash starts with ``id_prefix``: a
        token revoked through this server is refused by it at once."""
        for key in [k for k in self._user_cache if k.startswith(id_prefix)]:
            self._user_cache.pop(key, None)

    def requeue_expired(self) -> None:
        for job in self.store.expired(time.time()):
            self._take_back(job, "runner stopped heart-beating (worker lost?)", "lease expired")

    async def requeue_orphans(self) -> None:
        """Take back at once the jobs whose dask worker left the cluster (killed, lost).

        Their leases would expire too, but only ``lease_s`` after the last heartbeat,
        and a server restart meanwhile renews them (it cannot tell a runner that could
        not reach it from one that is gone); the scheduler can.
        """
        running = self.store.running_on()
        if not running:
            return
        live = await self.engine.live_workers()
        if live is None:
            return
        for job in running:
            if job["worker"].rpartition(" ")[2] not in live:
                self._take_back(job, "its dask worker left the cluster", "worker gone")

    def _take_back(self, job: dict[str, Any], reason: str, why: str) -> None:
        status = self.store.requeue_or_fail(
            job["id"], job["attempt"], reason, self.config.max_requeues
        )
        if status not in (d.PENDING, d.FAILED):
            return  # the runner reported meanwhile
        full = self.store.get(job["id"])
        if full is None:
            return  # it failed, and its owner deleted it meanwhile
        if status == d.PENDING:
            log.warning("job %s: %s, requeued", job["id"], why)
            self.engine.dispatch(full["id"], full["queue"])
        else:
            self.finished(full)

    def sweep(self) -> int:
        """Delete the jobs past their keep time, with their files: their own ``keep_days``,
        else the server's (0: for ever), at most ``max_keep_days``."""
        # With keep_days 0, jobs that name no keep time are kept; dead uploads still go.
        cap = self.config.max_keep_days
        n = retention.sweep(
            self.store.retention, self.objects, self.config.keep_days * 86400,
            max_keep_s=cap * 86400 if cap else None,
        )  # fmt: skip
        if n:
            self.usage.forget()  # their room is free again
            log.info("deleted %d job(s) past their keep time (default %g days)", n,
                     self.config.keep_days)  # fmt: skip
        return n

    async def _reap_forever(self) -> None:
        # The first sweep comes at the first tick: monotonic time counts from boot, so a
        # "last swept" of 0.0 put it off for SWEEP_S on a machine up for less than that.
        tick, swept, started = 0, -math.inf, time.monotonic()
        while True:
            await asyncio.sleep(d.REAPER_S)
            tick += 1
            try:
                self.requeue_expired()
                graced = time.monotonic() - started >= d.ORPHAN_GRACE_S
                if graced and tick % d.ORPHAN_CHECK_TICKS == 0:
                    await self.requeue_orphans()
                if time.monotonic() - swept > d.SWEEP_S:
                    swept = time.monotonic()
                    # A thread: a first sweep of a large backlog must not stall the API.
                    await asyncio.to_thread(self.sweep)
            except Exception:
                log.exception("lease reaper failed; trying again")
