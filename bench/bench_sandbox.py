"""What containing a job costs on the worker alone, with no server, dask or client around it.

    python bench/bench_sandbox.py [--jobs 300] [--rounds 3] [--dir /var/tmp]

One process plays a worker's slot: for each job it makes the working directory,
runs ``/bin/true`` forked from a warm template, and removes the directory, as
``runner.run_claimed`` does. ``contained`` adds what a contained job adds (a
leased uid, its cgroup, ``hand_over``, the clone into namespaces and the mount
view, the release check); ``uncontained`` is a template that never prepared a
view. The two alternate, ``--rounds`` times, in the same process. Printed per
job: wall time, and CPU time of this process plus the template and its
children. ``bench_containment.py`` measures the same through a whole service,
where these costs are a part of each job's.

Run as root (uids, cgroups) on Linux with namespaces.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from dask_kotta.runner import isolation
from dask_kotta.runner.forkserver import ForkServer
from dask_kotta.runner.process import monitor

JOB = {"id": "bench", "memory_bytes": 2**30, "max_processes": 256, "vcpus": 1}


def cpu(template: ForkServer) -> float:
    """CPU seconds so far of this process, its reaped children, and the template's."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = psutil.Process(template.proc.pid).cpu_times()
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + t.user + t.system
            + t.children_user + t.children_system)  # fmt: skip


def one(template: ForkServer, work_root: Path, contained: bool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="job-", dir=work_root))
    private = workdir / ".kotta"
    private.mkdir()
    out, err = str(workdir / "STDOUT.txt"), str(workdir / "STDERR.txt")
    env = isolation.job_env(JOB, workdir)  # type: ignore[arg-type]
    try:
        if contained:
            with isolation.Box(JOB, workdir, private) as box:  # type: ignore[arg-type]
                box.hand_over()
                request = {"private": str(private), "cwd": str(workdir), "stdout": out,
                           "stderr": err, "env": env, "argv": ["/bin/true"],
                           "sandbox": box.spec()}  # fmt: skip
                with template.spawn(request) as child:
                    outcome = monitor(child, time.monotonic(), 60, box.watched_memory())
                box.ended(outcome)
        else:
            request = {"private": str(private), "cwd": str(workdir), "stdout": out,
                       "stderr": err, "env": env, "argv": ["/bin/true"], "sandbox": None}  # fmt: skip
            with template.spawn(request) as child:
                outcome = monitor(child, time.monotonic(), 60, JOB["memory_bytes"])
        assert outcome.returncode == 0, outcome
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp", help="where the jobs' directories go")
    args = ap.parse_args()
    why = isolation.available()
    if why:
        ap.error(f"jobs cannot be contained here: {why}")
    work_root = Path(tempfile.mkdtemp(prefix="kotta-bench-sandbox-", dir=args.dir))
    templates = {"contained": ForkServer(isolation.base_spec()), "uncontained": ForkServer()}
    print(f"# bench_sandbox  {time.strftime('%Y-%m-%d %H:%M')}  jobs in {work_root}")
    wall: dict[str, list[float]] = {k: [] for k in templates}
    used: dict[str, list[float]] = {k: [] for k in templates}
    try:
        for name, t in templates.items():
            for _ in range(20):  # warm
                one(t, work_root, name == "contained")
        for _ in range(args.rounds):
            for name, t in templates.items():
                c0, t0 = cpu(t), time.perf_counter()
                for _ in range(args.jobs):
                    one(t, work_root, name == "contained")
                time.sleep(2 * isolation.RELEASE_S)  # the releaser's last check is counted
                w, c = (time.perf_counter() - t0) / args.jobs, (cpu(t) - c0) / args.jobs
                wall[name].append(w)
                used[name].append(c)
                print(f"{name:12} wall {w * 1e3:.2f} ms/job  CPU {c * 1e3:.2f} ms/job", flush=True)
    finally:
        for t in templates.values():
            t.close()
        shutil.rmtree(work_root, ignore_errors=True)
    a, b = (statistics.median(wall[k]) for k in ("contained", "uncontained"))
    ca, cb = (statistics.median(used[k]) for k in ("contained", "uncontained"))
    print("\n| per job (median of rounds) | contained | uncontained | difference |")
    print("| --- | --- | --- | --- |")
    print(f"| wall | {a * 1e3:.2f} ms | {b * 1e3:.2f} ms | +{(a - b) * 1e3:.2f} ms |")
    print(f"| CPU | {ca * 1e3:.2f} ms | {cb * 1e3:.2f} ms | +{(ca - cb) * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
