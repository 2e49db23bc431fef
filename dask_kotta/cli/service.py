"""The service's commands: ``up``, ``server``, ``worker`` (``token`` is in ``tokens.py``)."""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import defaults as d
from .db import open_database, upgrade_asked, upgrade_db_option
from .group import _setup_logging, main


def _load_policy(ctx, param, value):
    # Checked before anything starts; the server reads the file itself (ServerConfig.policy_file).
    from ..server.policy import load_policy

    load_policy(value)
    ctx.meta["dask_kotta.policy"] = value
    return value


def _aside(key: str, ok: Callable[[Any], bool], why: str) -> Callable[..., Any]:
    """A click callback that checks an option's value and keeps it in ``ctx.meta[key]``
    (as --policy is kept), so that _config's long argument list does not grow."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and not ok(value):
            raise click.BadParameter(why, param=param)
        ctx.meta[key] = value
        return value

    return callback


_lease = _aside("dask_kotta.lease", lambda v: v >= 3 * d.HEARTBEAT_S,
                f"must be at least {3 * d.HEARTBEAT_S:g} s (3 runner heartbeats)")  # fmt: skip
_keep = _aside("dask_kotta.keep", lambda v: v >= 0, "must be 0 (keep every job) or more days")
_max_keep = _aside("dask_kotta.max_keep", lambda v: v > 0, "must be a number of days > 0")
_dashboard_url = _aside("dask_kotta.dashboard_url", lambda v: v.startswith(("http://", "https://")),
                        "must be an http:// or https:// URL")  # fmt: skip
_max_pending = _aside("dask_kotta.max_pending", lambda v: v >= 0,
                      "must be a number of jobs >= 0 (0: no limit)")  # fmt: skip
_link_ttl = _aside("dask_kotta.link_ttl", lambda v: 1 <= v <= 7 * 86400,
                   "must be between 1 s and 7 days (604800 s)")  # fmt: skip


def _size_aside(key: str) -> Callable[..., Any]:
    """As :func:`_aside`, for a size like 5GiB (0: no limit), kept in bytes."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from dask.utils import parse_bytes

        try:
            n = parse_bytes(value)
        except (ValueError, TypeError):
            raise click.BadParameter(f"{value!r} is not a size like 5GiB (0: no limit)",
                                     param=param) from None  # fmt: skip
        if n < 0:
            raise click.BadParameter("must be a size >= 0 (0: no limit)", param=param)
        ctx.meta[key] = int(n)
        return n

    return callback


def _server_options(f):
    f = upgrade_db_option(f)
    f = click.option(
        "--link-ttl",
        envvar="DASK_KOTTA_LINK_TTL_S",
        type=float,
        expose_value=False,
        callback=_link_ttl,
        metavar="SECONDS",
        help="How long a download link (`dask-kotta status`, POST /jobs/ID/links) opens "
        f"without a token. [default: {d.LINK_TTL_S:g}]",
    )(f)
    f = click.option(
        "--dashboard-url",
        envvar="DASK_KOTTA_DASHBOARD_URL",
        expose_value=False,
        callback=_dashboard_url,
        metavar="URL",
        help="The dask dashboard's URL, as users' browsers reach it; the web page links to "
        "it. [default: no link; up's own cluster serves no dashboard]",
    )(f)
    f = click.option(
        "--max-storage",
        envvar="DASK_KOTTA_MAX_STORAGE",
        default="100GiB",
        show_default=True,
        expose_value=False,
        callback=_size_aside("dask_kotta.max_storage"),
        metavar="SIZE",
        help="Bytes one user may keep in the object store (uploads, payloads, outputs, "
        "results); an upload or a submit that would pass it is refused (429). Running jobs' "
        "outputs are never refused. 0: no limit.",
    )(f)
    f = click.option(
        "--max-upload",
        envvar="DASK_KOTTA_MAX_UPLOAD",
        default="5GiB",
        show_default=True,
        expose_value=False,
        callback=_size_aside("dask_kotta.max_upload"),
        metavar="SIZE",
        help="Largest file a user may upload (konn.upload_file); a larger one is refused at "
        "its start (413). 0: no limit.",
    )(f)
    f = click.option(
        "--max-pending",
        envvar="DASK_KOTTA_MAX_PENDING",
        type=int,
        expose_value=False,
        callback=_max_pending,
        metavar="JOBS",
        help=f"Jobs one user may have pending at once (all queues); a submit past it is "
        f"refused (429). 0: no limit. [default: {d.MAX_PENDING}]",
    )(f)
    f = click.option(
        "--max-keep",
        envvar="DASK_KOTTA_MAX_KEEP_DAYS",
        type=float,
        expose_value=False,
        callback=_max_keep,
        metavar="DAYS",
        help="Keep no ended job longer than this, whatever it asked (keep_days) or --keep "
        "says; a job asking for more, or for ever, is refused. [default: no bound]",
    )(f)
    f = click.option(
        "--keep",
        envvar="DASK_KOTTA_KEEP_DAYS",
        type=float,
        expose_value=False,
        callback=_keep,
        metavar="DAYS",
        help=f"Delete an ended job (record, logs, outputs, result) this many days after it "
        f"ended, unless it asked for its own time (keep_days); 0 keeps every job that did "
        f"not. [default: {d.KEEP_DAYS:g}]",
    )(f)
    f = click.option(
        "--lease",
        envvar="DASK_KOTTA_LEASE_S",
        type=float,
        expose_value=False,
        callback=_lease,
        metavar="SECONDS",
        help=f"A running job whose runner is silent this long goes back to pending "
        f"(a dead worker's jobs rerun after it). [default: {d.LEASE_S:g}]",
    )(f)
    f = click.option(
        "--allow-uncontained",
        is_flag=True,
        help="Run jobs uncontained on workers that cannot contain them (no user namespaces, "
        "not Linux). Jobs of one user can then read each other user's data: for trusted "
        "users only.",
    )(f)
    f = click.option(
        "--policy",
        envvar="DASK_KOTTA_POLICY",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=_load_policy,
        help="JSON policy file: networks inputs may reach, users' S3 grants (README).",
    )(f)
    f = click.option(
        "--max-payload",
        default="256MiB",
        show_default=True,
        help="Largest accepted upload (payload or script).",
    )(f)
    f = click.option(
        "--queues",
        "queues_file",
        type=click.Path(dir_okay=False),
        help="JSON file of queues and limits.",
    )(f)
    f = click.option(
        "--store",
        envvar="DASK_KOTTA_STORE",
        help="Object store: a directory or s3://BUCKET/PREFIX. Default: DATA_DIR/objects.",
    )(f)
    f = click.option(
        "--database",
        envvar="DASK_KOTTA_DATABASE",
        help="SQLAlchemy URL of the job store. Default: SQLite in DATA_DIR.",
    )(f)
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=d.DATA_DIR,
        show_default=True,
        help="Where the job store and objects live.",
    )(f)
    f = click.option(
        "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
    )(f)
    f = click.option(
        "--port", type=int, default=d.PORT, show_default=True, help="Port of the HTTP API."
    )(f)
    return f


def _tls_options(f):
    """The TLS options of `dask worker`, for a tls:// scheduler (also from dask's config)."""
    for name, text in reversed([
        ("--tls-ca-file", "CA certificate(s) file to verify"),
        ("--tls-cert", "Certificate file to present to"),
        ("--tls-key", "Private key file (if not in --tls-cert) for connections to"),
    ]):  # fmt: skip
        f = click.option(
            name, type=click.Path(dir_okay=False), help=f"{text} the scheduler (tls:// only)."
        )(f)
    return f


def _private_data_dir(data_dir) -> None:
    from ..server.launch import private_data_dir

    old = private_data_dir(Path(data_dir))
    if old is not None:
        click.echo(
            f"data dir {Path(data_dir).resolve()} was mode {old:04o}; made it 0700 "
            "(it holds every user's jobs, objects and the service's keys)"
        )


def _exit_when_closed() -> None:
    """Once the command's context has closed (its data dir released), end the process at
    once if the command said how (``ctx.meta["dask_kotta.exit"]``): Python's teardown of the
    server's modules took ~2 s of a stop that should take under 2."""
    ctx = click.get_current_context()

    def exit_now() -> None:
        code = ctx.meta.get("dask_kotta.exit")
        if code is not None:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    ctx.call_on_close(exit_now)  # first: so it runs after every later one


def _public_url(host: str, port: int, public_url: str | None = None) -> str:
    """The URL workers and clients reach the server at (``--public-url``, or HOST:PORT)."""
    return public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def _config(
    data_dir, port, host, database, store, queues_file, scheduler, public_url, max_payload,
    allow_uncontained=False,
):  # fmt: skip
    from dask.utils import parse_bytes

    from ..server.service import ServerConfig

    try:
        limit = parse_bytes(max_payload)
    except ValueError:
        raise click.BadParameter(
            f"{max_payload!r} is not a size like 64MiB", param_hint="--max-payload"
        ) from None

    url = _public_url(host, port, public_url)
    meta = click.get_current_context().meta
    return ServerConfig(
        data_dir=Path(data_dir), scheduler=scheduler or "", public_url=url, database=database,
        store=store, queues_file=queues_file, max_payload_bytes=limit,
        allow_uncontained=allow_uncontained, policy_file=meta.get("dask_kotta.policy"),
        lease_s=meta.get("dask_kotta.lease") or d.LEASE_S,
        keep_days=d.KEEP_DAYS if meta.get("dask_kotta.keep") is None else meta["dask_kotta.keep"],
        max_keep_days=meta.get("dask_kotta.max_keep"),
        max_pending=d.MAX_PENDING if meta.get("dask_kotta.max_pending") is None
        else meta["dask_kotta.max_pending"],
        max_upload_bytes=meta.get("dask_kotta.max_upload", d.MAX_UPLOAD_BYTES),
        max_storage_bytes=meta.get("dask_kotta.max_storage", d.MAX_STORAGE_BYTES),
        dashboard_url=meta.get("dask_kotta.dashboard_url"),
        link_ttl_s=meta.get("dask_kotta.link_ttl") or d.LINK_TTL_S,
    )  # fmt: skip


def _containment(config, user: str, local: bool) -> str:
    """One line on how jobs are contained; decides the single-user mode of `up`."""
    if not local:
        return "required on every worker" + (
            " (or jobs run uncontained: --allow-uncontained)" if config.allow_uncontained else ""
        )
    from ..runner.isolation import available

    why = available()
    if why is None:
        from ..runner.cgroups import tree

        t = tree()
        limits = f"limits by {t.describe()}" if not isinstance(t, str) else (
            f"memory limit by an RSS watch ({t})")  # fmt: skip
        return f"every job in its own namespaces, mount view and identity; {limits}"
    if config.allow_uncontained:
        return f"NONE: {why}; --allow-uncontained: every user's jobs run uncontained"
    config.single_user, config.uncontained = user, why
    config.allow_uncontained = True  # for that one user's jobs
    return (
        f"NONE: {why}. Serving only user {user!r}; other users are refused "
        "(--allow-uncontained serves them uncontained)"
    )


@main.command()
@_server_options
@click.option(
    "--auth-file",
    type=click.Path(dir_okay=False),
    default=d.AUTH_FILE,
    show_default=True,
    help="Credentials file to write for the first user.",
)
@click.option(
    "--user",
    default=lambda: os.environ.get("USER") or getpass.getuser() or "kotta",
    help="Name of the first user. Default: $USER.",
)
@click.option(
    "--scheduler",
    help="Use this dask scheduler (tcp:// or tls://host:8786) instead of starting a LocalCluster.",
)
@click.option(
    "--workers",
    type=int,
    default=min(2, os.cpu_count() or 1),
    show_default=True,
    help="LocalCluster worker processes.",
)
@click.option(
    "--slots",
    type=int,
    default=4,
    show_default=True,
    help="Jobs of each queue a local worker runs at once.",
)
@_tls_options
def up(
    port,
    host,
    data_dir,
    database,
    store,
    queues_file,
    max_payload,
    allow_uncontained,
    auth_file,
    user,
    scheduler,
    workers,
    slots,
    tls_ca_file,
    tls_cert,
    tls_key,
):
    """Start the server, a local dask cluster and a first user: everything, one command.

    Jobs, outputs and the user's token survive a restart with the same --data-dir.
    The first user (--user) is an admin: its credentials file (--auth-file) lets
    `dask-kotta token` make, list and revoke other users' tokens. The local cluster
    runs in processes of its own and speaks TLS with certificates made at each start
    in DATA_DIR/tls. While it runs, DATA_DIR/served.json names its URL: a second
    `up` or `server` on the same data dir is refused. Ctrl-C stops it within about a
    second; jobs that were running run again at the next start.
    """
    from ..server.cluster import TLS_DIR, client_security, make_certificates, start_local_cluster
    from ..server.launch import (
        check_port,
        check_store,
        ensure_credentials,
        private_umask,
        serve,
        stop_on_sigterm,
    )
    from ..server.queues import load_queues
    from ..server.served import claim, release

    _setup_logging()
    stop_on_sigterm()
    _exit_when_closed()
    umask = private_umask()
    # Before the port: a second `up` on this data dir says which server already serves it.
    _private_data_dir(data_dir)
    served = claim(data_dir, _public_url(host, port))
    click.get_current_context().call_on_close(lambda: release(data_dir, served))
    check_port(host, port)
    if not scheduler and (tls_ca_file or tls_cert or tls_key):
        raise click.UsageError(
            "--tls-* options go with --scheduler; the local cluster's certificates are made at each start"
        )
    security = client_security(scheduler, tls_ca_file, tls_cert, tls_key) if scheduler else None
    if scheduler:
        from ..server.reach import check_scheduler

        check_scheduler(scheduler, security)  # one line naming it, not a traceback 30 s later
    queues = load_queues(queues_file)
    cluster = tls = None
    if not scheduler:
        click.echo(
            f"starting a LocalCluster: {workers} worker(s), queues {', '.join(queues)} x{slots} each ..."
        )
        # Fresh certificates, then the cluster in its own processes: it boots while we go on.
        tls = make_certificates(Path(data_dir) / TLS_DIR)
        cluster = start_local_cluster(workers, slots, list(queues), tls, umask)
    try:
        # The server's heavier imports while the cluster boots.
        from ..server.app import create_app
        from ..store.jobs import JobStore

        config = _config(
            data_dir, port, host, database, store, queues_file, scheduler, None, max_payload,
            allow_uncontained,
        )  # fmt: skip
        check_store(config)
        # The embedded SQLite database is this service's alone: upgraded as it starts.
        own = not database or database.startswith("sqlite")
        jobstore = JobStore(config.database_url, upgrade=own or upgrade_asked())
        made = ensure_credentials(jobstore, user, Path(auth_file), config.public_url)
        jobstore.close()
        if cluster is not None:
            config.scheduler = cluster.address()
            cluster.stop_with_it()
            security = tls.security("client")
        config.security = security
        contained = _containment(config, user, local=not scheduler)

        def banner() -> None:  # once serving: a failed start prints no URL
            url = config.public_url
            click.echo(f"Kotta API     {url}   (OpenAPI docs: {url}/docs)")
            click.echo(f"data dir      {Path(data_dir).resolve()}")
            click.echo(
                f"credentials   {Path(auth_file).resolve()}  ({'new token for' if made else 'kept, user'} {user!r}, an admin)"
            )
            where = f"  (TLS certificates, new each start: {Path(tls.ca_file).parent.resolve()})"
            click.echo(f"dask          {config.scheduler}{where if tls else ''}")
            click.echo(f"containment   {contained}")
            click.echo("Ctrl-C stops everything; jobs and outputs are kept for the next start.")

        serve(create_app(config), host, port, on_serving=banner)
    finally:
        if cluster is not None:
            cluster.close()
        click.echo("stopped.")
    failed = cluster is not None and cluster.died is not None
    click.get_current_context().meta["dask_kotta.exit"] = 1 if failed else 0
    if failed:
        sys.exit(1)


@main.command()
@_server_options
@click.option(
    "--scheduler", required=True, help="Address of the dask scheduler whose workers run jobs."
)
@click.option(
    "--public-url", help="URL workers use to reach this server. Default: http://HOST:PORT."
)
@_tls_options
def server(
    port, host, data_dir, database, store, queues_file, max_payload, allow_uncontained,
    scheduler, public_url, tls_ca_file, tls_cert, tls_key,
):  # fmt: skip
    """Run the API server against an existing dask scheduler (scale-out).

    With a tls:// scheduler, give the certificates (or set them in dask's config);
    a plain tcp:// scheduler lets anything that reaches its port drive the cluster.
    Its first admin comes from `dask-kotta token NAME --admin --new --data-dir D`
    (or --database URL) before its first start. While it runs, DATA_DIR/served.json
    names its URL: a second `up` or `server` on the same data dir is refused. A
    scheduler that does not answer within 5 s is an error naming its address; the
    banner is printed once the server serves.
    """
    from ..server.app import create_app
    from ..server.cluster import client_security
    from ..server.launch import check_port, check_store, private_umask, serve, stop_on_sigterm
    from ..server.reach import check_scheduler
    from ..server.served import claim, release

    _setup_logging()
    stop_on_sigterm()
    _exit_when_closed()
    private_umask()
    _private_data_dir(data_dir)
    served = claim(data_dir, _public_url(host, port, public_url))
    click.get_current_context().call_on_close(lambda: release(data_dir, served))
    check_port(host, port)
    security = client_security(scheduler, tls_ca_file, tls_cert, tls_key)
    config = _config(
        data_dir, port, host, database, store, queues_file, scheduler, public_url, max_payload,
        allow_uncontained,
    )  # fmt: skip
    check_scheduler(scheduler, security)  # one line naming it, not a traceback 30 s later
    config.security = security
    check_store(config)
    open_database(config.database_url, upgrade=upgrade_asked())
    banner = f"Kotta API {config.public_url}  data dir {Path(data_dir).resolve()}  dask {scheduler}"
    serve(create_app(config), host, port, on_serving=lambda: click.echo(banner))
    click.get_current_context().meta["dask_kotta.exit"] = 0


@main.command()
@click.argument("scheduler")
@click.option(
    "--queue",
    "queue_slots",
    multiple=True,
    default=["Test=4"],
    show_default=True,
    help="QUEUE=SLOTS this worker serves; repeat for several.",
)
@click.option("--name", help="Worker name.")
@_tls_options
def worker(scheduler, queue_slots, name, tls_ca_file, tls_cert, tls_key):
    """Start a dask worker that serves Kotta queues (wraps `dask worker --resources`).

    For a tls:// scheduler give --tls-ca-file, --tls-cert and --tls-key (as to
    `dask worker`), or set them in dask's config. A scheduler that does not answer
    within 5 s is an error naming its address (start the scheduler first).
    """
    from ..server.cluster import quiet_env, worker_tls_check
    from ..server.reach import check_scheduler

    worker_tls_check(scheduler, tls_ca_file, tls_cert, tls_key)
    slots = []
    for item in queue_slots:
        q, _, n = item.partition("=")
        if not q or not n.isdigit():
            raise click.BadParameter(f"{item!r} is not QUEUE=SLOTS", param_hint="--queue")
        slots.append((q, int(n)))
    security = None
    if tls_ca_file or tls_cert or tls_key:
        from distributed.security import Security

        security = Security(require_encryption=True, tls_ca_file=tls_ca_file,
                            tls_worker_cert=tls_cert, tls_worker_key=tls_key)  # fmt: skip
    # One line naming the scheduler when it cannot be reached, not dask's 105 after 30 s.
    check_scheduler(scheduler, security, role="worker")
    args = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler,
            "--resources", ",".join(f"{q}={n}" for q, n in slots),
            "--nthreads", str(sum(n for _, n in slots) + 1)]  # fmt: skip
    if name:
        args += ["--name", name]
    for opt, value in (
        ("--tls-ca-file", tls_ca_file),
        ("--tls-cert", tls_cert),
        ("--tls-key", tls_key),
    ):
        if value:
            args += [opt, value]
    # Idle as `up`'s workers are (cluster.QUIET). Environment variables since `dask worker`
    # takes no config option; one the user set wins.
    for key, value in quiet_env().items():
        os.environ.setdefault(key, value)
    os.execv(args[0], args)
