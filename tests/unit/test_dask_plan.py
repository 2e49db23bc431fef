"""The pure parts of the Dask scheduler: cutting graphs into jobs, annotations, task encoding.

No service here: these check the properties the real-parts tests rely on, on
many more graph shapes than a service could run quickly.
"""

from __future__ import annotations

import random

import dask
import dask.array as da
import pytest
from dask import delayed
from dask._task_spec import convert_legacy_graph
from dask.order import order
from dask.utils_test import add, inc

from dask_kotta.dask.annotations import (
    AnnotationError,
    JobSettings,
    NoQueueFitsError,
    SettingsResolver,
)
from dask_kotta.dask.graph import build
from dask_kotta.dask.plan import plan
from dask_kotta.dask.remote import encode, fragment_spec, run_fragment

DEFAULT = JobSettings("Test", 5)
QUEUES = {
    "Test": {"vcpus": 2, "memory_bytes": 4 * 2**30, "max_walltime_min": 1440},
    "Prod": {"vcpus": 32, "memory_bytes": 256 * 2**30, "max_walltime_min": 10080},
}


def _plan(dsk, keys, parallelism=8, settings=None, **kw):
    graph, flat = build(dsk, keys)
    remote = [k for k in graph.nodes if k not in graph.local]
    prio = order(graph.nodes)
    settings = settings or (lambda k: (DEFAULT, graph.task_inputs.get(k, ())))
    frags = plan(remote, graph.deps, prio.__getitem__, settings, set(flat), parallelism, **kw)
    _check(graph, remote, frags, set(flat))
    return graph, frags


def _check(graph, remote, frags, requested):
    """Every task in exactly one fragment; fragments in topological order; reads declared."""
    where = {}
    for f in frags:
        for k in f.keys:
            assert k not in where
            where[k] = f.index
    assert set(where) == set(remote)
    for f in frags:
        seen = set()
        for k in f.keys:
            for d in graph.deps(k):
                if d in graph.local:
                    continue
                if where[d] == f.index:
                    assert d in seen, "a task runs before its dependency"
                else:
                    assert where[d] < f.index, "fragments are not in topological order"
                    assert d in f.needs[where[d]] and d in frags[where[d]].shared
            seen.add(k)
        assert set(f.returns) == {k for k in f.keys if k in requested}
        assert all(f.index in frags[e].dependents for e in f.needs)


def _chains(n, length):
    dsk = {}
    for c in range(n):
        dsk[("x", c, 0)] = (inc, c)
        for i in range(1, length):
            dsk[("x", c, i)] = (inc, ("x", c, i - 1))
    return dsk, [("x", c, length - 1) for c in range(n)]


def _tree(leaves):
    dsk = {("t", 0, i): (inc, i) for i in range(leaves)}
    level, n = 0, leaves
    while n > 1:
        for i in range(n // 2):
            dsk[("t", level + 1, i)] = (add, ("t", level, 2 * i), ("t", level, 2 * i + 1))
        level, n = level + 1, n // 2
    return dsk, ("t", level, 0)


def test_linear_chains_fuse_and_spread_over_the_parallelism():
    dsk, keys = _chains(10, 100)
    _, frags = _plan(dsk, keys, parallelism=8)
    assert len(frags) == 8
    assert all(not f.needs for f in frags)  # one round
    assert sorted(len(f.keys) for f in frags) == [100] * 6 + [200] * 2


def test_tree_reduction_is_parallel_runs_plus_one_tail():
    dsk, key = _tree(512)
    _, frags = _plan(dsk, key, parallelism=8)
    assert len(frags) == 9
    tail = frags[-1]
    assert len(tail.needs) == 8 and tail.returns == [key]
    assert all(len(f.keys) == 127 for f in frags[:-1])  # a subtree of 64 leaves each


def test_fuse_false_makes_one_job_per_task():
    dsk, key = _tree(16)
    _, frags = _plan(dsk, key, fuse=False)
    assert len(frags) == 31


def test_max_tasks_per_job():
    dsk, keys = _chains(1, 1000)
    _, frags = _plan(dsk, keys, max_tasks=300)
    assert [len(f.keys) for f in frags] == [300, 300, 300, 100]


@pytest.mark.parametrize("seed", range(30))
def test_random_graphs_cut_into_a_valid_dag(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 120)
    dsk = {}
    for i in range(n):
        deps = rng.sample(range(i), k=min(i, rng.choice([0, 1, 1, 2, 3]))) if i else []
        dsk[f"k{i}"] = (sum, [f"k{d}" for d in deps]) if deps else (inc, i)
    prod = {f"k{i}" for i in range(n) if rng.random() < 0.2}
    sealed = {f"k{i}" for i in range(n) if rng.random() < 0.05}

    def settings(k):
        s = JobSettings("Prod" if k in prod else "Test", 5, fuse=k not in sealed)
        return s, ()

    keys = rng.sample(sorted(dsk), k=min(n, 3))
    graph, frags = _plan(dsk, keys, parallelism=rng.randint(1, 8), settings=settings)
    for f in frags:
        assert len({settings(k)[0] for k in f.keys}) == 1  # one kind of job per fragment
        for k in f.keys:
            if k in sealed:
                assert f.keys == [k]


def test_inputs_are_unioned_but_never_collide():
    class Reader:
        def __init__(self, url):
            self.__kotta_inputs__ = (url,)

        def __call__(self):
            return 1

    urls = ["s3://b/x/a.txt", "s3://b/y/a.txt", "s3://b/x/b.txt", "s3://b/x/c.txt"]
    dsk = {f"r{i}": (Reader(u),) for i, u in enumerate(urls)}
    dsk["total"] = (sum, [f"r{i}" for i in range(4)])
    _, frags = _plan(dsk, "total", parallelism=1)
    for f in frags:
        names = [u.rsplit("/", 1)[1] for u in f.inputs]
        assert len(names) == len(set(names))
    assert sorted(u for f in frags for u in f.inputs) == sorted(urls)


def test_resources_pick_the_smallest_queue_and_errors_name_the_largest():
    r = SettingsResolver(DEFAULT, lambda: QUEUES)
    assert r.resolve("k", {"resources": {"vCPU": 16, "MEM": "64GB"}})[0].queue == "Prod"
    assert r.resolve("k", {"resources": {"vcpus": 1, "memory": "1GB"}})[0].queue == "Test"
    assert r.resolve("k", {"queue": "Test", "resources": {"vCPU": 16}})[0].queue == "Test"
    with pytest.raises(NoQueueFitsError, match="largest queue is Prod"):
        r.resolve("big", {"resources": {"vCPU": 64}})
    with pytest.raises(AnnotationError, match="retries"):
        r.resolve("k", {"retries": -1})
    s, urls = r.resolve(
        "k", {"walltime": 30, "requirements": "numpy\n", "inputs": "s3://b/a, s3://b/c"}
    )
    assert (s.walltime_min, s.requirements, urls) == (30.0, "numpy\n", ("s3://b/a", "s3://b/c"))
    assert s.record() == {
        "queue": "Test",
        "walltime": 30.0,
        "retries": 0,
        "requirements": "numpy\n",
    }


def test_annotations_are_read_before_optimisation_drops_them():
    with dask.annotate(queue="Prod"):
        y = da.ones((4, 4), chunks=2) + 1
    total = y.sum()
    seen = {}

    def get(dsk, keys, **kwargs):
        seen["graph"], _ = build(dsk, keys)
        return dask.get(dsk.__dask_graph__(), keys)

    assert total.compute(scheduler=get) == 32
    graph = seen["graph"]
    annotated = {k for k, a in graph.annotations.items() if a.get("queue") == "Prod"}
    add_tasks = {k for k in graph.nodes if isinstance(k, tuple) and k[0].startswith("add-")}
    assert len(add_tasks) == 4 and add_tasks <= annotated
    # the sum chunks dask had fused into the annotated tasks were split back out, unannotated
    sums = {
        k for k in graph.nodes if isinstance(k, tuple) and k[0].startswith("sum-") and len(k) == 3
    }
    assert len(sums) == 4 and not sums & annotated


def _run_locally(dsk, key, tmp_path, monkeypatch):
    """Encode a graph as one fragment and run it in this process, as a job would."""
    monkeypatch.setenv("KOTTA_WORKDIR", str(tmp_path))
    graph, flat = build(dsk, key)
    prio = order(graph.nodes)
    keys = sorted(graph.nodes, key=prio.__getitem__)
    spec = fragment_spec(
        [(k, encode(graph.nodes[k]), tuple(graph.deps(k))) for k in keys], {}, [], flat
    )
    return run_fragment(spec)[key]


@pytest.mark.parametrize(
    "dsk, key, expected",
    [
        ({"x": 1, "y": (inc, "x"), "z": (add, (inc, "x"), "y")}, "z", 4),
        (
            {
                "a": [1, 2, 3],
                "b": "a",
                "f": [[[(sum, "a"), "c"], (sum, "b")], 2],
                "c": [1, (inc, 1)],
            },
            "f",
            [[[6, [1, 2]], 6], 2],
        ),
        ({"x": 1, "y": (dict, [["a", "x"], ["b", (inc, "x")]])}, "y", {"a": 1, "b": 2}),
        ({"x": 1, "s": (sorted, (set, ["x", (inc, "x")]))}, "s", [1, 2]),
        ({"x": 1, "y": (lambda x, z: x + len(z), "x", {1})}, "y", 2),
    ],
)
def test_encoded_tasks_compute_what_dask_computes(dsk, key, expected, tmp_path, monkeypatch):
    assert dask.get(dsk, key) == expected
    assert _run_locally(dsk, key, tmp_path, monkeypatch) == expected


def test_encoded_fused_subgraphs_and_collections(tmp_path, monkeypatch):
    x = (da.arange(60, chunks=7).reshape(6, 10).rechunk((3, 4)) * 2).T.sum(axis=0)
    dsk = dict(x.__dask_optimize__(x.__dask_graph__(), x.__dask_keys__()))
    dsk["out"] = (list, list(dask.core.flatten(x.__dask_keys__())))
    want = dask.get(dsk, "out")
    got = _run_locally(dsk, "out", tmp_path, monkeypatch)
    assert [a.tolist() for a in got] == [a.tolist() for a in want]
    d = delayed(lambda **kw: kw)(a=delayed(inc)(1), b=[delayed(inc)(2), 5])
    dsk = convert_legacy_graph(dict(d.__dask_graph__()))
    assert _run_locally(dsk, d.key, tmp_path, monkeypatch) == {"a": 2, "b": [3, 5]}
