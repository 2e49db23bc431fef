"""The scheduler's task state: pure steps, no I/O (as ``dask.local``'s).

The state has ``dask.local``'s shape, so Dask's callbacks (``ProgressBar``,
``Profiler``, any ``Callback``) read it unchanged: ``dependencies``,
``dependents``, ``waiting`` (task -> unfinished dependencies), ``ready``
(tasks whose dependencies are done, not yet sent), ``running`` (tasks of
submitted jobs), ``finished``, ``waiting_data`` / ``released`` and ``cache``
(values the client holds: local data and requested results).
"""

from __future__ import annotations

from typing import Any

from .graph import Graph

Key = Any


def start_state(graph: Graph, remote: list[Key], cache: dict[Key, Any]) -> dict[str, Any]:
    """The ``dask.local``-shaped state of the remote tasks, with local data in ``cache``."""
    remote_set = set(remote)
    dependencies = {k: set(graph.deps(k)) for k in remote}
    dependents: dict[Key, set[Key]] = {k: set() for k in remote}
    for k, ds in dependencies.items():
        for dep in ds:
            if dep in dependents:
                dependents[dep].add(k)
    waiting = {}
    ready = []
    for k in remote:
        w = {dep for dep in dependencies[k] if dep in remote_set}
        if w:
            waiting[k] = w
        else:
            ready.append(k)
    return {
        "dependencies": dependencies,
        "dependents": dependents,
        "waiting": waiting,
        "waiting_data": {k: set(v) for k, v in dependents.items() if v},
        "cache": cache,
        "ready": ready,
        "running": set(),
        "finished": set(),
        "released": set(),
    }


def start_tasks(state: dict[str, Any], keys: list[Key]) -> None:
    """Move a submitted fragment's tasks to ``running``."""
    ready = set(keys)
    state["ready"][:] = [k for k in state["ready"] if k not in ready]
    for k in keys:
        state["waiting"].pop(k, None)
        state["running"].add(k)


def finish_task(state: dict[str, Any], key: Key, requested: set[Key]) -> None:
    """A task's job completed: update dependents and release data nobody needs."""
    for dep in state["dependents"].get(key, ()):
        w = state["waiting"].get(dep)
        if w is not None:
            w.discard(key)
            if not w:
                del state["waiting"][dep]
                state["ready"].append(dep)
    for dep in state["dependencies"].get(key, ()):
        wd = state["waiting_data"].get(dep)
        if wd is not None:
            wd.discard(key)
            if not wd:
                del state["waiting_data"][dep]
                if dep not in requested:
                    state["released"].add(dep)
                    state["cache"].pop(dep, None)
    state["running"].discard(key)
    state["finished"].add(key)


def evaluate_local(graph: Graph) -> dict[Key, Any]:
    """Values of the graph's plain data, evaluated here (aliases after their targets)."""
    cache: dict[Key, Any] = {}
    for k in graph.local:
        stack = [k]
        while stack:
            top = stack[-1]
            if top in cache:
                stack.pop()
                continue
            node = graph.nodes[top]
            missing = [dep for dep in node.dependencies if dep not in cache]
            if missing:
                stack.extend(missing)
                continue
            cache[top] = node({dep: cache[dep] for dep in node.dependencies})
            stack.pop()
    return cache


def local_keys(graph: Graph, keys: list[Key]) -> list[Key]:
    """The local data a fragment's tasks need, dependencies first."""
    out: dict[Key, Any] = {}
    for k in keys:
        stack = [dep for dep in graph.deps(k) if dep in graph.local]
        while stack:
            top = stack[-1]
            if top in out:
                stack.pop()
                continue
            missing = [dep for dep in graph.deps(top) if dep not in out]
            if missing:
                stack.extend(missing)
                continue
            out[top] = None
            stack.pop()
    return list(out)
