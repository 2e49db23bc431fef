"""Revisions of the job store's schema, oldest first (Alembic reads them, nothing imports them)."""
