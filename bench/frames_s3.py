"""The dataframe-over-S3 part of bench_dask.py (``python bench/bench_dask.py --frames``).

Starts SeaweedFS (tests/integration/s3server.py), writes ``--files`` Parquet
objects to a bucket, starts `dask-kotta up` with the S3 environment and a
policy granting its user the bucket, then times the same groupby-aggregate:

- ``dask_kotta.dataframe.read_parquet`` on ``KottaScheduler``: the client
  reads footers, the runner stages each object into the job that reads it;
- ``dd.read_parquet('s3://...', filesystem=pyarrow S3FileSystem)`` on a
  dask.distributed ``LocalCluster`` with as many worker processes, each
  reading the bucket itself. (pyarrow's filesystem, not s3fs: s3fs needs an
  aiobotocore whose botocore pin conflicts with the boto3 dask-kotta uses.)

Bytes through the Kotta client are counted with a hook on every boto3 client
the process makes (GetObject answers: footers) plus what the scheduler
downloaded (results).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

BUCKET = "bench-frames"


def _write_files(client: Any, n_files: int, rows: int, tmp: Path) -> int:
    import numpy as np
    import pandas as pd

    total = 0
    for i in range(n_files):
        rng = np.random.default_rng(i)
        df = pd.DataFrame(
            {
                "key": rng.integers(0, 100, rows),
                "x": rng.random(rows),
                "y": rng.normal(size=rows),
                "word": rng.choice([f"w{j}" for j in range(50)], rows),
            }
        )
        path = tmp / f"part-{i:03d}.parquet"
        df.to_parquet(path, row_group_size=rows // 4, index=False)
        total += path.stat().st_size
        client.upload_file(str(path), BUCKET, f"frames/part-{i:03d}.parquet")
    return total


class GetCounter:
    """Bytes of GetObject answers received by any boto3 client made while it is installed."""

    def __init__(self) -> None:
        import boto3

        self.bytes = 0
        self.calls = 0
        self._orig = boto3.session.Session.client
        counter = self

        def client(session, *args, **kwargs):
            c = counter._orig(session, *args, **kwargs)
            c.meta.events.register("after-call.s3.GetObject", counter._count)
            return c

        boto3.session.Session.client = client

    def _count(self, parsed=None, **kw) -> None:
        self.calls += 1
        self.bytes += int((parsed or {}).get("ContentLength") or 0)


def _agg(df):
    return df.groupby("key").agg({"x": "sum", "y": "mean", "word": "count"})


def run(args: Any, start_service: Any, stop_service: Any) -> dict:
    """Times both readers; returns the figures and prints a table."""
    import dask.dataframe as dd
    import pyarrow.fs as pafs
    from distributed import Client, LocalCluster
    from kotta_testing import policy_args
    from s3server import S3Server

    import dask_kotta.dataframe as kd
    from dask_kotta import Kotta, KottaScheduler

    base = Path(tempfile.mkdtemp(prefix="bench-frames-"))
    s3 = S3Server(base / "s3").start()
    old_env = {k: os.environ.get(k) for k in s3.env}
    os.environ.update(s3.env)
    proc = None
    try:
        s3.make_bucket(BUCKET)
        (base / "files").mkdir()
        data_bytes = _write_files(s3.client(), args.files, args.rows, base / "files")
        grants = policy_args(base, s3_grants={"bench": [f"s3://{BUCKET}/"]})
        proc, auth = start_service(args.workers, args.slots, env=s3.env, extra=grants)
        konn = Kotta(Path(auth).read_text())
        kotta = KottaScheduler(konn, parallelism=args.workers * args.slots)
        url = f"s3://{BUCKET}/frames/"

        counter = GetCounter()
        kotta_times, client_bytes, plans = [], [], []
        expected = None
        for i in range(args.repeat + 1):
            counter.bytes = counter.calls = 0
            t0 = time.perf_counter()
            df = kd.read_parquet(url)
            t1 = time.perf_counter()
            got = _agg(df).compute(scheduler=kotta)
            t2 = time.perf_counter()
            if i:  # the first run warms up workers, imports, connections
                kotta_times.append(t2 - t0)
                plans.append(t1 - t0)
                client_bytes.append(counter.bytes + kotta.last_run.downloaded_bytes)
            expected = got
        run_stats = kotta.last_run

        ep = s3.endpoint.split("://", 1)[1]
        fs = pafs.S3FileSystem(endpoint_override=ep, scheme="http", region="us-east-1",
                               access_key=s3.env["AWS_ACCESS_KEY_ID"],
                               secret_key=s3.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        dclient = Client(cluster)
        dask_times = []
        try:
            for i in range(args.repeat + 1):
                t0 = time.perf_counter()
                theirs = _agg(dd.read_parquet(url, filesystem=fs)).compute(scheduler=dclient.get)
                if i:
                    dask_times.append(time.perf_counter() - t0)
        finally:
            dclient.close()
            cluster.close()
        import pandas as pd

        pd.testing.assert_frame_equal(
            expected.sort_index(), theirs.sort_index(), check_exact=False, rtol=1e-9
        )
    finally:
        stop_service(proc)
        s3.stop()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    med = statistics.median
    print(f"# dataframe over S3 (SeaweedFS on loopback): {args.files} Parquet files, "
          f"{args.rows} rows each, {data_bytes / 1e6:.1f} MB in all; "
          f"groupby('key').agg(sum, mean, count); median (best) of {args.repeat} runs, seconds")  # fmt: skip
    print()
    print("| reader | time | bytes through the client |")
    print("|---|---|---|")
    print(f"| kd.read_parquet on KottaScheduler | {med(kotta_times):.2f} ({min(kotta_times):.2f}) "
          f"| {med(client_bytes) / 1e3:.0f} kB (footers {counter.calls} GETs + results) |")  # fmt: skip
    print(f"| dd.read_parquet (pyarrow S3) on LocalCluster | {med(dask_times):.2f} "
          f"({min(dask_times):.2f}) | (workers read S3; client reads footers) |")  # fmt: skip
    print()
    print(
        f"# Kotta: planning (listing + footers) {med(plans):.2f} s of it; "
        f"{run_stats.tasks} tasks in {run_stats.jobs} jobs; same result as dask's"
    )
    return {
        "files": args.files, "rows": args.rows, "data_bytes": data_bytes,
        "kotta": kotta_times, "kotta_plan": plans, "client_bytes": client_bytes,
        "distributed": dask_times, "jobs": run_stats.jobs,
    }  # fmt: skip


__all__ = ["run", "dask"]
