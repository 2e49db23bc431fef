"""The child side of a python job: ``python -m dask_kotta.runner.child DIR``.

``DIR`` (the job's private ``.kotta`` directory) holds ``payload.pkl``
(cloudpickle of ``{"fn", "args", "kwargs"}``). The child writes
``result.pkl`` (cloudpickle of ``{"ok": True, "value": ...}`` or
``{"ok": False, "exc": ..., "type", "message", "traceback"}``) and
``outcome.json``: the same outcome without pickles, which is all the runner reads.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import sys
import traceback


def versions() -> dict[str, str]:
    import cloudpickle

    return {"python": platform.python_version(), "cloudpickle": cloudpickle.__version__}


# Looked up once, at import: the warm template imports this module, so each job forked from
# it skips loading libc and parsing sys.version (~0.3 ms of a trivial job's CPU).
_VERSIONS = versions()
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    # If the runner's worker dies, take the job down with it instead of leaving an orphan.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _version_problem(client: dict[str, str]) -> str | None:
    mine = _VERSIONS
    if not client.get("python"):
        return None
    if client["python"].split(".")[:2] != mine["python"].split(".")[:2]:
        return (
            f"version mismatch: the client pickled this function with Python {client['python']} "
            f"(cloudpickle {client.get('cloudpickle', '?')}), the worker runs Python {mine['python']} "
            f"(cloudpickle {mine['cloudpickle']}); use the same Python minor version on both"
        )
    return None


def _save(path: str, data: bytes) -> None:
    # Plain os calls: in a forked child, every Python object touched on the way (a Path, an
    # io stack) costs a copy-on-write page fault.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


_OK = {"ok": True}
_OK_JSON = json.dumps(_OK).encode()


def _write(private: str | os.PathLike, outcome: dict, pickled: dict | None) -> None:
    import cloudpickle

    if pickled is not None:
        try:
            data = cloudpickle.dumps(pickled)
        except Exception as e:
            if not pickled.get("ok"):
                # An exception that cannot be pickled still travels as its type, message and traceback.
                data = cloudpickle.dumps({**pickled, "exc": None})
            else:
                tb = traceback.format_exc()
                outcome = {
                    "ok": False,
                    "type": type(e).__name__,
                    "message": f"the function's result cannot be pickled: {e}",
                    "traceback": tb,
                }
                data = cloudpickle.dumps({**outcome, "exc": None})
        _save(os.path.join(private, "result.pkl"), data)
    text = _OK_JSON if outcome == _OK else json.dumps(outcome).encode()
    _save(os.path.join(private, "outcome.json"), text)


def failure(e: BaseException) -> dict:
    """The outcome of a call that raised ``e``, from the user's function on (this module's
    frame dropped), as ``dask_kotta.tracebacks.describe`` makes it (see there). A copy, as
    this module stands alone: it is copied into per-job environments, which have no
    dask_kotta (``tests/unit/test_client_ux.py`` holds the two to the same answer)."""
    te = traceback.TracebackException.from_exception(e)
    here = main.__code__.co_filename
    stack = list(te.stack)
    while stack and stack[0].filename == here:  # the call in main(), not the user's code
        stack.pop(0)
    te.stack = traceback.StackSummary.from_list(stack)
    full = "".join(te.format())
    chain = full[: len(full) - len("".join(te.format(chain=False)))]
    return {
        "ok": False,
        "type": type(e).__name__,
        "message": str(e),
        "traceback": full,
        "frames": [[f.filename, f.lineno, f.name, f.line or ""] for f in stack],
        "chain": chain,
        "exc_only": "".join(te.format_exception_only()),
    }


def main(argv: list[str], client: dict[str, str] | None = None) -> int:
    """Run the job in ``argv[0]``; the client's versions are ``client`` (the fork server
    reads them before the fork) or ``$KOTTA_CLIENT_VERSIONS``."""
    _die_with_parent()
    private = argv[0]
    if client is None:
        client = json.loads(os.environ.pop("KOTTA_CLIENT_VERSIONS", "{}") or "{}")
    problem = _version_problem(client)
    if problem:
        print(problem, file=sys.stderr)
        _write(
            private,
            {"ok": False, "type": "VersionMismatch", "message": problem, "traceback": ""},
            None,
        )
        return 2
    import cloudpickle

    try:
        with open(os.path.join(private, "payload.pkl"), "rb") as f:
            payload = cloudpickle.load(f)
        fn, args, kwargs = payload["fn"], payload.get("args", ()), payload.get("kwargs", {})
    except Exception as e:
        mine = _VERSIONS
        msg = (
            f"cannot unpickle the function: {type(e).__name__}: {e} (client Python {client.get('python', '?')}, "
            f"cloudpickle {client.get('cloudpickle', '?')}; worker Python {mine['python']}, "
            f"cloudpickle {mine['cloudpickle']})"
        )
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        _write(
            private, {"ok": False, "type": type(e).__name__, "message": msg, "traceback": tb}, None
        )
        return 2
    try:
        value = fn(*args, **kwargs)
    except BaseException as e:
        outcome = failure(e)
        print(outcome["traceback"], file=sys.stderr, end="")
        # The outcome the runner reads stays small; the client reads the frames from the pickle.
        extra = {k: outcome.pop(k) for k in ("frames", "chain", "exc_only")}
        _write(private, outcome, {**outcome, **extra, "exc": e})
        return 1
    _write(private, _OK, {"ok": True, "value": value})
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
