"""Where a client finds its credentials, and how it reads them.

Credentials are a JSON object ``{"url": "http://host:port", "token": "kt_..."}``
(written by ``dask-kotta up`` or ``dask-kotta token NAME``). ``Kotta()`` with no
argument, and every ``dask-kotta`` client command without ``--auth-file``, look in
one order, the first that exists winning:

1. the file named by ``$KOTTA_AUTH_FILE`` (when set, it must exist: a typo there
   should not fall through to another user's file);
2. ``./auth.file`` in the current directory (where ``dask-kotta up`` writes it);
3. ``$XDG_CONFIG_HOME/dask-kotta/auth.json`` (``~/.config/dask-kotta/auth.json``
   when ``XDG_CONFIG_HOME`` is not set): the place for a user's own credentials.

``Kotta(x)`` takes the JSON text, a dict, or a path to such a file (a ``str``
that does not start with ``{`` or a ``pathlib.Path``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import defaults as d
from ..errors import ConfigError

#: The environment variable naming a credentials file; first in the search order.
ENV = "KOTTA_AUTH_FILE"
EXAMPLE = '{"url": "http://127.0.0.1:8765", "token": "kt_..."}'
#: One line for help texts: the search order.
SEARCH_ORDER = (
    "$KOTTA_AUTH_FILE, then ./auth.file, then "
    "$XDG_CONFIG_HOME/dask-kotta/auth.json (default ~/.config/dask-kotta/auth.json)"
)


def user_config_file() -> Path:
    """The user's own credentials file: ``$XDG_CONFIG_HOME/dask-kotta/auth.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dask-kotta" / "auth.json"


def search_path() -> list[tuple[Path, str]]:
    """The places looked in, in order, each with where it comes from."""
    out: list[tuple[Path, str]] = []
    env = os.environ.get(ENV)
    if env:
        out.append((Path(env), f"${ENV}"))
    out.append((Path(d.AUTH_FILE), "the current directory"))
    out.append((user_config_file(), "your config directory"))
    return out


def find_credentials_file() -> Path:
    """The first credentials file of the search order; ``ConfigError`` naming each place if none.

    A ``$KOTTA_AUTH_FILE`` that names no file is an error of its own, not
    skipped: the user asked for that file.
    """
    env = os.environ.get(ENV)
    if env and not Path(env).is_file():
        raise ConfigError(f"${ENV} names {env}, which is not a file")
    for path, _ in search_path():
        if path.is_file():
            return path
    places = "; ".join(f"{p.absolute()} ({why})" for p, why in search_path())
    raise ConfigError(
        f"no Kotta credentials found; looked in: {places}. Run `dask-kotta up` (writes "
        "./auth.file), or ask your operator for a file made by `dask-kotta token NAME` and "
        f"put it at {user_config_file()} or name it in ${ENV}"
    )


def read_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The credentials in a file; ``ConfigError`` naming the file if it cannot be read or parsed."""
    p = Path(path).absolute()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read credentials file {p}: {e.strerror or e}") from None
    return parse(text, source=f"credentials file {p}")


def load(creds: str | os.PathLike[str] | dict[str, Any] | None) -> dict[str, str]:
    """The checked credentials from what ``Kotta(...)`` was given (see the module's docstring)."""
    if creds is None:
        return read_file(find_credentials_file())
    if isinstance(creds, os.PathLike):
        return read_file(creds)
    if isinstance(creds, str) and creds.strip() and not creds.lstrip().startswith(("{", "[")):
        # Not JSON text (an object): the path of a file, or a mistake that names both forms.
        path = Path(creds.strip())
        if path.is_file():
            return read_file(path)
        if "/" in creds or os.sep in creds or path.suffix in (".file", ".json", ".auth"):
            raise ConfigError(
                f"no credentials file {path.absolute()}; Kotta() takes the path of a "
                f"credentials file or its JSON text, like {EXAMPLE}"
            )
        try:
            json.loads(creds)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"the credentials are not valid JSON ({e}) and not the path of a file "
                f"({creds.strip()[:200]!r}); Kotta() takes the path of a credentials file "
                f"or its JSON text, like {EXAMPLE}"
            ) from None
    return parse(creds, source="the credentials")


def parse(creds: str | dict[str, Any], source: str = "the credentials") -> dict[str, str]:
    """Check credentials given as JSON text or a dict; ``ConfigError`` says what is wrong."""
    if isinstance(creds, str):
        if not creds.strip():
            raise ConfigError(f"{source} are empty; expected JSON like {EXAMPLE}")
        try:
            creds = json.loads(creds)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source} are not valid JSON ({e}); expected {EXAMPLE}") from None
    if not isinstance(creds, dict):
        raise ConfigError(f"{source} must be a JSON object like {EXAMPLE}")
    missing = [k for k in ("url", "token") if not isinstance(creds.get(k), str) or not creds.get(k)]
    if missing:
        raise ConfigError(
            f"{source} lack {' and '.join(repr(m) for m in missing)}; expected {EXAMPLE}"
        )
    if not creds["url"].startswith(("http://", "https://")):
        raise ConfigError(
            f"the url {creds['url']!r} of {source} must start with http:// or https://"
        )
    return creds
