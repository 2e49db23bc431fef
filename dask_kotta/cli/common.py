"""What the client's commands share: the credentials option and how times are shown."""

from __future__ import annotations

import time
from pathlib import Path

import click

_auth = click.option(
    "--auth-file", type=click.Path(dir_okay=False), default=None,
    help="Credentials file (from `up` or `token`). [default: the first of "
    "$KOTTA_AUTH_FILE, ./auth.file, ~/.config/dask-kotta/auth.json ($XDG_CONFIG_HOME respected)]",
)  # fmt: skip


def _konn(auth_file: str | None):
    from ..client.connection import Kotta

    # Kotta() (no file named) looks where the help says, and raises ConfigError naming the
    # file or the places looked in; the group prints it.
    return Kotta(Path(auth_file) if auth_file else None)


def _dur(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1000:.0f}ms" if x < 1 else f"{x:.2f}s")


def _kept(days: float | None) -> str:
    if days is None:
        return "the server's --keep after it ends"
    return "for ever" if days == 0 else f"{days:g} days after it ends"


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
