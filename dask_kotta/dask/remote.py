"""The worker side of a Dask fragment: the function a fragment's Kotta job runs.

The runner has already staged, into the job's working directory, the
fragment's input URLs and, under ``.kotta/deps/<job_id>.pkl``, the result
object of every job it reads from (each a pickled ``{"ok": True, "value":
{key: value}}``). ``run_fragment`` loads the values it needs, runs its tasks
in order (dropping each intermediate after its last use), and returns the
values other jobs need. Requested values go in the same result when no other
job reads from this one, else into the output file ``REQUESTED_FILE``, so the
client downloads only what it asked for.

Warnings raised by the tasks are caught (each once per task and place, at most
``MAX_WARNINGS`` per job) and travel under ``WARNINGS_KEY`` in the values this
job hands on: a job that reads from this one passes them on with its own, so
they reach the client with the requested values, which the client downloads
anyway; a failing task's exception carries them as ``__kotta_warnings__``. The
client re-emits them (``dask_kotta/remote_warnings.py``). Each has an id, so one
seen on two paths of the graph is emitted once.

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
import sys
import warnings
from pathlib import Path
from typing import Any

#: Output file holding the requested values of a fragment that also shares values with other jobs.
REQUESTED_FILE = "dask-requested.pkl"
#: Prefix of the note added to an exception raised by a task, naming its key.
KEY_NOTE = "[kotta-dask] raised by task "
#: Name of a large literal's upload, followed by the SHA-256 of its pickle (``literals.py``).
LITERAL_PREFIX = "kotta-literal-"
#: Key of the warnings in a fragment's values: ``{"records": {id: record}, "dropped": {job: n}}``.
WARNINGS_KEY = "__kotta_warnings__"
#: Most warnings one job sends on (its own and those it passes on); the rest are counted.
MAX_WARNINGS = 100
#: Attribute of a failing task's exception that carries the warnings.
WARNINGS_ATTR = "__kotta_warnings__"


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


# -- warnings -------------------------------------------------------------------------------


class _Warnings:
    """The warnings of one fragment's run, as ``warnings.showwarning`` receives them."""

    def __init__(self) -> None:
        # Ids stay unique across jobs without knowing the job's id.
        self.token = os.urandom(8).hex()
        self.key: Any = None
        self.records: dict[str, dict[str, Any]] = {}
        self.dropped: dict[str, int] = {}
        self.seen: set = set()
        self.modules: dict[str, str] = {}

    def show(self, message: Any, category: type, filename: str, lineno: int, *_: Any) -> None:
        text = str(message)
        sig = (self.key, category, text, filename, lineno)
        if sig in self.seen:  # a loop warning a million times sends one record
            return
        self.seen.add(sig)
        if len(self.records) >= MAX_WARNINGS:
            self.dropped[self.token] = self.dropped.get(self.token, 0) + 1
            return
        try:
            import cloudpickle

            pickled = None if category.__module__ == "builtins" else cloudpickle.dumps(category)
        except Exception:
            pickled = None  # the client falls back on the nearest builtin class
        self.records[f"{self.token}:{len(self.seen)}"] = {
            "key": self.key,
            "text": text,
            "category": pickled,
            "names": [
                f"{c.__module__}.{c.__qualname__}" for c in category.__mro__ if c is not object
            ],
            "filename": filename,
            "lineno": lineno,
            "module": self._module(filename),
        }

    def _module(self, filename: str) -> str | None:
        # What `warnings.warn` would name as the module, so `module=` filters match.
        if filename not in self.modules:
            for name, mod in list(sys.modules.items()):
                f = getattr(mod, "__file__", None)
                if f:
                    self.modules.setdefault(f, name)
        return self.modules.get(filename)

    def forward(self, payload: Any) -> None:
        """Take on the warnings a job this one read from passed on."""
        if not isinstance(payload, dict):
            return
        for i, rec in payload.get("records", {}).items():
            if i in self.records:
                continue
            if len(self.records) >= MAX_WARNINGS:
                self.dropped[self.token] = self.dropped.get(self.token, 0) + 1
            else:
                self.records[i] = rec
        for token, n in payload.get("dropped", {}).items():
            self.dropped[token] = max(n, self.dropped.get(token, 0))

    def payload(self) -> dict[str, Any] | None:
        if not self.records and not self.dropped:
            return None
        return {"records": self.records, "dropped": self.dropped}


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
    caught = _Warnings()
    with warnings.catch_warnings():
        # Every warning is recorded here; the client's filters decide what is shown.
        warnings.simplefilter("always")
        warnings.showwarning = caught.show
        return _run(spec, caught)


def _run(spec: dict[str, Any], caught: _Warnings) -> dict[Any, Any]:
    values: dict[Any, Any] = {}
    deps_dir = _workdir() / ".kotta" / "deps"
    for job_id, keys in spec["reads"].items():
        with open(deps_dir / f"{job_id}.pkl", "rb") as f:
            shared = pickle.load(f)["value"]
        caught.forward(shared.get(WARNINGS_KEY))
        for k in keys:
            values[k] = shared[k]
        del shared
    keep = set(spec["shared"]) | set(spec["returns"])
    uses: dict[Any, int] = {}
    for _, _, deps in spec["nodes"]:
        for d in deps:
            uses[d] = uses.get(d, 0) + 1
    for key, expr, deps in spec["nodes"]:
        caught.key = key
        try:
            values[key] = _ev(expr, values)
        except BaseException as e:
            # The key travels in the exception's notes, and so in its traceback text.
            e.add_note(f"{KEY_NOTE}{key!r}")
            found = caught.payload()
            if found:
                try:
                    setattr(e, WARNINGS_ATTR, found)
                except Exception:
                    pass  # an exception that takes no attributes goes without them
            raise
        for d in deps:
            uses[d] -= 1
            if not uses[d] and d not in keep:
                del values[d]
    found = caught.payload()
    out = {k: values[k] for k in spec["shared"]}
    if found and spec["shared"]:
        out[WARNINGS_KEY] = found
    if spec["returns"]:
        requested = {k: values[k] for k in spec["returns"]}
        if found:
            requested[WARNINGS_KEY] = found
        if not spec["shared"]:
            return requested
        import cloudpickle

        (_workdir() / REQUESTED_FILE).write_bytes(cloudpickle.dumps(requested))
    return out
