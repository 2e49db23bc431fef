"""Reads for listing jobs: pages by cursor, counts per status, queue load, queue positions.

A page is ordered newest first by ``(submitted_at, id)`` and continues after a cursor that
names the last job shown, so a job submitted between two pages never shifts the next one
(it is newer than every job the cursor leads to). Each statement is a range of an existing
index: ``jobs_owner_submitted`` for pages and counts, ``jobs_queue_status`` for queue load
and positions; no schema change was needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .. import defaults as d
from ..errors import InvalidRequestError
from .schema import job_row, jobs

#: ``status=running`` in a filter: every status of a job that holds a slot.
RUNNING = "running"


def parse_statuses(text: str | None) -> tuple[str, ...]:
    """The statuses a ``status=`` filter names: a comma list, ``running`` standing for
    the active ones. ``InvalidRequestError`` names an unknown one."""
    if not text:
        return ()
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == RUNNING:
            out += d.ACTIVE_STATUSES
        elif part in d.SERVER_STATUSES:
            out.append(part)
        else:
            raise InvalidRequestError(
                f"status: unknown status {part!r}; use {', '.join(d.SERVER_STATUSES)} or "
                f"{RUNNING!r}, or several separated by commas"
            )
    return tuple(dict.fromkeys(out))


def encode_cursor(job: dict[str, Any]) -> str:
    """The cursor after ``job``: its submit time (exact, as hex) and id."""
    return f"{float(job['submitted_at']).hex()}~{job['id']}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``(submitted_at, id)`` of a cursor from :func:`encode_cursor`."""
    at, sep, job_id = cursor.partition("~")
    try:
        when = float.fromhex(at)
    except ValueError:
        when = math.nan
    if not sep or not job_id or not math.isfinite(when) or len(job_id) > 32:
        raise InvalidRequestError(
            f"before: {cursor[:80]!r} is not a cursor; pass the 'next' of an earlier page"
        )
    return when, job_id


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def page(
    engine: sa.Engine,
    owner: int,
    limit: int,
    statuses: Sequence[str] = (),
    queue: str | None = None,
    name: str | None = None,
    before: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` of ``owner``'s jobs newest first, and the cursor of the next page
    (None: this is the last)."""
    q = sa.select(jobs).where(jobs.c.owner == owner)
    if statuses:
        q = q.where(jobs.c.status.in_(statuses))
    if queue:
        q = q.where(jobs.c.queue == queue)
    if name:
        q = q.where(jobs.c.name.like(f"%{_like_escaped(name)}%", escape="\\"))
    if before:
        at, job_id = decode_cursor(before)
        q = q.where(
            sa.or_(
                jobs.c.submitted_at < at,
                sa.and_(jobs.c.submitted_at == at, jobs.c.id < job_id),
            )
        )
    q = q.order_by(jobs.c.submitted_at.desc(), jobs.c.id.desc()).limit(limit + 1)
    with engine.connect() as c:
        res = c.execute(q)
        keys = list(res.keys())
        found = [job_row(r, keys) for r in res.all()]
    more = len(found) > limit
    found = found[:limit]
    return found, encode_cursor(found[-1]) if more and found else None


def status_counts(engine: sa.Engine, owner: int) -> dict[str, int]:
    """``owner``'s jobs per status, every status named (0 where none)."""
    with engine.connect() as c:
        rows = c.execute(
            sa.select(jobs.c.status, sa.func.count())
            .where(jobs.c.owner == owner)
            .group_by(jobs.c.status)
        ).all()
    out = dict.fromkeys(d.SERVER_STATUSES, 0)
    out.update({status: int(n) for status, n in rows})
    return out


def queue_load(engine: sa.Engine, queues: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per queue, every user's jobs ``busy`` (holding a slot) and ``pending``."""
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as c:
        for queue in queues:
            # One queue at a time: a range of jobs_queue_status, counted in the index (with
            # every queue at once SQLite walked jobs_status and read each row: 300 ms behind
            # 100,000 pending jobs, against 25 ms).
            rows = c.execute(
                sa.select(jobs.c.status, sa.func.count())
                .where(jobs.c.queue == queue, jobs.c.status.in_((d.PENDING, *d.ACTIVE_STATUSES)))
                .group_by(jobs.c.status)
            ).all()
            load = out[queue] = {"busy": 0, "pending": 0}
            for status, n in rows:
                load["pending" if status == d.PENDING else "busy"] += int(n)
    return out


@dataclass(frozen=True)
class _Waiting:
    """A queue's claim order as fair share sees it now (``store/attempts.py``)."""

    running: dict[int, int]  # owner -> jobs holding a slot
    pending: dict[int, int]  # owner -> pending jobs


def _waiting(c: sa.Connection, queue: str) -> _Waiting:
    rows = c.execute(
        sa.select(jobs.c.owner, jobs.c.status, sa.func.count())
        .where(jobs.c.queue == queue, jobs.c.status.in_((d.PENDING, *d.ACTIVE_STATUSES)))
        .group_by(jobs.c.owner, jobs.c.status)
    ).all()
    running: dict[int, int] = {}
    pending: dict[int, int] = {}
    for owner, status, n in rows:
        into = pending if status == d.PENDING else running
        into[owner] = into.get(owner, 0) + int(n)
    return _Waiting(running, pending)


def _ordered_pending(
    c: sa.Connection, queue: str, owner: int, first: int, count: int
) -> list[tuple[float, str]]:
    """``(submitted_at, id)`` of ``owner``'s pending jobs in ``queue`` ranked ``first``
    (1-based) to ``first + count - 1``, oldest first."""
    rows = c.execute(
        sa.select(jobs.c.submitted_at, jobs.c.id)
        .where(jobs.c.queue == queue, jobs.c.status == d.PENDING, jobs.c.owner == owner)
        # Not by id too: the index (jobs_queue_status) ends at submitted_at, and one user's
        # jobs never share a submit time (a batch's are a microsecond apart).
        .order_by(jobs.c.submitted_at)
        .offset(first - 1)
        .limit(count)
    ).all()
    return [(float(at), str(i)) for at, i in rows]


def positions(engine: sa.Engine, owner: int, pending: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Each pending job's place in its queue's claim order (1: the next claimed).

    Fair share ranks the k-th oldest pending job of a user with r jobs running as r + k,
    ties to the older job; a job's place is one more than the pending jobs ranked before
    it. Per queue this reads the per-user counts and, of each other waiting user, only the
    jobs whose rank could tie with the jobs asked about.
    """
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for job in pending:
        if job["owner"] == owner and job["status"] == d.PENDING:
            by_queue.setdefault(job["queue"], []).append(job)
    out: dict[str, int] = {}
    with engine.connect() as c:
        for queue, mine in by_queue.items():
            w = _waiting(c, queue)
            # Each asked job's rank among its owner's pending ones: the older ones counted
            # up to the oldest asked, then those between the oldest and newest asked read.
            keys = {(float(j["submitted_at"]), j["id"]) for j in mine}
            lo, hi = min(keys), max(keys)
            # Ranges of submitted_at alone, which the index holds; ties broken here by id.
            mine_q = (jobs.c.queue == queue, jobs.c.status == d.PENDING, jobs.c.owner == owner)
            older = c.execute(
                sa.select(sa.func.count()).where(*mine_q, jobs.c.submitted_at < lo[0])
            ).scalar_one()
            between = sorted(
                (float(at), str(i))
                for at, i in c.execute(
                    sa.select(jobs.c.submitted_at, jobs.c.id).where(
                        *mine_q, jobs.c.submitted_at >= lo[0], jobs.c.submitted_at <= hi[0]
                    )
                )
            )
            k_of = {key: older + n for n, key in enumerate(between, 1)}
            keys = {k for k in keys if k in k_of}  # claimed meanwhile: no place
            if not keys:
                continue
            rank = {key: w.running.get(owner, 0) + k_of[key] for key in keys}
            before = {key: k_of[key] - 1 for key in keys}  # the owner's own older jobs
            for other, n_pending in w.pending.items():
                if other == owner:
                    continue
                r = w.running.get(other, 0)
                # Jobs of `other` ranked strictly lower: its first (rank - r - 1) pending.
                for key in keys:
                    before[key] += min(n_pending, max(0, rank[key] - r - 1))
                # A tie in rank goes to the older job: read the few jobs that can tie.
                tie_lo = max(1, min(rank.values()) - r)
                tie_hi = min(n_pending, max(rank.values()) - r)
                if tie_hi < tie_lo:
                    continue
                ties = _ordered_pending(c, queue, other, tie_lo, tie_hi - tie_lo + 1)
                for key in keys:
                    t = rank[key] - r - tie_lo
                    if 0 <= t < len(ties) and ties[t] < key:
                        before[key] += 1
            for key in keys:
                out[key[1]] = before[key] + 1
    return out
