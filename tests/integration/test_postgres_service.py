"""The whole service on PostgreSQL instead of SQLite: jobs run and survive a restart."""

from __future__ import annotations

import sqlalchemy as sa
from kotta_testing import Service

from kotta import KottaJob
from kotta.kotta_functions import *  # noqa: F403


def test_service_on_postgres(pg_server, tmp_path):
    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text("CREATE DATABASE service_test"))
    admin.dispose()
    url = pg_server.url.rsplit("/", 1)[0] + "/service_test"
    svc = Service(tmp_path / "svc", workers=1, extra=[f"--database={url}"]).start()
    try:
        konn = svc.konn()

        @kottajob(konn, "Test", 0.5)
        def square(x):
            return x * x

        assert square(12) == 144
        job = KottaJob(script="echo pg", walltime=0.5)
        job.submit(konn)
        job.wait(konn)
        svc.stop()
        svc.start()
        konn = svc.konn()
        assert job.status(konn) == "completed" and job.outputs[0].read() == "pg\n"
        engine = sa.create_engine(url)
        try:
            with engine.connect() as c:
                assert c.execute(sa.text("select count(*) from jobs")).scalar() == 2
        finally:
            engine.dispose()  # a pooled connection left to the GC is psycopg's ResourceWarning
        assert not (svc.data_dir / "jobs.sqlite").exists(), "the job store must be PostgreSQL"
    finally:
        svc.stop()
