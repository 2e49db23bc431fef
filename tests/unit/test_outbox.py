"""The worker's outbox of ends the server could not take (``runner/outbox.py``), with no server.

Delivery to a real server is in tests/integration/test_kept_ends.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time

import pytest

from dask_kotta.runner import outbox


@pytest.fixture
def box(tmp_path, monkeypatch):
    path = tmp_path / "outbox"
    monkeypatch.setenv(outbox.DIR_VAR, str(path))
    monkeypatch.setattr(outbox, "courier", lambda: type("Idle", (), {"kick": lambda self: None})())
    return path


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


def report(job_id="abc123", attempt=2) -> dict:
    return {"id": job_id, "attempt": attempt, "token": "secret-token", "ok": True,
            "result": "cmVzdWx0"}  # fmt: skip


def test_an_end_is_kept_whole_and_private(box):
    path = outbox.keep("http://server:1/", report())
    assert path == box / "abc123.2.json"
    assert stat.S_IMODE(os.stat(box).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the attempt's token
    entry = json.loads(path.read_text())
    assert entry["server"] == "http://server:1" and entry["report"] == report()
    assert [p.name for p in box.iterdir()] == ["abc123.2.json"], "no temp file is left"
    outbox.drop(path)
    outbox.drop(path)  # twice: nothing to drop is fine
    assert not path.exists()


def test_a_job_id_cannot_name_a_path(box):
    path = outbox.keep("http://s", report(job_id="../../etc/x"))
    assert path is not None and path.parent == box and "/" not in path.name


@pytest.mark.parametrize("mode", [0o755, 0o770])
def test_an_outbox_others_can_open_is_refused(box, mode):
    box.mkdir(mode=0o700)
    box.chmod(mode)
    with pytest.raises(outbox.OutboxError, match="not a private directory"):
        outbox.directory()
    assert outbox.keep("http://s", report()) is None, "never written where others can read it"


def test_an_outbox_that_is_a_symlink_is_refused(box, tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    box.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(outbox.OutboxError):
        outbox.directory()


def test_an_unreachable_server_keeps_the_end_and_an_expired_one_is_dropped(box):
    url = closed_port_url()
    kept = outbox.keep(url, report("waits"))
    expired = outbox.keep(url, report("expired"))
    entry = json.loads(expired.read_text())
    entry["kept_at"] = time.time() - outbox.KEEP_S - 1
    expired.write_text(json.dumps(entry))
    courier = outbox.Courier()
    try:
        assert courier.pass_once() is True, "an end still waits"
    finally:
        courier.session.close()
    assert kept.exists() and not expired.exists()
