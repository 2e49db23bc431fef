"""Send a file the way the server's upload plan says: to the server, or straight to S3.

The plan (see ``S3ObjectStore.upload_plan``) is one presigned PUT, a
multipart upload whose parts go in parallel, or a stream through the server
on a local store. The runner sends a job's outputs this way
(``runner/stage_out.py``) and a client its ``Kotta.upload_file``.

Every failure raises ``StagingError`` naming what was sent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import requests

from ..urls import scrub, shown_url
from .common import (
    CHUNK,
    CONNECT_TIMEOUT_S,
    TRANSIENT_STATUS,
    StagingError,
    Transient,
    read_timeout_s,
    retry,
    run_parts,
)


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
            raise Transient(
                f"{what}: upload to {shown_url(url)} failed: {type(e).__name__}: {scrub(e)}"
            ) from None
        except requests.RequestException as e:
            raise StagingError(
                f"{what}: upload to {shown_url(url)} failed: {type(e).__name__}: {scrub(e)}"
            ) from None
        if r.status_code in TRANSIENT_STATUS:
            raise Transient(
                f"{what}: upload to {shown_url(url)} failed: HTTP {r.status_code} {r.reason}"
            )
        if r.status_code >= 400:
            raise StagingError(
                f"{what}: upload to {shown_url(url)} refused: HTTP {r.status_code} {r.reason} {r.text[:300]}"
            )
        return r.headers.get("ETag", "")

    try:
        return retry(attempt)
    except Transient as e:
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
    if mode == "server" or plan is None:
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
            etags = run_parts(parts, one, range(len(urls)))
        except BaseException:
            try:
                abort(plan["upload_id"])
            except Exception:  # the parts expire with the upload anyway
                pass
            raise
        complete(plan["upload_id"], etags)
    else:
        raise StagingError(f"{what}: unknown upload mode {mode!r} from the server")
