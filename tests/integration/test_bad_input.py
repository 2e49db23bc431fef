"""Bad input: each a clear error naming the problem, and nothing stored is lost."""

from __future__ import annotations

import json

import pytest
import requests

from dask_kotta.errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    KottaError,
    NotFoundError,
    PayloadTooLargeError,
    ServerUnavailableError,
)
from kotta import Kotta, KottaJob
from kotta.kotta_functions import *  # noqa: F403


@pytest.mark.parametrize(
    "creds, match",
    [
        ("", "empty"),
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"url": "http://127.0.0.1:1"}', "'token'"),
        ('{"token": "x"}', "'url'"),
        ('{"url": "ftp://x", "token": "x"}', "http://"),
    ],
)
def test_malformed_credentials(creds, match):
    with pytest.raises(ConfigError, match=match):
        Kotta(creds)


def test_unknown_token_is_rejected(service):
    with pytest.raises(AuthenticationError, match="credentials rejected by http://127.0.0.1"):
        Kotta(json.dumps({"url": service.url, "token": "kt_not-a-real-token"}))


def test_requests_without_a_token_are_refused(service):
    for path in ("/api/v1/jobs", "/api/v1/queues", "/api/v1/jobs/abc"):
        r = requests.get(service.url + path, timeout=5)
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]


def test_server_down_names_the_url():
    with pytest.raises(ServerUnavailableError, match="http://127.0.0.1:9"):
        Kotta(json.dumps({"url": "http://127.0.0.1:9", "token": "kt_x"}))


def submit(konn, **kw):
    job = KottaJob(**kw)
    job.submit(konn)
    return job


def test_unknown_queue(konn):
    with pytest.raises(InvalidRequestError, match="unknown queue 'Nope'.*Test"):
        submit(konn, script="true", queue="Nope")


@pytest.mark.parametrize("walltime", [0, -1])
def test_walltime_not_positive(konn, walltime):
    with pytest.raises(InvalidRequestError, match="walltime must be > 0"):
        submit(konn, script="true", walltime=walltime)


def test_walltime_over_the_queue_maximum(konn):
    with pytest.raises(InvalidRequestError, match="over queue Tiny's maximum of 10 min"):
        submit(konn, script="true", queue="Tiny", walltime=11)


def test_walltime_not_a_number(konn):
    with pytest.raises(InvalidRequestError, match="not a number"):
        submit(konn, script="true", walltime="soon")


@pytest.mark.parametrize("outputs", ["../up.txt", "/etc/passwd", "a/../../b", "ok.txt, ../x"])
def test_outputs_escaping(konn, outputs):
    with pytest.raises(InvalidRequestError, match="output"):
        submit(konn, script="true", outputs=outputs)


def test_script_name_escaping(konn):
    with pytest.raises(InvalidRequestError, match="script_name"):
        submit(konn, script="true", script_name="../../evil.sh")


def test_script_job_without_script_or_executable(konn, service):
    with pytest.raises(KottaError, match="script= or executable="):
        submit(konn, jobname="empty")
    # The server refuses it too, for clients other than ours.
    r = konn.session.post(
        service.url + "/api/v1/jobs",
        files={"specs": (None, json.dumps([{"jobtype": "script"}]))},
        timeout=10,
    )
    assert r.status_code == 400 and "needs a script or an executable" in r.json()["detail"]


@pytest.mark.parametrize(
    "inputs, match",
    [
        ("ftp://host/file.txt", "unsupported scheme 'ftp'"),
        ("s3://", "malformed"),
        ("not a url", "unsupported scheme"),
        ("http://host/a/x.txt, https://other/b/x.txt", "would both be staged as 'x.txt'"),
        ("https://host/", "names no file"),
        # Without a policy, nothing on the service's own network (issue 11).
        ("http://127.0.0.1:1/x.csv", "its host 127.0.0.1 is a loopback address"),
        ("http://[fe80::1]/x.csv", "link-local"),
        ("https://u:pw@host.example/x.csv", "carries user-info"),
    ],
)
def test_bad_inputs(konn, inputs, match):
    with pytest.raises(InvalidRequestError, match=match):
        submit(konn, script="true", inputs=inputs)


def test_malformed_submission_bodies(konn, service):
    url = service.url + "/api/v1/jobs"
    r = konn.session.post(url, files={"specs": (None, "{not json")}, timeout=10)
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = konn.session.post(url, files={"other": (None, "x")}, timeout=10)
    assert r.status_code == 422 and "specs" in r.json()["detail"]
    r = konn.session.post(
        url, files={"specs": (None, json.dumps([{"jobtype": "python"}]))}, timeout=10
    )
    assert r.status_code == 400 and "payload" in r.json()["detail"]
    r = konn.session.post(
        url, files={"specs": (None, json.dumps([{"bogus": 1, "script": "x"}]))}, timeout=10
    )
    assert r.status_code == 400 and "bogus" in r.json()["detail"]


def test_payload_over_the_limit_is_413_and_nothing_is_stored(konn):
    before = len(konn.jobs(limit=10_000))

    @kottajob(konn, "Test", 0.5)
    def big(blob):
        return len(blob)

    with pytest.raises(PayloadTooLargeError, match="limit"):
        big(b"x" * (40 * 1024 * 1024))  # the test service allows 32 MiB
    assert len(konn.jobs(limit=10_000)) == before


def test_unknown_job_id(konn):
    with pytest.raises(NotFoundError, match="no job 'ffffffffffffffff'"):
        konn.job("ffffffffffffffff")


def test_bad_request_leaves_earlier_jobs_intact(konn):
    job = submit(konn, script="echo kept", walltime=0.5)
    job.wait(konn)
    with pytest.raises(InvalidRequestError):
        submit(konn, script="true", queue="Nope")
    assert job.status(konn) == "completed"
    assert job.outputs[0].read() == "kept\n"
