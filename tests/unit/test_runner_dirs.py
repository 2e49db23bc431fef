"""What a killed worker leaves on disk is swept by the next one to start a template."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from dask_kotta.runner import forkserver


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    # tempfile.gettempdir() caches its answer: point the module's lookup at the test's dir.
    monkeypatch.setattr(forkserver.tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path


def make(root, name, age_s, lock=True):
    d = root / name
    d.mkdir()
    (d / "forkserver.log").write_text("x")
    fd = None
    if lock:
        fd = os.open(d / "owner.lock", os.O_RDWR | os.O_CREAT, 0o600)
    old = time.time() - age_s
    os.utime(d, (old, old))
    return d, fd


def test_only_dead_workers_old_directories_are_removed(tmp_root):
    dead, fd = make(tmp_root, "kotta-fs-dead", 600)
    os.close(fd)  # its owner is gone: nobody holds the lock
    live, live_fd = make(tmp_root, "kotta-fs-live", 600)
    fcntl.flock(live_fd, fcntl.LOCK_EX)  # a live worker holds its directory's lock
    young, fd = make(tmp_root, "kotta-fs-young", 1, lock=False)  # just made, not locked yet
    other, fd2 = make(tmp_root, "something-else", 600)
    try:
        assert forkserver.sweep_stale_dirs() == 1
        assert not dead.exists()
        assert live.exists() and young.exists() and other.exists()
    finally:
        os.close(live_fd)
        os.close(fd2)


def test_a_template_holds_its_directory_until_it_closes(tmp_root):
    server = forkserver.ForkServer()
    try:
        old = time.time() - 600
        os.utime(server.dir, (old, old))
        assert forkserver.sweep_stale_dirs() == 0 and server.dir.exists()
    finally:
        server.close()
    assert not server.dir.exists()


def test_the_way_to_a_jobs_directory_under_tmp_is_one_mount_point_on_disk(tmp_path):
    """The directories on the way down to a job's directory under /tmp are made on a tmpfs
    of the job's own: only the top-level one is made in its /tmp, on disk."""
    import tempfile

    from dask_kotta.runner import sandbox

    base = tempfile.mkdtemp(prefix="kotta-plan-", dir="/tmp")
    try:
        work_root = os.path.join(base, "scratch", "kotta-jobs")
        workdir = os.path.join(work_root, "job-1")
        os.makedirs(os.path.join(workdir, ".kotta", "tmp"))
        spec = {"root": str(tmp_path / "root"), "ro": ["/usr"], "workdir": workdir,
                "work_root": work_root, "tmp": os.path.join(workdir, ".kotta", "tmp"),
                "mounts": [], "shm": "1024"}  # fmt: skip
        steps = sandbox.plan(spec)
        root = spec["root"]
        made_in_tmp = [s[1] for s in steps if s[0] in (sandbox._DIR, sandbox._FILE)
                       and s[1].startswith(root + "/tmp/")]  # fmt: skip
        top = root + "/tmp/" + base.split("/")[2]
        # The top-level name (on disk), then the rest below it, after a tmpfs went on it.
        assert made_in_tmp[0] == top, made_in_tmp
        assert all(p == top or p.startswith(top + "/") for p in made_in_tmp)
        on_top = [i for i, s in enumerate(steps)
                  if s[0] == sandbox._MOUNT and s[3] == b"tmpfs" and s[2] == os.fsencode(top)]  # fmt: skip
        below = [i for i, s in enumerate(steps)
                 if s[0] in (sandbox._DIR, sandbox._FILE) and s[1].startswith(top + "/")]  # fmt: skip
        assert on_top and below and on_top[0] < min(below), steps
        # Binds read-only unless asked; the job's own directory and /tmp writable.
        binds = {s[2]: s[4] for s in steps if s[0] == sandbox._MOUNT and s[1] is None
                 and s[4] & sandbox.MS_REMOUNT}  # fmt: skip
        assert not binds[os.fsencode(root + workdir)] & sandbox.MS_RDONLY
        assert binds[os.fsencode(root)] & sandbox.MS_RDONLY
    finally:
        import shutil

        shutil.rmtree(base)


def test_job_directories_of_dead_runners_are_swept_live_and_new_ones_kept(tmp_path, monkeypatch):
    from dask_kotta.runner import workdirs

    monkeypatch.setenv("KOTTA_WORK_DIR", str(tmp_path))
    workdirs._swept.cache_clear()
    live = workdirs.Workdir("live", 1)  # a runner holds it
    (live.path / "data.csv").write_text("x")
    dead = tmp_path / "dead-1-abc"  # its runner died: nothing holds its lock
    (dead / ".kotta").mkdir(parents=True)
    young = tmp_path / "young-1-abc"  # just made: maybe not locked yet
    young.mkdir()
    old = time.time() - 600
    for d in (live.path, dead):
        os.utime(d, (old, old))
    assert workdirs.sweep(tmp_path) == 1
    assert not dead.exists() and live.path.exists() and young.exists()
    live.remove()
    assert not live.path.exists() and not (tmp_path / ".locks" / f"{live.path.name}.lock").exists()
    # A worker process sweeps its root once, at its first job there.
    os.utime(young, (old, old))
    workdirs._swept.cache_clear()
    workdirs.Workdir("next", 1).remove()
    assert not young.exists()


def test_a_local_store_drops_the_parts_a_crashed_write_left(tmp_path):
    from dask_kotta.store.objects import LocalObjectStore

    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("u1/job/out.txt", b"kept")
    stale = tmp_path / "objects" / "u1" / "job" / ".part-123-4"
    fresh = tmp_path / "objects" / "u1" / "job" / ".part-123-5"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    assert store.abort_stale_uploads(86400) == 1
    assert not stale.exists() and fresh.exists()
    assert store.get_bytes("u1/job/out.txt") == b"kept"
