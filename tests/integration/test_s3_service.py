"""Real S3 and HTTP staging through the whole service, on both object stores.

Two services share this module: one on an S3 store (SeaweedFS) and one on the
local store; both have the S3 server in their environment (the server presigns
granted ``s3://`` inputs with it) and a 3 s staging read timeout. Their policy
grants the first user the data bucket and lets inputs reach 127.0.0.2 only,
where the test web server listens (the server itself, on 127.0.0.1, stays out
of reach). The documented client API runs on an S3 store in test_client_api.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from kotta_testing import DaskCluster, Service, policy_args
from kotta_testing import run_script as run
from s3server import HTTPFiles

from dask_kotta.errors import AuthenticationError, ForbiddenError, InvalidRequestError
from kotta import Kotta, KottaJob, KOut

pytestmark = pytest.mark.timeout(300)

QUEUES = Path(__file__).with_name("queues.json")
EXTRA = ["--queues", str(QUEUES), "--max-payload", "32MiB"]
BUCKET = "kotta-svc"
DATA = "kotta-svc-data"  # a bucket of "user data" outside the service's store
MiB = 1024 * 1024


def _policy(base: Path) -> list[str]:
    grants = {"tester": [f"s3://{DATA}/", "s3://kotta-no-such-bucket/"]}
    return policy_args(base, allow_input_networks=["127.0.0.2/32"], s3_grants=grants)


def _start(base: Path, s3_server, store: list[str]) -> Service:
    env = {**s3_server.env, "DASK_KOTTA_STAGING_TIMEOUT_S": "3"}
    return Service(base, workers=1, extra=[*EXTRA, *_policy(base), *store], env=env).start()


@pytest.fixture(scope="module")
def s3_service(s3_server, tmp_path_factory):
    svc = _start(tmp_path_factory.mktemp("s3-store"), s3_server, ["--store", f"s3://{BUCKET}/jobs"])
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def local_service(s3_server, tmp_path_factory):
    svc = _start(tmp_path_factory.mktemp("local-store"), s3_server, [])
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
    return Kotta(path.read_text())


def is_s3(svc) -> bool:
    return "--store" in svc.extra


@pytest.fixture(scope="module")
def data(s3_server):
    """A bucket of user data, outside the service's store."""
    s3_server.make_bucket(DATA)
    c = s3_server.client()
    c.put_object(Bucket=DATA, Key="in/small.csv", Body=b"x,y\n1,2\n")
    return c


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    (root / "small.txt").write_bytes(b"from the web\n")
    (root / "big.bin").write_bytes(os.urandom(20 * MiB + 3))
    server = HTTPFiles(root, host="127.0.0.2").start()
    yield server
    server.stop()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def outputs(job) -> dict[str, KOut]:
    return {o.file: o for o in job.outputs}


# -- outputs and KOut -----------------------------------------------------------------------


def test_outputs_are_kouts_in_the_store(svc, k, s3_server, tmp_path, monkeypatch):
    job = run(
        k, outputs="a.csv, sub/b.csv",
        script="#!/bin/bash\necho hi; echo oops >&2; mkdir -p sub; echo 1,2 > sub/b.csv; echo x > a.csv",
    )  # fmt: skip
    assert job.status(k) == "completed", job.reason
    statuses = [e["status"] for e in k.events(job.job_id)]
    assert statuses[-4:] == ["staging_inputs", "processing", "staging_outputs", "completed"]
    outs = outputs(job)
    assert set(outs) == {"STDOUT.txt", "STDERR.txt", "a.csv", "b.csv"}
    assert outs["STDOUT.txt"].read() == "hi\n" and outs["STDERR.txt"].read() == "oops\n"
    monkeypatch.chdir(tmp_path)
    assert outs["b.csv"].get_data() == "b.csv" and (tmp_path / "b.csv").read_text() == "1,2\n"
    b = outs["b.csv"]
    # url: the server's, behind the user's token, on both stores
    assert b.url == f"{svc.url}/api/v1/jobs/{job.job_id}/files/sub/b.csv"
    assert requests.get(b.url, timeout=10).status_code == 401
    if is_s3(svc):
        uid = k.user["id"]
        assert b.s3_url == f"s3://{BUCKET}/jobs/u{uid}/{job.job_id}/sub/b.csv"
        key = b.s3_url.removeprefix(f"s3://{BUCKET}/")
        assert s3_server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"1,2\n"
        # the bytes themselves come straight from S3, by a presigned URL the server redirects to
        r = k.session.get(b.url, allow_redirects=False, timeout=10)
        assert r.status_code == 307 and r.headers["location"].startswith(s3_server.endpoint)
        assert "X-Amz-Signature" in r.headers["location"]
        assert requests.get(r.headers["location"], timeout=10).content == b"1,2\n"
        # a KOut made from the s3:// URL reads through boto3 with this machine's credentials
        for name, value in s3_server.env.items():
            monkeypatch.setenv(name, value)
        assert KOut(b.s3_url).read() == "1,2\n"
    else:
        assert b.s3_url == b.url


def test_expired_presigned_url_is_renewed_through_the_server(s3_service):
    konn = s3_service.konn()
    job = run(konn, outputs="r.txt", script="#!/bin/bash\necho renewed > r.txt")
    out = outputs(job)["r.txt"]
    presigned = konn.session.get(out.url, allow_redirects=False, timeout=10).headers["location"]
    # A presigned URL whose signature no longer holds, as after expiry: S3 answers 403.
    stale = presigned.replace("X-Amz-Signature=", "X-Amz-Signature=00")
    assert requests.get(stale, timeout=10).status_code == 403
    kout = KOut(stale, konn=konn, name=out.file, store_url=out.s3_url)
    assert kout.read() == "renewed\n"


# -- inputs -----------------------------------------------------------------------------------


def test_upload_file_then_stage_it(svc, k, tmp_path):
    small = tmp_path / "notes.txt"
    small.write_text("uploaded\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MiB + 11))  # over the multipart threshold on S3
    urls = [k.upload_file(small), k.upload_file(big)]
    uid = k.user["id"]
    for url in urls:
        if is_s3(svc):
            assert url.startswith(f"s3://{BUCKET}/jobs/u{uid}/uploads/")
        else:
            assert url.startswith(f"{k.url}/api/v1/uploads/{uid}/")
    job = run(
        k, inputs=", ".join(urls), outputs="sum.txt",
        script="#!/bin/bash\nset -e\ncat notes.txt\nmd5sum big.bin | cut -d' ' -f1 > sum.txt",
    )  # fmt: skip
    assert job.status(k) == "completed", job.reason
    outs = outputs(job)
    assert outs["STDOUT.txt"].read() == "uploaded\n"
    assert outs["sum.txt"].read().strip() == md5(big.read_bytes())
    if not is_s3(svc):  # the user can read their upload back through the server
        assert KOut(urls[0], konn=k).read() == "uploaded\n"


def test_outputs_chain_into_the_next_job(svc, k):
    first = run(
        k, outputs="part.txt, more.txt",
        script="#!/bin/bash\necho chained > part.txt; echo more > more.txt",
    )  # fmt: skip
    outs = outputs(first)
    src = outs["part.txt"].s3_url
    assert src.startswith("s3://" if is_s3(svc) else k.url)
    # Its server URL works as well (KOut.url); either way, the runner fetches it from the store.
    via_url = outs["more.txt"].url
    second = run(k, inputs=f"{src}, {via_url}", script="#!/bin/bash\ncat part.txt more.txt")
    assert second.status(k) == "completed", second.reason
    assert outputs(second)["STDOUT.txt"].read() == "chained\nmore\n"


def test_another_users_files_are_refused_at_submit(svc, k, mallory, tmp_path):
    f = tmp_path / "secret.txt"
    f.write_text("mine\n")
    upload = k.upload_file(f)
    mine = run(k, outputs="out.txt", script="#!/bin/bash\necho private > out.txt")
    job_file = outputs(mine)["out.txt"].s3_url
    for url in (upload, job_file):
        with pytest.raises(ForbiddenError) as e:
            KottaJob(jobtype="script", script="cat *", inputs=url).submit(mallory)
        assert e.value.status == 403 and url in str(e.value)
        assert not isinstance(e.value, AuthenticationError)  # 401 means a bad token, not this
    if is_s3(svc):
        uid = k.user["id"]
        with pytest.raises(ForbiddenError, match="outside your own prefix"):
            KottaJob(script="true", inputs=f"s3://{BUCKET}/jobs/u{uid}/x/y.txt").submit(mallory)
        with pytest.raises(InvalidRequestError, match=r"'\.\.'"):
            KottaJob(
                script="true", inputs=f"s3://{BUCKET}/jobs/u{mallory.user['id']}/../u{uid}/y.txt"
            ).submit(mallory)
    else:  # nor can they read it back
        r = mallory.session.get(upload, timeout=10)
        assert r.status_code == 404


def test_http_inputs_follow_redirects_and_come_in_parts(k, web):
    big = (web.root / "big.bin").read_bytes()
    job = run(
        k, inputs=f"{web.url('/files/small.txt')}, {web.url('/redirect/big.bin')}",
        script="#!/bin/bash\ncat small.txt; md5sum big.bin | cut -d' ' -f1",
    )  # fmt: skip
    assert job.status(k) == "completed", job.reason
    assert outputs(job)["STDOUT.txt"].read() == f"from the web\n{md5(big)}\n"


def test_granted_s3_inputs_are_presigned_by_the_server(k, data):
    job = run(k, inputs=f"s3://{DATA}/in/small.csv", script="#!/bin/bash\ncat small.csv")
    assert job.status(k) == "completed", job.reason
    assert outputs(job)["STDOUT.txt"].read() == "x,y\n1,2\n"


@pytest.mark.parametrize(
    "url, what",
    [
        ("/status/404/gone.csv", "HTTP 404"),
        ("/status/500/broken.csv", "HTTP 500"),
        (f"s3://{DATA}/in/nope.csv", "no key 'in/nope.csv'"),
        ("s3://kotta-no-such-bucket/x.csv", "does not exist"),
    ],
)
def test_unreachable_input_fails_the_job_naming_the_url(k, web, data, url, what):
    if url.startswith("/"):
        url = web.url(url)
    t0 = time.monotonic()
    job = run(k, timeout=90, inputs=url, script="#!/bin/bash\necho never")
    assert job.status(k) == "failed"
    assert url in job.reason and what in job.reason, job.reason
    assert time.monotonic() - t0 < 60


def test_a_silent_http_server_times_out(s3_service, web):
    konn = s3_service.konn()
    url = web.url("/slow/stuck.csv")
    t0 = time.monotonic()
    job = run(konn, timeout=90, inputs=url, script="#!/bin/bash\necho never")
    assert job.status(konn) == "failed" and url in job.reason and "timed out" in job.reason
    assert time.monotonic() - t0 < 45  # 3 tries of a 3 s read timeout, not a hang


@pytest.mark.parametrize(
    "inputs, outputs, message",
    [
        ("ftp://host/file.txt", "", "unsupported scheme 'ftp'"),
        ("s3://", "", "malformed"),
        ("http:///nohost.csv", "", "malformed"),
        ("just-a-name.csv", "", "unsupported scheme"),
        ("https://host.example/", "", "names no file"),
        (
            "s3://b/one/data.csv, https://h.example/two/data.csv",
            "",
            "would both be staged as 'data.csv'",
        ),
        ("https://h.example/logs/STDOUT.txt", "", "which is the job's output_file_stdout"),
        ("", "../escape.csv", "escapes"),
        ("", "/etc/passwd", "absolute"),
    ],
)
def test_bad_urls_and_paths_are_refused_at_submit(k, inputs, outputs, message):
    n = len(k.jobs(limit=10_000))
    with pytest.raises(InvalidRequestError) as e:
        KottaJob(script="true", inputs=inputs, outputs=outputs).submit(k)
    assert message in str(e.value)
    for part in filter(None, [*inputs.split(", "), outputs]):
        assert part in str(e.value)
    assert len(k.jobs(limit=10_000)) == n  # nothing was stored


def test_absent_output_fails_but_the_others_are_kept(k):
    job = run(k, outputs="made.txt, missing.txt", script="#!/bin/bash\necho ok > made.txt")
    assert job.status(k) == "failed"
    assert "'missing.txt' was not produced" in job.reason
    outs = outputs(job)
    assert outs["made.txt"].read() == "ok\n" and "STDOUT.txt" in outs


def test_output_symlink_out_of_the_workdir_is_refused(k):
    job = run(k, outputs="leak.txt", script="#!/bin/bash\nln -s /etc/hostname leak.txt")
    assert job.status(k) == "failed" and "outside the job's directory" in job.reason
    assert "leak.txt" not in outputs(job)


# -- memory: 200 MB in and out ----------------------------------------------------------------


def _workers(svc) -> list[psutil.Process]:
    # `up` runs its LocalCluster in a child process; the workers are that one's children.
    root = psutil.Process(svc.proc.proc.pid)
    (cluster,) = [p for p in root.children() if "server.cluster" in " ".join(p.cmdline())]
    return [p for p in cluster.children() if "multiprocessing.spawn" in " ".join(p.cmdline())]


def test_200mb_staged_in_and_out_without_the_worker_growing(svc, k, data, tmp_path):
    blob = os.urandom(1024 * 1024) * 200  # 200 MiB
    big = tmp_path / "big.bin"
    big.write_bytes(blob)
    data.upload_file(str(big), DATA, "in/big.bin")
    digest = md5(blob)
    del blob
    # Warm the workers up (imports, boto3 client, thread pools) so only the transfer counts.
    warm = [
        KottaJob(jobtype="script", script="#!/bin/bash\ncp small.csv o.csv", walltime=1,
                 inputs=f"s3://{DATA}/in/small.csv", outputs="o.csv")
        for _ in range(8)
    ]  # fmt: skip
    for j in warm:
        j.submit(k)
    for j in warm:
        j.wait(k, maxwait=60)
    workers = _workers(svc)
    assert len(workers) == svc.workers
    base = {p.pid: p.memory_info().rss for p in workers}
    peak = dict(base)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for p in workers:
                try:
                    peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        job = run(
            k, timeout=240, inputs=f"s3://{DATA}/in/big.bin", outputs="copy.bin",
            script="#!/bin/bash\nset -e\ncp big.bin copy.bin",
        )  # fmt: skip
    finally:
        stop.set()
        sampler.join()
    assert job.status(k) == "completed", job.reason
    growth = max(peak[pid] - base[pid] for pid in base)
    t = job.info["timings"]
    print(f"\n{'s3' if is_s3(svc) else 'local'} store: worker RSS growth {growth / MiB:.1f} MiB; "
          f"stage in {t['stage_in']:.2f}s, stage out {t['stage_out']:.2f}s")  # fmt: skip
    assert growth < 50 * MiB, f"a worker grew by {growth / MiB:.0f} MiB staging 200 MiB"
    out = outputs(job)["copy.bin"]
    assert out.size == 200 * MiB
    dest = tmp_path / "back.bin"
    out.get_data(dest)
    h = hashlib.md5()
    with open(dest, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    assert h.hexdigest() == digest


# -- workers without any credentials (the scale-out layout) -----------------------------------


@pytest.fixture(scope="module")
def bare_cluster(s3_server, tmp_path_factory):
    """An S3-store server whose dask workers have no AWS configuration at all."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        cluster = DaskCluster(
            tmp_path_factory.mktemp("bare"), workers=1, queues=("Test=2",)
        ).start()
    finally:
        os.environ.update(saved)
    env = {**s3_server.env, "DASK_KOTTA_STAGING_TIMEOUT_S": "3"}
    base = tmp_path_factory.mktemp("bare-server")
    with cluster, Service(
        base, scheduler=cluster.address,
        extra=[*EXTRA, *_policy(base), "--store", f"s3://{BUCKET}/bare"], env=env,
    ).start() as svc:  # fmt: skip
        yield svc


def test_workers_need_no_store_credentials(bare_cluster, data, tmp_path):
    konn = bare_cluster.konn()
    f = tmp_path / "in.txt"
    f.write_text("presigned all the way\n")
    url = konn.upload_file(f)
    job = run(konn, inputs=url, outputs="o.txt", script="#!/bin/bash\ncp in.txt o.txt")
    assert job.status(konn) == "completed", job.reason
    assert outputs(job)["o.txt"].read() == "presigned all the way\n"
    # Granted data outside the store: the server presigns it; the workers need no credentials.
    job = run(konn, inputs=f"s3://{DATA}/in/small.csv", script="#!/bin/bash\ncat small.csv")
    assert job.status(konn) == "completed", job.reason
    assert outputs(job)["STDOUT.txt"].read() == "x,y\n1,2\n"


def test_a_large_dask_literal_is_stored_once_in_s3(s3_service):
    """The literal goes to S3 as an upload under the user's prefix and each job stages it."""
    from dask import compute, delayed

    from dask_kotta import KottaScheduler

    k = s3_service.konn()
    blob = os.urandom(2 * MiB)
    parts = [delayed(lambda b, i: hashlib.md5(b[i::2]).hexdigest())(blob, i) for i in (0, 1)]
    sched = KottaScheduler(k, parallelism=2)
    assert list(compute(*parts, scheduler=sched)) == [md5(blob[i::2]) for i in (0, 1)]
    assert (sched.last_run.jobs, sched.last_run.literals_uploaded) == (2, 1)
    (url,) = {u for j in sched.last_run.job_ids for u in k.job(j)["inputs"]}
    assert url.startswith(f"s3://{BUCKET}/jobs/u{k.user['id']}/uploads/")


# -- small objects in the job database (issue 16) -------------------------------------------


def test_a_small_result_is_a_row_a_large_one_an_s3_object_and_both_go_with_the_job(
    s3_service, s3_server
):
    """On S3, a python job's small payload and result are rows of the job database (no
    request to S3); a large result is an object of
    the bucket; STDOUT stays an object with its s3:// URL. Both results read back
    byte-identical, and deleting the jobs removes rows and objects."""
    import sqlalchemy as sa

    from dask_kotta.store.blobs import SMALL_MAX

    k = s3_service.konn()
    small, large = b"s" * 100, os.urandom(SMALL_MAX + 1)
    jobs = k.submit_many([(bytes, (small,)), (bytes, (large,))], walltime=1)
    assert k.gather(jobs) == [small, large]
    bucket = s3_server.client()

    def in_bucket(job_id: str) -> set[str]:
        prefix = f"jobs/u{k.user['id']}/{job_id}/"
        found = bucket.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return {o["Key"].removeprefix(prefix) for o in found}

    engine = sa.create_engine(f"sqlite:///{s3_service.data_dir / 'jobs.sqlite'}")

    def rows(job_id: str) -> set[str]:
        with engine.connect() as c:
            keys = c.execute(
                sa.text("SELECT key FROM job_objects WHERE job_id = :j"), {"j": job_id}
            ).scalars()
            return {key.split("/", 2)[2] for key in keys}

    try:
        s_id, l_id = jobs[0].job_id, jobs[1].job_id
        assert rows(s_id) == {".kotta/payload.pkl", ".kotta/result.pkl"}
        assert in_bucket(s_id) == {"STDOUT.txt", "STDERR.txt"}
        assert {".kotta/payload.pkl", ".kotta/result.pkl"} <= in_bucket(l_id)
        assert rows(l_id) == set()
        # The small one streams from the server; the large one redirects to S3.
        r = k.session.get(f"{s3_service.url}/api/v1/jobs/{l_id}/result", allow_redirects=False)
        assert r.status_code == 307 and "X-Amz-Signature" in r.headers["location"]
        (out,) = [o for o in jobs[0].outputs if o.file == "STDOUT.txt"]
        assert out.s3_url.startswith("s3://") and out.read() == ""
        k.delete([s_id, l_id])
        assert rows(s_id) == rows(l_id) == set() and in_bucket(s_id) == in_bucket(l_id) == set()
    finally:
        engine.dispose()
