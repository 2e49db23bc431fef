"""A chaos run: jobs keep coming while workers and the server are killed on a schedule.

In the style of Jepsen's queue checker. Jobs write their own ledger (a file when
an execution starts, another when it ends) into a directory every queue mounts;
the checker reads it back with the server's answers and counts:

- lost: submitted jobs that never completed;
- duplicates: jobs that completed more than one execution (at-least-once allows
  it after a fault; not after the end was delivered);
- overlaps: two executions of one job running at the same time (never allowed);
- requeue delays: from a worker's kill to the requeue of each job it held.

``run()`` is used by ``bench/chaos.py`` (the long run, figures in the README) and
``test_chaos.py`` (a short one in the suite).
"""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from kotta_testing import DaskCluster, Service


def work(key: str, ledger: str, seconds: float) -> str:
    """A job: says in the ledger when this execution started and when it ended."""
    import os
    import time
    import uuid

    run = uuid.uuid4().hex[:12]
    t0 = time.time()
    with open(os.path.join(ledger, f"{key}.{run}.start"), "w") as f:
        f.write(repr(t0))
    time.sleep(seconds)
    with open(os.path.join(ledger, f"{key}.{run}.done"), "w") as f:
        f.write(f"{t0!r} {time.time()!r}")
    return key


@dataclass
class Report:
    jobs: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)
    requeue_delays: list[float] = field(default_factory=list)
    worker_kills: int = 0
    server_kills: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        d = self.requeue_delays
        delays = (f"requeue after a worker kill: median {statistics.median(d):.1f} s, "
                  f"max {max(d):.1f} s ({len(d)} jobs)" if d else "no job requeued")  # fmt: skip
        return (
            f"{self.jobs} jobs in {self.seconds:.0f} s, {self.worker_kills} worker kills, "
            f"{self.server_kills} server kills: lost {len(self.lost)}, duplicates "
            f"{len(self.duplicates)}, overlaps {len(self.overlaps)}; {delays}"
        )


def _worker_processes(cluster: DaskCluster) -> list[psutil.Process]:
    """The dask worker processes (not their nannies, which start a new one)."""
    out = []
    for p in cluster.procs[1:]:
        try:
            nanny = psutil.Process(p.proc.pid)
            out += [c for c in nanny.children() if "spawn_main" in " ".join(c.cmdline())]
        except psutil.Error:
            continue
    return out


def run(
    base: Path,
    jobs: int = 600,
    workers: int = 3,
    slots: int = 3,
    job_s: tuple[float, float] = (0.2, 2.0),
    worker_kill_every: tuple[float, float] = (5.0, 10.0),
    server_kills: int = 4,
    database: str | None = None,
    seed: int = 1,
) -> Report:
    """Submit ``jobs`` over the run while killing workers and the server; check the ledger."""
    import sys

    import cloudpickle

    # Jobs cannot import this module (it is not installed): send `work` by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    rng = random.Random(seed)
    cluster = DaskCluster(base / "cluster", workers=workers, queues=(f"Test={slots}",)).start()
    extra = [f"--database={database}"] if database else []
    svc = Service(base / "svc", scheduler=cluster.address, extra=extra).start()
    ledger = svc.shared
    report, kills = Report(), []
    stop = threading.Event()
    submitted: list = []
    t_start = time.time()

    def kill_workers() -> None:
        while not stop.wait(rng.uniform(*worker_kill_every)):
            live = _worker_processes(cluster)
            if live:
                victim = rng.choice(live)
                kills.append(time.time())
                report.worker_kills += 1
                victim.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_workers, daemon=True)
    try:
        konn = svc.konn()
        killer.start()
        batches = max(1, server_kills + 1)
        per = -(-jobs // batches)
        for b in range(batches):
            calls = [(work, (f"j{b}-{i}", str(ledger), rng.uniform(*job_s))) for i in range(per)]
            calls = calls[: jobs - len(submitted)]
            while True:
                try:
                    submitted += konn.submit_many(calls, walltime=2)
                    break
                except Exception:  # the server is restarting: submit again (idempotent)
                    time.sleep(1)
                    konn = svc.konn()
            if b < server_kills:
                time.sleep(rng.uniform(3, 8))
                svc.kill9()
                report.server_kills += 1
                time.sleep(rng.uniform(1, 4))
                svc.start()
                konn = svc.konn()
        done: dict[str, str] = {}
        deadline = time.monotonic() + 600
        ended = ("completed", "failed", "cancelled")
        while time.monotonic() < deadline:
            try:
                done = {j["id"]: j["status"] for j in konn.jobs(limit=len(submitted) + 10)}
            except Exception:  # the server is restarting
                time.sleep(1)
                konn = svc.konn()
                continue
            if all(done.get(j.job_id) in ended for j in submitted):
                break
            time.sleep(1)
        stop.set()
        report.jobs = len(submitted)
        report.lost = [j.job_id for j in submitted if done.get(j.job_id) != "completed"]
        _check_ledger(ledger, report)
        for j in submitted:
            for e in konn.events(j.job_id):
                if e["status"] == "pending" and "requeued" in (e.get("detail") or ""):
                    before = [k for k in kills if k <= e["at"]]
                    if before:
                        report.requeue_delays.append(e["at"] - before[-1])
    finally:
        stop.set()
        report.seconds = time.time() - t_start
        svc.stop()
        cluster.stop()
    return report


def _check_ledger(ledger: Path, report: Report) -> None:
    runs: dict[str, list[tuple[float, float | None]]] = {}
    for start in ledger.glob("*.start"):
        key, run, _ = start.name.rsplit(".", 2)
        done = start.with_suffix(".done")
        t0 = float(start.read_text() or 0)
        t1 = float(done.read_text().split()[1]) if done.exists() else None
        runs.setdefault(key, []).append((t0, t1))
    for key, execs in runs.items():
        finished = [e for e in execs if e[1] is not None]
        if len(finished) > 1:
            report.duplicates[key] = len(finished)
        # An execution that finished overlaps any other that started while it ran.
        for a in finished:
            if any(b is not a and a[0] < b[0] < a[1] for b in execs):
                report.overlaps.append(key)
                break
