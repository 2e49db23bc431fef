"""The storage quota's count (server/usage.py) on a real local object store in a temp dir."""

from __future__ import annotations

import json
import os
import time

import pytest

from dask_kotta.errors import LimitExceededError
from dask_kotta.server.usage import PLAN, StorageUsage
from dask_kotta.store.objects import LocalObjectStore


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.01)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "objects")


def test_a_users_objects_are_listed_once_per_recount_period(store):
    clock = Clock()
    usage = StorageUsage(store, recount_s=30, clock=clock)
    store.put_bytes("u1/job1/out.bin", b"x" * 100)
    store.put_bytes("u2/job2/out.bin", b"x" * 7)  # another user's: not counted
    assert usage.used(1) == 100
    store.put_bytes("u1/job1/more.bin", b"x" * 50)  # written by a runner: not seen ...
    clock.now += 29
    assert usage.used(1) == 100  # ... while the listing is fresh: no listing per request
    clock.now += 2
    # Stale: answered as it was while a listing in the background replaces it.
    assert usage.used(1) in (100, 150)
    wait_for(lambda: usage.used(1) == 150, 10, "the background listing")


def test_a_delete_drops_the_count_and_a_listing_begun_before_it_is_not_kept(store):
    clock = Clock()
    usage = StorageUsage(store, recount_s=30, clock=clock)
    store.put_bytes("u1/job1/out.bin", b"x" * 100)
    assert usage.used(1) == 100
    store.delete_prefix("u1/job1")
    usage.forget(1)
    assert usage.used(1) == 0  # listed again at once, in the caller's thread
    clock.now += 31
    usage.forget(1)  # a delete while a stale count...
    store.put_bytes("u1/job2/out.bin", b"x" * 5)
    assert usage.used(1) == 5


def test_what_was_accepted_since_the_listing_counts_and_over_the_limit_is_a_429(store):
    clock = Clock()
    usage = StorageUsage(store, recount_s=30, clock=clock)
    store.put_bytes("u1/job1/out.bin", b"x" * 100)
    usage.check(1, 60, limit=200, what="this upload")
    usage.check(1, 40, limit=200, what="this upload")  # exactly at the limit
    with pytest.raises(LimitExceededError) as e:
        usage.check(1, 1, limit=200, what="this upload")
    assert "you keep 200 bytes in the store and this upload adds 1 bytes" in e.value.detail
    assert "--max-storage" in e.value.detail and e.value.status == 429
    usage.check(2, 200, limit=200, what="this upload")  # another user has their own room
    usage.forget(1)  # a delete: the next check lists again, without what was accepted
    usage.check(1, 100, limit=200, what="this upload")


def test_an_upload_started_and_not_sent_counts_as_its_declared_size_for_a_day(store):
    clock = Clock()
    usage = StorageUsage(store, recount_s=30, clock=clock)
    store.put_bytes(f"u1/uploads/aa/{PLAN}", json.dumps({"name": "a", "size": 1000}).encode())
    store.put_bytes(f"u1/uploads/bb/{PLAN}", json.dumps({"name": "b", "size": 10}).encode())
    store.put_bytes("u1/uploads/bb/b", b"x" * 10)  # sent: counted as the file it is
    listed = sum(size for _, size, _ in store.listing("u1"))
    assert usage.used(1) == listed + 1000
    day_old = time.time() - 86400 - 60
    os.utime(store.local_path(f"u1/uploads/aa/{PLAN}"), (day_old, day_old))
    usage.forget(1)
    assert usage.used(1) == listed  # its URLs are dead: never sent now
