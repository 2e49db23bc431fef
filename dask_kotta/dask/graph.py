"""From whatever ``get`` is handed to one plain graph, with each task's annotations.

``get(dsk, keys)`` may receive a dict of old-style tuples, a ``HighLevelGraph``
or (from ``dask.compute``) an optimised expression. This module turns all of
them into ``{key: GraphNode}`` (``dask._task_spec``), culled to what the keys
need, with the annotations of every remaining task.

Annotations are read twice over, because optimisation drops them (dask#7036):
the expression's own ``__dask_annotations__()`` (after optimisation), and the
layers of the *unoptimised* ``HighLevelGraph`` inside each ``HLGExpr``. A task
that dask's linear fusion made out of tasks with different annotations is
split back into those tasks here, so no annotation is lost or misapplied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask._task_spec import (
    Alias,
    DataNode,
    GraphNode,
    Task,
    _execute_subgraph,
    convert_legacy_graph,
)
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph

Key = Any


@dataclass
class Graph:
    """A culled graph: ``tasks`` to run remotely, ``local`` nodes the client evaluates."""

    #: Every node the requested keys need, in a valid execution order.
    nodes: dict[Key, GraphNode]
    #: Keys of nodes that are plain data (``DataNode``, or aliases of it): never a job of their own.
    local: set[Key]
    #: Annotations of each key that has any.
    annotations: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: Input URLs carried by the tasks themselves (``func.__kotta_inputs__``).
    task_inputs: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    #: Files tasks leave in the job's directory for the runner to write to ``s3://`` places
    #: (``func.__kotta_outputs__``: ``(file, url)`` pairs; ``to_parquet``'s partitions).
    task_outputs: dict[Key, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def deps(self, key: Key) -> frozenset:
        return self.nodes[key].dependencies


def collect_annotations(dsk: Any) -> dict[Key, dict[str, Any]]:
    """Per-key annotations of an expression, a ``HighLevelGraph`` or a plain dict."""
    out: dict[Key, dict[str, Any]] = {}

    def add_layers(hlg: HighLevelGraph) -> None:
        for layer in hlg.layers.values():
            ann = layer.annotations
            if not ann:
                continue
            for k in layer:
                slot = out.setdefault(k, {})
                for name, value in ann.items():
                    slot.setdefault(name, value(k) if callable(value) else value)

    if isinstance(dsk, HighLevelGraph):
        add_layers(dsk)
        return out
    if isinstance(dsk, Mapping):
        return out
    # An expression: first the unoptimised graphs, where every layer still has its annotations...
    try:
        from dask._expr import HLGExpr

        for sub in dsk.find_operations(HLGExpr):
            hlg = sub.hlg
            if isinstance(hlg, HighLevelGraph):
                add_layers(hlg)
    except (ImportError, AttributeError):
        pass
    # ...then what survived optimisation (keys the optimiser made up only appear here).
    by_type = getattr(dsk, "__dask_annotations__", lambda: {})() or {}
    for name, per_key in by_type.items():
        for k, value in per_key.items():
            out.setdefault(k, {}).setdefault(name, value)
    return out


def as_graph(dsk: Any) -> dict[Key, GraphNode]:
    """Any graph ``get`` may receive, as ``{key: GraphNode}``."""
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    if isinstance(dsk, HighLevelGraph):
        dsk = dict(dsk)
    return convert_legacy_graph(dsk)


def _subgraph_keys(task: Task) -> list[Key]:
    """Keys of the tasks ``Task.fuse`` put inside ``task``.

    One level only: an inner task may itself be a blockwise subgraph whose own
    inner keys are private names, never keys of the graph.
    """
    return [inner.key for inner in task.args[0].values()]


def unfuse_conflicts(
    nodes: dict[Key, GraphNode], annotations: dict[Key, dict[str, Any]]
) -> dict[Key, GraphNode]:
    """Split fused tasks whose parts carry different annotations back into their parts.

    The fused task's key becomes an alias of the subgraph's output, so every
    key that was addressable stays addressable.
    """
    if not annotations:
        return nodes
    out = dict(nodes)
    work = [k for k, t in nodes.items() if isinstance(t, Task) and t.func is _execute_subgraph]
    while work:
        key = work.pop()
        task = out[key]
        inner_keys = _subgraph_keys(task)
        first = annotations.get(inner_keys[0], {})
        if all(annotations.get(k, {}) == first for k in inner_keys[1:]):
            # One set of annotations for the whole subgraph: it keeps them under its own key.
            if first and key not in annotations:
                annotations[key] = first
            continue
        inner: dict = task.args[0]
        outkey = task.args[1]
        out.update(inner)
        if key != outkey:
            out[key] = Alias(key, outkey)
    return out


def cull(nodes: Mapping[Key, GraphNode], keys: Iterable[Key]) -> dict[Key, GraphNode]:
    """The nodes ``keys`` need, iteratively (graphs can be 10,000 tasks deep)."""
    out: dict[Key, GraphNode] = {}
    stack = list(keys)
    while stack:
        k = stack.pop()
        if k in out:
            continue
        node = nodes.get(k)
        if node is None:
            continue
        out[k] = node
        stack.extend(node.dependencies)
    return out


def task_inputs(node: GraphNode) -> tuple[str, ...]:
    """Input URLs a task carries (``__kotta_inputs__``) in its function or arguments, subgraphs included."""
    if not isinstance(node, Task):
        return ()
    if node.func is _execute_subgraph:
        urls: list[str] = []
        for inner in node.args[0].values():
            urls.extend(task_inputs(inner))
        return tuple(urls)
    urls = list(getattr(node.func, "__kotta_inputs__", ()) or ())
    # dd.from_map gives every partition one function and its own argument: the URLs ride there.
    for arg in node.args:
        urls.extend(task_inputs(arg) if isinstance(arg, Task) else _carried(arg))
    return tuple(urls)


def _carried(arg: Any) -> tuple[str, ...]:
    # Only a tuple counts: an argument may be any object, even one answering every attribute.
    try:
        urls = getattr(arg, "__kotta_inputs__", None)
    except Exception:
        return ()
    return urls if isinstance(urls, tuple) else ()


def task_outputs(node: GraphNode) -> tuple[tuple[str, str], ...]:
    """``(file, url)`` pairs a task declares (``__kotta_outputs__``) in its function or arguments,
    subgraphs included."""
    if not isinstance(node, Task):
        return ()
    if node.func is _execute_subgraph:
        out: list[tuple[str, str]] = []
        for inner in node.args[0].values():
            out.extend(task_outputs(inner))
        return tuple(out)
    found = list(_declared(node.func))
    for arg in node.args:
        found.extend(task_outputs(arg) if isinstance(arg, Task) else _declared(arg))
    return tuple(found)


def _declared(obj: Any) -> tuple[tuple[str, str], ...]:
    try:
        pairs = getattr(obj, "__kotta_outputs__", None)
    except Exception:
        return ()
    return pairs if isinstance(pairs, tuple) else ()


def foreign_writers(nodes: Mapping[Key, GraphNode]) -> list[str]:
    """What Dask's own ``to_parquet`` would write to, for each of its tasks in ``nodes``.

    Its tasks write from inside the job with whatever the worker's filesystem and
    credentials allow: on Kotta a contained job reaches nothing but its own directory,
    so the files would vanish with it (or, uncontained, be written with the worker's
    credentials). ``KottaScheduler`` refuses such graphs.
    """
    found: list[str] = []

    def visit(node: Any) -> None:
        if not isinstance(node, Task):
            return
        if node.func is _execute_subgraph:
            for inner in node.args[0].values():
                visit(inner)
            return
        if type(node.func).__name__ == "ToParquetFunctionWrapper":
            found.append(str(getattr(node.func, "path", "?")))
        for arg in node.args:
            visit(arg)

    for node in nodes.values():
        visit(node)
    return list(dict.fromkeys(found))


def build(dsk: Any, keys: Any) -> tuple[Graph, list[Key]]:
    """The culled graph for ``keys`` (nested lists allowed) and the flat list of requested keys.

    A requested key that is not in the graph raises ``KeyError``, as every
    dask scheduler does; a missing dependency raises ``ValueError``.
    """
    annotations = collect_annotations(dsk)
    nodes = as_graph(dsk)
    flat = list(dict.fromkeys(flatten(keys) if isinstance(keys, list) else [keys]))
    for k in flat:
        if k not in nodes:
            raise KeyError(k)
    nodes = unfuse_conflicts(nodes, annotations)
    nodes = cull(nodes, flat)
    for k, node in nodes.items():
        missing = [d for d in node.dependencies if d not in nodes]
        if missing:
            raise ValueError(f"Missing dependency {missing[0]!r} for dependents {{{k!r}}}")
    local: set[Key] = set()
    # Plain data and aliases of plain data are evaluated by the client (an alias chain can be deep).
    for k, node in nodes.items():
        chain = []
        while isinstance(node, Alias) and k not in local:
            chain.append(k)
            k = node.target
            node = nodes[k]
        if k in local or isinstance(node, DataNode):
            local.update(chain)
            local.add(k)
    inputs, outputs = {}, {}
    for k, node in nodes.items():
        if k not in local:
            urls = task_inputs(node)
            if urls:
                inputs[k] = urls
            pairs = task_outputs(node)
            if pairs:
                outputs[k] = pairs
    kept = {k: v for k, v in annotations.items() if k in nodes}
    return Graph(nodes, local, kept, inputs, outputs), flat
