"""Upload a job's outputs to the object store.

Outputs go where the server's upload plan says: straight to S3 by presigned
PUT (in parallel parts for a large file), or through the server on a local
store. The same code sends a client's ``Kotta.upload_file``.

Every failure raises ``StagingError`` naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import requests

from ..errors import KottaError, UnsafePathError
from ..paths import resolve_inside
from .api import LostJob
from .staging import (
    _TRANSIENT_STATUS,
    CHUNK,
    CONNECT_TIMEOUT_S,
    FILE_WORKERS,
    PART_WORKERS,
    StagingError,
    _retry,
    _run_parts,
    _scrub,
    _Transient,
    _where,
    http_session,
    read_timeout_s,
)

#: Outputs all this small and all sent through the server (a local store) are sent one after
#: another from the calling thread: the usual case, STDOUT and STDERR of a short job.
INLINE_BYTES = 1024 * 1024


class FileSlice:
    """``length`` bytes of a file from ``offset``, as an iterable with a known length.

    requests sends it with a ``Content-Length`` (S3 refuses chunked uploads)
    and, since it has no ``read``, iterates it: one ``CHUNK`` at a time, so a
    part never sits whole in memory, and in blocks 32x larger than the 16 KiB
    urllib3 would read from a file (less time holding the GIL per MiB).
    """

    def __init__(self, path: str | os.PathLike, offset: int, length: int):
        self.f = open(path, "rb")
        self.f.seek(offset)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        left = self.length
        while left > 0:
            data = self.f.read(min(CHUNK, left))
            if not data:
                raise StagingError(f"{self.f.name} shrank while it was being uploaded")
            left -= len(data)
            yield data

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> FileSlice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _put(
    session: requests.Session, url: str, path: Path, offset: int, length: int, what: str
) -> str:
    """One presigned PUT of a file's slice, retried on transient failures; returns the ETag."""

    def attempt() -> str:
        try:
            if length == 0:
                r = session.put(url, data=b"", timeout=(CONNECT_TIMEOUT_S, read_timeout_s()))
            else:
                with FileSlice(path, offset, length) as body:
                    r = session.put(url, data=body, timeout=(CONNECT_TIMEOUT_S, read_timeout_s()))
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Transient(
                f"{what}: upload to {_where(url)} failed: {type(e).__name__}: {_scrub(e)}"
            ) from None
        except requests.RequestException as e:
            raise StagingError(
                f"{what}: upload to {_where(url)} failed: {type(e).__name__}: {_scrub(e)}"
            ) from None
        if r.status_code in _TRANSIENT_STATUS:
            raise _Transient(
                f"{what}: upload to {_where(url)} failed: HTTP {r.status_code} {r.reason}"
            )
        if r.status_code >= 400:
            raise StagingError(
                f"{what}: upload to {_where(url)} refused: HTTP {r.status_code} {r.reason} {r.text[:300]}"
            )
        return r.headers.get("ETag", "")

    try:
        return _retry(attempt)
    except _Transient as e:
        raise StagingError(str(e)) from None


def send_file(
    path: Path,
    size: int,
    plan: dict[str, Any] | None,
    *,
    what: str,
    session: requests.Session,
    server_put: Callable[[BinaryIO], Any],
    complete: Callable[[str, list[str]], Any],
    abort: Callable[[str], Any],
    parts: ThreadPoolExecutor | None = None,
) -> None:
    """Send a file the way the server's ``plan`` says (see ``S3ObjectStore.upload_plan``).

    ``plan`` None or ``{"mode": "server"}`` streams it to the server with
    ``server_put``; ``put`` is one presigned PUT; ``multipart`` PUTs the parts in
    parallel, then ``complete(upload_id, etags)`` (or ``abort(upload_id)`` on failure).
    """
    mode = (plan or {}).get("mode", "server")
    if mode == "server":
        with open(path, "rb") as f:
            server_put(f)
    elif mode == "put":
        _put(session, plan["url"], path, 0, size, what)
    elif mode == "multipart":
        part = int(plan["part_size"])
        urls = plan["urls"]
        if len(urls) * part < size:
            raise StagingError(f"{what}: the upload plan covers {len(urls) * part} of {size} bytes")

        def one(i: int) -> str:
            start = i * part
            return _put(
                session, urls[i], path, start, min(part, size - start), f"{what} (part {i + 1})"
            )

        try:
            etags = _run_parts(parts, one, range(len(urls)))
        except BaseException:
            try:
                abort(plan["upload_id"])
            except Exception:  # the parts expire with the upload anyway
                pass
            raise
        complete(plan["upload_id"], etags)
    else:
        raise StagingError(f"{what}: unknown upload mode {mode!r} from the server")


# -- the job's whole list ---------------------------------------------------------------------

#: Errors that mean a path names no file (those ``Path.is_file`` answers False to).
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def stage_outputs(api: Any, job: dict[str, Any], workdir: Path) -> tuple[list[dict], str | None]:
    """Upload STDOUT/STDERR and the declared outputs, several at once if large or to S3.

    Returns what was stored (``[{"name", "size"}]``, in declared order) and the
    first problem (an output missing, escaping the working directory, or
    failing to upload), or None. Everything that can be stored is stored.
    """
    names: list[str] = []
    for name in [job["stdout"], job["stderr"], *job["outputs"]]:
        if name not in names:
            names.append(name)
    problems: dict[str, str] = {}
    files: list[tuple[str, Path, int]] = []
    for name in names:
        try:
            path = resolve_inside(workdir, name, "output")
        except UnsafePathError as e:
            problems[name] = str(e)
            continue
        try:
            st = path.stat()  # one stat for what is_file, is_dir and the size would each ask
        except OSError as e:
            if e.errno not in _MISSING:
                raise
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            isdir = st is not None and stat.S_ISDIR(st.st_mode)
            what = "is a directory, not a file" if isdir else "was not produced"
            problems[name] = f"declared output {name!r} {what}"
            continue
        if st.st_nlink > 1:
            # Its other name may be outside the job's directory: never upload through it.
            problems[name] = f"declared output {name!r} is a hard link; write a file of its own"
            continue
        files.append((name, path, st.st_size))
    plans = api.upload_plans([{"name": n, "size": s} for n, _, s in files]) if files else []
    modes = {(plan or {}).get("mode", "server") for plan in plans}
    sizes: dict[str, int] = {}
    errors: dict[str, BaseException] = {}
    with contextlib.ExitStack() as stack:
        # Each only when the plans need it: a session for presigned PUTs, a pool for parts.
        session = stack.enter_context(http_session()) if modes - {"server"} else None
        parts = None
        if "multipart" in modes:
            parts = stack.enter_context(
                ThreadPoolExecutor(PART_WORKERS, thread_name_prefix="kotta-out-part")
            )

        def one(item: tuple[str, Path, int], plan: dict | None) -> None:
            name, path, size = item
            send_file(
                path, size, plan, what=f"output {name!r}", session=session, parts=parts,
                server_put=lambda f: api.upload(name, f),
                complete=lambda upload_id, etags: api.complete_upload(name, upload_id, etags),
                abort=lambda upload_id: api.abort_upload(name, upload_id),
            )  # fmt: skip
            sizes[name] = size

        if len(files) <= 1 or (
            modes <= {"server"} and all(size <= INLINE_BYTES for _, _, size in files)
        ):
            # One by one in this thread: a pool's threads cost more CPU than they save here.
            for item, plan in zip(files, plans, strict=True):
                try:
                    one(item, plan)
                except LostJob:
                    raise
                except Exception as e:
                    errors[item[0]] = e
        else:
            pool = stack.enter_context(
                ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="kotta-out")
            )
            futures = {
                pool.submit(one, item, plan): item[0]
                for item, plan in zip(files, plans, strict=True)
            }
            for fut, name in futures.items():
                e = fut.exception()
                if isinstance(e, LostJob):
                    raise e
                if e is not None:
                    errors[name] = e
    for name, e in errors.items():
        problems[name] = (
            str(e) if isinstance(e, KottaError) else f"output {name!r}: {type(e).__name__}: {e}"
        )
    uploaded = [{"name": n, "size": sizes[n]} for n in names if n in sizes]
    first = next((problems[n] for n in names if n in problems), None)
    return uploaded, first
