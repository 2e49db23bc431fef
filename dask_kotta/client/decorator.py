"""``@kottajob``: run a Python function as a Kotta job."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .connection import Kotta
from .job import KottaJob


def kottajob(
    konn: Kotta,
    queue: str,
    walltime: float | str,
    block: bool = True,
    requirements: str | None = None,
    retries: int = 0,
    keep_days: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a function run on Kotta.

    ``@kottajob(konn, 'Test', 5)`` runs each call on queue ``Test`` with a
    walltime of 5 minutes (fractions allowed: ``0.1`` is 6 s; or ``'HH:MM:SS'``). With
    ``block=True`` (default) a call waits and returns the function's value, or
    raises its exception with the remote traceback; with ``block=False`` it
    returns a ``KottaJob`` future. ``requirements`` is requirements.txt text;
    ``retries`` runs a failed call again up to that many times. ``keep_days``
    is how long each call's job (record, outputs, result) is kept after it ends
    (fractions allowed; ``0``: for ever; ``None``: the server's ``--keep``).

    The decorated function also takes ``inputs='url, url'`` (staged into its
    working directory before it runs) and ``outputs='a.csv, b.csv'`` (uploaded
    after it returns).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(
            *args: Any, inputs: str | None = None, outputs: str | None = None, **kwargs: Any
        ) -> Any:
            job = KottaJob(
                jobtype="python",
                jobname=getattr(fn, "__name__", "function"),
                queue=queue,
                walltime=walltime,
                inputs=inputs or "",
                outputs=outputs or "",
                requirements=requirements,
                retries=retries,
                keep_days=keep_days,
            ).with_call(fn, *args, **kwargs)
            job.submit(konn)
            if block:
                return job.get_results(konn)
            return job

        return call

    return decorate
