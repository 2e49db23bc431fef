"""Schema migrations against the real things: PostgreSQL, the `server` command, `up` restarts.

The SQLite cases (new, stamped, upgraded, refused) are unit tests (tests/unit/test_migrations.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from kotta_testing import Service, free_port

from dask_kotta.errors import SchemaError
from dask_kotta.store import migrate
from dask_kotta.store.jobs import JobStore
from dask_kotta.store.schema import metadata
from kotta import KottaJob

FIXTURE = Path(__file__).parents[1] / "fixtures" / "release-0.1.0.sqlite"
TABLES = ("users", "tokens", "jobs", "job_events")
#: The package's newest schema revision.
HEAD = "0006"


@pytest.fixture
def pg_database(pg_server, request):
    """A database of its own on the session's PostgreSQL server, for one test."""
    name = request.node.name.lower().replace("[", "_").replace("]", "")[:60]
    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg_server.url.rsplit("/", 1)[0] + f"/{name}"


def pg_rows(url: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return {
                t: sorted((tuple(r) for r in c.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
                for t in TABLES
            }
    finally:
        engine.dispose()  # a pooled connection left to the GC is psycopg's ResourceWarning


def test_the_revisions_build_exactly_the_schema_of_schema_py_on_postgres(pg_database):
    url = pg_database
    created_url = url + "_created"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{created_url.rsplit("/", 1)[1]}"'))
    admin.dispose()
    migrated, created = sa.create_engine(url), sa.create_engine(created_url)
    try:
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
            mi, ki = sa.inspect(m), sa.inspect(k)
            for table in TABLES:
                for what in ("check_constraints", "unique_constraints", "foreign_keys",
                             "indexes", "pk_constraint", "columns"):  # fmt: skip
                    got = getattr(mi, f"get_{what}")(table)
                    assert repr(got) == repr(getattr(ki, f"get_{what}")(table)), (table, what)
    finally:
        migrated.dispose()
        created.dispose()


def test_a_postgres_database_made_by_0_1_0_is_stamped_upgraded_and_keeps_every_row(pg_database):
    """As 0.1.0 left it: its tables (revision 0001's), no alembic_version; filled with the
    release fixture's rows. `server --upgrade-db` stamps it 0001 and upgrades it to head."""
    url = pg_database
    engine = sa.create_engine(url)
    with engine.begin() as c:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = c
        command.upgrade(cfg, migrate.BASELINE)
        c.execute(sa.text("DROP TABLE alembic_version"))
    with sqlite3.connect(FIXTURE) as src, engine.begin() as c:
        for table in (t for t in metadata.sorted_tables if t.name in TABLES):  # the release's
            cur = src.execute(f"SELECT * FROM {table.name}")
            names = [d[0] for d in cur.description]
            c.execute(table.insert(), [dict(zip(names, r, strict=True)) for r in cur])
        for table in ("users", "job_events"):  # the serial sequences go on after the copied ids
            c.execute(sa.text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))"))
    src.close()
    engine.dispose()
    before = pg_rows(url)
    assert len(before["jobs"]) == 28

    assert migrate.status(sa.make_url(url)).state == "unversioned"
    with pytest.raises(SchemaError, match="needs 0006: run `dask-kotta db upgrade"):
        JobStore(url)  # as `server` without --upgrade-db
    assert pg_rows(url) == before
    store = JobStore(url, upgrade=True)
    assert migrate.status(store.engine.url).revision == HEAD
    after = pg_rows(url)
    assert {t: v for t, v in after.items() if t not in ("jobs", "tokens", "users")} == {
        t: v for t, v in before.items() if t not in ("jobs", "tokens", "users")
    }
    assert sorted((r[:-1] for r in after["users"]), key=repr) == before["users"]
    assert {r[-1] for r in after["users"]} == {False}  # 0004: no old user is an admin
    assert sorted((r[:-2] for r in after["jobs"]), key=repr) == before["jobs"]
    # keep_s: the old jobs follow --keep; resubmit_of (0005): none reran another
    assert {r[-2:] for r in after["jobs"]} == {(None, None)}
    assert sorted((r[:-2] for r in after["tokens"]), key=repr) == before["tokens"]
    assert {r[-2:] for r in after["tokens"]} == {(None, None)}  # no label, no expiry
    assert store.user_for_token(f"{1:064x}")["name"] == "bob"
    owner = store.get_or_create_user("dave")
    ((job, created),) = store.insert_jobs(owner, [{"jobtype": "script", "queue": "Test",
                                                    "walltime_min": 1, "script": "true"}])  # fmt: skip
    assert created and store.get(job["id"])["status"] == "pending"
    store.close()
    JobStore(url).close()  # a second open finds it at head and changes nothing
    assert migrate.status(sa.make_url(url)).state == "current"


def test_server_refuses_a_database_newer_than_itself_in_one_line(tmp_path):
    data = tmp_path / "data"
    JobStore(str(data / "jobs.sqlite")).close()
    with sqlite3.connect(data / "jobs.sqlite") as c:
        c.execute("UPDATE alembic_version SET version_num = 'ffff'")
    c.close()
    run = subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", "server", "--scheduler", "tcp://127.0.0.1:9",
         "--port", str(free_port()), "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: the job database sqlite:///") and "revision ffff" in line


def test_up_restart_on_a_data_dir_made_before_migrations_keeps_its_jobs(tmp_path):
    """`up` on a data dir whose job store has no revision (as every 0.1.0 data dir) stamps it,
    upgrades it and serves its jobs: undoing the revisions after 0001 and dropping
    ``alembic_version`` turns this service's store into one."""
    svc = Service(tmp_path / "svc", workers=1)
    try:
        svc.start()
        konn = svc.konn()
        job = KottaJob(script="echo kept > k.txt", outputs="k.txt", walltime=0.5)
        job.submit(konn)
        job.wait(konn)
        svc.stop()
        db = svc.data_dir / "jobs.sqlite"
        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.begin() as c:
            # 0.1.0 kept every object as a file: the rows (0006) become files again.
            for key, data in c.execute(sa.text("SELECT key, data FROM job_objects")).all():
                path = svc.data_dir / "objects" / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            c.execute(sa.text("DELETE FROM job_objects"))
            cfg = migrate.alembic_config()
            cfg.attributes["connection"] = c
            command.downgrade(cfg, migrate.BASELINE)
            c.execute(sa.text("DROP TABLE alembic_version"))
        engine.dispose()
        with sqlite3.connect(db) as c:
            jobs_before = sorted(c.execute("SELECT * FROM jobs").fetchall())
        c.close()

        svc.start()
        konn = svc.konn()
        assert job.status(konn) == "completed"
        assert {o.file: o.read() for o in job.outputs}["k.txt"] == "kept\n"
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
            # Every job kept, with keep_s NULL (the server's --keep), the column 0002 added,
            # and resubmit_of NULL (0005's).
            assert sorted(r[:-2] for r in c.execute("SELECT * FROM jobs")) == jobs_before
        c.close()
        assert (svc.data_dir / "jobs.sqlite.before-unversioned").exists()
        again = KottaJob(script="echo new", walltime=0.5)
        again.submit(konn)
        assert again.wait(konn, maxwait=120) and again.status(konn) == "completed"
    finally:
        svc.stop()
