"""FastAPI dependencies for an application behind :class:`bastion.asgi.BastionMiddleware`.

::

    from bastion.fastapi import CurrentPrincipal, principal, require_scopes

    @app.get("/v1/orders/{order_id}")
    async def get_order(order_id: str, who: BastionPrincipal = Depends(require_scopes("orders:read"))): ...

    @app.get("/v1/me")
    async def me(who: CurrentPrincipal): ...

The config's route already authenticated the caller and checked its ``scopes``; these dependencies let an
endpoint ask for more (scopes per endpoint, on a route the config declares more broadly). A refusal is
raised as :class:`bastion.asgi.Denied`, which the middleware answers exactly as a check's deny: the same
problem+json (``auth_required`` 401, ``insufficient_scope`` 403 with RFC 6750's ``WWW-Authenticate``) and
the same ``request.denied`` event. Without the middleware there is no principal and nothing to answer the
refusal: the request fails (500), it never passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from .asgi import BastionPrincipal, Denied
from .core.decision import Deny
from .core.identity import ScopeError, parse_scopes

__all__ = ["CurrentPrincipal", "principal", "require_scopes"]

_REALM = "bastion"
_REQUIRED = Deny(
    401,
    "auth_required",
    "This endpoint requires authentication.",
    headers=(("www-authenticate", f'Bearer realm="{_REALM}"'),),
    evidence={"stage": "application"},
    severity="notice",
)


async def principal(request: Request) -> BastionPrincipal:
    """The authenticated caller (``scope["bastion"]``); 401 ``auth_required`` when there is none (the
    config's route is ``auth: none``, or the application is not behind BastionMiddleware)."""
    who = request.scope.get("bastion")
    if not isinstance(who, BastionPrincipal):
        raise Denied(_REQUIRED)
    return who


def require_scopes(*scopes: str) -> Callable[..., Awaitable[BastionPrincipal]]:
    """A dependency that returns the caller when it holds every one of ``scopes``, else refuses with 403
    ``insufficient_scope`` (RFC 6750 §3.1). The scopes are checked when the dependency is made."""
    try:
        required = parse_scopes(scopes)
    except ScopeError as exc:
        raise ValueError(str(exc)) from None
    if not required:
        raise ValueError("require_scopes needs at least one scope")
    text = " ".join(sorted(required))
    challenge = f'Bearer realm="{_REALM}", error="insufficient_scope", scope="{text}"'
    insufficient = Deny(
        403,
        "insufficient_scope",
        "The credentials do not grant the scopes this endpoint requires.",
        headers=(("www-authenticate", challenge),),
        evidence={"required": sorted(required), "stage": "application"},
    )

    async def scoped(who: BastionPrincipal = Depends(principal)) -> BastionPrincipal:  # noqa: B008
        if not required <= who.scopes:
            raise Denied(insufficient)
        return who

    scoped.__name__ = f"require_scopes({text})"
    return scoped


CurrentPrincipal = Annotated[BastionPrincipal, Depends(principal)]
