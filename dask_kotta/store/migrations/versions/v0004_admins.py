"""Admins: users who may issue, list and revoke every user's tokens through the server.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``users.admin``: true for a user the server lets use ``/api/v1/admin/`` (``up``'s first
user, or one an operator made with ``dask-kotta token NAME --admin``). Every user of an
older database is not an admin; ``up`` makes its ``--user`` one at its next start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # NOT NULL with a server default: SQLite and PostgreSQL add it in place, every existing
    # row reading false, with no copy of the table.
    op.add_column(
        "users", sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    with op.batch_alter_table("users") as b:
        b.drop_column("admin")
