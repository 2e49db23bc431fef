"""Issue 11, inputs: a user with an account cannot make the workers fetch inside the service's
network, nor read S3 data with credentials the workers hold.

The layout is the scale-out one: a dask scheduler and a worker started without
any AWS_* variable, and `dask-kotta server --scheduler` on a local store that
has the S3 server (SeaweedFS) in its environment, with a policy that lets
inputs reach 127.0.0.2 only and grants mallory one prefix of one bucket.
Mallory, a normal second user, plays the attacker.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kotta_testing import DaskCluster, Service, policy_args
from kotta_testing import run_script as run
from s3server import HTTPFiles

from dask_kotta.errors import APIError, InvalidRequestError
from kotta import Kotta, KottaJob

pytestmark = pytest.mark.timeout(300)

QUEUES = os.path.join(os.path.dirname(__file__), "queues.json")
GRANTED = "kotta-granted"  # mallory may read s3://kotta-granted/pub/ and nothing else
SECRET = "kotta-secret"  # data only the service's operator's credentials can read


@pytest.fixture(scope="module")
def s3(s3_server):
    for b in (GRANTED, SECRET):
        s3_server.make_bucket(b)
    c = s3_server.client()
    c.put_object(Bucket=GRANTED, Key="pub/a.csv", Body=b"granted,1\n")
    c.put_object(Bucket=GRANTED, Key="pub-other/b.csv", Body=b"not granted\n")
    c.put_object(Bucket=SECRET, Key="private/key.csv", Body=b"secret\n")
    return s3_server


@pytest.fixture(scope="module")
def svc(s3, tmp_path_factory):
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:  # workers with no AWS configuration at all
        cluster = DaskCluster(tmp_path_factory.mktemp("ssrf-dask"), workers=1, queues=("Test=2",))
        cluster.start()
    finally:
        os.environ.update(saved)
    base = tmp_path_factory.mktemp("ssrf-server")
    policy = policy_args(
        base,
        allow_input_networks=["127.0.0.2/32"],
        s3_grants={"mallory": [f"s3://{GRANTED}/pub/"]},
    )
    env = {**s3.env, "DASK_KOTTA_STAGING_TIMEOUT_S": "3"}
    with (
        cluster,
        Service(
            base, scheduler=cluster.address, extra=["--queues", QUEUES, *policy], env=env
        ).start() as service,
    ):
        yield service


@pytest.fixture(scope="module")
def mallory(svc, tmp_path_factory):
    path = tmp_path_factory.mktemp("mallory") / "auth.file"
    svc.token("mallory", path)
    return Kotta(path.read_text())


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """The one place inputs may come from on loopback: 127.0.0.2."""
    root = tmp_path_factory.mktemp("ssrf-web")
    (root / "ok.txt").write_bytes(b"from the allowed host\n")
    server = HTTPFiles(root, host="127.0.0.2").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def decoy(tmp_path_factory):
    """Something on 127.0.0.1 a redirect points at: it must never be contacted."""
    root = tmp_path_factory.mktemp("ssrf-decoy")
    (root / "secret.txt").write_bytes(b"internal\n")
    server = HTTPFiles(root).start()
    yield server
    server.stop()


def stdout(job) -> str:
    return {o.file: o for o in job.outputs}["STDOUT.txt"].read()


def refused(konn, inputs: str) -> APIError:
    n = len(konn.jobs(limit=10_000))
    with pytest.raises(APIError) as e:
        KottaJob(jobtype="script", script="#!/bin/bash\ncat *", inputs=inputs).submit(konn)
    assert len(konn.jobs(limit=10_000)) == n  # nothing was stored
    return e.value


# -- http(s): nothing inside the service's network --------------------------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1:{port}/api/v1/jobs.json", "loopback"),
        ("http://localhost:{port}/api/v1/health.json", "loopback"),
        ("http://2130706433:{port}/api/v1/queues.json", "127.0.0.1, a loopback"),
        ("http://0x7f.1:{port}/docs.json", "127.0.0.1, a loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/x.csv", "embedding 127.0.0.1"),
        ("http://[::1]:{port}/x.csv", "loopback"),
        ("http://169.254.169.254/latest/meta-data/iam.json", "link-local"),
        ("http://10.1.2.3/x.csv", "private"),
        ("http://0.0.0.0:{port}/x.csv", "unspecified"),
        ("http://224.0.0.1/x.csv", "multicast"),
    ],
)
def test_inputs_inside_the_network_are_refused_at_submit(svc, mallory, url, why):
    url = url.format(port=svc.port)
    e = refused(mallory, url)
    assert isinstance(e, InvalidRequestError) and e.status == 400
    assert url in str(e) and why in str(e), str(e)
    assert "allow_input_networks" in str(e)  # says how an operator allows it


def test_the_allowed_network_works(mallory, web):
    job = run(mallory, inputs=web.url("/files/ok.txt"), script="#!/bin/bash\ncat ok.txt")
    assert job.status(mallory) == "completed", job.reason
    assert stdout(job) == "from the allowed host\n"


def test_a_redirect_into_the_network_fails_the_job_at_that_hop(mallory, web, decoy):
    decoy.hits.clear()
    for target, blocked in (
        (decoy.url("/files/secret.txt"), "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "169.254.169.254"),
    ):
        url = web.url(f"/goto/secret.txt?to={target}")
        job = run(mallory, inputs=url, script="#!/bin/bash\ncat secret.txt")
        assert job.status(mallory) == "failed"
        assert web.url("/goto/secret.txt") in job.reason, job.reason
        assert f"blocked address {blocked}" in job.reason, job.reason
        assert "?to=" not in job.reason
    assert decoy.hits == []  # the refused hop was never contacted


def test_user_info_urls_are_refused_and_not_echoed(mallory, web):
    url = web.url("/files/ok.txt").replace("http://", "http://mallory:hunter2@")
    e = refused(mallory, url)
    assert e.status == 400 and "user-info" in str(e)
    assert "hunter2" not in str(e)


# -- s3://: only what the operator granted, presigned by the server ---------------------------


def test_s3_outside_the_store_without_a_grant_is_403(svc, mallory):
    for url in (
        f"s3://{SECRET}/private/key.csv",
        f"s3://{GRANTED}/pub-other/b.csv",  # the grant is pub/, not every key starting with pub
    ):
        e = refused(mallory, url)
        assert e.status == 403 and url in str(e) and "no S3 grant covers it" in str(e), str(e)
    e = refused(mallory, f"s3://{GRANTED}/pub/../pub-other/b.csv")
    assert e.status == 400 and "'..'" in str(e)
    # Grants are per user: the first user has none.
    e = refused(svc.konn(), f"s3://{GRANTED}/pub/a.csv")
    assert e.status == 403 and "'tester'" in str(e)


def test_a_granted_object_reaches_a_worker_without_credentials(svc, mallory):
    url = f"s3://{GRANTED}/pub/a.csv"
    script = (
        "#!/bin/bash\ncat a.csv\nif env | grep -q '^AWS_'; then echo has-aws; else echo no-aws; fi"
    )
    job = run(mallory, inputs=url, script=script)
    assert job.status(mallory) == "completed", job.reason
    assert stdout(job) == "granted,1\nno-aws\n"
    # A granted object that is not there fails the job naming it, and no signature leaks.
    gone = f"s3://{GRANTED}/pub/gone.csv"
    job = run(mallory, inputs=gone, script="#!/bin/bash\ncat gone.csv")
    assert job.status(mallory) == "failed" and gone in job.reason and "no key" in job.reason
    events = str(mallory.events(job.job_id))
    for text in (job.reason, events, svc.log()):
        assert "X-Amz-Signature" not in text and "X-Amz-Credential" not in text


def test_a_malformed_policy_is_a_one_line_error(tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text('{"allow_input_networks": ["10.0.0.0/33"]}')
    r = subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", "server", "--scheduler", "tcp://127.0.0.1:1",
         "--data-dir", str(tmp_path / "d"), "--policy", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr and "10.0.0.0/33" in r.stderr
    bad.write_text('{"s3_grant": {}}')
    r = subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", "up", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "DASK_KOTTA_POLICY": str(bad)},
    )  # fmt: skip
    assert r.returncode == 1 and "unknown key(s) s3_grant" in r.stderr
