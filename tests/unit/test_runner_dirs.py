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
