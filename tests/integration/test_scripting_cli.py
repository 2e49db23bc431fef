"""The command line for scripts: --json, ls -q, paging, filters, HH:MM:SS walltimes and
script arguments (issue 15), against the session's real service."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from kotta_testing import run_script, wait_for

from kotta import KottaJob


def _cli(service, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # --auth-file first: what follows `--` goes to the script.
    return subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", args[0], "--auth-file", str(service.auth_file),
         *args[1:]],
        capture_output=True, text=True, check=check, timeout=180, cwd=service.base,
    )  # fmt: skip


def test_arguments_after_dashes_reach_the_script_and_json_is_one_document(service, tmp_path):
    script = tmp_path / "args.sh"
    script.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    out = _cli(service, "submit", str(script), "-w", "01:30:00", "--json", "--wait",
               "--", "a b", "-x", "--json")  # fmt: skip
    job = json.loads(out.stdout)
    assert job["status"] == "completed" and job["walltime_min"] == 90
    assert job["args"] == ["a b", "-x", "--json"]
    logs = _cli(service, "logs", job["id"])
    assert logs.stdout == "[a b]\n[-x]\n[--json]\n"
    status = json.loads(_cli(service, "status", job["id"], "--json").stdout)
    assert status["id"] == job["id"] and status["elapsed"] >= 0


def test_executable_gets_the_arguments_too_and_mm_ss_walltimes(service, tmp_path):
    script = tmp_path / "count.sh"
    script.write_text('echo "$# args: $*"\n')
    out = _cli(service, "submit", str(script), "-w", "2:30", "-e", "/bin/sh count.sh",
               "--json", "--wait", "--", "1", "2")  # fmt: skip
    job = json.loads(out.stdout)
    assert job["walltime_min"] == 2.5
    assert _cli(service, "logs", job["id"]).stdout == "2 args: 1 2\n"


@pytest.mark.parametrize("walltime", ["1:75", "abc", "0", "1:2:3:4"])
def test_a_bad_walltime_is_refused_before_anything_is_sent(service, tmp_path, walltime):
    script = tmp_path / "x.sh"
    script.write_text("true\n")
    out = _cli(service, "submit", str(script), "-w", walltime, check=False)
    assert out.returncode == 2 and "walltime" in out.stderr and "Traceback" not in out.stderr


def test_python_client_takes_args_and_hh_mm_ss(konn):
    job = run_script(konn, script='printf "%s|" "$@"', args=["one", "two words"],
                     walltime="00:01:00")  # fmt: skip
    assert job.status(konn) == "completed" and job.info["walltime_min"] == 1
    assert {o.file: o.read() for o in job.outputs}["STDOUT.txt"] == "one|two words|"
    with pytest.raises(Exception, match="args must be a list of strings"):
        KottaJob(script="true", args="a b").submit(konn)
    too_many = KottaJob(script="true", args=["x"] * 1001)
    with pytest.raises(Exception, match="over the limit of 1000"):
        too_many.submit(konn)


def test_the_server_checks_args_itself(konn):
    spec = {"jobtype": "script", "script": "true", "args": ["ok", 3]}
    r = konn.session.post(konn.url + "/api/v1/jobs", files={"specs": (None, json.dumps([spec]))})
    assert r.status_code == 400 and "args must be a list of strings" in r.json()["detail"]


def test_ls_pages_filters_json_and_ids(service, konn, tmp_path):
    name = f"ls-{uuid.uuid4().hex[:8]}"
    jobs = [KottaJob(jobtype="script", script="true", jobname=name, walltime=1)
            for _ in range(5)]  # fmt: skip
    konn.submit_many(jobs)
    ids = [j.job_id for j in jobs][::-1]  # newest first
    first = _cli(service, "ls", "--name", name, "-n", "2", "-q")
    assert first.stdout.split() == ids[:2]
    hint = first.stderr.strip()
    assert hint.startswith("more: dask-kotta ls --before ")
    cursor = hint.split()[-1]
    second = json.loads(_cli(service, "ls", "--name", name, "-n", "2", "--before", cursor,
                              "--json").stdout)  # fmt: skip
    assert [j["id"] for j in second["jobs"]] == ids[2:4] and second["next"]
    every = _cli(service, "ls", "--name", name, "-n", "2", "--all", "-q")
    assert every.stdout.split() == ids and every.stderr == ""

    slow = KottaJob(jobtype="script", script="sleep 60", jobname=name, walltime=2)
    slow.submit(konn)
    wait_for(lambda: slow.status(konn) == "processing", 60, "the slow job to run")
    running = _cli(service, "ls", "--name", name, "--status", "running", "-q").stdout.split()
    assert running == [slow.job_id]
    table = _cli(service, "ls", "--name", name, "--status", "running,completed").stdout
    assert slow.job_id in table and "0:0" in table, "a running job shows its elapsed time"
    slow.cancel(konn)
    both = _cli(service, "ls", "--name", name, "--status", "cancelled,completed", "--all", "-q")
    assert set(both.stdout.split()) == {slow.job_id, *ids}
    bad = _cli(service, "ls", "--status", "runing", check=False)
    assert bad.returncode == 1 and "unknown status 'runing'" in bad.stderr
