"""Session services the suite's processes share: the Kotta service, SeaweedFS, PostgreSQL.

pytest-xdist runs a session fixture once per process, so with three processes the
suite started three of each and kept them all idling to the end: an `up` costs ~3.6
CPU-seconds to start and ~4% of a core to keep, on a 2-core machine the whole suite is
bound by. Here the first process that asks starts one (under a file lock); the others
attach to it by what it wrote down; the process that ran pytest stops them all when
every test has ended (:func:`stop_all`, from ``tests/conftest.py``).

Each test process still gets a user of its own on the shared service (see
``conftest.py``), so one process's jobs never show in another's listings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ENV = "KOTTA_TEST_SHARED"  # "PID:DIR": the pytest process that owns DIR, and DIR
T = TypeVar("T")


def configure(basetemp: Path | None) -> None:
    """Pick the shared directory, once, in the process that runs pytest (before xdist starts
    its workers, which inherit it): ``basetemp/shared``, kept as pytest keeps its last runs'
    temporary directories, so the services' logs can be read after a failure. A pytest run
    by a test inherits it too, and so attaches to the same services; only the owner stops
    them."""
    if ENV not in os.environ:
        if basetemp is None:
            directory = tempfile.mkdtemp(prefix="kotta-tests-")
        else:
            (basetemp / "shared").mkdir()
            directory = str(basetemp / "shared")
        os.environ[ENV] = f"{os.getpid()}:{directory}"


def _root() -> Path:
    return Path(os.environ[ENV].partition(":")[2])


def shared(name: str, start: Callable[[Path], Any], attach: Callable[[dict], T]) -> T:
    """The shared thing ``name``: made by ``start(directory)`` in the first process that asks,
    whose ``state()`` is JSON with ``"pgid"`` and ``"stop"`` (``"int"``/``"kill"``);
    ``attach(state)`` gives each process its object. A failed start is remembered, so the
    other processes fail at once with its error instead of trying again."""
    root = _root()
    state_file = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not state_file.exists():
            try:
                started = start(root / name)
                state = started.state()
                started.proc.release()  # stop_all() stops it, in the process that owns it
            except BaseException as e:
                state_file.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
                raise
            state_file.write_text(json.dumps(state))
    state = json.loads(state_file.read_text())
    if "error" in state:
        raise RuntimeError(
            f"the shared {name} failed to start in another process: {state['error']}"
        )
    return attach(state)


def stop_all() -> None:
    """Stop every shared service, in the process that owns them (the others return)."""
    owner, _, directory = os.environ.get(ENV, "").partition(":")
    if owner != str(os.getpid()):
        return
    states = []
    for f in Path(directory).glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            states.append(json.loads(f.read_text()))
    # The Kotta service first: its workers' jobs may still be talking to S3 or PostgreSQL.
    for state in sorted(states, key=lambda s: s.get("order", 0)):
        if "pgid" in state:
            _stop_group(state["pgid"], graceful=state.get("stop") == "int")
    # The logs stay; the data go (SeaweedFS's volumes are ~100 MB).
    for data in ("s3/data", "pg/pgdata"):
        shutil.rmtree(Path(directory) / data, ignore_errors=True)


def _stop_group(pgid: int, graceful: bool, timeout: float = 20) -> None:
    """SIGINT the group, as a terminal's Ctrl-C (`up` stops in order; `runuser` would not pass
    a SIGINT on to postgres), give its leader ``timeout`` s, then SIGKILL the group. Not our
    child: we cannot wait() for it, only watch its pid go."""
    if graceful:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pgid):
            time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class Attached:
    """A process another test process started, standing in for its `subprocess.Popen`."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        return None if _alive(self.pid) else 0
