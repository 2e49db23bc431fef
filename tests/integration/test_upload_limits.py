"""Uploads are held to their declared size, one upload to ``--max-upload``, each user's
bytes in the store to ``--max-storage``: on the real service, on both stores.

Two services share this module, one on the local store and one on S3 (SeaweedFS),
each with small limits (18 MiB per upload, 20 MiB per user) and a quota count that
trusts its listing of a user's objects for 1 s only, so that a job's outputs count
within the test. Each test makes its own users, so one test's bytes do not count in
another's quota.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import requests
from kotta_testing import Service
from kotta_testing import run_script as run

from dask_kotta.errors import LimitExceededError, NotFoundError, PayloadTooLargeError
from kotta import Kotta, KottaJob

pytestmark = pytest.mark.timeout(300)

QUEUES = Path(__file__).with_name("queues.json")
MiB = 1024 * 1024
BUCKET = "kotta-limits"
LIMITS = ["--max-upload", "18MiB", "--max-storage", "20MiB", "--max-payload", "32MiB"]
_names = itertools.count()


def _start(base: Path, env: dict, store: list[str]) -> Service:
    env = {**env, "DASK_KOTTA_USAGE_RECOUNT_S": "1"}
    extra = ["--queues", str(QUEUES), *LIMITS, *store]
    return Service(base, workers=1, slots=2, extra=extra, env=env).start()


@pytest.fixture(scope="module")
def local_service(tmp_path_factory):
    svc = _start(tmp_path_factory.mktemp("limits-local"), {}, [])
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def s3_service(s3_server, tmp_path_factory):
    svc = _start(tmp_path_factory.mktemp("limits-s3"), s3_server.env,
                 ["--store", f"s3://{BUCKET}/jobs"])  # fmt: skip
    yield svc
    svc.stop()


@pytest.fixture(scope="module", params=["local", "s3"])
def svc(request):
    return request.getfixturevalue(f"{request.param}_service")


def new_user(svc: Service, tmp_path: Path) -> Kotta:
    """A user of ``svc`` of their own (an empty quota)."""
    name = f"user{next(_names)}"
    return Kotta(svc.token(name, tmp_path / f"{name}.auth").read_text())


def start(k: Kotta, name: str, size: int) -> dict:
    r = k.session.post(k.url + "/api/v1/uploads", json={"name": name, "size": size}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def file_of(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: only its size matters to a refused start
    return path


def chunked(data: bytes, times: int):
    """A body with no Content-Length: the server learns its size only as it comes."""
    for _ in range(times):
        yield data


# -- an upload is held to its declared size ---------------------------------------------------


def test_a_lying_upload_through_the_server_is_refused_and_nothing_is_stored(
    local_service, tmp_path
):
    k = new_user(local_service, tmp_path)
    info = start(k, "ten.bin", 10)
    assert info["plan"]["mode"] == "server"
    put = info["plan"]["url"]
    key = put.split("/api/v1/uploads/", 1)[1]  # uid/upload id/name, as in the store
    stored = local_service.data_dir / "objects" / f"u{key.split('/')[0]}" / "uploads"
    stored = stored / key.split("/", 1)[1]

    r = k.session.put(put, data=b"x" * (MiB + 1), timeout=30)  # with its Content-Length
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "declared as 10 bytes" in detail and f"{MiB + 1} bytes" in detail, detail

    try:  # chunked: refused once the 11th byte arrives, not after the whole body
        r = k.session.put(put, data=chunked(b"y" * 65536, 64), timeout=30)
        assert r.status_code == 413 and "declared as 10 bytes" in r.json()["detail"], r.text
    except requests.ConnectionError:
        pass  # the server answered 413 and closed while the body was still being sent

    r = k.session.put(put, data=b"z" * 5, timeout=10)
    assert r.status_code == 400, r.text
    assert "declared as 10 bytes but only 5 bytes" in r.json()["detail"]

    assert not stored.exists(), "a refused body was stored"
    assert k.session.get(put, timeout=10).status_code == 404
    r = k.session.put(put, data=b"0123456789", timeout=10)  # the declared size goes through
    assert r.status_code == 200 and r.json()["size"] == 10, r.text
    assert k.session.get(put, timeout=10).content == b"0123456789"


def test_a_lying_chunked_upload_is_not_read_past_its_declared_size(local_service, tmp_path):
    """200 MiB sent as a 10-byte upload: the server stops reading at byte 11, so neither
    its memory nor its disk takes the rest."""
    import psutil

    server = psutil.Process(local_service.proc.proc.pid)
    k = new_user(local_service, tmp_path)
    info = start(k, "ten.bin", 10)
    objects = local_service.data_dir / "objects"
    disk = sum(p.stat().st_size for p in objects.rglob("*") if p.is_file())
    rss = server.memory_info().rss
    try:
        r = k.session.put(info["plan"]["url"], data=chunked(b"\0" * MiB, 200), timeout=60)
        assert r.status_code == 413 and "declared as 10 bytes" in r.json()["detail"], r.text
    except requests.ConnectionError:
        pass  # the server answered 413 and closed while the body was still being sent
    grown = (server.memory_info().rss - rss) / MiB
    assert grown < 20, f"the server grew by {grown:.0f} MiB reading a refused upload"
    now = sum(p.stat().st_size for p in objects.rglob("*") if p.is_file())
    assert now - disk < MiB, f"{now - disk} bytes were written to the store"
    assert k.session.get(info["plan"]["url"], timeout=10).status_code == 404


def test_a_put_to_an_upload_never_started_is_a_404(local_service, tmp_path):
    """An id the server never gave out has no declared size: it would escape every limit."""
    k = new_user(local_service, tmp_path)
    url = f"{k.url}/api/v1/uploads/{k.user['id']}/abcdef0123456789/free.bin"
    r = k.session.put(url, data=b"x" * MiB, timeout=30)
    assert r.status_code == 404 and "POST /api/v1/uploads first" in r.json()["detail"], r.text


def test_a_lying_presigned_put_is_refused_by_s3(s3_service, s3_server, tmp_path):
    k = new_user(s3_service, tmp_path)
    info = start(k, "ten.bin", 10)
    assert info["plan"]["mode"] == "put"
    key = info["url"].removeprefix(f"s3://{BUCKET}/")
    s3 = s3_server.client()
    for body in (b"x" * (MiB + 1), chunked(b"y" * 65536, 17), b"z" * 5):
        r = requests.put(info["plan"]["url"], data=body, timeout=30)
        assert r.status_code == 403 and "SignatureDoesNotMatch" in r.text, (r.status_code, r.text)
        with pytest.raises(s3.exceptions.ClientError, match="404|Not Found"):
            s3.head_object(Bucket=BUCKET, Key=key)
    r = requests.put(info["plan"]["url"], data=b"0123456789", timeout=30)
    assert r.status_code == 200, r.text
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"0123456789"


def test_a_lying_multipart_upload_is_refused_and_deleted(s3_service, s3_server, tmp_path):
    k = new_user(s3_service, tmp_path)
    size = 17 * MiB  # over the 16 MiB of one PUT: parts of 8, 8 and 1 MiB
    info = start(k, "parts.bin", size)
    plan = info["plan"]
    assert plan["mode"] == "multipart" and len(plan["urls"]) == 3, plan
    part = plan["part_size"]
    # A part of another size than the plan's is refused by S3 itself (its length is signed).
    r = requests.put(plan["urls"][2], data=b"x" * (2 * MiB), timeout=30)
    assert r.status_code == 403, r.text
    # Parts of the right sizes that add up to less (one left out): refused at complete.
    etags = [requests.put(url, data=b"p" * part, timeout=60).headers["ETag"]
             for url in plan["urls"][:2]]  # fmt: skip
    body = {"url": info["url"], "upload_id": plan["upload_id"], "etags": etags}
    r = k.session.post(k.url + "/api/v1/uploads/complete", json=body, timeout=60)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert f"declared as {size} bytes" in detail and f"make {2 * part} bytes" in detail, detail
    s3 = s3_server.client()
    with pytest.raises(s3.exceptions.ClientError, match="404|Not Found"):
        s3.head_object(Bucket=BUCKET, Key=info["url"].removeprefix(f"s3://{BUCKET}/"))


# -- one upload's size ------------------------------------------------------------------------


def test_an_upload_over_the_cap_is_a_413_naming_the_limit(svc, tmp_path):
    k = new_user(svc, tmp_path)
    with pytest.raises(PayloadTooLargeError) as e:
        k.upload_file(file_of(tmp_path, "big.bin", 19 * MiB))
    assert e.value.status == 413
    assert "over the limit of 18.00 MiB" in e.value.detail, e.value.detail
    assert "--max-upload" in e.value.detail, e.value.detail


# -- the storage quota ------------------------------------------------------------------------


def test_a_user_over_the_quota_gets_a_429_and_another_user_does_not(svc, tmp_path):
    alice, bob = new_user(svc, tmp_path), new_user(svc, tmp_path)
    first = alice.upload_file(file_of(tmp_path, "a.bin", 12 * MiB))
    more = file_of(tmp_path, "b.bin", 9 * MiB)
    with pytest.raises(LimitExceededError) as e:
        alice.upload_file(more)
    assert e.value.status == 429
    detail = e.value.detail
    assert "you keep 12.00 MiB" in detail and "limit of 20.00 MiB" in detail, detail
    assert "--max-storage" in detail and "konn.delete_upload" in detail, detail
    # A job whose payload would not fit is refused the same way, and nothing is stored.
    job = KottaJob.call(len, b"p" * (9 * MiB))
    with pytest.raises(LimitExceededError, match="--max-storage"):
        job.submit(alice)
    assert alice.jobs() == []
    # Another user is not affected.
    assert bob.upload_file(more)
    # Deleting frees the room at once.
    alice.delete_upload(first)
    with pytest.raises(NotFoundError):
        alice.delete_upload(first)
    assert alice.upload_file(more)


def test_a_jobs_outputs_count_against_the_quota(svc, tmp_path):
    k = new_user(svc, tmp_path)
    job = run(k, outputs="out.bin",
              script="#!/bin/bash\nhead -c 15728640 /dev/zero > out.bin")  # fmt: skip
    assert job.status(k) == "completed", job.reason
    # Written by the runner, not through a request the server counted: seen at the next
    # listing of the user's objects, at most 1 s old in this module's services.
    path = file_of(tmp_path, "six.bin", 6 * MiB)
    with pytest.raises(LimitExceededError, match=r"you keep 15\.\d\d MiB"):
        k.upload_file(path)
    k.delete(job)
    assert k.upload_file(path)


def test_uploads_started_and_not_sent_yet_count_against_the_quota(svc, tmp_path):
    """Else many uploads started at once would each pass, and all be sent later."""
    k = new_user(svc, tmp_path)
    r = k.session.post(k.url + "/api/v1/uploads", json={"name": "x.bin", "size": 17 * MiB},
                       timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    time.sleep(1.5)  # past the services' 1 s: the next check lists the user's objects again
    r = k.session.post(k.url + "/api/v1/uploads", json={"name": "y.bin", "size": 4 * MiB},
                       timeout=10)  # fmt: skip
    assert r.status_code == 429, r.text
    assert "you keep 17.00 MiB" in r.json()["detail"], r.text
