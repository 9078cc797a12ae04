"""Authorisation (P1, P14): least privilege after authentication.

The principal's own restrictions first — its consumer's and key's IP allow-lists (P8) and a key's
``METHOD /path`` permissions — then the route's required scopes, all of which the principal must hold
(RFC 6750 §3.1 ``insufficient_scope``).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.decision import Context, Deny, Verdict
from ..core.identity import Principal
from ..core.request import RequestView

__all__ = ["Authorize"]


class Authorize:
    name = "authz"

    def __init__(self, required: Iterable[str], realm: str = "bastion") -> None:
        self.required = frozenset(required)
        scope = " ".join(sorted(self.required))
        self.insufficient = self._insufficient = Deny(
            403,
            "insufficient_scope",
            "The credentials do not grant the scopes this endpoint requires.",
            headers=(
                (
                    "www-authenticate",
                    f'Bearer realm="{realm}", error="insufficient_scope", scope="{scope}"',
                ),
            ),
            evidence={"required": sorted(self.required)},
        )
        self._ip = Deny(
            403,
            "ip_not_allowed",
            "This address may not use these credentials.",
            evidence={"scope": "principal"},
        )
        self._permission = Deny(403, "permission_denied", "These credentials may not call this endpoint.")

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        return self.decide(req, ctx.principal)

    def decide_now(self, req: RequestView, ctx: Context) -> Verdict:
        return self.decide(req, ctx.principal)

    def decide(self, req: RequestView, principal: Principal | None) -> Deny | None:
        """The verdict, synchronously: :class:`Authenticate` calls it directly after a success (one
        check fewer to await on the per-request path)."""
        if principal is None:  # the chain always authenticates first; refuse rather than assume
            return self._permission
        for nets in principal.ip_allow:
            if req.client_ip not in nets:
                return self._ip
        if principal.permissions and not any(p.allows(req.method, req.path) for p in principal.permissions):
            return self._permission
        if not self.required <= principal.scopes:
            return self._insufficient
        return None
