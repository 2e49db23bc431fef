"""Tables of the job store, in SQLAlchemy Core, portable to SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any, overload

import sqlalchemy as sa

from .. import defaults

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    # May issue, list and revoke every user's tokens through the server (revision 0004).
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Only the SHA-256 of a token is kept; the token itself exists in the user's credentials file.
tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # What it is for, and when it stops working (epoch seconds; NULL: never). Revision 0003.
    sa.Column("label", sa.String(128), nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("name", sa.String(256), nullable=False, default=""),
    sa.Column("jobtype", sa.String(16), nullable=False),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("walltime_min", sa.Float, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("traceback", sa.Text, nullable=False, default=""),
    # JSON text: inputs, outputs, script, executable, requirements, client versions...
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("requeues", sa.Integer, nullable=False, default=0),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("dispatch_hash", sa.String(64), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("t_stage_in", sa.Float, nullable=True),
    sa.Column("t_run", sa.Float, nullable=True),
    sa.Column("t_stage_out", sa.Float, nullable=True),
    # JSON text: list of {"name", "size"} uploaded by the runner.
    sa.Column("outputs", sa.Text, nullable=False, default="[]"),
    sa.Column("has_result", sa.Boolean, nullable=False, default=False),
    sa.Column("worker", sa.String(256), nullable=False, default=""),
    # Seconds the job is kept after it ends (revision 0002): NULL follows the server's --keep,
    # 0 keeps it for ever. Last, where Alembic's add_column puts it on an upgraded database.
    sa.Column("keep_s", sa.Float, nullable=True),
    # The job this one runs again (``POST /jobs/{id}/resubmit``, revision 0005); NULL for a
    # job submitted as new. No foreign key: the old job may be deleted before its rerun.
    sa.Column("resubmit_of", sa.String(32), nullable=True),
    sa.CheckConstraint(
        "status IN ({})".format(", ".join(f"'{s}'" for s in defaults.SERVER_STATUSES)),
        name="jobs_status_valid",
    ),
    sa.UniqueConstraint("owner", "idempotency_key", name="jobs_idempotency"),
)
sa.Index("jobs_owner_submitted", jobs.c.owner, jobs.c.submitted_at)
sa.Index("jobs_status", jobs.c.status)
# The sweep walks ended jobs oldest first (revision 0002).
sa.Index("jobs_ended", jobs.c.ended_at)
# A claim reads a queue's pending jobs by user, oldest first, and counts its running ones
# by user (fair share, revision 0003).
sa.Index("jobs_queue_status", jobs.c.queue, jobs.c.status, jobs.c.owner, jobs.c.submitted_at)

# Secrets the servers of one store share (revision 0005): ``links`` signs download links, so
# a link made by one server opens on any other of the same database.
server_keys = sa.Table(
    "server_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# A job's small objects (payload, result, STDOUT/STDERR, outputs up to ``blobs.SMALL_MAX``
# bytes), kept in the database instead of one object each (revision 0006): writing, reading
# and deleting a row costs a fraction of a file or an S3 request. ``key`` is the object's key
# in the object store (``u<owner>/<job id>/<name>``), so that every reader finds it by the
# same key; the job's rows go with the job (``retention.py``).
job_objects = sa.Table(
    "job_objects",
    metadata,
    sa.Column("key", sa.String(1100), primary_key=True),
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)


@overload
def job_row(row: sa.Row, keys: list[str] | None = None) -> dict[str, Any]: ...
@overload
def job_row(row: None, keys: list[str] | None = None) -> None: ...
@overload
def job_row(row: sa.Row | None, keys: list[str] | None = None) -> dict[str, Any] | None: ...


def job_row(row: sa.Row | None, keys: list[str] | None = None) -> dict[str, Any] | None:
    """A job row as a dict, with its JSON columns decoded."""
    if row is None:
        return None
    # zip with keys read once per result: a row's own mapping builds its key view every time
    job = dict(zip(keys, row, strict=True)) if keys is not None else dict(row._mapping)
    if "spec" in job:
        job["spec"] = json.loads(job["spec"])
    if "outputs" in job:
        job["outputs"] = json.loads(job["outputs"])
    return job
