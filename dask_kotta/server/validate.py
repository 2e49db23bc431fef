"""Checks on a submitted job: its spec, then what only the server knows, and where inputs lead.

What a spec may say is the shared :class:`~dask_kotta.jobspec.JobSpec`'s to
check (the client checks the same before it sends); here are the queues'
limits, whether a python job came with its payload, and which hosts an
http(s) input may reach.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidRequestError
from ..jobspec import JobSpec, input_name
from ..netcheck import HOW_TO_ALLOW, IPNetwork, is_local_name, literal_ip, refusal
from ..urls import shown_url
from .queues import Queue


def input_basename(url: str) -> str:
    """The file name an input URL is staged under, or ``InvalidRequestError`` naming the URL."""
    try:
        return input_name(url)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None


def check_spec(
    raw: Any, queues: dict[str, Queue], has_payload: bool, max_keep_days: float | None = None
) -> dict[str, Any]:
    """Return a normalised copy of a job description, or raise ``InvalidRequestError``.

    ``max_keep_days`` is the server's ``--max-keep``: a job may not ask to be kept longer
    (nor for ever).
    """
    spec = JobSpec.parse(raw)
    queue = queues.get(spec.queue)
    if queue is None:
        raise InvalidRequestError(f"unknown queue {spec.queue!r}; queues are: {', '.join(queues)}")
    if spec.walltime_min > queue.max_walltime_min:
        raise InvalidRequestError(
            f"walltime {spec.walltime_min:g} min is over queue {spec.queue}'s maximum of "
            f"{queue.max_walltime_min:g} min"
        )
    if max_keep_days and spec.keep_days is not None and not 0 < spec.keep_days <= max_keep_days:
        asked = "0 (for ever)" if spec.keep_days == 0 else f"{spec.keep_days:g} days"
        raise InvalidRequestError(
            f"keep_days {asked} is over this server's maximum of {max_keep_days:g} days"
        )
    if spec.jobtype == "python" and not has_payload:
        raise InvalidRequestError(
            "a python job needs a payload (the pickled function and arguments)"
        )
    return spec.to_json()


# -- where http(s) inputs may lead (SSRF) -------------------------------------------------------

#: How long submit waits for a name to resolve; one that does not resolve by then is checked at fetch.
RESOLVE_TIMEOUT_S = 2.0


async def _resolve(host: str) -> list[Any] | None:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except (TimeoutError, OSError, UnicodeError, ValueError):
        return None  # not known now: the runner checks again when it fetches
    return [ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos]


def _host_refusal(host: str, addrs: list[Any], allowed: list[IPNetwork]) -> str | None:
    for ip in addrs:
        why = refusal(ip, allowed)
        if why is not None:
            return why if str(ip) == host else f"resolves to {ip}, {why}"
    return None


async def input_host_refusals(
    urls: Iterable[tuple[Any, str]], allowed: list[IPNetwork]
) -> tuple[Any, str] | None:
    """The first ``(tag, reason)`` of ``(tag, url)`` pairs whose http(s) host an input may not reach.

    IP literals in every form a resolver takes, ``localhost`` and names that
    resolve now (at most :data:`RESOLVE_TIMEOUT_S`, all names at once, off the
    event loop) are checked; a name that does not resolve is let through, and
    the runner checks it again, with every redirect, when it fetches.
    """
    todo: list[tuple[Any, str, str]] = []
    for tag, url in urls:
        p = urlsplit(url)
        if p.scheme not in ("http", "https"):
            continue
        host = (p.hostname or "").rstrip(".")
        todo.append((tag, url, host))
    names = {h for _, _, h in todo if literal_ip(h) is None and not is_local_name(h)}
    found = dict(zip(names, await asyncio.gather(*(_resolve(h) for h in names)), strict=True))
    loopback = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for tag, url, host in todo:
        ip = literal_ip(host)
        if ip is not None:
            why = refusal(ip, allowed)
            what = (
                f"its host {host} is {why}"
                if str(ip) == host
                else f"its host {host} is {ip}, {why}"
            )
        elif is_local_name(host):
            why = _host_refusal(host, loopback, allowed)
            what = f"its host {host} is a loopback name"
        else:
            why = _host_refusal(host, found.get(host) or [], allowed)
            what = f"its host {host} {why}"
        if why is not None:
            return tag, (
                f"input {shown_url(url)!r} is refused: {what}. Inputs may not reach loopback, "
                "link-local, private, multicast or unspecified addresses (the service's own "
                f"network); {HOW_TO_ALLOW}"
            )
    return None
