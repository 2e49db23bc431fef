"""Benchmark: large literals of a Dask graph copied into payloads vs stored once.

    python bench/bench_literals.py                  # starts its own `dask-kotta up` (2 workers)
    python bench/bench_literals.py --auth-file auth.file --repeat 3

Two graphs, each computed with ``KottaScheduler(literal_threshold=None)`` (every
literal rides in its job's payload, as before) and with the default threshold
(1 MiB: larger literals are uploaded once and staged into the jobs using them):

- ``from_array``: ``(a * 2).sum()`` over ``da.from_array`` of a ~200 MB float64
  numpy array in 20 chunks (each chunk is a literal used by one job);
- ``shared``: 20 ``delayed`` calls each reading the same ~20 MB array (one
  literal used by 20 jobs).

Each run builds a fresh array (new contents, so nothing is cached from an
earlier run), except ``stored, again``: the same array computed a second time
on the same connection, whose literals are already stored. Printed: the median
(best) wall time in seconds, the bytes of all payloads, and the bytes uploaded
as literals.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from dask import delayed

sys.path.insert(0, str(Path(__file__).parent))
from bench_dask import start_service, stop_service  # noqa: E402

MB = 1_000_000


def from_array(seed: int) -> tuple:
    x = np.arange(25 * MB, dtype="f8") + seed  # 200 MB
    return (da.from_array(x, chunks=len(x) // 20) * 2).sum(), float((x * 2).sum())


def strided_sum(a, i):
    return float(a[i::20].sum())


def shared(seed: int) -> tuple:
    x = np.arange(int(2.5 * MB), dtype="f8") + seed  # 20 MB
    return [delayed(strided_sum)(x, i) for i in range(20)], [
        float(x[i::20].sum()) for i in range(20)
    ]


GRAPHS = {"from_array (200 MB in 20 chunks)": from_array, "shared (20 MB read by 20 jobs)": shared}


def run(sched, make, seed: int) -> dict:
    graph, expected = make(seed)
    t0 = time.perf_counter()
    got = dask.compute(graph, scheduler=sched)[0]
    seconds = time.perf_counter() - t0
    assert np.allclose(got, expected), (got, expected)
    s = sched.last_run
    return {"s": seconds, "payload": s.payload_bytes, "uploaded": s.literal_bytes_uploaded,
            "jobs": s.jobs, "refs": s.literals_referenced}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--auth-file", help="credentials of a running service (default: start one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from dask_kotta import Kotta, KottaScheduler

    proc = None
    auth = args.auth_file
    if auth is None:
        proc, auth = start_service(args.workers, args.slots)
    rows = []
    try:
        konn = Kotta(Path(auth).read_text())
        par = args.workers * args.slots
        copied = KottaScheduler(konn, parallelism=par, literal_threshold=None)
        stored = KottaScheduler(konn, parallelism=par)
        for name, make in GRAPHS.items():
            run(stored, make, -1)  # warm-up: worker imports, fork server, connections
            seed = 0
            for label, sched, fresh in (("copied", copied, True), ("stored", stored, True),
                                        ("stored, again", stored, False)):  # fmt: skip
                runs = []
                for _ in range(args.repeat):
                    if fresh:
                        seed += 1
                    runs.append(run(sched, make, seed))
                rows.append((name, label, runs))
    finally:
        stop_service(proc)

    print(f"# dask-kotta large-literal benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print(
        f"# {platform.platform()}, Python {platform.python_version()}, dask {dask.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(f"# {args.workers} workers x {args.slots} slots; median (best) of {args.repeat} runs")
    print()
    print("| graph | literals | seconds | payload bytes (all jobs) | uploaded as literals | jobs |")
    print("|---|---|---|---|---|---|")
    for name, label, runs in rows:
        secs = [r["s"] for r in runs]
        last = runs[-1]
        print(f"| {name} | {label} | {statistics.median(secs):.2f} ({min(secs):.2f}) | "
              f"{last['payload'] / MB:,.1f} MB | {last['uploaded'] / MB:,.1f} MB | {last['jobs']} |")  # fmt: skip


if __name__ == "__main__":
    main()
