"""Large literals of a Dask graph are uploaded once and staged into the jobs that use them."""

from __future__ import annotations

import contextlib
import sqlite3
import sys

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from dask import delayed

from dask_kotta import KottaScheduler
from dask_kotta.dask.literals import delete_literals
from dask_kotta.errors import NotFoundError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MIB = 1024 * 1024


def strided_sum(a, i):
    return int(a[i::4].sum())


def _payload_sizes(service, job_ids):
    """Each job's stored payload, read where the service keeps it: a row of the job database
    when small (``store/blobs.py``), else a file of its object store on disk."""
    sizes = {}
    with contextlib.closing(sqlite3.connect(service.data_dir / "jobs.sqlite")) as c:
        for j in job_ids:
            row = c.execute(
                "SELECT length(data) FROM job_objects WHERE job_id = ? AND key LIKE ?",
                (j, "%/.kotta/payload.pkl"),
            ).fetchone()
            if row is not None:
                sizes[j] = row[0]
            else:
                (path,) = service.data_dir.rglob(f"{j}/.kotta/payload.pkl")
                sizes[j] = path.stat().st_size
    return sizes


def test_a_large_literal_is_stored_once_and_staged_into_each_job(service, konn):
    big = np.arange(3 * MIB // 8, dtype="i8")  # 3 MiB, used whole by four jobs
    parts = [delayed(strided_sum)(big, i, dask_key_name=f"part-{i}") for i in range(4)]
    sched = KottaScheduler(konn, parallelism=4)
    assert list(dask.compute(*parts, scheduler=sched)) == [int(big[i::4].sum()) for i in range(4)]
    run = sched.last_run
    assert run.jobs == 4
    # The store holds four small payloads, not four copies of the array...
    payloads = _payload_sizes(service, run.job_ids)
    assert all(size < 64 * 1024 for size in payloads.values()), payloads
    # ...and each job names the same upload among its inputs.
    inputs = {tuple(konn.job(j)["inputs"]) for j in run.job_ids}
    assert len(inputs) == 1
    (url,) = inputs.pop()
    assert url.rsplit("/", 1)[1].startswith("kotta-literal-")
    assert (run.literals_uploaded, run.literals_referenced) == (1, 4)
    assert 3 * MIB < run.literal_bytes_uploaded < 3 * MIB + 4096

    # Another scheduler on the same connection, the same array: nothing is uploaded again;
    # a chunk of da.from_array over the threshold is stored too, and the results are right.
    again = KottaScheduler(konn, parallelism=4)
    chunked = da.from_array(big.reshape(-1, 1024), chunks=(192, 1024))  # two 1.5 MiB chunks
    total, first = dask.compute(chunked.sum(), parts[0], scheduler=again)
    assert (int(total), first) == (int(big.sum()), int(big[0::4].sum()))
    assert again.last_run.literals_uploaded == 2  # the two chunks; `big` was stored already
    assert url in {u for j in again.last_run.job_ids for u in konn.job(j)["inputs"]}

    # Under the threshold (or with it off), literals ride in the payload as before.
    inline = KottaScheduler(konn, parallelism=4, literal_threshold=None)
    assert dask.compute(parts[1], scheduler=inline) == (int(big[1::4].sum()),)
    assert inline.last_run.literals_referenced == 0
    assert konn.job(inline.last_run.job_ids[0])["inputs"] == []
    assert inline.last_run.payload_bytes > 3 * MIB

    # What keeps them: the connection, until delete_literals (run at exit) deletes them.
    assert delete_literals(konn) >= 3
    with pytest.raises(NotFoundError):
        konn.delete_upload(url)
