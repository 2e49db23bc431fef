"""The one way dask-kotta makes a boto3 S3 client, and reads an ``s3://`` URL.

The server's object store, ``KOut`` reading an ``s3://`` URL, and
``dask_kotta.bag`` listing and (off Kotta) downloading objects all use
:func:`s3_client`: boto3's standard chain for the endpoint and credentials
(``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, instance
roles), bounded timeouts and a few retries.

Standard library at import (boto3 on demand) and nothing mutable at module
level: it is pickled by value into Dask tasks (see ``dask/staged.py``), so a
client made here must never be cached in a global.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

#: s3fs's names for credentials (as dask users pass them in ``storage_options``) and boto3's.
_S3FS_NAMES = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "token": "aws_session_token",
}


def s3_client(storage_options: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """A new boto3 S3 client from boto3's standard chain, with bounded timeouts and retries.

    Timeouts are bounded so an endpoint that went away fails a call in
    seconds instead of hanging it; ``standard`` retries cover a brief blip.
    ``storage_options`` takes s3fs-style names (``key``, ``secret``,
    ``token``, ``endpoint_url``, ``client_kwargs``); ``kwargs`` go to
    ``boto3``'s ``client`` as they are (e.g. ``endpoint_url=``).
    """
    import boto3
    from botocore.config import Config

    opts = dict(storage_options or {})
    args: dict[str, Any] = {}
    for ours, theirs in _S3FS_NAMES.items():
        if ours in opts:
            args[theirs] = opts.pop(ours)
    args.update(opts.pop("client_kwargs", None) or {})
    args.update(opts)
    args.update(kwargs)
    args.setdefault(
        "config",
        Config(
            signature_version="s3v4",
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
        ),
    )
    # A session per client: boto3's default session is not safe to share between threads.
    return boto3.session.Session(botocore_session=_botocore_session()).client("s3", **args)


def _botocore_session() -> Any:
    """A new botocore session reading botocore's models through this process's one loader.

    A session loads S3's models (megabytes of JSON) into a loader of its own: ~0.12 s of
    CPU for every client, where a shared loader's cached models take ~0.015 s. The loader
    only caches what it read from botocore's data files, so sessions in any thread can
    share it. It is kept on ``botocore.loaders``, not here: this module travels by value
    into Dask tasks, its globals with it.
    """
    import botocore.loaders
    import botocore.session

    loader = getattr(botocore.loaders, _LOADER_ATTR, None)
    if loader is None:
        loader = botocore.loaders.create_loader()
        setattr(botocore.loaders, _LOADER_ATTR, loader)
    session = botocore.session.get_session()
    session.register_component("data_loader", loader)
    return session


#: The attribute of ``botocore.loaders`` that holds the loader :func:`_botocore_session` shares.
_LOADER_ATTR = "_dask_kotta_shared_loader"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key is kept byte for byte."""
    p = urlparse(url)
    if p.scheme != "s3" or not p.netloc:
        raise ValueError(f"{url!r} is not an s3://BUCKET/KEY URL")
    return p.netloc, p.path[1:] if p.path.startswith("/") else p.path
