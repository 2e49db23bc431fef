"""Two users of one service: each sees and touches only their own jobs and outputs."""

from __future__ import annotations

import sqlite3

import pytest
import requests
from kotta_testing import own_name, wait_for

from dask_kotta.errors import NotFoundError
from kotta import Kotta, KottaJob


@pytest.fixture(scope="module")
def alice_job(konn):
    job = KottaJob(
        script="echo secret > s.txt; echo out", outputs="s.txt", walltime=0.5, jobname="alice's"
    )
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "completed"
    return job


@pytest.fixture(scope="module")
def mallory(other_user):
    return Kotta(other_user.read_text())


def test_other_users_job_is_404_everywhere(alice_job, mallory, konn):
    jid = alice_job.job_id
    assert mallory.user["name"] == own_name("mallory") and konn.user["name"] == own_name("tester")
    with pytest.raises(NotFoundError, match=f"no job '{jid}'"):
        mallory.job(jid)
    with pytest.raises(NotFoundError):
        mallory.job(jid, wait=1)
    with pytest.raises(NotFoundError):
        mallory.wait_any([jid], timeout=0.1)
    with pytest.raises(NotFoundError):
        mallory.cancel_job(jid)
    with pytest.raises(NotFoundError):
        mallory.events(jid)
    with pytest.raises(NotFoundError):
        mallory.result_bytes(jid)
    for out in alice_job.outputs:
        r = mallory.session.get(out.url, timeout=5)
        assert r.status_code == 404, out.url
    assert alice_job.status(konn) == "completed"


def test_other_users_job_answers_exactly_like_a_missing_one(alice_job, mallory):
    a = mallory.session.get(f"{mallory.url}/api/v1/jobs/{alice_job.job_id}", timeout=5)
    b = mallory.session.get(f"{mallory.url}/api/v1/jobs/0000000000000000", timeout=5)
    assert a.status_code == b.status_code == 404
    assert a.json()["detail"].replace(alice_job.job_id, "X") == b.json()["detail"].replace(
        "0000000000000000", "X"
    )


def test_lists_show_only_own_jobs(alice_job, mallory, konn):
    mine = KottaJob(script="echo m", walltime=0.5)
    mine.submit(mallory)
    ids = {j["id"] for j in mallory.jobs(limit=1000)}
    assert mine.job_id in ids and alice_job.job_id not in ids
    assert mine.job_id not in {j["id"] for j in konn.jobs(limit=10_000)}


def test_outputs_need_a_token(alice_job):
    for out in alice_job.outputs:
        assert requests.get(out.url, timeout=5).status_code == 401


def test_tokens_are_stored_hashed_and_never_logged(service, konn):
    token = konn._token
    db = service.data_dir / "jobs.sqlite"
    rows = sqlite3.connect(db).execute("select token_hash from tokens").fetchall()
    assert rows and all(len(h) == 64 and h != token for (h,) in rows)
    raw = b"".join(p.read_bytes() for p in service.data_dir.glob("jobs.sqlite*"))
    assert token.encode() not in raw
    assert token not in service.log()


def test_runner_api_refuses_user_tokens(konn):
    """The owner's token, sent where a runner sends its attempt's dispatch token, on a job
    that attempt holds: the calls a valid dispatch token makes here succeed (tests/unit's
    test_the_runner_api_takes_the_attempts_dispatch_token_only shows both sides)."""
    job = KottaJob(script="sleep 30", walltime=1)
    job.submit(konn)
    try:
        wait_for(lambda: job.status(konn) == "processing", 60, "the job to run")
        attempt = str(konn.job(job.job_id)["attempt"])
        base = f"{konn.url}/api/v1/runner/jobs/{job.job_id}"
        headers = {"X-Kotta-Attempt": attempt}
        for path, body in [("heartbeat", None), ("phase", {"status": "staging_outputs"}),
                           ("finish", {"ok": True})]:  # fmt: skip
            r = konn.session.post(f"{base}/{path}", headers=headers, json=body, timeout=5)
            assert r.status_code == 409, (path, r.status_code, r.text)
        r = konn.session.put(f"{base}/files/forged.txt", headers=headers, data=b"x", timeout=5)
        assert r.status_code == 409
        assert job.status(konn) == "processing", "the refused calls changed the job"
    finally:
        job.cancel(konn)
    assert "forged.txt" not in {o["name"] for o in konn.job(job.job_id)["outputs"]}
