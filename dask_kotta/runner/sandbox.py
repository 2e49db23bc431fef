"""Containing one job: namespaces, its own mount view, its own identity (Linux).

A contained job's processes see::

    /                 an empty, read-only tmpfs, and in it only:
    /usr /bin /lib* /etc, the Python installations, the env cache   read-only binds
    <workdir>         the job's working directory, the only writable bind
    /tmp              <workdir>/.kotta/tmp (private, on disk, gone with the job)
    /dev              null zero full random urandom tty, and a private /dev/shm
    /proc             of its own PID namespace: its own processes only

and run under their own identity: a uid of their own (``uid``, leased per job
by the runner from a pool, as HTCondor's slot users) when the worker runs as
root, else an unprivileged user namespace owned by the worker's uid. They
have no capabilities and ``no_new_privs``; a queue with ``network: false``
also gets an empty network namespace (only ``lo``). Other jobs' directories,
the worker's scratch space and home, the service's data directory, the
cluster's certificates and the runner's state are simply not in the view.

How. The warm template runs :func:`prepare` once: a mount namespace of its
own (and, for a worker that is not root, a user namespace) holding, on an
empty directory, the read-only base of every view. For each job it then
forks with :func:`clone` (new mount, PID and IPC namespaces, and network when
the queue says so), and the child runs :func:`setup`: the job's own mounts,
``pivot_root``, its identity. A fresh interpreter with no template does it
all at once with :func:`contain` (``python -m dask_kotta.runner.sandbox SPEC
-- ARGV``) and waits for the job.

The job's first process is PID 1 of its namespace. When it exits, for any
reason, the kernel kills every other process of the namespace (daemons and
double forks included) before it can be reaped; when the template dies, PID 1
gets ``SIGKILL`` (``PR_SET_PDEATHSIG``). The runner kills PID 1's process
group on walltime, memory or cancel, then checks that no process of the
job's uid (and of its cgroup) is left before it gives the uid to another job.
Memory, process and CPU limits are the job's cgroup's (``cgroups.py``), which
PID 1 joins first of all.

Standard library only: the warm template imports this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import platform
import resource
import signal
import socket
import struct
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000  # clone3 only

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
# statvfs f_flag bits of the flags a bind mount inherits and may not drop (in a user namespace)
_LOCKED = {os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
           os.ST_NOEXEC: MS_NOEXEC}  # fmt: skip

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())
_SYS_CLONE3 = 435  # the same on every architecture (Linux 5.3; CLONE_INTO_CGROUP 5.7)
_CAP_V3 = 0x20080522
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    # Called holding the GIL (PyDLL), as os.fork holds it across fork().
    _raw: Any = ctypes.PyDLL(None, use_errno=True)
    _raw.syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # not Linux
    _libc = None


class SandboxError(OSError):
    """A step of entering the sandbox failed; the message names the step."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str = "") -> None:
    rc = _libc.mount(_b(src), _b(dst), _b(fstype), flags, _b(data) if data else None)
    _check(rc, f"mount {src or fstype or ''} on {dst}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# The steps of a view: planned where nothing is copied on write yet (the template, before
# the clone), taken in the job's PID 1. There every object Python touches costs a page
# copy (~4 us), and planning a view there touched enough of them to cost ~0.3 ms a job.
_DIR, _FILE, _LINK, _MOUNT = range(4)
Step = tuple[Any, ...]


def _bind_steps(root: str, src: str, dst: str, writable: bool) -> list[Step]:
    """Bind ``src`` at ``root + dst``; read-only unless ``writable``. A symlink stays a symlink."""
    target = root + dst
    if os.path.islink(src) and not writable:
        return [(_LINK, os.readlink(src), target)]
    flags = MS_NOSUID | MS_NODEV
    if not writable:
        flags |= MS_RDONLY
    # A remount may not drop a flag the source mount has (EPERM in a user namespace).
    have = os.statvfs(src).f_flag
    flags |= sum(ms for st, ms in _LOCKED.items() if have & st)
    t = os.fsencode(target)
    return [
        (_DIR if os.path.isdir(src) else _FILE, target),
        (_MOUNT, os.fsencode(src), t, None, MS_BIND | MS_REC, None, f"bind {src} on {target}"),
        (_MOUNT, None, t, None, MS_REMOUNT | MS_BIND | flags, None, f"remount {target}"),
    ]


def _fs_step(fstype: str, target: str, flags: int, data: str | None = None) -> Step:
    t = os.fsencode(target)
    return (_MOUNT, fstype.encode(), t, fstype.encode(), flags, data and data.encode(),
            f"mount {fstype} on {target}")  # fmt: skip


def _take(steps: list[Step]) -> None:
    """Take the ``steps`` (made by :func:`_bind_steps`, :func:`_fs_step`) in order."""
    mount = _libc.mount
    for step in steps:
        kind = step[0]
        if kind == _MOUNT:
            _, src, dst, fstype, flags, data, what = step
            _check(mount(src, dst, fstype, flags, data), what)
        elif kind == _DIR:
            os.makedirs(step[1], mode=0o755, exist_ok=True)
        elif kind == _FILE:
            os.makedirs(os.path.dirname(step[1]), mode=0o755, exist_ok=True)
            if not os.path.exists(step[1]):
                os.close(os.open(step[1], os.O_WRONLY | os.O_CREAT, 0o644))
        else:  # _LINK
            os.makedirs(os.path.dirname(step[2]), mode=0o755, exist_ok=True)
            if not os.path.lexists(step[2]):
                os.symlink(step[1], step[2])


def _bind(root: str, src: str, dst: str, writable: bool) -> None:
    _take(_bind_steps(root, src, dst, writable))


def prepare(spec: dict[str, Any]) -> None:
    """Once per template: a mount namespace of its own holding the base of every job's view.

    Mounts, on ``spec["root"]``, a tmpfs with the read-only binds ``spec["ro"]``
    and a ``/dev``; does not move into it (the template still reaches the jobs'
    directories on the host). With ``spec["userns"]`` (a worker that is not
    root) it first makes an unprivileged user namespace in which it may mount.
    Call in a single-threaded process; every job forked after it then only
    pays for :func:`enter`.
    """
    if _libc is None or _SYS_PIVOT_ROOT is None:
        raise SandboxError(0, f"containment needs Linux on x86_64 or aarch64, not {sys.platform}")
    if spec.get("userns"):
        outer_uid, outer_gid = os.getuid(), os.getgid()
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare a user namespace")
        # Only our own ids are mapped: inside, jobs are who the worker is, without its rights.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{outer_uid} {outer_uid} 1")
        _write("/proc/self/gid_map", f"{outer_gid} {outer_gid} 1")
    else:
        _check(_libc.unshare(CLONE_NEWNS), "unshare a mount namespace")
    old = os.umask(0o022)
    root = spec["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing of ours propagates to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    for path in sorted((p for p in spec["ro"] if os.path.lexists(p)), key=lambda p: p.count("/")):
        _bind(root, path, path, writable=False)
    dev = root + "/dev"
    os.makedirs(dev, mode=0o755, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in _DEVICES:
        if os.path.exists(f"/dev/{name}"):
            _take([(_FILE, f"{dev}/{name}")])  # a device node is not a directory
            _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(f"{dev}/shm", 0o1777, exist_ok=True)
    os.makedirs(root + "/proc", 0o555, exist_ok=True)
    os.makedirs(root + "/tmp", 0o1777, exist_ok=True)  # exists if a read-only path is under /tmp
    os.umask(old)


def plan(spec: dict[str, Any]) -> list[Step]:
    """The steps of a job's own view, on the base (see :func:`prepare`).

    Its ``/tmp``, its working directory (on a tmpfs over the directory that holds
    every job's, so no other job's name shows), the queue's ``mounts``, its own
    ``/dev/shm`` and ``/proc``, then the root goes read-only. Made before the clone
    (``spec["steps"]``) or, failing that, in PID 1; taken by :func:`setup`. Raises
    ``OSError`` if a path to bind is not there.
    """
    root = spec["root"]
    steps = _bind_steps(root, spec["tmp"], "/tmp", writable=True)
    # What shows under /tmp (the jobs' directory, e.g. dask's scratch space; read-only paths;
    # the queue's mounts) needs mount points in this job's /tmp, which is on disk: made
    # there, each directory on the way costs every job a create and a delete (~0.1 ms each).
    # One per top-level name, with a tmpfs of the job's own on it for the rest.
    mounts = [m[0] for m in spec.get("mounts") or ()]
    under = [p for p in [spec["work_root"], *spec["ro"], *mounts] if p.startswith("/tmp/")
             and "/" in p[5:]]  # fmt: skip
    for top in sorted({"/tmp/" + p[5:].split("/", 1)[0] for p in under}):
        steps += [(_DIR, root + top), _fs_step("tmpfs", root + top, MS_NOSUID | MS_NODEV,
                                               "mode=0755,size=64k")]  # fmt: skip
    for path in spec["ro"]:
        if path.startswith("/tmp/") and os.path.lexists(path):
            steps += _bind_steps(root, path, path, writable=False)  # under the job's /tmp
    parent = root + spec["work_root"]
    steps += [(_DIR, parent), _fs_step("tmpfs", parent, MS_NOSUID | MS_NODEV, "mode=0755,size=64k")]
    steps += _bind_steps(root, spec["workdir"], spec["workdir"], writable=True)
    for path, writable in sorted(spec.get("mounts") or (), key=lambda m: m[0].count("/")):
        steps += _bind_steps(root, path, path, writable=writable)
    steps += [
        _fs_step("tmpfs", root + "/dev/shm", MS_NOSUID | MS_NODEV, f"mode=1777,size={spec['shm']}"),
        _fs_step("proc", root + "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        # Read-only for this job's view only: a bind remount changes this mount, not the tmpfs.
        (_MOUNT, None, os.fsencode(root), None,
         MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None, "remount the root"),
    ]  # fmt: skip
    return steps


def _view(spec: dict[str, Any]) -> None:
    """In the job's PID 1, in its own mount namespace: take the planned steps, move in."""
    _take(spec.get("steps") or plan(spec))
    # pivot_root(".", "."), then detach the old root stacked under the new one (as runc does).
    os.chdir(spec["root"])
    _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def _loopback_up() -> None:
    """Bring ``lo`` up in a new network namespace (``ip link set lo up``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))  # SIOCSIFFLAGS, UP


def _drop(uid: int | None) -> None:
    """Become the job's identity, with no capabilities and no way to gain any."""
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to non-root: every capability goes
    else:
        # In our own user namespace we hold every capability of it: give them all up.
        header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
        data = (ctypes.c_uint32 * 6)()
        _check(_libc.capset(header, data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


class _CloneArgs(ctypes.Structure):
    """``struct clone_args`` of ``clone3``, up to ``cgroup`` (88 bytes)."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]  # fmt: skip


def clone(spec: dict[str, Any]) -> int:
    """Fork the job's PID 1 into new mount, PID and IPC (and network) namespaces.

    ``os.fork`` with namespace flags: the raw ``clone`` system call wrapped in
    CPython's own fork hooks, as ``os.fork`` wraps ``fork()``. One fork instead
    of ``unshare`` + a waiter + a second fork (half the CPU of a contained
    job's start). Call in a single-threaded process that has run
    :func:`prepare`; returns 0 in the child (which then calls :func:`setup`)
    and its pid in the parent, which reaps it like any child: the kernel has
    killed every other process of the namespace before PID 1 can be reaped.

    With ``spec["cgroup_dir"]`` (a cgroup v2 group), the child starts in that
    group (``clone3`` with ``CLONE_INTO_CGROUP``): it never has to move into it,
    and a move waits for an RCU grace period under a lock every fork on the
    host takes. Where ``clone3`` cannot, the child moves itself in ``setup``.
    """
    if _SYS_CLONE is None:
        raise SandboxError(0, f"containment is not built for {platform.machine()}")
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC
    if not spec.get("network", True):
        flags |= CLONE_NEWNET
    group_fd = None
    if spec.get("cgroup_dir"):
        with contextlib.suppress(OSError):
            group_fd = os.open(spec["cgroup_dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid, err, into = -1, 0, False
    if group_fd is not None:
        args = _CloneArgs(flags=flags | CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD,
                          cgroup=group_fd)  # fmt: skip
        pid = _raw.syscall(_SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
        err, into = ctypes.get_errno(), True
    if pid < 0 and (group_fd is None or err in (errno.ENOSYS, errno.E2BIG, errno.EINVAL)):
        # No clone3 here (old kernel, or a seccomp filter that refuses it): clone, then move.
        pid = _raw.syscall(_SYS_CLONE, ctypes.c_ulong(flags | signal.SIGCHLD), 0, 0, 0, 0)
        err, into = ctypes.get_errno(), False
    if pid == 0:
        api.PyOS_AfterFork_Child()
        if into:
            spec["cgroup"] = []  # already in its group: nothing for setup to join
        return 0
    api.PyOS_AfterFork_Parent()
    if group_fd is not None:
        os.close(group_fd)
    if pid < 0:
        raise SandboxError(err, f"clone into new namespaces: {os.strerror(err)}")
    return pid


def setup(spec: dict[str, Any]) -> None:
    """In the job's PID 1, just cloned: its own mounts, then its identity, with no way back.

    On failure, says why on descriptor 2 (the job's STDERR) and exits 126.
    """
    try:
        # If the template (or launcher) dies, so does the job: PID 1 takes its namespace along.
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        for procs in spec.get("cgroup") or ():
            _write(procs, "0")  # the job's cgroup (``cgroups.py``): its limits, from here on
        os.umask(0o022)
        _view(spec)
        if not spec.get("network", True):
            _loopback_up()
        if spec.get("nproc"):
            # Counted per uid: a bound on this job's processes where it has a uid of its own
            # (the runner asks for it only where no pids cgroup bounds them).
            resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
        _drop(spec.get("uid"))
    except BaseException as e:
        with contextlib.suppress(Exception):
            os.write(2, f"kotta: cannot enter the job's sandbox: {e}\n".encode())
        os._exit(126)


def contain(spec: dict[str, Any]) -> None:
    """From a fresh single-threaded process (no warm template): :func:`prepare`, clone.

    Returns in the job's PID 1, set up; this process waits for it and exits
    the same way it did. Raises ``SandboxError`` before any clone if a
    namespace cannot be made.
    """
    prepare(spec)
    with contextlib.suppress(OSError):
        spec["steps"] = plan(spec)  # a path that is not there fails in setup, which says so
    pid = clone(spec)
    if pid == 0:
        setup(spec)
        return
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def probe(root: str, scratch: str) -> str | None:
    """None if jobs can be contained here, else why not (one line).

    Enters a sandbox like a job's (mount view on ``root``, working directory
    ``scratch``) in a child process and looks around from inside.
    """
    if _libc is None or _SYS_PIVOT_ROOT is None or not hasattr(os, "fork"):
        return f"containment needs Linux on x86_64 or aarch64 (this is {sys.platform})"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 2)  # contain() reports a failed step on descriptor 2
        try:
            work = os.path.join(scratch, "work")
            os.makedirs(work, exist_ok=True)
            spec = {"root": root, "workdir": work, "work_root": scratch, "tmp": scratch,
                    "ro": ["/usr"], "userns": os.getuid() != 0,
                    "uid": 65534 if os.getuid() == 0 else None, "network": False, "shm": "64k"}  # fmt: skip
            contain(spec)
            os._exit(0 if os.listdir("/") and os.getpid() == 1 else 3)
        except BaseException as e:
            with contextlib.suppress(Exception):
                os.write(w, f"{e}\n".encode()[:500])
            os._exit(2)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        why = f.read().decode(errors="replace").strip()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return why or f"a test sandbox exited with status {os.waitstatus_to_exitcode(status)}"


def launch(argv: list[str]) -> None:
    """``python -m dask_kotta.runner.sandbox SPEC_JSON -- ARGV...``: contain, then exec ARGV.

    The fresh-interpreter path, when no warm template is available.
    """
    spec = json.loads(argv[0])
    command = argv[argv.index("--") + 1 :]
    contain(spec)
    os.chdir(spec["workdir"])
    try:
        os.execvpe(command[0], command, dict(os.environ))
    except OSError as e:
        os.write(2, f"kotta: cannot start {command[0]!r}: {e.strerror}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        why = probe(sys.argv[2], sys.argv[3])
        print(why or "ok")
        sys.exit(1 if why else 0)
    launch(sys.argv[1:])
