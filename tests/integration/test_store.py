"""The job store on a real SQLite file: guarded, forward-only transitions."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dask_kotta import defaults as d
from dask_kotta.store.attempts import EndReport
from dask_kotta.store.jobs import JobStore
from dask_kotta.store.schema import jobs


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A fresh database: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.sqlite")
    pg = request.getfixturevalue("pg_server")
    name = f"t{abs(hash(request.node.name)) % 10**9}"
    admin = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def open_store(db):
    """Opens stores on ``db`` and closes each at the end: an open connection left to the
    garbage collector is a ResourceWarning (psycopg's), which fails the test."""
    stores: list[JobStore] = []

    def open_() -> JobStore:
        stores.append(JobStore(db))
        return stores[-1]

    yield open_
    for store in stores:
        store.close()


def make(open_store, **spec):
    store = open_store()
    uid = store.get_or_create_user("u")
    base = {"jobtype": "script", "queue": "Test", "walltime_min": 1, "script": "true"}
    job, created = store.insert_jobs(uid, [{**base, **spec}])[0]
    return store, uid, job


def end(store, job_id, attempt, dispatch_hash, ok=True, reason=""):
    """Record an attempt's end the way the server records a runner's report; its new status."""
    report = EndReport(
        job_id=job_id, attempt=attempt, dispatch_hash=dispatch_hash, ok=ok, reason=reason,
        traceback="", timings={}, outputs=[], has_result=False, retry=True, requeue=False,
        phases=[],
    )  # fmt: skip
    (ended,) = store.finish_many([report])
    return ended and ended["status"]


def test_status_check_constraint_matches_the_python_statuses(open_store):
    store, _, job = make(open_store)
    check = next(c for c in jobs.constraints if getattr(c, "name", "") == "jobs_status_valid")
    assert set(d.SERVER_STATUSES) == {
        s.strip("' ") for s in str(check.sqltext).split("(")[1].rstrip(")").split(",")
    }
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as c:
        c.execute(jobs.update().where(jobs.c.id == job["id"]).values(status="bogus"))


def test_lifecycle_only_moves_forward(open_store):
    store, uid, job = make(open_store)
    jid = job["id"]
    attempt = store.dispatch(jid, "h")
    assert attempt == 1
    assert store.claim(jid, attempt, "wrong-hash", 10, "w") is None
    assert store.claim(jid, attempt, "h", 10, "w")["status"] == d.STAGING_INPUTS
    assert store.claim(jid, attempt, "h", 10, "w") is None, "a second claim must fail"
    assert store.advance(jid, attempt, "h", d.PROCESSING, 10)
    assert not store.advance(jid, attempt, "h", d.PROCESSING, 10)
    assert not store.advance(jid, attempt, "h", d.STAGING_INPUTS, 10), "no way back"
    assert store.advance(jid, attempt, "h", d.STAGING_OUTPUTS, 10)
    assert end(store, jid, attempt, "h") == d.COMPLETED
    assert end(store, jid, attempt, "h", ok=False, reason="x") is None
    assert not store.cancel(jid, uid), "a finished job cannot be cancelled"
    assert store.get(jid)["status"] == d.COMPLETED


def test_stale_attempt_cannot_report(open_store):
    store, _, job = make(open_store)
    jid = job["id"]
    a1 = store.dispatch(jid, "h1")
    store.claim(jid, a1, "h1", -1, "w")  # lease already expired
    assert [e["id"] for e in store.expired(1e12)] == [jid]
    assert store.requeue_or_fail(jid, a1, "lost", max_requeues=3) == d.PENDING
    a2 = store.dispatch(jid, "h2")
    assert a2 == a1 + 1
    assert not store.heartbeat(jid, a1, "h1", 10)
    assert end(store, jid, a1, "h1") is None
    store.claim(jid, a2, "h2", 10, "w")
    assert store.heartbeat(jid, a2, "h2", 10)


def test_requeues_are_bounded(open_store):
    store, _, job = make(open_store)
    jid = job["id"]
    for expected in (d.PENDING, d.FAILED):
        a = store.dispatch(jid, "h")
        assert store.claim(jid, a, "h", -1, "w") is not None
        assert store.requeue_or_fail(jid, a, "lost", max_requeues=1) == expected
    got = store.get(jid)
    assert got["status"] == d.FAILED and got["reason"] == "lost (1 times; giving up)"
    assert got["requeues"] == 1


def test_idempotency_key_is_per_owner(open_store):
    store = open_store()
    a, b = store.get_or_create_user("a"), store.get_or_create_user("b")
    spec = {"jobtype": "script", "queue": "Test", "walltime_min": 1, "idempotency_key": "k"}
    ((j1, c1),) = store.insert_jobs(a, [dict(spec)])
    ((j2, c2),) = store.insert_jobs(a, [dict(spec)])
    ((j3, c3),) = store.insert_jobs(b, [dict(spec)])
    assert c1 and not c2 and c3 and j1["id"] == j2["id"] != j3["id"]


def test_store_survives_reopen(open_store):
    store, uid, job = make(open_store)
    store.close()
    again = open_store()
    assert again.get(job["id"], owner=uid)["status"] == d.PENDING
    assert again.get(job["id"], owner=uid + 1) is None
