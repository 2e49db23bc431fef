"""``Kotta.map``: many calls packed into few jobs, each call with its own outcome."""

from __future__ import annotations

import sys
import threading

import cloudpickle
import pytest

from dask_kotta.client.mapping import CHUNKS_PER_SLOT, CallFuture
from dask_kotta.errors import (
    InvalidRequestError,
    JobCancelledError,
    JobFailedError,
    RemoteError,
)

# The workers cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def picky(x):
    if x % 7 == 3:
        raise KeyError(f"missing {x}")
    return x * 10


def add(a, b):
    return a + b


def sleepy(seconds):
    import time

    time.sleep(seconds)
    return seconds


def lock_of(_):
    import threading

    return threading.Lock()


def test_map_packs_calls_into_few_jobs_and_keeps_their_order(konn):
    slots = konn.queues()["Test"]["slots"]
    futures = konn.map(inc, range(2000), walltime=5)
    assert all(isinstance(f, CallFuture) for f in futures)
    assert konn.gather(futures) == list(range(1, 2001))
    jobs = {f.job_id for f in futures}
    assert len(jobs) <= CHUNKS_PER_SLOT * max(slots, 1), (len(jobs), slots)
    assert len(jobs) > 1  # every slot gets work: not one job for all
    assert futures[5].result() == 6 and futures[5].done() and futures[5].exception() is None


def test_map_zips_iterables_and_obeys_chunksize(konn):
    futures = konn.map(add, [1, 2, 3, 4, 5], [10, 20, 30], walltime=5, chunksize=2)
    assert konn.gather(futures) == [11, 22, 33]  # stops at the shortest, as map() does
    assert len({f.job_id for f in futures}) == 2
    assert konn.jobs(limit=1)[0]["name"] == "map-add-2-2"


def test_one_calls_exception_does_not_lose_its_neighbours(konn):
    futures = konn.map(picky, range(30), walltime=5, chunksize=10)
    out = konn.gather(futures, errors="return")
    for i, value in enumerate(out):
        if i % 7 == 3:
            assert isinstance(value, RemoteError) and isinstance(value, KeyError), value
            assert f"missing {i}" in str(value)
            assert "in picky" in value.remote_traceback  # the user's frame, not ours first
            assert "run_calls" not in value.remote_traceback
            assert any(f"call {i} of the map" in n for n in value.__notes__)
        else:
            assert value == i * 10
    with pytest.raises(KeyError):
        futures[3].result()


def test_a_value_that_cannot_be_pickled_fails_only_its_call(konn):
    futures = konn.map(lock_of, [1], walltime=5)
    with pytest.raises(RemoteError, match="cannot be pickled"):
        futures[0].result()


def test_a_job_that_fails_as_a_whole_fails_each_of_its_calls_saying_why(konn):
    futures = konn.map(sleepy, [0, 0, 60], walltime=0.03, chunksize=3)  # 1.8 s
    for i, f in enumerate(futures):
        with pytest.raises(JobFailedError, match="walltime") as err:
            f.result(timeout=120)
        assert any("ran calls 0-2 of the map" in n for n in err.value.__notes__), i


def test_cancelling_a_call_cancels_its_job_and_says_so_for_each_call(konn):
    futures = konn.map(sleepy, [30, 0], walltime=5, chunksize=2)
    assert futures[1].cancel()
    for f in futures:
        with pytest.raises(JobCancelledError) as err:
            f.result(timeout=120)
        assert any("ran calls 0-1" in n for n in err.value.__notes__)


def test_results_are_read_once_per_job_by_many_threads(konn):
    futures = konn.map(inc, range(200), walltime=5, chunksize=100)
    konn.gather(futures[:1])
    out = [None] * 200

    def read(i):
        out[i] = futures[i].result()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == list(range(1, 201))


def test_bad_map_arguments_are_refused_before_anything_is_sent(konn):
    before = len(konn.jobs(limit=10_000))
    with pytest.raises(InvalidRequestError, match="chunksize"):
        konn.map(inc, range(3), chunksize=0)
    with pytest.raises(InvalidRequestError, match="unknown queue 'Nope'"):
        konn.map(inc, range(3), queue="Nope")
    with pytest.raises(TypeError, match="at least one iterable"):
        konn.map(inc)
    assert len(konn.jobs(limit=10_000)) == before
    assert konn.map(inc, []) == []


def test_the_kotta_api_maps_too(service):
    from kotta import Kotta

    konn = Kotta(service.auth_file.read_text())
    assert konn.gather(konn.map(inc, range(3), walltime=5)) == [1, 2, 3]
