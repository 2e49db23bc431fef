"""``dask-kotta token``: make, list and revoke users' tokens.

Two ways, one command:

- **Through the running server** (the default): with an admin's credentials
  (``--auth-file``, ``KOTTA_AUTH_FILE``, then ``./auth.file``), it calls
  ``/api/v1/admin/tokens``, and the credentials file it writes names the server's
  own URL. Nothing on this machine needs to be the server's.
- **Offline**, for the operator (``--data-dir`` or ``--database`` given, or ``--new``):
  on the job store directly, e.g. a ``server`` deployment's first admin before its
  first start. It writes credentials only for a data directory a running service
  serves (``DATA_DIR/served.json`` gives its URL), unless ``--new`` says the server is
  not running yet: written anywhere else, they named a server that was not there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from click.core import ParameterSource

from .. import defaults as d
from .group import main


def duration_s(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or a bare number of days, in seconds (> 0)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    raw = text.strip().lower()
    unit = units.get(raw[-1:], None)
    try:
        value = float(raw[:-1] if unit else raw) * (unit or 86400)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise click.BadParameter(
            f"{text!r} is not a duration like 30d, 12h, 90m or 45s", param_hint="--expires"
        )
    return value


def describe(t: dict[str, Any], now: float) -> str:
    """One line of ``--list``: id, made, user, expiry, label (never the token)."""
    made = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t["created_at"]))
    ends = t["expires_at"]
    until = "never expires" if ends is None else (
        ("expired " if ends <= now else "expires ") + time.strftime("%Y-%m-%d %H:%M", time.gmtime(ends))
    )  # fmt: skip
    return f"{t['id']}  {made} UTC  {t['user']}  ({until})" + (
        f"  {t['label']}" if t.get("label") else ""
    )


def offline_url(
    served_url: str | None, url: str | None, new: bool, data_dir: str, port: int
) -> str:
    """The URL offline credentials name: ``--url``, else the serving one, else (``--new``) the
    default; ``UsageError`` for a data dir nobody serves without ``--new``."""
    if served_url is None and not new:
        raise click.UsageError(
            f"nobody serves {data_dir} (no running `up` or `server` holds its served.json): "
            "credentials written now would name a server that is not there. Start the "
            "service and ask it (`dask-kotta token NAME -o FILE --auth-file ADMIN.auth`), or "
            "give --new if it is not started yet (with --url, where it will be)"
        )
    return url or served_url or f"http://127.0.0.1:{port}"


def _ends(lifetime: float | None, expires_at: float | None) -> str:
    if lifetime is None or expires_at is None:
        return ""
    return f", valid until {time.strftime('%Y-%m-%d %H:%M', time.gmtime(expires_at))} UTC"


@main.command()
@click.argument("name", required=False)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False),
    help="Credentials file to write. [default: NAME.auth]",
)  # fmt: skip
@click.option(
    "--auth-file", type=click.Path(dir_okay=False), default=d.AUTH_FILE, show_default=True,
    envvar="KOTTA_AUTH_FILE",
    help="An admin's credentials (or KOTTA_AUTH_FILE): the server to ask, and who asks "
    "(`up` writes its first user's, an admin). Not used offline.",
)  # fmt: skip
@click.option(
    "--expires", metavar="DURATION",
    help="The new token stops working after this long: 30d, 12h, 90m, 45s (a bare number: "
    "days). [default: never]",
)  # fmt: skip
@click.option("--label", help="What the new token is for, shown by --list (at most 128 chars).")
@click.option(
    "--admin", is_flag=True,
    help="Make NAME an admin too: its tokens may then make, list and revoke tokens.",
)  # fmt: skip
@click.option("--list", "list_", is_flag=True, help="List the tokens (of NAME), with their ids.")
@click.option(
    "--revoke", "revoke", multiple=True, metavar="ID",
    help="Revoke the token with this id (from --list); every server refuses it within 1 s.",
)  # fmt: skip
@click.option(
    "--data-dir", type=click.Path(file_okay=False), default=d.DATA_DIR, show_default=True,
    help="Offline: work on this data dir's job store directly, not through the server.",
)  # fmt: skip
@click.option("--database", help="Offline: work on the job store at this SQLAlchemy URL directly.")
@click.option(
    "--new", is_flag=True,
    help="Offline: the service is not running yet; make the job store if there is none and "
    "write credentials anyway (a `server`'s first admin, before its first start).",
)  # fmt: skip
@click.option(
    "--url",
    help="Server URL to put in the file. Default: the server's own (offline: the URL the "
    "running service wrote in DATA_DIR/served.json, or with --new http://127.0.0.1:PORT).",
)
@click.option("--port", type=int, default=d.PORT, show_default=True, help="Offline, with --new.")
@click.pass_context
def token(
    ctx, name, output, auth_file, expires, label, admin, list_, revoke, data_dir, database, new,
    url, port,
):  # fmt: skip
    """Make a token for user NAME (made if new) and write its credentials file.

    Asks the running server, with an admin's credentials (--auth-file; `up` writes
    them for its first user). --list lists the tokens (NAME's only, if given) with
    their ids, labels and expiry, never the tokens; --revoke ID revokes one, and
    every server refuses it within 1 s. A user who is not an admin is refused.

    Offline, for the operator: with --data-dir or --database (or --new), it works on
    the job store directly, e.g. for a `server` deployment's first admin before its
    first start: `dask-kotta token alice --admin --new --database URL --url
    http://HOST:8765`. Offline it writes credentials only for a data dir that a
    running service serves (and names that service's URL), unless --new.
    """
    if not (list_ or revoke) and name is None:
        raise click.UsageError("give NAME (the user to make a token for), --list or --revoke ID")
    if name is not None and (not name.strip() or len(name) > 128):
        raise click.BadParameter("must be 1-128 characters", param_hint="NAME")
    if label is not None and len(label) > 128:
        raise click.BadParameter("must be at most 128 characters", param_hint="--label")
    lifetime = duration_s(expires) if expires is not None else None
    creating = not (list_ or revoke)
    output = output or (f"{name}.auth" if creating else None)
    explicit = {ctx.get_parameter_source(p) for p in ("data_dir", "database")}
    if new or ParameterSource.COMMANDLINE in explicit:
        _offline(name, output, lifetime, label, admin, list_, revoke, data_dir, database, new,
                 url, port)  # fmt: skip
    else:
        _online(name, output, auth_file, lifetime, label, admin, list_, revoke, url)


def _online(name, output, auth_file, lifetime, label, admin, list_, revoke, url) -> None:
    from ..client.connection import Kotta
    from ..errors import ServerUnavailableError
    from ..server.launch import write_credentials

    if output is not None and Path(output).resolve() == Path(auth_file).resolve():
        raise click.UsageError(
            f"-o {output} is the admin credentials file this command uses: give another -o"
        )
    try:
        text = Path(auth_file).read_text()
    except OSError as e:
        raise click.ClickException(
            f"cannot read admin credentials {auth_file}: {e.strerror}. `dask-kotta token` asks "
            "the running server with an admin's credentials (--auth-file or KOTTA_AUTH_FILE; "
            "`up` writes them for its first user); the operator can use the job store "
            "directly with --data-dir or --database"
        ) from None
    try:
        konn = Kotta(text, retry_window=0)
        try:
            for token_id in revoke:
                path = f"/api/v1/admin/tokens/{quote(token_id, safe='')}"
                done = konn.request("DELETE", path).json()
                click.echo(f"revoked token {token_id} of user {done['user']!r}")
            if list_:
                params = {} if name is None else {"user": name}
                found = konn.request("GET", "/api/v1/admin/tokens", params=params).json()
                now = time.time()
                for t in found["tokens"]:
                    click.echo(describe(t, now))
            if not (list_ or revoke):
                body = {"name": name, "label": label, "expires_in_s": lifetime, "admin": admin}
                made = konn.request("POST", "/api/v1/admin/tokens", json=body).json()
                creds = made["credentials"]
                write_credentials(Path(output), url or creds["url"], creds["token"])
                click.echo(f"wrote {output} for user {name!r} (token {made['id']})"
                           + _ends(lifetime, made["expires_at"]))  # fmt: skip
        finally:
            konn.close()
    except ServerUnavailableError as e:
        raise click.ClickException(
            f"{e}, the server named in {auth_file}; the operator can also use the job store "
            "directly with --data-dir or --database"
        ) from None


def _offline(name, output, lifetime, label, admin, list_, revoke, data_dir, database, new, url,
             port) -> None:  # fmt: skip
    from ..server.launch import issue_token
    from ..server.served import read_served
    from ..store.jobs import JobStore

    creating = not (list_ or revoke)
    path = Path(data_dir) / "jobs.sqlite"
    if not database and not (new and creating) and not path.exists():
        # Run in the wrong directory, it made an empty store no server reads, and a token in it.
        raise click.UsageError(
            f"no job store at {path}: run this where the service was started (or give its "
            "--data-dir or --database); --new makes a new store"
        )
    if creating:
        served = read_served(data_dir)
        url = offline_url(served.url if served else None, url, new, data_dir, port)
    store = JobStore(database or str(path))
    try:
        for token_id in revoke:
            try:
                users = store.revoke_token(token_id)
            except ValueError as e:
                raise click.ClickException(str(e)) from None
            if len(users) != 1:
                raise click.ClickException(
                    f"{len(users) if users else 0}{'+' if len(users) > 1 else ''} tokens have "
                    f"an id starting {token_id!r}, not one"
                )
            click.echo(f"revoked token {token_id} of user {users[0]!r}")
        if list_:
            now = time.time()
            for t in store.list_tokens(name):
                click.echo(describe(t, now))
        if creating:
            ends = None if lifetime is None else time.time() + lifetime
            issue_token(store, name, Path(output), url, label, ends, admin=admin)
            click.echo(f"wrote {output} for user {name!r}" + (" (an admin)" if admin else "")
                       + _ends(lifetime, ends))  # fmt: skip
    finally:
        store.close()
