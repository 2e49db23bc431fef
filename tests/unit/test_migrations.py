"""The job store's schema migrations on temp SQLite files: made, stamped, upgraded, refused.

A revision after the package's head is exercised with a real migration written into a
copy of the package's migration directory (``later_revision``).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from dask_kotta.cli import main
from dask_kotta.errors import SchemaError
from dask_kotta.store import migrate
from dask_kotta.store.jobs import JobStore
from dask_kotta.store.schema import metadata

FIXTURE = Path(__file__).parents[1] / "fixtures" / "release-0.1.0.sqlite"
TABLES = ("users", "tokens", "jobs", "job_events")
#: The package's newest revision: 0002 added ``jobs.keep_s`` and the index ``jobs_ended``,
#: 0003 the index ``jobs_queue_status`` and ``tokens.label``, ``tokens.expires_at``, 0004
#: ``users.admin``, 0005 ``jobs.resubmit_of`` and the table ``server_keys``, 0006 the table
#: ``job_objects`` (jobs' small objects).
HEAD = "0006"


def rows(path: Path) -> dict[str, list[tuple]]:
    """Every row of the store's tables, in a stable order, read with the plain driver."""
    with sqlite3.connect(path) as c:
        out = {t: sorted(c.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    c.close()
    return out


def revision(path: Path) -> str | None:
    with sqlite3.connect(path) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        found = c.execute("SELECT version_num FROM alembic_version").fetchall() if (
            "alembic_version" in tables) else []  # fmt: skip
    c.close()
    return found[0][0] if found else None


@pytest.fixture
def release_db(tmp_path) -> Path:
    """A copy of the job store 0.1.0 made (opening a store writes to it)."""
    path = tmp_path / "jobs.sqlite"
    shutil.copy(FIXTURE, path)
    return path


@pytest.fixture
def later_revision(tmp_path) -> Path:
    """The package's migrations plus a revision 0007 that rebuilds ``jobs`` with a new column.

    ``recreate="always"``: SQLite copies the table the other tables refer to, the riskiest
    kind of change for the rows.
    """
    location = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, location, ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / "v0007_later.py").write_text(textwrap.dedent('''
        import sqlalchemy as sa
        from alembic import op

        revision = "0007"
        down_revision = "0006"
        branch_labels = None
        depends_on = None

        def upgrade():
            with op.batch_alter_table("jobs", recreate="always") as b:
                b.add_column(sa.Column("expires_at", sa.Float, nullable=True))

        def downgrade():
            with op.batch_alter_table("jobs") as b:
                b.drop_column("expires_at")
    '''))  # fmt: skip
    return location


def url(path: Path) -> sa.URL:
    return sa.make_url(f"sqlite:///{path}")


def test_a_new_database_is_made_at_head(tmp_path):
    path = tmp_path / "jobs.sqlite"
    JobStore(str(path)).close()
    assert revision(path) == migrate.scripts().get_current_head() == HEAD == migrate.HEAD
    assert migrate.status(url(path)).state == "current"


def test_a_store_at_head_opens_without_importing_alembic(tmp_path):
    """Every process that opens the store (``up``, ``server``, ``token``, ``gc``) would pay
    for Alembic's import; a new database and one at head are told with SQLAlchemy alone."""
    path = tmp_path / "jobs.sqlite"
    code = (
        "import sys; from dask_kotta.store.jobs import JobStore; "
        f"JobStore({str(path)!r}).close(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    for _made, _opened in ((path, "new"), (path, "at head")):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]", (_opened, out.stdout)
    assert revision(path) == HEAD


def test_a_new_database_is_stamped_as_alembic_stamps_one(tmp_path):
    """A new store's version table is made without Alembic: it must be Alembic's own."""
    ours = tmp_path / "ours.sqlite"
    JobStore(str(ours)).close()
    theirs = tmp_path / "theirs.sqlite"
    engine = sa.create_engine(url(theirs))
    with engine.begin() as conn:
        MigrationContext.configure(conn).stamp(migrate.scripts(), "head")
    engine.dispose()
    sql = "SELECT sql FROM sqlite_master WHERE tbl_name = 'alembic_version' ORDER BY name"
    with sqlite3.connect(ours) as a, sqlite3.connect(theirs) as b:
        assert a.execute(sql).fetchall() == b.execute(sql).fetchall()
    a.close()
    b.close()
    assert revision(ours) == revision(theirs) == HEAD


def test_the_revisions_build_exactly_the_schema_of_schema_py(tmp_path):
    """A database made by the migrations and one made by create_all (what a new store does)
    do not differ: autogenerate finds nothing, and the check constraints are the same."""
    migrated = sa.create_engine(f"sqlite:///{tmp_path / 'migrated.sqlite'}")
    created = sa.create_engine(f"sqlite:///{tmp_path / 'created.sqlite'}")
    with migrated.begin() as c:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = c
        command.upgrade(cfg, "head")
    metadata.create_all(created)
    with migrated.connect() as m, created.connect() as k:
        ctx = MigrationContext.configure(
            m, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(ctx, metadata) == []
        for table in TABLES:
            mi, ki = sa.inspect(m), sa.inspect(k)
            assert mi.get_check_constraints(table) == ki.get_check_constraints(table)
            assert mi.get_unique_constraints(table) == ki.get_unique_constraints(table)
            assert mi.get_foreign_keys(table) == ki.get_foreign_keys(table)
    migrated.dispose()
    created.dispose()


def test_a_release_database_is_refused_untouched_unless_upgrading_is_asked(release_db):
    """A 0.1.0 database needs the columns, indexes and tables of 0002 to 0006: opened without ``upgrade``
    (as `server` and `token` do) it is refused with the command to run, and nothing is
    written."""
    before = rows(release_db)
    with pytest.raises(SchemaError, match=r"revision 0001 \(unversioned\), .* needs 0006: run "
                       r"`dask-kotta db upgrade"):  # fmt: skip
        JobStore(str(release_db))
    assert revision(release_db) is None and rows(release_db) == before
    assert not list(release_db.parent.glob("*.before-*"))


def test_the_release_database_upgrades_to_head_keeping_every_row(release_db):
    """The committed 0.1.0 store is stamped 0001, then given ``jobs.keep_s`` (NULL for every
    old job: the server's --keep), ``jobs_ended`` and ``jobs_queue_status``; the store then
    reads and drives it."""
    before = rows(release_db)
    assert revision(release_db) is None and len(before["jobs"]) == 28
    store = JobStore(str(release_db), upgrade=True)
    assert revision(release_db) == HEAD
    after = rows(release_db)
    assert {t: v for t, v in after.items() if t not in ("jobs", "tokens", "users")} == {
        t: v for t, v in before.items() if t not in ("jobs", "tokens", "users")
    }
    assert sorted((r[:-1] for r in after["users"]), key=repr) == before["users"]
    assert {r[-1] for r in after["users"]} == {0}  # 0004: no old user is an admin
    assert sorted((r[:-2] for r in after["jobs"]), key=repr) == before["jobs"]
    # keep_s: every old job follows --keep; resubmit_of (0005): none reran another
    assert {r[-2:] for r in after["jobs"]} == {(None, None)}
    assert sorted((r[:-2] for r in after["tokens"]), key=repr) == before["tokens"]
    assert {r[-2:] for r in after["tokens"]} == {(None, None)}  # 0003: no label, no expiry
    insp = sa.inspect(store.engine)
    assert [c["name"] for c in insp.get_columns("jobs")[-2:]] == ["keep_s", "resubmit_of"]
    assert store.server_key("k") == store.server_key("k") != store.server_key("other")
    indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("jobs")}
    assert indexes["jobs_ended"] == ["ended_at"]
    assert indexes["jobs_queue_status"] == ["queue", "status", "owner", "submitted_at"]
    copy = release_db.with_name("jobs.sqlite.before-unversioned")
    assert rows(copy) == before and copy.stat().st_mode & 0o077 == 0
    # The store of this branch reads and drives the old jobs.
    statuses = {j["status"] for j in store.pending()}
    assert statuses == {"pending"}
    assert store.user_for_token(f"{0:064x}")["name"] == "alice"
    assert store.user_for_token(f"{0:064x}")["admin"] is False
    store.set_admin("alice")
    assert store.user_for_token(f"{0:064x}")["admin"] is True
    ((job, created),) = store.insert_jobs(1, [{"jobtype": "script", "queue": "Test",
                                                "walltime_min": 1, "script": "true",
                                                "keep_days": 2}])  # fmt: skip
    assert created and store.get(job["id"])["keep_s"] == 2 * 86400
    store.close()
    JobStore(str(release_db)).close()  # at head now: opened without upgrade too


def test_0006_to_0002_are_undone_back_to_the_release_schema(release_db):
    """Their downgrades drop the indexes, the columns and the tables, and the rows are the
    release's again; 0006's refuses while it holds objects (they would be lost)."""
    before = rows(release_db)
    JobStore(str(release_db), upgrade=True).close()
    engine = sa.create_engine(url(release_db))
    with engine.begin() as c:
        job_id = c.execute(sa.text("SELECT id FROM jobs LIMIT 1")).scalar()
        c.execute(sa.text("INSERT INTO job_objects VALUES ('k', :j, x'00', 0)"), {"j": job_id})
    with engine.begin() as c:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = c
        with pytest.raises(RuntimeError, match="1 small objects of jobs are kept"):
            command.downgrade(cfg, "0005")
    with engine.begin() as c:
        assert c.execute(sa.text("SELECT count(*) FROM job_objects")).scalar() == 1
        c.execute(sa.text("DELETE FROM job_objects"))
    with engine.begin() as c:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = c
        command.downgrade(cfg, "0001")
        assert migrate._shape(c, exclude={"alembic_version"}) == migrate._baseline_shape(None)
    engine.dispose()
    assert rows(release_db) == before


def test_a_release_database_upgrades_through_a_later_revision_keeping_every_row(
    release_db, later_revision
):
    before = rows(release_db)
    found = migrate.prepare(url(release_db), upgrade=True, location=later_revision)
    assert found.state == "unversioned"
    assert revision(release_db) == "0007"
    after = rows(release_db)
    assert {t: v for t, v in after.items() if t not in ("jobs", "tokens", "users")} == {
        t: v for t, v in before.items() if t not in ("jobs", "tokens", "users")
    }
    assert sorted((r[:-1] for r in after["users"]), key=repr) == before["users"]
    assert sorted((r[:-2] for r in after["tokens"]), key=repr) == before["tokens"]
    assert sorted((r[:-3] for r in after["jobs"]), key=repr) == before["jobs"]
    # 0002's, 0005's and 0007's columns, empty
    assert {r[-3:] for r in after["jobs"]} == {(None, None, None)}
    copy = release_db.with_name("jobs.sqlite.before-unversioned")
    assert rows(copy) == before and copy.stat().st_mode & 0o077 == 0
    # The package's own code does not know 0007: that database is refused, not touched.
    with pytest.raises(SchemaError, match="revision 0007, which dask-kotta .* does not know"):
        JobStore(str(release_db))
    assert rows(release_db) == after


def test_an_older_database_is_upgraded_only_when_asked(release_db, later_revision):
    JobStore(str(release_db), upgrade=True).close()  # 0006, as this release leaves it
    before = rows(release_db)
    with pytest.raises(SchemaError, match=r"at schema revision 0006, .* needs 0007: run "
                       r"`dask-kotta db upgrade --database sqlite:///.*jobs.sqlite`"):  # fmt: skip
        migrate.prepare(url(release_db), location=later_revision)
    assert revision(release_db) == "0006" and rows(release_db) == before
    assert migrate.status(url(release_db), later_revision).state == "outdated"
    found = migrate.prepare(url(release_db), upgrade=True, location=later_revision)
    assert (found.revision, found.state) == ("0006", "outdated")
    assert revision(release_db) == "0007"
    assert rows(release_db.with_name("jobs.sqlite.before-0006")) == before


def test_a_database_at_a_future_revision_is_refused(release_db):
    JobStore(str(release_db), upgrade=True).close()
    with sqlite3.connect(release_db) as c:
        c.execute("UPDATE alembic_version SET version_num = 'ffff'")
    c.close()
    before = rows(release_db)
    for upgrade in (False, True):
        with pytest.raises(SchemaError, match="revision ffff, which dask-kotta .* does not know"):
            JobStore(str(release_db), upgrade=upgrade)
    assert rows(release_db) == before


def test_unversioned_tables_that_are_not_the_release_s_are_refused_untouched(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, something_else TEXT)")
    c.close()
    with pytest.raises(SchemaError, match=r"no schema revision and its tables .* not those"):
        JobStore(str(path))
    assert revision(path) is None


def test_db_commands(release_db, tmp_path):
    run = CliRunner().invoke
    data = ["--data-dir", str(release_db.parent)]
    r = run(main, ["db", "current", *data])
    assert r.exit_code == 0 and r.stdout.startswith("none (made before migrations;"), r.output
    r = run(main, ["db", "upgrade", *data])
    assert r.exit_code == 0 and f"at {HEAD} (head); was unversioned" in r.stdout, r.output
    r = run(main, ["db", "current", *data])
    assert (r.exit_code, r.stdout) == (0, f"{HEAD} (head)\n")
    r = run(main, ["db", "upgrade", "--database", f"sqlite:///{release_db}"])
    assert r.exit_code == 0 and "nothing to do" in r.stdout
    missing = ["--data-dir", str(tmp_path / "nothing")]
    r = run(main, ["db", "current", *missing])
    assert r.exit_code == 1 and "error: no job database at" in r.stderr
    assert not (tmp_path / "nothing").exists(), "`db current` makes nothing"
    r = run(main, ["db", "upgrade", *missing])
    assert r.exit_code == 0 and "(head); made" in r.stdout
    for cmd in ("upgrade", "current"):
        r = run(main, ["db", cmd, "--help"])
        assert r.exit_code == 0 and "--database" in r.stdout and "--data-dir" in r.stdout


def test_stores_opening_one_new_database_at_once_make_it_once(tmp_path):
    """The write lock is taken before looking: one makes the tables, the others find them."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "jobs.sqlite"
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: JobStore(str(path)), range(4)))
    for s in stores:
        s.close()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    c.close()
