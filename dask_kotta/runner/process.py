"""Run one child process in its own process group, under walltime, memory limit and stop requests.

Whatever way it ends, the whole group (and any descendant that moved to a
group of its own) is killed and verified gone before we return: a job's
processes never outlive it (Parsl #2824 is the bug this avoids).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from .. import defaults as d

WALLTIME = "walltime exceeded"
MEMORY = "memory limit exceeded"


@dataclass
class Outcome:
    returncode: int | None
    killed: str | None  # why we killed it, or None if it ended by itself
    seconds: float


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def kill_group(pgid: int, known: list[psutil.Process], timeout: float = 5.0) -> bool:
    """SIGKILL the group and every known descendant; True once none is left."""
    for p in known:
        try:
            p.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        alive = [p for p in known if _alive(p)]
        try:
            os.killpg(pgid, 0)
            group_left = True
        except ProcessLookupError:
            group_left = False
        if not alive and not group_left:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_process(
    args: list[str],
    cwd: str,
    stdout_path: str,
    stderr_path: str,
    env: dict[str, str],
    walltime_s: float,
    memory_bytes: int | None,
    stop_reason: Callable[[], str | None] = lambda: None,
) -> Outcome:
    """Run ``args`` to completion or until a limit is hit; see the module docstring."""
    start = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    pgid = proc.pid
    try:
        ps = psutil.Process(proc.pid)
    except psutil.Error:
        ps = None
    known: list[psutil.Process] = [ps] if ps else []
    killed: str | None = None
    interval = 0.002
    next_mem = start
    while True:
        try:
            proc.wait(timeout=interval)
            break
        except subprocess.TimeoutExpired:
            pass
        interval = min(interval * 2, d.MONITOR_S)
        now = time.monotonic()
        if now - start > walltime_s:
            killed = WALLTIME
        elif (reason := stop_reason()) is not None:
            killed = reason
        elif ps is not None and now >= next_mem:
            tree = _tree(ps)
            known = list({p.pid: p for p in known + tree}.values())
            if memory_bytes and _rss(tree) > memory_bytes:
                killed = MEMORY
            next_mem = now + 0.1
        if killed:
            break
    if ps is not None:
        known = list({p.pid: p for p in known + _tree(ps)}.values())
    kill_group(pgid, known)
    proc.wait()
    return Outcome(proc.returncode, killed, time.monotonic() - start)
