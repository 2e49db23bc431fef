"""A job's cgroup on the real kernel: memory, process and CPU limits, and the kill after.

These drive ``runner/cgroups.py`` against the host's cgroup file systems with
forked processes that join a group as a job's PID 1 does; the service-level
tests (``test_containment.py``, ``test_fastpath.py``) check the same limits on
jobs. CI runs as root on Linux with cgroups, so none of these may skip there.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux cgroups")

from dask_kotta.runner import cgroups  # noqa: E402

MiB = 1024**2


@pytest.fixture(scope="module")
def tree() -> cgroups.Tree:
    t = cgroups.tree()
    assert not isinstance(t, str), f"this worker cannot make cgroups: {t}"
    return t


def _in_group(group: cgroups.Group, body) -> int:
    """Fork a child that joins ``group`` (as a job's PID 1 does), runs ``body``; its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for procs in group.procs:
                with open(procs, "w") as f:
                    f.write("0")
            code = body() or 0
        finally:
            os._exit(code)
    return pid


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_memory_over_the_limit_is_killed_by_the_kernel_and_named(tree):
    assert "memory" in tree.controllers, tree.describe()
    group = cgroups.Group(tree, cgroups.Limits(memory_bytes=64 * MiB))

    def hog():
        block = bytearray(256 * MiB)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return 0  # never reached: the whole allocation is over the limit

    assert _status(_in_group(group, hog)) == -signal.SIGKILL
    assert group.oom_killed()
    assert group.close()
    assert not any(d.exists() for d in group.dirs)


def test_memory_under_the_limit_is_not_an_oom_kill(tree):
    group = cgroups.Group(tree, cgroups.Limits(memory_bytes=256 * MiB))

    def small():
        block = bytearray(16 * MiB)
        return 0 if len(block) else 1

    assert _status(_in_group(group, small)) == 0
    assert not group.oom_killed()
    assert group.close()


def test_a_group_bounds_its_processes_whatever_their_uid(tree):
    assert "pids" in tree.controllers, tree.describe()
    group = cgroups.Group(tree, cgroups.Limits(max_processes=5))

    def forks():
        started = 0
        for _ in range(10):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                started += 1
            except BlockingIOError:
                pass
        return 10 + started  # the exit code says how many forks succeeded

    code = _status(_in_group(group, forks))
    assert code == 10 + 4, f"{code - 10} forks succeeded under a limit of 5 processes"
    # The sleepers outlived their parent; closing the group kills them and removes it.
    assert len(group.pids()) == 4
    assert group.close()
    assert not any(d.exists() for d in group.dirs)


def test_a_cpu_quota_holds_a_busy_job_to_its_share(tree):
    assert "cpu" in tree.controllers, tree.describe()
    group = cgroups.Group(tree, cgroups.Limits(cpus=0.25))

    def spin():
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            pass
        return 0

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert _status(_in_group(group, spin)) == 0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert used < 1.5 * 0.25 * 1.4, f"a job held to 0.25 CPU used {used:.2f} s of CPU in 1.5 s"
    assert group.close()


def _cgroup2_base() -> Path:
    mount = next(m for m in cgroups._mounts() if m[2] == "cgroup2")
    return Path(mount[1])


def test_closing_a_v2_group_kills_a_daemon_its_job_left(monkeypatch):
    """The v2 path (``cgroup.kill``), wherever a cgroup2 hierarchy is mounted."""
    base = _cgroup2_base() / f"kotta-test-{os.getpid()}"
    base.mkdir()
    try:
        t = cgroups._v2(base)
        group = cgroups.Group(t, cgroups.Limits(memory_bytes=256 * MiB, max_processes=100))
        assert len(group.dirs) == 1

        def daemonize():
            middle = os.fork()
            if middle == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(120)
                os._exit(0)
            os.waitpid(middle, 0)  # the daemon is forked once its parent is gone
            return 0

        assert _status(_in_group(group, daemonize)) == 0
        wait_for(lambda: len(group.pids()) == 1, 10, "the daemon to be alone in its group")
        (daemon,) = group.pids()
        assert group.close()
        assert not group.dirs[0].exists()
        assert not Path(f"/proc/{daemon}").exists() or _zombie(daemon)
    finally:
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True):
            (d / "cgroup.kill").write_text("1")  # whatever a failed test left running
            wait_for(lambda d=d: not (d / "cgroup.procs").read_text(), 5, f"{d} to empty")
            d.rmdir()
        base.rmdir()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_group_of_a_dead_worker_is_swept(tree):
    parent = next(iter(tree.parents.values()))
    stale = parent / "999999999-0"  # no such pid
    stale.mkdir()
    cgroups._sweep(parent)
    assert not stale.exists()


def test_the_tree_names_what_it_enforces_and_what_falls_back():
    full = cgroups.Tree(1, {c: Path("/x") for c in cgroups.CONTROLLERS})
    assert full.describe() == "cgroup v1 (memory, pids, cpu)"
    bare = cgroups.Tree(2, {}, bare=Path("/x"))
    assert bare.describe() == (
        "cgroup v2 (no controllers); memory by an RSS watch, processes by RLIMIT_NPROC, "
        "no CPU limit"
    )


def test_a_reused_group_takes_the_next_jobs_limits_and_counts_its_own_ooms(tree):
    pool = cgroups.Pool(tree)
    group = pool.take(cgroups.Limits(memory_bytes=64 * MiB, max_processes=5))

    def hog():
        block = bytearray(256 * MiB)
        for i in range(0, len(block), 4096):
            block[i] = 1

    assert _status(_in_group(group, hog)) == -signal.SIGKILL and group.oom_killed()
    assert pool.give(group)
    # The next job: more memory, no process limit. The first job's OOM kill is not its own.
    again = pool.take(cgroups.Limits(memory_bytes=512 * MiB))
    assert again is group and not again.oom_killed()
    assert _status(_in_group(again, hog)) == 0
    assert not again.oom_killed()
    # And back down below what the last job used.
    again.limit(cgroups.Limits(memory_bytes=32 * MiB, max_processes=3))
    assert _status(_in_group(again, hog)) == -signal.SIGKILL and again.oom_killed()
    assert again.close()


def test_a_job_on_cgroup_v2_starts_in_its_group_without_moving():
    """``sandbox.clone`` with ``cgroup_dir``: clone3(CLONE_INTO_CGROUP), wherever cgroup2 is."""
    from dask_kotta.runner import sandbox

    base = _cgroup2_base() / f"kotta-test-into-{os.getpid()}"
    base.mkdir()
    try:
        group = cgroups.Group(cgroups._v2(base), cgroups.Limits(max_processes=100))
        spec = {"cgroup_dir": str(group.dirs[0]), "cgroup": group.procs}
        pid = sandbox.clone(spec)
        if pid == 0:  # the job's PID 1, in its own namespaces; it writes no cgroup.procs
            code = 0 if spec["cgroup"] == [] else 3  # told it need not move
            time.sleep(0.5)
            os._exit(code)
        assert spec["cgroup"] == group.procs  # the parent's spec is untouched
        wait_for(lambda: group.pids() == {pid}, 5, "the child in its group")
        assert _status(pid) == 0
        assert group.close()
    finally:
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True):
            (d / "cgroup.kill").write_text("1")
            d.rmdir()
        base.rmdir()


def test_an_emptied_group_vouches_for_its_jobs_uid(tree):
    """What lets the runner skip the /proc scan: a job's processes cannot leave its group."""
    from dask_kotta.runner.isolation import processes_by_uid

    if os.getuid() != 0:
        pytest.skip("needs root to run a child under another uid")
    uid = 900_000 + 4095  # the last uid of the default pool, never leased by these tests
    group = cgroups.Group(tree, cgroups.Limits(max_processes=64))
    assert group.holds_all()
    r, w = os.pipe()

    def leaves_a_daemon():
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                # Try to leave the group as a job would: it has no right to.
                for procs in group.procs:
                    try:
                        with open(procs.replace(f"/{group.name}/", "/"), "w") as f:
                            f.write("0")
                    except OSError:
                        pass
                os.write(w, b"x")
                time.sleep(60)
            os._exit(0)
        return 0

    assert _status(_in_group(group, leaves_a_daemon)) == 0
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    assert processes_by_uid({uid}).get(uid), "the daemon should be running as the job's uid"
    assert group.empty()
    wait_for(lambda: not processes_by_uid({uid}).get(uid), 5, "the uid to have no process")
    assert group.close()


def test_a_group_no_hierarchy_of_which_the_job_joins_vouches_for_nothing(tree):
    if tree.version == 2:
        pytest.skip("on cgroup v2 a job is always in its group")
    group = cgroups.Group(tree, cgroups.Limits())  # no limit: no v1 hierarchy joined
    try:
        assert not group.holds_all()
    finally:
        group.close()


def test_the_parent_group_is_reachable_whatever_the_umask_of_who_made_it(tmp_path):
    """A server's umask is 077; a group delegated under ``dask-kotta/`` to a worker that is
    not root must still be reachable (it was not, on a machine where a server came first)."""
    old = os.umask(0o077)
    try:
        parent = cgroups._make_parent(tmp_path)
    finally:
        os.umask(old)
    assert parent.stat().st_mode & 0o777 == 0o755
