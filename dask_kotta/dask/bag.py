"""Bags over object storage whose partitions are staged on the worker, never on the client.

>>> import dask_kotta.bag as kb
>>> lines = kb.read_text('s3://bucket/logs/*.txt', files_per_partition=20)
>>> lines.str.split().flatten().frequencies().compute(scheduler=KottaScheduler(konn))  # doctest: +SKIP

The client only *lists* keys (boto3's ``list_objects_v2``, standard
credentials chain, e.g. ``AWS_ENDPOINT_URL_S3``). Each partition's task
carries its URLs in its function (``__kotta_inputs__``), which survives every
graph optimisation, and ``KottaScheduler`` puts them in the ``inputs=`` of
the job that runs it: the runner downloads them into the job's working
directory before the task starts (by URLs the server presigned, so the user
needs an S3 grant for the bucket in the server's policy), and the task reads
them from there.

Under any other scheduler (``'sync'``, threads, distributed) the same task
finds no staged file and downloads the object itself, so results agree.
Inputs are staged under their base names: two URLs with the same base name
never share a partition (or a job).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import cloudpickle
import dask
import dask.bag as db
from dask._task_spec import Task
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from .. import s3client
from .. import urls as url_names
from ..errors import KottaError
from ..s3client import s3_client
from ..urls import staged_name
from . import staged
from .staged import OPENERS, ReadTextPartition, StagePartition

# Partition tasks run without dask-kotta installed on the worker (see staged.py), so that
# module and the two it uses travel by value.
cloudpickle.register_pickle_by_value(staged)
cloudpickle.register_pickle_by_value(url_names)
cloudpickle.register_pickle_by_value(s3client)


class NoFilesError(KottaError, FileNotFoundError):
    """A path or pattern matched no object."""


# -- listing (client side) ------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern:
    # '*' and '?' stay within one path segment, '**' crosses segments, as in fsspec's glob.
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape("["))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i : j + 1])[4:-3])
                i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def list_urls(
    urlpath: str | Sequence[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """The sorted object URLs a path, a glob (``*``, ``?``, ``[ab]``, ``**``) or a list names.

    An ``s3://bucket/prefix/`` ending in a slash names every object under it.
    ``http(s)://`` URLs are taken as they are. Nothing is downloaded.
    """
    return [url for url, _ in list_objects(urlpath, storage_options, sizes=False)]


def list_objects(
    urlpath: str | Sequence[str],
    storage_options: dict[str, Any] | None = None,
    sizes: bool = True,
    client: Any = None,
) -> list[tuple[str, int | None]]:
    """``(url, size)`` of each object :func:`list_urls` names.

    A glob's sizes come with the listing; a key named exactly costs a HEAD
    when ``sizes`` (a missing one is then a :class:`NoFilesError`), else its
    size is None, as is an ``http(s)://`` URL's. ``client``: a boto3 S3 client
    to use (made from ``storage_options`` on first need otherwise).
    """
    paths = [urlpath] if isinstance(urlpath, str) else list(urlpath)
    out: list[tuple[str, int | None]] = []
    for path in paths:
        p = urlparse(path)
        if p.scheme in ("http", "https"):
            out.append((path, None))
            continue
        if p.scheme != "s3" or not p.netloc:
            raise ValueError(f"{path!r}: expected s3://bucket/key (or an http(s):// URL)")
        bucket, key = p.netloc, p.path.lstrip("/")
        wild = re.search(r"[*?\[]", key)
        if not wild and key and not key.endswith("/"):
            size = None
            if sizes:
                client = client or s3_client(storage_options)
                size = _head_size(client, bucket, key, path)
            out.append((f"s3://{bucket}/{key}", size))
            continue
        client = client or s3_client(storage_options)
        prefix = key[: wild.start()] if wild else key
        regex = _glob_regex(key) if wild else None
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if k.endswith("/"):
                    continue
                if regex is None or regex.match(k):
                    found.append((f"s3://{bucket}/{k}", obj.get("Size")))
        if not found:
            raise NoFilesError(f"{path} resolved to no files")
        out.extend(sorted(found))
    return out


def _head_size(client: Any, bucket: str, key: str, path: str) -> int:
    from botocore.exceptions import ClientError

    try:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise NoFilesError(f"{path} resolved to no files (no such key)") from None
        raise


def _partitions(urls: list[str], per_partition: int) -> list[list[str]]:
    """Groups of at most ``per_partition`` URLs, in order, no two with the same base name."""
    if per_partition < 1:
        raise ValueError(f"files_per_partition must be at least 1, got {per_partition}")
    parts: list[list[str]] = []
    current: list[str] = []
    names: set[str] = set()
    for url in urls:
        name = staged_name(url)
        if len(current) >= per_partition or name in names:
            parts.append(current)
            current, names = [], set()
        current.append(url)
        names.add(name)
    if current:
        parts.append(current)
    return parts


# -- building bags --------------------------------------------------------------------------


def _bag(name: str, calls: list[Any]) -> db.Bag:
    dsk = {(name, i): Task((name, i), call) for i, call in enumerate(calls)}
    # Annotations in force where the bag is made apply to its partitions, as for any layer.
    layer_annotations = dask.get_annotations() or None
    graph = HighLevelGraph(
        {name: MaterializedLayer(dsk, annotations=layer_annotations)}, {name: set()}
    )
    return db.Bag(graph, name, len(calls))


def read_text(
    urlpath: str | Sequence[str],
    blocksize: int | str | None = None,
    compression: str | None = "infer",
    encoding: str = "utf-8",
    errors: str = "strict",
    linedelimiter: str | None = None,
    collection: bool = True,
    storage_options: dict[str, Any] | None = None,
    files_per_partition: int | None = None,
    include_path: bool = False,
) -> db.Bag | list:
    """Lines of text objects as a bag, like ``dask.bag.read_text``, staged on the worker.

    ``urlpath``: an ``s3://bucket/prefix/*.txt`` glob, a path, or a list of
    them (``http(s)://`` URLs too). ``files_per_partition`` (default 1)
    objects make one partition; lines keep their line ending, as in
    ``dask.bag.read_text``. ``compression``: ``'infer'`` (from the extension:
    ``.gz``, ``.bz2``, ``.xz``), ``None`` or one of those names.
    ``include_path=True`` gives ``(line, url)`` pairs. ``collection=False``
    gives one ``Delayed`` per partition instead of a bag. ``storage_options``
    (``key``, ``secret``, ``endpoint_url``, ``client_kwargs``) only affect the
    client's listing: on Kotta the server presigns each object for the
    worker, so the user needs an S3 grant for the bucket in the server's
    policy (README, "What inputs may name").
    ``blocksize`` is not supported: objects are staged whole.
    """
    if blocksize is not None:
        raise NotImplementedError(
            "blocksize is not supported by dask_kotta.bag.read_text: objects are staged whole; "
            "use files_per_partition"
        )
    if compression not in (None, "infer", *OPENERS):
        raise ValueError(
            f"compression {compression!r} is not one of None, 'infer', {', '.join(OPENERS)}"
        )
    urls = list_urls(urlpath, storage_options)
    parts = _partitions(urls, files_per_partition or 1)
    calls = [
        ReadTextPartition(p, encoding, errors, compression, linedelimiter, include_path)
        for p in parts
    ]
    name = "read-text-kotta-" + tokenize(
        urls, encoding, errors, compression, linedelimiter, include_path, files_per_partition
    )
    bag = _bag(name, calls)
    return bag if collection else bag.to_delayed(optimize_graph=False)


def from_urls(
    urls: str | Sequence[str],
    files_per_partition: int = 1,
    storage_options: dict[str, Any] | None = None,
) -> db.Bag:
    """A bag of ``(url, local path)`` pairs for binary objects, staged on the worker.

    ``urls`` may be globs, as for :func:`read_text`. The local path is a file
    in the running job's working directory: open it in the task that receives
    the pair (a ``map`` right after, which runs in the same job), not later.
    """
    found = list_urls(urls, storage_options)
    parts = _partitions(found, files_per_partition)
    name = "from-urls-kotta-" + tokenize(found, files_per_partition)
    return _bag(name, [StagePartition(p) for p in parts])
