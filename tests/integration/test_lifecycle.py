"""How jobs end: walltime kills the whole process tree, every end is terminal with a reason."""

from __future__ import annotations

import os
import uuid

from kotta_testing import processes_with_arg, wait_for

from kotta import KottaJob


def _marker() -> str:
    return str(uuid.uuid4().int)[:12]


def test_walltime_kills_grandchildren(konn):
    marker = _marker()
    script = f"""#!/bin/bash
( sleep 300.{marker} & wait ) &
sleep 301.{marker}
"""
    job = KottaJob(script=script, walltime=0.03)  # 1.8 s
    job.submit(konn)
    wait_for(lambda: len(processes_with_arg(marker)) == 2, 60, "the grandchild to start")
    assert job.wait(konn, maxwait=60)
    assert job.status(konn) == "failed" and job.reason.startswith(
        "walltime exceeded: killed after its walltime of"
    )
    wait_for(lambda: processes_with_arg(marker) == [], 5, "the grandchild to be gone")


def test_escaped_session_is_killed_too(konn):
    """A descendant that left the job's process group (setsid) is killed with the job."""
    marker = _marker()
    job = KottaJob(script=f"setsid sleep 300.{marker} & sleep 301.{marker}", walltime=0.03)
    job.submit(konn)
    wait_for(lambda: len(processes_with_arg(marker)) == 2, 60, "the escaped process to start")
    job.wait(konn, maxwait=60)
    assert job.reason.startswith("walltime exceeded: killed after its walltime of")
    wait_for(lambda: processes_with_arg(marker) == [], 5, "the escaped process to be gone")


def test_background_leftovers_are_cleaned_after_success(konn):
    marker = _marker()
    job = KottaJob(script=f"sleep 300.{marker} & echo done", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "completed"
    wait_for(lambda: processes_with_arg(marker) == [], 5, "the background process to be gone")


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


def test_retries_rerun_a_failing_job(konn, service):
    counter = service.shared / f"count-{_marker()}"  # mounted into the job's view
    counter.write_text("")
    counter.chmod(0o666)
    script = f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"
    job = KottaJob(script=script, walltime=0.5, retries=2)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "completed"
    assert job.info["failures"] == 2
    statuses = [e["status"] for e in konn.events(job.job_id)]
    assert statuses.count("pending") == 3 and statuses[-1] == "completed"
