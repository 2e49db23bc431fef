"""The `dask-kotta` command line against the real service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COMMANDS = ["up", "server", "worker", "token", "submit", "status", "logs", "cancel", "ls"]


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


def test_status_of_unknown_job(service):
    out = service.cli("status", "0123456789abcdef")
    assert out.returncode == 1 and "no job '0123456789abcdef'" in out.stderr


def test_missing_credentials_file(service, tmp_path):
    out = service.cli("ls", auth=tmp_path / "nope.file")
    assert out.returncode == 1 and "cannot read credentials" in out.stderr


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
