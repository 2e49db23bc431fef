"""KottaScheduler against a real service: Dask's get-function contract, graphs, callbacks, errors.

Every test here runs on the session's `dask-kotta up` (server + LocalCluster).
"""

from __future__ import annotations

import io
import sys
import time

import cloudpickle
import dask
import pytest
from dask import delayed
from dask.callbacks import Callback
from dask.diagnostics import ProgressBar
from dask.utils_test import GetFunctionTestMixin

from dask_kotta import KottaScheduler
from dask_kotta.errors import JobFailedError, RemoteError

# The workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def double(x):
    return 2 * x


def boom(x):
    raise ZeroDivisionError(f"boom on {x}")


@pytest.fixture(scope="module")
def sched(konn):
    return KottaScheduler(konn, queue="Test", walltime=5)


class TestGetFunctionContract(GetFunctionTestMixin):
    """Dask's own conformance suite for a foreign `get`."""

    @pytest.fixture(autouse=True)
    def _bind(self, sched):
        self.get = sched.get


def test_compute_forms(sched):
    """dask.compute(scheduler=), .compute(scheduler=) and dask.config.set(scheduler=)."""
    x = delayed(inc)(1)
    y = delayed(add)(x, 10)
    assert dask.compute(x, y, scheduler=sched) == (2, 12)
    assert y.compute(scheduler=sched) == 12
    with dask.config.set(scheduler=sched):
        assert dask.compute({"a": y, "b": [x, 3]}) == ({"a": 12, "b": [2, 3]},)
    assert sched.last_run.jobs >= 1


def test_diamonds_and_shared_dependencies(konn):
    """Diamonds whose branches land in different jobs: values flow between jobs via deps."""
    roots = [delayed(inc)(i, dask_key_name=f"root-{i}") for i in range(4)]
    lefts = [delayed(double)(r, dask_key_name=f"left-{i}") for i, r in enumerate(roots)]
    rights = [delayed(inc)(r, dask_key_name=f"right-{i}") for i, r in enumerate(roots)]
    joins = [
        delayed(add)(a, b, dask_key_name=f"join-{i}")
        for i, (a, b) in enumerate(zip(lefts, rights, strict=True))
    ]
    # shared dependency: roots[0] feeds every cross join
    cross = [delayed(add)(j, roots[0], dask_key_name=f"cross-{i}") for i, j in enumerate(joins)]
    total = delayed(sum)(cross, dask_key_name="total")
    expected = dask.compute(total, cross, scheduler="sync")
    for sched in (KottaScheduler(konn, parallelism=4), KottaScheduler(konn, fuse=False)):
        assert dask.compute(total, cross, scheduler=sched) == expected
        run = sched.last_run
        assert run.jobs > 1
        # only the requested values came back, never the intermediates
        assert set(run.downloaded_keys) == {total.key, *(c.key for c in cross)}
    assert run.jobs == run.tasks  # fuse=False: one job per task


def test_large_intermediate_stays_remote(konn):
    """A 4 MB intermediate goes from job to job; the client downloads only the small answer."""

    def blob(n):
        return b"x" * n

    big = delayed(blob)(4 * 1024 * 1024, dask_key_name="big")
    sizes = [delayed(len)(big, dask_key_name=f"len-{i}") for i in range(3)]
    sched = KottaScheduler(konn, fuse=False)
    assert dask.compute(sizes, scheduler=sched) == ([4 * 1024 * 1024] * 3,)
    assert sched.last_run.jobs == 4
    assert sched.last_run.downloaded_bytes < 10_000
    # and the requested value of a job that also feeds another job comes back alone
    n = delayed(len)(big, dask_key_name="n")
    m = delayed(inc)(n, dask_key_name="m")
    assert dask.compute(big, m, scheduler=sched)[1] == 4 * 1024 * 1024 + 1
    assert sched.last_run.downloaded_bytes > 4 * 1024 * 1024  # big was asked for


def test_linear_chains_fuse_into_one_round(konn):
    """10 chains of 100 tasks: a handful of jobs, one submit, not 1,000 round trips."""
    outs = []
    for c in range(10):
        x = c
        for _ in range(100):
            x = delayed(inc)(x)
        outs.append(x)
    sched = KottaScheduler(konn, parallelism=4)
    assert dask.compute(outs, scheduler=sched) == ([c + 100 for c in range(10)],)
    run = sched.last_run
    assert run.tasks == 1000
    assert run.jobs == 4
    assert run.submit_requests == 1
    assert run.wait_requests <= 5


def test_tree_reduction_two_rounds(konn):
    level = [delayed(inc)(i) for i in range(64)]
    while len(level) > 1:
        level = [delayed(add)(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    sched = KottaScheduler(konn, parallelism=4)
    assert level[0].compute(scheduler=sched) == sum(range(1, 65))
    assert sched.last_run.jobs == 5  # 4 subtrees + 1 tail
    assert sched.last_run.submit_requests == 2


def test_independent_jobs_run_in_parallel(konn):
    """Four 1.5 s tasks on four slots take about 1.5 s, not 6 s."""

    def nap(i):
        time.sleep(1.5)
        return i

    naps = [delayed(nap)(i, dask_key_name=f"nap-{i}") for i in range(4)]
    sched = KottaScheduler(konn, parallelism=4)
    t0 = time.monotonic()
    assert dask.compute(naps, scheduler=sched) == ([0, 1, 2, 3],)
    took = time.monotonic() - t0
    assert sched.last_run.jobs == 4
    assert took < 4.5, took


def test_failing_task_raises_with_key_and_traceback_and_cancels_the_rest(konn):
    def slow(i):
        time.sleep(60)
        return i

    slow_tasks = [delayed(slow)(i, dask_key_name=f"slow-{i}") for i in range(2)]
    bad = delayed(boom)(delayed(inc)(1, dask_key_name="before-bad"), dask_key_name="the-bad-one")
    after = delayed(inc)(bad, dask_key_name="after-bad")
    sched = KottaScheduler(konn, parallelism=3)
    with pytest.raises(ZeroDivisionError) as info:
        dask.compute(after, *slow_tasks, scheduler=sched)
    err = info.value
    assert isinstance(err, RemoteError)
    assert err.key == "the-bad-one"
    assert "the-bad-one" in str(err)
    assert "boom on 2" in str(err)
    assert "def boom" in err.remote_traceback or "in boom" in err.remote_traceback
    # the slow jobs were cancelled, not left running for a minute
    ids = sched.last_run.job_ids
    records = {j["id"]: j for j in konn.wait_any(ids, timeout=0)}
    statuses = sorted(r["status"] for r in records.values())
    assert statuses.count("cancelled") == 2, statuses
    assert statuses.count("failed") == 1, statuses


def test_failing_task_after_retries(konn):
    """retries=2: the job runs three times before the error reaches compute."""
    bad = delayed(boom)(0, dask_key_name="retried-bad")
    sched = KottaScheduler(konn, retries=2)
    with pytest.raises(ZeroDivisionError, match="retried-bad"):
        bad.compute(scheduler=sched)
    (job_id,) = sched.last_run.job_ids
    job = konn.job(job_id)
    assert job["status"] == "failed"
    assert job["failures"] == 3
    assert job["annotations"]["retries"] == 2


def test_walltime_kill_is_an_error_naming_the_task(konn):
    def sleepy(x):
        time.sleep(30)

    with dask.annotate(walltime=0.05):  # 3 s
        t = delayed(sleepy)(1, dask_key_name="sleepy-task")
    with pytest.raises(JobFailedError, match="walltime") as info:
        t.compute(scheduler=KottaScheduler(konn))
    assert "sleepy-task" in str(info.value)


def test_progress_bar_and_callbacks(sched, capsys):
    outs = [delayed(inc)(i, dask_key_name=f"p-{i}") for i in range(6)]
    total = delayed(sum)(outs, dask_key_name="p-total")
    seen = {"start": 0, "pre": [], "post": [], "finish": None}

    class Recorder(Callback):
        def _start(self, dsk):
            seen["start"] += 1

        def _pretask(self, key, dsk, state):
            seen["pre"].append(key)

        def _posttask(self, key, result, dsk, state, worker_id):
            seen["post"].append((key, result, worker_id))

        def _finish(self, dsk, state, errored):
            seen["finish"] = errored

    out = io.StringIO()
    with ProgressBar(out=out), Recorder():
        assert total.compute(scheduler=sched) == sum(range(1, 7))
    text = out.getvalue()
    assert "100% Completed" in text
    assert seen["start"] == 1 and seen["finish"] is False
    assert sorted(seen["pre"]) == sorted([*(o.key for o in outs), "p-total"])
    assert sorted(k for k, _, _ in seen["post"]) == sorted(seen["pre"])
    post = {k: (r, w) for k, r, w in seen["post"]}
    assert post["p-total"][0] == 21  # requested: its value came back
    assert post["p-total"][1] in sched.last_run.job_ids  # worker id is the job id


def test_progress_bar_on_error(sched):
    out = io.StringIO()
    with ProgressBar(out=out), pytest.raises(ZeroDivisionError):
        delayed(boom)(1).compute(scheduler=sched)
    assert "Completed" in out.getvalue()
    assert "100%" not in out.getvalue()


def test_deps_serve_only_your_own_finished_jobs(konn, other_user):
    """The runner fetches a dep's result only if the same user owns it; otherwise the job fails."""
    from dask_kotta import Kotta
    from dask_kotta.client.serialize import dumps_call, loads_result, versions

    def ask(deps, who=konn):
        spec = {"jobtype": "python", "queue": "Test", "walltime_min": 1, "deps": deps,
                "client": versions()}  # fmt: skip
        job = who.submit_specs([spec], [dumps_call(inc, (1,), {})])[0]
        return who.job(job["id"], wait=30)

    mine = ask([])
    assert mine["status"] == "completed"
    # a dep of my own, completed: staged, and the job runs
    assert ask([mine["id"]])["status"] == "completed"
    # someone else's job, or no job at all: the dependency is refused and the job fails saying so
    mallory = Kotta(other_user.read_text())
    theirs = ask([], who=mallory)
    assert theirs["status"] == "completed"
    for deps in ([theirs["id"]], ["0123456789abcdef"]):
        rec = ask(deps)
        assert rec["status"] == "failed"
        assert f"dependency job {deps[0]}" in rec["reason"]
    assert loads_result(mallory.result_bytes(theirs["id"]), theirs["id"]) == 2


def test_parallelism_follows_the_clusters_slots(konn):
    """By default a graph spreads over as many jobs as the cluster has slots for its queue."""
    queues = konn.queues()
    assert queues["Test"]["slots"] == 8  # the session service: 2 workers x 4 slots
    assert KottaScheduler(konn).effective_parallelism() == 8
    assert KottaScheduler(konn, parallelism=3).effective_parallelism() == 3
