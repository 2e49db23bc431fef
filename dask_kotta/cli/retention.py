"""``dask-kotta gc``: the server's retention sweep, run now, on a running or stopped service's data."""

from __future__ import annotations

from pathlib import Path

import click

from .. import defaults as d
from .group import main


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=d.DATA_DIR, show_default=True)
@click.option("--database", envvar="DASK_KOTTA_DATABASE", help="SQLAlchemy URL of the job store.")
@click.option("--store", envvar="DASK_KOTTA_STORE", help="Object store (as the server's --store).")
@click.option(
    "--keep",
    envvar="DASK_KOTTA_KEEP_DAYS",
    type=click.FloatRange(min=0, min_open=True),
    default=d.KEEP_DAYS,
    show_default=True,
    metavar="DAYS",
    help="Delete the jobs that ended more than this many days ago (those that asked for "
    "their own keep time when submitted: after that time).",
)
@click.option(
    "--max-keep",
    envvar="DASK_KOTTA_MAX_KEEP_DAYS",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="DAYS",
    help="Also delete every job that ended more than this many days ago, whatever it asked.",
)
def gc(data_dir, database, store, keep, max_keep):
    """Delete old ended jobs (records, logs, outputs, results) now.

    A job submitted with its own keep time (keep_days; 0: for ever) is deleted that long
    after it ended instead. A running server does the same every 10 minutes with its own
    --keep and --max-keep; this is for a server that is stopped, or to catch up at once.
    """
    from ..store import retention
    from ..store.jobs import JobStore
    from ..store.objects import open_store

    jobstore = JobStore(database or str(Path(data_dir) / "jobs.sqlite"))
    try:
        n = retention.sweep(
            jobstore.retention, open_store(store, data_dir), keep * 86400,
            max_keep_s=max_keep * 86400 if max_keep else None,
        )  # fmt: skip
    finally:
        jobstore.close()
    click.echo(f"deleted {n} job(s) that ended more than {keep:g} days ago (or past their own "
               "keep time)")  # fmt: skip
