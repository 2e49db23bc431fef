"""Starting and stopping the service's processes: one line when the scheduler cannot be
reached, no banner before serving, and Ctrl-C on `up` ends it promptly (issue 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from kotta_testing import Service, free_port, wait_for

from kotta import KottaJob

#: Generous: the check itself gives up after 5 s; the rest is Python and dask importing on
#: a busy 2-core host.
EXIT_BOUND_S = 40


def _dask_kotta(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "dask_kotta.cli", *args], capture_output=True,
                         text=True, timeout=120, cwd=cwd)  # fmt: skip
    return out, time.monotonic() - t0


def _closed_port() -> int:
    return free_port()  # nothing listens there


@pytest.mark.parametrize("command", ["worker", "server", "up"])
def test_an_unreachable_scheduler_fails_in_one_line_naming_it(tmp_path, command):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    data = ["--data-dir", str(tmp_path / "data"), "--port", str(free_port())]
    args = {
        "worker": ["worker", address],
        "server": ["server", "--scheduler", address, *data],
        "up": ["up", "--scheduler", address, "--auth-file", str(tmp_path / "a.auth"), *data],
    }[command]
    out, took = _dask_kotta(args, tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and took < EXIT_BOUND_S, (took, out.stderr[-2000:])
    assert len(lines) == 1 and address in lines[0] and "cannot reach" in lines[0], out.stderr
    assert "Kotta API" not in out.stdout, "no banner: it never served"


def test_a_second_up_on_a_served_data_dir_says_so_in_one_line(service, tmp_path):
    out, _ = _dask_kotta(["up", "--data-dir", str(service.data_dir), "--port", str(free_port()),
                          "--auth-file", str(tmp_path / "a.auth")], tmp_path)  # fmt: skip
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and service.url in lines[0], out.stderr
    assert "Kotta API" not in out.stdout


def test_ctrl_c_stops_up_promptly_with_a_job_running_and_a_client_waiting(tmp_path):
    # A short lease: the next start takes the job back once it expires (20 s by default).
    svc = Service(tmp_path / "svc", workers=1, extra=["--lease", "4"]).start()
    try:
        assert "Kotta API" in svc.log()
        konn = svc.konn()
        job = KottaJob(jobtype="script", script="sleep 120", walltime=5)
        job.submit(konn)
        wait_for(lambda: job.status(konn) == "processing", 60, "the job to run")
        waiting = threading.Thread(
            target=lambda: requests.get(
                f"{svc.url}/api/v1/jobs/{job.job_id}?wait=30",
                headers={"Authorization": f"Bearer {konn._token}"},
                timeout=60,
            ),  # fmt: skip
            daemon=True,
        )
        waiting.start()
        time.sleep(0.5)  # the long poll is in the server
        t0 = time.monotonic()
        os.killpg(svc.proc.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        svc.proc.proc.wait(30)
        took = time.monotonic() - t0
        assert took < 5, f"up took {took:.1f} s to stop"
        assert svc.proc.proc.returncode == 0 and "stopped." in svc.log()
        assert "Traceback" not in svc.log()
        # As after any stop: the job was left running, its worker gone; the next start
        # takes it back and runs it again.
        svc.start()
        konn = svc.konn()
        again = wait_for(lambda: (j := konn.job(job.job_id))["attempt"] == 2 and j, 60,
                         "the job to run again")  # fmt: skip
        assert again["requeues"] == 1 and again["status"] != "failed"
    finally:
        svc.stop()
