"""Waiting for many jobs: ``as_completed`` (each as it ends) and ``gather`` (all, in order).

Both long-poll ``POST /api/v1/jobs/wait`` for *any* of the jobs still running,
asking only for the ended ones' records (``ended_only``), with small results
riding along, and drop the ended ones from the next poll: each record and
result crosses the wire once. Polls for a batch are at least ``POLL_GAP_S``
apart (up to ``POLL_GAP_MAX_S`` for thousands of jobs), so jobs ending by the
thousand cost a few requests a second, not one per job; a single job's end is
seen at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import defaults as d
from ..errors import ConflictError, JobTimeoutError, KottaError, NotFoundError
from .interrupt import cancel_on_interrupt
from .progress import Progress

if TYPE_CHECKING:
    from .connection import Kotta
    from .job import KottaJob

#: Least seconds between two polls while more than one job is waited for; more for many
#: jobs (each poll makes the server read every job still waited for), up to POLL_GAP_MAX_S.
POLL_GAP_S = 0.2
POLL_GAP_MAX_S = 2.0
IDS_PER_S = 1000
#: Ids in one poll, at most (the server's limit).
MAX_IDS = 10_000
ERRORS = ("raise", "return")
ON_ERROR = ("leave", "cancel")


def _ends(konn: Kotta, jobs: list[KottaJob], timeout: float | None) -> Iterator[KottaJob]:
    """Each job as it ends: those already ended first (in order), then in the order they end."""
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting: dict[str, list[KottaJob]] = {}
    for job in jobs:
        if job.done():
            yield job
        else:
            waiting.setdefault(job.require_id(), []).append(job)
    last = -POLL_GAP_S
    while waiting:
        now = time.monotonic()
        left = d.LONGPOLL_MAX_S if deadline is None else deadline - now
        if left <= 0:
            raise JobTimeoutError(
                f"{len(waiting)} job(s) did not end within {timeout} s", next(iter(waiting))
            )
        gap = min(POLL_GAP_MAX_S, max(POLL_GAP_S, len(waiting) / IDS_PER_S))
        if len(waiting) > 1 and now - last < gap:
            time.sleep(min(gap - (now - last), left))
            continue
        ids = list(waiting)[:MAX_IDS]
        r = konn._long_poll(
            min(left, d.LONGPOLL_MAX_S),
            lambda h, ids=ids: konn.request(
                "POST", "/api/v1/jobs/wait", timeout=konn.timeout + h, retry=False,
                json={"ids": ids, "timeout": h, "all": False, "results": True,
                      "ended_only": True},
            ),
        ).json()  # fmt: skip
        last = time.monotonic()
        results = r.get("results", {})
        ended = []
        for info in r["jobs"]:
            if info["id"] in results:
                info["result"] = results[info["id"]]
            for job in waiting[info["id"]]:
                job.apply_record(info, konn)
            if info["status"] in d.TERMINAL_STATUSES:
                ended.append((info.get("ended_at") or 0, info["id"]))
        for _, job_id in sorted(ended):
            yield from waiting.pop(job_id)


def as_completed(
    konn: Kotta, jobs: Iterable[KottaJob], timeout: float | None = None, progress: bool = False
) -> Iterator[KottaJob]:
    """Yield each job as it ends (see ``Kotta.as_completed``)."""
    jobs = list(jobs)
    with cancel_on_interrupt(konn, jobs), Progress(len(jobs), progress) as bar:
        for job in _ends(konn, jobs, timeout):
            bar.ended(job.last_status != d.COMPLETED)
            yield job


def gather(
    konn: Kotta,
    jobs: Iterable[KottaJob],
    timeout: float | None = None,
    errors: str = "raise",
    progress: bool = False,
    on_error: str = "leave",
) -> list[Any]:
    """The jobs' results, in order (see ``Kotta.gather``)."""
    if errors not in ERRORS:
        raise ValueError(f"errors={errors!r}: expected one of {', '.join(map(repr, ERRORS))}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(map(repr, ON_ERROR))}")
    jobs = list(jobs)
    with cancel_on_interrupt(konn, jobs), Progress(len(jobs), progress) as bar:
        for job in _ends(konn, jobs, timeout):
            failed = job.last_status != d.COMPLETED
            bar.ended(failed)
            if failed and errors == "raise":
                try:
                    job.get_results(konn)
                except Exception as e:
                    if on_error == "cancel":
                        n = _cancel_rest(konn, jobs)
                        e.add_note(f"gather cancelled the {n} other job(s) still running")
                    raise
    out: list[Any] = []
    for job in jobs:
        try:
            out.append(job.get_results(konn))
        except Exception as e:
            if errors != "return":
                raise
            out.append(e)
    return out


def _cancel_rest(konn: Kotta, jobs: list[KottaJob]) -> int:
    n = 0
    for job in jobs:
        if job.job_id and not job.done():
            try:
                konn.cancel_job(job.job_id)
                n += 1
            except (ConflictError, NotFoundError):
                pass  # it ended meanwhile
            except KottaError:
                pass  # best effort: the job's error being raised matters more
    return n
