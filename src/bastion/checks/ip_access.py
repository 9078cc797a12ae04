"""IP allow/deny lists per service and per route (P8).

The address checked is ``RequestView.client_ip``: the TCP peer, or the client a *trusted* proxy
vouched for in ``X-Forwarded-For`` (see ``bastion.core.forwarding``). A deny list wins over an allow
list; an empty allow list allows every address not denied.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from ..core.decision import Context, Deny, Verdict
from ..core.forwarding import NetworkSet
from ..core.request import RequestView

__all__ = ["IpAccess"]


class IpAccess:
    name = "ip_access"

    def __init__(
        self,
        allow: Iterable[IPv4Network | IPv6Network],
        deny: Iterable[IPv4Network | IPv6Network],
        scope: str,
    ) -> None:
        self.allow = NetworkSet(allow)
        self.deny = NetworkSet(deny)
        self._denied = Deny(
            403, "ip_denied", "This address may not use this endpoint.", evidence={"scope": scope}
        )
        self._not_allowed = Deny(
            403, "ip_not_allowed", "This address may not use this endpoint.", evidence={"scope": scope}
        )

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        return self.decide_now(req, ctx)

    def decide_now(self, req: RequestView, ctx: Context) -> Verdict:
        ip = req.client_ip
        if self.deny and ip in self.deny:
            return self._denied
        if self.allow and ip not in self.allow:
            return self._not_allowed
        return None
