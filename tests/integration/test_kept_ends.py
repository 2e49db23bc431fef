"""An end that the server could not take is kept on the worker's disk (issue 13, item 3).

The job ends while the server is down; its worker is killed before the server is
back. The end, kept on disk by the runner, is delivered by the restarted worker
process as it starts: the job completes from its one run and is not run again.
Both dispatch modes (slots, one dask task per job), and an S3 store, where results go
through the server: a small one rides with the kept end instead.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest
from chaos import _worker_processes, work
from kotta_testing import DaskCluster, Service, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("dispatch, store", [("slots", "local"), ("tasks", "local"),
                                             ("slots", "s3")])  # fmt: skip
def test_an_end_kept_while_the_server_was_down_is_delivered_by_the_next_worker(
    tmp_path, request, dispatch, store
):
    cloudpickle.register_pickle_by_value(sys.modules[work.__module__])
    cluster = DaskCluster(tmp_path / "cluster", workers=1, queues=("Test=1",))
    outbox = Path(cluster.env["KOTTA_OUTBOX_DIR"])
    env, extra = {"DASK_KOTTA_DISPATCH": dispatch}, []
    if store == "s3":  # results go through the server there: kept inline while it is away
        s3 = request.getfixturevalue("s3_server")
        bucket = s3.make_bucket(f"kept-{uuid.uuid4().hex[:8]}")
        env, extra = {**env, **s3.env}, ["--store", f"s3://{bucket}/jobs"]
    svc = Service(tmp_path / "svc", scheduler=cluster.address, env=env, extra=extra)
    with cluster.start(), svc.start():
        ledger = svc.shared
        konn = svc.konn()
        (job,) = konn.submit_many([(work, ("once", str(ledger), 2.0))], walltime=2)
        wait_for(lambda: list(ledger.glob("once.*.start")), 60, "the job to start")
        svc.kill9()
        wait_for(lambda: list(ledger.glob("once.*.done")), 30, "the job to end")
        kept = wait_for(lambda: list(outbox.glob("*.json")), 30, "its end kept on disk")
        assert [p.name for p in kept] == [f"{job.job_id}.1.json"]
        assert oct(outbox.stat().st_mode & 0o777) == "0o700"  # it holds the dispatch token
        (worker,) = _worker_processes(cluster)
        worker.kill()
        worker.wait(10)
        time.sleep(1)
        svc.start()
        konn = svc.konn()
        assert job.get_results(konn, timeout=60) == "once"
        runs = sorted(p.name for p in ledger.glob("once.*.start"))
        assert len(runs) == 1, f"the job ran again: {runs}"
        wait_for(lambda: not list(outbox.glob("*.json")), 30, "the kept end to be removed")
        events = [e["status"] for e in konn.events(job.job_id)]
        assert events[-1] == "completed", events
