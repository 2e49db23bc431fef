"""The job database's commands (``db upgrade``, ``db current``) and ``--upgrade-db``."""

from __future__ import annotations

from pathlib import Path

import click

from .. import defaults as d
from .group import _setup_logging, main


def _database_options(f):
    f = click.option(
        "--database",
        envvar="DASK_KOTTA_DATABASE",
        help="SQLAlchemy URL of the job store (as given to `server`). Default: SQLite in DATA_DIR.",
    )(f)
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=d.DATA_DIR,
        show_default=True,
        help="The data dir of `up` or `server` whose SQLite job store to use.",
    )(f)
    return f


def upgrade_db_option(f):
    """``--upgrade-db`` of ``up`` and ``server``, kept in the context (see :func:`upgrade_asked`)."""

    def keep(ctx, param, value):
        ctx.meta["dask_kotta.upgrade_db"] = value
        return value

    return click.option(
        "--upgrade-db",
        is_flag=True,
        expose_value=False,
        callback=keep,
        help="Upgrade the job database to this version's schema if it is older (see "
        "`dask-kotta db upgrade`). `up` always upgrades its own SQLite database.",
    )(f)


def upgrade_asked() -> bool:
    """Whether this command was given ``--upgrade-db``."""
    return bool(click.get_current_context().meta.get("dask_kotta.upgrade_db"))


def open_database(url_or_path: str, upgrade: bool) -> None:
    """Bring the job database to this version's schema before serving, or stop with one
    line naming the command to run (a SchemaError), instead of a traceback from the server."""
    from ..store.jobs import JobStore

    JobStore(url_or_path, upgrade=upgrade).close()


def _url_or_path(data_dir: str, database: str | None) -> str:
    return database or str(Path(data_dir) / "jobs.sqlite")


@main.group()
def db() -> None:
    """The job database's schema: see its revision, upgrade it.

    `dask-kotta up` upgrades its SQLite database when it starts; `server` refuses to
    start on an older schema unless given --upgrade-db, so a database that several
    versions may share is upgraded only when its operator says so.
    """


@db.command()
@_database_options
def upgrade(data_dir: str, database: str | None) -> None:
    """Bring the job database to this version's schema (a new one is made).

    Jobs, users and tokens are kept. Stop every server using the database first, and on
    PostgreSQL take a backup; a SQLite file is copied to FILE.before-REVISION first.
    """
    from ..store.jobs import engine_for
    from ..store.migrate import prepare, shown

    _setup_logging()
    engine = engine_for(_url_or_path(data_dir, database))
    url = engine.url
    engine.dispose()
    found = prepare(url, upgrade=True)
    was = {"current": "nothing to do", "new": "made"}.get(
        found.state, f"was {found.revision or 'unversioned (made before migrations)'}"
    )
    click.echo(f"{shown(url)}: at {found.head} (head); {was}")


@db.command()
@_database_options
def current(data_dir: str, database: str | None) -> None:
    """Print the job database's schema revision, and whether it is this version's.

    Changes nothing; a SQLite file that does not exist is an error.
    """
    import sqlalchemy as sa

    from ..errors import ConfigError
    from ..store.migrate import BASELINE, shown, status

    target = _url_or_path(data_dir, database)
    url = sa.make_url(target if "://" in target else f"sqlite:///{target}")
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).is_file():
        raise ConfigError(f"no job database at {url.database}")
    found = status(url)
    note = {
        "current": "head",
        "new": "empty: `dask-kotta db upgrade` makes it",
        "unversioned": f"made before migrations; `dask-kotta db upgrade` stamps it {BASELINE}",
        "outdated": f"older than this version's {found.head}: `dask-kotta db upgrade`",
        "newer": f"newer than this version's {found.head}: made by a newer dask-kotta",
    }[found.state]
    click.echo(f"{found.revision or 'none'} ({note})")
    if found.state != "current":
        click.echo(f"database: {shown(url)}", err=True)
