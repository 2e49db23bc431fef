"""How jobs end: walltime kills the whole process tree, every end is terminal with a reason."""

from __future__ import annotations

import os
import time

import psutil

from kotta import KottaJob


def test_walltime_kills_grandchildren(konn, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = f"""#!/bin/bash
( sleep 300 & echo $! > {pidfile}; wait ) &
sleep 300
"""
    job = KottaJob(script=script, walltime=0.03)  # 1.8 s
    job.submit(konn)
    assert job.wait(konn, maxwait=60)
    assert job.status(konn) == "failed" and job.reason == "walltime exceeded"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and psutil.pid_exists(pid):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert not alive, f"grandchild {pid} outlived the walltime"


def test_escaped_session_is_killed_too(konn, tmp_path):
    """A descendant that left the job's process group (setsid) is still found and killed."""
    pidfile = tmp_path / "escaped.pid"
    script = f"setsid sleep 300 & echo $! > {pidfile}; sleep 300"
    job = KottaJob(script=script, walltime=0.03)
    job.submit(konn)
    job.wait(konn, maxwait=60)
    assert job.reason == "walltime exceeded"
    pid = int(pidfile.read_text())
    time.sleep(0.5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_background_leftovers_are_cleaned_after_success(konn, tmp_path):
    pidfile = tmp_path / "bg.pid"
    job = KottaJob(script=f"sleep 300 & echo $! > {pidfile}; echo done", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "completed"
    pid = int(pidfile.read_text())
    time.sleep(0.3)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_job_files_stay_in_their_working_directory(konn):
    job = KottaJob(script="pwd; echo $KOTTA_JOB_ID; ls -a", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    out = job.outputs[0].read().splitlines()
    assert out[1] == job.job_id
    assert os.path.basename(out[0]).startswith(job.job_id)


def test_unknown_executable_fails_with_reason(konn):
    job = KottaJob(executable="/no/such/binary --flag", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "failed"
    assert job.reason.startswith("cannot start '/no/such/binary'")


def test_retries_rerun_a_failing_job(konn, tmp_path):
    counter = tmp_path / "count"
    counter.write_text("")
    script = f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"
    job = KottaJob(script=script, walltime=0.5, retries=2)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "completed"
    assert job.info["failures"] == 2
    statuses = [e["status"] for e in konn.events(job.job_id)]
    assert statuses.count("pending") == 3 and statuses[-1] == "completed"
