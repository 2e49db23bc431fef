"""The client's commands for a job's results: ``get`` (download outputs) and ``resubmit``."""

from __future__ import annotations

from pathlib import Path

import click

from .client import _auth, _konn
from .group import main


@main.command()
@_auth
@click.argument("job_id")
@click.argument("names", metavar="[NAME]...", nargs=-1)
@click.option(
    "--dir", "-d", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
    help="Directory to write into (made if missing); output sub/a.csv goes to DIR/sub/a.csv.",
)  # fmt: skip
@click.option("--force", "-f", is_flag=True, help="Overwrite files that are already there.")
def get(auth_file, job_id, names, directory, force):
    """Download an ended job's outputs: all of them, or the NAMEs given (STDOUT.txt and
    STDERR.txt by name too), streaming, into DIR; prints each file written.

    Refused before anything is downloaded: a job still pending or running, a NAME the job
    has no output under, a name that would be written outside DIR, and (without --force)
    a file that is already there.
    """
    konn = _konn(auth_file)
    written = konn.download(job_id, names or None, Path(directory), overwrite=force)
    for path in written:
        click.echo(f"{path} ({path.stat().st_size} bytes)")
    if not written:
        click.echo(f"job {job_id} has no outputs", err=True)


@main.command()
@_auth
@click.argument("job_id")
def resubmit(auth_file, job_id):
    """Run an ended job again, with the same script or function, inputs and options, as a
    new job; prints the new job's id (its status shows which job it reran)."""
    job = _konn(auth_file).resubmit(job_id)
    click.echo(job.job_id)
