"""Resubmitted jobs name the job they rerun; the servers' shared signing keys.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

``jobs.resubmit_of``: the id of the job a job runs again (``dask-kotta resubmit``); NULL
for every job of an older database, as for any job submitted as new. ``server_keys``: the
secret that signs download links (``server/links.py``), made by the first server that
needs it, so that every server of one database accepts the links of the others.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A nullable column with no default: SQLite adds it in place, with no copy of the table.
    op.add_column("jobs", sa.Column("resubmit_of", sa.String(32), nullable=True))
    op.create_table(
        "server_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_keys")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("resubmit_of")
