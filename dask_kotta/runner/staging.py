"""What fetching inputs and uploading outputs share: sessions, timeouts, retries, parts, errors.

``stage_in`` fetches a job's inputs into its working directory; ``stage_out``
uploads its outputs (and a client's ``Kotta.upload_file``). Both use one
HTTP session factory, the same connect and read timeouts, the same retry of
transient failures, and ``StagingError``, the one error either raises, with
a message naming the URL or output.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter

from ..errors import KottaError

#: Size of each read from the network and write to disk.
CHUNK = 512 * 1024
#: Files moved at once, and parts of one large file moved at once.
FILE_WORKERS = 8
PART_WORKERS = 10
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


def _retry(fn: Callable[[], Any], attempts: int | None = None) -> Any:
    attempts = attempts or ATTEMPTS  # read per call, so a test (or an embedder) can lower it
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
