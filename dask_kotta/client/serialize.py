"""Pickling of calls and unpickling of results, with errors a user can act on."""

from __future__ import annotations

import platform
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


def dumps_call(fn: Any, args: tuple, kwargs: dict) -> bytes:
    """cloudpickle ``fn(*args, **kwargs)``, or raise before anything is sent."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    try:
        return cloudpickle.dumps({"fn": fn, "args": tuple(args), "kwargs": dict(kwargs)})
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
    raise remote_error(
        out.get("exc"),
        out.get("type", "Exception"),
        out.get("message", ""),
        out.get("traceback", ""),
        job_id,
    )
