"""The pure parts of the token lifecycle: durations, list lines, where offline credentials
point, the served mark of a data dir, admins in the store."""

from __future__ import annotations

import calendar
import json
import os
import socket
import subprocess
import sys
import time

import click
import pytest

from dask_kotta.cli.tokens import describe, duration_s, offline_url
from dask_kotta.errors import AlreadyServedError, ConfigError, ForbiddenError
from dask_kotta.server.admin import require_admin
from dask_kotta.server.served import (
    SERVED_FILE,
    Served,
    claim,
    read_served,
    release,
)
from dask_kotta.store.jobs import JobStore


@pytest.mark.parametrize(
    "text, seconds",
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("1.5", 1.5 * 86400),
     (" 2H ", 7200)],
)  # fmt: skip
def test_durations(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0d", "-1h", "inf", "nan", "", "d"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(click.BadParameter, match="is not a duration like 30d"):
        duration_s(text)


def test_a_list_line_has_id_user_expiry_and_label():
    t0 = calendar.timegm(time.strptime("2026-12-01 10:00", "%Y-%m-%d %H:%M"))
    t = {"id": "0123456789ab", "user": "bob", "created_at": t0, "label": "ci", "expires_at": None}
    assert describe(t, t0) == "0123456789ab  2026-12-01 10:00 UTC  bob  (never expires)  ci"
    t.update(expires_at=t0 + 3600, label=None)
    assert describe(t, t0).endswith("bob  (expires 2026-12-01 11:00)")
    assert describe(t, t0 + 7200).endswith("bob  (expired 2026-12-01 11:00)")


def test_offline_credentials_name_the_serving_url_or_need_new():
    assert offline_url("http://a:1", None, False, "d", 8765) == "http://a:1"
    assert offline_url("http://a:1", "http://b:2", False, "d", 8765) == "http://b:2"
    assert offline_url(None, None, True, "d", 9000) == "http://127.0.0.1:9000"
    with pytest.raises(click.UsageError, match="nobody serves d .* give --new"):
        offline_url(None, "http://b:2", False, "d", 8765)


def test_a_data_dir_is_served_by_one_process_until_it_releases_it(tmp_path):
    assert read_served(tmp_path) is None
    mine = claim(tmp_path, "http://127.0.0.1:1234")
    assert read_served(tmp_path) == mine and mine.pid == os.getpid()
    assert (tmp_path / SERVED_FILE).stat().st_mode & 0o077 == 0
    with pytest.raises(AlreadyServedError, match=r"already served by http://127.0.0.1:1234 "):
        claim(tmp_path, "http://127.0.0.1:5678")
    assert issubclass(AlreadyServedError, ConfigError)  # the CLI's one-line errors
    release(tmp_path, mine)
    assert not (tmp_path / SERVED_FILE).exists() and read_served(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left either


def _write(tmp_path, **fields) -> None:
    base = {"url": "http://old:1", "pid": os.getpid(), "host": socket.gethostname(),
            "started_at": time.time()}  # fmt: skip
    (tmp_path / SERVED_FILE).write_text(json.dumps({**base, **fields}))


def test_a_mark_whose_process_is_gone_is_stale_and_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write(tmp_path, pid=dead.pid)
    assert read_served(tmp_path) is None
    mine = claim(tmp_path, "http://new:2")
    assert read_served(tmp_path) == mine


def test_a_reused_pid_is_not_the_server_that_wrote_the_mark(tmp_path):
    # This process is alive, but younger than a mark written a day ago: not its writer.
    _write(tmp_path, started_at=time.time() - 86400)
    assert read_served(tmp_path) is None


def test_a_mark_from_another_host_is_taken_as_live(tmp_path):
    _write(tmp_path, host="elsewhere", pid=1)
    found = read_served(tmp_path)
    assert found is not None and found.url == "http://old:1"
    with pytest.raises(AlreadyServedError, match=r"pid 1 on elsewhere.*remove .*served.json"):
        claim(tmp_path, "http://new:2")


def test_an_unreadable_mark_is_replaced(tmp_path):
    (tmp_path / SERVED_FILE).write_text("{not json")
    assert read_served(tmp_path) is None
    claim(tmp_path, "http://new:2")
    assert json.loads((tmp_path / SERVED_FILE).read_text())["url"] == "http://new:2"


def test_release_leaves_a_mark_another_process_took_over(tmp_path):
    mine = claim(tmp_path, "http://mine:1")
    _write(tmp_path, url="http://theirs:2", pid=1, host="elsewhere")
    release(tmp_path, mine)
    assert json.loads((tmp_path / SERVED_FILE).read_text())["url"] == "http://theirs:2"
    assert Served("u", 1, "h", 0.0) != mine


def test_only_admins_pass(tmp_path):
    require_admin({"id": 1, "name": "root", "admin": True})
    with pytest.raises(ForbiddenError, match="user 'bob' is not an admin: .* needs an admin"):
        require_admin({"id": 2, "name": "bob", "admin": False})
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    try:
        uid = store.get_or_create_user("carol")
        store.add_token(uid, "a" * 64)
        assert store.user_for_token("a" * 64)["admin"] is False
        store.set_admin("carol")
        assert store.user_for_token("a" * 64)["admin"] is True
        store.set_admin("carol", False)
        assert store.user_for_token("a" * 64)["admin"] is False
        store.add_token(uid, "ab" + "0" * 62)
        assert store.revoke_token("aaaaaaaa") == ["carol"]  # one match: deleted
        assert store.user_for_token("a" * 64) is None
        store.add_token(uid, "abcdef01" + "1" * 56)
        store.add_token(uid, "abcdef01" + "2" * 56)
        assert store.revoke_token("abcdef01") == ["carol", "carol"]  # two: none deleted
        assert store.user_for_token("abcdef01" + "1" * 56) is not None
        assert store.revoke_token("ffffffff") == []
        with pytest.raises(ValueError, match="not a token id"):
            store.revoke_token("abc")
    finally:
        store.close()
