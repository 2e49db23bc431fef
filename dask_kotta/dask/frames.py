"""Telling that ``dask.annotate`` was used around dataframe operations, which Dask drops.

Dask's query planning (dask-expr) builds a dataframe as an expression that
carries no annotations: ``FrameBase.__init__`` warns once per process
("Annotations will be ignored when using query-planning") and the expression
that reaches a scheduler after optimisation has none. Nothing in it says which
of its tasks an annotation was meant for: optimisation renames, fuses and
re-plans them. So ``KottaScheduler`` cannot honour a queue or walltime set that
way; this module lets it refuse instead of running the tasks with its
defaults.

Two small wrappers around Dask, installed once when the scheduler is imported:

- ``FrameBase.__init__`` records, by expression name, the Kotta annotations
  active when each dataframe collection is made (a collection made later
  with the same name and none forgets them). ``dask.dataframe`` may be
  imported after us: the wrapper is then installed when it is.
- ``dask.base.collections_to_expr`` (what ``dask.compute`` and ``persist``
  call, before optimisation) walks the dataframe expressions about to be
  computed and notes the annotations any of them was made under, and any
  Kotta annotation active around the compute itself; ``KottaScheduler.get``
  takes that note (:func:`take_lost`) and refuses.

And one for writes: ``DataFrame.to_parquet`` computed with a ``KottaScheduler``
(``compute_kwargs={'scheduler': ...}`` or ``dask.config``'s scheduler) raises
:class:`UnsupportedWriteError`, naming ``dask_kotta.dataframe.to_parquet``,
before Dask opens the destination's filesystem: Dask's writer tasks write from
inside the job with whatever the worker can reach, which on Kotta is nothing
but the job's own directory (or, uncontained, the worker's own credentials).
``KottaScheduler.get`` refuses such tasks too, whatever built them
(``graph.foreign_writers``).
"""

from __future__ import annotations

import contextvars
import importlib.abc
import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import dask.base

from ..errors import KottaError

#: The annotations Kotta reads (see ``annotations.py``); others (``priority``...) may be lost.
KOTTA_ANNOTATIONS = (
    "queue", "walltime", "requirements", "retries", "keep_days", "resources", "inputs", "fuse",
)  # fmt: skip

#: Where dask-expr's collections live.
_COLLECTION_MODULE = "dask.dataframe.dask_expr._collection"
#: Most expression names remembered (oldest forgotten first): a name is a few dozen bytes.
_MAX_NAMES = 100_000

#: Expression name -> the Kotta annotations its collection was made under.
_ANNOTATED: OrderedDict[str, dict[str, Any]] = OrderedDict()
#: What the last ``collections_to_expr`` of this thread found lost; None: it found nothing.
_LOST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kotta_lost_annotations", default=None
)
_installed = False


class UnsupportedWriteError(KottaError, NotImplementedError):
    """Dask's own ``to_parquet`` was asked to run on Kotta: use ``dask_kotta.dataframe.to_parquet``."""


def refuse_dask_writes(paths: list[str]) -> None:
    """Raise :class:`UnsupportedWriteError` for Dask writer tasks bound for ``paths``."""
    raise UnsupportedWriteError(
        f"Dask's own to_parquet ({', '.join(map(repr, paths[:3]))}) cannot run on "
        "KottaScheduler: its tasks would write from inside each job, where a contained "
        "job reaches only its own working directory (and never with the worker's "
        "credentials). Use dask_kotta.dataframe.to_parquet(df, 's3://bucket/prefix/', ...) "
        "(import dask_kotta.dataframe as kd; kd.to_parquet(...)): each job's file reaches "
        "the bucket through the job's declared destinations, granted by the operator's "
        "s3_write_grants. Nothing was submitted."
    )


def _is_kotta(scheduler: Any) -> bool:
    return bool(getattr(scheduler, "__kotta_scheduler__", False))


def kotta_annotations(annotations: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Kotta settings among ``annotations``."""
    return {k: annotations[k] for k in KOTTA_ANNOTATIONS if annotations and k in annotations}


def take_lost() -> dict[str, Any] | None:
    """The Kotta annotations the collections of the current compute lost (and forget them)."""
    lost = _LOST.get()
    _LOST.set(None)
    return lost


def install() -> None:
    """Install both wrappers (once); the dataframe one now or when ``dask.dataframe`` loads."""
    global _installed
    if _installed:
        return
    _installed = True
    _wrap_collections_to_expr()
    module = sys.modules.get(_COLLECTION_MODULE)
    if module is not None:
        _wrap_framebase(module)
    else:
        sys.meta_path.insert(0, _WrapOnImport())


def _wrap_framebase(module: Any) -> None:
    cls = getattr(module, "FrameBase", None)
    if cls is None or getattr(cls.__init__, "_kotta_wrapped", False):
        return
    original = cls.__init__

    def __init__(self: Any, expr: Any, *args: Any, **kwargs: Any) -> None:
        original(self, expr, *args, **kwargs)
        ann = kotta_annotations(dask.base.get_annotations())
        name = getattr(expr, "_name", None)
        if name is None:
            return
        if ann:
            _ANNOTATED[name] = ann
            _ANNOTATED.move_to_end(name)
            while len(_ANNOTATED) > _MAX_NAMES:
                _ANNOTATED.popitem(last=False)
        elif _ANNOTATED:
            _ANNOTATED.pop(name, None)

    __init__._kotta_wrapped = True  # type: ignore[attr-defined]
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    cls.__init__ = __init__
    _wrap_to_parquet(getattr(module, "DataFrame", None))


def _wrap_to_parquet(cls: Any) -> None:
    original = getattr(cls, "to_parquet", None)
    if original is None or getattr(original, "_kotta_wrapped", False):
        return

    def to_parquet(self: Any, path: Any, **kwargs: Any) -> Any:
        # Before Dask's own: it opens the destination's filesystem (s3fs...) at once.
        if kwargs.get("compute", True):
            sched = (kwargs.get("compute_kwargs") or {}).get("scheduler")
            if _is_kotta(sched if sched is not None else dask.config.get("scheduler", None)):
                refuse_dask_writes([str(path)])
        return original(self, path, **kwargs)

    to_parquet._kotta_wrapped = True  # type: ignore[attr-defined]
    to_parquet.__wrapped__ = original  # type: ignore[attr-defined]
    to_parquet.__doc__ = original.__doc__
    cls.to_parquet = to_parquet


def _wrap_collections_to_expr() -> None:
    original = dask.base.collections_to_expr
    if getattr(original, "_kotta_wrapped", False):
        return

    def collections_to_expr(collections: Any, *args: Any, **kwargs: Any) -> Any:
        _LOST.set(_lost_in(collections))
        return original(collections, *args, **kwargs)

    collections_to_expr._kotta_wrapped = True  # type: ignore[attr-defined]
    collections_to_expr.__wrapped__ = original  # type: ignore[attr-defined]
    collections_to_expr.__doc__ = original.__doc__
    dask.base.collections_to_expr = collections_to_expr


def _lost_in(collections: Any) -> dict[str, Any] | None:
    module = sys.modules.get(_COLLECTION_MODULE)
    frame_base = getattr(module, "FrameBase", None)
    if frame_base is None:
        return None
    try:
        frames = [c for c in collections if isinstance(c, frame_base)]
    except TypeError:  # a single collection
        frames = [collections] if isinstance(collections, frame_base) else []
    if not frames:
        return None
    lost: dict[str, Any] = {}
    if _ANNOTATED:
        for frame in frames:
            for expr in frame.expr.walk():
                found = _ANNOTATED.get(expr._name)
                if found:
                    for k, v in found.items():
                        lost.setdefault(k, v)
    # Annotations around the compute itself do not reach a dataframe's tasks either.
    for k, v in kotta_annotations(dask.base.get_annotations()).items():
        lost.setdefault(k, v)
    return lost or None


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps ``FrameBase`` as soon as dask-expr's collection module has run."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _COLLECTION_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _wrap_framebase(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
