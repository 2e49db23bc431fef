"""``s3_client``: clients share one loader of botocore's models, and nothing of it travels."""

from __future__ import annotations

import botocore.loaders
import cloudpickle
import pytest

import dask_kotta.bag  # noqa: F401  (registers s3client to be pickled by value, as tasks are)
from dask_kotta import s3client
from dask_kotta.s3client import parse_s3_url, s3_client


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    # Made, never used: no request leaves the process.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_clients_share_one_loader():
    # A loader of its own parses S3's models again: ~0.12 s of CPU a client here, against
    # ~0.015 s with the shared one.
    first = s3_client(endpoint_url="http://127.0.0.1:9")
    loader = getattr(botocore.loaders, s3client._LOADER_ATTR)
    clients = [s3_client(endpoint_url="http://127.0.0.1:9") for _ in range(3)]
    assert all(c._loader is loader for c in [first, *clients])
    assert len({id(c) for c in clients}) == 3  # a new client (and session) each time
    assert clients[0].meta.endpoint_url == "http://127.0.0.1:9"
    assert clients[0].meta.region_name == "us-east-1"


def test_the_shared_loader_does_not_travel_with_the_function():
    s3_client(endpoint_url="http://127.0.0.1:9")
    sent = cloudpickle.dumps(s3_client)  # by value, as inside a partition's task
    assert len(sent) < 20_000, len(sent)
    assert b"Loader" not in sent


def test_storage_options_take_s3fs_names():
    c = s3_client({"key": "k", "secret": "s", "client_kwargs": {"region_name": "eu-west-1"}},
                  endpoint_url="http://127.0.0.1:9")  # fmt: skip
    creds = c._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("k", "s")
    assert c.meta.region_name == "eu-west-1"


def test_parse_s3_url():
    assert parse_s3_url("s3://b/a/k ey") == ("b", "a/k ey")
    with pytest.raises(ValueError, match="not an s3://BUCKET/KEY URL"):
        parse_s3_url("http://b/k")
