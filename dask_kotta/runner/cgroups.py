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

Once the job has ended the group is checked empty (what is left is killed:
``cgroup.kill`` on v2), read for an OOM kill, and removed.

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

import contextlib
import functools
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT_VAR = "KOTTA_CGROUP"
#: The controllers we set limits with; a hierarchy may offer only some of them.
CONTROLLERS = ("memory", "pids", "cpu")
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
        have = ", ".join(c for c in CONTROLLERS if c in self.parents) or "no controllers"
        return f"cgroup v{self.version} ({have})"


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
    parent.mkdir(exist_ok=True)
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


@dataclass
class Group:
    """One job's cgroup (a directory in each hierarchy), made with its limits set."""

    tree: Tree
    limits: Limits
    name: str = field(default_factory=lambda: f"{os.getpid()}-{next(_seq)}")

    def __post_init__(self) -> None:
        self.dirs = sorted({p / self.name for p in self.tree.parents.values()} |
                           ({self.tree.bare / self.name} if self.tree.bare else set()))  # fmt: skip
        made: list[Path] = []
        try:
            for d in self.dirs:
                d.mkdir()
                made.append(d)
            self._set_limits()
        except OSError as e:
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise CgroupError(e.errno, f"cannot make the job's cgroup: {e}") from None

    def _dir(self, controller: str) -> Path | None:
        parent = self.tree.parents.get(controller)
        return None if parent is None else parent / self.name

    def _set_limits(self) -> None:
        lim, v2 = self.limits, self.tree.version == 2
        if lim.memory_bytes and (d := self._dir("memory")):
            if v2:
                _write(d / "memory.max", str(lim.memory_bytes))
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
                _write(d / "memory.oom.group", "1")  # the whole job goes, not one process of it
            else:
                _write(d / "memory.limit_in_bytes", str(lim.memory_bytes))
                if (d / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit
                    _write(d / "memory.memsw.limit_in_bytes", str(lim.memory_bytes))
        if lim.max_processes and (d := self._dir("pids")):
            _write(d / "pids.max", str(lim.max_processes))
        if lim.cpus and (d := self._dir("cpu")):
            quota = max(1000, int(lim.cpus * CPU_PERIOD_US))
            if v2:
                _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(quota))

    def enforces(self, controller: str) -> bool:
        """Whether this group sets the limit of ``controller`` (given one was asked for)."""
        return controller in self.tree.parents

    @property
    def procs(self) -> list[str]:
        """The files the job's first process writes ``0`` to, to join this group."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        """The processes in this group (in any of its hierarchies)."""
        out: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return out

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this group for going over its memory."""
        d = self._dir("memory")
        if d is None:
            return False
        name = "memory.events" if self.tree.version == 2 else "memory.oom_control"
        try:
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def close(self, timeout: float = 5.0) -> bool:
        """Kill what is left in the group, then remove it; True once it is gone."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            if not left:
                try:
                    for d in self.dirs:
                        with contextlib.suppress(FileNotFoundError):
                            d.rmdir()
                    return True
                except OSError:
                    pass  # EBUSY: a process joined since we looked
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


def make(limits: Limits) -> Group | None:
    """A new group for one job with ``limits``, or None where this worker has no cgroups."""
    t = tree()
    if isinstance(t, str):
        return None
    return Group(t, limits)
