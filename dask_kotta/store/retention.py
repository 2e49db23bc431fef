"""Deleting ended jobs: the user's own, on request, and everyone's once they expire.

A job's record, its history and its objects (payload, logs, outputs, result) go
together. The rows go first, in one transaction (the small objects kept in the
database, ``blobs.py``, among them): a crash before the objects are
removed leaves objects no job names (space, not a wrong answer), never a job
whose files are missing.

A job expires its keep time after it ended: its own (``keep_days`` of its spec,
kept as ``jobs.keep_s`` in seconds) or, when it names none, the server's
``--keep``; 0 keeps it for ever. The server's ``--max-keep``, when set, bounds
every keep time, for ever included.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa

from .. import defaults as d
from .objects import ObjectStore, job_prefix
from .schema import job_events, job_objects, jobs


class Retention:
    """The deletions of the job database (``JobStore`` exposes them)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def delete_ended(
        self, job_ids: Sequence[str], owner: int | None = None
    ) -> list[tuple[str, int]]:
        """Delete the ended ones of ``job_ids`` (only ``owner``'s when given), with their history.

        Returns ``(job id, owner)`` of each job deleted; a job still pending or
        running, another user's or unknown is left alone (and not returned).
        """
        if not job_ids:
            return []
        ended = jobs.c.status.in_(d.TERMINAL_STATUSES)
        with self.engine.begin() as c:
            q = sa.select(jobs.c.id, jobs.c.owner).where(jobs.c.id.in_(list(job_ids)), ended)
            if owner is not None:
                q = q.where(jobs.c.owner == owner)
            rows = c.execute(q).all()
            ids = [r.id for r in rows]
            if ids:
                # History and small objects first: they refer to the job (a foreign key
                # SQLite enforces here). The objects go with the rows, in this transaction.
                c.execute(job_events.delete().where(job_events.c.job_id.in_(ids)))
                c.execute(job_objects.delete().where(job_objects.c.job_id.in_(ids)))
                c.execute(jobs.delete().where(jobs.c.id.in_(ids), ended))
            return [(r.id, r.owner) for r in rows]

    def expired(
        self, now: float, default_s: float, max_s: float | None = None, limit: int = 500
    ) -> list[str]:
        """Ids of the ended jobs past their keep time at ``now`` (a Unix time), oldest first.

        A job is kept for its own ``keep_s`` when it has one, else for ``default_s``
        (the server's ``--keep``); 0 keeps it for ever. ``max_s`` (the server's
        ``--max-keep``), when given, bounds every keep time, for ever included.
        """
        ended, keep = jobs.c.ended_at, jobs.c.keep_s
        due = [sa.and_(keep > 0, ended < now - keep)]
        if default_s > 0:
            due.append(sa.and_(keep.is_(None), ended < now - default_s))
        if max_s:
            due.append(ended < now - max_s)
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.status.in_(d.TERMINAL_STATUSES), sa.or_(*due))
                .order_by(ended)
                .limit(limit)
            )
            return [r.id for r in rows]


def delete_jobs(
    retention: Retention, objects: ObjectStore, job_ids: Sequence[str], owner: int | None = None
) -> list[str]:
    """Delete ended jobs and their objects; returns the ids deleted (see ``delete_ended``)."""
    deleted = retention.delete_ended(job_ids, owner)
    # The rows of small objects went with the jobs' own transaction: only the object store's
    # files are left to delete (no statement per job for rows that are gone).
    files = getattr(objects, "inner", objects)
    for job_id, job_owner in deleted:
        files.delete_prefix(job_prefix(job_owner, job_id))
    return [job_id for job_id, _ in deleted]


def sweep(
    retention: Retention,
    objects: ObjectStore,
    keep_s: float,
    now: float | None = None,
    max_keep_s: float | None = None,
) -> int:
    """Delete every job past its keep time; returns how many.

    ``keep_s`` is the keep time of jobs that name none (0: for ever); a job's own
    (``keep_days`` of its spec, 0: for ever) wins over it, and ``max_keep_s`` bounds
    both (see :meth:`Retention.expired`).
    """
    now = time.time() if now is None else now
    total = 0
    while ids := retention.expired(now, keep_s, max_keep_s):
        total += len(delete_jobs(retention, objects, ids))
    # And uploads nobody finished: a presigned part URL lives 6 h, so a day is long dead.
    objects.abort_stale_uploads(d.STALE_UPLOAD_S)
    return total
