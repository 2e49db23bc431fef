"""What containing a job costs: contained against uncontained trivial jobs, in the same run.

    python bench/bench_containment.py [--jobs 200] [--batch 2000] [--rounds 2]
                                      [--kinds contained,no-cgroup,uncontained]
                                      [--dir /var/tmp]

Starts ``dask-kotta up`` services side by side (2 workers each, temp data
dirs): ``contained`` as shipped (every job in its sandbox, ``runner/sandbox.py``,
and its cgroup, ``runner/cgroups.py``), ``no-cgroup`` the same with
``KOTTA_CGROUP=off`` (limits by the RSS watch and RLIMIT_NPROC), and
``uncontained`` with ``KOTTA_SANDBOX=off --allow-uncontained`` (jobs forked
from the warm template with no namespaces, as before containment). It then
alternates between them, ``--rounds`` times: ``--jobs`` sequential
``@kottajob`` calls (submit -> result; p50, p95) and ``--batch`` trivial jobs
through ``submit_many`` + ``gather`` (jobs/s). Only one service runs jobs at a
time. Ratios are each kind / uncontained (latency: higher is slower;
throughput: lower is slower). Figures vary with what else runs; run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_latency import KottaUp, free_port, inc, ms, pct, timed  # noqa: E402


def measure(svc: KottaUp, jobs: int, batch: int) -> tuple[list[float], float, dict[str, float]]:
    from kotta import Kotta, kottajob

    konn = Kotta((svc.base / "auth.file").read_text())
    remote_inc = kottajob(konn, "Test", 1)(inc)
    for i in range(10):  # warm: templates, connections
        assert remote_inc(i) == i + 1
    lat = timed(lambda i: remote_inc(i), jobs)
    cpu0, t = svc.cpu(), time.perf_counter()
    results = konn.gather(konn.submit_many([(inc, (i,)) for i in range(batch)], walltime=5))
    thr = batch / (time.perf_counter() - t)
    cpu1 = svc.cpu()
    assert results == [i + 1 for i in range(batch)]
    # CPU per job is steadier than wall time on a shared machine: it counts the work only.
    return lat, thr, {k: (cpu1[k] - cpu0[k]) / batch for k in cpu0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kinds", default="contained,no-cgroup,uncontained")
    ap.add_argument("--dir", default="/var/tmp", help="where the services' data go")
    args = ap.parse_args()
    import bench_latency
    import cloudpickle

    cloudpickle.register_pickle_by_value(bench_latency)
    # Not under /tmp: the env cache is in it, and a read-only path under /tmp gets its mount
    # point made in every job's private /tmp, on disk (the default cache, ~/.cache, does not).
    base = Path(tempfile.mkdtemp(prefix="kotta-bench-box-", dir=args.dir))
    known = {"contained": ((), {}),
             "no-cgroup": ((), {"KOTTA_CGROUP": "off"}),
             "uncontained": (("--allow-uncontained",), {"KOTTA_SANDBOX": "off"})}  # fmt: skip
    kinds = {k: known[k] for k in args.kinds.split(",")}
    if "uncontained" not in kinds:
        ap.error("--kinds must include uncontained, the baseline")
    services = {}
    for name, (extra, env) in kinds.items():
        (base / name).mkdir()
        services[name] = KottaUp(base / name, free_port(), base / "envs", extra, env)
    print(f"# bench_containment  {time.strftime('%Y-%m-%d %H:%M')}  dir={base}", flush=True)
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    thr: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        for _ in range(args.rounds):
            for name, svc in services.items():
                one_lat, one_thr, one_cpu = measure(svc, args.jobs, args.batch)
                lat[name] += one_lat
                thr[name].append(one_thr)
                cpu[name].append(one_cpu)
                per = "  ".join(f"{k} {ms(v)}" for k, v in one_cpu.items())
                print(f"{name:12} p50 {ms(pct(one_lat, 0.5))}  {one_thr:,.0f} jobs/s  "
                      f"CPU/job: {per}", flush=True)  # fmt: skip
    finally:
        for svc in services.values():
            svc.stop()
    print()
    for kind in kinds:
        if kind == "uncontained":
            continue
        print(f"| measure | {kind} | uncontained | ratio |")
        print("| --- | --- | --- | --- |")
        for q, label in ((0.5, "p50"), (0.95, "p95")):
            a, b = pct(lat[kind], q), pct(lat["uncontained"], q)
            print(f"| latency {label} ({args.jobs} x {args.rounds} sequential) | {ms(a)} "
                  f"| {ms(b)} | {a / b:.2f}x |")  # fmt: skip
        a, b = statistics.median(thr[kind]), statistics.median(thr["uncontained"])
        print(f"| throughput, {args.batch} jobs batched | {a:,.0f} jobs/s | {b:,.0f} jobs/s "
              f"| {a / b:.2f}x |")  # fmt: skip
        a, b = (statistics.median(sum(c.values()) for c in cpu[k]) for k in (kind, "uncontained"))
        print(f"| CPU per batched job (service, all processes) | {ms(a)} | {ms(b)} "
              f"| {a / b:.2f}x |")  # fmt: skip
        print()


if __name__ == "__main__":
    main()
