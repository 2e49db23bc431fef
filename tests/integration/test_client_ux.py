"""What a user sees of many jobs, of a failure and of Ctrl-C, on the session's real service.

Remote tracebacks name the user's file and show its source line, with the type
once; a kill at a limit names the limit and the queue that allows more;
``as_completed`` yields in end order; ``gather`` fails fast and cancels the rest
when asked; its progress stays quiet off a terminal and draws a bar on one;
credentials are found in one documented order; Ctrl-C in a blocking call
cancels the jobs it waited for and says so in one line.
"""

from __future__ import annotations

import os
import pty
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import cloudpickle
import pytest
from kotta_testing import own_name

from dask_kotta import defaults as d
from dask_kotta.errors import ConfigError, JobFailedError, NotFoundError, RemoteError
from kotta import Kotta
from kotta.kotta_functions import *  # noqa: F403

# This module's functions travel by value: workers cannot import a test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def nap(seconds: float, fail: bool = False) -> float:
    import time

    time.sleep(seconds)
    if fail:
        raise ValueError(f"failed after {seconds} s")
    return seconds


def lookup(table):
    value = table["missing_key"]  # the line the remote traceback must show
    return value


def test_remote_traceback_shows_the_users_file_and_line_and_the_type_once(konn):
    @kottajob(konn, "Test", 1)
    def fails():
        return lookup({})

    with pytest.raises(KeyError) as info:
        fails()
    err = info.value
    assert isinstance(err, RemoteError)
    shown = "".join(traceback.format_exception(err))
    # The user's file and its lines, from the client's copy (the worker cannot read it).
    assert f'File "{__file__}", line' in shown and "in lookup" in shown
    assert 'value = table["missing_key"]  # the line the remote traceback must show' in shown
    assert "return lookup({})" in shown
    assert "<dynamic-code>" not in shown
    # No frame of ours first: the remote part starts at the user's function.
    remote = shown[shown.index("Remote traceback") :]
    assert "runner/child.py" not in remote
    assert remote.splitlines()[2].strip().startswith(f'File "{__file__}"'), remote
    # The type once: not "KeyError: KeyError: 'missing_key'".
    assert shown.count("KeyError") == 1, shown
    assert "KeyError: 'missing_key'" in shown
    # The whole remote traceback stays on the error, and the job's record has no frame of ours.
    assert err.remote_traceback.rstrip().endswith("KeyError: 'missing_key'")
    assert "runner/child.py" not in konn.job(err.job_id)["traceback"]


def test_a_walltime_kill_names_the_limit_and_what_allows_more(konn):
    @kottajob(konn, "Tiny", 0.02, block=False)  # 1.2 s of Tiny's 10 min
    def sleeper():
        import time

        time.sleep(30)

    job = sleeper()
    assert job.wait(konn, maxwait=60)
    assert job.status(konn) == "failed"
    assert job.reason == (
        "walltime exceeded: killed after its walltime of 0.02 min (1.2 s); "
        "queue Tiny allows up to 10 min: resubmit with a longer walltime"
    )
    with pytest.raises(JobFailedError, match="queue Tiny allows up to 10 min"):
        job.get_results(konn)


def test_a_memory_kill_names_the_limit_and_the_queue_that_allows_more(konn):
    @kottajob(konn, "Tiny", 1, block=False)
    def hog():
        import time

        blocks = [bytearray(50 * 1024 * 1024) for _ in range(20)]  # 1 GB, over Tiny's 300 MiB
        time.sleep(5)
        return len(blocks)

    job = hog()
    assert job.wait(konn, maxwait=60)
    assert job.status(konn) == "failed"
    assert job.reason.startswith("memory limit exceeded: killed above queue Tiny's memory limit")
    assert "300.00 MiB; queue Prod allows 8.00 GiB: resubmit with queue='Prod'" in job.reason


def test_as_completed_yields_jobs_in_the_order_they_end(konn):
    jobs = konn.submit_many([(nap, (s,)) for s in (4, 0.1, 2)], queue="Test", walltime=1)
    seen = [(job.id, job.get_results(konn)) for job in konn.as_completed(jobs, timeout=120)]
    assert seen == [(jobs[1].id, 0.1), (jobs[2].id, 2), (jobs[0].id, 4)]
    # Jobs that had ended already come first, in the order given.
    again = [job.id for job in konn.as_completed([jobs[0], jobs[1]])]
    assert again == [jobs[0].id, jobs[1].id]


def test_a_wait_for_ended_jobs_only_answers_those_that_ended(konn, other_user):
    jobs = konn.submit_many([(nap, (0,)), (nap, (120,))], queue="Test", walltime=5)
    try:
        konn.gather(jobs[:1])
        ids = [j.id for j in jobs]
        body = {"ids": ids, "timeout": 0.5, "ended_only": True, "results": True}
        r = konn.request("POST", "/api/v1/jobs/wait", json=body).json()
        assert [j["id"] for j in r["jobs"]] == [ids[0]] and list(r["results"]) == [ids[0]]
        # Without it, every job's record, as before.
        r = konn.request("POST", "/api/v1/jobs/wait", json={**body, "ended_only": False}).json()
        assert [j["id"] for j in r["jobs"]] == ids
        # Another user's job is not found, ended or not.
        mallory = Kotta(other_user)
        with pytest.raises(NotFoundError):
            mallory.request("POST", "/api/v1/jobs/wait", json={**body, "ids": ids[:1]})
    finally:
        jobs[1].cancel(konn)


def test_gather_raises_at_the_first_failure_and_cancels_the_rest_when_asked(konn):
    calls = [(nap, (120,)), (nap, (120,)), (nap, (0.5, True))]
    jobs = konn.submit_many(calls, queue="Test", walltime=5)
    start = time.monotonic()
    with pytest.raises(ValueError, match="failed after 0.5 s") as info:
        konn.gather(jobs, on_error="cancel")
    assert time.monotonic() - start < 60  # not after the slow jobs' 120 s
    assert info.value.job_id == jobs[2].id
    assert "gather cancelled the 2 other job(s) still running" in info.value.__notes__
    assert [j.status(konn) for j in jobs] == ["cancelled", "cancelled", "failed"]


def test_gather_raises_at_the_first_failure_and_leaves_the_rest_running(konn):
    jobs = konn.submit_many([(nap, (120,)), (nap, (0.5, True))], queue="Test", walltime=5)
    try:
        with pytest.raises(ValueError, match="failed after 0.5 s"):
            konn.gather(jobs)  # on_error='leave' is the default
        assert jobs[0].status(konn) not in d.TERMINAL_STATUSES
    finally:
        jobs[0].cancel(konn)
    # errors='return' still waits for all and returns each outcome in its place.
    jobs = konn.submit_many([(nap, (0.1,)), (nap, (0.2, True))], queue="Test", walltime=1)
    ok, failed = konn.gather(jobs, errors="return")
    assert ok == 0.1 and isinstance(failed, ValueError)


def slow_or_failing(i):
    import time

    if i == 0:
        time.sleep(120)
    if i == 3:
        raise KeyError(f"call {i}")
    return i


def test_gather_of_map_futures_fails_fast_at_a_call_that_raised(konn):
    # Chunks of 2 calls: the job of calls 0-1 runs for 2 minutes; call 3 raises in a job
    # that completes at once.
    futures = konn.map(slow_or_failing, range(6), queue="Test", walltime=5, chunksize=2)
    start = time.monotonic()
    with pytest.raises(KeyError, match="call 3"):
        konn.gather(futures, on_error="cancel")
    assert time.monotonic() - start < 60
    assert futures[0].status() == "cancelled"
    list(konn.as_completed(futures[2:]))
    assert futures[2].result() == 2  # its job's other call raised: this one keeps its value
    for i in (4, 5):
        # Their job ended at once, unless call 3's failure came first and it was cancelled.
        assert futures[i].status() == "cancelled" or futures[i].result() == i


def test_a_map_calls_traceback_shows_the_users_line_too(konn):
    (future,) = konn.map(lookup, [{}], queue="Test", walltime=1)
    err = future.exception()
    assert isinstance(err, KeyError) and isinstance(err, RemoteError)
    shown = "".join(traceback.format_exception(err))
    assert 'value = table["missing_key"]  # the line the remote traceback must show' in shown
    assert "dask_kotta/calls.py" not in shown[shown.index("Remote traceback") :]
    assert shown.count("KeyError") == 1, shown


def test_gather_keeps_the_spec_call_and_checks_its_options(konn):
    jobs = konn.submit_many([(nap, (0,)) for _ in range(3)], queue="Test", walltime=1)
    assert konn.gather(jobs, 60, "raise") == [0, 0, 0]
    with pytest.raises(ValueError, match="on_error='stop': expected one of 'leave', 'cancel'"):
        konn.gather(jobs, on_error="stop")
    with pytest.raises(ValueError, match="errors='ignore'"):
        konn.gather(jobs, errors="ignore")


def _script(service, body: str) -> str:
    return textwrap.dedent(
        f"""
        import sys
        from kotta import Kotta
        from kotta.kotta_functions import *

        konn = Kotta({str(service.auth_file)!r})

        def nap(seconds, fail=False):
            import time
            time.sleep(seconds)
            if fail:
                raise ValueError("failed")
            return seconds
        """
    ) + textwrap.dedent(body)


def test_progress_off_a_terminal_prints_a_line_not_a_bar(service, tmp_path):
    script = tmp_path / "many.py"
    script.write_text(_script(service, """
        jobs = konn.submit_many([(nap, (0.05 * i,)) for i in range(20)], queue="Test", walltime=1)
        print(sum(konn.gather(jobs, progress=True)))
        """))  # fmt: skip
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "9.5"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr  # one line at the end (one per 30 s while waiting)
    assert lines[0].startswith("kotta: 20/20 jobs ended, 0 failed (")
    assert "\r" not in r.stderr and "\x1b" not in r.stderr


def test_progress_on_a_terminal_draws_a_bar(service, tmp_path):
    script = tmp_path / "bar.py"
    script.write_text(_script(service, """
        jobs = konn.submit_many([(nap, (0.1,)) for i in range(5)], queue="Test", walltime=1)
        konn.gather(jobs, progress=True)
        """))  # fmt: skip
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=follower)  # fmt: skip
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end closed: the script exited
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=120) == 0, seen
    finally:
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "kotta jobs" in text and "5/5" in text and "0 failed" in text, text


def _interrupt(script: Path, marker: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``script`` until it prints ``marker`` and its job ids, then send it SIGINT."""
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith(marker), (line, proc.stderr.read() if proc.poll() is not None else "")
    ids = line.split()[1:]
    time.sleep(1)  # inside the blocking call by now
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        state = _what_it_is_doing(proc.pid)
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"the script did not end within 60 s of SIGINT:\n{state}\nstderr:\n{err}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), ids


def _what_it_is_doing(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # it ended after all
        return "(the script ended while it was being looked at)"
    lines = [line for line in status if line.startswith(("State", "Sig", "Shd"))]
    spy = shutil.which("py-spy")
    if spy:
        dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True)
        lines.append(dump.stdout + dump.stderr)
    return "\n".join(lines)


def test_ctrl_c_in_a_blocking_call_cancels_its_job_and_says_so_in_one_line(service, konn, tmp_path):
    script = tmp_path / "blocking.py"
    script.write_text(_script(service, """
        @kottajob(konn, "Test", 5, block=False)
        def slow():
            import time
            time.sleep(120)

        job = slow()
        print("submitted", job.id, flush=True)
        job.get_results(konn)  # as a blocking @kottajob call does
        """))  # fmt: skip
    r, (job_id,) = _interrupt(script, "submitted")
    assert r.returncode == -signal.SIGINT, r.stderr  # it stops as Ctrl-C stops a script
    assert r.stderr == f"kotta: interrupted; cancelled job {job_id}\n"
    assert konn.job(job_id)["status"] == "cancelled"


def test_ctrl_c_in_gather_cancels_every_job_it_waited_for(service, konn, tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(_script(service, """
        jobs = konn.submit_many([(nap, (0,)), (nap, (120,)), (nap, (120,))], queue="Test", walltime=5)
        konn.gather(jobs[:1])
        print("submitted", *[j.id for j in jobs], flush=True)
        konn.gather(jobs, progress=True)
        """))  # fmt: skip
    r, ids = _interrupt(script, "submitted")
    assert r.returncode == -signal.SIGINT, r.stderr
    lines = r.stderr.splitlines()
    assert lines[-1] == f"kotta: interrupted; cancelled 2 jobs {ids[1]}, {ids[2]}", r.stderr
    assert len(lines) <= 2, r.stderr  # and the progress line, off a terminal
    assert [konn.job(i)["status"] for i in ids] == ["completed", "cancelled", "cancelled"]


def test_credentials_are_found_in_the_documented_order(service, other_user, tmp_path, monkeypatch):
    home, xdg, work = tmp_path / "home", tmp_path / "xdg", tmp_path / "work"
    for p in (home, xdg, work):
        p.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("KOTTA_AUTH_FILE", raising=False)
    me, mallory = service.creds(), other_user.read_text()

    with pytest.raises(ConfigError) as info:
        Kotta()
    for place in (work / "auth.file", home / ".config/dask-kotta/auth.json"):
        assert str(place) in str(info.value)

    # The user's config directory, under HOME, or XDG_CONFIG_HOME when set.
    (home / ".config/dask-kotta").mkdir(parents=True)
    (home / ".config/dask-kotta/auth.json").write_text(mallory)
    assert Kotta().user["name"] == own_name("mallory")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    with pytest.raises(ConfigError, match=str(xdg / "dask-kotta/auth.json")):
        Kotta()
    (xdg / "dask-kotta").mkdir()
    (xdg / "dask-kotta/auth.json").write_text(mallory)
    assert Kotta().user["name"] == own_name("mallory")

    # ./auth.file before the config directory; KOTTA_AUTH_FILE before both.
    (work / "auth.file").write_text(me)
    assert Kotta().user["name"] == service.user
    monkeypatch.setenv("KOTTA_AUTH_FILE", str(other_user))
    assert Kotta().user["name"] == own_name("mallory")
    monkeypatch.setenv("KOTTA_AUTH_FILE", str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match=f"KOTTA_AUTH_FILE names {tmp_path / 'nope.json'}, "):
        Kotta()

    # A path as well as the JSON text; a file that is not JSON is named.
    assert Kotta(str(other_user)).user["name"] == own_name("mallory")
    assert Kotta(other_user).user["name"] == own_name("mallory")
    (work / "bad.json").write_text("url=http://x")
    with pytest.raises(ConfigError, match=f"credentials file {work / 'bad.json'} are not valid"):
        Kotta("bad.json")
    with pytest.raises(ConfigError, match="no credentials file .*/nothere/auth.file; Kotta"):
        Kotta("nothere/auth.file")


def test_the_cli_finds_credentials_as_kotta_does(service, other_user, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KOTTA_AUTH_FILE", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path)

    def ls(**extra):
        return subprocess.run([sys.executable, "-m", "dask_kotta.cli", "ls"], cwd=tmp_path,
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)  # fmt: skip

    r = ls()
    assert r.returncode == 1 and "no Kotta credentials found; looked in:" in r.stderr
    assert str(tmp_path / ".config/dask-kotta/auth.json") in r.stderr
    (tmp_path / ".config/dask-kotta").mkdir(parents=True)
    (tmp_path / ".config/dask-kotta/auth.json").write_text(other_user.read_text())
    assert ls().returncode == 0
    r = subprocess.run([sys.executable, "-m", "dask_kotta.cli", "ls", "--help"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "$KOTTA_AUTH_FILE, ./auth.file, ~/.config/dask-kotta/auth.json" in " ".join(
        r.stdout.split()
    )
