"""Waiting for many jobs: ``as_completed`` (each as it ends) and ``gather`` (all, in order).

Both take ``KottaJob`` futures and the ``CallFuture`` of ``Kotta.map`` (one per
call; the calls of one job end together).

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
    from .mapping import CallFuture

    #: What gather and as_completed wait for: jobs, or the futures of ``Kotta.map`` calls.
    Waitable = KottaJob | CallFuture

#: Least seconds between two polls while more than one job is waited for; more for many
#: jobs (each poll makes the server read every job still waited for), up to POLL_GAP_MAX_S.
POLL_GAP_S = 0.2
POLL_GAP_MAX_S = 2.0
IDS_PER_S = 1000
#: Ids in one poll, at most (the server's limit).
MAX_IDS = 10_000
ERRORS = ("raise", "return")
ON_ERROR = ("leave", "cancel")


def _job_of(item: Waitable) -> KottaJob:
    """The job itself, or the job holding a ``Kotta.map`` call (a ``CallFuture``)."""
    return getattr(item, "job", item)


def _status(item: Waitable) -> str:
    """The status last seen of a job, or of the job holding a ``Kotta.map`` call."""
    return _job_of(item).last_status


def _ends(
    konn: Kotta, jobs: list[Waitable], timeout: float | None
) -> Iterator[tuple[Waitable, str]]:
    """Each job as it ends, with its status: those already ended first (in order), then in
    the order they end (the futures of one ``Kotta.map`` job together)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting: dict[str, list[Waitable]] = {}
    for job in jobs:
        if job.done():
            yield job, _status(job)
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
            # Once per job object: the calls of a Kotta.map job share one, and its record
            # carries all their results (decoding it once per call was quadratic).
            for job in {id(_job_of(w)): w for w in waiting[info["id"]]}.values():
                job.apply_record(info, konn)
            if info["status"] in d.TERMINAL_STATUSES:
                ended.append((info.get("ended_at") or 0, info["id"], info["status"]))
        for _, job_id, status in sorted(ended):
            for job in waiting.pop(job_id):
                yield job, status


def as_completed(
    konn: Kotta, jobs: Iterable[Waitable], timeout: float | None = None, progress: bool = False
) -> Iterator[Waitable]:
    """Yield each job as it ends (see ``Kotta.as_completed``)."""
    jobs = list(jobs)
    with cancel_on_interrupt(konn, jobs), Progress(len(jobs), progress) as bar:
        for job, status in _ends(konn, jobs, timeout):
            bar.ended(status != d.COMPLETED)
            yield job


def gather(
    konn: Kotta,
    jobs: Iterable[Waitable],
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
    places: dict[int, list[int]] = {}  # the same job may be given twice
    for i, job in enumerate(jobs):
        places.setdefault(id(job), []).append(i)
    out: list[Any] = [None] * len(jobs)
    with cancel_on_interrupt(konn, jobs), Progress(len(jobs), progress) as bar:
        for job, _ in _ends(konn, jobs, timeout):
            # Read as each ends (its small result came along): a call of a Kotta.map job
            # that completed may still have raised, and fail-fast must see that too.
            try:
                value: Any = job.get_results(konn)
                failed = False
            except Exception as e:
                if errors == "raise":
                    bar.ended(True)
                    if on_error == "cancel":
                        n = _cancel_rest(konn, jobs)
                        e.add_note(f"gather cancelled the {n} other job(s) still running")
                    raise
                value, failed = e, True
            bar.ended(failed)
            for i in places[id(job)]:
                out[i] = value
    return out


def _cancel_rest(konn: Kotta, jobs: list[Waitable]) -> int:
    n = 0
    live = dict.fromkeys(j.job_id for j in jobs if j.job_id and not j.done())
    for job_id in live:
        try:
            konn.cancel_job(job_id)  # type: ignore[arg-type]
            n += 1
        except (ConflictError, NotFoundError):
            pass  # it ended meanwhile
        except KottaError:
            pass  # best effort: the job's error being raised matters more
    return n
