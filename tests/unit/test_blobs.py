"""``store/blobs.py``: jobs' small objects as rows of a real SQLite job store, large ones as
files of a real local object store, read and deleted by the same keys."""

from __future__ import annotations

import io

import pytest

from dask_kotta.store.blobs import SMALL_MAX, Blobs, KeptSmall
from dask_kotta.store.jobs import JobStore
from dask_kotta.store.objects import LocalObjectStore

SPEC = {"jobtype": "script", "queue": "Test", "walltime_min": 1, "script": "true"}


@pytest.fixture
def store(tmp_path):
    s = JobStore(str(tmp_path / "jobs.sqlite"))
    yield s
    s.close()


def job(store: JobStore, owner: int) -> str:
    for n in range(1, owner + 1):  # users 1..owner, so the job's key is u<owner>/...
        store.get_or_create_user(f"user{n}")
    ((row, _),) = store.insert_jobs(owner, [dict(SPEC)])
    return row["id"]


def test_small_rows_large_files_same_keys_and_a_retry_is_not_shadowed(store, tmp_path):
    local = LocalObjectStore(tmp_path / "objects")
    objects = KeptSmall(local, Blobs(store.engine))
    j = job(store, 1)
    key = f"u1/{j}/.kotta/result.pkl"
    small, large = b"s" * SMALL_MAX, bytes(range(256)) * (SMALL_MAX // 256 + 1)
    # A small object through a stream: a row, no file.
    assert objects.put_stream(key, io.BytesIO(small)) == SMALL_MAX
    assert local.local_path(key) is None and objects.local_path(key) is None
    assert objects.get_bytes(key) == small and objects.size(key) == SMALL_MAX
    assert objects.open_read(key).read() == small
    # A retry's large one: a file, whole (the bytes read to decide come first), and the
    # earlier row is dropped so it cannot shadow it.
    assert objects.put_stream(key, io.BytesIO(large)) == len(large)
    assert local.get_bytes(key) == large == objects.get_bytes(key)
    assert objects.blobs.get(key) is None and objects.local_path(key) is not None
    # Back to small: the row wins over the older file.
    objects.put_bytes(key, b"again")
    assert objects.get_bytes(key) == b"again" and objects.local_path(key) is None


def test_other_keys_stay_objects_and_a_deleted_jobs_object_does_not_fail(store, tmp_path):
    local = LocalObjectStore(tmp_path / "objects")
    objects = KeptSmall(local, Blobs(store.engine))
    # An upload's key is no job's: a file.
    objects.put_bytes("u1/uploads/0123456789abcdef/x.csv", b"1,2\n")
    assert local.get_bytes("u1/uploads/0123456789abcdef/x.csv") == b"1,2\n"
    # A job id the store does not have (deleted meanwhile): the file store takes it.
    objects.put_bytes("u1/00000000000000aa/STDOUT.txt", b"late\n")
    assert local.get_bytes("u1/00000000000000aa/STDOUT.txt") == b"late\n"


def test_listing_and_deleting_by_prefix_count_rows_and_files_and_no_other_users(store, tmp_path):
    local = LocalObjectStore(tmp_path / "objects")
    objects = KeptSmall(local, Blobs(store.engine))
    one, ten = job(store, 1), job(store, 10)
    objects.put_bytes(f"u1/{one}/STDOUT.txt", b"x" * 10)
    objects.put_bytes(f"u1/{one}/big.bin", b"y" * (SMALL_MAX + 1))
    objects.put_bytes(f"u10/{ten}/STDOUT.txt", b"z" * 3)  # u10 starts with u1
    assert sorted((k, n) for k, n, _ in objects.listing("u1")) == [
        (f"u1/{one}/STDOUT.txt", 10),
        (f"u1/{one}/big.bin", SMALL_MAX + 1),
    ]
    objects.delete_prefix(f"u1/{one}")
    assert list(objects.listing("u1")) == []
    assert [(k, n) for k, n, _ in objects.listing("u10")] == [(f"u10/{ten}/STDOUT.txt", 3)]


def test_on_s3_only_the_services_own_objects_are_rows(store, tmp_path):
    """``everything=False`` (an S3 store): outputs and STDOUT keep their place in the
    store (their s3:// URLs), the payload and result become rows."""
    local = LocalObjectStore(tmp_path / "objects")
    objects = KeptSmall(local, Blobs(store.engine), everything=False)
    j = job(store, 1)
    objects.put_bytes(f"u1/{j}/STDOUT.txt", b"out")
    objects.put_bytes(f"u1/{j}/.kotta/payload.pkl", b"pay")
    assert local.get_bytes(f"u1/{j}/STDOUT.txt") == b"out"
    assert local.local_path(f"u1/{j}/.kotta/payload.pkl") is None
    assert objects.get_bytes(f"u1/{j}/.kotta/payload.pkl") == b"pay"
