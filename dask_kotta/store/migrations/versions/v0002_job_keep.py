"""A job's own keep time, and an index for the sweep.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-01

``jobs.keep_s``: seconds a job is kept after it ends, as its submitter asked (``keep_days``
of the job spec); NULL, as every job of an older database, follows the server's
``--keep``. ``jobs_ended``: the sweep looks for ended jobs oldest first, by ``ended_at``,
which no index covered.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A nullable column with no default: SQLite adds it in place, with no copy of the table.
    op.add_column("jobs", sa.Column("keep_s", sa.Float, nullable=True))
    op.create_index("jobs_ended", "jobs", ["ended_at"])


def downgrade() -> None:
    op.drop_index("jobs_ended", table_name="jobs")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("keep_s")
