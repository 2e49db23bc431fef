"""What a trivial job's four small objects cost the server: files vs rows of the job store.

    python bench/bench_small_objects.py [--jobs 2000] [--rounds 2]

In one process, CPU time (``time.process_time``), jobs in batches of 50 (as a
slot's ends): the payload written at submit and read at claim, the result,
STDOUT and STDERR written at the end, the result read by a wait; then the jobs
deleted. ``none`` inserts and ends the jobs with no objects (the baseline),
``files`` writes them to a ``LocalObjectStore`` as before revision 0006,
``rows`` as ``store/blobs.py`` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import sqlalchemy as sa

from dask_kotta.store import retention
from dask_kotta.store.blobs import Blobs, KeptSmall
from dask_kotta.store.jobs import JobStore
from dask_kotta.store.objects import LocalObjectStore, job_key

BATCH = 50
SPEC = {"jobtype": "python", "queue": "Test", "walltime_min": 1}
NAMES = [".kotta/payload.pkl", ".kotta/result.pkl", "STDOUT.txt", "STDERR.txt"]
DATA = os.urandom(300)


def one(kind: str, n: int) -> tuple[float, float]:
    """CPU seconds per job: writing and reading the objects (with the job), deleting them."""
    d = tempfile.mkdtemp(prefix="kotta-small-")
    store = JobStore(f"{d}/jobs.sqlite")
    uid = store.get_or_create_user("u")
    local = LocalObjectStore(f"{d}/objects")
    kept = KeptSmall(local, Blobs(store.engine))

    def payloads(rows):
        keys = [job_key(uid, job["id"], NAMES[0]) for job, _ in rows]
        if kind == "files":
            for key in keys:
                local.put_bytes(key, DATA)
        return Blobs.rows([(key, DATA) for key in keys]) if kind == "rows" else None

    ids: list[str] = []
    t0 = time.process_time()
    for _ in range(0, n, BATCH):
        rows = store.insert_jobs(uid, [dict(SPEC) for _ in range(BATCH)], before_commit=payloads)
        ids += [job["id"] for job, _ in rows]
        with store.engine.begin() as c:  # the ends: result, STDOUT, STDERR
            items = [(job_key(uid, job["id"], m), DATA) for job, _ in rows for m in NAMES[1:]]
            if kind == "files":
                for key, data in items:
                    local.put_bytes(key, data)
            elif kind == "rows":
                Blobs.write(c, Blobs.rows(items))
        reads = [job_key(uid, job["id"], m) for job, _ in rows for m in NAMES[:2]]
        if kind == "files":  # the claim's payload and the wait's result
            for key in reads:
                local.get_bytes(key)
        elif kind == "rows":
            kept.small_bytes(reads)
    t1 = time.process_time()
    with store.engine.begin() as c:
        c.execute(sa.text("UPDATE jobs SET status = 'completed', ended_at = 1"))
    t2 = time.process_time()
    objects = kept if kind == "rows" else local
    for i in range(0, n, 500):
        retention.delete_jobs(store.retention, objects, ids[i : i + 500])
    t3 = time.process_time()
    store.close()
    shutil.rmtree(d, ignore_errors=True)
    return (t1 - t0) / n, (t3 - t2) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for _ in range(args.rounds):
        for kind in ("none", "files", "rows"):
            write, delete = one(kind, args.jobs)
            print(f"{kind:5}  write+read {write * 1000:.3f} ms/job (with the job's insert and "
                  f"end)  delete {delete * 1000:.3f} ms/job  load {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
