"""``KOut``: a handle on one output of a job."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import requests

from .. import defaults as d
from ..errors import APIError, KottaError, NotFoundError, ServerUnavailableError
from ..s3client import parse_s3_url, s3_client
from ..urls import scrub, shown_url, staged_name
from .retry import RETRY_STATUSES, parse_retry_after

if TYPE_CHECKING:  # annotations only: at run time the client imports connection -> job -> kout
    from .connection import Kotta

#: Size of each read from the network and write to disk.
CHUNK = 1024 * 1024


class KOut:
    """An output of a Kotta job, or any URL.

    ``KOut(url)`` works with any ``http(s)://`` or ``s3://`` URL; outputs of
    your jobs (``job.outputs``) also carry your connection, so URLs served by
    the Kotta server are fetched with your token.
    """

    def __init__(self, filestring: str, *, konn: Kotta | None = None, name: str | None = None,
                 store_url: str | None = None, size: int | None = None):  # fmt: skip
        if not isinstance(filestring, str) or not filestring:
            raise KottaError(f"KOut needs a URL string, got {filestring!r}")
        self._url = filestring
        self._konn = konn
        self._name = name
        self._store_url = store_url
        self.size = size

    def __repr__(self) -> str:
        try:
            file = self.file
        except ValueError:  # a URL that names no file still has a repr
            file = "-"
        return f"<KOut {file} {self._url}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KOut) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    @property
    def url(self) -> str:
        """The URL string."""
        return self._url

    @property
    def s3_url(self) -> str:
        """The ``s3://`` URL of the object on an S3 store; on a local store, its server URL."""
        if self._store_url:
            return self._store_url
        return self._url

    @property
    def file(self) -> str:
        """The base file name of the resource: for a URL, the name a job's input is staged under.

        Raises ``NoFileNameError`` (a ``ValueError``) for a URL whose path ends
        in no name, ``.`` or ``..``.
        """
        if self._name:
            return posixpath.basename(self._name)
        return staged_name(self._url)

    def _chunks(self) -> Iterator[bytes]:
        """The object's bytes, streamed in chunks from wherever ``url`` points."""
        scheme = urlparse(self._url).scheme
        if scheme == "s3":
            yield from _s3_chunks(self._url)
            return
        if scheme not in ("http", "https"):
            raise KottaError(
                f"cannot fetch {self._url!r}: only http(s):// and s3:// URLs can be read"
            )
        r = self._get(self._url)
        if r.status_code in (400, 403) and self._konn is not None and self._store_url:
            # A presigned URL that expired: ask the server, with our token, for a fresh one.
            r.close()
            r = self._get(f"{self._konn.url}/api/v1/objects", params={"url": self._store_url})
        if r.status_code == 404:
            r.close()
            raise NotFoundError(f"{shown_url(self._url)} was not found")
        if r.status_code >= 400:
            r.close()
            raise KottaError(
                f"cannot fetch {shown_url(self._url)}: HTTP {r.status_code} {r.reason}"
            )
        with r:
            try:
                yield from r.iter_content(CHUNK)
            except requests.RequestException as e:
                raise ServerUnavailableError(
                    f"fetching {shown_url(self._url)} broke off: {scrub(e)}"
                ) from None

    def _get(self, url: str, **kw) -> requests.Response:
        konn = self._konn
        # The user's token goes only to the Kotta server, never to S3 or another host.
        if konn is None or not url.startswith(konn.url + "/"):
            return _fetch(requests.get, url, kw)

        def attempt() -> requests.Response:
            r = _fetch(konn.session.get, url, kw)
            if r.status_code in RETRY_STATUSES:
                r.close()
                err = APIError(f"cannot fetch {shown_url(url)}: {r.reason}", r.status_code)
                err.retry_after = parse_retry_after(r.headers.get("Retry-After"))
                raise err
            return r

        # A GET from the Kotta server rides through its restart, as the connection's reads do.
        return konn.retry.run(attempt)

    def get_data(self, path: str | Path | None = None) -> str:
        """Download the object to ``self.file`` (or ``path``), streaming; returns the path."""
        dest = Path(path) if path is not None else Path(self.file)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with open(tmp, "wb") as f:
                for chunk in self._chunks():
                    f.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)
        return str(dest)

    def read(self) -> str:
        """Opens the remote URL, reads the data and returns the UTF-8 decoded string."""
        return b"".join(self._chunks()).decode("utf-8")


def _fetch(getter, url: str, kw: dict) -> requests.Response:
    try:
        return getter(url, stream=True, timeout=(d.CONNECT_TIMEOUT_S, d.READ_TIMEOUT_S), **kw)
    except requests.RequestException as e:
        raise ServerUnavailableError(f"cannot fetch {shown_url(url)}: {scrub(e)}") from None


def _s3_chunks(url: str) -> Iterator[bytes]:
    """An ``s3://`` object's bytes through boto3, with this machine's own AWS configuration."""
    import botocore.exceptions as bx  # with boto3, only when an s3:// URL is read

    bucket, key = parse_s3_url(url)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except bx.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", "?"))
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise NotFoundError(f"{url} was not found ({code})") from None
        raise KottaError(f"cannot read {url}: S3 error {code}: {e}") from None
    except bx.BotoCoreError as e:
        raise ServerUnavailableError(f"cannot read {url}: {e}") from None
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()
