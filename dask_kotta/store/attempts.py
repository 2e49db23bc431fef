"""The attempt lifecycle of a job: dispatch, claim, heartbeat, phases, end, requeue.

Every status change is one guarded statement (``UPDATE ... WHERE id = :id AND
status IN (...) AND attempt = ... AND dispatch_hash = ...``), so the lifecycle
only moves forward and a stale runner (an older attempt, or one whose job was
cancelled) cannot overwrite the work of the current one: a guard that matches
no row answers ``False`` or ``None``.

:class:`Attempts` holds these transitions over a database engine; the
:class:`~dask_kotta.store.jobs.JobStore` makes one on its own engine
(``store.attempts``) for what runners and the server's dispatch drive.
:func:`move` is the guarded step every status change is made of (the
store's ``cancel`` included): one ``UPDATE`` that must match exactly one row,
and the event that records it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .. import defaults as d
from .blobs import Blobs
from .schema import job_events, job_row, jobs


@dataclass(frozen=True)
class EndReport:
    """How one attempt ended, as :meth:`Attempts.finish_many` records it.

    It names its attempt (``job_id``, ``attempt``, ``dispatch_hash``) and says
    how it ended. ``retry``: a failure with retries left goes back to pending.
    ``requeue``: the attempt was lost to the runner's side (its fork server
    died), so the job goes back to pending while it has requeues left, as for a
    lost worker, instead of spending a retry. ``phases``: ``(status, at)`` the
    runner passed without reporting them (a short job's ``processing`` and
    ``staging_outputs``), recorded first so the history stays complete and
    forward. ``timings`` has ``stage_in``, ``run`` and ``stage_out``.
    """

    job_id: str
    attempt: int
    dispatch_hash: str
    ok: bool
    reason: str = ""
    traceback: str = ""
    timings: Mapping[str, float | None] = field(default_factory=dict)
    outputs: Sequence[Mapping[str, Any]] = ()
    has_result: bool = False
    retry: bool = True
    requeue: bool = False
    phases: Sequence[tuple[str, float]] = ()


# Where an attempt's end is taken: running, or pending after the job was taken back from it.
_ENDABLE = (*d.ACTIVE_STATUSES, d.PENDING)

# Runner-reported phases may only follow each other in this order.
_FORWARD = {
    d.PROCESSING: (d.STAGING_INPUTS,),
    d.STAGING_OUTPUTS: (d.STAGING_INPUTS, d.PROCESSING),
}


# The hot statements of slots (claim, finish), built once: building and caching an
# expression per call cost more than running it.
_b = sa.bindparam
# Fair share: the k-th oldest pending job of a user who has r jobs running in the queue
# comes in place r + k, ties to the older job. So a free slot goes to the user with the
# fewest running jobs, and one user's backlog delays another's job by about one job's run,
# where first-in-first-out made it wait behind the whole backlog. Each statement is a range
# of the index jobs_queue_status (revision 0003), so a claim costs the same behind 10 or
# 10,000 pending jobs.
_RUNNING = (
    sa.select(jobs.c.owner, sa.func.count().label("n"))
    .where(jobs.c.queue == _b("b_queue"), jobs.c.status.in_(d.ACTIVE_STATUSES))
    .group_by(jobs.c.owner)
)
_WAITING = (
    sa.select(jobs.c.owner)
    .where(jobs.c.queue == _b("b_queue"), jobs.c.status == d.PENDING)
    .group_by(jobs.c.owner)
    .limit(_b("b_n"))
)
_OLDEST = (
    sa.select(jobs.c.id, jobs.c.attempt, jobs.c.submitted_at)
    .where(jobs.c.queue == _b("b_queue"), jobs.c.status == d.PENDING, jobs.c.owner == _b("b_owner"))
    .order_by(jobs.c.submitted_at, jobs.c.id)
    .limit(_b("b_n"))
)  # fmt: skip
# The same order in one statement, for the rare queue with more users waiting than a claim
# asks queries for (it numbers every pending job: slower behind a long backlog).
_NUMBERED = sa.select(
    jobs.c.id, jobs.c.attempt, jobs.c.owner, jobs.c.submitted_at,
    sa.func.row_number().over(partition_by=jobs.c.owner,
                              order_by=(jobs.c.submitted_at, jobs.c.id)).label("k"),
).where(jobs.c.status == d.PENDING, jobs.c.queue == _b("b_queue")).subquery("numbered")  # fmt: skip
_RUNNING_SUB = _RUNNING.subquery("running")
_BY_SHARE = (
    sa.select(_NUMBERED.c.id, _NUMBERED.c.attempt)
    .select_from(_NUMBERED.outerjoin(_RUNNING_SUB, _RUNNING_SUB.c.owner == _NUMBERED.c.owner))
    .order_by(
        sa.func.coalesce(_RUNNING_SUB.c.n, 0) + _NUMBERED.c.k,
        _NUMBERED.c.submitted_at,
        _NUMBERED.c.id,
    )  # fmt: skip
    .limit(_b("b_n"))
)
#: Users waiting in a queue up to which a claim asks for each one's oldest jobs.
_FEW_USERS = 16


def _fair(c: sa.Connection, queue: str, n: int) -> list[Any]:
    """Up to ``n`` pending jobs of ``queue`` (rows: id, attempt), in fair-share order."""
    owners = [r.owner for r in c.execute(_WAITING, {"b_queue": queue, "b_n": _FEW_USERS + 1})]
    if len(owners) > _FEW_USERS:
        return list(c.execute(_BY_SHARE, {"b_queue": queue, "b_n": n}).all())
    running: dict[int, int] = {}
    if len(owners) > 1:
        running = {r.owner: r.n for r in c.execute(_RUNNING, {"b_queue": queue})}
    ranked = []
    for owner in owners:
        oldest = c.execute(_OLDEST, {"b_queue": queue, "b_owner": owner, "b_n": n}).all()
        ranked += [(running.get(owner, 0) + k, r.submitted_at, r.id, r)
                   for k, r in enumerate(oldest, 1)]  # fmt: skip
    ranked.sort(key=lambda x: x[:3])
    return [x[3] for x in ranked[:n]]


_CLAIM = (
    jobs.update()
    .where(jobs.c.id == _b("b_id"), jobs.c.status == d.PENDING, jobs.c.attempt == _b("b_was"))
    .values(
        status=d.STAGING_INPUTS, attempt=_b("attempt"), dispatch_hash=_b("dispatch_hash"),
        lease_until=_b("lease_until"), started_at=_b("started_at"), worker=_b("worker"),
    )
)  # fmt: skip
_ENDING = sa.select(
    jobs.c.id, jobs.c.owner, jobs.c.queue, jobs.c.name, jobs.c.jobtype, jobs.c.submitted_at,
    jobs.c.status, jobs.c.attempt, jobs.c.dispatch_hash, jobs.c.failures, jobs.c.retries,
    jobs.c.requeues, jobs.c.worker,
).where(jobs.c.id.in_(_b("b_ids", expanding=True)))  # fmt: skip
_END = (
    jobs.update()
    .where(
        jobs.c.id == _b("b_id"), jobs.c.status == _b("b_seen"), jobs.c.attempt == _b("b_attempt"),
        jobs.c.dispatch_hash == _b("b_hash"),
    )
    .values(
        status=_b("status"), reason=_b("reason"), traceback=_b("traceback"),
        t_stage_in=_b("t_stage_in"), t_run=_b("t_run"), t_stage_out=_b("t_stage_out"),
        outputs=_b("outputs"), has_result=_b("has_result"), failures=_b("failures"),
        requeues=_b("requeues"), ended_at=_b("ended_at"), lease_until=None,
        # An ended attempt's token is spent: the same end sent twice is recorded once.
        dispatch_hash=None,
    )
)  # fmt: skip
_BY_IDS = sa.select(jobs).where(jobs.c.id.in_(_b("b_ids", expanding=True)))


def move(
    c: sa.Connection,
    job_id: str,
    where: list[Any],
    status: str,
    detail: str = "",
    at: float | None = None,
    **values: Any,
) -> bool:
    """Move ``job_id`` to ``status`` if it matches ``where``, and record the event.

    False (and nothing written) if no row matched: the guard said the job is
    no longer where the caller thought.
    """
    res = c.execute(
        jobs.update().where(jobs.c.id == job_id, *where).values(status=status, **values)
    )
    if res.rowcount != 1:
        return False
    c.execute(
        job_events.insert().values(
            job_id=job_id, status=status, at=at or time.time(), detail=detail
        )
    )
    return True


class Attempts:
    """The transitions of jobs' attempts, each one guarded statement on ``engine``."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def expired(self, now: float) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(jobs.c.id, jobs.c.attempt, jobs.c.requeues).where(
                    jobs.c.status.in_(d.ACTIVE_STATUSES), jobs.c.lease_until < now
                )
            )
            return [dict(r._mapping) for r in rows]

    def running_on(self) -> list[dict[str, Any]]:
        """Active attempts whose runner said which dask worker it runs on (``HOST ADDRESS``)."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(jobs.c.id, jobs.c.attempt, jobs.c.worker).where(
                    jobs.c.status.in_(d.ACTIVE_STATUSES), jobs.c.worker.contains(" ")
                )
            )
            return [dict(r._mapping) for r in rows]

    def dispatch(self, job_id: str, dispatch_hash: str) -> int | None:
        """Start a new attempt of a pending job; returns its number, or None if not pending."""
        with self.engine.begin() as c:
            attempt = c.execute(
                sa.select(jobs.c.attempt).where(jobs.c.id == job_id, jobs.c.status == d.PENDING)
            ).scalar()
            if attempt is None:
                return None
            res = c.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == d.PENDING, jobs.c.attempt == attempt)
                # No worker until one claims it: an attempt nobody claimed cannot end the job.
                .values(attempt=attempt + 1, dispatch_hash=dispatch_hash, worker="")
            )
            return attempt + 1 if res.rowcount == 1 else None

    def claim(
        self, job_id: str, attempt: int, dispatch_hash: str, lease_s: float, worker: str
    ) -> dict | None:
        """Take the lease of a pending job for one attempt; None if someone else holds it."""
        now = time.time()
        with self.engine.begin() as c:
            ok = move(
                c,
                job_id,
                [
                    jobs.c.status == d.PENDING,
                    jobs.c.attempt == attempt,
                    jobs.c.dispatch_hash == dispatch_hash,
                ],
                d.STAGING_INPUTS,
                detail=f"attempt {attempt} on {worker}",
                lease_until=now + lease_s,
                started_at=now,
                worker=worker[:256],
            )
            if not ok:
                return None
            return job_row(c.execute(sa.select(jobs).where(jobs.c.id == job_id)).first())

    def claim_next(
        self, queue: str, dispatch_hashes: list[str], lease_s: float, worker: str
    ) -> list[dict[str, Any]]:
        """Start the next attempts of pending jobs of ``queue`` and take their leases.

        This is the slots' dispatch: a few statements for up to
        ``len(dispatch_hashes)`` jobs (job ``i`` gets hash ``i``) instead of a
        dask task per job. Which jobs: each user's oldest first, users by fair share
        (see ``_CLAIMABLE``). The guard on ``status`` and ``attempt`` makes a
        concurrent claim of the same job (another server process) match no
        row; that job is skipped. Returns the claimed jobs in that order.
        """
        if not dispatch_hashes:
            return []
        now = time.time()
        with self.engine.begin() as c:
            rows = _fair(c, queue, len(dispatch_hashes))
            claimed, events = [], []
            for row, dispatch_hash in zip(rows, dispatch_hashes, strict=False):
                attempt = row.attempt + 1
                values = dict(
                    b_id=row.id, b_was=row.attempt, attempt=attempt, dispatch_hash=dispatch_hash,
                    lease_until=now + lease_s, started_at=now, worker=worker[:256],
                )  # fmt: skip
                if c.execute(_CLAIM, values).rowcount == 1:
                    claimed.append(row.id)
                    events.append(dict(job_id=row.id, status=d.STAGING_INPUTS, at=now,
                                       detail=f"attempt {attempt} on {worker}"))  # fmt: skip
            if not claimed:
                return []
            c.execute(job_events.insert(), events)
            by_id = {r.id: job_row(r) for r in c.execute(_BY_IDS, {"b_ids": claimed}).all()}
        return [by_id[i] for i in claimed]

    def pending_count(self, queue: str, limit: int) -> int:
        """How many jobs of ``queue`` are pending, counting up to ``limit``."""
        with self.engine.connect() as c:
            ids = sa.select(jobs.c.id).where(jobs.c.status == d.PENDING, jobs.c.queue == queue)
            sub = ids.limit(limit).subquery()
            return int(c.execute(sa.select(sa.func.count()).select_from(sub)).scalar() or 0)

    def _runner_guard(self, attempt: int, dispatch_hash: str) -> list:
        return [
            jobs.c.status.in_(d.ACTIVE_STATUSES),
            jobs.c.attempt == attempt,
            jobs.c.dispatch_hash == dispatch_hash,
        ]

    def runner_job(self, job_id: str, attempt: int, dispatch_hash: str) -> dict[str, Any] | None:
        """The job, if this attempt's runner still holds it."""
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(jobs).where(
                    jobs.c.id == job_id, *self._runner_guard(attempt, dispatch_hash)
                )
            ).first()
        return job_row(row)

    def renew(self, attempts: list[tuple[str, int, str]], lease_s: float) -> list[str]:
        """Heartbeat many ``(job_id, attempt, dispatch_hash)`` at once; returns the lost ids.

        A slot renews the jobs it claimed and has not started yet this way, and
        learns which of them it must not start (cancelled, or requeued elsewhere).
        Two statements for any number of jobs: a slot sends its whole batch several
        times a second, and one update per job cost the server ~1 ms of CPU per job.
        """
        if not attempts:
            return []
        ids = [a[0] for a in attempts]
        asked = set(attempts)
        # A dispatch hash is one attempt's own (random): matching it matches id and attempt.
        active = [jobs.c.id.in_(ids), jobs.c.status.in_(d.ACTIVE_STATUSES),
                  jobs.c.dispatch_hash.in_([a[2] for a in attempts])]  # fmt: skip
        with self.engine.begin() as c:
            rows = c.execute(sa.select(jobs.c.id, jobs.c.attempt, jobs.c.dispatch_hash)
                             .where(*active))  # fmt: skip
            held = {r.id for r in rows if (r.id, r.attempt, r.dispatch_hash) in asked}
            if held:
                # Re-checked by the update itself: one cancelled since the select is not
                # renewed, and its runner learns it at its first heartbeat.
                c.execute(jobs.update().where(*active).values(lease_until=time.time() + lease_s))
        return [job_id for job_id in ids if job_id not in held]

    def heartbeat(self, job_id: str, attempt: int, dispatch_hash: str, lease_s: float) -> bool:
        with self.engine.begin() as c:
            res = c.execute(
                jobs.update()
                .where(jobs.c.id == job_id, *self._runner_guard(attempt, dispatch_hash))
                .values(lease_until=time.time() + lease_s)
            )
            return res.rowcount == 1

    def advance(
        self, job_id: str, attempt: int, dispatch_hash: str, status: str, lease_s: float
    ) -> bool:
        allowed = _FORWARD.get(status)
        if allowed is None:
            return False
        with self.engine.begin() as c:
            return move(
                c,
                job_id,
                [
                    jobs.c.status.in_(allowed),
                    jobs.c.attempt == attempt,
                    jobs.c.dispatch_hash == dispatch_hash,
                ],
                status,
                lease_until=time.time() + lease_s,
            )

    def finish_many(
        self,
        reports: Sequence[EndReport],
        before: Callable[[dict[str, Any], int], list[dict] | None] | None = None,
        max_requeues: int = d.MAX_REQUEUES,
    ) -> list[dict[str, Any] | None]:
        """Record the ends of attempts, one or a slot's batch, in one transaction.

        An attempt may end its job while it holds it, or *late*: after the job
        was taken back from it (its worker gone, its lease run out) and before
        another attempt claimed it (the job is pending with this attempt's
        number and token still). Then the job is not run again: the end a worker
        kept on disk while the server was away counts (``runner/outbox.py``).
        Recording an end spends the attempt's token, so an end is recorded once.

        ``before(job, i)`` is called for each attempt that still holds its job,
        before the end of ``reports[i]`` is written (the server stores the
        attempt's inline files there, so a completed job's files exist); it may return
        rows of small objects (``blobs.Blobs.rows``), written in the same transaction.
        Requeues spend ``max_requeues``, as for a lost worker.

        Returns, per report, the job's ``id``, ``owner``, ``queue``, ``name``,
        ``jobtype``, ``submitted_at``, new ``status``, ``reason`` and
        ``ended_at``; None where the attempt no longer holds its job.
        """
        now = time.time()
        out: list[dict[str, Any] | None] = []
        with self.engine.begin() as c:
            ids = list({r.job_id for r in reports})
            held = {row.id: row for row in c.execute(_ENDING, {"b_ids": ids}).all()}
            events: list[dict[str, Any]] = []
            for i, r in enumerate(reports):
                ended = None
                # A phase of this attempt (``advance``) may land between the read and the
                # guarded write: the write then matches nothing. Read again and retry: by
                # then this transaction writes, so nothing else moves the row (SQLite), or
                # the new status is read (PostgreSQL). An end is never dropped for a phase.
                for _ in range(3):
                    row = held.get(r.job_id)
                    if (
                        row is None
                        or row.status not in _ENDABLE
                        or (row.attempt, row.dispatch_hash) != (r.attempt, r.dispatch_hash)
                        # Pending: only an attempt that held the job (its claim named a
                        # worker; a dispatch that nobody claimed yet names none) may end it,
                        # and not by a requeue (it was taken back already: nothing to add).
                        or (row.status == d.PENDING and (not row.worker or r.requeue))
                    ):
                        break
                    if before is not None and (rows := before(dict(row._mapping), i)):
                        Blobs.write(c, rows)
                    ended = self._end(c, row, r, now, events, max_requeues)
                    if ended is not None:
                        held.pop(row.id)  # the same attempt reported twice in one batch: once
                        break
                    fresh = c.execute(_ENDING, {"b_ids": [r.job_id]}).first()
                    if fresh is None:
                        held.pop(r.job_id, None)
                    else:
                        held[r.job_id] = fresh
                out.append(ended)
            if events:
                c.execute(job_events.insert(), events)
        return out

    @staticmethod
    def _end(
        c: sa.Connection,
        row: sa.Row,
        r: EndReport,
        now: float,
        events: list[dict],
        max_requeues: int,
    ) -> dict[str, Any] | None:
        reason = r.reason[:4000]
        requeues = row.requeues
        if r.ok:
            status, failures, ended_at, detail = d.COMPLETED, row.failures, now, ""
        elif r.requeue and row.requeues < max_requeues:
            # Lost to the runner's side (its fork server died), not the job's own failure: it
            # spends the requeue budget of a lost worker, not the user's retries.
            status, failures, ended_at = d.PENDING, row.failures, None
            requeues, detail = row.requeues + 1, f"requeued: {reason[:200]}"
        elif r.requeue:
            reason = f"{reason} ({max_requeues} times; giving up)"
            status, failures, ended_at, detail = d.FAILED, row.failures, now, reason[:200]
        elif r.retry and row.failures < row.retries:
            status, failures, ended_at = d.PENDING, row.failures + 1, None
            detail = f"retrying after: {reason[:200]}"
        else:
            status, failures, ended_at, detail = d.FAILED, row.failures + 1, now, reason[:200]
        timings = r.timings
        values = dict(
            b_id=row.id, b_seen=row.status, b_attempt=row.attempt, b_hash=row.dispatch_hash,
            status=status, reason=reason, traceback=r.traceback[-100_000:],
            t_stage_in=timings.get("stage_in"), t_run=timings.get("run"),
            t_stage_out=timings.get("stage_out"), outputs=json.dumps(list(r.outputs)),
            has_result=r.has_result, failures=failures, requeues=requeues, ended_at=ended_at,
        )  # fmt: skip
        if c.execute(_END, values).rowcount != 1:
            return None  # changed since it was read (cancelled meanwhile)
        # The phases it passed without reporting, if still ahead of where the job was.
        current = row.status
        for phase, at in r.phases:
            if current in _FORWARD.get(phase, ()):
                events.append(dict(job_id=row.id, status=phase, at=min(at, now), detail=""))
                current = phase
        events.append(dict(job_id=row.id, status=status, at=now, detail=detail))
        return dict(
            id=row.id, owner=row.owner, queue=row.queue, name=row.name, jobtype=row.jobtype,
            submitted_at=row.submitted_at, status=status, reason=reason, ended_at=ended_at,
        )  # fmt: skip

    def requeue_or_fail(
        self, job_id: str, attempt: int, reason: str, max_requeues: int
    ) -> str | None:
        """Take a job back from a runner that stopped heart-beating."""
        now = time.time()
        with self.engine.begin() as c:
            guard = [jobs.c.status.in_(d.ACTIVE_STATUSES), jobs.c.attempt == attempt]
            if move(
                c,
                job_id,
                [*guard, jobs.c.requeues < max_requeues],
                d.PENDING,
                detail=f"requeued: {reason}",
                requeues=jobs.c.requeues + 1,
                lease_until=None,
            ):
                return d.PENDING
            full = f"{reason} ({max_requeues} times; giving up)"
            if move(
                c, job_id, guard, d.FAILED, detail=full, reason=full, ended_at=now, lease_until=None
            ):
                return d.FAILED
        return None

    def fail_pending(self, job_id: str, attempt: int, reason: str) -> bool:
        """Fail a job whose dispatch could not run at all (e.g. no worker has its queue)."""
        with self.engine.begin() as c:
            return move(
                c,
                job_id,
                [jobs.c.status.in_((d.PENDING, *d.ACTIVE_STATUSES)), jobs.c.attempt == attempt],
                d.FAILED,
                detail=reason[:200],
                reason=reason,
                ended_at=time.time(),
                lease_until=None,
            )

    def extend_leases(self, seconds: float) -> int:
        """Give every running job a fresh lease, so runners can reconnect after a restart."""
        with self.engine.begin() as c:
            res = c.execute(
                jobs.update()
                .where(jobs.c.status.in_(d.ACTIVE_STATUSES))
                .values(lease_until=time.time() + seconds)
            )
            return res.rowcount
