"""The per-user storage quota (``--max-storage``): what each user keeps in the object store.

A user's bytes are everything under their prefix (``u<id>/``): uploads, jobs'
payloads, logs, outputs and results. Listing a prefix costs a walk (local
store) or a page per 1,000 objects (S3), so it is never done per request:

- a user's listing is kept for ``recount_s`` seconds (``USAGE_RECOUNT_S``,
  default 30); the first check after that lists the prefix again, in the
  background (a listing of tens of thousands of objects takes seconds): only a
  user's first check in a server process waits for one;
- what this server accepted since that listing began (an upload's declared size
  at its start, a submit's payloads) is added to it, so a burst of uploads
  cannot pass the quota while the listing is old;
- a delete through this server (a job, an upload, the retention sweep) drops
  the user's listing, so freed room counts at once;
- an upload started and not sent yet counts as its declared size (its plan,
  ``PLAN``, is in the listing), for a day.

So the count lags only for bytes this server did not accept itself: jobs'
outputs and results (written by runners while a job runs, never refused for
the quota) and another server's uploads, each seen at the next listing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import defaults as d
from ..errors import LimitExceededError, NotFoundError
from ..store.objects import ObjectStore, user_prefix

#: Beside an upload's file, under its directory: what its start declared (name and size).
#: A file name has no '/', so no upload's own file can be this key.
PLAN = ".kotta/upload.json"

log = logging.getLogger("dask_kotta.server")


def read_plan(objects: ObjectStore, key: str) -> dict:
    """What an upload's start declared (``name``, ``size``, ``at``), from its :data:`PLAN`
    object at ``key``; ``NotFoundError`` if there is none."""
    return json.loads(objects.get_bytes(key))


def show_bytes(n: int) -> str:
    """``n`` bytes for a person: ``3.00 MiB (3145728 bytes)``, or ``200 bytes``."""
    from dask.utils import format_bytes

    return f"{format_bytes(n)} ({n} bytes)" if n >= 1024 else f"{n} bytes"


@dataclass
class _Count:
    listed: int  # bytes under the prefix, as listed
    at: float  # when that listing began (monotonic)
    added: list[tuple[float, int]] = field(default_factory=list)  # accepted since: (when, bytes)
    relisting: bool = False  # a listing in the background will replace this count

    def total(self) -> int:
        return self.listed + sum(n for _, n in self.added)


class StorageUsage:
    """Each user's bytes in the store, listed at most every ``recount_s`` s (see module)."""

    def __init__(
        self, objects: ObjectStore, recount_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.objects = objects
        self.recount_s = recount_s
        self.clock = clock
        self._counts: dict[int, _Count] = {}
        # When each user's count (or everyone's) was last dropped for a delete.
        self._forgot: dict[int, float] = {}
        self._forgot_all = -math.inf
        self._lock = threading.Lock()
        # Stale counts are listed again here, not in the request that found them stale.
        self._relister = ThreadPoolExecutor(2, thread_name_prefix="kotta-usage")

    def counted(self, user_id: int) -> bool:
        """True when checking ``user_id`` lists nothing in the caller's thread (a caller on
        the event loop can then check inline instead of in a thread)."""
        return user_id in self._counts

    def used(self, user_id: int) -> int:
        """The user's bytes: the last listing plus what was accepted since.

        A user's first count is listed here (in the caller's thread); a stale one is
        answered as it is while a listing in the background replaces it, so a request
        never waits for a listing of a user it has counted before.
        """
        with self._lock:
            count = self._counts.get(user_id)
            if count is not None:
                if self.clock() - count.at >= self.recount_s and not count.relisting:
                    count.relisting = True
                    self._relister.submit(self._relist, user_id)
                return count.total()
        self._count(user_id)
        with self._lock:
            count = self._counts.get(user_id)
            return count.total() if count is not None else 0

    def _count(self, user_id: int) -> None:
        started = self.clock()
        listed = self._list(user_id)  # outside the lock: it can take seconds
        with self._lock:
            old = self._counts.get(user_id)
            if started < max(self._forgot_all, self._forgot.get(user_id, -math.inf)):
                return  # begun before a delete: it may count what is gone
            if old is None or old.at <= started:
                # Bytes accepted after this listing began may be missing from it: keep them.
                added = [(t, n) for t, n in (old.added if old else []) if t >= started]
                self._counts[user_id] = _Count(listed, started, added)

    def _relist(self, user_id: int) -> None:
        try:
            self._count(user_id)
        except Exception:  # the store is unreachable: keep the old count, try again later
            log.exception("cannot list user %d's objects for the storage quota", user_id)
            with self._lock:
                count = self._counts.get(user_id)
                if count is not None:
                    count.relisting = False

    def close(self) -> None:
        """Stop listing in the background (a listing under way ends first)."""
        self._relister.shutdown(wait=False, cancel_futures=True)

    def _list(self, user_id: int) -> int:
        """The user's bytes by a listing of their prefix. An upload started and not sent yet
        (its plan, no file) counts as its declared size for a day, as long as its URLs live:
        otherwise many uploads started at once would each pass and all be sent later."""
        total = 0
        plans: dict[str, str] = {}
        sent: set[str] = set()
        fresh = time.time() - d.STALE_UPLOAD_S
        for key, size, modified in self.objects.listing(user_prefix(user_id)):
            total += size
            parts = key.split("/", 3)
            if len(parts) == 4 and parts[1] == "uploads":
                upload = "/".join(parts[:3])
                if parts[3] == PLAN:
                    if modified > fresh:
                        plans[upload] = key
                else:
                    sent.add(upload)
        for upload, key in plans.items():
            if upload not in sent:
                with contextlib.suppress(NotFoundError, ValueError, KeyError, TypeError):
                    total += int(read_plan(self.objects, key)["size"])
        return total

    def check(self, user_id: int, adding: int, limit: int, what: str) -> None:
        """Count ``adding`` bytes for the user, or raise ``LimitExceededError`` (429) if they
        would take the user over ``limit`` (0: no limit); ``what`` names the request."""
        if not limit:
            return
        self.used(user_id)  # a first count lists the prefix; a stale one is relisted
        with self._lock:  # compared and added at once: two requests cannot both take the room
            count = self._counts.get(user_id)
            used = count.total() if count is not None else 0
            if used + adding > limit:
                raise LimitExceededError(
                    f"storage quota: you keep {show_bytes(used)} in the store and {what} adds "
                    f"{show_bytes(adding)}: over the limit of {show_bytes(limit)} per user (the "
                    "operator's --max-storage). Delete jobs you no longer need (konn.delete, "
                    "dask-kotta rm) or uploads (konn.delete_upload), or ask the operator for more"
                )
            if count is not None:
                count.added.append((self.clock(), adding))

    def forget(self, user_id: int | None = None) -> None:
        """Drop a user's count (all users' with None): something of theirs was deleted."""
        with self._lock:
            if user_id is None:
                self._counts.clear()
                self._forgot_all = self.clock()
            else:
                self._counts.pop(user_id, None)
                self._forgot[user_id] = self.clock()
