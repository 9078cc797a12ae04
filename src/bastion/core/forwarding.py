"""Who is the client? Trusted-proxy resolution of ``X-Forwarded-For`` / ``-Proto`` / ``-Host``.

``X-Forwarded-For`` is a list anyone can write to; only the entries appended by proxies we trust mean
anything. So: if the TCP peer is a trusted proxy, walk the list right to left, skipping trusted
addresses; the first untrusted address is the client (the "rightmost untrusted" rule). A peer that is
not trusted is the client, whatever the headers say, and those headers are dropped (CVE-2022-24112).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import NamedTuple

from .headers import Headers
from .request import IPAddress

__all__ = ["HOP_BY_HOP", "ForwardedInfo", "NetworkSet", "resolve_forwarded"]

# RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)


class NetworkSet:
    """A set of CIDRs with a fast membership test for single addresses."""

    __slots__ = ("_cache", "_nets4", "_nets6")

    def __init__(self, cidrs: Iterable[str | IPv4Network | IPv6Network]) -> None:
        nets = [ip_network(c, strict=False) if isinstance(c, str) else c for c in cidrs]
        self._nets4 = tuple(n for n in nets if n.version == 4)
        self._nets6 = tuple(n for n in nets if n.version == 6)
        self._cache: dict[IPAddress, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._nets4 or self._nets6)

    def __contains__(self, addr: object) -> bool:
        if not isinstance(addr, IPv4Address | IPv6Address):
            return False
        hit = self._cache.get(addr)
        if hit is not None:
            return hit
        if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
            mapped = addr.ipv4_mapped
            result = any(mapped in n for n in self._nets4)
        elif isinstance(addr, IPv4Address):
            result = any(addr in n for n in self._nets4)
        else:
            result = any(addr in n for n in self._nets6)
        if len(self._cache) < 65536:  # bounded: addresses are attacker-chosen
            self._cache[addr] = result
        return result


class ForwardedInfo(NamedTuple):
    client_ip: IPAddress
    scheme: str
    host: str | None
    forwarded_for: str  # the X-Forwarded-For value to send upstream
    request_id: str | None  # a trusted proxy's X-Request-Id


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:1234"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:5678"
        text = text.split(":", 1)[0]
    try:
        return ip_address(text)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def ip_text(addr: IPAddress) -> str:
    """``str()`` of an address is slow in ``ipaddress``; clients repeat, so cache it."""
    return str(addr)


def resolve_forwarded(peer: IPAddress, scheme: str, headers: Headers, trusted: NetworkSet) -> ForwardedInfo:
    if not trusted or peer not in trusted:
        return ForwardedInfo(peer, scheme, None, ip_text(peer), None)
    chain = [p for v in headers.getall("x-forwarded-for") for p in v.split(",") if p.strip()]
    client: IPAddress = peer
    for entry in reversed(chain):
        addr = _parse_ip(entry)
        if addr is None:
            break  # garbage: stop at the last address a trusted hop vouched for
        client = addr
        if addr not in trusted:
            break
    # The nearest proxy appends last: with several lines or a list, the last value is the trusted one.
    protos = headers.getall("x-forwarded-proto")
    if protos:
        last = protos[-1].split(",")[-1].strip().lower()
        if last in ("http", "https"):
            scheme = last
    hosts = headers.getall("x-forwarded-host")
    host = hosts[-1].split(",")[-1].strip() if hosts else None
    xff = ", ".join([p.strip() for p in chain] + [ip_text(peer)])
    return ForwardedInfo(client, scheme, host or None, xff, headers.get("x-request-id"))
