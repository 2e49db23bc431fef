"""What makes the client's commands scriptable: ``ls`` (filters, pages, ``--json``, ``-q``),
one JSON document per command (:func:`echo_json`), and walltimes as minutes or
``HH:MM:SS`` (:data:`WALLTIME`)."""

from __future__ import annotations

import json
from typing import Any

import click

from .common import _auth, _dur, _konn, _when
from .group import main


class _Walltime(click.ParamType):
    """Minutes (fractions allowed), or ``HH:MM:SS`` / ``MM:SS``; read as minutes."""

    name = "TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from ..jobspec import walltime_minutes

        try:
            return walltime_minutes(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


#: A ``--walltime`` option's type.
WALLTIME = _Walltime()


def echo_json(doc: Any) -> None:
    """One JSON document on stdout, as the API gave it."""
    click.echo(json.dumps(doc, indent=2))


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def progress(job: dict[str, Any]) -> str:
    """How a job is doing in a few words: its elapsed time, or its place in its queue."""
    if job["status"] == "pending":
        where = f"#{job['position']} in {job['queue']}" if job.get("position") else ""
        return "; ".join(x for x in (where, job.get("reason") or "") if x) or "-"
    return _clock(job.get("elapsed"))


@main.command(name="ls")
@_auth
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Jobs per page.")  # fmt: skip
@click.option("--status", "status_filter", default=None, metavar="STATUS[,STATUS...]",
              help="Only these statuses; `running` = staging_inputs, processing, staging_outputs.")  # fmt: skip
@click.option("--queue", default=None, help="Only this queue's jobs.")
@click.option("--name", default=None, help="Only jobs whose name contains this.")
@click.option("--before", default=None, metavar="CURSOR",
              help="The page after the one that printed this cursor.")  # fmt: skip
@click.option("--all", "all_pages", is_flag=True, help="Every page, not only the first.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON document: {"jobs": [...], "next": cursor or null}, as the API gives.')  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Only the ids, one per line.")
def ls_(auth_file, limit, status_filter, queue, name, before, all_pages, as_json, quiet):
    """List your jobs, newest first: status, elapsed time (running) or place in the queue
    (pending), durations, reason.

    One page of --limit jobs; the next page's cursor is printed to stderr (pass it as
    --before), or --all lists every page.
    """
    konn = _konn(auth_file)
    found: list[dict[str, Any]] = []
    nxt = before
    while True:
        page, nxt = konn.jobs_page(limit, status_filter, queue, name, nxt)
        found += page
        if not all_pages or not nxt:
            break
    if as_json:
        echo_json({"jobs": found, "next": nxt})
        return
    if quiet:
        for j in found:
            click.echo(j["id"])
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None)
        for col in ("id", "name", "queue", "status", "elapsed/place", "submitted", "stage in",
                    "run", "stage out", "reason"):  # fmt: skip
            table.add_column(col)
        for j in found:
            t = j["timings"]
            reason = "" if j["status"] == "pending" else (j["reason"] or "")
            table.add_row(
                j["id"], j["name"][:30], j["queue"], j["status"], progress(j),
                _when(j["submitted_at"]), _dur(t["stage_in"]), _dur(t["run"]),
                _dur(t["stage_out"]), reason[:50],
            )  # fmt: skip
        Console(width=220).print(table)
    if nxt:
        click.echo(f"more: dask-kotta ls --before {nxt}", err=True)
