"""Checks on a submitted job description; each failure names what is wrong."""

from __future__ import annotations

import asyncio
import ipaddress
import posixpath
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse, urlsplit

from .. import defaults as d
from ..errors import InvalidRequestError, UnsafePathError
from ..netcheck import (
    HOW_TO_ALLOW,
    IPNetwork,
    has_userinfo,
    is_local_name,
    literal_ip,
    refusal,
    shown_url,
)
from ..paths import safe_relpath
from .queues import Queue

INPUT_SCHEMES = ("http", "https", "s3")
_KEYS = {
    "jobtype", "name", "queue", "walltime_min", "inputs", "outputs", "stdout", "stderr",
    "script", "script_name", "executable", "requirements", "retries", "client",
    "annotations", "idempotency_key", "deps",
}  # fmt: skip


def input_basename(url: str) -> str:
    """The file name an input URL is staged under, or an error naming the URL."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError as e:
        raise InvalidRequestError(f"input {shown_url(url)!r} is malformed: {e}") from None
    if parsed.scheme not in INPUT_SCHEMES:
        raise InvalidRequestError(
            f"input {url!r}: unsupported scheme {parsed.scheme or '(none)'!r}; use one of "
            + ", ".join(f"{s}://" for s in INPUT_SCHEMES)
        )
    if not parsed.netloc:
        raise InvalidRequestError(f"input {url!r} is malformed: it names no host or bucket")
    base = posixpath.basename(parsed.path.rstrip("/")) if parsed.path else ""
    if not base or base in (".", ".."):
        raise InvalidRequestError(f"input {url!r} names no file (its path has no base name)")
    return base


def check_inputs(urls: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for url in urls:
        if has_userinfo(url):
            raise InvalidRequestError(
                f"input {shown_url(url)!r} is refused: it carries user-info (user:password@) "
                "before its host, which would travel with the job and reach logs; "
                "use a presigned URL or upload the file (Kotta.upload_file)"
            )
        base = input_basename(url)
        if base in seen:
            raise InvalidRequestError(
                f"inputs {seen[base]!r} and {url!r} would both be staged as {base!r}"
            )
        seen[base] = url
    return urls


def _path(value: Any, what: str) -> str:
    try:
        name = safe_relpath(value, what)
    except UnsafePathError as e:
        raise InvalidRequestError(str(e)) from None
    if name.split("/")[0] == ".kotta":
        raise InvalidRequestError(f"{what} {value!r}: '.kotta/' is reserved for the service")
    return name


def check_spec(raw: Any, queues: dict[str, Queue], has_payload: bool) -> dict[str, Any]:
    """Return a normalised copy of a job description, or raise ``InvalidRequestError``."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("a job description must be a JSON object")
    unknown = set(raw) - _KEYS
    if unknown:
        raise InvalidRequestError(f"unknown job fields: {', '.join(sorted(unknown))}")
    spec = dict(raw)
    jobtype = spec.get("jobtype", "script")
    if jobtype not in d.JOBTYPES:
        raise InvalidRequestError(f"jobtype {jobtype!r} is not one of {', '.join(d.JOBTYPES)}")
    spec["jobtype"] = jobtype
    queue = spec.get("queue", d.QUEUE)
    if queue not in queues:
        raise InvalidRequestError(f"unknown queue {queue!r}; queues are: {', '.join(queues)}")
    spec["queue"] = queue
    try:
        walltime = float(spec.get("walltime_min", d.WALLTIME_MIN))
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"walltime {spec.get('walltime_min')!r} is not a number of minutes"
        ) from None
    if not walltime > 0:
        raise InvalidRequestError(f"walltime must be > 0 minutes, got {walltime:g}")
    if walltime > queues[queue].max_walltime_min:
        raise InvalidRequestError(
            f"walltime {walltime:g} min is over queue {queue}'s maximum of {queues[queue].max_walltime_min:g} min"
        )
    spec["walltime_min"] = walltime
    for key in ("inputs", "outputs", "deps"):
        value = spec.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequestError(f"{key} must be a list of strings")
        spec[key] = value
    check_inputs(spec["inputs"])
    spec["outputs"] = [_path(o, "output") for o in spec["outputs"]]
    spec["stdout"] = _path(spec.get("stdout") or "STDOUT.txt", "output_file_stdout")
    spec["stderr"] = _path(spec.get("stderr") or "STDERR.txt", "output_file_stderr")
    if jobtype == "script":
        if not spec.get("script") and not spec.get("executable"):
            raise InvalidRequestError("a script job needs a script or an executable")
        spec["script_name"] = _path(spec.get("script_name") or "script.sh", "script_name")
    elif not has_payload:
        raise InvalidRequestError(
            "a python job needs a payload (the pickled function and arguments)"
        )
    # An input staged under the name of the job's stdout, stderr or script would be overwritten.
    own = {spec["stdout"]: "output_file_stdout", spec["stderr"]: "output_file_stderr"}
    if jobtype == "script" and spec.get("script"):
        own[spec["script_name"]] = "script_name"
    for url in spec["inputs"]:
        if (base := input_basename(url)) in own:
            raise InvalidRequestError(
                f"input {url!r} would be staged as {base!r}, which is the job's {own[base]}"
            )
    try:
        spec["retries"] = int(spec.get("retries") or 0)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"retries {spec.get('retries')!r} is not an integer") from None
    if not 0 <= spec["retries"] <= 100:
        raise InvalidRequestError("retries must be between 0 and 100")
    name = spec.get("name") or ""
    if not isinstance(name, str) or len(name) > 256:
        raise InvalidRequestError("name must be a string of at most 256 characters")
    for key in ("requirements", "script", "executable"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise InvalidRequestError(f"{key} must be a string")
    return spec


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
    return [ipaddress.ip_address(i[4][0].split("%", 1)[0]) for i in infos]


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
