"""Listing jobs over HTTP: pages by cursor, filters, counts, elapsed time, queue positions
and queue load (issue 15, contract 4), against real services."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import requests
from kotta_testing import Service, wait_for

from kotta import KottaJob


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """`up` with no worker: every job stays pending, in a known order."""
    queues = Path(__file__).with_name("queues.json")
    svc = Service(tmp_path_factory.mktemp("idle"), workers=0, extra=["--queues", str(queues)])
    svc.start()
    yield svc
    svc.stop()


def _api(konn, path: str, **params) -> requests.Response:
    return konn.session.get(konn.url + path, params=params, timeout=30)


def _scripts(konn, n: int, name: str, queue: str = "Test", script: str = "true") -> list[str]:
    jobs = [KottaJob(jobtype="script", script=script, jobname=name, queue=queue, walltime=1)
            for _ in range(n)]  # fmt: skip
    konn.submit_many(jobs)
    return [j.job_id for j in jobs]


def _user(svc: Service, tmp_path, name: str):
    return svc.konn(svc.token(name, tmp_path / f"{name}.auth"))


def test_pages_stay_stable_while_jobs_are_added(idle, tmp_path):
    konn = _user(idle, tmp_path, "pager")
    first = _scripts(konn, 7, "page")
    page, nxt = konn.jobs_page(limit=3)
    assert [j["id"] for j in page] == first[::-1][:3] and nxt
    added = _scripts(konn, 4, "page")  # newer than every job the cursor leads to
    seen = [j["id"] for j in page]
    while nxt:
        page, nxt = konn.jobs_page(limit=3, before=nxt)
        seen += [j["id"] for j in page]
    assert seen == first[::-1], "each job once, newest first, none of those added meanwhile"
    assert [j["id"] for j in konn.jobs_page(limit=4)[0]] == added[::-1]


def test_counts_filters_and_another_users_jobs(idle, tmp_path):
    konn = _user(idle, tmp_path, "counter")
    other = _user(idle, tmp_path, "stranger")
    mine = _scripts(konn, 3, "alpha_%x") + _scripts(konn, 2, "beta", queue="Prod")
    _scripts(other, 5, "alpha_%x")
    konn.cancel_job(mine[0])
    counts = _api(konn, "/api/v1/jobs/counts").json()["counts"]
    assert counts["pending"] == 4 and counts["cancelled"] == 1 and counts["completed"] == 0
    assert set(counts) >= {"pending", "processing", "completed", "failed", "cancelled"}

    def ids(**kw):
        return {j["id"] for j in konn.jobs(limit=100, **kw)}

    assert ids() == set(mine), "another user's jobs are not listed"
    assert ids(queue="Prod") == set(mine[3:])
    assert ids(name="a_%") == set(mine[:3]), "a substring, % and _ taken literally"
    assert ids(name="_%y") == set()
    assert ids(status="cancelled,completed") == {mine[0]}
    assert ids(status="running") == set()
    assert ids(status="pending", queue="Test") == set(mine[1:3])


@pytest.mark.parametrize(
    "params, word",
    [({"status": "runing"}, "runing"), ({"before": "nonsense"}, "cursor"),
     ({"before": "0x1.8p+0~"}, "cursor"), ({"limit": 0}, "limit")],
)  # fmt: skip
def test_bad_filters_are_refused_with_the_reason(idle, params, word):
    r = _api(idle.konn(), "/api/v1/jobs", **params)
    assert r.status_code in (400, 422) and word in r.json()["detail"], r.text


def test_positions_follow_fair_share_and_say_no_worker_serves_the_queue(idle, tmp_path):
    a, b = _user(idle, tmp_path, "first"), _user(idle, tmp_path, "second")
    a_ids = _scripts(a, 3, "pos", queue="Offline")
    b_ids = _scripts(b, 2, "pos", queue="Offline")
    # Fair share: each user's k-th job ranks k, ties to the older job.
    want = {a_ids[0]: 1, b_ids[0]: 2, a_ids[1]: 3, b_ids[1]: 4, a_ids[2]: 5}
    got = {j["id"]: j["position"] for j in a.jobs(queue="Offline")}
    got.update({j["id"]: j["position"] for j in b.jobs(queue="Offline")})
    assert got == want
    one = b.job(b_ids[1])
    assert one["position"] == 4 and "no worker serves queue 'Offline'" in one["reason"]
    assert one["elapsed"] is None
    load = a.queues()["Offline"]
    assert load["pending"] == 5 and load["busy"] == 0, "every user's jobs, counts only"
    assert load["yours"] == {"running": 0, "pending": 3}
    a.cancel_job(a_ids[0])  # a's second job is now its first, and older than b's first
    assert a.job(a_ids[1])["position"] == 1 and b.job(b_ids[0])["position"] == 2


def test_elapsed_of_running_and_ended_jobs_and_load(service, konn):
    name = f"elapsed-{uuid.uuid4().hex[:8]}"
    job = KottaJob(jobtype="script", script="sleep 60", jobname=name, walltime=2)
    job.submit(konn)
    wait_for(lambda: job.status(konn) == "processing", 60, "the job to run")
    first = konn.job(job.job_id)["elapsed"]
    time.sleep(1.2)
    listed = konn.jobs(name=name, status="running")
    assert [j["id"] for j in listed] == [job.job_id]
    assert listed[0]["elapsed"] >= first + 1 and listed[0]["position"] is None
    assert konn.queues()["Test"]["busy"] >= 1
    job.cancel(konn)
    ended = konn.job(job.job_id)
    assert ended["elapsed"] == pytest.approx(ended["ended_at"] - ended["started_at"])
    time.sleep(0.5)
    assert konn.job(job.job_id)["elapsed"] == ended["elapsed"], "an ended job's stays put"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A job store on a real SQLite file, or on a database of the session's PostgreSQL."""
    import sqlalchemy as sa

    from dask_kotta.store.jobs import JobStore

    if request.param == "sqlite":
        s = JobStore(str(tmp_path / "jobs.sqlite"))
    else:
        pg = request.getfixturevalue("pg_server")
        name = f"listing_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        s = JobStore(pg.url.rsplit("/", 1)[0] + "/" + name)
    yield s
    s.close()


def test_the_stores_reads_agree_on_sqlite_and_postgres(store):
    a, b = store.get_or_create_user("a"), store.get_or_create_user("b")

    def add(owner, n, name, queue="Test"):
        specs = [{"jobtype": "script", "queue": queue, "walltime_min": 1, "name": name,
                  "script": "true"} for _ in range(n)]  # fmt: skip
        return [job["id"] for job, _ in store.insert_jobs(owner, specs)]

    a1 = add(a, 3, "x_1%")
    b1 = add(b, 2, "other")
    a2 = add(a, 2, "plain", queue="Prod")
    seen, cursor = [], None
    while True:
        page, cursor = store.page(a, 2, before=cursor)
        seen += [j["id"] for j in page]
        if cursor is None:
            break
    assert seen == (a1 + a2)[::-1]
    assert [j["id"] for j in store.page(a, 10, name="_1%")[0]] == a1[::-1]
    assert store.page(a, 10, name="x%1")[0] == []
    assert {j["id"] for j in store.page(a, 10, statuses=("pending",), queue="Prod")[0]} == set(a2)
    assert store.status_counts(a)["pending"] == 5
    assert store.queue_load(["Test", "Prod", "Tiny"]) == {
        "Test": {"busy": 0, "pending": 5}, "Prod": {"busy": 0, "pending": 2},
        "Tiny": {"busy": 0, "pending": 0},
    }  # fmt: skip
    jobs = store.page(a, 10, queue="Test")[0] + store.page(b, 10)[0]
    places = {**store.positions(a, jobs), **store.positions(b, jobs)}
    assert places == {a1[0]: 1, b1[0]: 2, a1[1]: 3, b1[1]: 4, a1[2]: 5}
