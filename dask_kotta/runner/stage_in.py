"""Fetch a job's inputs into its working directory.

Inputs land under their URL's base name, streamed to disk in chunks (never
whole in memory). An object larger than one part is fetched as parallel byte
ranges, each written at its offset. ``http(s)://`` follows redirects, has
connect and read timeouts, and retries transient failures (connection
errors, timeouts, 5xx) a few times; a 4xx or a last 5xx fails the job with a
reason naming the URL and the status.

What the runner fetches comes from the server's input plan:

- inputs inside the service's store arrive as a presigned URL (S3 store) or
  a runner-API URL fetched with the attempt's dispatch token (local store);
- ``s3://`` inputs outside it arrive as a URL the server presigned because
  the operator granted them to the job's owner. The runner never signs
  anything: workers hold no credentials for users' data;
- any other ``http(s)`` URL is the user's: it is fetched through
  :mod:`.guard`, which refuses loopback, link-local, private (and similar)
  addresses unless the plan's ``allow_network`` (the server's policy, never
  the job's) allows them, at every redirect, and connects only to the
  addresses it checked.

Every failure raises ``StagingError`` naming the URL, without its user-info
or query (a presigned URL's signature never reaches a reason or a log).
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlparse

import requests

from ..netcheck import IPNetwork
from ..paths import resolve_inside
from ..transfer.common import (
    CHUNK,
    CONNECT_TIMEOUT_S,
    FILE_WORKERS,
    PART_WORKERS,
    TRANSIENT_STATUS,
    StagingError,
    Transient,
    http_session,
    read_timeout_s,
    retry,
    run_parts,
)
from ..urls import NoFileNameError, scrub, shown_url, staged_name
from .guard import MAX_REDIRECTS, Guard, guarded_session, networks

#: An object larger than this is fetched as parallel ranges of this size.
PART_SIZE = 8 * 1024 * 1024


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
                "the S3 credentials the server presigned it with cannot read it"
            )
        return f"input {shown}: S3 error {code or r.reason} (HTTP {status})"


def _http_get(
    session: requests.Session,
    url: str,
    shown: str,
    headers: dict[str, str],
    rng: tuple[int, int] | None,
    s3: S3Target | None = None,
    guard: tuple[Guard, list[IPNetwork]] | None = None,
) -> requests.Response:
    h = dict(headers)
    if rng is not None:
        h["Range"] = f"bytes={rng[0]}-{rng[1]}"
    try:
        if guard is None:  # the service's own URL, from the server's plan
            r = session.get(
                url, headers=h, stream=True, allow_redirects=True,
                timeout=(CONNECT_TIMEOUT_S, read_timeout_s()),
            )  # fmt: skip
        else:
            r = _guarded_get(session, url, shown, h, guard)
    except requests.Timeout as e:
        raise Transient(f"input {shown}: timed out ({type(e).__name__}: {scrub(e)})") from None
    except requests.ConnectionError as e:
        if s3 is not None:
            raise Transient(
                f"input {shown}: cannot reach the S3 endpoint {s3.endpoint}: {scrub(e)}"
            ) from None
        raise Transient(f"input {shown}: cannot connect: {scrub(e)}") from None
    except requests.RequestException as e:
        raise StagingError(f"input {shown}: {type(e).__name__}: {scrub(e)}") from None
    if r.status_code in TRANSIENT_STATUS:
        r.close()
        why = s3.refused(shown, r) if s3 else f"input {shown}: HTTP {r.status_code} {r.reason}"
        raise Transient(f"{why} from {shown_url(r.url)}")
    if r.status_code >= 400 and not (r.status_code == 416 and rng is not None):
        why = s3.refused(shown, r) if s3 else f"input {shown}: HTTP {r.status_code} {r.reason}"
        r.close()
        raise StagingError(why if s3 else f"{why} from {shown_url(r.url)}")
    return r


def _guarded_get(
    session: requests.Session,
    url: str,
    shown: str,
    headers: dict[str, str],
    guard: tuple[Guard, list[IPNetwork]],
) -> requests.Response:
    """GET a user's URL, checking its host and every redirect's before connecting to it."""
    g, allowed = guard
    hop = url
    for _ in range(MAX_REDIRECTS + 1):
        g.check(hop, shown, allowed)
        r = session.get(
            hop, headers=headers, stream=True, allow_redirects=False,
            timeout=(CONNECT_TIMEOUT_S, read_timeout_s()),
        )  # fmt: skip
        target = session.get_redirect_target(r)
        if target is None:
            return r
        r.close()
        hop = urljoin(hop, target)
    raise StagingError(f"input {shown}: more than {MAX_REDIRECTS} redirects")


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
        raise Transient(f"input {shown}: transfer broke off after {n} bytes: {scrub(e)}") from None
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
    guard: tuple[Guard, list[IPNetwork]] | None = None,
) -> int:
    """Download ``url`` to ``dest``; returns its size.

    ``guard`` (a :class:`Guard` and the allowed networks, with a session from
    :func:`guarded_session`) makes it a user's URL: its host and every
    redirect's are checked before a connection is made. Without it, ``url``
    is taken to be the service's own (from the server's plan).

    The first request asks for the first part as a byte range: a small object
    arrives whole in it, and for a larger one the answer says the total size,
    so the remaining parts are fetched in parallel (from the URL the redirects
    led to). A server that ignores ranges sends the whole object at once.
    """
    try:
        return _fetch_http(
            url, dest, session, shown or shown_url(url), headers or {}, parts, s3, guard
        )
    except Transient as e:  # out of tries
        raise StagingError(str(e)) from None


def _fetch_http(
    url: str,
    dest: Path,
    session: requests.Session,
    shown: str,
    headers: dict[str, str],
    parts: ThreadPoolExecutor | None,
    s3: S3Target | None,
    guard: tuple[Guard, list[IPNetwork]] | None,
) -> int:
    def first() -> tuple[int, int | None, str]:
        r = _http_get(session, url, shown, headers, (0, PART_SIZE - 1), s3, guard)
        if r.status_code == 416:  # an empty object has no byte 0
            r.close()
            r = _http_get(session, url, shown, headers, None, s3, guard)
        total = _total_of(r.headers.get("Content-Range")) if r.status_code == 206 else None
        final = r.url
        with open(dest, "wb") as f:
            n = _copy_http(r, f, shown)
        return n, total, final

    n, total, final = retry(first)
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
            r = _http_get(session, final, shown, part_headers, (start, end), s3, guard)
            if r.status_code != 206:
                r.close()
                raise StagingError(
                    f"input {shown}: asked for bytes {start}-{end}, got HTTP {r.status_code}"
                )
            with open(dest, "r+b") as f:
                f.seek(start)
                got = _copy_http(r, f, shown)
            if got != end - start + 1:
                raise Transient(
                    f"input {shown}: part at {start} is {got} bytes, expected {end - start + 1}"
                )

        retry(attempt)

    run_parts(parts, one, range(n, total, PART_SIZE))
    return total


# -- the job's whole list ---------------------------------------------------------------------


def _bare(url: str) -> dict[str, Any]:
    """The plan for a bare URL: a user's, staged under its own name."""
    try:
        return {"url": url, "name": staged_name(url)}
    except NoFileNameError as e:
        raise StagingError(f"input {e}") from None


def stage_inputs(
    inputs: list[str] | list[dict[str, Any]],
    workdir: Path,
    dispatch_headers: dict[str, str] | None = None,
) -> dict[str, int]:
    """Download every input into ``workdir``, several at once; returns sizes by file name.

    ``inputs`` are the server's plan for them: ``{"url", "name", "fetch",
    "auth", "s3", "allow_networks", "error"}``. ``fetch`` (if given) is the
    service's URL to download from instead (presigned, or the runner API with
    ``auth == "dispatch"``; ``s3`` words an S3 endpoint's failures); without
    it, ``url`` is the user's and is fetched through a :class:`Guard` that
    lets it reach only global addresses and ``allow_networks``. ``error``: the
    server refused the input at claim. Bare URLs are users' URLs, allowed no
    network. The first failure (in input order) is raised; the others are
    abandoned.
    """
    plan = [_bare(i) if isinstance(i, str) else i for i in inputs]
    if not plan:
        return {}
    dests = [resolve_inside(workdir, item["name"], "input name") for item in plan]
    sizes: dict[str, int] = {}
    guard = Guard()
    with (
        http_session() as session,
        guarded_session(guard) as users,
        ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="kotta-in") as files,
        ThreadPoolExecutor(PART_WORKERS, thread_name_prefix="kotta-in-part") as parts,
    ):

        def one(i: int) -> int:
            item, dest = plan[i], dests[i]
            url = item["url"]
            shown = shown_url(url)
            if item.get("error"):
                raise StagingError(item["error"])
            fetch = item.get("fetch")
            scheme = urlparse(fetch or url).scheme
            if scheme not in ("http", "https"):
                if scheme == "s3":
                    raise StagingError(
                        f"input {shown}: s3:// inputs outside the service's store are fetched "
                        "only by a URL the server presigned for a granted bucket; workers hold "
                        "no S3 credentials"
                    )
                raise StagingError(
                    f"input {shown}: unsupported scheme {scheme!r}; use http://, https:// or s3://"
                )
            try:
                if fetch:  # the service's own URL
                    headers = dispatch_headers if item.get("auth") == "dispatch" else None
                    s3 = S3Target(**item["s3"]) if item.get("s3") else None
                    return fetch_http(
                        fetch, dest, session, shown=shown, headers=headers or {}, parts=parts,
                        s3=s3,
                    )  # fmt: skip
                allowed = networks(item.get("allow_networks"))
                return fetch_http(
                    url, dest, users, shown=shown, parts=parts, guard=(guard, allowed)
                )
            except Transient as e:
                raise StagingError(str(e)) from None

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
