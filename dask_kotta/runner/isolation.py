"""The runner's side of containment: the job's environment, identity, view, and the check after.

``sandbox.py`` enters a sandbox; this module decides what goes in it:

- :func:`job_env`: the job's environment, from an allow-list (never the worker's secrets);
- :func:`available`: whether this worker can contain jobs at all (probed once);
- :class:`Box`: for one job, a uid leased from a host-wide pool (when the
  worker is root), a cgroup with its queue's limits (``cgroups.py``), the
  working directory handed to it, the read-only binds its Python needs, and,
  once the job has ended, the check that none of its processes is left before
  the uid goes to another job.

Settings (environment variables of the worker):

``KOTTA_SANDBOX``        ``auto`` (default: contain when the platform can) or ``off``
``KOTTA_SANDBOX_UIDS``   ``FIRST:COUNT`` of the uids leased to jobs (default 900000:4096)
``KOTTA_SANDBOX_RO``     more host paths every job sees read-only (``:``-separated)
``KOTTA_CGROUP``         the cgroup v2 directory to make jobs' cgroups in (see ``cgroups.py``)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..claim import Claim
from ..errors import ContainmentError
from . import cgroups
from .process import MEMORY, Outcome, proc_stat

MODE_VAR = "KOTTA_SANDBOX"
UIDS_VAR = "KOTTA_SANDBOX_UIDS"
RO_VAR = "KOTTA_SANDBOX_RO"
DEFAULT_UIDS = (900_000, 4096)
#: Variables of the worker a job may see: locale, time zone, and numeric-library tuning.
PASS_ENV = frozenset({"LANG", "LANGUAGE", "TZ", "PATH"})
PASS_ENV_PREFIXES = ("LC_", "OMP_", "OPENBLAS_", "MKL_")
#: Processes one job may have at once unless its queue says otherwise.
DEFAULT_NPROC = 2048
_DIRTY, _CLEAN = b"1", b"0"
#: How long ended jobs' uids wait to be checked together, in seconds.
RELEASE_S = 0.05
#: Checked-clean uids a worker process keeps locked for its next jobs (of 4096 by default).
KEEP_UIDS = 32
log = logging.getLogger("dask_kotta.runner")


def passed_env() -> dict[str, str]:
    """The worker's variables that jobs (and the warm template) may see."""
    env = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith(PASS_ENV_PREFIXES)}
    # `python` in a script is the worker's interpreter, found before anything else on PATH.
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH") or "/usr/local/bin:/usr/bin:/bin"])
    return env


def job_env(job: Claim, workdir: Path) -> dict[str, str]:
    """A job's environment: the allow-list, the job's own ``KOTTA_*``, and its queue's additions."""
    env = passed_env()
    env.update(
        HOME=str(workdir),
        TMPDIR="/tmp",
        # A leased uid has no passwd entry: getpass.getuser() and the tools that call it
        # would fail without these.
        USER="kotta",
        LOGNAME="kotta",
        KOTTA_JOB_ID=job["id"],
        KOTTA_WORKDIR=str(workdir),
        PYTHONUNBUFFERED="1",
    )
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    return env


def enabled() -> bool:
    return os.environ.get(MODE_VAR, "auto").lower() not in ("off", "0", "false", "no")


@functools.cache
def available() -> str | None:
    """None if this worker can contain jobs, else why not; probed once per process."""
    if not enabled():
        return f"containment is switched off on this worker ({MODE_VAR}=off)"
    if not sys.platform.startswith("linux"):
        return f"containment needs Linux namespaces; this worker runs on {sys.platform}"
    try:
        r = subprocess.run(
            [sys.executable, "-m", "dask_kotta.runner.sandbox", "--probe", str(view_root()),
             str(_private_dir("probe"))],
            capture_output=True, text=True, timeout=30, env=passed_env(),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the containment probe did not run: {e}"
    if r.returncode == 0:
        return None
    return (r.stdout.strip() or r.stderr.strip()[-300:] or f"exit {r.returncode}").splitlines()[-1]


def _private_dir(name: str) -> Path:
    """A directory only the worker's uid can enter, shared by the worker processes of a host."""
    base = Path("/run") if os.getuid() == 0 and os.access("/run", os.W_OK) else None
    path = (base or Path(tempfile.gettempdir())) / f"dask-kotta-{os.getuid()}" / name
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    return path


@functools.cache
def view_root() -> Path:
    """The empty directory each job's view is mounted on (in the job's own mount namespace)."""
    return _private_dir("root")


@functools.cache
def ro_paths() -> tuple[str, ...]:
    """Host paths every job sees read-only: the system, and what this worker's Python needs."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]
    paths += [sys.base_prefix, sys.prefix, sys.exec_prefix]
    # An editable install keeps dask_kotta outside site-packages; its package (only) is needed.
    import dask_kotta

    paths.append(os.path.dirname(dask_kotta.__file__))
    resolv = "/etc/resolv.conf"
    if os.path.islink(resolv):  # e.g. systemd-resolved's stub under /run
        paths.append(os.path.dirname(os.path.realpath(resolv)))
    from .envs import cache

    paths.append(str(cache().root))
    paths += [p for p in os.environ.get(RO_VAR, "").split(":") if p]
    out: list[str] = []
    for p in paths:
        p = os.path.abspath(p)
        if p not in out and os.path.lexists(p):
            out.append(p)
    return tuple(out)


def base_spec() -> dict[str, Any]:
    """The part of every job's view that is the same for all (``sandbox.prepare``)."""
    return {"root": str(view_root()), "ro": list(ro_paths()), "userns": os.getuid() != 0}


def _uid_range() -> range:
    raw = os.environ.get(UIDS_VAR)
    first, count = DEFAULT_UIDS
    if raw:
        try:
            a, _, b = raw.partition(":")
            first, count = int(a), int(b or count)
        except ValueError:
            raise ValueError(f"{UIDS_VAR} must be FIRST:COUNT, not {raw!r}") from None
    return range(first, first + count)


def processes_by_uid(uids: set[int]) -> dict[int, list[int]]:
    """Pids of the processes whose uid is one of ``uids`` (zombies included): one /proc scan."""
    found: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
            except OSError:
                continue
            if uid in uids:
                found.setdefault(uid, []).append(int(name))
    return found


def processes_of(uid: int) -> list[int]:
    """Pids of the processes whose real uid is ``uid`` (zombies included)."""
    return processes_by_uid({uid}).get(uid, [])


def kill_uid(uid: int, timeout: float = 5.0) -> bool:
    """SIGKILL every process of ``uid`` until none is left; True once none is."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in processes_of(uid) if not _zombie(p)]
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _zombie(pid: int) -> bool:
    """True if ``pid`` is a zombie or gone: nothing of it runs any more."""
    fields = proc_stat(pid)
    return fields is None or fields[0] == b"Z"


class Box:
    """One job's containment, from lease to check; a context manager."""

    def __init__(self, job: Claim, workdir: Path, private: Path):
        self.job, self.workdir, self.private = job, workdir, private
        self.uid: int | None = None
        self._lock_fd: int | None = None
        self.group: cgroups.Group | None = None

    def __enter__(self) -> Box:
        (self.private / "tmp").mkdir(exist_ok=True)  # the job's /tmp
        if os.getuid() == 0:
            self._lease_uid()
        job = self.job
        limits = cgroups.Limits(
            memory_bytes=job.get("memory_bytes"),
            max_processes=job.get("max_processes") or DEFAULT_NPROC,
            cpus=job.get("vcpus") if job.get("limit_cpu") else None,
        )
        try:
            self.group = cgroups.make(limits)
        except cgroups.CgroupError as e:
            # The fallbacks (RSS watch, RLIMIT_NPROC) still bound the job; CPU goes unbounded.
            log.warning("job %s runs without a cgroup: %s", job.get("id"), e)
        return self

    def watched_memory(self) -> int | None:
        """The memory limit the runner must watch itself: None where the cgroup enforces it."""
        if self.group is not None and self.group.enforces("memory"):
            return None
        return self.job.get("memory_bytes")

    def ended(self, outcome: Outcome) -> None:
        """Name the cgroup's OOM kill as the reason a failed job failed (the kernel killed it)."""
        if self.group is None or outcome.killed or outcome.returncode == 0:
            return
        if self.group.oom_killed():
            outcome.killed = MEMORY

    def _lease_uid(self) -> None:
        kept = _releaser().reuse()
        if kept is not None:
            self.uid, self._lock_fd = kept
            return
        locks = _private_dir("uids")
        for uid in _uid_range():
            fd = os.open(locks / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            # Free. Marked dirty while leased: a runner that died holding it may have left a
            # process of it (its job's PID 1 dies with its waiter, but check): never share a uid.
            if os.pread(fd, 1, 0) == _DIRTY and processes_of(uid) and not kill_uid(uid):
                os.close(fd)
                continue
            os.pwrite(fd, _DIRTY, 0)
            self.uid, self._lock_fd = uid, fd
            return
        raise ContainmentError(
            f"no free job uid in {UIDS_VAR} ({_uid_range()}): every one is in use on this host"
        )

    def hand_over(self) -> None:
        """Give the working directory (staged inputs, payload, logs) to the job's uid."""
        if self.uid is None:
            return
        for root, dirs, files in os.walk(self.workdir):
            os.chown(root, self.uid, self.uid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.uid, follow_symlinks=False)

    def spec(self) -> dict[str, Any]:
        """What ``sandbox.clone`` and ``setup`` (or ``contain``) need, as JSON-able data."""
        return {
            **base_spec(),
            "workdir": str(self.workdir),
            "work_root": str(self.workdir.parent),
            "tmp": str(self.private / "tmp"),
            "mounts": [[m["path"], bool(m.get("writable"))] for m in self.job.get("mounts") or ()],
            "uid": self.uid,
            "network": bool(self.job.get("network", True)),
            "cgroup": self.group.procs if self.group else [],
            # cgroup v2: PID 1 starts in its group (clone3), with no move into it.
            "cgroup_dir": str(self.group.dirs[0])
            if self.group and self.group.tree.version == 2
            else None,
            # RLIMIT_NPROC counts per uid: it bounds a job only where the job has a uid of its own.
            "nproc": (self.job.get("max_processes") or DEFAULT_NPROC)
            if self.uid and not (self.group and self.group.enforces("pids"))
            else None,
            "shm": str(min(self.job.get("memory_bytes") or 2**30, 2**30)),
        }

    def launcher(self, command: list[str]) -> list[str]:
        """``command`` run through a fresh interpreter that contains it (no warm template)."""
        spec = json.dumps(self.spec())
        return [sys.executable, "-m", "dask_kotta.runner.sandbox", spec, "--", *command]

    def __exit__(self, *exc) -> None:
        if self.uid is not None or self.group is not None:
            # Off the job's critical path: its end is reported while its uid is checked.
            _releaser().put(self.uid, self._lock_fd, self.group)


class _Releaser(threading.Thread):
    """Gives uids back to the pool once no process of theirs is left (checked, not assumed).

    One thread per worker process. Each ended job's cgroup is emptied (what is
    left is killed) and goes back to the worker's pool. A uid whose job's processes were
    all in that group (:meth:`cgroups.Group.holds_all`) is clean once the group is empty:
    none of them can leave it, nor can anything else run as that uid. The other uids of
    the jobs that ended within ``RELEASE_S`` share one /proc scan (a scan costs ~0.5 ms
    of CPU, a trivial job ~3). Up to ``KEEP_UIDS`` clean uids stay leased to this
    process, for its next jobs.
    """

    def __init__(self) -> None:
        super().__init__(name="kotta-uids", daemon=True)
        self._cond = threading.Condition()
        self._due: dict[int, int] = {}  # uid -> its lock's descriptor
        # Ended jobs' groups, each with the uid it vouches for (see holds_all) or None.
        self._groups: list[tuple[cgroups.Group, int | None]] = []
        # Checked clean and still locked by us: the next job takes one with no scan of the
        # lock files (one open and flock per uid in use on the host). Freed when we exit.
        self._clean: list[tuple[int, int]] = []

    def reuse(self) -> tuple[int, int] | None:
        """A uid (and its lock) this process checked clean, marked leased again; or None."""
        with self._cond:
            if not self._clean:
                return None
            uid, lock_fd = self._clean.pop()
        os.pwrite(lock_fd, _DIRTY, 0)
        return uid, lock_fd

    def put(self, uid: int | None, lock_fd: int | None, group: cgroups.Group | None) -> None:
        with self._cond:
            if uid is not None and lock_fd is not None:
                self._due[uid] = lock_fd
            if group is not None:
                self._groups.append((group, uid if group.holds_all() else None))
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._due and not self._groups:
                    self._cond.wait()
            time.sleep(RELEASE_S)  # let the ends of a batch gather
            with self._cond:
                (due, self._due), (groups, self._groups) = (self._due, {}), (self._groups, [])
            pool = cgroups.pool()
            clean = set()
            for group, uid in groups:
                if isinstance(pool, str) or not pool.give(group):
                    log.warning("cgroup %s of an ended job could not be emptied", group.name)
                elif uid is not None:
                    clean.add(uid)
            if not due:
                continue
            found = processes_by_uid(set(due) - clean) if set(due) - clean else {}
            for uid, lock_fd in due.items():
                left = [p for p in found.get(uid, ()) if not _zombie(p)]
                if left:
                    log.warning("uid %d had %d process(es) after its job; killing them", uid,
                                len(left))  # fmt: skip
                if not left or kill_uid(uid):
                    os.pwrite(lock_fd, _CLEAN, 0)
                    with self._cond:
                        if len(self._clean) < KEEP_UIDS:
                            self._clean.append((uid, lock_fd))
                            continue
                    os.close(lock_fd)
                # else: the lock (and the uid) stays out of the pool for this process's life.


@functools.cache
def _releaser() -> _Releaser:
    r = _Releaser()
    r.start()
    return r
