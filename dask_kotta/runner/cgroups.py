"""A job's memory, process-count and CPU limits, enforced by the kernel's cgroups (Linux).

Each contained job gets a control group of its own, made by the runner before
the job starts and joined by the job's PID 1 before any of the job's code runs
(``sandbox.setup``):

- ``memory``: the queue's ``memory``, swap included; past it the kernel's OOM
  killer ends the job (the whole job at once on cgroup v2, ``memory.oom.group``),
  and the runner reports ``memory limit exceeded``. No burst slips between two
  looks, as it can under the RSS watch;
- ``pids``: the queue's ``max_processes`` for this job alone, whatever its uid;
- ``cpu``: where the queue says ``"limit_cpu": true``, its ``vcpus`` as a CFS quota.

Once the job has ended the group is read for an OOM kill, then checked empty
(what is left is killed: ``cgroup.kill`` on v2) and kept for the next job.

Where the groups are made:

- **cgroup v2** (one hierarchy; the default of current distributions): under
  ``KOTTA_CGROUP`` (a directory in a cgroup2 file system) if set, else under
  the worker's own cgroup. v2 lets a cgroup hand controllers to its children
  only while it holds no process itself, so the worker's own cgroup works only
  if it is empty of other processes; under systemd, run the workers with
  ``Delegate=yes`` and point ``KOTTA_CGROUP`` at a child of the service's
  cgroup. The controllers the parent does not offer are left to the fallbacks.
- **cgroup v1** (one hierarchy per controller, as older hosts and this
  project's CI machine have): the worker's own group in each of ``memory``,
  ``pids`` and ``cpu``.
- **neither writable** (not root, no delegation), or ``KOTTA_CGROUP=off``: :func:`tree` says why; the
  runner watches the job's RSS instead (``process.monitor``) and bounds its
  processes with ``RLIMIT_NPROC`` where the job has a uid of its own.

Standard library only, as the rest of the runner's containment.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT_VAR = "KOTTA_CGROUP"
#: The controllers we set limits with; a hierarchy may offer only some of them.
CONTROLLERS = ("memory", "pids", "cpu")
#: What bounds a job where its group lacks the controller.
FALLBACK = {"memory": "memory by an RSS watch", "pids": "processes by RLIMIT_NPROC",
            "cpu": "no CPU limit"}  # fmt: skip
#: CFS period for a CPU quota, in microseconds (the kernel's default).
CPU_PERIOD_US = 100_000
_DIR = "dask-kotta"  # made under the parent; holds one group per job
_seq = itertools.count()


class CgroupError(OSError):
    """A job's cgroup could not be made or set up; the message names the file."""


@dataclass(frozen=True)
class Limits:
    """What one job may use; None is no limit of that kind."""

    memory_bytes: int | None = None
    max_processes: int | None = None
    cpus: float | None = None


@dataclass(frozen=True)
class Tree:
    """Where this worker makes its jobs' groups: a parent directory per hierarchy."""

    version: int
    #: controller -> the directory job groups are made in (v2: every controller, one directory)
    parents: dict[str, Path]
    #: a v2 parent with none of CONTROLLERS still gives each job a group to kill and check
    bare: Path | None = None

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.parents)

    def describe(self) -> str:
        """One line for ``up``: what the kernel enforces, and what falls back to what."""
        have = ", ".join(c for c in CONTROLLERS if c in self.parents) or "no controllers"
        out = f"cgroup v{self.version} ({have})"
        missing = [FALLBACK[c] for c in CONTROLLERS if c not in self.parents]
        return out + (f"; {', '.join(missing)}" if missing else "")


def _write(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(e.errno, f"cannot write {text!r} to {path}: {e.strerror}") from None


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) of each cgroup file system."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, after = pre.split(), post.split()
            if after and after[0] in ("cgroup", "cgroup2"):
                out.append((fields[3], fields[4], after[0], after[2] if len(after) > 2 else ""))
    return out


def _own() -> dict[str, str]:
    """This process's cgroup path per hierarchy: '' for v2, else each controller's name."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            for name in names.split(",") if names else [""]:
                out[name] = path
    return out


def _under(mount: str, root: str, path: str) -> Path:
    rel = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
    return Path(os.path.normpath(os.path.join(mount, rel)))


def _make_parent(base: Path) -> Path:
    """``base/dask-kotta``, made if need be; raises OSError if we may not."""
    parent = base / _DIR
    try:
        parent.mkdir()
    except FileExistsError:
        pass
    else:
        # Whatever the umask of the worker that came first (a server's is 077): a group the
        # operator delegates in here to a worker that is not root must be reachable by it.
        parent.chmod(0o755)
    _sweep(parent)
    return parent


def _sweep(parent: Path) -> None:
    """Remove the empty groups a dead worker left (named after its pid)."""
    for child in parent.iterdir():
        pid = child.name.partition("-")[0]
        if child.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                child.rmdir()


def _v2(base: Path) -> Tree:
    """Job groups under ``base`` on cgroup v2, with the controllers it can hand down."""
    offered = set((base / "cgroup.controllers").read_text().split())
    wanted = [c for c in CONTROLLERS if c in offered]
    enabled = set((base / "cgroup.subtree_control").read_text().split())
    if set(wanted) - enabled:
        # EBUSY when base holds processes (v2 has no controllers on inner nodes with tasks).
        with contextlib.suppress(OSError):
            _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        enabled = set((base / "cgroup.subtree_control").read_text().split())
    parent = _make_parent(base)
    have = [c for c in wanted if c in enabled]
    if have:
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in have))
    return Tree(2, {c: parent for c in have}, bare=parent)


def _v1(mounts: list[tuple[str, str, str, str]], own: dict[str, str]) -> Tree | str:
    parents: dict[str, Path] = {}
    why = []
    for c in CONTROLLERS:
        m = next((m for m in mounts if m[2] == "cgroup" and c in m[3].split(",")), None)
        if m is None or c not in own:
            continue
        try:
            parents[c] = _make_parent(_under(m[1], m[0], own[c]))
        except OSError as e:
            why.append(f"{c}: {e.strerror or e}")
    if not parents:
        return "no writable cgroup" + (f" ({'; '.join(why)})" if why else " hierarchy")
    return Tree(1, parents)


@functools.cache
def tree() -> Tree | str:
    """Where this worker makes job groups, or why it cannot (one line). Looked up once."""
    try:
        configured = os.environ.get(ROOT_VAR)
        if configured == "off":
            return f"cgroups are switched off on this worker ({ROOT_VAR}=off)"
        if configured:
            base = Path(configured)
            if not (base / "cgroup.controllers").exists():
                return f"{ROOT_VAR}={configured} is not a directory of a cgroup v2 file system"
            return _v2(base)
        mounts, own = _mounts(), _own()
        unified = next((m for m in mounts if m[2] == "cgroup2" and m[1] == "/sys/fs/cgroup"), None)
        if unified is not None:
            return _v2(_under(unified[1], unified[0], own.get("", "/")))
        return _v1(mounts, own)
    except OSError as e:
        return f"no writable cgroup: {e.strerror or e}"


class Group:
    """One job's cgroup (a directory in each hierarchy) with its limits set.

    Groups are reused (see :class:`Pool`): :meth:`limit` sets the next job's
    limits and counts its OOM kills from there.
    """

    def __init__(self, tree: Tree, limits: Limits) -> None:
        self.tree = tree
        self.name = f"{os.getpid()}-{next(_seq)}"
        self.dirs = sorted({p / self.name for p in tree.parents.values()} |
                           ({tree.bare / self.name} if tree.bare else set()))  # fmt: skip
        self.limits = Limits()  # what the kernel has: a new group has no limits
        self._ooms = 0
        made: list[Path] = []
        try:
            for d in self.dirs:
                d.mkdir()
                made.append(d)
            if self.tree.version == 2 and (d := self._dir("memory")):
                _write(d / "memory.oom.group", "1")  # the whole job goes, not one process of it
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
            self.limit(limits)
        except OSError as e:
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise CgroupError(e.errno, f"cannot make the job's cgroup: {e}") from None

    def _dir(self, controller: str) -> Path | None:
        parent = self.tree.parents.get(controller)
        return None if parent is None else parent / self.name

    def limit(self, new: Limits) -> None:
        """Set the next job's limits (only those that changed) and its OOM count's zero."""
        old, v2 = self.limits, self.tree.version == 2
        if new.memory_bytes != old.memory_bytes and (d := self._dir("memory")):
            value = str(new.memory_bytes or ("max" if v2 else -1))
            if v2:
                _write(d / "memory.max", value)
            else:
                # memsw (memory + swap: no swapping past the limit) may never be below the
                # memory limit, so the order of the two writes depends on the direction.
                files = ["memory.limit_in_bytes"]
                if (d / "memory.memsw.limit_in_bytes").exists():
                    raising = not new.memory_bytes or (old.memory_bytes or 2**63) < new.memory_bytes
                    files = ["memory.memsw.limit_in_bytes", *files] if raising else [
                        *files, "memory.memsw.limit_in_bytes"]  # fmt: skip
                for name in files:
                    _write(d / name, value)
        if new.max_processes != old.max_processes and (d := self._dir("pids")):
            _write(d / "pids.max", str(new.max_processes or "max"))
        if new.cpus != old.cpus and (d := self._dir("cpu")):
            quota = max(1000, int(new.cpus * CPU_PERIOD_US)) if new.cpus else None
            if v2:
                _write(d / "cpu.max", f"{quota or 'max'} {CPU_PERIOD_US}")
            else:
                _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(quota or -1))
        self.limits = new
        self._ooms = self._oom_count()

    def enforces(self, controller: str) -> bool:
        """Whether this group sets the limit of ``controller`` (given one was asked for)."""
        return controller in self.tree.parents

    @property
    def procs(self) -> list[str]:
        """The files the job's first process writes ``0`` to, to join this group.

        On cgroup v1 only the hierarchies whose limit this job has: each move
        into a group takes a lock every fork on the host waits for, so a job
        without a CPU limit stays in its worker's ``cpu`` group.
        """
        if self.tree.version == 2:
            return [str(d / "cgroup.procs") for d in self.dirs]
        wanted = {"memory": self.limits.memory_bytes, "pids": self.limits.max_processes,
                  "cpu": self.limits.cpus}  # fmt: skip
        return [str(d / "cgroup.procs") for c, v in wanted.items() if v and (d := self._dir(c))]

    def holds_all(self) -> bool:
        """Whether every process of the job that joined this group is in it, as now set.

        True on cgroup v2, and on v1 when the job joins a hierarchy (see :attr:`procs`): it
        joins before anything of it runs, its children are born in the group, and only root
        may move a process out. An emptied group then proves the job has no process left.
        """
        return bool(self.procs)

    def pids(self) -> set[int]:
        """The processes in this group (in any of its hierarchies)."""
        out: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return out

    def _oom_count(self) -> int:
        d = self._dir("memory")
        if d is None:
            return 0
        name = "memory.events" if self.tree.version == 2 else "memory.oom_control"
        try:
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this job for going over its memory."""
        return self._oom_count() > self._ooms

    def empty(self, timeout: float = 5.0) -> bool:
        """Kill what is left in the group; True once nothing is."""
        deadline = time.monotonic() + timeout
        while left := self.pids():
            if time.monotonic() > deadline:
                return False
            kill = self.dirs[0] / "cgroup.kill"
            if self.tree.version == 2 and kill.exists():
                with contextlib.suppress(OSError):
                    _write(kill, "1")
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Kill what is left in the group, then remove it; True once it is gone."""
        deadline = time.monotonic() + timeout
        while self.empty(max(0.0, deadline - time.monotonic())):
            try:
                for d in self.dirs:
                    with contextlib.suppress(FileNotFoundError):
                        d.rmdir()
                return True
            except OSError:  # EBUSY: a process joined since we looked
                if time.monotonic() > deadline:
                    break
        return False


class Pool:
    """Emptied groups kept for the next jobs of this worker process.

    Making a group and removing it cost ~0.5 ms of a trivial job's ~5; a reused
    one costs the writes of the limits that changed. Page cache a job left
    stays charged to the group, and the kernel reclaims it before it counts
    against the next job.
    """

    def __init__(self, tree: Tree, keep: int = 32) -> None:
        self.tree, self.keep = tree, keep
        self._idle: list[Group] = []
        self._lock = threading.Lock()

    def take(self, limits: Limits) -> Group:
        """A group with ``limits`` for a job about to start."""
        with self._lock:
            group = self._idle.pop() if self._idle else None
        if group is None:
            return Group(self.tree, limits)
        try:
            group.limit(limits)
        except CgroupError:
            group.close()
            return Group(self.tree, limits)
        return group

    def give(self, group: Group) -> bool:
        """Take back the group of an ended job once it is empty; False if it cannot be emptied."""
        if not group.empty():
            return False
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(group)
                return True
        return group.close()

    def close(self) -> None:
        """Remove the idle groups (at exit; a later worker sweeps what a killed one left)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for group in idle:
            group.close(timeout=1.0)


@functools.cache
def pool() -> Pool | str:
    """This worker process's pool of job groups, or why it has none (see :func:`tree`)."""
    t = tree()
    if isinstance(t, str):
        return t
    p = Pool(t)
    atexit.register(p.close)
    return p


def make(limits: Limits) -> Group | None:
    """A group for one job with ``limits``, or None where this worker has no cgroups."""
    p = pool()
    return None if isinstance(p, str) else p.take(limits)
