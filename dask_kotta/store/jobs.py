"""The job store: users, tokens, jobs and their status history.

It is the queue and the source of truth. Every status change is one guarded
statement (``UPDATE ... WHERE id = :id AND status IN (...) AND attempt = ...``),
so the lifecycle can only move forward and a stale runner cannot overwrite the
work of the current one: a guard that matches no row answers ``False``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .. import defaults as d
from .schema import job_events, jobs, metadata, tokens, users

# Runner-reported phases may only follow each other in this order.
_FORWARD = {
    d.PROCESSING: (d.STAGING_INPUTS,),
    d.STAGING_OUTPUTS: (d.STAGING_INPUTS, d.PROCESSING),
}


# The hot statements of slots (claim, finish), built once: building and caching an
# expression per call cost more than running it.
_b = sa.bindparam
_CLAIMABLE = (
    sa.select(jobs.c.id, jobs.c.attempt)
    .where(jobs.c.status == d.PENDING, jobs.c.queue == _b("b_queue"))
    .order_by(jobs.c.submitted_at, jobs.c.id)
    .limit(_b("b_n"))
)
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
        ended_at=_b("ended_at"), lease_until=None,
    )
)  # fmt: skip
_BY_IDS = sa.select(jobs).where(jobs.c.id.in_(_b("b_ids", expanding=True)))


def _row(row: sa.Row | None, keys: list[str] | None = None) -> dict[str, Any] | None:
    if row is None:
        return None
    # zip with keys read once per result: a row's own mapping builds its key view every time
    job = dict(zip(keys, row, strict=True)) if keys is not None else dict(row._mapping)
    if "spec" in job:
        job["spec"] = json.loads(job["spec"])
    if "outputs" in job:
        job["outputs"] = json.loads(job["outputs"])
    return job


def engine_for(url_or_path: str) -> sa.Engine:
    """An engine for a SQLAlchemy URL, or for a SQLite file path (WAL mode)."""
    if "://" not in url_or_path:
        Path(url_or_path).parent.mkdir(parents=True, exist_ok=True)
        url_or_path = f"sqlite:///{url_or_path}"
    if url_or_path.startswith("sqlite"):
        engine = sa.create_engine(
            url_or_path, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL survives a process crash; only an OS crash can lose the last commits.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(url_or_path, pool_pre_ping=True)


class JobStore:
    """All reads and writes of the job database, one method per statement."""

    def __init__(self, url_or_path: str):
        self.engine = engine_for(url_or_path)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- users and tokens ---------------------------------------------------------------

    def get_or_create_user(self, name: str) -> int:
        with self.engine.begin() as c:
            uid = c.execute(sa.select(users.c.id).where(users.c.name == name)).scalar()
            if uid is None:
                uid = c.execute(
                    users.insert().values(name=name, created_at=time.time())
                ).inserted_primary_key[0]
            return int(uid)

    def add_token(self, user_id: int, token_hash: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                tokens.insert().values(
                    token_hash=token_hash, user_id=user_id, created_at=time.time()
                )
            )

    def user_for_token(self, token_hash: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(users.c.id, users.c.name)
                .join(tokens, tokens.c.user_id == users.c.id)
                .where(tokens.c.token_hash == token_hash)
            ).first()
        return dict(row._mapping) if row else None

    # -- submission ----------------------------------------------------------------------

    def insert_jobs(
        self,
        owner: int,
        specs: list[dict[str, Any]],
        before_commit: Callable[[list[tuple[dict[str, Any], bool]]], None] | None = None,
    ) -> list[tuple[dict[str, Any], bool]]:
        """Insert jobs in one transaction; returns ``(job, created)`` per spec.

        A spec whose ``idempotency_key`` was used before by the same owner returns
        the job made the first time, with ``created=False``. ``before_commit``
        gets that list before the jobs become visible (the server writes their
        payloads there, so no runner can claim a job whose payload is missing);
        if it raises, no job is made.
        """
        out: list[tuple[dict[str, Any], bool]] = []
        now = time.time()
        keys = [k for k in (spec.get("idempotency_key") for spec in specs) if k]
        with self.engine.begin() as c:
            # One look-up for every key and one multi-row insert per table: a batch of
            # thousands costs a few statements, not three per job.
            old: dict[str, dict[str, Any]] = {}
            for i in range(0, len(keys), 500):
                rows = c.execute(
                    sa.select(jobs).where(
                        jobs.c.owner == owner, jobs.c.idempotency_key.in_(keys[i : i + 500])
                    )
                ).all()
                old.update({r.idempotency_key: _row(r) for r in rows})
            new_rows, new_events = [], []
            for n, spec in enumerate(specs):
                key = spec.pop("idempotency_key", None)
                if key and key in old:
                    out.append((old[key], False))
                    continue
                job_id = secrets.token_hex(8)
                values = dict(
                    id=job_id,
                    owner=owner,
                    name=spec.pop("name", "") or "",
                    jobtype=spec.pop("jobtype"),
                    queue=spec.pop("queue"),
                    walltime_min=float(spec.pop("walltime_min")),
                    retries=int(spec.pop("retries", 0) or 0),
                    status=d.PENDING,
                    reason="",
                    traceback="",
                    spec=json.dumps(spec),
                    idempotency_key=key,
                    # A microsecond apart: jobs run in the order they were sent (oldest first).
                    submitted_at=now + n * 1e-6,
                    outputs="[]",
                    has_result=False,
                    worker="",
                    attempt=0,
                    failures=0,
                    requeues=0,
                    dispatch_hash=None,
                    lease_until=None,
                    started_at=None,
                    ended_at=None,
                    t_stage_in=None,
                    t_run=None,
                    t_stage_out=None,
                )
                if key:
                    old[key] = values  # the same key twice in one batch makes one job
                new_rows.append(dict(values))
                new_events.append(dict(job_id=job_id, status=d.PENDING, at=now, detail=""))
                values["spec"] = spec
                values["outputs"] = []
                out.append((values, True))
            if new_rows:
                c.execute(jobs.insert(), new_rows)
                c.execute(job_events.insert(), new_events)
            if before_commit is not None:
                before_commit(out)
        return out

    # -- reads --------------------------------------------------------------------------

    def get(self, job_id: str, owner: int | None = None) -> dict[str, Any] | None:
        q = sa.select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as c:
            return _row(c.execute(q).first())

    def get_many(self, job_ids: Iterable[str], owner: int | None = None) -> list[dict[str, Any]]:
        q = sa.select(jobs).where(jobs.c.id.in_(list(job_ids)))
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as c:
            res = c.execute(q)
            keys = list(res.keys())
            return [_row(r, keys) for r in res.all()]

    def list(self, owner: int, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(jobs).where(jobs.c.owner == owner)
        if status:
            q = q.where(jobs.c.status == status)
        q = q.order_by(jobs.c.submitted_at.desc(), jobs.c.id).limit(limit)
        with self.engine.connect() as c:
            res = c.execute(q)
            keys = list(res.keys())
            return [_row(r, keys) for r in res.all()]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(job_events.c.status, job_events.c.at, job_events.c.detail)
                .where(job_events.c.job_id == job_id)
                .order_by(job_events.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def pending(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(jobs).where(jobs.c.status == d.PENDING).order_by(jobs.c.submitted_at)
            )
            return [_row(r) for r in rows]

    def expired(self, now: float) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(jobs.c.id, jobs.c.attempt, jobs.c.requeues).where(
                    jobs.c.status.in_(d.ACTIVE_STATUSES), jobs.c.lease_until < now
                )
            )
            return [dict(r._mapping) for r in rows]

    # -- transitions --------------------------------------------------------------------

    def _move(
        self,
        c: sa.Connection,
        job_id: str,
        where: list,
        status: str,
        detail: str = "",
        at: float | None = None,
        **values,
    ) -> bool:
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
                .values(attempt=attempt + 1, dispatch_hash=dispatch_hash)
            )
            return attempt + 1 if res.rowcount == 1 else None

    def claim(
        self, job_id: str, attempt: int, dispatch_hash: str, lease_s: float, worker: str
    ) -> dict | None:
        """Take the lease of a pending job for one attempt; None if someone else holds it."""
        now = time.time()
        with self.engine.begin() as c:
            ok = self._move(
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
            return _row(c.execute(sa.select(jobs).where(jobs.c.id == job_id)).first())

    def claim_next(
        self, queue: str, dispatch_hashes: list[str], lease_s: float, worker: str
    ) -> list[dict[str, Any]]:
        """Start the next attempts of the oldest pending jobs of ``queue`` and take their leases.

        This is the slots' dispatch: a few statements for up to
        ``len(dispatch_hashes)`` jobs (job ``i`` gets hash ``i``) instead of a
        dask task per job. The guard on ``status`` and ``attempt`` makes a
        concurrent claim of the same job (another server process) match no
        row; that job is skipped. Returns the claimed jobs, oldest first.
        """
        if not dispatch_hashes:
            return []
        now = time.time()
        with self.engine.begin() as c:
            rows = c.execute(_CLAIMABLE, {"b_queue": queue, "b_n": len(dispatch_hashes)}).all()
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
            by_id = {r.id: _row(r) for r in c.execute(_BY_IDS, {"b_ids": claimed}).all()}
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
        return _row(row)

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
            return self._move(
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

    def finish(
        self,
        job_id: str,
        attempt: int,
        dispatch_hash: str,
        ok: bool,
        reason: str,
        traceback: str,
        timings: dict[str, float | None],
        outputs: list[dict[str, Any]],
        has_result: bool,
        retry_if_failed: bool,
        phases: list[tuple[str, float]] = (),
    ) -> str | None:
        """Record an attempt's end. A failure with retries left goes back to pending.

        ``phases`` are ``(status, at)`` the runner passed without reporting them
        (a short job's ``processing`` and ``staging_outputs``): they are recorded
        first, in the same transaction, so the history stays complete and forward.
        Returns the new status, or None if this attempt no longer holds the job.
        """
        report = dict(
            job_id=job_id, attempt=attempt, dispatch_hash=dispatch_hash, ok=ok, reason=reason,
            traceback=traceback, timings=timings, outputs=outputs, has_result=has_result,
            retry=retry_if_failed, phases=phases,
        )  # fmt: skip
        ended = self.finish_many([report])[0]
        return ended["status"] if ended else None

    def finish_many(
        self,
        reports: list[dict[str, Any]],
        before: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any] | None]:
        """:meth:`finish` for many attempts in one transaction (a slot's batch of ends).

        Each report holds :meth:`finish`'s arguments by name (``retry_if_failed``
        as ``retry``). ``before(job, report)`` is called for each attempt that
        still holds its job, before its end is written (the server stores the
        attempt's inline files there, so a completed job's files exist). Returns,
        per report, the job's ``id``, ``owner``, ``queue``, ``name``, ``jobtype``,
        ``submitted_at``, new ``status``, ``reason`` and ``ended_at``; None
        where the attempt no longer holds its job.
        """
        now = time.time()
        out: list[dict[str, Any] | None] = []
        with self.engine.begin() as c:
            ids = list({r["job_id"] for r in reports})
            held = {row.id: row for row in c.execute(_ENDING, {"b_ids": ids}).all()}
            events: list[dict[str, Any]] = []
            for r in reports:
                row = held.get(r["job_id"])
                if (
                    row is None
                    or row.status not in d.ACTIVE_STATUSES
                    or (row.attempt, row.dispatch_hash) != (r["attempt"], r["dispatch_hash"])
                ):
                    out.append(None)
                    continue
                if before is not None:
                    before(dict(row._mapping), r)
                ended = self._end(c, row, r, now, events)
                if ended is not None:
                    held.pop(row.id)  # the same attempt reported twice in one batch: once
                out.append(ended)
            if events:
                c.execute(job_events.insert(), events)
        return out

    @staticmethod
    def _end(
        c: sa.Connection, row: sa.Row, r: dict[str, Any], now: float, events: list[dict]
    ) -> dict[str, Any] | None:
        reason = r["reason"][:4000]
        if r["ok"]:
            status, failures, ended_at, detail = d.COMPLETED, row.failures, now, ""
        elif r["retry"] and row.failures < row.retries:
            status, failures, ended_at = d.PENDING, row.failures + 1, None
            detail = f"retrying after: {reason[:200]}"
        else:
            status, failures, ended_at, detail = d.FAILED, row.failures + 1, now, reason[:200]
        timings = r["timings"]
        values = dict(
            b_id=row.id, b_seen=row.status, b_attempt=row.attempt, b_hash=row.dispatch_hash,
            status=status, reason=reason, traceback=r["traceback"][-100_000:],
            t_stage_in=timings.get("stage_in"), t_run=timings.get("run"),
            t_stage_out=timings.get("stage_out"), outputs=json.dumps(r["outputs"]),
            has_result=r["has_result"], failures=failures, ended_at=ended_at,
        )  # fmt: skip
        if c.execute(_END, values).rowcount != 1:
            return None  # changed since it was read (cancelled meanwhile)
        # The phases it passed without reporting, if still ahead of where the job was.
        current = row.status
        for phase, at in r["phases"]:
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
            if self._move(
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
            if self._move(
                c, job_id, guard, d.FAILED, detail=full, reason=full, ended_at=now, lease_until=None
            ):
                return d.FAILED
        return None

    def fail_pending(self, job_id: str, attempt: int, reason: str) -> bool:
        """Fail a job whose dispatch could not run at all (e.g. no worker has its queue)."""
        with self.engine.begin() as c:
            return self._move(
                c,
                job_id,
                [jobs.c.status.in_((d.PENDING, *d.ACTIVE_STATUSES)), jobs.c.attempt == attempt],
                d.FAILED,
                detail=reason[:200],
                reason=reason,
                ended_at=time.time(),
                lease_until=None,
            )

    def cancel(self, job_id: str, owner: int) -> bool:
        with self.engine.begin() as c:
            return self._move(
                c,
                job_id,
                [jobs.c.owner == owner, jobs.c.status.in_((d.PENDING, *d.ACTIVE_STATUSES))],
                d.CANCELLED,
                detail="cancelled by user",
                reason="cancelled by user",
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
