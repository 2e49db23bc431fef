"""The worker side of ``dask_kotta.bag``: tasks that read objects the runner staged.

A partition's task carries its URLs in ``__kotta_inputs__``; on Kotta the
runner has downloaded them into the job's working directory
(``$KOTTA_WORKDIR``) under their base names before the task runs. Under any
other scheduler there is no staged file and the task downloads the object
itself (boto3's standard chain for ``s3://``), so every scheduler gives the
same result.

Standard library only (boto3 and requests on demand), and pickled by value
with the two modules it uses (:mod:`dask_kotta.urls` for the name a URL is
staged under, :mod:`dask_kotta.s3client` for the S3 client), so a partition
does not import dask or dask-kotta on the worker. For the same reason
nothing here or there keeps state at module level: a global travels inside
every task, and a live client (sockets, an ``SSLContext``) cannot be pickled.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..s3client import s3_client
from ..urls import staged_name

COMPRESSION_BY_SUFFIX = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
OPENERS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}


def _staged(url: str) -> Path | None:
    """Where the runner staged ``url`` for the running Kotta job, if it did."""
    workdir = os.environ.get("KOTTA_WORKDIR")
    if not workdir:
        return None
    path = Path(workdir) / staged_name(url)
    return path if path.is_file() else None


class Fetcher:
    """Downloads objects for one partition task, sharing one S3 client among its files.

    The client is made on first need and dies with the task. It must not be
    cached at module level: this module is pickled by value, so its globals
    travel inside every task, and a live client (sockets, an ``SSLContext``)
    cannot be pickled.
    """

    def __init__(self) -> None:
        self._s3: Any = None

    def fetch(self, url: str, dest: Path) -> None:
        p = urlparse(url)
        if p.scheme == "s3":
            if self._s3 is None:
                self._s3 = s3_client()
            self._s3.download_file(p.netloc, p.path.lstrip("/"), str(dest))
            return
        import requests

        with requests.get(url, stream=True, timeout=(10, 300)) as r:
            r.raise_for_status()
            with open(dest, "wb") as f:
                for chunk in r.iter_content(1024 * 1024):
                    f.write(chunk)

    def version(self, url: str) -> str:
        """What tells one version of an ``s3://`` object from another (ETag, size); ``""`` else."""
        p = urlparse(url)
        if p.scheme != "s3":
            return ""
        if self._s3 is None:
            self._s3 = s3_client()
        head = self._s3.head_object(Bucket=p.netloc, Key=p.path.lstrip("/"))
        return f"{head.get('ETag', '')} {head.get('ContentLength', '')}"

    def local_path(self, url: str) -> str:
        """A local file holding ``url``: the staged one, or a download into a temp cache."""
        staged = _staged(url)
        if staged is not None:
            return str(staged)
        cache = Path(tempfile.gettempdir()) / "dask-kotta-bag"
        # Keyed by the object's version too: an object rewritten under the same key must
        # not be answered from an earlier download.
        cache = cache / hashlib.sha1(f"{url} {self.version(url)}".encode()).hexdigest()
        cache.mkdir(parents=True, exist_ok=True)
        dest = cache / staged_name(url)
        if not dest.is_file():
            tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
            self.fetch(url, tmp)
            os.replace(tmp, dest)
        return str(dest)


def _split(text: str, delimiter: str) -> Iterator[str]:
    # Each piece keeps its delimiter, as dask.bag.read_text's lines keep their line ending.
    start = 0
    while True:
        i = text.find(delimiter, start)
        if i == -1:
            if start < len(text):
                yield text[start:]
            return
        yield text[start : i + len(delimiter)]
        start = i + len(delimiter)


class ReadTextPartition:
    """The task that reads one partition of ``read_text``: its URLs ride in ``__kotta_inputs__``."""

    def __init__(self, urls: list[str], encoding: str, errors: str, compression: str | None,
                 linedelimiter: str | None, include_path: bool):  # fmt: skip
        self.__kotta_inputs__ = tuple(urls)
        self.encoding, self.errors = encoding, errors
        self.compression, self.linedelimiter = compression, linedelimiter
        self.include_path = include_path

    def __call__(self) -> list:
        out: list = []
        fetcher = Fetcher()
        for url in self.__kotta_inputs__:
            comp = self.compression
            if comp == "infer":
                comp = COMPRESSION_BY_SUFFIX.get(os.path.splitext(url)[1])
            opener = OPENERS[comp] if comp else open
            with opener(fetcher.local_path(url), "rb") as raw:
                # As dask.bag.read_text: universal newlines, unless a delimiter is given.
                newline = "" if self.linedelimiter else None
                text = io.TextIOWrapper(
                    raw, encoding=self.encoding, errors=self.errors, newline=newline
                )
                if self.linedelimiter:
                    lines = list(_split(text.read(), self.linedelimiter))
                else:
                    lines = list(text)
            if self.include_path:
                out.extend((line, url) for line in lines)
            else:
                out.extend(lines)
        return out

    def __repr__(self) -> str:
        return f"ReadTextPartition({len(self.__kotta_inputs__)} files)"


class StagePartition:
    """The task of one ``from_urls`` partition: ``(url, local path)`` pairs."""

    def __init__(self, urls: list[str]):
        self.__kotta_inputs__ = tuple(urls)

    def __call__(self) -> list[tuple[str, str]]:
        fetcher = Fetcher()
        return [(url, fetcher.local_path(url)) for url in self.__kotta_inputs__]

    def __repr__(self) -> str:
        return f"StagePartition({len(self.__kotta_inputs__)} files)"
