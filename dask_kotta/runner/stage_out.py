"""Upload a job's outputs to the object store.

Outputs go where the server's upload plans say (:func:`dask_kotta.transfer.upload.send_file`):
straight to S3 by presigned PUT (in parallel parts for a large file), or
through the server on a local store.

Every failure is reported naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from .. import defaults as d
from ..errors import KottaError, UnsafePathError
from ..paths import resolve_inside
from ..transfer.common import FILE_WORKERS, PART_WORKERS, StagingError, http_session
from ..transfer.upload import send_file
from .api import LostJob

#: Errors that mean a path names no file (those ``Path.is_file`` answers False to).
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _regular_file(workdir: Path, name: str, what: str) -> tuple[Path, int]:
    """The path and size of a job's declared file ``name`` (an output, a destination).

    ``UnsafePathError`` for a path escaping the directory, a missing file, a directory, or
    a hard link (its other name may be outside the job's directory: never send through it).
    """
    path = resolve_inside(workdir, name, what)
    try:
        st = path.stat()  # one stat for what is_file, is_dir and the size would each ask
    except OSError as e:
        if e.errno not in _MISSING:
            raise
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        isdir = st is not None and stat.S_ISDIR(st.st_mode)
        raise UnsafePathError(
            f"declared {what} {name!r} {'is a directory, not a file' if isdir else 'was not produced'}"
        )
    if st.st_nlink > 1:
        raise UnsafePathError(f"declared {what} {name!r} is a hard link; write a file of its own")
    return path, st.st_size


def stage_destinations(api: Any, job: dict[str, Any], workdir: Path) -> str | None:
    """Write the job's declared ``destinations`` to their ``s3://`` places; the first problem.

    Called once the job's process has ended and succeeded: each file goes by the one
    presigned PUT the server made for its declared key and size
    (``server/destinations.py``), so neither this runner nor the job ever holds
    credentials for the bucket. Nothing is sent unless every file is there: a job that
    left one out writes none of them.
    """
    dests: dict[str, str] = job.get("destinations") or {}
    files: list[tuple[str, Path, int]] = []
    try:
        for name in dests:
            path, size = _regular_file(workdir, name, "destination file")
            files.append((name, path, size))
    except UnsafePathError as e:
        return f"{e} (for destination {dests[name]!r})"
    try:
        plans = api.destination_plans([{"name": n, "size": s} for n, _, s in files])
    except requests.HTTPError as e:  # refused: the server's detail says why (a grant gone...)
        try:
            return str(e.response.json()["detail"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"the server refused the destinations' upload plans: {e}"
    except requests.RequestException as e:  # the server stayed away past the runner's patience
        return f"could not get the destinations' upload plans from the server: {e}"
    errors: dict[str, str] = {}
    with (
        http_session() as session,
        ThreadPoolExecutor(max(1, min(FILE_WORKERS, len(files)))) as pool,
    ):
        # (one thread per file at most: a job of one partition starts one)

        def one(item: tuple[str, Path, int], plan: dict) -> None:
            name, path, size = item
            if plan.get("mode") != "put":  # the server only makes single PUTs for these
                raise StagingError(
                    f"destination {dests[name]!r}: unknown plan {plan.get('mode')!r}"
                )
            send_file(
                path, size, plan, what=f"destination {dests[name]!r}", session=session,
                server_put=_no_server_put, complete=_no_complete, abort=_no_complete,
            )  # fmt: skip

        pairs = zip(files, plans, strict=True)
        futures = {pool.submit(one, item, plan): item[0] for item, plan in pairs}
        for fut, name in futures.items():
            e = fut.exception()
            if isinstance(e, KottaError):
                errors[name] = str(e)
            elif e is not None:
                errors[name] = f"destination {dests[name]!r}: {type(e).__name__}: {e}"
    return next((errors[n] for n in dests if n in errors), None)


def _no_server_put(*_: Any) -> None:
    raise StagingError("a destination is never sent through the server")


def _no_complete(*_: Any) -> None:
    raise StagingError("a destination is sent in one PUT")


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
            path, size = _regular_file(workdir, name, "output")
        except UnsafePathError as e:
            problems[name] = str(e)
            continue
        files.append((name, path, size))
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
            modes <= {"server"} and all(size <= d.INLINE_MAX_BYTES for _, _, size in files)
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
