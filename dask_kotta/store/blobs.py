"""Jobs' small objects in the job database, behind the object store's interface.

A trivial job has four objects (payload, result, STDOUT, STDERR) of a few
hundred bytes each; as files they cost the server a create, a rename and a
directory per job (S3: a request each), and deleting the job a tree walk. Up to
:data:`SMALL_MAX` bytes they are rows of ``job_objects`` instead
(``schema.py``, revision 0006), written in the transaction that submits or
ends the job where the store can (:meth:`Blobs.rows`, returned by the callbacks
of ``insert_jobs`` and ``finish_many``).

:class:`KeptSmall` wraps the object store the server uses: every reader asks
it by the same key as before, and it answers from a row when there is one,
else from the store (so objects written before 0006, and large ones, are read
where they are). A row has no local path and no presigned URL: such readers
get None and stream the bytes instead. The server still never unpickles them.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from .schema import job_objects

if TYPE_CHECKING:
    from .objects import ObjectStore

#: Largest object kept in the database, in bytes; larger ones go to the object store.
SMALL_MAX = 64 * 1024
#: A job's object key, ``u<owner>/<job id>/<name>`` (job ids are 16 hex digits; uploads'
#: keys, ``u<owner>/uploads/...``, never match).
_JOB_KEY = re.compile(r"u\d+/([0-9a-f]{16})/.+")

_GET = sa.select(job_objects.c.data).where(job_objects.c.key == sa.bindparam("b_key"))
_GET_MANY = sa.select(job_objects.c.key, job_objects.c.data).where(
    job_objects.c.key.in_(sa.bindparam("b_keys", expanding=True))
)
_DROP = job_objects.delete().where(job_objects.c.key.in_(sa.bindparam("b_keys", expanding=True)))


def job_of(key: str) -> str | None:
    """The job id of a job's object key, or None for any other key."""
    m = _JOB_KEY.fullmatch(key)
    return m.group(1) if m else None


def _under(prefix: str) -> sa.ColumnElement[bool]:
    """Keys under ``prefix/``: a range of the primary key ('0' follows '/'), no LIKE escaping."""
    prefix = prefix.rstrip("/")
    return sa.and_(job_objects.c.key >= prefix + "/", job_objects.c.key < prefix + "0")


class Blobs:
    """The rows of ``job_objects``: put, get and delete by key."""

    def __init__(self, engine: sa.Engine, limit: int = SMALL_MAX):
        self.engine = engine
        self.limit = limit

    def small(self, data: bytes) -> bool:
        return len(data) <= self.limit

    @staticmethod
    def rows(items: Iterable[tuple[str, bytes | None]]) -> list[dict[str, Any]]:
        """``(key, bytes)`` as rows to :meth:`write`; ``(key, None)`` drops a key's row (its
        object was written to the object store instead)."""
        now = time.time()
        return [{"key": k, "job_id": job_of(k), "data": b, "at": now} for k, b in items]

    @staticmethod
    def write(c: sa.Connection, rows: list[dict[str, Any]]) -> None:
        """Replace the rows of these keys in the transaction of ``c`` (the caller's)."""
        if not rows:
            return
        keys = [r["key"] for r in rows]
        for i in range(0, len(keys), 500):
            c.execute(_DROP, {"b_keys": keys[i : i + 500]})
        if new := [r for r in rows if r["data"] is not None]:
            c.execute(job_objects.insert(), new)

    def put(self, key: str, data: bytes) -> None:
        with self.engine.begin() as c:
            self.write(c, self.rows([(key, data)]))

    def get(self, key: str) -> bytes | None:
        if job_of(key) is None:
            return None
        with self.engine.connect() as c:
            data = c.execute(_GET, {"b_key": key}).scalar()
        return None if data is None else bytes(data)

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """The rows of those of ``keys`` that have one, in one statement per 500 keys."""
        out: dict[str, bytes] = {}
        keys = [k for k in keys if job_of(k) is not None]
        with self.engine.connect() as c:
            for i in range(0, len(keys), 500):
                for key, data in c.execute(_GET_MANY, {"b_keys": keys[i : i + 500]}):
                    out[key] = bytes(data)
        return out

    def size(self, key: str) -> int | None:
        if job_of(key) is None:
            return None
        q = sa.select(sa.func.length(job_objects.c.data)).where(job_objects.c.key == key)
        with self.engine.connect() as c:
            n = c.execute(q).scalar()
        return None if n is None else int(n)

    def delete(self, key: str) -> None:
        if job_of(key) is not None:
            with self.engine.begin() as c:
                c.execute(_DROP, {"b_keys": [key]})

    def delete_prefix(self, prefix: str) -> None:
        with self.engine.begin() as c:
            c.execute(job_objects.delete().where(_under(prefix)))

    def listing(self, prefix: str) -> list[tuple[str, int, float]]:
        q = sa.select(
            job_objects.c.key, sa.func.length(job_objects.c.data), job_objects.c.at
        ).where(_under(prefix))
        with self.engine.connect() as c:
            return [(k, int(n), float(at)) for k, n, at in c.execute(q)]


class KeptSmall:
    """An :class:`~.objects.ObjectStore` that keeps jobs' small objects in :class:`Blobs`.

    Writes of a job's object up to ``blobs.limit`` bytes become a row, larger ones go
    to ``inner`` (and drop the key's row, so a retry's larger object is not shadowed
    by an earlier attempt's). Reads ask the row first. Everything else is ``inner``'s.

    Which objects: on a local store (``everything``), all of a job's. On S3, only the
    service's own (``.kotta/``: payload, result, live logs): STDOUT/STDERR and outputs
    stay objects of the bucket, whose ``s3://`` URLs users read and pass on.
    """

    def __init__(self, inner: ObjectStore, blobs: Blobs, everything: bool = True):
        self.inner = inner
        self.blobs = blobs
        self.everything = everything

    def eligible(self, key: str) -> bool:
        """Whether ``key`` is one of the objects kept as a row when small."""
        if job_of(key) is None:
            return False
        return self.everything or key.split("/", 2)[2].startswith(".kotta/")

    def keeps(self, key: str, data: bytes) -> bool:
        """Whether ``data`` at ``key`` is kept as a row (else it goes to ``inner``)."""
        return self.blobs.small(data) and self.eligible(key)

    def __getattr__(self, name: str) -> Any:
        # upload_plan, complete_upload, abort_upload, abort_stale_uploads, key_for_url,
        # describe, and the S3 store's client: the object store's own.
        return getattr(self.inner, name)

    def _put_small(self, key: str, data: bytes) -> bool:
        if not self.keeps(key, data):
            return False
        try:
            self.blobs.put(key, data)
        except sa.exc.IntegrityError:
            return False  # its job is gone (deleted meanwhile): the store takes it, as before
        return True

    def put_bytes(self, key: str, data: bytes) -> int:
        if self._put_small(key, data):
            return len(data)
        if self.eligible(key):
            self.blobs.delete(key)
        return self.inner.put_bytes(key, data)

    def put_stream(self, key: str, stream: IO[bytes]) -> int:
        if not self.eligible(key):
            return self.inner.put_stream(key, stream)
        head = stream.read(self.blobs.limit + 1)
        if len(head) <= self.blobs.limit and self._put_small(key, head):
            return len(head)
        self.blobs.delete(key)
        return self.inner.put_stream(key, cast(IO[bytes], _Joined(head, stream)))

    def get_bytes(self, key: str) -> bytes:
        data = self.blobs.get(key)
        return self.inner.get_bytes(key) if data is None else data

    def small_bytes(self, keys: list[str]) -> dict[str, bytes]:
        """The bytes of those of ``keys`` kept as rows, in one read."""
        return self.blobs.get_many(keys)

    def open_read(self, key: str) -> io.IOBase:
        data = self.blobs.get(key)
        return self.inner.open_read(key) if data is None else io.BytesIO(data)

    def size(self, key: str) -> int | None:
        n = self.blobs.size(key)
        return self.inner.size(key) if n is None else n

    def _kept(self, key: str) -> bool:
        return self.eligible(key) and self.blobs.size(key) is not None

    def local_path(self, key: str) -> Path | None:
        return None if self._kept(key) else self.inner.local_path(key)

    def presigned_get(self, key: str, expires_s: int = 3600) -> str | None:
        return None if self._kept(key) else self.inner.presigned_get(key, expires_s)

    def download_url(self, key: str, expires_s: int, filename: str) -> str | None:
        return None if self._kept(key) else self.inner.download_url(key, expires_s, filename)

    def store_url(self, key: str) -> str | None:
        # An s3:// URL that a job may read straight from the bucket: a row has none.
        url = self.inner.store_url(key)  # a local store has none: no need to ask the rows
        return None if url is None or self._kept(key) else url

    def delete(self, key: str) -> None:
        self.blobs.delete(key)
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.blobs.delete_prefix(prefix)
        self.inner.delete_prefix(prefix)

    def listing(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        yield from self.blobs.listing(prefix)
        yield from self.inner.listing(prefix)


class _Joined(io.RawIOBase):
    """``head`` (already read) followed by the rest of ``stream``, as one stream to read."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self._head, self._stream = memoryview(head), stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            out, self._head = bytes(self._head) + self._stream.read(), memoryview(b"")
            return out
        if self._head:
            out, self._head = bytes(self._head[:size]), self._head[size:]
            return out
        return self._stream.read(size)
