"""Hostile input from a normal account: refused at the edge, never a 500, never another's loss.

Each case is one the fuzzer (schemathesis over ``/openapi.json``) or a hand-made
poison job found on the real service: integers past 64 bits, strings that are
not text, and secrets in URLs that must not reach the server's log.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import requests
from kotta_testing import wait_for

from dask_kotta.errors import ConflictError
from dask_kotta.store.jobs import JobStore
from kotta import KottaJob

HUGE = "99999999999999999999"  # past 64 bits: an OverflowError inside SQLite, once


def _post(service, path: str, **kw) -> requests.Response:
    return requests.post(service.url + "/api/v1" + path, timeout=10, **kw)


@pytest.mark.parametrize("route", ["heartbeat", "finish", "phase", "claim", "uploads"])
def test_an_attempt_number_past_64_bits_is_refused_not_a_500(service, route):
    headers = {"Authorization": "Bearer anything", "X-Kotta-Attempt": HUGE}
    r = _post(service, f"/runner/jobs/abc/{route}", headers=headers, json={})
    assert r.status_code == 422, (r.status_code, r.text)
    assert "x-kotta-attempt" in r.text.lower(), r.text


def test_a_finish_with_base64_that_is_not_ascii_is_a_400(service):
    headers = {"Authorization": "Bearer anything", "X-Kotta-Attempt": "1"}
    for body in ({"ok": True, "result": "é"}, {"ok": True, "files": {"a.txt": "ü=="}}):
        r = _post(service, "/runner/jobs/abc/finish", headers=headers, json=body)
        assert r.status_code == 400 and "base64" in r.json()["detail"], (r.status_code, r.text)


@pytest.mark.parametrize(
    "body, says",
    [
        ({"name": "x", "size": False}, "size"),  # a bool is not a size
        ({"name": "x", "size": 2**70}, "size"),
        ({"name": " x ", "size": 3}, "whitespace"),  # its URL would name another file
        ({"name": "a\ud800", "size": 3}, "lone surrogate"),
    ],
)
def test_a_bad_upload_is_refused_with_its_reason(konn, service, body, says):
    r = konn.session.post(
        service.url + "/api/v1/uploads",
        data=json.dumps(body),  # json= would refuse the lone surrogate before it is sent
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert 400 <= r.status_code < 500 and says in r.text, (r.status_code, r.text)


def test_an_upload_path_with_a_huge_user_id_is_a_4xx(konn, service):
    r = konn.session.get(service.url + f"/api/v1/uploads/{HUGE}/abcdef12/x", timeout=10)
    assert r.status_code == 422, (r.status_code, r.text)


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"script": "echo \ud800"}, "script"),
        ({"script": "echo", "name": "a\ud800"}, "name"),
        ({"script": "echo", "annotations": {"k": ["ok", "\udfff"]}}, "annotations.k[1]"),
        ({"script": "echo\x00"}, "NUL"),
    ],
)
def test_text_that_is_not_text_is_refused_naming_the_field(konn, service, spec, field):
    before = len(konn.jobs(limit=10_000))
    raw = json.dumps([{"jobtype": "script", "queue": "Test", "walltime_min": 1, **spec}])
    r = konn.session.post(service.url + "/api/v1/jobs", files={"specs": (None, raw)}, timeout=10)
    assert r.status_code == 400, (r.status_code, r.text)
    assert field in r.json()["detail"] and "not valid text" in r.json()["detail"], r.text
    assert len(konn.jobs(limit=10_000)) == before, "nothing is stored"


def test_a_job_that_cannot_be_sent_to_a_worker_fails_alone(konn, service):
    """A job stored before text was checked (here: written to the store directly) used to make
    every claim batch it was in fail, so its neighbours were requeued; now it fails alone."""
    store = JobStore(f"sqlite:///{service.data_dir / 'jobs.sqlite'}", upgrade=False)
    try:
        spec = {"jobtype": "script", "queue": "Test", "walltime_min": 1, "script": "echo \ud800",
                "script_name": "script.sh", "stdout": "STDOUT.txt", "stderr": "STDERR.txt"}  # fmt: skip
        [(poison, _)] = store.insert_jobs(konn.user["id"], [spec])
    finally:
        store.close()
    jobs = [KottaJob(script=f"echo {i}", walltime=1) for i in range(20)]
    konn.submit_many(jobs)
    for job in jobs:
        assert job.wait(konn, maxwait=120) and job.status(konn) == "completed", job.info
        assert job.info["requeues"] == 0, job.info
    wait_for(lambda: konn.job(poison["id"])["status"] == "failed", 60, "the poison job to fail")
    info = konn.job(poison["id"])
    assert "cannot be sent to a worker" in info["reason"] and "script" in info["reason"], info


def test_secrets_in_input_urls_never_reach_the_log(konn, service):
    secret = f"sig{time.time_ns()}"
    url = f"https://nowhere.invalid/data.csv?X-Amz-Signature={secret}&X-Amz-Credential=c{secret}"
    job = KottaJob(script="cat data.csv", inputs=url, walltime=1)
    job.submit(konn)
    assert job.wait(konn, maxwait=120) and job.status(konn) == "failed", job.info
    assert "nowhere.invalid/data.csv" in job.info["reason"], job.info  # the user is told which
    wait_for(lambda: f"job {job.id} failed" in service.log(), 10, "the job's end in the log")
    log = service.log()
    assert "nowhere.invalid/data.csv" in log, "the log names the input, without its query"
    assert secret not in log, "a presigned URL's signature was logged"


def test_a_deleted_token_is_refused_within_a_second(service, tmp_path):
    """The server used to remember every token it had seen until it restarted."""
    import sqlite3

    from dask_kotta.server.auth import hash_token

    creds = json.loads(service.token("leaver", tmp_path / "leaver.auth").read_text())
    headers = {"Authorization": f"Bearer {creds['token']}"}
    whoami = service.url + "/api/v1/whoami"
    for _ in range(3):  # looked up, then served from the server's memory
        assert requests.get(whoami, headers=headers, timeout=10).status_code == 200
    with sqlite3.connect(service.data_dir / "jobs.sqlite") as db:
        n = db.execute("DELETE FROM tokens WHERE token_hash = ?", (hash_token(creds["token"]),))
        assert n.rowcount == 1
    deleted = time.monotonic()
    wait_for(lambda: requests.get(whoami, headers=headers, timeout=10).status_code == 401, 5,
             "the deleted token to be refused")  # fmt: skip
    assert time.monotonic() - deleted < 1.5


def test_a_chunked_payload_over_the_limit_is_refused_as_it_streams(konn, service):
    """With no Content-Length, the server learns the size only as the body comes: it used to
    spool a payload whole, then read it into memory whole, before refusing it."""
    import psutil

    server = psutil.Process(service.proc.proc.pid)
    before_jobs = len(konn.jobs(limit=10_000))
    boundary = "kottatestboundary"
    spec = json.dumps([{"jobtype": "python", "queue": "Test", "walltime_min": 1}])
    mib = b"\0" * 2**20

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"specs\"\r\n\r\n"
               f"{spec}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"payload0\"; "
               f"filename=\"payload0\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
        for _ in range(300):  # 300 MiB; the test service's limit is 32 MiB
            yield mib
        yield f"\r\n--{boundary}--\r\n".encode()

    rss = server.memory_info().rss
    try:
        r = konn.session.post(service.url + "/api/v1/jobs", data=body(), timeout=60,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
        assert r.status_code == 413 and "over the limit" in r.json()["detail"], r.text
    except requests.ConnectionError:
        pass  # refused mid-body: the server answered 413 and closed while we still sent
    grown = (server.memory_info().rss - rss) / 2**20
    # The bound; measured +3.8 MiB on a new server, +0.3 MiB after.
    assert grown < 10, f"the server grew by {grown:.0f} MiB reading a refused payload"
    assert len(konn.jobs(limit=10_000)) == before_jobs


def test_one_users_backlog_does_not_hold_back_another_users_job(konn, service, other_user):
    """Fair share: a free slot goes to the user with the fewest running jobs."""
    from kotta import Kotta

    mallory = Kotta(other_user.read_text())
    # ~25 s of work for the queue's 8 slots: first-in-first-out would start her job after
    # all of it, fair share at the next free slot (one frees about every 0.1 s).
    flood = [KottaJob(script="sleep 1", walltime=1) for _ in range(200)]
    konn.submit_many(flood)
    try:
        wait_for(lambda: konn.queues()["Test"]["yours"]["running"] >= 4, 60, "the flood to run")
        mine = konn.queues()["Test"]["yours"]
        assert mine["pending"] >= 100, mine  # the backlog is there: FIFO would make her wait
        assert mallory.queues()["Test"]["yours"] == {"running": 0, "pending": 0}
        job = KottaJob(script="echo mine", walltime=1)
        job.submit(mallory)
        submitted = time.monotonic()
        wait_for(lambda: job.status(mallory) != "pending", 30, "the other user's job to start")
        assert time.monotonic() - submitted < 5, "her job waited behind the flood"
        assert job.wait(mallory, maxwait=60) and job.status(mallory) == "completed", job.info
    finally:
        for j in flood:
            with contextlib.suppress(ConflictError):  # it ended already
                konn.cancel_job(j.job_id)


def test_a_submit_past_the_pending_limit_is_a_429_that_names_it(konn):
    from dask_kotta.errors import LimitExceededError

    before = len(konn.jobs(limit=10_000))
    started = time.monotonic()
    with pytest.raises(LimitExceededError, match=r"over the limit of 1000 pending jobs per user "
                       r"\(the operator's --max-pending\)") as e:  # fmt: skip
        konn.submit_many([KottaJob(script="true", walltime=1) for _ in range(1001)], chunk=1001)
    assert e.value.status == 429
    assert time.monotonic() - started < 10, "a 429 is not retried: it holds until jobs start"
    assert len(konn.jobs(limit=10_000)) == before, "nothing is stored"
