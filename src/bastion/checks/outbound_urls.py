"""URL fields of outbound requests (OWASP API7, server-side request forgery), per egress route.

The provider fetches the URLs an application hands it (Twilio's ``StatusCallback``, ``Url``,
``FallbackUrl`` …). A caller that can set one can make the provider — or anything that follows its
redirects back into the network — reach an internal address. So every string value of a form or JSON
body (and of the query) that is an ``http(s)://`` URL is checked before the request leaves:

* with ``url_allow_hosts``, its host must be one of them (``*.example.com`` for subdomains);
* with ``block_private_urls`` (the default), its host must not be, or resolve to, a private, loopback,
  link-local (cloud metadata at 169.254.169.254), shared (100.64/10), multicast, reserved or unspecified
  address. Names are resolved (cached for a minute); a name that does not resolve is refused too.

URLs with credentials, backslashes, whitespace or control characters are refused outright: parsers
disagree about them. What this cannot see: a public host that later redirects, or re-resolves, to an
internal address when the provider fetches it (DNS rebinding); ``url_allow_hosts`` closes that.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from ..core.decision import Context, Deny, Verdict
from ..core.request import RequestView
from .egress_payload import payload
from .json_body import JsonLimits

__all__ = ["Resolver", "UrlFields", "address_refused"]

Resolver = Callable[[str], Awaitable[Sequence[str]]]
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; Alibaba's metadata is 100.100.100.200
_CACHE_TTL = 60.0
_CACHE_SIZE = 4096
_MAX_URLS = 100


def address_refused(address: str) -> bool:
    """Whether a request to this address would reach something that is not the public internet."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_refused(str(mapped))
        if ip.teredo is not None:
            return True
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (ip.version == 4 and ip in _SHARED)
        or not ip.is_global
    )


async def system_resolver(host: str) -> Sequence[str]:
    import asyncio

    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _refused(cause: str, **evidence: object) -> Deny:
    return Deny(
        403,
        "egress_url_refused",
        "A URL in this request points somewhere the provider must not be sent.",
        evidence={"cause": cause, **evidence},
        event="egress.url_refused",
    )


class UrlFields:
    name = "url_fields"

    def __init__(
        self,
        *,
        block_private: bool,
        allow_hosts: Iterable[str] | None,
        json_limits: JsonLimits,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
        resolve_timeout: float = 2.0,
    ) -> None:
        self.block_private = block_private
        hosts = list(allow_hosts) if allow_hosts is not None else None
        self.exact = frozenset(h for h in hosts or () if not h.startswith("*."))
        self.suffixes = tuple(h[1:] for h in hosts or () if h.startswith("*."))  # ".example.com"
        self.restricted = hosts is not None
        self.json_limits = json_limits
        self.resolver = resolver
        self.clock = clock
        self.resolve_timeout = resolve_timeout
        self._cache: dict[str, tuple[float, bool]] = {}

    def _host_listed(self, host: str) -> bool:
        return host in self.exact or any(host.endswith(s) for s in self.suffixes)

    async def _host_refused(self, host: str) -> str | None:
        try:
            ipaddress.ip_address(host)
            literal = True
        except ValueError:
            literal = False
        if literal:
            return "private_address" if address_refused(host) else None
        now = self.clock()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            return "private_address" if cached[1] else None
        import asyncio

        try:
            addresses = await asyncio.wait_for(self.resolver(host), self.resolve_timeout)
        except (OSError, TimeoutError, UnicodeError):
            return "unresolvable"
        if not addresses:
            return "unresolvable"
        refused = any(address_refused(a) for a in addresses)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = (now + _CACHE_TTL, refused)
        return "private_address" if refused else None

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        body = await payload(req, ctx, self.json_limits)
        if isinstance(body, Deny):
            return body
        checked = 0
        for value in body.strings():
            text = value.strip()
            if not text[:8].lower().startswith(("http://", "https://")):
                continue
            checked += 1
            if checked > _MAX_URLS:
                return _refused("too_many_urls")
            if any(c.isspace() or ord(c) < 32 or c in "\\\x7f" for c in text):
                return _refused("malformed_url")
            try:
                parts = urlsplit(text)
                host = (parts.hostname or "").rstrip(".").lower()
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                return _refused("malformed_url")
            if not host or parts.username is not None or parts.password is not None or "@" in parts.netloc:
                return _refused("malformed_url")
            if self.restricted and not self._host_listed(host):
                return _refused("host_not_allowed", host=host[:253])
            if self.block_private:
                cause = await self._host_refused(host)
                if cause is not None:
                    return _refused(cause, host=host[:253])
        return None
