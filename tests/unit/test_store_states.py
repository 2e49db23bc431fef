"""The job store's state machine on a temp SQLite file: every transition, allowed or refused.

Each status change is one guarded statement; a refused one changes nothing (not the
row, not the history). Jobs reach each status through the store's own methods.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from dask_kotta import defaults as d
from dask_kotta.store.attempts import EndReport
from dask_kotta.store.schema import jobs

H = "h"  # the dispatch hash of attempt 1
SPEC = {"jobtype": "script", "queue": "Test", "walltime_min": 1, "script": "true", "retries": 1}


def new_job(store, owner, **spec) -> str:
    ((job, created),) = store.insert_jobs(owner, [{**SPEC, **spec}])
    assert created and job["status"] == d.PENDING
    return job["id"]


def end(store, jid, attempt=1, dispatch_hash=H, ok=True, retry=False, requeue=False, **kw):
    """One attempt's end report through ``finish_many``, as a runner's slot sends it."""
    report = EndReport(
        job_id=jid, attempt=attempt, dispatch_hash=dispatch_hash, ok=ok,
        reason="" if ok else "it broke", traceback="", timings={}, outputs=[],
        has_result=False, retry=retry, phases=[], requeue=requeue,
    )  # fmt: skip
    ((ended,),) = [store.finish_many([report], **kw)]
    return ended["status"] if ended else None


def reach(store, owner, status: str) -> str:
    """A job in ``status`` whose attempt 1 carries hash ``H`` (a pending job is dispatched)."""
    jid = new_job(store, owner)
    assert store.dispatch(jid, H) == 1
    if status == d.PENDING:
        return jid
    if status == d.CANCELLED:
        assert store.cancel(jid, owner)
        return jid
    assert store.claim(jid, 1, H, 60, "w")["status"] == d.STAGING_INPUTS
    if status in (d.PROCESSING, d.STAGING_OUTPUTS):
        assert store.advance(jid, 1, H, d.PROCESSING, 60)
    if status == d.STAGING_OUTPUTS:
        assert store.advance(jid, 1, H, d.STAGING_OUTPUTS, 60)
    if status == d.COMPLETED:
        assert end(store, jid) == d.COMPLETED
    if status == d.FAILED:
        assert end(store, jid, ok=False) == d.FAILED
    assert store.get(jid)["status"] == status
    return jid


# Each operation returns the store's answer; ``moved`` says whether it is a status change.
OPS = {
    "claim": lambda s, o, j: s.claim(j, 1, H, 60, "w"),
    "advance to processing": lambda s, o, j: s.advance(j, 1, H, d.PROCESSING, 60),
    "advance to staging_outputs": lambda s, o, j: s.advance(j, 1, H, d.STAGING_OUTPUTS, 60),
    "advance to staging_inputs": lambda s, o, j: s.advance(j, 1, H, d.STAGING_INPUTS, 60),
    "advance to completed": lambda s, o, j: s.advance(j, 1, H, d.COMPLETED, 60),
    "finish ok": lambda s, o, j: end(s, j),
    "finish failed, may retry": lambda s, o, j: end(s, j, ok=False, retry=True),
    "finish failed": lambda s, o, j: end(s, j, ok=False),
    "finish lost (requeue)": lambda s, o, j: end(s, j, ok=False, requeue=True),
    "cancel": lambda s, o, j: s.cancel(j, o),
    "requeue_or_fail": lambda s, o, j: s.requeue_or_fail(j, 1, "lost", 3),
    "fail_pending": lambda s, o, j: s.fail_pending(j, 1, "no worker"),
}

_ACTIVE_ENDS = {
    "finish ok": d.COMPLETED,
    "finish failed, may retry": d.PENDING,  # retries=1 and no failure yet
    "finish failed": d.FAILED,
    "finish lost (requeue)": d.PENDING,
    "cancel": d.CANCELLED,
    "requeue_or_fail": d.PENDING,
    "fail_pending": d.FAILED,
}
#: start status -> {operation: the status it moves the job to}; every other pair is refused.
ALLOWED = {
    d.PENDING: {"claim": d.STAGING_INPUTS, "cancel": d.CANCELLED, "fail_pending": d.FAILED},
    d.STAGING_INPUTS: {
        "advance to processing": d.PROCESSING,
        "advance to staging_outputs": d.STAGING_OUTPUTS,
        **_ACTIVE_ENDS,
    },
    d.PROCESSING: {"advance to staging_outputs": d.STAGING_OUTPUTS, **_ACTIVE_ENDS},
    d.STAGING_OUTPUTS: dict(_ACTIVE_ENDS),
    d.COMPLETED: {},
    d.FAILED: {},
    d.CANCELLED: {},
}


def test_the_table_covers_every_status():
    assert set(ALLOWED) == set(d.SERVER_STATUSES)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("start", list(d.SERVER_STATUSES))
def test_transition(store, owner, start, op):
    jid = reach(store, owner, start)
    before, history = store.get(jid), store.events(jid)
    answer = OPS[op](store, owner, jid)
    after = store.get(jid)
    target = ALLOWED[start].get(op)
    if target is None:
        assert answer in (None, False), f"{start} --{op}--> must be refused, got {answer!r}"
        assert after == before, "a refused transition changed the row"
        assert store.events(jid) == history, "a refused transition wrote history"
    else:
        assert answer not in (None, False), f"{start} --{op}--> {target} was refused"
        assert after["status"] == target
        new = store.events(jid)[len(history) :]
        assert [e["status"] for e in new] == [target]


@pytest.mark.parametrize("status", list(d.ACTIVE_STATUSES))
@pytest.mark.parametrize("attempt, dispatch_hash", [(1, "other"), (2, H), (0, H)])
def test_a_stale_or_forged_attempt_moves_nothing(store, owner, status, attempt, dispatch_hash):
    """The guard is the attempt and its dispatch hash, not only the status."""
    jid = reach(store, owner, status)
    before = store.get(jid)
    assert not store.heartbeat(jid, attempt, dispatch_hash, 60)
    assert store.runner_job(jid, attempt, dispatch_hash) is None
    assert not store.advance(jid, attempt, dispatch_hash, d.STAGING_OUTPUTS, 60)
    assert end(store, jid, attempt, dispatch_hash) is None
    assert store.renew([(jid, attempt, dispatch_hash)], 60) == [jid]
    assert store.get(jid) == before
    assert store.heartbeat(jid, 1, H, 60), "the attempt that holds it still does"
    assert store.runner_job(jid, 1, H)["id"] == jid


def test_dispatch_starts_a_new_attempt_of_a_pending_job_only(store, owner):
    jid = new_job(store, owner)
    assert store.dispatch(jid, "a") == 1
    assert store.dispatch(jid, "b") == 2, "a re-dispatch replaces the attempt"
    assert store.claim(jid, 1, "a", 60, "w") is None, "the replaced attempt cannot claim"
    assert store.claim(jid, 2, "b", 60, "w")["attempt"] == 2
    assert store.dispatch(jid, "c") is None, "a running job is not dispatched again"


def test_a_retried_job_runs_as_a_new_attempt(store, owner):
    jid = reach(store, owner, d.PROCESSING)
    assert end(store, jid, ok=False, retry=True) == d.PENDING
    assert store.get(jid)["failures"] == 1
    assert not store.heartbeat(jid, 1, H, 60)
    assert store.dispatch(jid, "h2") == 2
    assert store.claim(jid, 2, "h2", 60, "w")["status"] == d.STAGING_INPUTS
    assert end(store, jid, 2, "h2", ok=False, retry=True) == d.FAILED, "retries=1 is spent"
    got = store.get(jid)
    assert (got["failures"], got["reason"]) == (2, "it broke")


def test_unreported_phases_are_recorded_in_order(store, owner):
    jid = reach(store, owner, d.STAGING_INPUTS)
    report = EndReport(
        job_id=jid, attempt=1, dispatch_hash=H, ok=True, reason="", traceback="", timings={},
        outputs=[], has_result=False, retry=False,
        phases=[(d.PROCESSING, 1.0), (d.STAGING_OUTPUTS, 2.0), (d.PROCESSING, 3.0)],
    )  # fmt: skip
    assert store.finish_many([report])[0]["status"] == d.COMPLETED
    assert [e["status"] for e in store.events(jid)] == [
        d.PENDING, d.STAGING_INPUTS, d.PROCESSING, d.STAGING_OUTPUTS, d.COMPLETED,
    ]  # fmt: skip


def test_the_same_end_reported_twice_in_one_batch_counts_once(store, owner):
    jid = reach(store, owner, d.PROCESSING)
    report = EndReport(
        job_id=jid, attempt=1, dispatch_hash=H, ok=False, reason="x", traceback="", timings={},
        outputs=[], has_result=False, retry=True, phases=[],
    )  # fmt: skip
    first, second = store.finish_many([report, report])
    assert first["status"] == d.PENDING and second is None
    assert store.get(jid)["failures"] == 1


def test_an_end_is_recorded_when_a_phase_lands_between_its_read_and_its_write(store, owner):
    """The deferred ``processing`` report of a short job races its end (issue 13, item 1)."""
    from dask_kotta.store.jobs import JobStore

    jid = reach(store, owner, d.STAGING_INPUTS)
    other = JobStore(str(store.engine.url.database))  # another connection, as a second request
    landed: list[bool] = []

    def phase_lands(job, i):
        # Called after finish_many read the row and before it writes the end.
        if not landed:
            landed.append(other.advance(jid, 1, H, d.PROCESSING, 60))

    report = EndReport(
        job_id=jid, attempt=1, dispatch_hash=H, ok=True, reason="", traceback="", timings={},
        outputs=[], has_result=False, retry=False, phases=[(d.PROCESSING, 1.0)],
    )  # fmt: skip
    try:
        (ended,) = store.finish_many([report], before=phase_lands)
    finally:
        other.close()
    assert landed == [True]
    assert ended is not None and ended["status"] == d.COMPLETED
    assert store.get(jid)["status"] == d.COMPLETED
    # The phase is in the history once, from whichever report recorded it.
    assert [e["status"] for e in store.events(jid)] == [
        d.PENDING, d.STAGING_INPUTS, d.PROCESSING, d.COMPLETED,
    ]  # fmt: skip


def test_a_late_end_of_a_taken_back_attempt_ends_the_job_until_another_claims_it(store, owner):
    """Issue 13, item 3: an end kept on a worker's disk while the server was away."""
    jid = reach(store, owner, d.PROCESSING)
    assert store.requeue_or_fail(jid, 1, "its worker is gone", 3) == d.PENDING
    assert not store.heartbeat(jid, 1, H, 60), "taken back: the attempt holds no lease"
    assert end(store, jid) == d.COMPLETED, "the late end of the attempt that ran it counts"
    got = store.get(jid)
    assert (got["attempt"], got["requeues"], got["failures"]) == (1, 1, 0)
    assert end(store, jid) is None, "and only once"
    # Claimed again first: the new attempt runs, the late end of the old one is refused.
    jid = reach(store, owner, d.PROCESSING)
    assert store.requeue_or_fail(jid, 1, "its worker is gone", 3) == d.PENDING
    (claimed,) = store.claim_next("Test", ["h2"], 60, "w2")
    assert claimed["id"] == jid and claimed["attempt"] == 2
    assert end(store, jid) is None
    assert store.get(jid)["status"] == d.STAGING_INPUTS
    assert end(store, jid, 2, "h2") == d.COMPLETED


def test_a_late_end_never_counts_twice(store, owner):
    # A failure that was recorded (the job went back to pending for its retry), sent again:
    jid = reach(store, owner, d.PROCESSING)
    assert end(store, jid, ok=False, retry=True) == d.PENDING
    assert end(store, jid, ok=False, retry=True) is None
    assert store.get(jid)["failures"] == 1
    # A lost attempt's own requeue report, after the server already took the job back:
    jid = reach(store, owner, d.PROCESSING)
    assert store.requeue_or_fail(jid, 1, "its worker is gone", 3) == d.PENDING
    assert end(store, jid, ok=False, requeue=True) is None
    assert store.get(jid)["requeues"] == 1
    # An attempt dispatched but never claimed (one dask task per job) ran nothing:
    jid = new_job(store, owner)
    assert store.dispatch(jid, H) == 1
    assert end(store, jid) is None and store.get(jid)["status"] == d.PENDING


def test_the_database_knows_exactly_the_python_statuses(store, owner):
    with store.engine.connect() as c:
        ddl = c.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'jobs'")).scalar()
    check = re.search(r"CONSTRAINT jobs_status_valid CHECK \(status IN \(([^)]*)\)\)", ddl)
    assert check, ddl
    in_db = [s.strip().strip("'") for s in check.group(1).split(",")]
    assert in_db == list(d.SERVER_STATUSES)
    assert d.UNSUBMITTED not in in_db, "unsubmitted exists only on the client"
    jid = new_job(store, owner)
    for status in d.SERVER_STATUSES:
        with store.engine.begin() as c:
            c.execute(jobs.update().where(jobs.c.id == jid).values(status=status))
    for bogus in ("bogus", d.UNSUBMITTED, "PENDING"):
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as c:
            c.execute(jobs.update().where(jobs.c.id == jid).values(status=bogus))
