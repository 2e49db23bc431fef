"""dask.annotate on Kotta: per-task queue, walltime, retries, resources; visible in job records."""

from __future__ import annotations

import sys

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import pytest
from dask import delayed

from dask_kotta import KottaScheduler
from dask_kotta.dask import AnnotationError, NoQueueFitsError

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def _records(konn, sched):
    return [konn.job(j) for j in sched.last_run.job_ids]


def _by_first_key(records):
    return {r["annotations"]["dask"]["keys"][0]: r for r in records}


def test_annotations_reach_the_job_records(konn):
    with dask.annotate(queue="Prod", walltime=30, retries=2):
        heavy = delayed(inc)(1, dask_key_name="heavy")
    light = delayed(add)(heavy, 1, dask_key_name="light")
    sched = KottaScheduler(konn, queue="Test", walltime=4)
    assert light.compute(scheduler=sched) == 3
    jobs = _by_first_key(_records(konn, sched))
    prod, test = jobs["heavy"], jobs["light"]
    assert (prod["queue"], prod["walltime_min"], prod["retries"]) == ("Prod", 30, 2)
    assert prod["annotations"]["queue"] == "Prod"
    assert prod["annotations"]["walltime"] == 30
    assert prod["annotations"]["retries"] == 2
    assert prod["annotations"]["dask"] == {"tasks": 1, "keys": ["heavy"]}
    # the other task ran with the scheduler's defaults
    assert (test["queue"], test["walltime_min"], test["retries"]) == ("Test", 4, 0)
    assert test["annotations"]["queue"] == "Test"


def _queues_by_size(konn):
    qs = konn.queues()
    return sorted(qs.items(), key=lambda q: (q[1]["vcpus"], q[1]["memory_bytes"]))


def test_resources_pick_the_smallest_queue_that_fits(konn):
    sized = _queues_by_size(konn)  # whatever queues the session's server has
    small, sq = sized[0]
    need = sq["memory_bytes"] + 1
    bigger = next(name for name, q in sized if q["memory_bytes"] >= need)
    assert bigger != small
    with dask.annotate(resources={"vCPU": 1, "MEM": "1MB"}):
        a = delayed(inc)(1, dask_key_name="fits-small")
    with dask.annotate(resources={"vCPU": 1, "MEM": need}):
        b = delayed(inc)(2, dask_key_name="needs-more-memory")
    sched = KottaScheduler(konn)
    assert dask.compute(a, b, scheduler=sched) == (2, 3)
    jobs = _by_first_key(_records(konn, sched))
    assert jobs["fits-small"]["queue"] == small
    assert jobs["needs-more-memory"]["queue"] == bigger
    assert jobs["fits-small"]["annotations"]["resources"] == {"MEM": "0.95 MiB", "vCPU": 1}


def test_no_queue_fits_names_the_largest_queue(konn):
    name, q = _queues_by_size(konn)[-1]
    with dask.annotate(resources={"vCPU": q["vcpus"] + 1, "MEM": "64GB"}):
        x = delayed(inc)(1, dask_key_name="too-big")
    sched = KottaScheduler(konn)
    with pytest.raises(NoQueueFitsError) as info:
        x.compute(scheduler=sched)
    text = str(info.value)
    assert "too-big" in text and f"largest queue is {name}" in text
    assert sched.last_run.jobs == 0  # refused before anything was submitted


def test_bad_annotations_are_refused(konn):
    with dask.annotate(queue="Nope"):
        x = delayed(inc)(1)
    with pytest.raises(AnnotationError, match="Nope"):
        x.compute(scheduler=KottaScheduler(konn))
    with dask.annotate(resources={"GPU": 1}):
        y = delayed(inc)(1)
    with pytest.raises(AnnotationError, match="GPU"):
        y.compute(scheduler=KottaScheduler(konn))
    with dask.annotate(walltime=10**9):
        z = delayed(inc)(1)
    with pytest.raises(AnnotationError, match="maximum"):
        z.compute(scheduler=KottaScheduler(konn))


def test_array_annotations_survive_optimisation(konn):
    """dask#7036: dask fuses annotated and plain tasks; the annotation still decides the queue."""
    with dask.annotate(queue="Prod"):
        y = da.ones((8, 8), chunks=4) + 1
    total = y.sum()
    sched = KottaScheduler(konn)
    assert total.compute(scheduler=sched) == 128
    records = _records(konn, sched)
    prod = [r for r in records if r["queue"] == "Prod"]
    test = [r for r in records if r["queue"] == "Test"]
    assert prod and test
    for r in prod:
        assert all(k.startswith("('add-") for k in r["annotations"]["dask"]["keys"]), r
    for r in test:
        assert not any(k.startswith("('add-") for k in r["annotations"]["dask"]["keys"]), r


def test_bag_annotations_survive_optimisation(konn):
    with dask.annotate(queue="Prod", retries=1):
        b = db.from_sequence(range(20), npartitions=4).map(inc)
    total = b.filter(lambda x: x % 2 == 0).sum()
    sched = KottaScheduler(konn)
    assert total.compute(scheduler=sched) == sum(x + 1 for x in range(20) if (x + 1) % 2 == 0)
    records = _records(konn, sched)
    prod = [r for r in records if r["queue"] == "Prod"]
    assert len(prod) == 4  # one per partition: the map
    assert all(r["retries"] == 1 for r in prod)
    assert all(r["retries"] == 0 for r in records if r["queue"] == "Test")


def test_requirements_run_a_task_in_its_own_environment(konn):
    """A task annotated with requirements runs in an environment without dask or dask-kotta,
    reading its input from another job and feeding a third."""

    def table(rows):
        import sys

        import tabulate

        have_dask = any(m == "dask" or m.startswith("dask.") for m in sys.modules)
        return tabulate.tabulate(rows), have_dask

    rows = delayed(lambda n: [[i, i * i] for i in range(n)])(3, dask_key_name="rows")
    with dask.annotate(requirements="tabulate==0.9.0\n", walltime=10):
        text = delayed(table)(rows, dask_key_name="table")
    lines = delayed(lambda t: len(t[0].splitlines()))(text, dask_key_name="lines")
    sched = KottaScheduler(konn)
    assert dask.compute(lines, text, scheduler=sched) == (
        5,
        ("-  -\n0  0\n1  1\n2  4\n-  -", False),
    )
    jobs = _by_first_key(_records(konn, sched))
    assert jobs["table"]["requirements"] == "tabulate==0.9.0\n"
    assert jobs["table"]["annotations"]["requirements"] == "tabulate==0.9.0\n"
    assert len(jobs) == 3  # a job per environment: nothing else rode in the requirements job


def test_dataframe_annotations_are_refused_with_what_to_use_instead(konn):
    """Dask's query planning drops dask.annotate on dataframes: Kotta says so and submits
    nothing, and the per-compute setting it names puts the jobs on the queue asked for."""
    import warnings

    import dask.dataframe as dd
    import pandas as pd

    df = dd.from_pandas(pd.DataFrame({"a": range(100), "b": range(100)}), npartitions=1)
    with warnings.catch_warnings():  # Dask's own "Annotations will be ignored" (once a process)
        warnings.filterwarnings("ignore", "Dask annotations", UserWarning)
        with dask.annotate(queue="Prod", walltime=30):
            shifted = df.a + 1
    total = shifted.sum()  # made outside the annotation, from a collection made inside it
    sched = KottaScheduler(konn, queue="Test", walltime=4)
    with pytest.raises(AnnotationError) as info:  # (before: it ran every job on Test)
        total.compute(scheduler=sched)
    assert type(info.value).__name__ == "DataFrameAnnotationError"
    text = str(info.value)
    assert "queue='Prod'" in text and "walltime=30" in text and "query planning" in text
    assert "dask.config.set({'kotta.queue': 'Prod', 'kotta.walltime': 30})" in text
    assert info.value.lost == {"queue": "Prod", "walltime": 30}
    assert sched.last_run.jobs == 0

    # An annotation around the compute itself is refused the same way...
    with dask.annotate(retries=2), pytest.raises(AnnotationError, match="retries=2"):
        df.b.sum().compute(scheduler=sched)
    # ...while delayed, bag and array graphs computed there are not affected.
    with dask.annotate(retries=2):
        assert delayed(inc)(1).compute(scheduler=sched) == 2

    # The advice works: the per-compute setting reaches every job of the dataframe, and the
    # annotation, now equal to what the compute runs with, is no longer refused.
    with dask.config.set({"kotta.queue": "Prod", "kotta.walltime": 30}):
        assert total.compute(scheduler=sched) == sum(range(1, 101))
    records = _records(konn, sched)
    assert records and {(r["queue"], r["walltime_min"]) for r in records} == {("Prod", 30)}
    assert all(r["annotations"]["queue"] == "Prod" for r in records)
    with dask.config.set({"kotta.queue": "Nope"}), pytest.raises(AnnotationError, match="Nope"):
        df.b.sum().compute(scheduler=sched)
