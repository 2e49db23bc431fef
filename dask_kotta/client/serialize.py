"""Pickling of calls and unpickling of results, with errors a user can act on."""

from __future__ import annotations

import io
import linecache
import platform
import types
from collections import ChainMap
from typing import Any

import cloudpickle

from .. import __version__
from ..errors import ResultError, SerializationError, remote_error


def versions() -> dict[str, str]:
    """The versions sent with every python job, so a worker can name a mismatch."""
    return {
        "python": platform.python_version(),
        "cloudpickle": cloudpickle.__version__,
        "dask_kotta": __version__,
    }


_code_reduce = getattr(cloudpickle.Pickler, "_dispatch_table", {}).get(types.CodeType)


def _code_reduce_keeping_file(code: types.CodeType) -> Any:
    # cloudpickle writes "<dynamic-code>" for a code object's file, so a remote traceback could
    # not say where the user's function is: keep the real one (line numbers travel as they are).
    make, args = _code_reduce(code)
    return make, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


class _Pickler(cloudpickle.Pickler):
    if _code_reduce is not None:
        dispatch_table = ChainMap(
            {types.CodeType: _code_reduce_keeping_file}, cloudpickle.Pickler.dispatch_table
        )


def dumps_value(obj: Any) -> bytes:
    """cloudpickle ``obj``, keeping the file of each function pickled by value."""
    with io.BytesIO() as f:
        _Pickler(f).dump(obj)
        return f.getvalue()


def dumps_call(fn: Any, args: tuple, kwargs: dict) -> bytes:
    """cloudpickle ``fn(*args, **kwargs)``, or raise before anything is sent.

    Functions pickled by value keep the file they were defined in, so a remote
    traceback names it (and ``loads_result`` shows its lines from this machine's copy).
    """
    name = getattr(fn, "__qualname__", None) or repr(fn)
    try:
        return dumps_value({"fn": fn, "args": tuple(args), "kwargs": dict(kwargs)})
    except Exception as e:
        raise SerializationError(
            f"cannot pickle {name} or its arguments for Kotta: {type(e).__name__}: {e}. "
            "Functions travel with cloudpickle: pass open files, locks, sockets or clients "
            "as paths or settings and make them inside the function."
        ) from e


def loads_result(data: bytes, job_id: str) -> Any:
    """The value of a python job's result, or the remote exception raised here."""
    try:
        out = cloudpickle.loads(data)
    except Exception as e:
        v = versions()
        raise ResultError(
            f"cannot unpickle the result of job {job_id}: {type(e).__name__}: {e} "
            f"(this client runs Python {v['python']}, cloudpickle {v['cloudpickle']}; "
            "the result's type must be importable here)",
            job_id,
        ) from e
    if out.get("ok"):
        return out["value"]
    shown, full = _remote_traceback(out)
    err = remote_error(
        out.get("exc"),
        out.get("type", "Exception"),
        out.get("message", ""),
        full,
        job_id,
    )
    err.remote_frames = shown
    raise err


def _remote_traceback(out: dict[str, Any]) -> tuple[str, str]:
    """The remote traceback to show under the error's own line, and the whole of it.

    A worker that sent ``frames`` (this version's) gets each frame's source line
    filled in from this machine's copy of its file where the worker had none;
    the shown part ends at the last frame, as the error's type and message are
    the line above it. An older worker's text is shown as it came.
    """
    full = out.get("traceback", "") or ""
    frames = out.get("frames")
    if not frames:
        return full, full
    lines = ["Traceback (most recent call last):\n"]
    for file, lineno, name, text in frames:
        lines.append(f'  File "{file}", line {lineno}, in {name}\n')
        text = text or linecache.getline(file, lineno).strip()
        if text:
            lines.append(f"    {text}\n")
    stack = "".join(lines)
    tail = out.get("exc_only") or ""
    chain = out.get("chain") or ""
    return chain + stack, chain + stack + tail
