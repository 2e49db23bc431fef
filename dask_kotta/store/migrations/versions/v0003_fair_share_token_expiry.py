"""An index for fair-share claims; tokens with a label and an expiry.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``jobs_queue_status`` (queue, status, owner, submitted_at): a slot's claim reads the
queue's pending jobs user by user, oldest first, and counts each user's running jobs
(``store/attempts.py``), each a range of this index, whatever the backlog.

``tokens.label`` (what the token is for, shown by ``dask-kotta token --list``) and
``tokens.expires_at`` (epoch seconds; NULL, as every token of an older database, never
expires).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("jobs_queue_status", "jobs", ["queue", "status", "owner", "submitted_at"])
    # Nullable columns with no default: SQLite adds them in place, with no copy of the table.
    op.add_column("tokens", sa.Column("label", sa.String(128), nullable=True))
    op.add_column("tokens", sa.Column("expires_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as b:
        b.drop_column("expires_at")
        b.drop_column("label")
    op.drop_index("jobs_queue_status", table_name="jobs")
