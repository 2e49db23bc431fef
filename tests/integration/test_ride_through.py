"""Clients ride through a server restart: waits, results and submits retry for a window.

The real `dask-kotta up` is stopped and started again on the same port and data
directory while the client is in the middle of its calls.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

import cloudpickle
import dask
import pytest
from dask import delayed
from kotta_testing import Service, wait_for

from dask_kotta import KottaScheduler
from dask_kotta.errors import ServerUnavailableError
from kotta import Kotta, KottaJob
from kotta.kotta_functions import *  # noqa: F403

# The workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    # A short lease: the jobs the stop took from the cluster run again soon after the restart.
    svc = Service(tmp_path_factory.mktemp("ride"), workers=1, slots=4, extra=["--lease", "4"])
    yield svc.start()
    svc.stop()


@pytest.fixture
def service(started):
    """The module's service, up: each test restarts it, and one leaves it down."""
    if not started.proc.alive():
        started.start()
    return started


def in_thread(fn) -> tuple[threading.Thread, list]:
    """Run ``fn`` in a thread; the list gets its value or its exception."""
    out: list = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # the test asserts on it
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def restart(svc: Service, down_s: float = 3.0) -> None:
    """Stop the service's process, stay down ``down_s`` s, start it again (same port, same data)."""
    svc.proc.stop()
    time.sleep(down_s)
    svc.start()


def test_gather_and_get_results_ride_through_a_restart(service):
    konn = service.konn()

    @kottajob(konn, "Test", 2, block=False)  # noqa: F405
    def square(i):
        import time

        time.sleep(2)
        return i * i

    jobs = [square(i) for i in range(6)]
    wait_for(lambda: jobs[0].status(konn) == "processing", 60, "a running job")
    gathering, gathered = in_thread(lambda: konn.gather(jobs[:3]))
    getting, got = in_thread(lambda: [j.get_results(konn) for j in jobs[3:]])
    time.sleep(0.5)  # both are in their long polls
    assert gathering.is_alive() and getting.is_alive(), (gathered, got)
    restart(service)
    gathering.join(120)
    getting.join(120)
    assert gathered == [[0, 1, 4]], gathered
    assert got == [[9, 16, 25]], got


def test_a_submit_made_while_the_server_is_down_makes_one_job(service):
    konn = service.konn()
    name = f"once-{uuid.uuid4().hex[:8]}"
    service.proc.stop()
    job = KottaJob(script="echo once", jobname=name, walltime=0.5)
    submitting, submitted = in_thread(lambda: job.submit(konn))
    time.sleep(3)
    assert not submitted, "the submit should still be retrying"
    service.start()
    submitting.join(60)
    assert submitted == [True], submitted
    assert job.get_results(konn, timeout=60)
    mine = [j for j in konn.jobs(limit=100) if j["name"] == name]
    assert [j["id"] for j in mine] == [job.job_id]


def test_submits_through_a_kill9_each_make_one_job(service):
    """A submit the server took but did not answer is retried with its key: still one job."""
    konn = service.konn()
    names = [f"k{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    jobs = [KottaJob(script="true", jobname=n, walltime=0.5) for n in names]
    submitting, submitted = in_thread(lambda: [j.submit(konn) for j in jobs])
    wait_for(lambda: jobs[5].job_id, 60, "a few submits")
    service.kill9()
    time.sleep(1)
    service.start()
    submitting.join(120)
    assert submitted == [[True] * len(jobs)], submitted
    seen = [j["name"] for j in konn.jobs(limit=500) if j["name"] in set(names)]
    assert sorted(seen) == sorted(names)


def test_a_wait_cut_short_by_a_restart_waits_only_what_was_left(service):
    konn = service.konn()
    job = KottaJob(script="sleep 60", walltime=2)
    job.submit(konn)
    wait_for(lambda: job.status(konn) == "processing", 60, "the job to run")
    t0 = time.monotonic()
    waiting, waited = in_thread(lambda: job.wait(konn, maxwait=30))  # one 30 s long poll
    time.sleep(1)
    # Down by kill -9, which cuts the poll as a stop does: a stop waits for the running
    # job's worker to close (8 s to over 20 s on a busy host), and the restart must end
    # well before the poll would.
    service.kill9()
    time.sleep(1)
    service.start()
    back = time.monotonic() - t0
    assert 2 <= back < 27, f"the restart took {back:.1f} s: this test cannot tell"
    waiting.join(40)
    took = time.monotonic() - t0
    assert waited == [False], waited
    # Resumed, the poll ends at ~30 s; started over after the restart, at back + 30 s.
    assert took < 30 + back / 2, (took, back)


def test_a_server_that_stays_down_fails_the_call_after_the_window(service):
    konn = Kotta(service.creds(), retry_window=3)
    assert konn.retry_window == 3
    job = KottaJob(script="sleep 30", walltime=1)
    job.submit(konn)
    service.proc.stop()
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=r"kept trying for 3\.\d s") as info:
        job.get_results(konn)
    took = time.monotonic() - t0
    assert 2 <= took < 8, took  # (the poll may have broken off during the stop)
    assert service.url in str(info.value)


def slow_square(i, gate):
    """Marks that it runs, then waits for the test to open ``gate`` (at most 2 min)."""
    import os
    import pathlib
    import time

    pathlib.Path(f"{gate}.{i}.{os.urandom(8).hex()}.running").touch()  # runs: uids differ
    for _ in range(1200):
        if os.path.exists(gate):
            break
        time.sleep(0.1)
    return i * i


def test_a_dask_compute_rides_through_a_restart(service):
    gate = service.shared / f"gate-{uuid.uuid4().hex}"
    sched = KottaScheduler(service.konn(), queue="Test", walltime=2)
    total = delayed(sum)([delayed(slow_square)(i, str(gate)) for i in range(4)])
    computing, computed = in_thread(lambda: dask.compute(total, scheduler=sched))
    wait_for(lambda: len(list(service.shared.glob(f"{gate.name}.*.running"))) >= 4, 60,
             "its four jobs to run")  # fmt: skip
    assert computing.is_alive(), computed
    restart(service)
    gate.touch()  # the jobs the stop took from the cluster run again, and end
    computing.join(120)
    assert computed == [(14,)], computed
