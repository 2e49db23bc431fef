"""The object store: payloads, results, STDOUT/STDERR and outputs of jobs.

Keys are relative POSIX paths; the server lays them out as
``u<user id>/<job id>/<file>`` so one user's prefix never overlaps another's.
:class:`LocalObjectStore` keeps them under a directory; ``s3.S3ObjectStore``
keeps them in a bucket. Both refuse keys that would escape their root.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from ..errors import NotFoundError
from ..paths import safe_relpath
from .s3 import S3ObjectStore

CHUNK = 1024 * 1024
_parts = itertools.count()


def job_prefix(user_id: int, job_id: str) -> str:
    """The key prefix of one job's objects."""
    return f"u{int(user_id)}/{safe_relpath(job_id, 'job id')}"


def job_key(user_id: int, job_id: str, name: str) -> str:
    """The key of one of a job's objects (``name`` is already a safe relative path)."""
    return f"{job_prefix(user_id, job_id)}/{name}"


def user_prefix(user_id: int) -> str:
    """The key prefix of one user's objects."""
    return f"u{int(user_id)}"


class ObjectStore(Protocol):
    """What the server needs from a place to keep job files."""

    def put_stream(self, key: str, stream: IO[bytes]) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> int: ...
    def get_bytes(self, key: str) -> bytes: ...
    # A binary file to read, iterate over in chunks, and close (a file, or S3's body).
    def open_read(self, key: str) -> io.IOBase: ...
    def size(self, key: str) -> int | None: ...
    def local_path(self, key: str) -> Path | None: ...
    def presigned_get(self, key: str, expires_s: int = 3600) -> str | None: ...
    # A presigned GET saved as ``filename``, for a download link (S3); None: serve the bytes.
    def download_url(self, key: str, expires_s: int, filename: str) -> str | None: ...
    def store_url(self, key: str) -> str | None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    # (key, size, modified Unix time) of each object under a prefix (the storage quota).
    def listing(self, prefix: str) -> Iterator[tuple[str, int, float]]: ...
    def describe(self) -> str: ...
    # Presigned uploads (S3): None means "send the bytes through the server".
    def upload_plan(self, key: str, size: int) -> dict | None: ...
    def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None: ...
    def abort_upload(self, key: str, upload_id: str) -> None: ...
    # Drop what unfinished uploads begun over ``older_than_s`` ago left; returns how many.
    def abort_stale_uploads(self, older_than_s: float) -> int: ...
    # The key an s3:// URL names if it points into this store, else None.
    def key_for_url(self, url: str) -> str | None: ...


class LocalObjectStore:
    """Objects as files under one directory (the embedded default)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        # Every user's objects: directories 0700 and files 0600 (as written below), whatever
        # the umask; a root left 0755 by an older version is closed here.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            self.root.chmod(0o700)

    def _path(self, key: str) -> Path:
        # Lexical check only: everything under root is written by this store, from bytes, so
        # no symlink can be there to follow; resolving each component cost more than a write.
        return self.root / safe_relpath(key, "object key")

    def _open_part(self, path: Path) -> tuple[int, Path]:
        """A new file beside ``path`` to write the object into before renaming it over."""
        # A name unique to this process and call; mkstemp's random names, and a mkdir before
        # every write, were a third of the cost of a small object.
        tmp = path.with_name(f".part-{os.getpid()}-{next(_parts)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileNotFoundError:
            self._mkdirs(path.parent)
        except FileExistsError:  # left by a crashed process that had our pid
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            return fd, Path(name)
        return os.open(tmp, flags, 0o600), tmp

    def _mkdirs(self, path: Path) -> None:
        """Make ``path`` and its missing parents, each 0700 (``mkdir -p`` gives parents 0777)."""
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            try:
                os.mkdir(p, 0o700)
            except FileExistsError:
                pass

    def put_stream(self, key: str, stream: IO[bytes]) -> int:
        path = self._path(key)
        # Write beside, then rename: a reader never sees half an object, a crash leaves none.
        fd, tmp = self._open_part(path)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := stream.read(CHUNK):
                    f.write(chunk)
                    size += len(chunk)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    def put_bytes(self, key: str, data: bytes) -> int:
        path = self._path(key)
        fd, tmp = self._open_part(path)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return len(data)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str) -> io.IOBase:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"no object {key!r}") from None

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def presigned_get(self, key: str, expires_s: int = 3600) -> str | None:
        return None

    def download_url(self, key: str, expires_s: int, filename: str) -> str | None:
        return None

    def store_url(self, key: str) -> str | None:
        return None

    def delete(self, key: str) -> None:
        """Delete one object (nothing happens if it is not there)."""
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def listing(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """``(key, size, modified)`` of each object under ``prefix``; writes under way
        (``.part-*``) are left out (an upload counts from its start, ``server/usage.py``)."""
        for parent, _, files in os.walk(self._path(prefix)):
            for name in files:
                if not name.startswith(".part-"):
                    path = os.path.join(parent, name)
                    with contextlib.suppress(OSError):  # deleted meanwhile
                        st = os.lstat(path)
                        yield os.path.relpath(path, self.root), st.st_size, st.st_mtime

    def abort_stale_uploads(self, older_than_s: float) -> int:
        """Remove the ``.part-*`` files a write interrupted by a crash left behind."""
        cutoff, n = time.time() - older_than_s, 0
        for parent, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(".part-"):
                    path = os.path.join(parent, name)
                    with contextlib.suppress(OSError):
                        if os.lstat(path).st_mtime < cutoff:
                            os.unlink(path)
                            n += 1
        return n

    def describe(self) -> str:
        return str(self.root)

    def upload_plan(self, key: str, size: int) -> dict | None:
        return None  # no presigned URLs here: runners and clients upload through the server

    def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        raise NotFoundError(f"no multipart upload {upload_id!r} for {key!r} on a local store")

    def abort_upload(self, key: str, upload_id: str) -> None:
        return None

    def key_for_url(self, url: str) -> str | None:
        return None


def open_store(spec: str | None, data_dir: str | os.PathLike) -> ObjectStore:
    """The object store named by ``spec`` (``s3://bucket/prefix`` or a directory)."""
    if spec and spec.startswith("s3://"):
        return S3ObjectStore.from_url(spec)
    return LocalObjectStore(spec or Path(data_dir) / "objects")
