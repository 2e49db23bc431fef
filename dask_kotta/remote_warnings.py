"""Warnings raised in a job, raised again on the client as if the code had run here.

A job records each warning its code raises (``dask/remote.py`` for Dask tasks) as
data: its text, its class (pickled, with the names of its bases in case it does
not unpickle here), the file, line and module it came from. :func:`emit` hands
each to ``warnings.warn_explicit`` with its own class, file, line and module, so
the caller's filters treat it as a local one: ``-W error`` raises it,
``pytest.warns`` and ``warnings.catch_warnings(record=True)`` catch it,
``simplefilter("ignore")`` hides it, and ``"default"`` shows it once per place
(each module's registry is kept here, as ``warnings`` keeps one per module).

The text says where it was raised: ``All-NaN slice encountered [dask task
('nanmax', 0)]``; the same warning of several tasks arriving together is emitted
once, naming the first task and how many more.
"""

from __future__ import annotations

import builtins
import sys
import warnings
from collections.abc import Callable
from typing import Any

#: One ``__warningregistry__`` per module warnings are emitted for (``"default"``, ``"module"``).
_REGISTRIES: dict[str, dict] = {}


def _category(rec: dict[str, Any]) -> type[Warning]:
    """The warning's class: unpickled, else its nearest builtin base (``UserWarning`` last)."""
    data = rec.get("category")
    if data:
        try:
            import cloudpickle

            cls = cloudpickle.loads(data)
            if isinstance(cls, type) and issubclass(cls, Warning):
                return cls
        except Exception:
            pass  # a class this side cannot import: its builtin base below
    return _builtin(rec)


def _builtin(rec: dict[str, Any]) -> type[Warning]:
    for name in rec.get("names") or ():
        module, _, qualname = name.rpartition(".")
        cls = getattr(builtins, qualname, None) if module == "builtins" else None
        if isinstance(cls, type) and issubclass(cls, Warning):
            return cls
    return UserWarning


def _module(rec: dict[str, Any]) -> str:
    """The module a ``module=`` filter is matched against, as ``warnings.warn`` names it."""
    if rec.get("module"):
        return rec["module"]
    filename = rec.get("filename") or ""
    for name, mod in list(sys.modules.items()):  # a function sent by value: its module here
        if getattr(mod, "__file__", None) == filename:
            return name
    return filename[:-3] if filename.endswith(".py") else filename or "<unknown>"


def emit(
    payload: dict[str, Any] | None, seen: set[str], where: Callable[[dict[str, Any]], str]
) -> None:
    """Warn each record of ``payload`` not in ``seen`` (then added to it).

    ``where(record)`` says where it was raised (``"dask task 'x'"``), appended to the
    text in brackets; the same warning of several records is warned once.
    """
    if not payload:
        return
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for i, rec in payload.get("records", {}).items():
        if i in seen:
            continue
        seen.add(i)
        sig = (tuple(rec.get("names") or ()), rec["text"], rec["filename"], rec["lineno"])
        groups.setdefault(sig, []).append(rec)
    for recs in groups.values():
        rec = recs[0]
        cls = _category(rec)
        more = f" and {len(recs) - 1} more" if len(recs) > 1 else ""
        # At the end: a `message=` filter matches the text's start, as for a local warning.
        text = f"{rec['text']} [{where(rec)}{more}]"
        try:
            message: Warning | str = cls(text)
        except Exception:  # a constructor that wants more than a text: its builtin base
            cls = _builtin(rec)
            message = cls(text)
        module = _module(rec)
        warnings.warn_explicit(
            message, cls, rec["filename"], rec["lineno"], module=module,
            registry=_REGISTRIES.setdefault(module, {}),
        )  # fmt: skip
    dropped = [t for t in payload.get("dropped", {}) if f"dropped:{t}" not in seen]
    if dropped:
        n = sum(payload["dropped"][t] for t in dropped)
        seen.update(f"dropped:{t}" for t in dropped)
        warnings.warn(
            f"{n} more warnings raised remotely were not sent (at most 100 per job)",
            RuntimeWarning,
            stacklevel=3,
        )
