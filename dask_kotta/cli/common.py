"""What the client's commands share: the credentials option and how times are shown."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import defaults as d

_auth = click.option(
    "--auth-file", type=click.Path(dir_okay=False), default=d.AUTH_FILE, show_default=True,
    envvar="KOTTA_AUTH_FILE", help="Credentials file (from `up` or `token`).",
)  # fmt: skip


def _konn(auth_file: str):
    from ..client.connection import Kotta

    try:
        text = Path(auth_file).read_text()
    except OSError as e:
        raise click.ClickException(
            f"cannot read credentials {auth_file}: {e.strerror}; run `dask-kotta up` or `dask-kotta token NAME`"
        ) from None
    return Kotta(text)


def _dur(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1000:.0f}ms" if x < 1 else f"{x:.2f}s")


def _kept(days: float | None) -> str:
    if days is None:
        return "the server's --keep after it ends"
    return "for ever" if days == 0 else f"{days:g} days after it ends"


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
