"""One job attempt, start to end: claim -> stage_inputs -> run_child -> stage_outputs -> report.

``run_job`` is the function the server submits to dask.distributed, one task
per attempt (``DASK_KOTTA_DISPATCH=tasks``); a slot (``slots.py``) claims
jobs in batches and runs each through :func:`run_claimed` too. The steps are
the same for both; each time they tell the server something about the job
(keep its lease, fetch its payload, report a phase, send an output or the
result, report the end) they call the :class:`~.reporting.Reporting` they
were given, which decides when and how that reaches the server:
:class:`~.reporting.Direct` for a task, ``SlotReporting`` for a slot's job.

The outcome of a job (its exit code, the python child's ``outcome.json``,
a walltime or memory kill, a lost lease) becomes one end report. A failure
of the runner itself is reported as one too; only a lost job (cancelled or
requeued meanwhile) ends without a report, since it is no longer ours.
:func:`run_job` returns a short word for the dask dashboard.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from .. import defaults as d
from ..claim import Claim
from ..errors import ContainmentError, UnsafePathError
from ..paths import resolve_inside
from ..transfer.common import StagingError
from . import envs, isolation, outbox
from .api import LostJob, RunnerAPI
from .forkserver import run_forked
from .jobfiles import job_file, read_job_file
from .process import run_process
from .reporting import Direct, Lease, OutputChannel, Reporting
from .stage_in import stage_inputs
from .stage_out import stage_destinations, stage_outputs
from .workdirs import Workdir


def _command(job: Claim, workdir: Path, private: Path) -> list[str]:
    if job["jobtype"] == "python":
        return [sys.executable, "-m", "dask_kotta.runner.child", str(private)]
    script = job.get("script")
    if script:
        path = resolve_inside(workdir, job["script_name"], "script_name")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        path.chmod(0o755)
    args = list(job.get("args") or [])
    if job.get("executable"):
        return [*shlex.split(job["executable"]), *args]
    if script.startswith("#!"):
        return [f"./{job['script_name']}", *args]
    return ["/bin/sh", job["script_name"], *args]


def _contained(job: Claim) -> bool:
    """Whether ``job`` runs in a sandbox here; raises if it must and cannot."""
    why = isolation.available()
    if why is None:
        return True
    if job.get("contain", "required") == "required":
        raise ContainmentError(
            f"this worker cannot contain jobs ({why}); the operator must make containment "
            "work here, or start the server with --allow-uncontained"
        )
    return False


def _run_child(
    job: Claim,
    lease: Lease,
    workdir: Path,
    private: Path,
    command: list[str],
    pyenv: envs.Environment | None = None,
):
    stdout = resolve_inside(workdir, job["stdout"], "output_file_stdout")
    stderr = resolve_inside(workdir, job["stderr"], "output_file_stderr")
    for p in (stdout, stderr):
        p.parent.mkdir(parents=True, exist_ok=True)
    python = job["jobtype"] == "python"
    env = isolation.job_env(job, workdir)
    if python:
        env["KOTTA_CLIENT_VERSIONS"] = json.dumps(job.get("client") or {})
    limits = dict(
        walltime_s=job["walltime_s"],
        memory_bytes=job["memory_bytes"],
        stop_reason=lambda: lease.lost,
    )
    if pyenv is not None:
        env = pyenv.child_env(env)
        if python:
            command = pyenv.child_command(private)
    files = (str(workdir), str(stdout), str(stderr), env)
    with contextlib.ExitStack() as held:
        box = None
        if _contained(job):
            box = held.enter_context(isolation.Box(job, workdir, private))
            box.hand_over()
            limits["memory_bytes"] = box.watched_memory()
        if python and pyenv is None:
            # The fast path: a fork of the warm template instead of a fresh interpreter.
            outcome = run_forked(str(private), *files, **limits, sandbox=box and box.spec())
        elif box is not None:
            # Forked from the template too (single-threaded: safe to unshare), then exec'd.
            outcome = run_forked(str(private), *files, **limits, argv=command, sandbox=box.spec())
        else:
            outcome = None
        if outcome is None:
            if box is not None:
                command = box.launcher(command)
            outcome = run_process(
                command, cwd=str(workdir), stdout_path=str(stdout), stderr_path=str(stderr),
                env=env, **limits,
            )  # fmt: skip
        if box is not None:
            box.ended(outcome)
    return outcome


def run_job(server_url: str, job_id: str, attempt: int, token: str) -> str:
    """Run one attempt of a Kotta job, as its own dask task; see the module docstring."""
    outbox.start()  # ends a dead worker process of this host left on disk go out first
    api = RunnerAPI(server_url, job_id, attempt, token)
    try:
        job = api.claim()
    except LostJob:
        api.close()
        return "not claimed"
    return run_claimed(job, Direct(api, job))


def run_claimed(job: Claim, reporting: Reporting) -> str:
    """Run a claimed ``job`` (by ``run_job`` or by a slot), telling the server through
    ``reporting``; closes it at the end."""
    job_id, attempt = job["id"], job["attempt"]
    lease = reporting.keep_lease(job["heartbeat_s"])
    made = Workdir(job_id, attempt)
    workdir = made.path
    private = workdir / ".kotta"
    private.mkdir()
    timings: dict[str, float | None] = {}
    try:
        with contextlib.ExitStack() as held:
            return _run(reporting, job, lease, workdir, private, timings, held)
    except LostJob:
        return "lost"
    except Exception as e:
        try:
            reporting.report_end(
                ok=False, reason=f"runner error: {type(e).__name__}: {e}", traceback=traceback.format_exc(),
                timings=timings, outputs=[], has_result=False,
            )  # fmt: skip
        except Exception:
            pass
        return "runner error"
    finally:
        lease.stop()
        made.remove()
        reporting.close()


def _start_failure(workdir: Path, job: Claim) -> str | None:
    """Why the child never started its command, from the line it left on STDERR (exit 126/127).

    Lines starting with ``kotta: `` come from the sandbox and the template; the
    job can only fake one about itself.
    """
    f = job_file(workdir, job["stderr"])
    if f is None:
        return None
    with f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
        lines = f.read().decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    return last.removeprefix("kotta: ") if last.startswith("kotta: ") else None


def _stage_deps(api: RunnerAPI, deps: list[str], private: Path) -> None:
    """Download the results of the jobs this one depends on into ``.kotta/deps/<job_id>.pkl``."""
    if not deps:
        return
    (private / "deps").mkdir(exist_ok=True)
    for dep in deps:
        try:
            with open(resolve_inside(private / "deps", f"{dep}.pkl", "dependency"), "wb") as f:
                api.download_dep(dep, f)
        except LostJob:
            raise
        except Exception as e:  # 403/404 from the server, or the store behind it
            detail = getattr(getattr(e, "response", None), "text", "") or str(e)
            raise StagingError(f"dependency job {dep}: {detail[:500]}") from None


def _run(
    reporting: Reporting,
    job: Claim,
    lease: Lease,
    workdir: Path,
    private: Path,
    timings: dict,
    held: contextlib.ExitStack,
) -> str:
    api = reporting.api
    # stage_inputs (the claim already moved the job to staging_inputs)
    t0 = time.monotonic()
    try:
        if job["has_payload"]:
            with open(private / "payload.pkl", "wb") as f:
                reporting.fetch_payload(f)
        _stage_deps(api, job.get("deps") or [], private)
        stage_inputs(job.get("input_plan") or job["inputs"], workdir, api.dispatch_headers)
    except (StagingError, UnsafePathError) as e:
        timings["stage_in"] = time.monotonic() - t0
        reporting.report_end(ok=False, reason=str(e), timings=timings, outputs=[], has_result=False)
        return "failed"
    # prepare_env: the job's own environment, if it names requirements (part of staging in)
    pyenv = None
    if envs.normalise(job.get("requirements")):
        for name in (job["stdout"], job["stderr"]):
            p = resolve_inside(workdir, name, "output")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        try:
            pyenv = held.enter_context(
                envs.cache().use(
                    job["requirements"],
                    resolve_inside(workdir, job["stderr"], "output_file_stderr"),
                    timeout_s=job["walltime_s"],
                    stop_reason=lambda: lease.lost,
                )
            )
        except envs.EnvironmentBuildError as e:
            if lease.lost:
                raise LostJob(lease.lost) from None
            timings["stage_in"] = time.monotonic() - t0
            # STDERR holds the build's log
            outputs, _ = stage_outputs(OutputChannel(reporting), job, workdir)
            reporting.report_end(
                ok=False, reason=str(e), timings=timings, outputs=outputs, has_result=False
            )
            return "failed"
    timings["stage_in"] = time.monotonic() - t0

    # run_child
    reporting.report_phase(d.PROCESSING)
    command = _command(job, workdir, private)
    live = reporting.follow_logs(workdir, job)
    try:
        outcome = _run_child(job, lease, workdir, private, command, pyenv)
    except (OSError, ContainmentError) as e:
        timings["run"] = 0.0
        reason = (
            str(e)
            if isinstance(e, ContainmentError)
            else (f"cannot start {command[0]!r}: {e.strerror or e}")
        )
        reporting.report_end(ok=False, reason=reason, timings=timings, outputs=[], has_result=False)
        return "failed"
    finally:
        live.stop()  # the outputs carry the streams from here
    timings["run"] = outcome.seconds
    if lease.lost:
        # Cancelled (or requeued): no outputs will be staged, so what the job printed is
        # kept only if its live log gets the rest now.
        live.finish()
        raise LostJob(lease.lost)

    # stage_outputs
    reporting.report_phase(d.STAGING_OUTPUTS)
    t2 = time.monotonic()
    reason, tb, has_result = "", "", False
    if outcome.killed:
        reason = outcome.killed
    elif outcome.returncode in (126, 127) and (why := _start_failure(workdir, job)):
        reason = why  # the sandbox could not be entered, or the command not started
    elif job["jobtype"] == "python":
        try:
            result = json.loads(read_job_file(workdir, ".kotta/outcome.json"))
        except (OSError, ValueError):
            result = {
                "ok": False,
                "type": "",
                "message": f"the child exited with code {outcome.returncode} and no result",
            }
        if not result["ok"]:
            reason = f"{result.get('type')}: {result.get('message')}".strip(": ")
            tb = result.get("traceback", "")
        result_file = job_file(workdir, ".kotta/result.pkl")
        if result_file is not None:
            with result_file as f:
                reporting.send_result(f)
            has_result = True
    elif outcome.returncode != 0:
        reason = f"script exited with code {outcome.returncode}"
    if not reason and job.get("destinations"):
        # Only a job that succeeded writes to its destinations: a failed partition's file
        # must not land in the user's bucket as if it were a result.
        reason = stage_destinations(reporting.api, job, workdir) or ""
    outputs, problem = stage_outputs(OutputChannel(reporting), job, workdir)
    if problem and not reason:
        reason = problem
    timings["stage_out"] = time.monotonic() - t2

    # report
    return reporting.report_end(
        ok=not reason,
        reason=reason,
        traceback=tb,
        timings=timings,
        outputs=outputs,
        has_result=has_result,
        requeue=outcome.lost,
    )
