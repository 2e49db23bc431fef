"""The service's main benchmark: latency and throughput of trivial jobs, and a big store.

    python bench/bench_latency.py [--jobs 200] [--batch 2000] [--stored 100000]

It starts its own ``dask-kotta up`` (2 workers, on a free port, temp data dir
and environment cache) and measures, each beside baselines run in the same
process on the same machine:

1. latency: ``@kottajob`` call of a trivial function, submit -> result, over
   ``--jobs`` sequential calls (p50, p95); beside
   ``concurrent.futures.ProcessPoolExecutor(2)`` and a dask.distributed
   ``LocalCluster(2)`` (``submit(...).result()``);
2. throughput: ``--batch`` trivial jobs through ``Kotta.submit_many`` +
   ``Kotta.gather``; beside ``ProcessPoolExecutor.map`` and ``Client.map``;
3. a job with cached ``requirements`` (its own virtual environment) against
   one without: the extra start-up of a second run (the first run's build is
   shown too);
4. the server with ``--stored`` finished jobs in its store (inserted through
   ``JobStore`` before the server starts): its RSS, and the p50 of a status call;
5. ``Kotta.map`` over ``--map`` trivial calls (packed into jobs): calls/s, beside
   ``ProcessPoolExecutor(2).map`` with chunks, ``Client.map`` on ``LocalCluster(2)``
   and Parsl's ``HighThroughputExecutor`` with 2 workers (``pip install parsl``;
   skipped, and said so, without it) over ``--map-baseline`` tasks each, since one
   task per call is what those do.

Figures vary with what else runs on the machine; run it on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import requests


def inc(x: int) -> int:
    return x + 1


def uses_tabulate() -> str:
    import tabulate

    return tabulate.__version__


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_store(data_dir: Path, auth_file: Path, url: str, n: int) -> list[str]:
    """``n`` finished jobs in a fresh store, as if they had run; returns some of their ids."""
    import sqlalchemy as sa

    from dask_kotta.server.launch import issue_token
    from dask_kotta.store.jobs import JobStore
    from dask_kotta.store.schema import jobs

    store = JobStore(str(data_dir / "jobs.sqlite"))
    issue_token(store, "bench", auth_file, url)
    owner = store.get_or_create_user("bench")
    spec = {"jobtype": "python", "name": "inc", "queue": "Test", "walltime_min": 1.0,
            "inputs": [], "outputs": [], "stdout": "STDOUT.txt", "stderr": "STDERR.txt",
            "has_payload": True}  # fmt: skip
    ids: list[str] = []
    now = time.time()
    for start in range(0, n, 5000):
        rows = store.insert_jobs(owner, [dict(spec) for _ in range(min(5000, n - start))])
        batch = [job["id"] for job, _ in rows]
        ids.extend(batch[:20])
        with store.engine.begin() as c:
            c.execute(
                jobs.update().where(jobs.c.id.in_(batch))
                .values(status="completed", started_at=now, ended_at=now, attempt=1, t_run=0.001,
                        outputs='[{"name": "STDOUT.txt", "size": 0}, {"name": "STDERR.txt", "size": 0}]')
            )  # fmt: skip
    with store.engine.connect() as c:
        count = c.execute(sa.select(sa.func.count()).select_from(jobs)).scalar()
    store.close()
    assert count == n, count
    return ids


class KottaUp:
    """``dask-kotta up`` as a subprocess in its own process group."""

    def __init__(self, base: Path, port: int, env_dir: Path, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):  # fmt: skip
        self.base, self.port = base, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(base / "service.log", "ab")
        env = {**os.environ, "KOTTA_ENV_DIR": str(env_dir), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dask_kotta.cli", "up", "--port", str(port),
             "--data-dir", str(base / "data"), "--auth-file", str(base / "auth.file"),
             "--user", "bench", "--workers", "2", "--slots", "4", *extra],
            cwd=base, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((base / "service.log").read_text()[-3000:])
            try:
                if requests.get(self.url + "/api/v1/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise TimeoutError("dask-kotta up did not start")

    def rss(self) -> tuple[int, int]:
        """RSS of the server process, and of it with every descendant (workers, templates)."""
        p = psutil.Process(self.proc.pid)
        own = p.memory_info().rss
        return own, own + sum(c.memory_info().rss for c in p.children(recursive=True))

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the server, its dask workers, and the fork-server templates
        with the job children they reaped."""
        root = psutil.Process(self.proc.pid)
        out = {"server": 0.0, "workers": 0.0, "job children": 0.0}
        for p in [root, *root.children(recursive=True)]:
            try:
                t, cmd = p.cpu_times(), " ".join(p.cmdline())
            except psutil.Error:
                continue
            if p.pid == root.pid or "dask_kotta.server.cluster" in cmd:
                # The scheduler (and the nannies) run in `up`'s cluster process: counted
                # with the server as when they ran inside it.
                out["server"] += t.user + t.system
            elif "runner.template" in cmd:
                out["job children"] += t.user + t.system + t.children_user + t.children_system
            else:
                out["workers"] += t.user + t.system
        return out

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


def map_rates(konn, n: int, n_base: int) -> tuple[str, str, str, str]:
    """Calls per second of ``Kotta.map`` and of the baselines' own ways to run many calls."""
    t = time.perf_counter()
    assert konn.gather(konn.map(inc, range(n), walltime=5))[-1] == n
    kotta = n / (time.perf_counter() - t)
    with ProcessPoolExecutor(2) as pool:
        t = time.perf_counter()
        assert list(pool.map(inc, range(n), chunksize=max(1, n // 8)))[-1] == n
        pool_rate = n / (time.perf_counter() - t)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.gather(client.map(inc, range(10), pure=False))
        t = time.perf_counter()
        assert client.gather(client.map(inc, range(n_base), pure=False))[-1] == n_base
        dask_rate = n_base / (time.perf_counter() - t)
    return (f"Kotta.map, {n:,} calls", f"{kotta:,.0f} calls/s", f"{pool_rate:,.0f} /s",
            f"{dask_rate:,.0f} /s")  # fmt: skip


def parsl_rate(n: int, run_dir: Path) -> str:
    """Tasks per second of Parsl's HighThroughputExecutor (2 workers, this machine)."""
    try:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
    except ImportError:
        return "(parsl not installed)"
    # Parsl starts its interchange as a script on PATH: the one beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    htex = HighThroughputExecutor(label="htex", address="127.0.0.1", max_workers_per_node=2,
                                  provider=LocalProvider(init_blocks=1, max_blocks=1))  # fmt: skip
    try:
        with parsl.load(Config(executors=[htex], run_dir=str(run_dir))):
            app = parsl.python_app(inc)
            [app(i).result() for i in range(10)]
            t = time.perf_counter()
            assert [f.result() for f in [app(i) for i in range(n)]][-1] == n
            return f"{n / (time.perf_counter() - t):,.0f} tasks/s"
    except Exception as e:  # the other figures still print
        return f"(parsl failed: {type(e).__name__}: {e})"


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--stored", type=int, default=100_000)
    ap.add_argument("--map", type=int, default=100_000, help="calls for Kotta.map")
    ap.add_argument(
        "--map-baseline",
        type=int,
        default=10_000,
        help="tasks for LocalCluster's Client.map and Parsl (one task per call)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args()

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    rows: list[tuple[str, str, str, str]] = []  # (measure, kotta, ProcessPool(2), LocalCluster(2))

    base = Path(tempfile.mkdtemp(prefix="kotta-bench-"))
    port = free_port()
    print(f"# bench_latency  {time.strftime('%Y-%m-%d %H:%M')}  cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.2f}  dir={base}", flush=True)  # fmt: skip
    t = time.perf_counter()
    (base / "data").mkdir()
    some_ids = fill_store(
        base / "data", base / "auth.file", f"http://127.0.0.1:{port}", args.stored
    )
    print(f"stored {args.stored} finished jobs in {time.perf_counter() - t:.1f} s", flush=True)
    svc = KottaUp(base, port, base / "envs")
    try:
        from kotta import Kotta, kottajob

        konn = Kotta((base / "auth.file").read_text())

        # -- the big store: status calls and RSS --------------------------------------------
        status = timed(lambda i: konn.job(some_ids[i % len(some_ids)]), 500)
        own_rss, _ = svc.rss()

        # -- latency ----------------------------------------------------------------------
        remote_inc = kottajob(konn, "Test", 1)(inc)
        for i in range(10):  # warm: templates, connections
            assert remote_inc(i) == i + 1
        lat = timed(lambda i: remote_inc(i), args.jobs)
        with ProcessPoolExecutor(2) as pool:
            for i in range(10):
                pool.submit(inc, i).result()
            lat_pool = timed(lambda i: pool.submit(inc, i).result(), args.jobs)
            t = time.perf_counter()
            assert list(pool.map(inc, range(args.batch), chunksize=1))[-1] == args.batch
            thr_pool = args.batch / (time.perf_counter() - t)
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
            for i in range(10):
                client.submit(inc, i, pure=False).result()
            lat_dask = timed(lambda i: client.submit(inc, i, pure=False).result(), args.jobs)
            t = time.perf_counter()
            assert client.gather(client.map(inc, range(args.batch), pure=False))[-1] == args.batch
            thr_dask = args.batch / (time.perf_counter() - t)
        for q, name in ((0.5, "p50"), (0.95, "p95")):
            rows.append((f"latency {name} ({args.jobs} sequential)", ms(pct(lat, q)),
                         ms(pct(lat_pool, q)), ms(pct(lat_dask, q))))  # fmt: skip

        # -- throughput -------------------------------------------------------------------
        cpu0, client0 = svc.cpu(), time.process_time()
        t = time.perf_counter()
        jobs = konn.submit_many([(inc, (i,)) for i in range(args.batch)], walltime=5)
        t_submit = time.perf_counter() - t
        results = konn.gather(jobs)
        thr = args.batch / (time.perf_counter() - t)
        cpu1, client1 = svc.cpu(), time.process_time()
        cpu_per_job = {k: (cpu1[k] - cpu0[k]) / args.batch for k in cpu0}
        cpu_per_job["client"] = (client1 - client0) / args.batch
        assert results == [i + 1 for i in range(args.batch)]
        rows.append((f"throughput, {args.batch} jobs batched", f"{thr:,.0f} jobs/s",
                     f"{thr_pool:,.0f} /s", f"{thr_dask:,.0f} /s"))  # fmt: skip

        # -- cached requirements ----------------------------------------------------------
        with_reqs = kottajob(konn, "Test", 1, requirements="tabulate==0.9.0")(uses_tabulate)
        t = time.perf_counter()
        assert with_reqs() == "0.9.0"
        first_build = time.perf_counter() - t
        lat_reqs = timed(lambda i: with_reqs(), 20)
        lat_plain = timed(lambda i: remote_inc(i), 20)
        extra = statistics.median(lat_reqs) - statistics.median(lat_plain)

        # -- many small calls ---------------------------------------------------------------
        rows.append(map_rates(konn, args.map, args.map_baseline))
        htex = parsl_rate(args.map_baseline, base / "parsl")

        _, all_rss = svc.rss()
        print()
        print("| measure | dask-kotta | ProcessPoolExecutor(2) | dask LocalCluster(2) |")
        print("| --- | --- | --- | --- |")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print()
        print(f"- batched submission of {args.batch} jobs (one request per 1000): "
              f"{ms(t_submit)}; the rest is running them and gathering the results")  # fmt: skip
        print("- CPU per job in the batch: " + ", ".join(
            f"{k} {v * 1000:.2f} ms" for k, v in cpu_per_job.items()
        ) + f" (total {sum(cpu_per_job.values()) * 1000:.2f} ms, on {os.cpu_count()} cores)")  # fmt: skip
        print(f"- job with cached requirements: p50 {ms(statistics.median(lat_reqs))} vs "
              f"{ms(statistics.median(lat_plain))} without: +{ms(extra)} "
              f"(first run, building the environment: {first_build:.2f} s)")  # fmt: skip
        print(f"- store of {args.stored:,} finished jobs: status call p50 "
              f"{ms(pct(status, 0.5))}, p95 {ms(pct(status, 0.95))}; server RSS "
              f"{own_rss / 2**20:.0f} MiB (with its workers and templates: "
              f"{all_rss / 2**20:.0f} MiB after the run)")  # fmt: skip
        print(f"- Parsl HighThroughputExecutor (2 workers), {args.map_baseline:,} tasks: {htex}; "
              f"Kotta.map is {rows[-1][1]}")  # fmt: skip
        print(f"- load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        svc.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
