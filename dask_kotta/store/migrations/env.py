"""Alembic's environment for the job store: run by Alembic, never imported.

:mod:`dask_kotta.store.migrate` hands over an open connection, inside the transaction
(and lock) it took, as ``config.attributes["connection"]``; with none, the URL of
``sqlalchemy.url`` is used (a developer generating a revision). On SQLite, changes are
rendered as batch operations: SQLite alters a table by copying it into a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from dask_kotta.store.schema import metadata


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_offline() -> None:
    """Print the SQL of the migrations (``alembic upgrade --sql``), for a DBA to apply."""
    url = context.config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=str(url).startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the connection given, or on one to ``sqlalchemy.url``."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "no connection and no sqlalchemy.url to migrate"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
