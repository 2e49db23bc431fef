"""Getting outputs out (download links, ``get``, ``submit --wait``) and resubmit, on real services.

Two services of this module's own, one on the local store and one on S3 (SeaweedFS),
each giving download links a life of LINK_TTL seconds (``--link-ttl``) so that a test
can see one expire. Every link is opened with plain ``requests``: no token, no session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from kotta_testing import Service, wait_for
from kotta_testing import run_script as run

from dask_kotta.errors import ConflictError, JobError, NotFoundError, UnsafePathError
from kotta import Kotta, KottaJob
from kotta.kotta_functions import kottajob

pytestmark = pytest.mark.timeout(300)

QUEUES = Path(__file__).with_name("queues.json")
#: Seconds a link opens for on this module's services: long enough to open one made a
#: moment before on loopback, short enough to wait out.
LINK_TTL = 4
SCRIPT = (
    "#!/bin/bash\necho to-stdout; echo to-stderr >&2\n"
    "mkdir -p sub; printf 'a,b\\n1,2\\n' > a.csv; printf 'deep' > sub/b.txt\n"
)


def _start(base: Path, env: dict, store: list[str]) -> Service:
    extra = ["--queues", str(QUEUES), "--link-ttl", str(LINK_TTL), *store]
    return Service(base, workers=1, extra=extra, env=env).start()


@pytest.fixture(scope="module")
def local_service(tmp_path_factory):
    svc = _start(tmp_path_factory.mktemp("outputs-local"), {}, [])
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def s3_service(s3_server, tmp_path_factory):
    svc = _start(tmp_path_factory.mktemp("outputs-s3"), s3_server.env,
                 ["--store", "s3://kotta-outputs/jobs"])  # fmt: skip
    yield svc
    svc.stop()


@pytest.fixture(scope="module", params=["local", "s3"])
def svc(request):
    return request.getfixturevalue(f"{request.param}_service")


@pytest.fixture(scope="module")
def k(svc):
    return svc.konn()


@pytest.fixture(scope="module")
def mallory(svc, tmp_path_factory):
    path = tmp_path_factory.mktemp("mallory") / "auth.file"
    svc.token("mallory", path)
    return path


@pytest.fixture(scope="module")
def done(svc, k):
    """An ended script job with outputs a.csv and sub/b.txt, and its STDOUT/STDERR."""
    job = run(k, outputs="a.csv, sub/b.txt", script=SCRIPT)
    assert job.status(k) == "completed", job.reason
    return job


def cli(svc, *args: str, cwd: Path, auth: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", *args, "--auth-file", str(auth or svc.auth_file)],
        capture_output=True, text=True, timeout=180, cwd=cwd,
    )  # fmt: skip


def tamper(url: str, at: int = -10) -> str:
    """The link with one character of its signature changed."""
    at %= len(url)
    return url[:at] + ("A" if url[at] != "A" else "B") + url[at + 1 :]


# -- links ------------------------------------------------------------------------------------


def test_links_open_with_no_token_and_name_the_file(svc, k, done):
    t0 = time.time()
    links = k.links(done.job_id)
    assert set(links) == {"a.csv", "sub/b.txt", "STDOUT.txt", "STDERR.txt"}
    assert t0 + LINK_TTL - 1 <= links.expires <= time.time() + LINK_TTL
    token = json.loads(svc.creds())["token"]
    for name, url in links.items():
        assert url.startswith(svc.url + "/api/v1/dl/") and token not in url, url
        r = requests.get(url, timeout=30)  # no Authorization header, no session
        assert r.status_code == 200, (name, r.status_code, r.text)
        assert name.rsplit("/", 1)[-1] in r.headers["content-disposition"], r.headers
        assert r.headers["cache-control"] == "no-store"
    assert requests.get(links["a.csv"], timeout=30).content == b"a,b\n1,2\n"
    assert requests.get(links["sub/b.txt"], timeout=30).content == b"deep"
    if "--store" in svc.extra:  # S3: a presigned URL that expires with the link
        r = requests.get(links["a.csv"], timeout=30, allow_redirects=False)
        assert r.status_code == 307
        query = parse_qs(urlparse(r.headers["location"]).query)
        assert 1 <= int(query["X-Amz-Expires"][0]) <= LINK_TTL + 1
    assert requests.get(links["STDOUT.txt"], timeout=30).text == "to-stdout\n"
    if "--store" not in svc.extra:  # (S3 answers the API's download with a redirect)
        # The API's own download names the file too, kept as a row of the job database.
        r = k.session.get(f"{svc.url}/api/v1/jobs/{done.job_id}/files/sub/b.txt", timeout=30)
        assert r.status_code == 200 and r.content == b"deep"
        assert r.headers["content-disposition"] == 'attachment; filename="b.txt"', r.headers
    # The server's log holds no link (its access log is off).
    sig = links["a.csv"].rsplit("/", 1)[-1]
    assert sig not in svc.log()


def test_links_of_named_outputs_and_a_name_the_job_has_not(k, done):
    links = k.links(done.job_id, ["STDERR.txt", "./a.csv"])
    assert set(links) == {"STDERR.txt", "a.csv"}
    assert requests.get(links["STDERR.txt"], timeout=30).text == "to-stderr\n"
    with pytest.raises(NotFoundError, match=r"has no output 'nope.csv'.*a\.csv"):
        k.links(done.job_id, ["nope.csv"])
    with pytest.raises(NotFoundError, match="has no output '../a.csv'"):
        k.links(done.job_id, ["../a.csv"])


def test_a_link_expires_and_an_altered_one_never_opens(k, done):
    links = k.links(done.job_id, ["a.csv"])
    url = links["a.csv"]
    bad_links = (tamper(url), tamper(url, -1), url.replace("/dl/", "/dl/x"), url + "x",
                 url.rsplit(".", 1)[0])  # fmt: skip
    for bad in bad_links:
        r = requests.get(bad, timeout=30)
        assert r.status_code == 403, (bad, r.status_code, r.text)
        assert "not valid" in r.json()["detail"]
    # Another job's signed part under this one's signature: refused too.
    other = k.links(done.job_id, ["STDOUT.txt"])["STDOUT.txt"]
    body_of_other = other.rsplit("/", 1)[1].split(".")[0]
    forged = url.rsplit("/", 1)[0] + "/" + body_of_other + "." + url.rsplit(".", 1)[1]
    assert requests.get(forged, timeout=30).status_code == 403
    wait_for(lambda: time.time() > links.expires, LINK_TTL + 5, "the link to expire", 0.2)
    r = requests.get(url, timeout=30)
    assert r.status_code == 403 and "expired" in r.json()["detail"], r.text


def test_no_links_to_another_users_job_and_none_after_the_job_is_deleted(svc, k, mallory):
    job = run(k, outputs="a.csv", script=SCRIPT)
    with pytest.raises(NotFoundError, match="no job"):
        Kotta(mallory.read_text()).links(job.job_id)
    r = requests.post(f"{svc.url}/api/v1/jobs/{job.job_id}/links", timeout=30,
                      headers={"Authorization": f"Bearer {json.loads(mallory.read_text())['token']}"})  # fmt: skip
    assert r.status_code == 404 and "detail" in r.json()
    url = k.links(job.job_id)["a.csv"]
    k.delete(job.job_id)
    r = requests.get(url, timeout=30)
    assert r.status_code == 404 and "no longer there" in r.json()["detail"], r.text


def test_links_without_a_body_over_plain_http(svc, k, done):
    token = json.loads(svc.creds())["token"]
    r = requests.post(f"{svc.url}/api/v1/jobs/{done.job_id}/links", timeout=30,
                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"links", "expires"} and len(body["links"]) == 4
    assert (
        requests.post(f"{svc.url}/api/v1/jobs/{done.job_id}/links", timeout=30).status_code == 401
    )


# -- dask-kotta get, status, submit --wait ------------------------------------------------------


def test_get_writes_the_outputs_and_overwrites_nothing(svc, done, tmp_path):
    out = tmp_path / "out"
    r = cli(svc, "get", done.job_id, "-d", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "a.csv").read_bytes() == b"a,b\n1,2\n"
    assert (out / "sub" / "b.txt").read_bytes() == b"deep"
    assert (out / "STDOUT.txt").read_text() == "to-stdout\n"
    assert "a.csv" in r.stdout and "sub/b.txt" in r.stdout
    assert not [p for p in out.rglob("*") if ".part" in p.name]

    (out / "a.csv").write_text("mine")
    r = cli(svc, "get", done.job_id, "-d", str(out), cwd=tmp_path)
    assert r.returncode == 1 and "not overwriting" in r.stderr and "a.csv" in r.stderr, r.stderr
    assert (out / "a.csv").read_text() == "mine"
    r = cli(svc, "get", done.job_id, "a.csv", "-d", str(out), "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "a.csv").read_bytes() == b"a,b\n1,2\n"

    # Named outputs only; into the current directory by default.
    r = cli(svc, "get", done.job_id, "STDERR.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "STDERR.txt").read_text() == "to-stderr\n"
    assert not (tmp_path / "a.csv").exists()


def test_get_refuses_names_that_escape_and_names_the_job_has_not(svc, k, done, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("../a.csv", "/etc/passwd", "sub/../../a.csv"):
        r = cli(svc, "get", done.job_id, name, "-d", str(out), cwd=tmp_path)
        assert r.returncode == 1 and "refused" in r.stderr, (name, r.stderr)
    r = cli(svc, "get", done.job_id, "nope.csv", "-d", str(out), cwd=tmp_path)
    assert r.returncode == 1 and "no output 'nope.csv'" in r.stderr, r.stderr
    # A subdirectory that leads out through a symlink is not followed.
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "sub").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside"):
        k.download(done.job_id, ["sub/b.txt"], out)
    assert not list(outside.iterdir()) and not (tmp_path / "a.csv").exists()
    assert list(out.iterdir()) == [out / "sub"]


def test_get_of_a_running_job_or_another_users(svc, k, mallory, tmp_path):
    job = KottaJob(jobtype="script", script="#!/bin/bash\nsleep 60\n", walltime=2, outputs="x")
    job.submit(k)
    try:
        r = cli(svc, "get", job.job_id, cwd=tmp_path)
        assert r.returncode == 1 and f"job {job.job_id} is " in r.stderr, r.stderr
        assert "once it ends" in r.stderr
        with pytest.raises(JobError):
            k.download(job.job_id, directory=tmp_path)
    finally:
        job.cancel(k)
    r = cli(svc, "get", job.job_id, cwd=tmp_path, auth=mallory)
    assert r.returncode == 1 and f"no job '{job.job_id}'" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_prints_links_that_open(svc, done, tmp_path):
    r = cli(svc, "status", done.job_id, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("output")]
    assert len(lines) == 4, r.stdout
    url = next(line.split()[-1] for line in lines if " a.csv " in line)
    assert "/api/v1/dl/" in url
    assert requests.get(url, timeout=30).content == b"a,b\n1,2\n"
    assert "open without a token until" in r.stdout and f"dask-kotta get {done.job_id}" in r.stdout


def test_submit_wait_fetches_the_declared_outputs(svc, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "here"
    run_dir.mkdir()
    r = cli(svc, "submit", str(script), "-w", "1", "-o", "a.csv,sub/b.txt", "--wait", cwd=run_dir)
    assert r.returncode == 0, r.stderr
    assert "to-stdout" in r.stdout
    assert (run_dir / "a.csv").read_bytes() == b"a,b\n1,2\n"
    assert (run_dir / "sub" / "b.txt").read_bytes() == b"deep"
    assert not (run_dir / "STDOUT.txt").exists()  # shown, not fetched: it was not declared
    # Again: the files are there, so they are not overwritten, and the command says so.
    (run_dir / "a.csv").write_text("mine")
    r = cli(svc, "submit", str(script), "-w", "1", "-o", "a.csv", "--wait", cwd=run_dir)
    assert r.returncode == 1 and "not overwriting" in r.stderr and "--force" in r.stderr, r.stderr
    assert (run_dir / "a.csv").read_text() == "mine"


# -- resubmit -----------------------------------------------------------------------------------


def test_resubmit_runs_a_python_job_again_with_the_same_result(k):
    @kottajob(k, "Test", 1, block=False)
    def times_two(x):  # local: pickled by value, as a user's function is
        return 2 * x

    job = times_two(21)  # the decorator's future is a KottaJob
    assert job.get_results(k) == 42
    again = job.resubmit(k)
    assert again.job_id != job.job_id and again.info["resubmit_of"] == job.job_id
    assert again.jobname == "times_two" and again.info["status"] == "pending"
    assert again.get_results(k) == 42
    assert k.job(job.job_id)["resubmit_of"] is None
    # And once more, from the rerun: each names the job it reran.
    third = k.resubmit(again.job_id)
    assert third.info["resubmit_of"] == again.job_id and third.get_results(k) == 42


def test_resubmit_on_the_command_line_and_over_plain_http(svc, k, done, tmp_path):
    r = cli(svc, "resubmit", done.job_id, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    new_id = r.stdout.strip()
    new = KottaJob.attach(k, new_id)
    assert new.wait(k, maxwait=120) and new.status(k) == "completed", new.reason
    assert new.info["resubmit_of"] == done.job_id
    assert {o.file for o in new.outputs} == {"a.csv", "b.txt", "STDOUT.txt", "STDERR.txt"}
    assert requests.get(k.links(new_id, ["a.csv"])["a.csv"], timeout=30).content == b"a,b\n1,2\n"
    s = cli(svc, "status", new_id, cwd=tmp_path)
    assert f"rerun of   {done.job_id}" in s.stdout, s.stdout
    token = json.loads(svc.creds())["token"]
    r = requests.post(f"{svc.url}/api/v1/jobs/{done.job_id}/resubmit", timeout=30,
                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert r.status_code == 201 and r.json()["resubmit_of"] == done.job_id, r.text
    # One idempotency key makes one job, however often it is sent.
    body = {"idempotency_key": os.urandom(8).hex()}
    ids = {
        requests.post(
            f"{svc.url}/api/v1/jobs/{done.job_id}/resubmit",
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        ).json()["id"]  # fmt: skip
        for _ in range(2)
    }
    assert len(ids) == 1


def test_resubmit_of_a_running_job_or_another_users_is_refused(k, mallory, done):
    job = KottaJob(jobtype="script", script="#!/bin/bash\nsleep 60\n", walltime=2)
    job.submit(k)
    try:
        with pytest.raises(ConflictError, match="only an ended job can be resubmitted"):
            job.resubmit(k)
    finally:
        job.cancel(k)
    with pytest.raises(NotFoundError, match="no job"):
        Kotta(mallory.read_text()).resubmit(done.job_id)
    before = {j["id"] for j in k.jobs(limit=1000)}
    with pytest.raises(NotFoundError):
        Kotta(mallory.read_text()).resubmit(job.job_id)
    assert {j["id"] for j in k.jobs(limit=1000)} == before
