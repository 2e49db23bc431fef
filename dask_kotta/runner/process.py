"""Run one child process in its own process group, under walltime, memory limit and stop requests.

A child is either started fresh (:func:`run_process`, ``subprocess.Popen``)
or forked from the warm template process (``forkserver.run_forked``, see
``forkserver.py`` and ``template.py``). Both are watched by the same loop,
:func:`monitor`, and whatever way a child ends, its whole group (and any
descendant that moved to a group of its own) is killed and verified gone
before we return: a job's processes never outlive it (Parsl #2824 is the bug
this avoids).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil

from .. import defaults as d
from .template import open_logs

WALLTIME = d.KILLED_WALLTIME
MEMORY = d.KILLED_MEMORY
#: A job's age at its first memory check (then one every 0.1 s). Checks were always 0.1 s
#: apart, so a shorter burst could already go unseen; the walltime and cancel checks keep
#: their short first intervals.
FIRST_MEMORY_CHECK_S = 0.05


@dataclass
class Outcome:
    returncode: int | None
    killed: str | None  # why we killed it, or None if it ended by itself
    seconds: float
    # It died with its fork server, not by anything of its own: worth running again.
    lost: bool = False


class Child(Protocol):
    """A started child that leads its own process group (``pgid == pid``)."""

    pid: int

    def wait(self, timeout: float | None) -> int | None:
        """The exit code once it has ended (negative: killed by that signal), else None."""
        ...


class _Popened:
    def __init__(self, proc: subprocess.Popen):
        self.proc, self.pid = proc, proc.pid

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


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
        if not alive and not _group_alive(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    """True while a process of the group is alive; zombies do not count.

    ``killpg(pgid, 0)`` alone succeeds on zombies, and a killed job's zombies
    linger until their parent reaps them (the runner after this returns, or
    PID 1 for orphans, which may take its time).
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    try:
        names = os.listdir("/proc")
    except OSError:
        return True  # no /proc: trust killpg
    for name in names:
        if not name.isdigit():
            continue
        fields = proc_stat(int(name))
        # Fields after the command name: state, ppid, pgrp, ...
        if fields is not None and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, ...), or
    None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


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
    out, err = open_logs(stdout_path, stderr_path)
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(out)
        if err != out:
            os.close(err)
    return monitor(_Popened(proc), start, walltime_s, memory_bytes, stop_reason)


def monitor(
    child: Child,
    start: float,
    walltime_s: float,
    memory_bytes: int | None,
    stop_reason: Callable[[], str | None] = lambda: None,
) -> Outcome:
    """Wait for ``child`` under the limits, then kill its whole tree; see the module docstring."""
    pgid = child.pid
    # psutil (a /proc scan per tree walk) only once a job has lived FIRST_MEMORY_CHECK_S: most
    # jobs are over by then and never pay for it. The group kill at the end needs no psutil.
    ps: psutil.Process | None = None
    looked = False
    known: list[psutil.Process] = []
    killed: str | None = None
    # Short first waits keep a trivial job's latency low; later ones back off to MONITOR_S.
    interval = 0.001
    next_mem = start + FIRST_MEMORY_CHECK_S
    returncode: int | None = None
    while True:
        returncode = child.wait(interval)
        if returncode is not None:
            break
        interval = min(interval * 2, d.MONITOR_S)
        now = time.monotonic()
        if now - start > walltime_s:
            killed = WALLTIME
        elif (reason := stop_reason()) is not None:
            killed = reason
        elif now >= next_mem:
            if not looked:
                looked, ps = True, _process(child.pid)
            if ps is not None:
                tree = _tree(ps)
                known = list({p.pid: p for p in known + tree}.values())
                if memory_bytes and _rss(tree) > memory_bytes:
                    killed = MEMORY
            next_mem = now + 0.1
        if killed:
            break
    if returncode is None:
        # Killed: every descendant still attached, whichever group or session it moved to.
        if not looked:
            ps = _process(child.pid)
        if ps is not None:
            known = list({p.pid: p for p in [ps, *known, *_tree(ps)]}.values())
    kill_group(pgid, known)
    if returncode is None:
        # Killed above; collecting the status cannot block for long, but never wait forever.
        returncode = child.wait(30.0)
    # A forked child whose template died was killed, by no limit of ours: say so.
    lost = getattr(child, "lost", None) if killed is None else None
    return Outcome(returncode, killed or lost, time.monotonic() - start, lost=lost is not None)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
