"""The worker side of a Dask fragment: the function a fragment's Kotta job runs.

The runner has already staged, into the job's working directory, the
fragment's input URLs and, under ``.kotta/deps/<job_id>.pkl``, the result
object of every job it reads from (each a pickled ``{"ok": True, "value":
{key: value}}``). ``run_fragment`` loads the values it needs, runs its tasks
in order (dropping each intermediate after its last use), and returns the
values other jobs need. Requested values go in the same result when no other
job reads from this one, else into the output file ``REQUESTED_FILE``, so the
client downloads only what it asked for.

Tasks travel as small expression objects made from ``dask._task_spec`` nodes
by :func:`encode` on the client. This module imports nothing beyond the
standard library and is pickled *by value*, so a fragment runs in any
environment that has cloudpickle and the task's own functions: neither dask
nor dask-kotta has to be installed in a job's ``requirements`` environment,
and a plain delayed function does not pay for importing dask.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

#: Output file holding the requested values of a fragment that also shares values with other jobs.
REQUESTED_FILE = "dask-requested.pkl"
#: Prefix of the note added to an exception raised by a task, naming its key.
KEY_NOTE = "[kotta-dask] raised by task "
#: Name of a large literal's upload, followed by the SHA-256 of its pickle (``literals.py``).
LITERAL_PREFIX = "kotta-literal-"


# -- expressions: what a task is, without dask ----------------------------------------------


class _Expr:
    __slots__ = ()

    def ev(self, values: dict) -> Any:
        raise NotImplementedError


def _ev(a: Any, values: dict) -> Any:
    return a.ev(values) if isinstance(a, _Expr) else a


class _Ref(_Expr):
    """The value of another key (``TaskRef``, ``Alias``)."""

    __slots__ = ("key",)

    def __init__(self, key: Any):
        self.key = key

    def ev(self, values: dict) -> Any:
        return values[self.key]


class _Call(_Expr):
    """``func(*args, **kwargs)`` with arguments evaluated first (``Task``)."""

    __slots__ = ("func", "args", "kwargs")

    def __init__(self, func: Any, args: tuple, kwargs: dict):
        self.func, self.args, self.kwargs = func, args, kwargs

    def ev(self, values: dict) -> Any:
        args = [_ev(a, values) for a in self.args]
        if self.kwargs:
            return self.func(*args, **{k: _ev(v, values) for k, v in self.kwargs.items()})
        return self.func(*args)


class _Seq(_Expr):
    """A list, tuple or set of evaluated items (``List``, ``Tuple``, ``Set``)."""

    __slots__ = ("typ", "items")

    def __init__(self, typ: type, items: tuple):
        self.typ, self.items = typ, items

    def ev(self, values: dict) -> Any:
        return self.typ([_ev(a, values) for a in self.items])


class _Map(_Expr):
    """A dict from alternating evaluated keys and values (``Dict``)."""

    __slots__ = ("items",)

    def __init__(self, items: tuple):
        self.items = items

    def ev(self, values: dict) -> Any:
        it = [_ev(a, values) for a in self.items]
        return dict(zip(it[::2], it[1::2], strict=True))


class _Sub(_Expr):
    """A subgraph run in order (what ``Task.fuse`` makes), returning one of its keys."""

    __slots__ = ("nodes", "outkey", "inkeys", "deps")

    def __init__(self, nodes: list, outkey: Any, inkeys: tuple, deps: tuple):
        self.nodes, self.outkey, self.inkeys, self.deps = nodes, outkey, inkeys, deps

    def ev(self, values: dict) -> Any:
        local = {k: _ev(d, values) for k, d in zip(self.inkeys, self.deps, strict=True)}
        for key, expr in self.nodes:
            local[key] = _ev(expr, local)
        return local[self.outkey]


class _Literal(_Expr):
    """A large literal stored once as an upload, staged into the job's directory as ``name``.

    Loaded at its first use in the job and kept for the job's other tasks.
    """

    __slots__ = ("name", "digest")

    def __init__(self, name: str, digest: str):
        self.name, self.digest = name, digest

    def ev(self, values: dict) -> Any:
        try:
            return _LOADED[self.name]
        except KeyError:
            pass
        with open(_workdir() / self.name, "rb") as f:
            value = _LOADED[self.name] = pickle.load(f)
        return value


#: Literals this job has loaded, by staged name.
_LOADED: dict[str, Any] = {}


class _Node(_Expr):
    """A graph node of a kind this module does not know: called as dask would call it."""

    __slots__ = ("node",)

    def __init__(self, node: Any):
        self.node = node

    def ev(self, values: dict) -> Any:
        return self.node({d: values[d] for d in self.node.dependencies})


def encode(node: Any, literal: Any = None) -> Any:
    """A ``dask._task_spec`` node (or argument) as an expression, or a literal as itself.

    ``literal``, if given, is called with each literal value and returns what
    to put in its place (the value, or a ``_Literal`` naming its upload).
    """
    from dask._task_spec import (
        Alias,
        DataNode,
        Dict,
        GraphNode,
        List,
        Set,
        Task,
        TaskRef,
        Tuple,
        _execute_subgraph,
        _identity_cast,
    )

    if isinstance(node, TaskRef):
        return _Ref(node.key)
    if not isinstance(node, GraphNode):
        return node if literal is None else literal(node)
    t = type(node)
    if t is DataNode:
        return node.value if literal is None else literal(node.value)
    if t is Alias:
        return _Ref(node.target)
    if t in (List, Tuple, Set):
        return _Seq(node.klass, tuple(encode(a, literal) for a in node.args))
    if t is Dict:
        return _Map(tuple(encode(a, literal) for a in node.args))
    if t is Task:
        if node.func is _execute_subgraph:
            inner, outkey, inkeys = node.args[0], node.args[1], node.args[2]
            deps = tuple(encode(a, literal) for a in node.args[3:])
            return _Sub(
                [(k, encode(inner[k], literal)) for k in _toposort(inner)],
                outkey,
                tuple(inkeys),
                deps,
            )
        if node.func is _identity_cast and set(node.kwargs) == {"typ"}:
            return _Seq(node.kwargs["typ"], tuple(encode(a, literal) for a in node.args))
        args = tuple(encode(a, literal) for a in node.args)
        kwargs = {k: encode(v, literal) for k, v in node.kwargs.items()}
        return _Call(node.func, args, kwargs)
    return _Node(node)


def _toposort(inner: dict) -> list:
    """Keys of a subgraph, each after the inner keys it depends on."""
    out: list = []
    done: set = set()
    for root in inner:
        stack = [root]
        while stack:
            k = stack[-1]
            if k in done:
                stack.pop()
                continue
            todo = [d for d in inner[k].dependencies if d in inner and d not in done]
            if todo:
                stack.extend(todo)
                continue
            done.add(k)
            out.append(k)
            stack.pop()
    return out


# -- the fragment ---------------------------------------------------------------------------


def fragment_spec(
    nodes: list[tuple[Any, Any, tuple]],
    reads: dict[str, list[Any]],
    shared: list[Any],
    returns: list[Any],
) -> dict[str, Any]:
    """What one job of a Dask graph computes.

    ``nodes``: ``(key, expression, dependency keys)`` in execution order;
    ``reads``: keys to read from each dependency job's result, ``{job_id: [key]}``;
    ``shared``: keys other jobs read from this one; ``returns``: keys the client asked for.
    """
    return {"nodes": nodes, "reads": reads, "shared": shared, "returns": returns}


def _workdir() -> Path:
    return Path(os.environ.get("KOTTA_WORKDIR") or os.getcwd())


def run_fragment(spec: dict[str, Any]) -> dict[Any, Any]:
    """Run the fragment's tasks; see the module docstring."""
    values: dict[Any, Any] = {}
    deps_dir = _workdir() / ".kotta" / "deps"
    for job_id, keys in spec["reads"].items():
        with open(deps_dir / f"{job_id}.pkl", "rb") as f:
            shared = pickle.load(f)["value"]
        for k in keys:
            values[k] = shared[k]
        del shared
    keep = set(spec["shared"]) | set(spec["returns"])
    uses: dict[Any, int] = {}
    for _, _, deps in spec["nodes"]:
        for d in deps:
            uses[d] = uses.get(d, 0) + 1
    for key, expr, deps in spec["nodes"]:
        try:
            values[key] = _ev(expr, values)
        except BaseException as e:
            # The key travels in the exception's notes, and so in its traceback text.
            e.add_note(f"{KEY_NOTE}{key!r}")
            raise
        for d in deps:
            uses[d] -= 1
            if not uses[d] and d not in keep:
                del values[d]
    out = {k: values[k] for k in spec["shared"]}
    if spec["returns"]:
        requested = {k: values[k] for k in spec["returns"]}
        if not spec["shared"]:
            return requested
        import cloudpickle

        (_workdir() / REQUESTED_FILE).write_bytes(cloudpickle.dumps(requested))
    return out
