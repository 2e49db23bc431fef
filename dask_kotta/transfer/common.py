"""What every transfer shares: sessions, timeouts, retries, parallel parts, one error.

The runner fetches a job's inputs (``runner/stage_in.py``) and uploads its
outputs (``runner/stage_out.py``); a client uploads a file
(``Kotta.upload_file``). All use one HTTP session factory, the same connect
and read timeouts, the same retry of transient failures, and
``StagingError``, the one error any of them raises, with a message naming
the URL or file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

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
#: HTTP statuses worth another try.
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


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


class Transient(Exception):
    """A failure worth another try; ``str`` is the reason if tries run out."""


def retry(fn: Callable[[], Any], attempts: int | None = None) -> Any:
    """``fn()``, called again after a short, growing pause each time it raises ``Transient``.

    The last ``Transient`` is raised when ``attempts`` (default :data:`ATTEMPTS`) run out.
    """
    attempts = attempts or ATTEMPTS  # read per call, so a test (or an embedder) can lower it
    delay = 0.5
    for i in range(attempts):
        try:
            return fn()
        except Transient:
            if i == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 3
    raise AssertionError("unreachable")


def run_parts(pool: ThreadPoolExecutor | None, fn: Callable[[Any], Any], items) -> list[Any]:
    """``fn`` over ``items`` in ``pool`` (or a fresh one); the first failure is raised."""
    own = pool is None
    pool = pool or ThreadPoolExecutor(PART_WORKERS, thread_name_prefix="kotta-part")
    try:
        futures = [pool.submit(fn, item) for item in items]
        wait(futures, return_when="FIRST_EXCEPTION")
        for fut in futures:
            error = fut.exception() if fut.done() else None
            if error is not None:
                for other in futures:
                    other.cancel()
                raise error
        return [fut.result() for fut in futures]
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
