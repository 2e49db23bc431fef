"""The claim arithmetic of the store: how many jobs a slot gets, which, and the budgets."""

from __future__ import annotations

import threading
import time

import pytest

from dask_kotta import defaults as d
from dask_kotta.store.attempts import EndReport
from dask_kotta.store.jobs import JobStore

SPEC = {"jobtype": "script", "queue": "Test", "walltime_min": 1, "script": "true"}


def submit(store, owner, n, queue="Test", **spec) -> list[str]:
    rows = store.insert_jobs(owner, [{**SPEC, "queue": queue, **spec} for _ in range(n)])
    return [job["id"] for job, _ in rows]


def hashes(n, tag="h"):
    return [f"{tag}{i}" for i in range(n)]


@pytest.mark.parametrize("pending, asked", [(0, 4), (3, 4), (4, 4), (10, 4), (5, 0), (40, 32)])
def test_claim_next_takes_the_oldest_min_of_pending_and_asked(store, owner, pending, asked):
    ids = submit(store, owner, pending)
    got = store.claim_next("Test", hashes(asked), 60, "w")
    n = min(pending, asked)
    assert [j["id"] for j in got] == ids[:n], "oldest first, in submission order"
    assert all(j["status"] == d.STAGING_INPUTS and j["attempt"] == 1 for j in got)
    assert [j["dispatch_hash"] for j in got] == hashes(asked)[:n], "job i gets hash i"
    assert store.pending_count("Test", 1000) == pending - n


def test_claim_next_stays_in_its_queue(store, owner):
    test = submit(store, owner, 2)
    prod = submit(store, owner, 2, queue="Prod")
    assert [j["id"] for j in store.claim_next("Prod", hashes(5), 60, "w")] == prod
    assert store.claim_next("Prod", hashes(5), 60, "w") == []
    assert store.pending_count("Test", 10) == 2 and [j["id"] for j in store.pending()] == test


def test_a_claimed_job_is_not_claimed_again(store, owner):
    submit(store, owner, 3)
    first = {j["id"] for j in store.claim_next("Test", hashes(2, "a"), 60, "w")}
    second = {j["id"] for j in store.claim_next("Test", hashes(2, "b"), 60, "w")}
    assert len(first) == 2 and len(second) == 1 and not first & second


def test_pending_count_counts_up_to_its_limit(store, owner):
    submit(store, owner, 7)
    assert [store.pending_count("Test", n) for n in (0, 1, 6, 7, 100)] == [0, 1, 6, 7, 7]
    assert store.pending_count("Prod", 100) == 0


def test_each_claim_is_a_new_attempt(store, owner):
    (jid,) = submit(store, owner, 1)
    (job,) = store.claim_next("Test", ["a"], -1, "w")  # its lease already ran out
    assert store.requeue_or_fail(jid, job["attempt"], "lost", 3) == d.PENDING
    (again,) = store.claim_next("Test", ["b"], 60, "w")
    assert again["attempt"] == job["attempt"] + 1 and again["requeues"] == 1
    assert not store.heartbeat(jid, job["attempt"], "a", 60)
    assert store.heartbeat(jid, again["attempt"], "b", 60)


def test_renew_names_exactly_the_lost_jobs(store, owner):
    submit(store, owner, 3)
    a, b, c = store.claim_next("Test", hashes(3), 60, "w")
    assert store.cancel(b["id"], owner)
    held = [(j["id"], j["attempt"], j["dispatch_hash"]) for j in (a, b, c)]
    assert store.renew(held, 60) == [b["id"]]
    assert store.renew([], 60) == []


def test_expired_lists_active_jobs_whose_lease_ran_out(store, owner):
    submit(store, owner, 3)
    a, b = store.claim_next("Test", hashes(2), 5, "w")
    now = time.time()
    assert store.expired(now) == []
    assert sorted(e["id"] for e in store.expired(now + 30)) == sorted([a["id"], b["id"]])
    assert store.extend_leases(60) == 2, "the pending third job has no lease"
    assert store.expired(now + 30) == []


@pytest.mark.parametrize("max_requeues", [0, 1, 3])
def test_lost_runners_requeue_exactly_max_requeues_times(store, owner, max_requeues):
    (jid,) = submit(store, owner, 1)
    for n in range(max_requeues + 1):
        (job,) = store.claim_next("Test", [f"h{n}"], -1, "w")
        want = d.PENDING if n < max_requeues else d.FAILED
        assert store.requeue_or_fail(jid, job["attempt"], "lost", max_requeues) == want
    got = store.get(jid)
    assert got["status"] == d.FAILED and got["requeues"] == max_requeues
    assert got["reason"] == f"lost ({max_requeues} times; giving up)"
    assert got["failures"] == 0, "a lost worker is not the job's failure"


@pytest.mark.parametrize("max_requeues", [0, 2])
def test_ends_lost_on_the_runners_side_spend_the_requeue_budget(store, owner, max_requeues):
    (jid,) = submit(store, owner, 1, retries=5)
    for n in range(max_requeues + 1):
        (job,) = store.claim_next("Test", [f"h{n}"], 60, "w")
        report = EndReport(
            job_id=jid, attempt=job["attempt"], dispatch_hash=f"h{n}", ok=False,
            reason="fork server died", traceback="", timings={}, outputs=[],
            has_result=False, retry=True, phases=[], requeue=True,
        )  # fmt: skip
        (ended,) = store.finish_many([report], max_requeues=max_requeues)
        assert ended["status"] == (d.PENDING if n < max_requeues else d.FAILED)
    got = store.get(jid)
    assert (got["requeues"], got["failures"]) == (max_requeues, 0)
    assert "giving up" in got["reason"]


@pytest.mark.parametrize("retries", [0, 1, 4])
def test_a_failing_job_runs_retries_plus_one_times(store, owner, retries):
    (jid,) = submit(store, owner, 1, retries=retries)
    runs = 0
    while store.get(jid)["status"] == d.PENDING:
        (job,) = store.claim_next("Test", [f"h{runs}"], 60, "w")
        runs += 1
        report = EndReport(
            job_id=jid, attempt=job["attempt"], dispatch_hash=f"h{runs - 1}", ok=False,
            reason="bad", traceback="", timings={}, outputs=[], has_result=False, retry=True,
            phases=[],
        )  # fmt: skip
        store.finish_many([report])
    got = store.get(jid)
    assert runs == retries + 1 and got["status"] == d.FAILED and got["failures"] == retries + 1


def test_concurrent_claims_never_share_a_job(tmp_path):
    """Two server processes' stores on one database: each job goes to exactly one claim."""
    path = str(tmp_path / "jobs.sqlite")
    stores = [JobStore(path) for _ in range(4)]
    owner = stores[0].get_or_create_user("alice")
    ids = submit(stores[0], owner, 60)
    got: list[list[str]] = [[] for _ in stores]
    errors: list[BaseException] = []

    def claim(i):
        try:
            while batch := stores[i].claim_next("Test", hashes(3, f"s{i}-"), 60, f"w{i}"):
                got[i].extend(j["id"] for j in batch)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert not errors, errors
    claimed = [jid for g in got for jid in g]
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once"


@pytest.mark.parametrize(
    "want, per_job, expected",
    [
        (1, 0.001, 2),  # short jobs: doubles
        (16, 0.001, d.MAX_CLAIM),
        (d.MAX_CLAIM, 0.001, d.MAX_CLAIM),  # never past the cap
        (d.MAX_CLAIM, 0.15, 13),  # a busy host's trivial jobs: still a batch, not one a request
        (d.MAX_CLAIM, 0.5, 4),
        (8, 30.0, 1),  # long jobs: one at a time, none held back from another slot
        (4, 0.0, 8),
    ],
)
def test_a_slot_claims_about_batch_s_of_jobs_like_its_last(want, per_job, expected):
    from dask_kotta.runner.slots import BATCH_S, next_want

    assert next_want(want, per_job) == expected
    assert next_want(want, per_job) * per_job <= max(BATCH_S, per_job)


def test_claims_go_to_the_user_with_the_fewest_running_jobs(store, owner):
    """Fair share: alice has 3 running and 5 pending, bob 2 pending (submitted after all of
    alice's): bob's both come first, then alice's, oldest first within each user."""
    bob = store.get_or_create_user("bob")
    alice_jobs = submit(store, owner, 8)
    store.claim_next("Test", hashes(3, "r"), 60, "w")  # alice's three oldest run
    bobs = submit(store, bob, 2)
    got = [j["id"] for j in store.claim_next("Test", hashes(4), 60, "w")]
    assert got == [*bobs, alice_jobs[3], alice_jobs[4]]


def test_one_users_backlog_does_not_hold_back_anothers_job(store, owner):
    bob = store.get_or_create_user("bob")
    submit(store, owner, 2000)
    (late,) = submit(store, bob, 1)
    # Both have none running: alice's oldest (the older job) goes first, then bob's, not
    # her next 1,999.
    first, second = store.claim_next("Test", hashes(2), 60, "w")
    assert first["owner"] == owner and second["id"] == late


def test_ties_between_users_go_to_the_older_job(store, owner):
    bob = store.get_or_create_user("bob")
    a1 = submit(store, owner, 1)
    b1 = submit(store, bob, 1)
    a2 = submit(store, owner, 1)
    got = [j["id"] for j in store.claim_next("Test", hashes(3), 60, "w")]
    assert got == [*a1, *b1, *a2]


@pytest.mark.parametrize("users", [3, 20])  # 20: more users waiting than a claim asks one by one
def test_the_fair_order_is_the_same_for_few_and_many_users(store, owner, users):
    ids = [owner] + [store.get_or_create_user(f"u{i}") for i in range(users - 1)]
    jobs = {u: [] for u in ids}
    for _ in range(3):  # interleaved submissions: each user's jobs spread over time
        for u in ids:
            jobs[u] += submit(store, u, 1)
    store.claim_next("Test", hashes(2, "r"), 60, "w")  # the two oldest run: u0's and u1's first
    running = {ids[0]: 1, ids[1]: 1}
    pending = {
        u: [j for j in js if j not in (jobs[ids[0]][0], jobs[ids[1]][0])] for u, js in jobs.items()
    }
    order = {
        j: n for n, j in enumerate(j for r in range(3) for u in ids for j in jobs[u][r : r + 1])
    }
    expected = sorted((running.get(u, 0) + k, order[j]) for u, js in pending.items()
                      for k, j in enumerate(js, 1))  # fmt: skip
    by_order = {n: j for j, n in order.items()}
    want = [by_order[n] for _, n in expected[: users + 2]]
    got = [j["id"] for j in store.claim_next("Test", hashes(users + 2), 60, "w")]
    assert got == want
