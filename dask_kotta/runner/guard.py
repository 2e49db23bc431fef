"""Fetching a user's ``http(s)`` input without becoming a proxy into the operator's network.

:class:`Guard` resolves each host once, checks every address it resolves to
(:func:`dask_kotta.netcheck.refusal`, against the networks the server's
policy allows) and remembers them; :func:`guarded_session` gives a requests
session whose connections go only to those checked addresses (the socket is
opened to the IP; the Host header, TLS SNI and certificate check keep the
name), so a name that resolves differently a moment later (DNS rebinding)
reaches nothing new. The caller follows redirects itself and calls
:meth:`Guard.check` for every hop.

Such a session never uses a proxy (a proxy would resolve the name itself).
The service's own URLs (presigned store URLs, the runner API) come from the
server's input plan and use the plain session instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from ..netcheck import (
    HOW_TO_ALLOW,
    IPNetwork,
    is_local_name,
    literal_ip,
    parse_networks,
    refusal,
    resolve,
)
from ..transfer.common import FILE_WORKERS, PART_WORKERS, StagingError, Transient
from ..urls import shown_url

#: Redirects followed from one input URL.
MAX_REDIRECTS = 10


def _norm(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class Guard:
    """Checked hosts and the addresses to connect to for them, for one job's staging."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.addresses: dict[str, list] = {}  # host -> its checked addresses (resolved once)
        self.pins: dict[str, list[str]] = {}  # host -> addresses a connection may go to

    def _addresses(self, host: str, port: int | None, shown: str) -> list:
        key = _norm(host)
        with self.lock:
            if key in self.addresses:
                return self.addresses[key]
        ip = literal_ip(host)
        if ip is not None:
            addrs = [ip]
        else:
            try:
                addrs = resolve(host, port)
            except (OSError, UnicodeError) as e:
                raise Transient(f"input {shown}: cannot resolve host {host}: {e}") from None
            if is_local_name(host):  # loopback by definition, whatever a resolver says
                from ipaddress import ip_address

                addrs = [*addrs, ip_address("127.0.0.1")]
        with self.lock:
            return self.addresses.setdefault(key, addrs)

    def check(self, url: str, shown: str, allowed: Iterable[IPNetwork]) -> None:
        """Raise ``StagingError`` unless every address of ``url``'s host may be reached; pin them."""
        p = urlsplit(url)
        if p.scheme not in ("http", "https"):
            raise StagingError(f"input {shown}: refused to fetch {shown_url(url)}: not http(s)")
        if "@" in p.netloc:
            raise StagingError(
                f"input {shown}: refused to fetch {shown_url(url)}: it carries user-info"
            )
        host = (p.hostname or "").rstrip(".")
        if not host:
            raise StagingError(f"input {shown}: {shown_url(url)} names no host")
        try:
            port = p.port
        except ValueError as e:
            raise StagingError(f"input {shown}: {shown_url(url)} is malformed: {e}") from None
        addrs = self._addresses(host, port, shown)
        allowed = list(allowed)
        for ip in addrs:
            why = refusal(ip, allowed)
            if why is not None:
                where = f"its host {host}" + ("" if str(ip) == host else f" resolves to {ip}")
                raise StagingError(
                    f"input {shown}: refused to fetch {shown_url(url)}: {where}, {why} "
                    f"(blocked address {ip}); {HOW_TO_ALLOW}"
                )
        with self.lock:
            self.pins[_norm(host)] = [str(ip) for ip in addrs]


class _Pinned:
    """A urllib3 connection that opens its socket to one of its host's checked addresses."""

    guard: Guard

    def _new_conn(self):
        with self.guard.lock:
            ips = list(self.guard.pins.get(_norm(self.host), ()))
        if not ips:
            raise NewConnectionError(self, f"{self.host} was not checked before connecting")
        saved = self._dns_host
        error: Exception | None = None
        try:
            for ip in ips:
                self._dns_host = ip  # only for the socket: Host, SNI and the cert keep the name
                try:
                    return super()._new_conn()
                except (NewConnectionError, ConnectTimeoutError) as e:
                    error = e
            raise error  # type: ignore[misc]
        finally:
            self._dns_host = saved


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, guard: Guard, **kw):
        self.guard = guard
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        guard = self.guard
        conn = type("PinnedHTTPConnection", (_Pinned, HTTPConnection), {"guard": guard})
        sconn = type("PinnedHTTPSConnection", (_Pinned, HTTPSConnection), {"guard": guard})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedPool", (HTTPConnectionPool,), {"ConnectionCls": conn}),
            "https": type("PinnedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": sconn}),
        }


def guarded_session(guard: Guard) -> requests.Session:
    """A session that connects only to addresses ``guard`` checked, and never through a proxy."""
    s = requests.Session()
    s.trust_env = False  # no proxies, no ~/.netrc credentials for users' hosts
    adapter = _PinnedAdapter(
        guard, pool_connections=8, pool_maxsize=FILE_WORKERS * PART_WORKERS + 4
    )
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def networks(items: Iterable[str] | None) -> list[IPNetwork]:
    """The allowed networks the server's plan names (a malformed one is dropped, not trusted)."""
    out = []
    for item in items or ():
        try:
            out.extend(parse_networks([item]))
        except ValueError:
            continue
    return out
