"""The client's commands: ``submit``, ``status``, ``logs``, ``cancel``, ``rm``, ``ls``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .. import defaults as d
from .group import main

_auth = click.option(
    "--auth-file", type=click.Path(dir_okay=False), default=None,
    help="Credentials file (from `up` or `token`). [default: the first of "
    "$KOTTA_AUTH_FILE, ./auth.file, ~/.config/dask-kotta/auth.json ($XDG_CONFIG_HOME respected)]",
)  # fmt: skip


def _konn(auth_file: str | None):
    from ..client.connection import Kotta
    from ..client.creds import find_credentials_file

    # Kotta() raises ConfigError naming the file or the places looked in; the group prints it.
    return Kotta(Path(auth_file) if auth_file else find_credentials_file())


def _dur(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1000:.0f}ms" if x < 1 else f"{x:.2f}s")


def _kept(days: float | None) -> str:
    if days is None:
        return "the server's --keep after it ends"
    return "for ever" if days == 0 else f"{days:g} days after it ends"


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@main.command()
@_auth
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.option("--queue", "-q", default=d.QUEUE, show_default=True)
@click.option(
    "--walltime",
    "-w",
    type=float,
    default=60,
    show_default=True,
    help="Minutes (fractions allowed).",
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
def submit(auth_file, script, queue, walltime, inputs, outputs, name, executable, keep, wait):
    """Submit SCRIPT as a Kotta script job; prints its id."""
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
        keep_days=keep,
    )  # fmt: skip
    job.submit(konn)
    click.echo(job.job_id)
    if wait:
        job.wait(konn, maxwait=float("inf"))
        _print_logs(konn, job.job_id, True, True)
        if job.status(konn) != d.COMPLETED:
            raise click.ClickException(f"job {job.job_id} {job.info['status']}: {job.reason}")


@main.command()
@_auth
@click.argument("job_id")
def status(auth_file, job_id):
    """Show a job: status, reason, times, per-phase durations, outputs."""
    konn = _konn(auth_file)
    j = konn.job(job_id)
    t = j["timings"]
    total = (j["ended_at"] - j["submitted_at"]) if j["ended_at"] else None
    lines = [
        ("id", j["id"]), ("name", j["name"]), ("type", j["jobtype"]), ("queue", j["queue"]),
        ("walltime", f"{j['walltime_min']:g} min"), ("status", j["status"]), ("reason", j["reason"] or "-"),
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


@main.command(name="ls")
@_auth
@click.option("--limit", "-n", type=int, default=20, show_default=True)
@click.option("--status", "status_filter", type=click.Choice(d.SERVER_STATUSES), default=None)
def ls_(auth_file, limit, status_filter):
    """List your jobs, newest first, with status and durations."""
    from rich.console import Console
    from rich.table import Table

    konn = _konn(auth_file)
    table = Table(box=None)
    for col in (
        "id",
        "name",
        "queue",
        "status",
        "submitted",
        "stage in",
        "run",
        "stage out",
        "reason",
    ):
        table.add_column(col)
    for j in konn.jobs(limit=limit, status=status_filter):
        t = j["timings"]
        table.add_row(
            j["id"], j["name"][:30], j["queue"], j["status"], _when(j["submitted_at"]),
            _dur(t["stage_in"]), _dur(t["run"]), _dur(t["stage_out"]), (j["reason"] or "")[:50],
        )  # fmt: skip
    Console(width=200).print(table)
