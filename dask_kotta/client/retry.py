"""Riding through a server restart: which failures to retry, how long, and how often.

A restart of the Kotta server takes several seconds (6-12 s for ``up``), during which
connections are refused or reset; a server whose job database is unreachable answers
503 with a ``Retry-After``. A call that is safe to repeat (``Kotta.request`` decides
which: reads, the wait long polls, cancels, submits whose specs all carry an idempotency
key) is retried on those failures with capped exponential backoff and jitter, for a
window that starts at the first failure. When the window is over, the last error is
raised, its message saying how long the client kept trying.

The window is 60 s unless the connection says otherwise (``Kotta(creds, retry_window=...)``)
or the environment does (``DASK_KOTTA_RETRY_WINDOW_S``); 0 turns retrying off.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .. import defaults as d
from ..errors import APIError, ConfigError, KottaError, ServerUnavailableError, error_for_status

T = TypeVar("T")

#: HTTP statuses that mean "not now": a proxy without its upstream, a server that cannot serve.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Environment variable that sets the retry window of connections made without ``retry_window``.
WINDOW_ENV = "DASK_KOTTA_RETRY_WINDOW_S"


def window_s(explicit: float | None = None) -> float:
    """The retry window in seconds: ``explicit`` if given, else the environment's, else 60."""
    if explicit is not None:
        value: object = explicit
        source = "retry_window"
    else:
        value = os.environ.get(WINDOW_ENV, "").strip() or d.RETRY_WINDOW_S
        source = WINDOW_ENV
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{source} must be a number of seconds, got {value!r}") from None
    if not seconds >= 0:  # also refuses NaN
        raise ConfigError(f"{source} must be >= 0 seconds, got {value!r}")
    return seconds


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait, or None when absent or unreadable.

    The header is either delta-seconds (``"5"``) or an HTTP date, read against
    ``now`` (wall-clock seconds; the current time when not given). A date in the past is 0.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_transient(error: BaseException) -> bool:
    """True for a failure a restart explains: the server unreachable, or a 502/503/504."""
    if isinstance(error, ServerUnavailableError):
        return True
    return isinstance(error, APIError) and error.status in RETRY_STATUSES


@dataclass
class RetryPolicy:
    """Retries a call on transient failures for ``window_s`` seconds after the first one.

    Pauses grow from ``first_s``, doubling up to ``cap_s``, each drawn between half
    and all of that ("equal jitter": clients restarted together do not come back in step);
    a 503's ``Retry-After`` lengthens a pause to what the server asked. No pause runs
    past the window: the last attempt is made when the window closes. ``clock``,
    ``sleep`` and ``rand`` are there for tests.
    """

    window_s: float = d.RETRY_WINDOW_S
    first_s: float = 0.1
    cap_s: float = 2.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    rand: Callable[[], float] = field(default=random.random, repr=False)

    def backoff(self, n: int) -> float:
        """The pause after the ``n``-th failure (0-based), before any ``Retry-After``."""
        base = min(self.cap_s, self.first_s * 2 ** min(n, 32))
        return base / 2 + self.rand() * base / 2

    def pause(self, n: int, retry_after: float | None) -> float:
        """The pause after the ``n``-th failure, at least what the server asked for."""
        wait = self.backoff(n)
        return wait if retry_after is None else max(wait, retry_after)

    def run(self, attempt: Callable[[], T]) -> T:
        """``attempt()``'s value, retrying its transient failures until the window closes."""
        first: float | None = None
        n = 0
        while True:
            try:
                return attempt()
            except KottaError as e:
                if not is_transient(e) or self.window_s <= 0:
                    raise
                now = self.clock()
                first = now if first is None else first
                left = first + self.window_s - now
                if left <= 0:
                    raise _gave_up(e, now - first) from None
                retry_after = e.retry_after if isinstance(e, APIError) else None
                self.sleep(min(self.pause(n, retry_after), left))
                n += 1


def _gave_up(error: KottaError, tried_s: float) -> KottaError:
    """The last error, its message saying for how long the client tried."""
    note = f"(kept trying for {tried_s:.1f} s)"
    if isinstance(error, APIError):
        return error_for_status(error.status, f"{error.detail} {note}")
    return ServerUnavailableError(f"{error} {note}")
