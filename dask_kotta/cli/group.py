"""The ``dask-kotta`` command group, which the commands of ``client.py`` and ``service.py`` join."""

from __future__ import annotations

import logging
import sys

import click

from ..errors import KottaError


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
    )
    logging.getLogger("dask_kotta").setLevel(logging.INFO)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KottaError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="dask-kotta")
def main() -> None:
    """dask-kotta: a Kotta job service on dask.distributed, and its client.

    Start everything on this machine with `dask-kotta up`; then use the other
    commands (or Python: `from kotta import Kotta`) with the credentials file
    it writes.

    \b
    Client commands find credentials in the first of:
      --auth-file FILE
      $KOTTA_AUTH_FILE
      ./auth.file (written by `up`)
      $XDG_CONFIG_HOME/dask-kotta/auth.json (default ~/.config/dask-kotta/auth.json)
    Python's Kotta() with no argument looks in the same places.
    """
