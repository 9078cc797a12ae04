"""What the wrapped application learns about the caller: ``scope["bastion"]``."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.decision import Deny
from ..core.identity import Principal

__all__ = ["BastionPrincipal", "Denied", "principal_view"]


@dataclass(frozen=True, slots=True)
class BastionPrincipal:
    """The authenticated caller of this request, as Bastion's checks found them: the same values the
    proxy sends upstream as ``X-Bastion-Consumer`` and ``X-Bastion-Scopes``. ``scope["bastion"]`` is this
    object when a consumer's credential authenticated the request (API key, OAuth2 token, JWT, PKCV), and
    None otherwise: ``auth: none`` routes, and webhooks (a signature authenticates a sender, not a
    consumer)."""

    consumer: str
    scopes: frozenset[str]
    method: str  # "api_key" | "oauth2" | "jwt:<issuer name>" | "pkcv"
    key_id: str | None
    client_id: str | None
    request_id: str

    def has_scopes(self, *scopes: str) -> bool:
        return frozenset(scopes) <= self.scopes


def principal_view(principal: Principal | None, request_id: str) -> BastionPrincipal | None:
    if principal is None:
        return None
    return BastionPrincipal(
        principal.consumer,
        principal.scopes,
        principal.method,
        principal.key_id,
        principal.client_id,
        request_id,
    )


class Denied(Exception):
    """Raised inside the application (by :mod:`bastion.fastapi`'s dependencies) to refuse a request the
    way a check would: BastionMiddleware answers it with problem+json and records ``request.denied``."""

    def __init__(self, deny: Deny) -> None:
        super().__init__(deny.code)
        self.deny = deny
