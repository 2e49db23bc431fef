"""Jobs' small objects kept in the database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

``job_objects``: a job's payload, result, STDOUT/STDERR and outputs up to
``store.blobs.SMALL_MAX`` bytes, each a row under its object-store key, instead of one
file (or S3 object) each. An older database has none: its objects stay where they are and
are read there, as every larger object is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "job_objects",
        sa.Column("key", sa.String(1100), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_job_objects_job_id", "job_objects", ["job_id"])


def downgrade() -> None:
    # The rows are the only copy of these objects: refuse rather than lose them.
    n = op.get_bind().execute(sa.text("SELECT count(*) FROM job_objects")).scalar()
    if n:
        raise RuntimeError(
            f"{n} small objects of jobs are kept in the database (job_objects), which revision "
            "0005 cannot hold: delete those jobs first, or keep this version"
        )
    op.drop_index("ix_job_objects_job_id", table_name="job_objects")
    op.drop_table("job_objects")
