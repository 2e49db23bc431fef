"""The Dask scheduler's pure steps (``dask/state.py``) and its plan (``dask/plan.py``).

No job runs: the steps are driven by hand in the order the scheduler's loop drives them,
and the plan is cut from plain key graphs as well as from Dask's.
"""

from __future__ import annotations

import random

import pytest
from dask.order import order
from dask.utils_test import add, inc

from dask_kotta.dask.annotations import JobSettings
from dask_kotta.dask.graph import build
from dask_kotta.dask.plan import plan
from dask_kotta.dask.state import (
    evaluate_local,
    finish_task,
    local_keys,
    start_state,
    start_tasks,
)

# a=1 and b=a are data the client evaluates; x..w are tasks.
DSK = {
    "a": 1, "b": "a", "x": (inc, "b"), "y": (add, "x", "a"), "z": (inc, "y"), "w": (inc, "x"),
}  # fmt: skip
TEST = JobSettings("Test", 5)


def _graph(dsk=DSK, keys=("z", "w")):
    graph, flat = build(dsk, list(keys))
    remote = [k for k in graph.nodes if k not in graph.local]
    return graph, remote, set(flat)


def test_local_data_is_evaluated_on_the_client_aliases_after_their_targets():
    graph, remote, _ = _graph()
    assert graph.local == {"a", "b"} and sorted(remote) == ["w", "x", "y", "z"]
    assert evaluate_local(graph) == {"a": 1, "b": 1}
    assert local_keys(graph, ["x"]) == ["a", "b"], "dependencies first"
    assert local_keys(graph, ["z", "w"]) == [], "z and w read only tasks"
    assert local_keys(graph, ["y"]) == ["a"]


def test_the_start_state_has_dask_locals_shape():
    graph, remote, _ = _graph()
    state = start_state(graph, remote, evaluate_local(graph))
    assert state["ready"] == ["x"]
    assert state["waiting"] == {"y": {"x"}, "z": {"y"}, "w": {"x"}}
    assert state["dependents"] == {"x": {"y", "w"}, "y": {"z"}, "z": set(), "w": set()}
    assert state["waiting_data"] == {"x": {"y", "w"}, "y": {"z"}}
    assert state["cache"] == {"a": 1, "b": 1}
    assert state["running"] == state["finished"] == state["released"] == set()


def test_steps_move_tasks_forward_and_release_what_nobody_needs():
    graph, remote, requested = _graph()
    state = start_state(graph, remote, evaluate_local(graph))
    start_tasks(state, ["x", "y"])  # one fragment: x then y
    assert state["ready"] == [] and state["running"] == {"x", "y"}
    assert "y" not in state["waiting"], "a task in a running fragment waits no more"
    state["cache"]["x"] = 2
    finish_task(state, "x", requested)
    assert state["ready"] == ["w"] and state["finished"] == {"x"}
    assert "x" in state["cache"], "w still needs x"
    finish_task(state, "y", requested)
    assert state["ready"] == ["w", "z"]
    start_tasks(state, ["w", "z"])
    finish_task(state, "w", requested)
    assert state["released"] == {"x"} and "x" not in state["cache"]
    state["cache"]["z"] = 5
    finish_task(state, "z", requested)
    assert state["finished"] == set(remote) and not state["running"] and not state["waiting"]
    assert state["released"] == {"x", "y"}, "requested z and w are never released"
    assert state["cache"] == {"a": 1, "b": 1, "z": 5}


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_run_to_the_end_in_plan_order(seed):
    """Submit ready fragments, finish them in any order: every task finishes exactly once."""
    rng = random.Random(seed)
    n = rng.randint(1, 80)
    dsk = {}
    for i in range(n):
        deps = rng.sample(range(i), k=min(i, rng.choice([0, 1, 1, 2, 3]))) if i else []
        dsk[f"k{i}"] = (sum, [f"k{j}" for j in deps]) if deps else (inc, i)
    keys = rng.sample(sorted(dsk), k=min(n, 3))
    graph, remote, requested = _graph(dsk, keys)
    prio = order(graph.nodes)
    frags = plan(remote, graph.deps, prio.__getitem__, lambda k: (TEST, ()), requested,
                 rng.randint(1, 6))  # fmt: skip
    state = start_state(graph, remote, evaluate_local(graph))
    waiting = {f.index: len(f.needs) for f in frags}
    ready = [f for f in frags if not f.needs]
    running, finished = [], []
    while ready or running:
        for f in ready:
            # A fragment goes out once all it reads is done: its tasks wait only on each other.
            assert all(state["waiting"].get(k, set()) <= set(f.keys) for k in f.keys)
            start_tasks(state, f.keys)
            running.append(f)
        ready = []
        f = running.pop(rng.randrange(len(running)))
        for k in f.keys:
            finish_task(state, k, requested)
            finished.append(k)
        for g in sorted(f.dependents):
            waiting[g] -= 1
            if not waiting[g]:
                ready.append(frags[g])
    assert sorted(finished) == sorted(remote) and len(set(finished)) == len(finished)
    assert not state["waiting"] and not state["ready"] and not state["running"]
    assert requested.isdisjoint(state["released"])


# -- the plan on plain key graphs ------------------------------------------------------------


def _cut(deps: dict, requested=(), parallelism=4, settings=None, **kw):
    keys = list(deps)
    settings = settings or (lambda k: (TEST, ()))
    return plan(keys, lambda k: deps[k], keys.index, settings, set(requested), parallelism, **kw)


def test_a_chain_is_one_job():
    deps = {f"c{i}": ({f"c{i - 1}"} if i else set()) for i in range(50)}
    (frag,) = _cut(deps, {"c49"})
    assert frag.keys == [f"c{i}" for i in range(50)] and frag.returns == ["c49"]
    assert not frag.needs and not frag.shared


def test_independent_roots_spread_over_the_parallelism_and_meet_in_one_join():
    deps = {f"r{i}": set() for i in range(10)} | {"total": {f"r{i}" for i in range(10)}}
    frags = _cut(deps, {"total"}, parallelism=4)
    runs = frags[:4]
    assert [k for f in runs for k in f.keys] == [f"r{i}" for i in range(10)], "contiguous runs"
    assert sorted(len(f.keys) for f in runs) == [2, 2, 3, 3]
    tail = frags[-1]
    assert tail.keys == ["total"] and set(tail.needs) == {0, 1, 2, 3}
    assert all(f.dependents == {4} and f.shared == f.keys for f in frags[:4])


def test_parallelism_one_makes_one_job_of_a_diamond():
    deps = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}}
    (frag,) = _cut(deps, {"d"}, parallelism=1)
    assert frag.keys == ["a", "b", "c", "d"]


def test_tasks_of_different_settings_never_share_a_job():
    prod = JobSettings("Prod", 5)
    deps = {"a": set(), "b": {"a"}, "c": {"b"}}
    frags = _cut(deps, {"c"}, settings=lambda k: (prod if k == "b" else TEST, ()))
    assert [f.keys for f in frags] == [["a"], ["b"], ["c"]]
    assert [f.settings.queue for f in frags] == ["Test", "Prod", "Test"]
    assert frags[1].needs == {0: ["a"]} and frags[2].needs == {1: ["b"]}


def test_fuse_off_and_max_tasks():
    deps = {f"c{i}": ({f"c{i - 1}"} if i else set()) for i in range(7)}
    assert len(_cut(deps, fuse=False)) == 7
    assert [len(f.keys) for f in _cut(deps, max_tasks=3)] == [3, 3, 1]
    sealed = JobSettings("Test", 5, fuse=False)
    frags = _cut(deps, settings=lambda k: (sealed if k == "c3" else TEST, ()))
    assert [f.keys for f in frags] == [["c0", "c1", "c2"], ["c3"], ["c4", "c5", "c6"]]


def test_inputs_staged_under_one_name_go_to_different_jobs():
    urls = {"a": ("s3://b/x/data.csv",), "b": ("s3://b/y/data.csv",), "c": ("s3://b/x/data.csv",)}
    deps = {"a": set(), "b": set(), "c": set(), "t": {"a", "b", "c"}}
    frags = _cut(deps, {"t"}, parallelism=1, settings=lambda k: (TEST, urls.get(k, ())))
    for f in frags:
        names = [u.rsplit("/", 1)[1] for u in f.inputs]
        assert len(names) == len(set(names)), f.inputs
    assert sorted(u for f in frags for u in f.inputs) == ["s3://b/x/data.csv", "s3://b/y/data.csv"]
    assert next(f for f in frags if "a" in f.keys).inputs == ["s3://b/x/data.csv"]
