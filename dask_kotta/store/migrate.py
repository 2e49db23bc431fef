"""Bringing a job database to the schema this code runs on, with Alembic.

A store finds its database in one of these states (:func:`status`):

- ``new``: none of the store's tables. Made with ``create_all`` and stamped at head.
  ``schema.py`` is what the code runs on; a unit test proves that the revisions build
  the same schema, and ``create_all`` is one statement per table where replaying the
  revisions grows with the history.
- ``unversioned``: the tables of dask-kotta 0.1.0 and no ``alembic_version`` (every
  data dir made before migrations). Stamped with :data:`BASELINE` when its tables
  match that revision's, refused untouched when they do not; then as below.
- ``current``: at head, nothing to do.
- ``outdated``: at an older revision. Upgraded when ``upgrade`` is true (``up`` on its
  SQLite file, ``db upgrade``, ``server --upgrade-db``); otherwise refused with a
  :class:`~dask_kotta.errors.SchemaError` that names the command.
- ``newer``: at a revision this code does not know (a newer dask-kotta made it): refused.

Every change runs in one transaction holding the database's write lock (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so two processes opening one database
never both create or upgrade it, and a failed upgrade leaves nothing half done. Before
an upgrade, a SQLite file is also copied aside, as ``FILE.before-REVISION``.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .. import __version__
from ..errors import SchemaError
from .schema import metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger("dask_kotta.store")

#: The migration environment (``env.py``, ``versions/``), found by this package's path.
MIGRATIONS = Path(__file__).with_name("migrations")
#: The revision whose schema is that of dask-kotta 0.1.0, which kept no revision.
BASELINE = "0001"
#: The newest revision in :data:`MIGRATIONS`, so that a database at head is seen as such
#: without importing Alembic (a tenth of a second in every process that opens the store).
#: ``tests/unit/test_migrations.py`` holds it equal to the scripts' head.
HEAD = "0006"
#: PostgreSQL advisory lock held while a database is made or upgraded ("kotta" in ASCII).
_PG_LOCK = 0x6B6F747461


@dataclass(frozen=True)
class Status:
    """Where a database stands: its revision (None: no ``alembic_version``), this code's head,
    and ``state``, one of new, unversioned, current, outdated, newer."""

    revision: str | None
    head: str
    state: str


def alembic_config(url: str | None = None, location: Path | None = None) -> Config:
    """An Alembic config for the store's migrations; ``url`` only for Alembic's own commands
    (``command.revision(alembic_config(url), "message", rev_id="0002", autogenerate=True)``)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(location or MIGRATIONS))
    # A module name mypy and ruff accept (not one starting with a digit): v0002_add_x.py.
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@functools.lru_cache(maxsize=8)
def scripts(location: Path | None = None) -> ScriptDirectory:
    """The revisions in ``location`` (default: the package's), read once per process."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(location=location))


def shown(url: sa.URL) -> str:
    """The database's URL as it may be printed: without its password."""
    return url.render_as_string(hide_password=True)


def _migration_engine(url: sa.URL) -> sa.Engine:
    """An engine for looking at and changing the schema: one connection per use, and on
    SQLite real transactions around DDL (the driver leaves DDL outside them otherwise) with
    foreign keys unenforced, as a batch migration copies tables the others refer to."""
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, poolclass=sa.pool.NullPool)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        # IMMEDIATE takes the write lock at once: the look and the change are one step.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("lock") else "BEGIN")

    return engine


def _read(conn: sa.Connection, location: Path | None) -> Status:
    from alembic.runtime.migration import MigrationContext
    from alembic.util.exc import CommandError

    script = scripts(location)
    head = script.get_current_head()
    assert head is not None, "the migrations have one head"
    heads = MigrationContext.configure(conn).get_current_heads()
    if not heads:
        ours = set(metadata.tables) & set(sa.inspect(conn).get_table_names())
        return Status(None, head, "unversioned" if ours else "new")
    (revision,) = heads  # the history is linear
    if revision == head:
        return Status(revision, head, "current")
    try:
        known = script.get_revision(revision) is not None
    except CommandError:
        known = False
    return Status(revision, head, "outdated" if known else "newer")


def status(url: sa.URL, location: Path | None = None) -> Status:
    """Where the database at ``url`` stands; reads only."""
    engine = _migration_engine(url)
    try:
        with engine.connect() as conn:
            return _status(conn, location)
    finally:
        engine.dispose()


#: Alembic's version table as Alembic makes it (``DefaultImpl.version_table_impl``), for
#: stamping a new database without importing Alembic.
_VERSION = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def _status(conn: sa.Connection, location: Path | None) -> Status:
    return (_quick(conn) if location is None else None) or _read(conn, location)


def _quick(conn: sa.Connection) -> Status | None:
    """The status of a new database or one at :data:`HEAD`, told without Alembic; None for
    any other, which :func:`_read` tells."""
    tables = set(sa.inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        return None if set(metadata.tables) & tables else Status(None, HEAD, "new")
    found = [tuple(r) for r in conn.execute(sa.select(_VERSION.c.version_num))]
    return Status(HEAD, HEAD, "current") if found == [(HEAD,)] else None


def prepare(url: sa.URL, upgrade: bool = False, location: Path | None = None) -> Status:
    """Bring the database at ``url`` to head, or raise :class:`SchemaError` saying why not.

    Returns the status it was found in. An older database is upgraded only when
    ``upgrade`` is true; a database made before migrations is always stamped (no table
    changes), and then upgraded on the same terms.
    """
    found = status(url, location)  # without the lock: at head, as almost always, that is all
    if found.state == "current":
        return found
    if found.state == "unversioned":
        # Tables that are no job store's are refused as such, before any talk of upgrading.
        engine = _migration_engine(url)
        try:
            with engine.connect() as conn:
                _check_baseline(conn, url, location)
        finally:
            engine.dispose()
    _refuse(url, found, upgrade)
    if url.get_backend_name() == "sqlite" and found.state in ("outdated", "unversioned"):
        if found.state == "outdated" or found.head != BASELINE:
            _copy_aside(url, found.revision or "unversioned")
    engine = _migration_engine(url)
    try:
        with engine.connect() as conn:
            conn.info["lock"] = True
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK)))
                found = _status(conn, location)  # again, now that no one else can change it
                _refuse(url, found, upgrade)
                _change(conn, url, found, location)
    finally:
        engine.dispose()
    return found


def _refuse(url: sa.URL, found: Status, upgrade: bool) -> None:
    if found.state == "newer":
        raise SchemaError(
            f"the job database {shown(url)} is at schema revision {found.revision}, which "
            f"dask-kotta {__version__} does not know (its newest is {found.head}): a newer "
            "dask-kotta made it; run that one (downgrading the software is not supported)"
        )
    will_be_outdated = found.state == "unversioned" and found.head != BASELINE
    if (found.state == "outdated" or will_be_outdated) and not upgrade:
        raise SchemaError(
            f"the job database {shown(url)} is at schema revision "
            f"{found.revision or BASELINE + ' (unversioned)'}, dask-kotta {__version__} needs "
            f"{found.head}: run `dask-kotta db upgrade --database {shown(url)}` "
            "(or start the server with --upgrade-db)"
        )


def _change(conn: sa.Connection, url: sa.URL, found: Status, location: Path | None) -> None:
    """Within the locked transaction: make, stamp or upgrade, as ``found`` requires."""
    if found.state == "new" and location is None:
        metadata.create_all(conn)
        _VERSION.create(conn)
        conn.execute(_VERSION.insert().values(version_num=HEAD))
        return

    from alembic import command
    from alembic.runtime.migration import MigrationContext

    script = scripts(location)
    if found.state == "new":
        metadata.create_all(conn)
        MigrationContext.configure(conn).stamp(script, found.head)
        return
    if found.state == "unversioned":
        _check_baseline(conn, url, location)
        MigrationContext.configure(conn).stamp(script, BASELINE)
        log.info("job database %s: made before migrations, stamped %s", shown(url), BASELINE)
        if found.head == BASELINE:
            return
    if found.state in ("outdated", "unversioned"):
        cfg = alembic_config(location=location)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        if conn.dialect.name == "sqlite":
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise SchemaError(f"upgrade of {shown(url)} left rows without their parent "
                                  f"({broken[:3]}...); rolled back, nothing changed")  # fmt: skip
        log.info(
            "job database %s: upgraded from %s to %s",
            shown(url), found.revision or BASELINE, found.head,
        )  # fmt: skip


@functools.lru_cache(maxsize=8)
def _baseline_shape(location: Path | None) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Column and index names of each table of :data:`BASELINE`, built in memory."""
    from alembic import command

    engine = sa.create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            cfg = alembic_config(location=location)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, BASELINE)
            return _shape(conn, exclude={"alembic_version"})
    finally:
        engine.dispose()


def _shape(
    conn: sa.Connection, exclude: set[str] | None = None, only: set[str] | None = None
) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    insp = sa.inspect(conn)
    names = [t for t in insp.get_table_names() if t not in (exclude or ()) and t in (only or [t])]
    return {
        t: (
            frozenset(c["name"] for c in insp.get_columns(t)),
            # PostgreSQL also lists the indexes behind unique constraints: not ours to compare.
            frozenset(
                i["name"]
                for i in insp.get_indexes(t)
                if i["name"] and not i.get("duplicates_constraint")
            ),
        )
        for t in names
    }


def _check_baseline(conn: sa.Connection, url: sa.URL, location: Path | None) -> None:
    want = _baseline_shape(location)
    have = _shape(conn, only=set(want))
    if have != want:
        differ = sorted(t for t in want if have.get(t) != want[t])
        raise SchemaError(
            f"the job database {shown(url)} has no schema revision and its tables "
            f"({', '.join(differ)}) are not those of dask-kotta 0.1.0: not touched; "
            "is it a job store at all?"
        )


def _copy_aside(url: sa.URL, revision: str) -> Path:
    """A consistent copy of a SQLite file (WAL included), readable by its owner only."""
    path = Path(str(url.database))
    copy = path.with_name(f"{path.name}.before-{revision}")
    os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    src, dst = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    log.info("job database %s: copied to %s before upgrading it", path, copy)
    return copy
