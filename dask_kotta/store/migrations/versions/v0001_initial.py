"""The schema of dask-kotta 0.1.0: users, tokens, jobs and their events.

Revision ID: 0001
Revises:
Create Date: 2025-12-01

Written out in full, not read from ``schema.py``: a revision is frozen once released,
while ``schema.py`` moves on. A database that 0.1.0 made with ``create_all`` holds
exactly these tables, and is stamped with this revision when it is first opened.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

#: The statuses of 0.1.0, spelt out: the constraint must not change with ``defaults``.
STATUSES = (
    "pending",
    "staging_inputs",
    "processing",
    "staging_outputs",
    "completed",
    "failed",
    "cancelled",
)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("jobtype", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("walltime_min", sa.Float, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("traceback", sa.Text, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("requeues", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("dispatch_hash", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("t_stage_in", sa.Float, nullable=True),
        sa.Column("t_run", sa.Float, nullable=True),
        sa.Column("t_stage_out", sa.Float, nullable=True),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("has_result", sa.Boolean, nullable=False),
        sa.Column("worker", sa.String(256), nullable=False),
        sa.CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in STATUSES)),
            name="jobs_status_valid",
        ),
        sa.UniqueConstraint("owner", "idempotency_key", name="jobs_idempotency"),
    )
    op.create_index("jobs_owner_submitted", "jobs", ["owner", "submitted_at"])
    op.create_index("jobs_status", "jobs", ["status"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])


def downgrade() -> None:
    # Undoing the first revision would drop every job: refused, whatever asks for it.
    raise NotImplementedError("revision 0001 is the first schema; it is never undone")
