"""Live logs on the real service: a running job's STDOUT/STDERR reach the user while it runs.

``GET /api/v1/jobs/{id}/logs/{stream}?offset=N``, ``Kotta.read_log``, ``dask-kotta logs
[-f]`` and ``submit --wait``; bounded, kept for a cancelled job, and only for their owner.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import requests
from kotta_testing import Service, wait_for

from dask_kotta import defaults as d
from dask_kotta.errors import NotFoundError


def submit(konn, script: str, walltime: float = 2, **kw):
    from kotta import KottaJob

    job = KottaJob(jobtype="script", script=script, script_name="job.sh", walltime=walltime, **kw)
    job.submit(konn)
    return job


class Gate:
    """A file in the service's shared mount that a job waits for: the job runs until the
    test has seen what it wanted of it, not for a sleep long enough on a loaded machine."""

    def __init__(self, shared: Path) -> None:
        self.path = shared / f"gate-{uuid.uuid4().hex}"

    @property
    def shell(self) -> str:  # gives up after 2 min: a failed test leaves no job behind
        return f"for i in $(seq 1200); do [ -e {self.path} ] && break; sleep 0.1; done\n"

    def open(self) -> None:
        self.path.touch()


def status(konn, job_id: str) -> str:
    return konn.job(job_id)["status"]


def ended(konn, job_id: str, timeout: float = 60) -> dict:
    wait_for(lambda: status(konn, job_id) in d.TERMINAL_STATUSES, timeout, f"job {job_id} ends")
    return konn.job(job_id)


def test_the_first_line_is_readable_while_the_job_runs(konn, service):
    gate = Gate(service.shared)
    job = submit(konn, f"echo first\necho err-first >&2\n{gate.shell}echo second\n")
    chunk = wait_for(
        lambda: (c := konn.read_log(job.job_id)).data and c, 30, "the first line, live"
    )
    assert status(konn, job.job_id) == d.PROCESSING, "read while the job still runs"
    assert chunk.data == b"first\n" and chunk.size == 6 and not chunk.final
    err = wait_for(lambda: (c := konn.read_log(job.job_id, "stderr")).data and c, 10, "stderr")
    assert err.data == b"err-first\n"

    # The route itself: text, where the log has reached, not final while it runs.
    url = f"{service.url}/api/v1/jobs/{job.job_id}/logs/stdout"
    r = requests.get(url, headers=konn.session.headers, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["X-Kotta-Log-Size"] == "6" and r.headers["X-Kotta-Log-Final"] == "0"
    r = requests.get(url, params={"offset": 2}, headers=konn.session.headers, timeout=10)
    assert r.content == b"rst\n"
    # From where it has reached: nothing yet; past it: nothing, and the size as it is.
    assert konn.read_log(job.job_id, offset=6).data == b""
    assert konn.read_log(job.job_id, offset=1000) == type(chunk)(b"", 6, False)

    gate.open()
    done = ended(konn, job.job_id)
    assert done["status"] == d.COMPLETED
    rest = konn.read_log(job.job_id, offset=chunk.size)
    assert rest.data == b"second\n" and rest.size == 13 and rest.final
    assert konn.read_log(job.job_id).data == b"first\nsecond\n"


def test_a_python_jobs_prints_are_live_too(konn, service):
    from kotta.kotta_functions import kottajob

    gate = Gate(service.shared)

    @kottajob(konn, "Test", 2, block=False)
    def chatty(gate):
        import os
        import time

        print("python says hi", flush=True)
        for _ in range(1200):
            if os.path.exists(gate):
                break
            time.sleep(0.1)
        return 1

    job = chatty(str(gate.path))
    wait_for(lambda: b"python says hi" in konn.read_log(job.job_id).data, 30, "live print")
    assert status(konn, job.job_id) == d.PROCESSING
    gate.open()
    assert job.get_results(konn) == 1


def test_logs_f_prints_both_streams_and_exits_with_the_job(konn, service):
    gate = Gate(service.shared)  # the job runs until `logs -f` has followed it running
    job = submit(konn, f"echo one\necho e-one >&2\n{gate.shell}echo two\nexit 3\n")
    wait_for(lambda: konn.read_log(job.job_id).data, 30, "the job's first output")

    now = service.cli("logs", job.job_id, check=True)  # while it runs: what has arrived
    assert now.stdout == "one\n" and "e-one" in now.stderr and "follow it with -f" in now.stderr
    assert status(konn, job.job_id) == d.PROCESSING

    cmd = [sys.executable, "-m", "dask_kotta.cli", "logs", "-f", job.job_id,
           "--auth-file", str(service.auth_file)]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            first: list[str] = []
            reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()))
            reader.start()
            reader.join(30)
            assert first == ["one\n"]
            assert status(konn, job.job_id) == d.PROCESSING, "followed while it ran"
            gate.open()
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert out == "two\n" and "e-one\n" in err
    assert proc.returncode == 1 and f"job {job.job_id} failed" in err, err

    ok = submit(konn, "echo hi\nsleep 1.5\necho bye\n")
    done = service.cli("logs", "-f", ok.job_id, timeout=60)
    assert done.returncode == 0 and done.stdout == "hi\nbye\n", done.stderr


def test_submit_wait_shows_the_output_or_with_quiet_only_the_end(service, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("echo live-out\necho live-err >&2\n")
    out = service.cli("submit", str(script), "--walltime", "0.5", "--wait", check=True)
    lines = out.stdout.splitlines()
    assert lines[1:] == ["live-out"] and "live-err" in out.stderr
    quiet = service.cli("submit", str(script), "--walltime", "0.5", "--wait", "--quiet", check=True)
    job_id = quiet.stdout.splitlines()[0]
    assert quiet.stdout.splitlines()[1:] == [f"job {job_id} completed"]
    assert "live" not in quiet.stderr
    script.write_text("echo partial\nexit 2\n")
    failed = service.cli("submit", str(script), "--walltime", "0.5", "--wait")
    assert failed.returncode == 1 and "partial" in failed.stdout and "failed" in failed.stderr


def test_a_cancelled_job_keeps_what_it_printed(konn, service):
    job = submit(konn, "echo before-cancel\necho err-before >&2\nsleep 60\n")
    wait_for(lambda: konn.read_log(job.job_id).data, 30, "the job's first output")
    konn.cancel_job(job.job_id)
    final = wait_for(
        lambda: (c := konn.read_log(job.job_id)).final and c, 30, "the cancelled job's log final"
    )
    assert final.data == b"before-cancel\n"
    assert konn.read_log(job.job_id, "stderr").data == b"err-before\n"
    shown = service.cli("logs", job.job_id, check=True)
    assert shown.stdout == "before-cancel\n" and "err-before" in shown.stderr


def test_a_job_printing_past_the_bound_keeps_a_bounded_log_that_says_so(konn, service):
    total = 3 * 1024 * 1024
    job = submit(konn, f"yes 0123456789abcde | head -c {total}\necho END-MARK\nsleep 60\n")
    wait_for(lambda: konn.read_log(job.job_id).size > total, 60, "the whole output, live")
    chunk = konn.read_log(job.job_id)
    bound = d.LIVE_LOG_HEAD_BYTES + d.LIVE_LOG_TAIL_BYTES
    assert bound < len(chunk.data) < bound + 1024 and chunk.size == total + len("END-MARK\n")
    assert chunk.data.startswith(b"0123456789abcde\n") and chunk.data.endswith(b"END-MARK\n")
    assert b"bytes cut here" in chunk.data
    # What the server holds of it, on its disk: the bound, not the 3 MiB printed.
    held = list(service.data_dir.rglob("live-stdout.log"))
    assert held and all(p.stat().st_size < bound + 1024 for p in held)
    konn.cancel_job(job.job_id)
    kept = wait_for(lambda: (c := konn.read_log(job.job_id)).final and c, 30, "final")
    assert b"bytes cut here" in kept.data and kept.data.endswith(b"END-MARK\n")


def test_another_users_job_log_is_not_found(konn, service, other_user):
    job = submit(konn, "echo mine\n", walltime=0.5)
    ended(konn, job.job_id)
    assert konn.read_log(job.job_id).data == b"mine\n"
    # A job over within a second sent nothing while it ran: no live log was ever stored.
    assert not [n for n in service.stored(job.job_id) if n.startswith(".kotta/live-")]
    assert "STDOUT.txt" in service.stored(job.job_id)
    mallory = service.konn(other_user)
    with pytest.raises(NotFoundError):
        mallory.read_log(job.job_id)
    with pytest.raises(NotFoundError, match="'stdout' and 'stderr'"):
        konn.request("GET", f"/api/v1/jobs/{job.job_id}/logs/other")
    r = requests.get(f"{service.url}/api/v1/jobs/{job.job_id}/logs/stdout",
                     params={"offset": -1}, headers=konn.session.headers, timeout=10)  # fmt: skip
    assert r.status_code == 422 and "offset" in r.json()["detail"]


def _last_bytes_kept(konn, shared) -> None:
    """A job printing without pause is cancelled: its log holds all it printed up to the kill
    (the runner sends what is left once the job's processes are gone)."""
    mark = shared / f"printed-{uuid.uuid4().hex}"
    job = submit(konn, f"i=0\nwhile true; do i=$((i+1)); echo line-$i >> {mark}; "
                 "echo line-$i; sleep 0.01; done\n")  # fmt: skip
    wait_for(lambda: konn.read_log(job.job_id).size > 0, 30, "the job's first output")
    konn.cancel_job(job.job_id)
    final = wait_for(lambda: (c := konn.read_log(job.job_id)).final and c, 30, "final")
    printed = mark.read_bytes()
    # The kill may fall between the job's two writes of its last line.
    assert final.data in (printed, printed[: printed.rstrip(b"\n").rfind(b"\n") + 1]), (
        f"kept {final.size} bytes of the {len(printed)} printed"
    )


def test_a_cancelled_job_keeps_its_last_bytes(konn, service):
    _last_bytes_kept(konn, service.shared)


def test_live_logs_of_a_task_dispatched_job_on_an_s3_store(tmp_path, s3_server):
    bucket = s3_server.make_bucket(f"logs-{uuid.uuid4().hex[:8]}")
    env = {"DASK_KOTTA_DISPATCH": "tasks", **s3_server.env}
    with Service(tmp_path, workers=1, env=env, extra=["--store", f"s3://{bucket}/jobs"]) as svc:
        svc.start()
        konn = svc.konn()
        gate = Gate(svc.shared)
        job = submit(konn, f"echo first\n{gate.shell}echo second\n")
        wait_for(lambda: konn.read_log(job.job_id).data == b"first\n", 30, "the first line")
        assert status(konn, job.job_id) == d.PROCESSING
        gate.open()
        assert ended(konn, job.job_id)["status"] == d.COMPLETED
        # Ended: read from the STDOUT output in S3, at the same offsets.
        assert konn.read_log(job.job_id, offset=3) == type(konn.read_log(job.job_id))(
            b"st\nsecond\n", 13, True
        )
        _last_bytes_kept(konn, svc.shared)
