"""An index for fair-share claims.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``jobs_queue_status`` (queue, status, owner, submitted_at): a slot's claim reads the
queue's pending jobs user by user, oldest first, and counts each user's running jobs
(``store/attempts.py``), each a range of this index, whatever the backlog.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("jobs_queue_status", "jobs", ["queue", "status", "owner", "submitted_at"])


def downgrade() -> None:
    op.drop_index("jobs_queue_status", table_name="jobs")
