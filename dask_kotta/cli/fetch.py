"""What ``status`` and ``submit --wait`` show and fetch of a job's outputs.

Helpers of the client's commands (``client.py``, ``outputs.py``), kept apart so that
both can use them without importing each other.
"""

from __future__ import annotations

import time
from typing import Any

import click


def show_outputs(konn: Any, job: dict[str, Any]) -> None:
    """One line per output with a link that opens without a token, and when they expire."""
    if not job["outputs"]:
        return
    try:
        links = konn.links(job["id"])
    except Exception as e:  # an output deleted meanwhile, a server without links: the URLs
        from ..errors import KottaError

        if not isinstance(e, KottaError):
            raise
        links, note = {}, f"(no links: {e})"
    else:
        ttl = _ttl(links)
        note = f"links open without a token{ttl}; `dask-kotta get {job['id']}` downloads"
    for o in job["outputs"]:
        click.echo(
            f"{'output':<10} {o['name']} ({o['size']} bytes) {links.get(o['name'], o['url'])}"
        )
    click.echo(f"{'':<10} {note}")


def _ttl(links: dict[str, str]) -> str:
    """`` until HH:MM:SS (in N min)`` for the links the server just made."""
    expires: float | None = getattr(links, "expires", None)
    if expires is None:
        return ""
    left = max(0, expires - time.time())
    when = time.strftime("%H:%M:%S", time.localtime(expires))
    return (
        f" until {when} (in {left / 60:.0f} min)" if left >= 60 else f" until {when} ({left:.0f} s)"
    )


def fetch_declared(konn: Any, job: dict[str, Any], declared: list[str]) -> None:
    """Download the outputs a submit declared (``-o``) into the current directory, once its
    job completed; names each file written. An existing file is not overwritten: the
    command fails naming it (and how to get it), after the job's end was shown."""
    from ..errors import KottaError

    have = {o["name"] for o in job["outputs"]}
    names = [n for n in declared if n in have]
    if not names:
        return
    try:
        for path in konn.download(job["id"], names, "."):
            click.echo(f"wrote {path}", err=True)
    except KottaError as e:
        raise click.ClickException(
            f"{e}; `dask-kotta get {job['id']} --force` fetches them over it"
        ) from None
