"""The client's commands: ``submit``, ``status``, ``logs``, ``cancel``, ``rm`` (``ls`` is in
``scripting.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import defaults as d
from .common import _auth, _dur, _kept, _konn, _when
from .fetch import fetch_declared, show_outputs
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
@click.option(
    "--wait/--no-wait", default=False,
    help="Wait for the job, printing its STDOUT and STDERR as they arrive, then download its "
    "outputs (-o) here; exit 1 unless it completed.",
)  # fmt: skip
@click.option("--quiet", is_flag=True, help="With --wait: print no output, only the job's end.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the job's record as JSON (with --wait: once it ended) instead of its id.")  # fmt: skip
def submit(
    auth_file, script, args, queue, walltime, inputs, outputs, name, executable, keep, wait,
    quiet, as_json,
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
        from .logs import ended, follow_to_end

        # With --json, stdout is one JSON document: no log lines on it.
        record = follow_to_end(konn, job.job_id, ("stdout", "stderr"), quiet=quiet or as_json)
        job.apply_record(record, konn)
        if as_json:
            echo_json(record)
        ended(record)
        if quiet and not as_json:
            click.echo(f"job {job.job_id} completed")
        fetch_declared(konn, job.info, job.spec().outputs)
    elif as_json:
        echo_json(konn.job(job.job_id))


@main.command()
@_auth
@click.argument("job_id")
@click.option(
    "--json", "as_json", is_flag=True, help="The job's record as JSON, as the API gives it."
)
def status(auth_file, job_id, as_json):
    """Show a job: status, reason, times, per-phase durations, elapsed time or place in
    its queue, and its outputs, each with a link that opens in a browser or with curl,
    without a token, for a short time (the server's --link-ttl, 10 minutes by default)."""
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
    if j.get("resubmit_of"):
        lines.append(("rerun of", j["resubmit_of"]))
    for k, v in lines:
        click.echo(f"{k:<10} {v}")
    show_outputs(konn, j)
    if j["traceback"]:
        click.echo("traceback:\n" + j["traceback"])


@main.command()
@_auth
@click.argument("job_id")
@click.option("--stdout/--no-stdout", default=True, help="Show STDOUT (to stdout).")
@click.option("--stderr/--no-stderr", default=True, help="Show STDERR (to stderr).")
@click.option(
    "--follow", "-f", is_flag=True,
    help="Print new output as it arrives until the job ends; exit 0 if it completed, 1 if not.",
)  # fmt: skip
def logs(auth_file, job_id, stdout, stderr, follow):
    """Print a job's STDOUT and STDERR, also while it runs.

    A running job's output reaches the server about every second. While it
    runs the server keeps the first 256 KiB and the last 1 MiB of each stream
    (a line marks what was cut); once it has ended, the whole files. A
    cancelled or killed job keeps what it printed.
    """
    from .logs import ended, follow_to_end, print_once

    konn = _konn(auth_file)
    streams = tuple(s for s, want in (("stdout", stdout), ("stderr", stderr)) if want)
    if follow:
        ended(follow_to_end(konn, job_id, streams))
    else:
        print_once(konn, konn.job(job_id), streams)


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
