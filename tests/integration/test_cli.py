"""The `dask-kotta` command line against the real service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kotta_testing import wait_for

COMMANDS = ["up", "server", "worker", "token", "submit", "status", "logs", "cancel", "rm", "ls",
            "gc", "get", "resubmit"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    out = subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", command, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "Usage:" in out.stdout and len(out.stdout.splitlines()) > 4


def test_submit_status_logs_ls(service, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho from-cli\necho warn >&2\necho r > result.txt\n")
    out = service.cli(
        "submit", str(script), "--walltime", "0.5", "--outputs", "result.txt", "--wait", check=True
    )
    job_id = out.stdout.strip().splitlines()[0]
    assert "from-cli" in out.stdout and "warn" in out.stdout + out.stderr

    status = service.cli("status", job_id, check=True).stdout
    assert "completed" in status and "stage in" in status and "result.txt" in status

    logs = service.cli("logs", job_id, check=True)
    assert logs.stdout == "from-cli\n" and "warn\n" in logs.stderr

    listing = service.cli("ls", "--limit", "5", check=True).stdout
    assert job_id in listing and "completed" in listing

    assert f"job {job_id} completed" in service.log(), "up prints a line per finished job"


def test_cancel_and_cancel_again(service, tmp_path):
    script = tmp_path / "slow.sh"
    script.write_text("sleep 30\n")
    job_id = service.cli("submit", str(script), check=True).stdout.strip()
    first = service.cli("cancel", job_id)
    assert first.returncode == 0 and "cancelled" in first.stdout
    again = service.cli("cancel", job_id)
    assert again.returncode == 1 and "already ended as cancelled" in again.stderr


def test_rm_deletes_an_ended_job_and_nothing_else(service, tmp_path):
    script = tmp_path / "out.sh"
    script.write_text("echo kept > out.txt\n")
    args = ("submit", str(script), "--walltime", "0.5", "--outputs", "out.txt")
    done = service.cli(*args, "--wait", check=True).stdout.strip().splitlines()[0]
    slow = tmp_path / "slow.sh"
    slow.write_text("sleep 30\n")
    running = service.cli("submit", str(slow), check=True).stdout.strip()
    out = service.cli("rm", done, running)
    assert out.returncode == 1 and f"job {done} deleted" in out.stdout
    assert "cancel it first" in out.stderr
    assert "no job" in service.cli("status", done).stderr
    assert (
        "pending" in service.cli("status", running).stdout
        or "processing" in service.cli("status", running).stdout
    )
    again = service.cli("rm", done)
    assert again.returncode == 1 and "no job" in again.stderr
    service.cli("cancel", running, check=True)
    assert service.cli("rm", running, check=True).returncode == 0


def test_konn_delete_takes_jobs_or_ids(service):
    from dask_kotta.errors import NotFoundError
    from kotta import KottaJob

    konn = service.konn()
    jobs = [KottaJob(script=f"echo {i}", walltime=0.5) for i in range(2)]
    for j in jobs:
        j.submit(konn)
    assert all(j.wait(konn, maxwait=120) for j in jobs)
    konn.delete([jobs[0], jobs[1].job_id])
    for j in jobs:
        with pytest.raises(NotFoundError):
            konn.job(j.job_id)


def test_status_of_unknown_job(service):
    out = service.cli("status", "0123456789abcdef")
    assert out.returncode == 1 and "no job '0123456789abcdef'" in out.stderr


def test_missing_credentials_file(service, tmp_path):
    out = service.cli("ls", auth=tmp_path / "nope.file")
    assert out.returncode == 1 and "cannot read credentials" in out.stderr


def test_submit_of_a_script_that_is_not_utf8_says_so(service, tmp_path):
    script = tmp_path / "latin1.sh"
    script.write_bytes("echo café\n".encode("latin-1"))
    before = service.cli("ls", "--limit", "1000").stdout
    out = service.cli("submit", str(script), "--walltime", "0.5")
    assert out.returncode == 1 and "is not UTF-8 text (byte 8 is b'\\xe9')" in out.stderr, (
        out.stderr
    )
    assert "Traceback" not in out.stderr
    assert service.cli("ls", "--limit", "1000").stdout == before, "nothing was submitted"


def test_token_where_no_service_keeps_its_data_writes_nothing(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dask_kotta.cli", "token", "dave", "-o", "dave.auth"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # No admin's credentials to ask a server with, and no data dir named: nothing to do.
    assert out.returncode == 1 and "cannot read admin credentials auth.file" in out.stderr, (
        out.stderr
    )
    offline = subprocess.run([*cmd, "--data-dir", ".kotta"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert offline.returncode == 2 and "no job store at .kotta/jobs.sqlite" in offline.stderr
    assert list(tmp_path.iterdir()) == [], "neither a store nor a credentials file"
    made = subprocess.run([*cmd, "--new"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / ".kotta" / "jobs.sqlite").exists() and (tmp_path / "dave.auth").exists()


def test_a_revoked_token_is_refused_by_the_running_server_within_a_second(service, tmp_path):
    import hashlib
    import time

    import requests

    token = json.loads(service.token("erin", tmp_path / "erin.auth").read_text())["token"]
    token_id = hashlib.sha256(token.encode()).hexdigest()[:12]
    headers = {"Authorization": f"Bearer {token}"}
    whoami = service.url + "/api/v1/whoami"
    assert requests.get(whoami, headers=headers, timeout=10).json()["name"] == "erin"

    def tok(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "dask_kotta.cli", "token", "--data-dir", str(service.data_dir)]
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, check=check, timeout=60
        )

    listed = tok("erin", "--list").stdout
    assert token_id in listed and "erin" in listed, listed
    assert token_id not in tok(service.user, "--list").stdout
    out = tok("--revoke", token_id[:8])
    assert f"revoked token {token_id[:8]} of user 'erin'" in out.stdout, out.stdout
    revoked = time.monotonic()
    wait_for(lambda: requests.get(whoami, headers=headers, timeout=10).status_code == 401, 5,
             "the revoked token to be refused")  # fmt: skip
    assert time.monotonic() - revoked < 1.5
    assert token_id not in tok("--list").stdout
    again = tok("--revoke", token_id, check=False)
    assert again.returncode == 1 and "0 tokens have an id starting" in again.stderr, again.stderr


def test_token_makes_working_credentials(service, tmp_path):
    path = service.token("carol", tmp_path / "carol.auth")
    data = json.loads(path.read_text())
    assert data["url"] == service.url and data["token"].startswith("kt_")
    assert (path.stat().st_mode & 0o077) == 0, "credentials must be private to their owner"
    script = tmp_path / "carol.sh"
    script.write_text("echo carol\n")
    sent = service.cli("submit", str(script), "--walltime", "0.5", auth=path)
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip()
    theirs = service.cli("ls", "--limit", "1000", auth=path)
    assert theirs.returncode == 0 and job_id in theirs.stdout, theirs.stderr
    assert job_id not in service.cli("ls", "--limit", "1000", check=True).stdout, "carol's own"


def test_old_jobs_are_deleted_by_gc_or_by_the_server(tmp_path):
    """(That --keep 0 keeps every job is in tests/unit/test_app.py.)"""
    import sqlite3
    import time

    from kotta_testing import Service, wait_for

    from kotta import KottaJob

    svc = Service(tmp_path / "svc", workers=1)
    db = svc.data_dir / "jobs.sqlite"

    def age(job, days):
        with sqlite3.connect(db) as c:
            c.execute("UPDATE jobs SET ended_at = ? WHERE id = ?",
                      (time.time() - days * 86400, job.job_id))  # fmt: skip

    def ids():
        return {j["id"] for j in svc.konn().jobs(limit=100)}

    svc.start()
    try:
        konn = svc.konn()
        old, new = (KottaJob(script="echo x > x.txt", outputs="x.txt", walltime=0.5) for _ in "ab")
        for j in (old, new):
            j.submit(konn)
            assert j.wait(konn, maxwait=120)
    finally:
        svc.stop()
    assert not (svc.data_dir / "served.json").exists(), "a stopped service serves nothing"
    age(old, 40)
    assert svc.stored(old.job_id) >= {"x.txt", "STDOUT.txt"} and svc.stored(new.job_id)

    def gc(*args):
        return subprocess.run(
            [sys.executable, "-m", "dask_kotta.cli", "gc", "--data-dir", str(svc.data_dir), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    bad = gc("--keep", "0")
    assert bad.returncode == 2 and "--keep" in bad.stderr  # gc is for deleting: 0 makes no sense
    out = gc("--keep", "30")
    assert out.returncode == 0 and "deleted 1 job(s)" in out.stdout, out
    assert svc.stored(old.job_id) == set() and svc.stored(new.job_id)
    # A server with the default --keep (30 days) sweeps on its own.
    age(new, 31)
    svc.start()
    try:
        wait_for(lambda: new.job_id not in ids(), 30, "the server to delete the old job")
        assert svc.stored(new.job_id) == set()
    finally:
        svc.stop()


def test_a_token_that_expires_is_refused_once_it_has(service, tmp_path):
    import time

    import requests

    cmd = [sys.executable, "-m", "dask_kotta.cli", "token", "--data-dir", str(service.data_dir)]
    path = tmp_path / "brief.auth"
    # Long enough for the checks below on a loaded machine (each command starts a Python).
    ends = time.time() + 10  # at the earliest
    made = subprocess.run([*cmd, "frank", "-o", str(path), "--expires", "10s", "--label", "demo"],
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    assert "valid until" in made.stdout, made.stdout
    token = json.loads(path.read_text())["token"]
    headers = {"Authorization": f"Bearer {token}"}
    whoami = service.url + "/api/v1/whoami"
    assert requests.get(whoami, headers=headers, timeout=10).status_code == 200
    listed = subprocess.run([*cmd, "frank", "--list"], capture_output=True, text=True,
                            check=True, timeout=60).stdout  # fmt: skip
    # "expires" or, on a slow machine, already "expired": either way the list shows it.
    assert "frank  (expire" in listed and "demo" in listed, listed
    wait_for(lambda: requests.get(whoami, headers=headers, timeout=10).status_code == 401, 20,
             "the expired token to be refused")  # fmt: skip
    assert time.time() >= ends - 0.5, "refused before it expired"
    bad = subprocess.run([*cmd, "frank", "--expires", "soon"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "not a duration like 30d" in bad.stderr, bad.stderr
