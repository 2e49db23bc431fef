"""The client's commands: ``submit``, ``status``, ``logs``, ``cancel``, ``rm`` (``ls`` is in
``scripting.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import defaults as d
from .common import _auth, _dur, _kept, _konn, _when
from .group import main
from .scripting import WALLTIME, echo_json, progress


@main.command()
@_auth
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, metavar="[-- ARGS...]")
@click.option("--queue", "-q", default=d.QUEUE, show_default=True)
@click.option(
    "--walltime",
    "-w",
    type=WALLTIME,
    default="60",
    show_default=True,
    help="Minutes (fractions allowed), or HH:MM:SS or MM:SS.",
)
@click.option(
    "--inputs", "-i", default="", help="Comma-separated s3:// or http(s):// URLs to stage in."
)
@click.option("--outputs", "-o", default="", help="Comma-separated relative paths to keep.")
@click.option("--name", "-n", default=None, help="Job name. Default: the script's file name.")
@click.option(
    "--executable", "-e", default=None, help="Command line to run. Default: the script itself."
)
@click.option(
    "--keep",
    type=float,
    default=None,
    metavar="DAYS",
    help="Delete the job (record, logs, outputs) this many days after it ends; fractions "
    "allowed, 0 keeps it for ever. Default: the server's --keep.",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the job and print its STDOUT.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the job's record as JSON (with --wait: once it ended) instead of its id.")  # fmt: skip
def submit(
    auth_file, script, args, queue, walltime, inputs, outputs, name, executable, keep, wait,
    as_json,
):  # fmt: skip
    """Submit SCRIPT as a Kotta script job; prints its id.

    Arguments after `--` are passed to the script (or --executable):
    `dask-kotta submit job.sh -- a b` runs `job.sh a b`.
    """
    from ..client.job import KottaJob

    konn = _konn(auth_file)
    path = Path(script)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        # A script is sent as text (JSON): bytes that are not UTF-8 cannot go.
        raise click.ClickException(
            f"{script} is not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r}): "
            "a script is sent as text; convert it (iconv -t UTF-8), or stage binary data as an input"
        ) from None
    job = KottaJob(
        jobtype="script", jobname=name or path.name, script=text, script_name=path.name,
        executable=executable, queue=queue, walltime=walltime, inputs=inputs, outputs=outputs,
        keep_days=keep, args=list(args),
    )  # fmt: skip
    job.submit(konn)
    if not as_json:
        click.echo(job.job_id)
    if wait:
        job.wait(konn, maxwait=float("inf"))
        if not as_json:
            _print_logs(konn, job.job_id, True, True)
    if as_json:
        echo_json(konn.job(job.job_id))
    if wait and job.status(konn) != d.COMPLETED:
        raise click.ClickException(f"job {job.job_id} {job.info['status']}: {job.reason}")


@main.command()
@_auth
@click.argument("job_id")
@click.option(
    "--json", "as_json", is_flag=True, help="The job's record as JSON, as the API gives it."
)
def status(auth_file, job_id, as_json):
    """Show a job: status, reason, times, per-phase durations, elapsed time or place in
    its queue, outputs."""
    konn = _konn(auth_file)
    j = konn.job(job_id)
    if as_json:
        echo_json(j)
        return
    t = j["timings"]
    total = (j["ended_at"] - j["submitted_at"]) if j["ended_at"] else None
    lines = [
        ("id", j["id"]), ("name", j["name"]), ("type", j["jobtype"]), ("queue", j["queue"]),
        ("walltime", f"{j['walltime_min']:g} min"), ("status", j["status"]), ("reason", j["reason"] or "-"),
        ("elapsed" if j["status"] != d.PENDING else "waiting", progress(j)),
        ("submitted", _when(j["submitted_at"])), ("started", _when(j["started_at"])), ("ended", _when(j["ended_at"])),
        ("stage in", _dur(t["stage_in"])), ("run", _dur(t["run"])), ("stage out", _dur(t["stage_out"])),
        ("total", _dur(total)), ("attempts", str(j["attempt"])), ("worker", j["worker"] or "-"),
        ("kept", _kept(j.get("keep_days"))),
    ]  # fmt: skip
    for k, v in lines:
        click.echo(f"{k:<10} {v}")
    for o in j["outputs"]:
        click.echo(f"{'output':<10} {o['name']} ({o['size']} bytes) {o['url']}")
    if j["traceback"]:
        click.echo("traceback:\n" + j["traceback"])


def _print_logs(konn, job_id: str, stdout: bool, stderr: bool) -> None:
    """Print STDOUT to stdout and STDERR to stderr, each under a header on stderr."""
    from ..client.job import KottaJob

    job = KottaJob.attach(konn, job_id)
    outputs = {o.file: o for o in job.outputs}
    for want, name, err in (
        (stdout, job.info["stdout"], False),
        (stderr, job.info["stderr"], True),
    ):
        if not want:
            continue
        out = outputs.get(name.rsplit("/", 1)[-1])
        if out is None:
            click.echo(f"--- {name}: not available (job is {job.info['status']})", err=True)
            continue
        click.echo(f"--- {name}", err=True)
        click.echo(out.read(), nl=False, err=err)


@main.command()
@_auth
@click.argument("job_id")
@click.option("--stdout/--no-stdout", default=True)
@click.option("--stderr/--no-stderr", default=True)
def logs(auth_file, job_id, stdout, stderr):
    """Print a job's STDOUT and STDERR."""
    _print_logs(_konn(auth_file), job_id, stdout, stderr)


@main.command()
@_auth
@click.argument("job_id")
def cancel(auth_file, job_id):
    """Cancel a pending or running job."""
    from ..errors import ConflictError

    konn = _konn(auth_file)
    try:
        konn.cancel_job(job_id)
        click.echo(f"job {job_id} cancelled")
    except ConflictError as e:
        raise click.ClickException(e.detail) from None


@main.command()
@_auth
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1, required=True)
def rm(auth_file, job_ids):
    """Delete ended jobs for good: their records, logs, outputs and results."""
    from ..errors import ConflictError, NotFoundError

    konn = _konn(auth_file)
    failed = False
    for job_id in job_ids:
        try:
            konn.delete(job_id)
            click.echo(f"job {job_id} deleted")
        except (ConflictError, NotFoundError) as e:
            click.echo(f"error: {e.detail}", err=True)
            failed = True
    if failed:
        sys.exit(1)
