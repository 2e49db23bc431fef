"""Nothing submitted is lost when the server dies, and no job runs twice at once."""

from __future__ import annotations

import collections
import time

import pytest
from kotta_testing import DaskCluster, Service, job_process, wait_for

from kotta import KottaJob
from kotta.kotta_functions import *  # noqa: F403


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = DaskCluster(tmp_path_factory.mktemp("cluster"), workers=2, queues=("Test=3",)).start()
    yield c
    c.stop()


@pytest.fixture
def services():
    """Starts services for one test and always stops them, whatever the test did to them."""
    started: list[Service] = []

    def start(*args, **kwargs) -> Service:
        svc = Service(*args, **kwargs)
        started.append(svc)
        return svc.start()

    yield start
    for svc in reversed(started):
        svc.stop()


@pytest.mark.parametrize("dispatch", ["slots", "tasks"])
def test_kill9_server_with_jobs_in_flight(cluster, services, tmp_path, dispatch):
    """Both dispatch modes: slots (the default) and one dask task per job attempt."""
    env = {"DASK_KOTTA_DISPATCH": dispatch}
    svc = services(tmp_path / "svc", scheduler=cluster.address, env=env)
    marks = svc.shared  # jobs are contained: this directory is mounted into their view
    konn = svc.konn()

    @kottajob(konn, "Test", 2, block=False)
    def work(i, marks):
        import os
        import pathlib
        import time

        time.sleep(1.0)
        # One file per execution: more than one for an index means it ran twice.
        pathlib.Path(marks, f"{i}-{os.urandom(8).hex()}-{time.time_ns()}").touch()
        return i * i

    jobs = [work(i, str(marks)) for i in range(12)]  # 2 rounds on the cluster's 6 slots
    wait_for(lambda: any(j.status(konn) == "processing" for j in jobs), 60, "a running job")
    svc.kill9()
    time.sleep(2)  # runners keep going, their reports fail meanwhile
    svc.start()
    konn = svc.konn()
    results = [j.get_results(konn, timeout=180) for j in jobs]
    assert results == [i * i for i in range(12)]
    runs = collections.Counter(p.name.split("-")[0] for p in marks.iterdir())
    assert runs == {str(i): 1 for i in range(12)}, runs
    assert all(konn.job(j.job_id)["status"] == "completed" for j in jobs)


def test_up_restart_keeps_user_token_jobs_and_outputs(services, tmp_path):
    svc = services(tmp_path / "svc", workers=1)
    creds = svc.creds()
    konn = svc.konn()
    job = KottaJob(script="echo persisted > p.txt", outputs="p.txt", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    svc.stop()
    svc.start()
    assert svc.creds() == creds, "a restart must keep the credentials file"
    konn = svc.konn()
    assert job.status(konn) == "completed"
    assert {o.file: o.read() for o in job.outputs}["p.txt"] == "persisted\n"
    assert job.job_id in {j["id"] for j in konn.jobs()}


def test_pending_jobs_survive_a_stop(services, tmp_path):
    """Jobs submitted while no worker serves their queue wait, and run after a restart."""
    svc = services(tmp_path / "svc", workers=1)
    konn = svc.konn()
    job = KottaJob(script="sleep 3; echo a", walltime=0.5)
    job.submit(konn)
    queued = [KottaJob(script=f"echo {i}", walltime=0.5) for i in range(6)]
    for q in queued:
        q.submit(konn)
    svc.kill9()
    svc.start()
    konn = svc.konn()
    for q in [job, *queued]:
        assert q.wait(konn, maxwait=120)
        assert q.status(konn) == "completed", q.info


def test_worker_killed_mid_job_requeues_it(cluster, services, tmp_path):
    """A runner that dies with its worker loses the lease; the job runs again elsewhere."""
    # The default lease (20 s): the scheduler, not the lease, tells the server the worker died.
    svc = services(tmp_path / "svc", scheduler=cluster.address)
    konn = svc.konn()
    marks = svc.shared

    @kottajob(konn, "Test", 2, block=False)
    def victim(marks):
        import os
        import pathlib
        import time

        n = len(list(pathlib.Path(marks).iterdir()))
        pathlib.Path(marks, f"run{n}").write_text(os.environ["KOTTA_WORKDIR"])
        if n == 0:
            time.sleep(120)  # the first run is killed with its worker
        return n

    job = victim(str(marks))
    first = wait_for(lambda: list(marks.iterdir()), 60, "the first run")[0]
    wait_for(first.read_text, 10, "the first run's mark")
    # PID 1 of the job <- the worker's template (or the sandbox launcher <- the runner)
    parent = job_process(first.read_text()).parent()
    if "runner.sandbox" in " ".join(parent.cmdline()):
        parent = parent.parent()
    if "runner.template" in " ".join(parent.cmdline()):
        parent = parent.parent()  # forked from the worker's template: kill the worker itself
    assert "dask_worker" in " ".join(parent.parent().cmdline()), "expected a worker under its nanny"
    parent.kill()
    assert job.get_results(konn, timeout=120) == 1
    events = konn.events(job.job_id)
    assert [e["status"] for e in events].count("pending") == 2
    assert events[-1]["status"] == "completed"
    requeued = [e for e in events if e["status"] == "pending"][-1]
    assert "its dask worker left the cluster" in requeued["detail"], events
    assert konn.job(job.job_id)["requeues"] == 1
    assert konn.job(job.job_id)["worker"] and " " not in konn.job(job.job_id)["worker"]


def test_a_long_poll_does_not_hold_up_a_stop(services, tmp_path):
    """Clients and runners long-poll for up to 30 s; a stop ends their polls, not waits them out."""
    import signal
    import threading

    from dask_kotta.errors import ServerUnavailableError
    from kotta import Kotta

    svc = services(tmp_path / "svc", workers=1)
    konn = Kotta(svc.creds(), retry_window=0)  # a client that gives up: the server is tested
    job = KottaJob(script="sleep 60", walltime=2)
    job.submit(konn)
    wait_for(lambda: job.status(konn) == "processing", 60, "the job to run")
    polled: list[object] = []

    def poll() -> None:
        try:
            polled.append(job.wait(konn, maxwait=28))  # one 28 s long poll
        except ServerUnavailableError as e:
            polled.append(e)

    waiter = threading.Thread(target=poll, daemon=True)
    waiter.start()
    time.sleep(1)  # the poll is in the server
    t0 = time.monotonic()
    svc.proc.proc.send_signal(signal.SIGINT)
    svc.proc.proc.wait(25)
    stopped = time.monotonic() - t0
    waiter.join(25)
    assert polled, "the client's long poll was still open when the server had stopped"
    assert stopped < 15, f"the stop waited {stopped:.1f} s for open long polls"
    assert "stopped." in svc.log()
