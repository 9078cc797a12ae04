"""The SSO routes of the admin API: ``GET /admin/v1/auth/oidc/start`` and ``GET /admin/v1/auth/oidc/callback``
(the OpenID Connect authorization code flow with PKCE; the protocol is in ``identity.admin_oidc``).

Both are public (no principal yet) and both are plain GETs, because a browser reaches them by navigation: a
link sends it to ``start``, which answers 302 to the provider; the provider sends it back to ``callback``.

Cookies. The *pre-session* cookie (``__Host-bastion_sso``, or ``bastion_sso`` with ``cookie_secure: false``)
carries the sealed state, nonce and PKCE verifier from ``start`` to ``callback``: ``HttpOnly``, ``Secure``
(unless ``cookie_secure: false``, allowed only on a loopback listener), ``Path=/``, ``Max-Age`` of
``flow_timeout``, and ``SameSite=Lax`` — not ``Strict``, because the request that must carry it back is a
cross-site navigation (the provider's redirect): browsers send ``Lax`` cookies on a cross-site top-level
GET and ``Strict`` ones never. ``Lax`` gives nothing away: the cookie is useless without a matching
``state`` and it is single use. The session cookie stays ``SameSite=Strict``, and for that reason
``callback`` does not redirect: a redirect at the end of a cross-site chain would not carry the fresh
``Strict`` cookie, so a browser gets a small page that moves on to the console by itself (a same-site
navigation, which does), with ``Referrer-Policy: no-referrer`` so the callback URL (code and state) leaks
nowhere. A client that asks for ``application/json`` gets the sign-in step's usual JSON instead.

Every callback, successful or not, clears the pre-session cookie. Every refusal is one
``admin_auth.sso_failed`` event with its cause and the same 401 ``admin_sso_failed`` for the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from ..core.ports import ReplayCache, StateUnavailable
from ..identity.admin_oidc import (
    FlowSeal,
    OidcProvider,
    SsoAccounts,
    SsoFailed,
    SsoSettings,
    map_role,
    read_identity,
    replay_key,
    safe_error,
    sign_in_stage,
    state_matches,
)
from ..identity.manage import IdentityError
from .admin_auth import PREFIX, PUBLIC, SIGN_IN_FAILED, AdminPlane, Policy, _fail, _ip

__all__ = ["SSO_POLICIES", "add_sso_routes"]

START = f"{PREFIX}/auth/oidc/start"
CALLBACK = f"{PREFIX}/auth/oidc/callback"

SSO_POLICIES: dict[tuple[str, str], Policy] = {
    ("GET", START): PUBLIC,
    ("GET", CALLBACK): PUBLIC,
}

# Where a browser goes once the callback has set its session (the console's pages for each stage).
_NEXT = {"full": "/console/", "mfa": "/console/mfa", "enrol": "/console/enrol"}
_PAGE_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "content-security-policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


@dataclass(slots=True)
class _Sso:
    settings: SsoSettings
    seal: FlowSeal
    provider: OidcProvider
    accounts: SsoAccounts
    replay: ReplayCache


def add_sso_routes(
    app: FastAPI,
    plane: AdminPlane,
    *,
    pepper: str | None,
    replay: ReplayCache | None,
    transport: Any = None,
) -> None:
    """The two SSO routes. They always exist (every route has a policy); without ``admin.accounts.sso``,
    the store or ``identity.pepper`` they answer 409 ``sso_unavailable``."""
    settings = plane.settings
    sso_settings = settings.sso
    sso: _Sso | None = None
    if sso_settings is not None and pepper is not None and plane.accounts is not None and replay is not None:
        sso = _Sso(
            settings=sso_settings,
            seal=FlowSeal(pepper, sso_settings.flow_timeout),
            provider=OidcProvider(sso_settings, clock=plane.clock, transport=transport),
            accounts=SsoAccounts(plane.accounts.engine, plane.accounts, clock=plane.clock),
            replay=replay,
        )
    flow_cookie = "__Host-bastion_sso" if settings.cookie_secure else "bastion_sso"

    def need() -> _Sso:
        if sso is None:
            raise IdentityError(
                409,
                "sso_unavailable",
                "admin.accounts.sso is not configured (it also needs the store and identity.pepper)",
            )
        return sso

    def emit(event_type: str, **fields: Any) -> None:
        if plane.accounts is not None:
            plane.accounts.emit(event_type, **fields)

    def clear_flow(response: Response) -> Response:
        response.delete_cookie(
            flow_cookie, path="/", secure=settings.cookie_secure, httponly=True, samesite="lax"
        )
        return response

    def refused(request: Request, exc: SsoFailed) -> Response:
        emit(
            "admin_auth.sso_failed",
            severity="error" if exc.provider else "warning",
            actor=exc.actor,
            source_ip=_ip(request),
            reason=exc.cause,
            data=exc.data,
        )
        if exc.cause == "state_unavailable":
            return _fail(503, "state_unavailable", "The sign-in cannot be completed now; try again later.")
        if exc.provider:
            return _fail(
                502, "sso_provider_unavailable", "The sign-in provider could not be used; try again later."
            )
        return _fail(401, "admin_sso_failed", SIGN_IN_FAILED)

    @app.get(
        START,
        tags=["auth"],
        status_code=302,
        summary="Sign in with the OpenID Connect provider: a redirect to it",
        response_class=RedirectResponse,
        responses={302: {"description": "to the provider's authorization endpoint"}},
    )
    async def oidc_start(request: Request) -> Response:
        s = need()
        try:
            meta = await s.provider.metadata()
        except SsoFailed as exc:
            return refused(request, exc)
        flow, sealed = s.seal.new(plane.clock())
        emit("admin_auth.sso_started", severity="info", source_ip=_ip(request), data={"issuer": meta.issuer})
        response = RedirectResponse(
            s.provider.authorization_url(meta, flow),
            status_code=302,
            headers={"cache-control": "no-store", "referrer-policy": "no-referrer"},
        )
        response.set_cookie(
            flow_cookie,
            sealed,
            max_age=int(s.settings.flow_timeout),
            path="/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite="lax",  # see the module docstring: the provider's redirect back is cross-site
        )
        return response

    @app.get(
        CALLBACK,
        tags=["auth"],
        summary="Where the provider sends the browser back: completes the SSO sign-in",
        responses={200: {"description": "signed in: a page that moves on to the console, or JSON"}},
    )
    async def oidc_callback(
        request: Request,
        code: str | None = Query(None, max_length=4096),
        state: str | None = Query(None, max_length=512),
        error: str | None = Query(None, max_length=256),
        iss: str | None = Query(None, max_length=2048, description="RFC 9207"),
    ) -> Response:
        s = need()
        ip = _ip(request)
        if plane.over_ip_limit(ip):
            limited = _fail(
                429,
                "admin_rate_limited",
                "Too many sign-in attempts from this address.",
                {"retry-after": str(int(settings.ip_window))},
            )
            return clear_flow(limited)
        try:
            reply = await _complete(s, request, code=code, state=state, error=error, iss=iss)
        except SsoFailed as exc:
            reply = refused(request, exc)
        return clear_flow(reply)

    async def _complete(
        s: _Sso, request: Request, *, code: str | None, state: str | None, error: str | None, iss: str | None
    ) -> Response:
        plane.need()  # 409 before any work when the store or the pepper is missing
        ip = _ip(request)
        now = plane.clock()
        flow = s.seal.open(request.cookies.get(flow_cookie), now)
        if not state_matches(flow, state):
            raise SsoFailed("state_mismatch")  # RFC 6749 §10.12: not this browser's flow
        try:
            first = await s.replay.first_seen(
                replay_key(flow), flow.started_at + s.settings.flow_timeout, now
            )
        except StateUnavailable:
            raise SsoFailed("state_unavailable") from None
        if not first:
            raise SsoFailed("state_reused")
        if error is not None:
            raise SsoFailed("idp_error", data={"error": safe_error(error)})
        meta = await s.provider.metadata()
        if (iss is not None or meta.iss_parameter) and iss != meta.issuer:
            raise SsoFailed("issuer_mismatch")  # RFC 9207 §2.4
        if not code:
            raise SsoFailed("no_code")
        id_token = await s.provider.exchange(meta, code, flow.verifier)
        claims = await s.provider.verify(id_token, flow.nonce)
        identity = read_identity(claims, s.settings)
        role, matched = map_role(identity.groups, s.settings.role_map, s.settings.default_role)
        row, created, previous = await anyio.to_thread.run_sync(s.accounts.resolve, identity, role)
        stage, mfa_at = sign_in_stage(
            identity, has_totp=row["totp_secret"] is not None, require_mfa=settings.require_mfa, now=now
        )
        emit(
            "admin_auth.sso_succeeded",
            severity="notice",
            actor=f"admin:{row['name']}",
            source_ip=ip,
            data={
                "issuer": identity.issuer,
                "role": row["role"],
                "groups": matched[:20],
                "created": created,
                "previous_role": previous,
                "idp_mfa": identity.idp_mfa,
                "next": stage,
            },
        )
        session_id = await anyio.to_thread.run_sync(
            lambda: plane.start_session(
                row,
                stage,
                source_ip=ip,
                method="sso",
                signed_in_method="sso:idp_mfa" if identity.idp_mfa else "sso",
                mfa_at=mfa_at,
            )
        )
        return _signed_in(request, session_id, stage, row)

    def _signed_in(request: Request, session_id: str, stage: str, row: Any) -> Response:
        _, sessions = plane.need()
        accept = request.headers.get("accept", "")
        response: Response
        if "application/json" in accept and "text/html" not in accept:
            body = {
                "stage": stage,
                "csrf_token": sessions.csrf_token(session_id),
                "admin": {"name": row["name"], "role": row["role"]},
            }
            response = JSONResponse(body, headers={"cache-control": "no-store"})
        else:
            target = _NEXT[stage]  # a fixed path, never anything from the request
            page = (
                '<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="refresh" content="0;url={target}"><title>Bastion: signed in</title>'
                f'</head><body><p><a href="{target}">Continue</a></p></body></html>'
            )
            response = HTMLResponse(page, headers=_PAGE_HEADERS)
        plane.set_session_cookie(response, session_id)
        return response
