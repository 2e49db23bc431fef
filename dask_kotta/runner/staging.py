"""Move a job's files: inputs into its working directory, outputs out to the object store.

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

Outputs go where the server's upload plan says: straight to S3 by presigned
PUT (in parallel parts for a large file), or through the server on a local
store. The same code sends a client's ``Kotta.upload_file``.

Every failure raises ``StagingError`` naming the URL or output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter

from ..errors import KottaError, UnsafePathError
from ..paths import resolve_inside
from .api import LostJob

#: Size of each read from the network and write to disk.
CHUNK = 512 * 1024
#: An object larger than this is fetched as parallel ranges of this size.
PART_SIZE = 8 * 1024 * 1024
#: Files moved at once, and parts of one large file moved at once.
FILE_WORKERS = 8
PART_WORKERS = 10
#: Outputs all this small and all sent through the server (a local store) are sent one after
#: another from the calling thread: the usual case, STDOUT and STDERR of a short job.
INLINE_BYTES = 1024 * 1024
#: Connect timeout, in seconds.
CONNECT_TIMEOUT_S = 10.0
#: Tries of one HTTP request that failed transiently (connection error, timeout, 5xx).
ATTEMPTS = 3
_TRANSIENT_STATUS = {500, 502, 503, 504}


def read_timeout_s() -> float:
    """Longest silence on a transfer's socket before it is given up, in seconds.

    ``DASK_KOTTA_STAGING_TIMEOUT_S`` on the workers; 60 s by default.
    """
    try:
        return float(os.environ.get("DASK_KOTTA_STAGING_TIMEOUT_S", "60"))
    except ValueError:
        return 60.0


class StagingError(KottaError):
    """An input could not be fetched or an output could not be stored; the message says which."""


def basename(url: str) -> str:
    """The file name an input URL is staged under."""
    return posixpath.basename(urlparse(url).path.rstrip("/"))


_QUERY = re.compile(r"\?[^\s'\")]+")


def _scrub(e: object) -> str:
    """An error's text without URL queries: they can hold a presigned URL's signature."""
    return _QUERY.sub("", str(e))


def _where(url: str) -> str:
    """A URL without its query: presigned URLs carry a signature that must not reach a log."""
    p = urlparse(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


def http_session() -> requests.Session:
    """A session with a connection pool wide enough for parallel parts and files.

    Without proxy variables or a ~/.netrc, it skips requests' per-request look
    at the environment for them: a sixth of the CPU of fetching a small file.
    """
    s = requests.Session()
    if (
        not any(k.lower().endswith("_proxy") for k in os.environ)
        and not Path("~/.netrc").expanduser().exists()
    ):
        s.trust_env = False
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=FILE_WORKERS * PART_WORKERS + 4)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


class _Transient(Exception):
    """A failure worth another try; ``str`` is the reason if tries run out."""


def _retry(fn: Callable[[], Any], attempts: int = ATTEMPTS) -> Any:
    delay = 0.5
    for i in range(attempts):
        try:
            return fn()
        except _Transient:
            if i == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 3
    raise AssertionError("unreachable")


# -- inputs: HTTP(S) --------------------------------------------------------------------------


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


def _run_parts(pool: ThreadPoolExecutor | None, fn: Callable[[Any], Any], items) -> list[Any]:
    """``fn`` over ``items`` in ``pool`` (or a fresh one); the first failure is raised."""
    own = pool is None
    pool = pool or ThreadPoolExecutor(PART_WORKERS, thread_name_prefix="kotta-part")
    try:
        futures = [pool.submit(fn, item) for item in items]
        wait(futures, return_when="FIRST_EXCEPTION")
        for fut in futures:
            if fut.done() and fut.exception() is not None:
                for other in futures:
                    other.cancel()
                raise fut.exception()
        return [fut.result() for fut in futures]
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


# -- inputs: S3 -------------------------------------------------------------------------------

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
    from ..store.s3 import presigner

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


# -- inputs: the job's whole list -------------------------------------------------------------


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


# -- uploads (runner outputs, client uploads) -------------------------------------------------


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
