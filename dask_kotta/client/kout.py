"""``KOut``: a handle on one output of a job."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import requests

from .. import defaults as d
from ..errors import KottaError, NotFoundError, ServerUnavailableError

if TYPE_CHECKING:
    from .connection import Kotta


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
        return f"<KOut {self.file} {self._url}>"

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
        """The base file name of the resource."""
        if self._name:
            return posixpath.basename(self._name)
        return posixpath.basename(unquote(urlparse(self._url).path).rstrip("/"))

    def _open(self) -> requests.Response:
        scheme = urlparse(self._url).scheme
        if scheme not in ("http", "https"):
            raise KottaError(f"cannot fetch {self._url!r}: only http(s) URLs can be read here")
        konn = self._konn
        use_konn = konn is not None and self._url.startswith(konn.url)
        getter = konn.session.get if use_konn else requests.get
        try:
            r = getter(self._url, stream=True, timeout=(d.CONNECT_TIMEOUT_S, d.READ_TIMEOUT_S))
        except requests.RequestException as e:
            raise ServerUnavailableError(f"cannot fetch {self._url}: {e}") from None
        if r.status_code == 404:
            raise NotFoundError(f"{self._url} was not found (HTTP 404)")
        if r.status_code >= 400:
            raise KottaError(f"cannot fetch {self._url}: HTTP {r.status_code} {r.reason}")
        return r

    def get_data(self, path: str | Path | None = None) -> str:
        """Download the object to ``self.file`` (or ``path``), streaming; returns the path."""
        dest = Path(path) if path is not None else Path(self.file)
        tmp = dest.with_name(dest.name + ".part")
        with self._open() as r, open(tmp, "wb") as f:
            for chunk in r.iter_content(1024 * 1024):
                f.write(chunk)
        tmp.replace(dest)
        return str(dest)

    def read(self) -> str:
        """The object's content decoded as UTF-8."""
        with self._open() as r:
            return r.content.decode("utf-8")
