"""What ``dask-kotta logs [-f] ID`` and ``submit --wait`` print of a job's output, also while
it runs (the commands themselves are in ``client.py``)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from .. import defaults as d


def _write(stream: str, data: bytes) -> None:
    out = click.get_binary_stream("stderr" if stream == "stderr" else "stdout")
    out.write(data)
    out.flush()


class _StatusLine:
    """``job ID processing, 12 s`` on a terminal's stderr until the job's first output."""

    def __init__(self, job_id: str, enabled: bool):
        self.job_id, self.enabled = job_id, enabled
        self.start = time.monotonic()
        self.shown = False

    def update(self, job: dict[str, Any]) -> None:
        if self.enabled:
            took = time.monotonic() - self.start
            click.echo(
                f"\r\033[Kjob {self.job_id} {job['status']}, {took:.0f} s", nl=False, err=True
            )
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            click.echo("\r\033[K", nl=False, err=True)
            self.shown = False


def follow_to_end(konn, job_id: str, streams: tuple[str, ...], quiet: bool = False) -> dict:
    """Print the job's ``streams`` as they arrive (STDOUT to stdout, STDERR to stderr; nothing
    with ``quiet``) until the job has ended; returns its record."""
    from ..client.logs import follow

    line = _StatusLine(job_id, enabled=not quiet and sys.stderr.isatty())
    if quiet:
        while konn.job(job_id, wait=30)["status"] not in d.TERMINAL_STATUSES:
            pass
    else:
        for stream, data in follow(konn, job_id, streams, on_wait=line.update):
            line.clear()
            line.enabled = False  # once output flows, it is the progress
            _write(stream, data)
        line.clear()
    return konn.job(job_id)


def ended(job: dict[str, Any]) -> None:
    """Exit non-zero, saying why, unless the job completed."""
    if job["status"] != d.COMPLETED:
        why = f": {job['reason']}" if job.get("reason") else ""
        raise click.ClickException(f"job {job['id']} {job['status']}{why}")


def print_once(konn, job: dict[str, Any], streams: tuple[str, ...]) -> None:
    """Each stream as the server holds it now, under a header on stderr."""
    status = job["status"]
    for stream in streams:
        name = job[stream]
        chunk = konn.read_log(job["id"], stream)
        if not chunk.data:
            what = "nothing yet" if not chunk.final else "empty"
            click.echo(f"--- {name}: {what} (job is {status})", err=True)
            continue
        note = "" if chunk.final else f" (so far: job is {status}; follow it with -f)"
        click.echo(f"--- {name}{note}", err=True)
        _write(stream, chunk.data)
