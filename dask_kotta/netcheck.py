"""Which addresses a user's input URL may reach.

A worker that fetches any URL a user names is a proxy into the operator's
network: the service's own API and the dask dashboard on loopback, a cloud
metadata endpoint on a link-local address, hosts on private ranges. So an
``http(s)`` input whose host is (or resolves to) a loopback, link-local,
private, multicast, unspecified, reserved or otherwise non-global address is
refused unless the operator allowed its network (``allow_input_networks`` in
the server's policy file). IPv6 addresses that embed an IPv4 one (v4-mapped,
v4-compatible, 6to4, Teredo, NAT64) are judged by the embedded address too.

The server checks at submit what it can tell then (IP literals in any form
``inet_aton`` takes, ``localhost``, names that resolve); the runner checks
again at fetch, at every redirect, and connects to the address it checked.

Standard library only: both the server and the runner import it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What the refusal says an operator can do about it.
HOW_TO_ALLOW = (
    'an operator can allow that network for inputs with "allow_input_networks" '
    "in the server's policy file (--policy / DASK_KOTTA_POLICY)"
)

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPAT = ipaddress.ip_network("::/96")
_INET_ATON_FORM = re.compile(r"^[0-9a-fA-FxX.]+$")


def parse_networks(items: Iterable[str]) -> list[IPNetwork]:
    """CIDRs (``10.0.0.0/8``, ``::1/128``, or one address) as networks; ValueError names a bad one."""
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a string like '10.0.0.0/8'")
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"{item!r} is not a network like '10.0.0.0/8': {e}") from None
    return out


def literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a resolver would take as one; else None.

    Besides ``ipaddress``'s forms (``127.0.0.1``, ``::1``, ``[::1]``,
    ``fe80::1%eth0``), the forms of ``inet_aton``: ``2130706433``,
    ``0x7f000001``, ``0177.0.0.1``, ``127.1``.
    """
    h = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if _INET_ATON_FORM.match(h) and any(c.isdigit() for c in h):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    return None


def is_local_name(host: str) -> bool:
    """``localhost`` and names under ``.localhost`` (RFC 6761): loopback whatever DNS says."""
    h = host.strip().rstrip(".").lower()
    return h == "localhost" or h.endswith(".localhost")


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"


def _kind(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def _embedded_v4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if any(ip in net for net in (*_NAT64, _V4_COMPAT)):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def refusal(ip: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why an input may not reach ``ip`` (e.g. ``'a loopback address'``), or None if it may.

    An address inside an allowed network is allowed; an IPv6 address that
    embeds an IPv4 one is allowed if either is in an allowed network.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    embedded = _embedded_v4(ip)
    allowed = list(allowed)
    if any(a in net for a in (ip, *embedded) for net in allowed if a.version == net.version):
        return None
    kind = _kind(ip)
    if kind in ("unspecified", "loopback", "link-local", "multicast"):
        return _a(kind)
    if embedded:  # where it leads is the IPv4 address inside
        for v4 in embedded:
            inner = _kind(v4)
            if inner is not None:
                return f"an IPv6 address embedding {v4}, {_a(inner)}"
        return None
    return _a(kind) if kind is not None else None


def resolve(host: str, port: int | None = None) -> list[IPAddress]:
    """Every address ``host`` resolves to (blocking; OSError when it does not resolve)."""
    infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out
