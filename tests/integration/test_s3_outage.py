"""The S3 endpoint going away: while jobs stage, and when the server starts. Nothing stored is lost.

This module runs its own SeaweedFS, since it stops and restarts it.
"""

from __future__ import annotations

import pytest
from kotta_testing import Service, policy_args
from s3server import S3Server

from kotta import KottaJob

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("weed-outage")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def svc(weed, tmp_path_factory):
    # The store named by the environment this time, not by --store.
    env = {
        **weed.env,
        "DASK_KOTTA_STAGING_TIMEOUT_S": "3",
        "DASK_KOTTA_STORE": "s3://kotta-outage/p",
    }
    base = tmp_path_factory.mktemp("outage")
    grants = policy_args(base, s3_grants={"tester": ["s3://outage-data/in/"]})
    s = Service(base, workers=1, env=env, extra=grants)
    yield s.start()
    s.stop()


def run(konn, **kw) -> KottaJob:
    job = KottaJob(jobtype="script", walltime=2, **kw)
    job.submit(konn)
    assert job.wait(konn, maxwait=120), f"job {job.job_id} did not end"
    return job


def test_s3_down_while_staging_and_at_start(weed, svc):
    konn = svc.konn()
    weed.make_bucket("outage-data")
    weed.client().put_object(Bucket="outage-data", Key="in/x.csv", Body=b"1,2\n")
    before = run(
        konn,
        inputs="s3://outage-data/in/x.csv",
        outputs="kept.txt",
        script="#!/bin/bash\ncp x.csv kept.txt",
    )
    assert before.status(konn) == "completed", before.reason

    weed.stop()
    endpoint = weed.endpoint.removeprefix("http://")
    # An input cannot be fetched: the job fails, saying which and why; it does not hang.
    j_in = run(konn, inputs="s3://outage-data/in/x.csv", script="#!/bin/bash\ncat x.csv")
    assert j_in.status(konn) == "failed"
    assert (
        "s3://outage-data/in/x.csv" in j_in.reason and "cannot reach the S3 endpoint" in j_in.reason
    )
    # The store itself is down when outputs are staged: the job fails naming the output.
    j_out = run(konn, outputs="o.txt", script="#!/bin/bash\necho x > o.txt")
    assert j_out.status(konn) == "failed"
    assert "output '" in j_out.reason and endpoint in j_out.reason, j_out.reason
    assert "Signature" not in j_out.reason  # presigned URLs stay out of reasons and logs

    # A server started while the store is unreachable stops with a clear error ...
    svc.stop()
    with pytest.raises(RuntimeError):
        svc.start(timeout=90)
    log = svc.log()
    assert "cannot reach the S3 endpoint" in log and weed.endpoint in log
    # ... and once S3 is back, everything stored before is still there.
    weed.start()
    svc.start()
    konn = svc.konn()
    by_id = {j["id"]: j for j in konn.jobs(limit=100)}
    assert by_id[before.job_id]["status"] == "completed"
    assert by_id[j_in.job_id]["status"] == "failed" and by_id[j_out.job_id]["status"] == "failed"
    assert by_id[j_in.job_id]["reason"] == j_in.reason
    kept = KottaJob.attach(konn, before.job_id)
    assert {o.file: o for o in kept.outputs}["kept.txt"].read() == "1,2\n"
    again = run(konn, inputs="s3://outage-data/in/x.csv", script="#!/bin/bash\ncat x.csv")
    assert again.status(konn) == "completed", again.reason
