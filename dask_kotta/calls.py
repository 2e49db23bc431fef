"""The function a ``Kotta.map`` job runs: many calls of one function, each kept apart.

It runs inside the job, so it imports nothing of the client: a job that unpickles
it loads this module and cloudpickle only. Each call's outcome is pickled on its
own, so one call whose value (or exception) cannot be pickled, or that raises,
costs only its own result, never its neighbours'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .tracebacks import describe


def _outcome(ok: bool, value: Any = None, exc: BaseException | None = None) -> bytes:
    import cloudpickle

    if ok:
        try:
            return cloudpickle.dumps({"ok": True, "value": value})
        except Exception as e:  # said as this call's error, in the shape a raise has
            why = f"its value, of type {type(value).__name__}, cannot be pickled: {e}"
            return cloudpickle.dumps(
                {
                    "ok": False,
                    "exc": None,
                    "type": "SerializationError",
                    "message": why,
                    "traceback": "",
                }  # fmt: skip
            )
    assert exc is not None
    # Without this module's own frame: the user's code is what the traceback is about.
    record = describe(exc, __file__)
    try:
        return cloudpickle.dumps({**record, "exc": exc})
    except Exception:  # an exception that cannot be pickled still travels as text
        return cloudpickle.dumps({**record, "exc": None})


def run_calls(fn: Callable[..., Any], calls: Sequence[tuple[tuple, dict]]) -> list[bytes]:
    """``fn(*args, **kwargs)`` for each call, in order; one pickled outcome per call.

    An outcome is ``{"ok": True, "value": v}`` or ``{"ok": False, "exc", "type",
    "message", "traceback"}``, as a python job's own result is. Any exception, ``SystemExit``
    and ``BaseException`` subclasses too, ends that call only; ``KeyboardInterrupt`` (a
    SIGINT to the job) ends the job.
    """
    out = []
    for args, kwargs in calls:
        try:
            value = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            out.append(_outcome(False, exc=e))
        else:
            out.append(_outcome(True, value))
    return out


def run_pickled(pickled_fn: bytes, calls: Sequence[tuple[tuple, dict]]) -> list[bytes]:
    """:func:`run_calls` of a function sent pickled once for all of a map's jobs.

    A function that cannot be unpickled here fails the job, and so each of its calls.
    """
    import cloudpickle

    return run_calls(cloudpickle.loads(pickled_fn), calls)
