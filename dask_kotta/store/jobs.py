"""The job store: users, tokens, jobs and their status history.

It is the queue and the source of truth. This module holds what users drive
(submission, reads, cancel); the transitions of a job's attempts, each one
guarded statement so the lifecycle only moves forward, are an
:class:`~.attempts.Attempts` the store holds as ``store.attempts``.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .. import defaults as d
from . import listing
from .attempts import Attempts, move
from .blobs import Blobs
from .migrate import prepare
from .retention import Retention
from .schema import job_events, job_row, jobs, server_keys, tokens, users


def private_sqlite_file(path: str | Path) -> None:
    """Make a SQLite file (made if missing) and its -wal/-shm files readable by the owner only.

    The database holds token hashes, dispatch-token hashes and every user's jobs. SQLite
    creates it 0644 minus the umask and gives -wal/-shm the database file's mode, so the
    file is made here with 0600 first, and an older, looser one is tightened.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)
        except FileNotFoundError:
            pass


def engine_for(url_or_path: str) -> sa.Engine:
    """An engine for a SQLAlchemy URL, or for a SQLite file path (WAL mode, mode 0600)."""
    if url_or_path.startswith("sqlite:///") and url_or_path != "sqlite:///:memory:":
        private_sqlite_file(url_or_path.removeprefix("sqlite:///").partition("?")[0])
    elif "://" not in url_or_path:
        private_sqlite_file(url_or_path)
        url_or_path = f"sqlite:///{url_or_path}"
    if url_or_path.startswith("sqlite"):
        engine = sa.create_engine(
            url_or_path, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
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

    def __init__(self, url_or_path: str, upgrade: bool = False):
        """Open the store, making its tables in a new database.

        A database made before migrations is stamped; one at an older schema revision is
        upgraded if ``upgrade``, else refused (:class:`~dask_kotta.errors.SchemaError`
        names the command), and so is one newer than this code (:mod:`.migrate`).
        """
        self.engine = engine_for(url_or_path)
        try:
            prepare(self.engine.url, upgrade=upgrade)
        except BaseException:
            self.engine.dispose()
            raise
        #: The attempts' transitions: dispatch, claim, heartbeat, phases, end, requeue.
        self.attempts = Attempts(self.engine)
        # The server calls them on the store itself.
        a = self.attempts
        self.dispatch, self.claim, self.claim_next = a.dispatch, a.claim, a.claim_next
        self.runner_job, self.pending_count, self.expired = a.runner_job, a.pending_count, a.expired
        self.running_on = a.running_on
        self.renew, self.heartbeat, self.advance = a.renew, a.heartbeat, a.advance
        self.finish_many, self.requeue_or_fail = a.finish_many, a.requeue_or_fail
        self.fail_pending, self.extend_leases = a.fail_pending, a.extend_leases
        #: Deleting ended jobs (``retention.py``).
        self.retention = Retention(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- users and tokens ---------------------------------------------------------------

    def get_or_create_user(self, name: str) -> int:
        with self.engine.begin() as c:
            uid = c.execute(sa.select(users.c.id).where(users.c.name == name)).scalar()
            if uid is None:
                key = c.execute(
                    users.insert().values(name=name, created_at=time.time())
                ).inserted_primary_key
                assert key is not None  # a one-row INSERT always reports its key
                uid = key[0]
            return int(uid)

    def set_admin(self, name: str, admin: bool = True) -> None:
        """Make user ``name`` (made if new) an admin, or no longer one."""
        uid = self.get_or_create_user(name)
        with self.engine.begin() as c:
            c.execute(users.update().where(users.c.id == uid).values(admin=admin))

    def add_token(
        self, user_id: int, token_hash: str, label: str | None = None,
        expires_at: float | None = None,
    ) -> None:  # fmt: skip
        """Keep a new token's hash for ``user_id``; it works until ``expires_at`` (None: always)."""
        with self.engine.begin() as c:
            c.execute(
                tokens.insert().values(
                    token_hash=token_hash, user_id=user_id, created_at=time.time(),
                    label=label, expires_at=expires_at,
                )
            )  # fmt: skip

    def list_tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every token (of ``user``), oldest first: ``id`` (the first 12 hex digits of its
        hash, which names it without being it), ``user``, ``created_at``, ``label`` and
        ``expires_at`` (None: never)."""
        query = sa.select(
            tokens.c.token_hash, users.c.name, tokens.c.created_at, tokens.c.label,
            tokens.c.expires_at,
        ).join(users, tokens.c.user_id == users.c.id)  # fmt: skip
        if user is not None:
            query = query.where(users.c.name == user)
        with self.engine.connect() as c:
            rows = c.execute(query.order_by(tokens.c.created_at)).all()
        return [{"id": h[:12], "user": name, "created_at": at, "label": label, "expires_at": exp}
                for h, name, at, label, exp in rows]  # fmt: skip

    def revoke_token(self, token_id: str) -> builtins.list[str]:
        """Delete the token whose id (its hash) starts with ``token_id``, if exactly one does.

        Returns the names of the users of the tokens that matched: one name, that token
        deleted; none or several, nothing deleted. ``ValueError`` if ``token_id`` is not
        8 or more hex digits (a shorter prefix would name too many tokens).
        """
        token_id = token_id.strip().lower()
        if len(token_id) < 8 or not all(ch in "0123456789abcdef" for ch in token_id):
            raise ValueError(f"{token_id!r} is not a token id (8 or more hex digits, as listed)")
        with self.engine.begin() as c:
            found = c.execute(
                sa.select(tokens.c.token_hash, users.c.name)
                .join(users, tokens.c.user_id == users.c.id)
                .where(tokens.c.token_hash.startswith(token_id, autoescape=True))
                .limit(2)
            ).all()
            if len(found) == 1:
                c.execute(tokens.delete().where(tokens.c.token_hash == found[0][0]))
        return [str(name) for _, name in found]

    def user_for_token(self, token_hash: str) -> dict[str, Any] | None:
        """``{id, name, admin, expires_at}`` of the token's user, or None: unknown, or expired."""
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(users.c.id, users.c.name, users.c.admin, tokens.c.expires_at)
                .join(tokens, tokens.c.user_id == users.c.id)
                .where(tokens.c.token_hash == token_hash)
            ).first()
        if row is None or (row.expires_at is not None and row.expires_at <= time.time()):
            return None
        return dict(row._mapping)

    def server_key(self, name: str) -> str:
        """The secret ``name`` that every server of this database shares (64 hex digits),
        made by the first one that asks."""
        query = sa.select(server_keys.c.value).where(server_keys.c.name == name)
        with self.engine.connect() as c:
            value = c.execute(query).scalar()
        if value is not None:
            return str(value)
        try:
            with self.engine.begin() as c:
                made = secrets.token_hex(32)
                c.execute(
                    server_keys.insert().values(name=name, value=made, created_at=time.time())
                )
                return made
        except sa.exc.IntegrityError:  # another server made it a moment ago: theirs holds
            with self.engine.connect() as c:
                return str(c.execute(query).scalar_one())

    def queue_counts(self, owner: int) -> dict[str, dict[str, int]]:
        """``owner``'s jobs per queue: ``running`` (being staged, run or staged out) and
        ``pending``; queues where it has none are left out."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(jobs.c.queue, jobs.c.status, sa.func.count())
                .where(jobs.c.owner == owner, jobs.c.status.in_((d.PENDING, *d.ACTIVE_STATUSES)))
                .group_by(jobs.c.queue, jobs.c.status)
            ).all()
        out: dict[str, dict[str, int]] = {}
        for queue, status, n in rows:
            mine = out.setdefault(queue, {"running": 0, "pending": 0})
            mine["pending" if status == d.PENDING else "running"] += n
        return out

    # -- submission ----------------------------------------------------------------------

    def insert_jobs(
        self,
        owner: int,
        specs: list[dict[str, Any]],
        before_commit: Callable[[list[tuple[dict[str, Any], bool]]], list[dict] | None]
        | None = None,
    ) -> list[tuple[dict[str, Any], bool]]:
        """Insert jobs in one transaction; returns ``(job, created)`` per spec.

        A spec whose ``idempotency_key`` was used before by the same owner returns
        the job made the first time, with ``created=False``. ``before_commit``
        gets that list before the jobs become visible (the server writes their
        payloads there, so no runner can claim a job whose payload is missing);
        if it raises, no job is made. It may return rows of small objects
        (``blobs.Blobs.rows``), written in the same transaction.
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
                old.update({r.idempotency_key: job_row(r) for r in rows})
            new_rows, new_events = [], []
            for n, spec in enumerate(specs):
                key = spec.pop("idempotency_key", None)
                if key and key in old:
                    out.append((old[key], False))
                    continue
                job_id = secrets.token_hex(8)
                keep_days = spec.pop("keep_days", None)
                resubmit_of = spec.pop("resubmit_of", None)
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
                    keep_s=None if keep_days is None else float(keep_days) * 86400,
                    resubmit_of=resubmit_of,
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
                Blobs.write(c, before_commit(out) or [])
        return out

    # -- reads --------------------------------------------------------------------------

    def get(self, job_id: str, owner: int | None = None) -> dict[str, Any] | None:
        q = sa.select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as c:
            return job_row(c.execute(q).first())

    def get_many(self, job_ids: Iterable[str], owner: int | None = None) -> list[dict[str, Any]]:
        q = sa.select(jobs).where(jobs.c.id.in_(list(job_ids)))
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as c:
            res = c.execute(q)
            keys = list(res.keys())
            return [job_row(r, keys) for r in res.all()]

    def list(self, owner: int, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` of ``owner``'s jobs, newest first (``status``: a filter as
        :func:`.listing.parse_statuses` reads it)."""
        return self.page(owner, limit, listing.parse_statuses(status))[0]

    def page(
        self, owner: int, limit: int, statuses: tuple[str, ...] = (), queue: str | None = None,
        name: str | None = None, before: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:  # fmt: skip
        """A page of ``owner``'s jobs newest first and the next page's cursor (see
        :func:`.listing.page`)."""
        return listing.page(self.engine, owner, limit, statuses, queue, name, before)

    def status_counts(self, owner: int) -> dict[str, int]:
        """``owner``'s jobs per status."""
        return listing.status_counts(self.engine, owner)

    def queue_load(self, queues: Iterable[str]) -> dict[str, dict[str, int]]:
        """Every user's jobs in each of ``queues``: ``busy`` and ``pending``."""
        return listing.queue_load(self.engine, queues)

    def positions(self, owner: int, found: Iterable[dict[str, Any]]) -> dict[str, int]:
        """The place in its queue of each of ``owner``'s pending jobs in ``found``."""
        return listing.positions(self.engine, owner, found)

    # `list` is a method from here on: the annotations below name the builtin.
    def events(self, job_id: str) -> builtins.list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(job_events.c.status, job_events.c.at, job_events.c.detail)
                .where(job_events.c.job_id == job_id)
                .order_by(job_events.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def pending(self) -> builtins.list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(jobs).where(jobs.c.status == d.PENDING).order_by(jobs.c.submitted_at)
            )
            return [job_row(r) for r in rows]

    def cancel(self, job_id: str, owner: int) -> bool:
        """Cancel a pending or running job of ``owner``; False if it already ended."""
        with self.engine.begin() as c:
            return move(
                c,
                job_id,
                [jobs.c.owner == owner, jobs.c.status.in_((d.PENDING, *d.ACTIVE_STATUSES))],
                d.CANCELLED,
                detail="cancelled by user",
                reason="cancelled by user",
                ended_at=time.time(),
                lease_until=None,
            )
