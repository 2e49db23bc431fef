"""Staging throughput of dask-kotta against raw boto3, on a local SeaweedFS.

    python bench/bench_staging.py [--repeat 3] [--big-mib 200] [--small 1000]

Starts SeaweedFS and `dask-kotta up --store s3://...` on loopback (the test
helpers in tests/), then measures, in the same run and on the same objects:

- raw boto3: ``download_file``/``upload_file`` of one large object (its
  default TransferManager: 8 MiB parts, 10 threads), and ``get_object`` /
  ``put_object`` of many small ones from a thread pool as wide as the runner's
  (8), plus one after the other;
- Kotta: a job whose inputs are those ``s3://`` objects and whose outputs are
  the same files, read from the runner's own per-phase timings (``stage_in``:
  all inputs on the worker's disk; ``stage_out``: all outputs, STDOUT/STDERR
  included, in the store, by presigned URLs the server handed out).

Prints each figure (median of ``--repeat``) and Kotta's speed as a multiple of
raw boto3's (higher is better; the target is at least 0.9x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kotta_testing import Service  # noqa: E402
from s3server import S3Server  # noqa: E402

from kotta import KottaJob  # noqa: E402

DATA = "bench-data"
MiB = 1024 * 1024


def job_timings(konn, repeat: int, **kw) -> tuple[float, float]:
    ins, outs = [], []
    for _ in range(repeat):
        job = KottaJob(jobtype="script", walltime=30, **kw)
        job.submit(konn)
        job.wait(konn, maxwait=1800)
        if job.status(konn) != "completed":
            raise SystemExit(f"benchmark job {job.job_id} {job.info['status']}: {job.reason}")
        t = job.info["timings"]
        ins.append(t["stage_in"])
        outs.append(t["stage_out"])
    return statistics.median(ins), statistics.median(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=200)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--small-kib", type=int, default=10)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="kotta-bench-"))
    print(f"scratch {base}", flush=True)
    s3 = S3Server(base / "s3").start()
    svc = None
    try:
        os.environ.update(s3.env)
        svc = Service(base / "svc", extra=["--store", "s3://bench-store/jobs"], env=s3.env).start()
        konn = svc.konn()
        c = s3.client()
        s3.make_bucket(DATA)
        big_size = args.big_mib * MiB
        big = base / "big.bin"
        with open(big, "wb") as f:
            block = os.urandom(MiB)
            for _ in range(args.big_mib):
                f.write(block)
        small_body = os.urandom(args.small_kib * 1024)
        small_keys = [f"small/{i:05d}.bin" for i in range(args.small)]
        c.upload_file(str(big), DATA, "big.bin")
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda k: c.put_object(Bucket=DATA, Key=k, Body=small_body), small_keys))
        scratch = base / "raw"
        scratch.mkdir()

        # Warm every worker up (imports, boto3 client, connection pools) before timing anything:
        # a handful of jobs at once, so that each worker process gets some.
        warm = [
            KottaJob(jobtype="script", walltime=5, inputs=f"s3://{DATA}/{small_keys[i]}",
                     outputs=Path(small_keys[i]).name, script="#!/bin/bash\nsleep 0.5")
            for i in range(8)
        ]  # fmt: skip
        for j in warm:
            j.submit(konn)
        for j in warm:
            j.wait(konn, maxwait=300)

        def small_in(width: int):
            def get(k: str) -> None:
                body = c.get_object(Bucket=DATA, Key=k)["Body"]
                with open(scratch / Path(k).name, "wb") as f:
                    for chunk in body.iter_chunks(512 * 1024):
                        f.write(chunk)

            if width == 1:
                for k in small_keys:
                    get(k)
            else:
                with ThreadPoolExecutor(width) as ex:
                    list(ex.map(get, small_keys))

        def small_out(width: int):
            def put(k: str) -> None:
                with open(scratch / Path(k).name, "rb") as f:
                    c.put_object(Bucket=DATA, Key=f"raw/{k}", Body=f)

            if width == 1:
                for k in small_keys:
                    put(k)
            else:
                with ThreadPoolExecutor(width) as ex:
                    list(ex.map(put, small_keys))

        names = [Path(k).name for k in small_keys]
        raws: dict[str, list[float]] = {}
        kottas: dict[str, list[float]] = {}

        def timed(key: str, fn) -> None:
            t0 = time.perf_counter()
            fn()
            raws.setdefault(key, []).append(time.perf_counter() - t0)

        # Raw and Kotta take turns, so that drift in the machine's load hits both alike.
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat}", flush=True)
            timed("big_in", lambda: c.download_file(DATA, "big.bin", str(scratch / "big.bin")))
            timed("big_out", lambda: c.upload_file(str(big), DATA, "raw/big.bin"))
            i, o = job_timings(
                konn, 1, inputs=f"s3://{DATA}/big.bin", outputs="out.bin",
                script="#!/bin/bash\nmv big.bin out.bin",
            )  # fmt: skip
            kottas.setdefault("big_in", []).append(i)
            kottas.setdefault("big_out", []).append(o)
            timed("small_in", lambda: small_in(8))
            timed("small_out", lambda: small_out(8))
            timed("small_in_seq", lambda: small_in(1))
            timed("small_out_seq", lambda: small_out(1))
            i, o = job_timings(
                konn, 1, inputs=", ".join(f"s3://{DATA}/{k}" for k in small_keys),
                outputs=", ".join(names), script="#!/bin/bash\ntrue",
            )  # fmt: skip
            kottas.setdefault("small_in", []).append(i)
            kottas.setdefault("small_out", []).append(o)
        raw = {k: statistics.median(v) for k, v in raws.items()}
        kotta = {k: statistics.median(v) for k, v in kottas.items()}
    finally:
        if svc is not None:
            svc.stop()
        s3.stop()
        shutil.rmtree(base, ignore_errors=True)

    small_bytes = args.small * args.small_kib * 1024
    rows = [
        (f"1 x {args.big_mib} MiB in", big_size, "big_in", "big_in"),
        (f"1 x {args.big_mib} MiB out", big_size, "big_out", "big_out"),
        (f"{args.small} x {args.small_kib} KiB in", small_bytes, "small_in", "small_in"),
        (f"{args.small} x {args.small_kib} KiB out", small_bytes, "small_out", "small_out"),
    ]
    print(f"\nmedian of {args.repeat}; SeaweedFS on loopback; {os.cpu_count()} CPUs\n")
    print(f"| {'transfer':<22} | {'raw boto3':>18} | {'dask-kotta':>18} | {'kotta/raw':>9} |")
    print(f"|{'-' * 24}|{'-' * 20}|{'-' * 20}|{'-' * 11}|")
    for label, nbytes, rk, kk in rows:
        r, k = raw[rk], kotta[kk]
        print(
            f"| {label:<22} | {r:6.3f}s {nbytes / r / MiB:7.1f} MiB/s | {k:6.3f}s {nbytes / k / MiB:7.1f} MiB/s "
            f"| {r / k:8.2f}x |"
        )
    print(
        f"\nraw boto3 one object after the other: {args.small} x {args.small_kib} KiB in "
        f"{raw['small_in_seq']:.3f}s, out {raw['small_out_seq']:.3f}s"
    )


if __name__ == "__main__":
    main()
