"""The whole service on PostgreSQL instead of SQLite: jobs run and survive a restart."""

from __future__ import annotations

import sqlalchemy as sa
from kotta_testing import Service

from dask_kotta.store.blobs import SMALL_MAX
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

        # Small objects are rows of PostgreSQL's job_objects (bytea), a large result a file.
        @kottajob(konn, "Test", 0.5)
        def blob(n):
            return b"b" * n

        assert blob(SMALL_MAX + 1) == b"b" * (SMALL_MAX + 1)
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
                assert c.execute(sa.text("select count(*) from jobs")).scalar() == 3
                kept = c.execute(sa.text("select key, data from job_objects")).all()
            names = sorted(key.split("/", 2)[2] for key, _ in kept)
            # square: payload, result, STDOUT, STDERR; blob: payload, STDOUT, STDERR; the
            # script job: STDOUT ("pg\n") and STDERR
            assert names.count(".kotta/result.pkl") == 1 and names.count(".kotta/payload.pkl") == 2
            assert names.count("STDOUT.txt") == 3 and b"pg\n" in {bytes(d) for _, d in kept}
            results = list((svc.data_dir / "objects").rglob("result.pkl"))
            assert len(results) == 1  # blob's
            with engine.connect() as c:
                ids = list(c.execute(sa.text("select id from jobs")).scalars())
            konn.delete(ids)
            with engine.connect() as c:
                assert c.execute(sa.text("select count(*) from job_objects")).scalar() == 0
            assert not list((svc.data_dir / "objects").rglob("result.pkl"))
        finally:
            engine.dispose()  # a pooled connection left to the GC is psycopg's ResourceWarning
        assert not (svc.data_dir / "jobs.sqlite").exists(), "the job store must be PostgreSQL"
    finally:
        svc.stop()
