"""The S3 object store and the runner's S3 staging, against a real SeaweedFS (no Kotta service)."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import requests
from kotta_testing import free_port
from s3server import apply_env, restore_env

from dask_kotta.errors import ConfigError, NotFoundError, UnsafePathError
from dask_kotta.runner import stage_in
from dask_kotta.runner.stage_in import stage_inputs
from dask_kotta.store.objects import LocalObjectStore, open_store
from dask_kotta.store.s3 import MULTIPART_THRESHOLD, S3ObjectStore
from dask_kotta.transfer.common import StagingError, http_session
from dask_kotta.transfer.upload import send_file
from dask_kotta.urls import staged_name

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def s3env(s3_server):
    """boto3's standard chain in this process points at the test server."""
    old = apply_env(s3_server.env)
    yield s3_server
    restore_env(old)


@pytest.fixture(scope="module")
def store(s3env):
    return open_store("s3://kotta-unit/some/prefix", "/nonexistent")


@pytest.fixture(scope="module")
def data_bucket(s3env):
    c = s3env.client()
    s3env.make_bucket("kotta-data")
    c.put_object(Bucket="kotta-data", Key="small/a.csv", Body=b"a,b\n1,2\n")
    # Its own client: on SeaweedFS, a connection that carried an empty PUT stalls the next
    # large PUT with 'Expect: 100-continue' (botocore's) for a full read timeout.
    s3env.client().put_object(Bucket="kotta-data", Key="empty.bin", Body=b"")
    return c


def test_open_store_makes_the_bucket_and_checks_it_can_write(store, s3env):
    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.prefix) == ("kotta-unit", "some/prefix")
    c = s3env.client()
    c.head_bucket(Bucket="kotta-unit")
    assert c.get_object(Bucket="kotta-unit", Key="some/prefix/.kotta/store.json")["Body"].read()
    assert store.endpoint == s3env.endpoint  # from AWS_ENDPOINT_URL_S3, boto3's own chain
    assert isinstance(open_store(None, "/tmp/kotta-unit-local"), LocalObjectStore)


def test_put_get_size_and_keys_under_the_prefix(store, s3env):
    assert store.put_bytes("u1/j1/a.txt", b"alpha") == 5
    import io

    assert store.put_stream("u1/j1/sub/b.txt", io.BytesIO(b"beta" * 1000)) == 4000
    assert store.get_bytes("u1/j1/a.txt") == b"alpha"
    with store.open_read("u1/j1/sub/b.txt") as f:
        assert f.read() == b"beta" * 1000
    assert store.size("u1/j1/a.txt") == 5 and store.size("u1/j1/nope") is None
    with pytest.raises(NotFoundError):
        store.open_read("u1/j1/nope")
    raw = s3env.client().get_object(Bucket="kotta-unit", Key="some/prefix/u1/j1/a.txt")
    assert raw["Body"].read() == b"alpha"
    assert store.store_url("u1/j1/a.txt") == "s3://kotta-unit/some/prefix/u1/j1/a.txt"
    for bad in ("../x", "/abs", "u1/../../x", ""):
        with pytest.raises(UnsafePathError):
            store.put_bytes(bad, b"x")


def test_presigned_get_works_without_credentials_and_is_reused(store):
    store.put_bytes("u1/j2/p.txt", b"presigned")
    url = store.presigned_get("u1/j2/p.txt")
    assert "X-Amz-Signature" in url
    assert requests.get(url, timeout=10).content == b"presigned"
    assert store.presigned_get("u1/j2/p.txt") == url  # cached: job views stay cheap and stable
    bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert requests.get(bad, timeout=10).status_code == 403


def test_key_for_url_only_inside_our_prefix(store):
    assert store.key_for_url("s3://kotta-unit/some/prefix/u1/x.csv") == "u1/x.csv"
    assert store.key_for_url("s3://KOTTA-UNIT/some/prefix/u1/x.csv") == "u1/x.csv"
    assert store.key_for_url("s3://kotta-unit/other/u1/x.csv") is None
    assert store.key_for_url("s3://other-bucket/some/prefix/u1/x.csv") is None
    assert store.key_for_url("https://kotta-unit/some/prefix/u1/x.csv") is None
    for trick in (
        "s3://kotta-unit/some/prefix/u1/../u2/x.csv",
        "s3://kotta-unit/some/prefix//u2/x.csv",
        "s3://kotta-unit/some/./prefix/u2/x.csv",
    ):
        with pytest.raises(UnsafePathError):
            store.key_for_url(trick)


@pytest.mark.parametrize("size", [0, 10_000, MULTIPART_THRESHOLD + 5_000_000])
def test_upload_plans_round_trip_without_our_credentials(store, tmp_path, size):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size))
    key = f"u1/j3/out-{size}.bin"
    plan = store.upload_plan(key, size)
    assert plan["mode"] == ("multipart" if size > MULTIPART_THRESHOLD else "put")
    completed = []

    def complete(upload_id, etags):
        completed.append(len(etags))
        store.complete_upload(key, upload_id, etags)

    with http_session() as s:
        send_file(
            src, size, plan, what="test", session=s, server_put=None, complete=complete, abort=None
        )
    assert store.size(key) == size
    assert hashlib.md5(store.get_bytes(key)).digest() == hashlib.md5(src.read_bytes()).digest()
    if size > MULTIPART_THRESHOLD:
        assert completed == [len(plan["urls"])] and len(plan["urls"]) >= 2


def test_a_presigned_put_url_writes_only_its_own_key(store):
    plan = store.upload_plan("u1/j4/mine.txt", 4)
    other = plan["url"].replace("/u1/j4/mine.txt", "/u2/j4/theirs.txt")
    assert requests.put(other, data=b"evil", timeout=10).status_code == 403
    assert store.size("u2/j4/theirs.txt") is None


def test_delete_prefix(store):
    for name in ("a", "b/c"):
        store.put_bytes(f"u9/jdel/{name}", b"x")
    store.put_bytes("u9/jkeep/a", b"x")
    store.delete_prefix("u9/jdel")
    assert store.size("u9/jdel/a") is None and store.size("u9/jdel/b/c") is None
    assert store.size("u9/jkeep/a") == 1


def test_unfinished_multipart_uploads_are_aborted_once_stale(store):
    plan = store.upload_plan("u1/stale/big.bin", 40 * 1024 * 1024)
    assert plan["mode"] == "multipart"

    def open_uploads():
        listed = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        return {u["UploadId"] for u in listed.get("Uploads", [])}

    assert plan["upload_id"] in open_uploads()
    assert store.abort_stale_uploads(older_than_s=3600) == 0  # begun just now: kept
    assert plan["upload_id"] in open_uploads()
    assert store.abort_stale_uploads(older_than_s=0) >= 1
    assert plan["upload_id"] not in open_uploads()


def test_bucket_that_may_not_be_created_is_a_clear_error(s3env):
    with pytest.raises(ConfigError, match="cannot be created.*not a valid bucket name"):
        S3ObjectStore.from_url("s3://ab/prefix")
    with pytest.raises(ConfigError, match="does not exist"):
        S3ObjectStore("kotta-never-made", "p", create=False)


def test_malformed_store_urls(s3env):
    for bad in ("s3://", "s3:///prefix", "s3://bucket/p?x=1", "s3://bucket/../x"):
        with pytest.raises(ConfigError):
            S3ObjectStore.from_url(bad)


def test_endpoint_down_is_a_clear_error_naming_it(s3env, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        S3ObjectStore.from_url("s3://kotta-unit/prefix")
    assert "cannot reach the S3 endpoint" in str(e.value) and dead in str(e.value)
    assert time.monotonic() - t0 < 30


# -- the runner's s3:// inputs: presigned by the server, never signed by the worker ------------


def granted(url: str, client=None) -> dict:
    """A granted s3:// input as the server's plan hands it over: a presigned GET URL."""
    from dask_kotta.s3client import parse_s3_url, s3_client
    from dask_kotta.store.presign import presigner

    client = client or s3_client()
    bucket, key = parse_s3_url(url)
    return {
        "url": url, "name": staged_name(url),
        "fetch": presigner(client).url("GET", bucket, key, 600),
        "s3": {"bucket": bucket, "key": key, "endpoint": client.meta.endpoint_url},
    }  # fmt: skip


def test_granted_s3_small_empty_and_large_in_parts(data_bucket, tmp_path):
    big = os.urandom(2 * stage_in.PART_SIZE + 777)
    data_bucket.put_object(Bucket="kotta-data", Key="big/b.bin", Body=big)
    urls = ["s3://kotta-data/small/a.csv", "s3://kotta-data/empty.bin", "s3://kotta-data/big/b.bin"]
    sizes = stage_inputs([granted(u) for u in urls], tmp_path)
    assert sizes == {"a.csv": 8, "empty.bin": 0, "b.bin": len(big)}
    assert (tmp_path / "a.csv").read_bytes() == b"a,b\n1,2\n"
    assert (tmp_path / "b.bin").read_bytes() == big


def test_the_runner_signs_nothing_itself(data_bucket, tmp_path):
    # A bare s3:// URL (no presigned URL from the server) is refused, credentials or not.
    with pytest.raises(StagingError) as e:
        stage_inputs(["s3://kotta-data/small/a.csv"], tmp_path)
    assert "s3://kotta-data/small/a.csv" in str(e.value) and "presigned" in str(e.value)
    assert not (tmp_path / "a.csv").exists()


def test_missing_bucket_or_key_fails_naming_the_url(data_bucket, tmp_path):
    with pytest.raises(StagingError) as e:
        stage_inputs([granted("s3://kotta-no-such-bucket/x.csv")], tmp_path)
    assert "s3://kotta-no-such-bucket/x.csv" in str(e.value) and "does not exist" in str(e.value)
    with pytest.raises(StagingError) as e:
        stage_inputs([granted("s3://kotta-data/small/nope.csv")], tmp_path)
    assert "s3://kotta-data/small/nope.csv" in str(e.value) and "no key 'small/nope.csv'" in str(
        e.value
    )
    assert "Signature" not in str(e.value)


def test_s3_endpoint_down_while_staging_fails_naming_the_url(data_bucket, tmp_path, monkeypatch):
    from dask_kotta.s3client import s3_client

    dead = s3_client(endpoint_url=f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(StagingError) as e:
        stage_inputs([granted("s3://kotta-data/small/a.csv", dead)], tmp_path)
    assert "s3://kotta-data/small/a.csv" in str(e.value) and "cannot reach the S3 endpoint" in str(
        e.value
    )
    assert "Signature" not in str(e.value)
    assert time.monotonic() - t0 < 60


def test_fast_presigner_matches_botocore_and_the_server_accepts_it(store, s3env):
    from dask_kotta.store.presign import Presigner

    p = Presigner(store.client)
    store.put_bytes("u1/sig/a.txt", b"first")
    store.put_bytes("u1/sig/b.txt", b"second")
    store.put_bytes("u1/sig/odd name+.txt", b"odd")
    k = "some/prefix/u1/sig/"
    p.url("GET", "kotta-unit", k + "a.txt", 600)  # botocore's, which fixes the shape
    assert p.shapes[("kotta-unit", "GET")] is not None  # our signature equalled botocore's
    for name, body in (("b.txt", b"second"), ("odd name+.txt", b"odd")):
        url = p.url("GET", "kotta-unit", k + name, 600)
        assert requests.get(url, timeout=10).content == body  # SeaweedFS checks signatures here
    put = p.url("PUT", "kotta-unit", k + "c.txt", 600)
    put = p.url("PUT", "kotta-unit", k + "d.txt", 600)  # the second one is ours
    assert requests.put(put, data=b"fourth", timeout=10).status_code == 200
    assert store.get_bytes("u1/sig/d.txt") == b"fourth"
    forged = p.url("GET", "kotta-unit", k + "a.txt", 600).replace("/sig/a.txt", "/sig/b.txt")
    assert requests.get(forged, timeout=10).status_code == 403


def test_a_presigned_put_that_signs_its_length_takes_no_other_size(store, s3env):
    """An upload plan's URL signs its Content-Length: the fast signature (the second URL)
    must equal botocore's, and S3 must refuse a body of another size with it."""
    from dask_kotta.store.presign import Presigner

    p = Presigner(store.client)
    k = "some/prefix/u1/len/"
    p.url("PUT", "kotta-unit", k + "a.txt", 600, length=4)  # botocore's, which fixes the shape
    assert p.shapes[("kotta-unit", "PUT+length")] is not None  # ours equalled botocore's
    put = p.url("PUT", "kotta-unit", k + "b.txt", 600, length=4)
    assert "content-length%3Bhost" in put
    for body in (b"12345", b"123", (c for c in (b"12", b"34"))):  # longer, shorter, chunked
        assert requests.put(put, data=body, timeout=10).status_code == 403
        assert store.size("u1/len/b.txt") is None
    assert requests.put(put, data=b"1234", timeout=10).status_code == 200
    assert store.get_bytes("u1/len/b.txt") == b"1234"
