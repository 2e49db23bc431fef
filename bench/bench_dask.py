"""Benchmark: Dask graphs on KottaScheduler vs dask.distributed vs scheduler='processes'.

    python bench/bench_dask.py                      # starts its own `dask-kotta up` (2 workers)
    python bench/bench_dask.py --auth-file auth.file --workers 2 --repeat 7
    python bench/bench_dask.py --frames --repeat 3   # a dataframe over S3: bench/frames_s3.py

Two graphs, each computed on all three schedulers in the same run:

- ``chains``: 1,000 tasks, 10 independent chains of 100 ``inc``;
- ``tree``: a 512-leaf binary tree reduction (512 ``inc`` + 511 ``add``).

The dask.distributed baseline is a ``LocalCluster`` with as many worker
processes as the Kotta service (one thread each); ``processes`` uses as many
processes. Each scheduler computes each graph once to warm up, then
``--repeat`` times; the median and best wall-clock times are printed, with
Kotta's job and request counts. Target: Kotta at most 1.0x distributed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask
from dask import delayed


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def chains(n_chains: int = 10, length: int = 100) -> list:
    outs = []
    for c in range(n_chains):
        x = c
        for _ in range(length):
            x = delayed(inc)(x)
        outs.append(x)
    return outs


def tree(leaves: int = 512):
    level = [delayed(inc)(i) for i in range(leaves)]
    while len(level) > 1:
        level = [delayed(add)(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


GRAPHS = {
    "chains (10 x 100 inc, 1,000 tasks)": (chains, [c + 100 for c in range(10)]),
    "tree (512 leaves, 1,023 tasks)": (tree, sum(range(1, 513))),
}


def timed(make, compute, expected, repeat: int) -> list[float]:
    """Wall-clock seconds of ``compute(graph)``, each run on a freshly built graph.

    Fresh graphs have fresh keys, so no scheduler can hand back results kept
    from an earlier run (dask.distributed would, for identical keys).
    """
    assert compute(make()) == expected  # warm-up: worker imports, fork server, connections
    times = []
    for _ in range(repeat):
        graph = make()
        t0 = time.perf_counter()
        got = compute(graph)
        times.append(time.perf_counter() - t0)
        assert got == expected, (got, expected)
    return times


def start_service(
    workers: int, slots: int, env: dict | None = None, extra: list[str] | None = None
) -> tuple[subprocess.Popen, Path]:
    """`dask-kotta up` in a temp dir (first user ``bench``); returns the process and its credentials file."""
    base = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    auth = base / "auth.file"
    port = free_port()
    log = open(base / "service.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_kotta.cli", "up", "--port", str(port), "--data-dir", str(base / "data"),
         "--auth-file", str(auth), "--workers", str(workers), "--slots", str(slots),
         "--user", "bench", *(extra or [])],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    import requests

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if (
                auth.exists()
                and requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).ok
            ):
                return proc, auth
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"dask-kotta up exited:\n{(base / 'service.log').read_text()[-3000:]}")
        time.sleep(0.2)
    raise SystemExit("dask-kotta up did not start in 120 s")


def stop_service(proc: subprocess.Popen | None) -> None:
    """Stop what :func:`start_service` started: SIGTERM, then its whole group after 20 s."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--auth-file", help="credentials of a running service (default: start one)")
    ap.add_argument(
        "--workers", type=int, default=2, help="worker processes everywhere (default 2)"
    )
    ap.add_argument("--slots", type=int, default=4, help="job slots per Kotta worker (default 4)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument(
        "--frames",
        action="store_true",
        help="instead: a dataframe over S3 (SeaweedFS), kd.read_parquet on Kotta "
        "vs dd.read_parquet on a LocalCluster (see bench/frames_s3.py)",
    )
    ap.add_argument("--files", type=int, default=50, help="--frames: Parquet files (default 50)")
    ap.add_argument(
        "--rows", type=int, default=40_000, help="--frames: rows a file (default 40,000)"
    )
    args = ap.parse_args()
    if args.frames:
        import frames_s3

        figures = frames_s3.run(args, start_service, stop_service)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
        return

    from distributed import Client, LocalCluster

    from dask_kotta import Kotta, KottaScheduler

    proc = None
    auth = args.auth_file
    if auth is None:
        proc, auth = start_service(args.workers, args.slots)
    try:
        konn = Kotta(Path(auth).read_text())
        kotta = KottaScheduler(konn, parallelism=args.workers * args.slots)
        results: dict[str, dict[str, list[float]]] = {}
        stats: dict[str, dict] = {}
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        try:
            for name, (make, expected) in GRAPHS.items():
                on = {
                    "kotta": lambda g: dask.compute(g, scheduler=kotta)[0],
                    "distributed": lambda g: dask.compute(g, scheduler=client.get)[0],
                    "processes": lambda g: dask.compute(
                        g, scheduler="processes", num_workers=args.workers
                    )[0],
                }
                results[name] = {k: timed(make, f, expected, args.repeat) for k, f in on.items()}
                run = kotta.last_run
                stats[name] = {"tasks": run.tasks, "jobs": run.jobs,
                               "submit_requests": run.submit_requests, "wait_requests": run.wait_requests}  # fmt: skip
        finally:
            client.close()
            cluster.close()
    finally:
        stop_service(proc)

    print(f"# dask-kotta Dask benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print(
        f"# {platform.platform()}, Python {platform.python_version()}, dask {dask.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"# {args.workers} worker processes everywhere; median (best) of {args.repeat} runs, seconds"
    )
    print()
    print(
        "| graph | KottaScheduler | distributed LocalCluster | scheduler='processes' | Kotta / distributed |"
    )
    print("|---|---|---|---|---|")
    for name, r in results.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        best = {k: min(v) for k, v in r.items()}
        cells = " | ".join(
            f"{med[k]:.3f} ({best[k]:.3f})" for k in ("kotta", "distributed", "processes")
        )
        print(f"| {name} | {cells} | {med['kotta'] / med['distributed']:.2f}x |")
    print()
    for name, s in stats.items():
        print(f"# Kotta, {name}: {s['tasks']} tasks in {s['jobs']} jobs, "
              f"{s['submit_requests']} submit and {s['wait_requests']} wait requests")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "kotta": stats}, indent=1))


if __name__ == "__main__":
    main()
