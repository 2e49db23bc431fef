"""Fetch a job's inputs into its working directory.

Inputs land under their URL's base name, streamed to disk in chunks (never
whole in memory). An object larger than one part is fetched as parallel byte
ranges, each written at its offset. ``http(s)://`` follows redirects, has
connect and read timeouts, and retries transient failures (connection
errors, timeouts, 5xx) a few times; a 4xx or a last 5xx fails the job with a
reason naming the URL and the status. ``s3://`` URLs outside the service's
store go through boto3 with the worker's own standard configuration chain;
inputs inside the service's store arrive as a presigned URL (S3 store) or a
runner-API URL fetched with the attempt's dispatch token (local store), so a
worker never needs the store's credentials.

Every failure raises ``StagingError`` naming the URL.
"""

from __future__ import annotations

import posixpath
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import requests

from ..paths import resolve_inside
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

#: An object larger than this is fetched as parallel ranges of this size.
PART_SIZE = 8 * 1024 * 1024


def basename(url: str) -> str:
    """The file name an input URL is staged under."""
    return posixpath.basename(urlparse(url).path.rstrip("/"))


# -- HTTP(S) ----------------------------------------------------------------------------------


class S3Target:
    """An ``s3://`` input fetched by a presigned URL: how to word its failures."""

    def __init__(self, bucket: str, key: str, endpoint: str):
        self.bucket, self.key, self.endpoint = bucket, key, endpoint

    def refused(self, shown: str, r: requests.Response) -> str:
        m = re.search(r"<Code>([^<]+)</Code>", r.text[:4000]) if r.content else None
        code = m[1] if m else ""
        status = r.status_code
        if code == "NoSuchBucket":
            return f"input {shown}: S3 bucket {self.bucket!r} does not exist (NoSuchBucket, HTTP {status})"
        if code == "NoSuchKey" or (status == 404 and not code):
            return f"input {shown}: no key {self.key!r} in S3 bucket {self.bucket!r} (NoSuchKey, HTTP {status})"
        if status == 403:
            return (
                f"input {shown}: access denied ({code or 'HTTP 403'}): "
                "the workers' S3 credentials cannot read it"
            )
        return f"input {shown}: S3 error {code or r.reason} (HTTP {status})"


def _http_get(
    session: requests.Session,
    url: str,
    shown: str,
    headers: dict[str, str],
    rng: tuple[int, int] | None,
    s3: S3Target | None = None,
) -> requests.Response:
    h = dict(headers)
    if rng is not None:
        h["Range"] = f"bytes={rng[0]}-{rng[1]}"
    try:
        r = session.get(
            url, headers=h, stream=True, allow_redirects=True,
            timeout=(CONNECT_TIMEOUT_S, read_timeout_s()),
        )  # fmt: skip
    except requests.Timeout as e:
        raise _Transient(f"input {shown}: timed out ({type(e).__name__}: {_scrub(e)})") from None
    except requests.ConnectionError as e:
        if s3 is not None:
            raise _Transient(
                f"input {shown}: cannot reach the S3 endpoint {s3.endpoint}: {_scrub(e)}"
            ) from None
        raise _Transient(f"input {shown}: cannot connect: {_scrub(e)}") from None
    except requests.RequestException as e:
        raise StagingError(f"input {shown}: {type(e).__name__}: {_scrub(e)}") from None
    if r.status_code in _TRANSIENT_STATUS:
        r.close()
        why = s3.refused(shown, r) if s3 else f"input {shown}: HTTP {r.status_code} {r.reason}"
        raise _Transient(f"{why} from {_where(r.url)}")
    if r.status_code >= 400 and not (r.status_code == 416 and rng is not None):
        why = s3.refused(shown, r) if s3 else f"input {shown}: HTTP {r.status_code} {r.reason}"
        r.close()
        raise StagingError(why if s3 else f"{why} from {_where(r.url)}")
    return r


def _copy_http(r: requests.Response, f: BinaryIO, shown: str) -> int:
    n = 0
    try:
        for chunk in r.iter_content(CHUNK):
            f.write(chunk)
            n += len(chunk)
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as e:
        raise _Transient(
            f"input {shown}: transfer broke off after {n} bytes: {_scrub(e)}"
        ) from None
    finally:
        r.close()
    return n


def _total_of(content_range: str | None) -> int | None:
    # "bytes 0-8388607/209715200"; the total may be "*" (unknown)
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def fetch_http(
    url: str,
    dest: Path,
    session: requests.Session,
    *,
    shown: str | None = None,
    headers: dict[str, str] | None = None,
    parts: ThreadPoolExecutor | None = None,
    s3: S3Target | None = None,
) -> int:
    """Download ``url`` to ``dest``; returns its size.

    The first request asks for the first part as a byte range: a small object
    arrives whole in it, and for a larger one the answer says the total size,
    so the remaining parts are fetched in parallel (from the URL the redirects
    led to). A server that ignores ranges sends the whole object at once.
    """
    try:
        return _fetch_http(url, dest, session, shown or url, headers or {}, parts, s3)
    except _Transient as e:  # out of tries
        raise StagingError(str(e)) from None


def _fetch_http(
    url: str,
    dest: Path,
    session: requests.Session,
    shown: str,
    headers: dict[str, str],
    parts: ThreadPoolExecutor | None,
    s3: S3Target | None,
) -> int:
    def first() -> tuple[int, int | None, str]:
        r = _http_get(session, url, shown, headers, (0, PART_SIZE - 1), s3)
        if r.status_code == 416:  # an empty object has no byte 0
            r.close()
            r = _http_get(session, url, shown, headers, None, s3)
        total = _total_of(r.headers.get("Content-Range")) if r.status_code == 206 else None
        final = r.url
        with open(dest, "wb") as f:
            n = _copy_http(r, f, shown)
        return n, total, final

    n, total, final = _retry(first)
    if total is None or total <= n:
        return n
    # Credentials stay with the host they were meant for (requests drops them on redirects too).
    same_host = urlparse(final).netloc == urlparse(url).netloc
    part_headers = headers if same_host else {}
    with open(dest, "r+b") as f:
        f.truncate(total)

    def one(start: int) -> None:
        end = min(start + PART_SIZE, total) - 1

        def attempt() -> None:
            r = _http_get(session, final, shown, part_headers, (start, end), s3)
            if r.status_code != 206:
                r.close()
                raise StagingError(
                    f"input {shown}: asked for bytes {start}-{end}, got HTTP {r.status_code}"
                )
            with open(dest, "r+b") as f:
                f.seek(start)
                got = _copy_http(r, f, shown)
            if got != end - start + 1:
                raise _Transient(
                    f"input {shown}: part at {start} is {got} bytes, expected {end - start + 1}"
                )

        _retry(attempt)

    _run_parts(parts, one, range(n, total, PART_SIZE))
    return total


# -- S3 ---------------------------------------------------------------------------------------

_s3_lock = threading.Lock()
_s3: Any = None


def s3_client() -> Any:
    """One boto3 client per process (they are thread-safe; making one costs ~100 ms)."""
    global _s3
    with _s3_lock:
        if _s3 is None:
            from ..store.s3 import s3_client as make

            _s3 = make()
        return _s3


def _presigner(client: Any) -> Any:
    from ..store.presign import presigner

    return presigner(client)


def fetch_s3(
    url: str,
    dest: Path,
    session: requests.Session | None = None,
    *,
    parts: ThreadPoolExecutor | None = None,
    client: Any = None,
) -> int:
    """Download an ``s3://`` object with the worker's own credentials; returns its size.

    The worker signs a GET URL itself (no request) and fetches it like any
    HTTP input: ranged parts in parallel, over plain requests, which costs
    a third of the CPU of a botocore call per object (small objects by the
    thousand are bound by that CPU, large ones by the parts' parallelism).
    """
    import botocore.exceptions as bx

    from ..store.s3 import parse_s3_url

    bucket, key = parse_s3_url(url)
    client = client or s3_client()
    endpoint = client.meta.endpoint_url
    try:
        signed = _presigner(client).url("GET", bucket, key, 6 * 3600)
    except bx.NoCredentialsError:
        raise StagingError(f"input {url}: the worker has no AWS credentials to read it") from None
    except (bx.BotoCoreError, ValueError) as e:
        raise StagingError(f"input {url}: cannot sign a request for it: {e}") from None
    target = S3Target(bucket, key, endpoint)
    if session is not None:
        return fetch_http(signed, dest, session, shown=url, parts=parts, s3=target)
    with http_session() as own:
        return fetch_http(signed, dest, own, shown=url, parts=parts, s3=target)


# -- the job's whole list ---------------------------------------------------------------------


def stage_inputs(
    inputs: list[str] | list[dict[str, Any]],
    workdir: Path,
    dispatch_headers: dict[str, str] | None = None,
) -> dict[str, int]:
    """Download every input into ``workdir``, several at once; returns sizes by file name.

    ``inputs`` are URLs, or the server's plan for them: ``{"url", "name",
    "fetch", "auth"}`` where ``fetch`` (if given) is the URL to download from
    instead (presigned, or the runner API with ``auth == "dispatch"``).
    The first failure (in input order) is raised; the others are abandoned.
    """
    plan = [{"url": i, "name": basename(i)} if isinstance(i, str) else i for i in inputs]
    if not plan:
        return {}
    dests = [resolve_inside(workdir, item["name"], "input name") for item in plan]
    sizes: dict[str, int] = {}
    with (
        http_session() as session,
        ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="kotta-in") as files,
        ThreadPoolExecutor(PART_WORKERS, thread_name_prefix="kotta-in-part") as parts,
    ):

        def one(i: int) -> int:
            item, dest = plan[i], dests[i]
            url = item["url"]
            fetch = item.get("fetch") or url
            scheme = urlparse(fetch).scheme
            try:
                if scheme in ("http", "https"):
                    headers = dispatch_headers if item.get("auth") == "dispatch" else None
                    return fetch_http(
                        fetch, dest, session, shown=url, headers=headers or {}, parts=parts
                    )
                if scheme == "s3":
                    return fetch_s3(fetch, dest, session, parts=parts)
            except _Transient as e:
                raise StagingError(str(e)) from None
            raise StagingError(
                f"input {url}: unsupported scheme {scheme!r}; use http://, https:// or s3://"
            )

        futures: list[Future] = [files.submit(one, i) for i in range(len(plan))]
        wait(futures, return_when="FIRST_EXCEPTION")
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            raise failed[0].exception()
        for item, fut in zip(plan, futures, strict=True):
            sizes[item["name"]] = fut.result()
    return sizes
