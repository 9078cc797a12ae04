"""The web console: server-rendered pages under ``/console`` on the admin listener (the start of it: sign-in
with MFA, TOTP enrolment, and the API keys page).

The same principals, roles and sessions as the admin API (``admin_auth``): the guard in ``admin.py`` checks
every page against its policy, and sends a browser without a session to the sign-in page. Pages are Jinja2
with autoescaping; every response carries a strict Content-Security-Policy with no script source at all
(``default-src 'none'``), ``frame-ancestors 'none'`` and ``form-action 'self'``, and ``no-store``.

CSRF: forms cannot send the ``X-CSRF-Token`` header, so console forms carry the token in a hidden
``csrf_token`` field and each handler checks it (the guard leaves form routes to them: ``Policy.form``).
Signed in, the token is the session's; before sign-in, a random token in a ``SameSite=Strict`` cookie that
the form must repeat (double submit), so a cross-site form cannot sign anyone in.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...identity.admins import SignInFailed, role_rank
from ...identity.manage import IdentityAdmin, IdentityError
from ..admin_auth import AdminPlane, Policy, Principal
from .templates import CSS, environment

__all__ = ["CONSOLE_POLICIES", "add_console_routes", "security_headers"]

C = "/console"
PRE_CSRF_COOKIE = "bastion_console_csrf"
MAX_FORM = 8 * 1024

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def security_headers() -> dict[str, str]:
    return {
        "content-security-policy": CSP,
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
    }


_PAGE = Policy("viewer", page=True)
CONSOLE_POLICIES: dict[tuple[str, str], Policy] = {
    ("GET", f"{C}/"): Policy("public", page=True),
    ("GET", f"{C}/static/console.css"): Policy("public", page=True),
    ("GET", f"{C}/sign-in"): Policy("public", page=True),
    ("POST", f"{C}/sign-in"): Policy("public", page=True, form=True),
    ("GET", f"{C}/mfa"): Policy("partial", page=True),
    ("POST", f"{C}/mfa"): Policy("partial", page=True, form=True),
    ("GET", f"{C}/enrol"): Policy("partial", page=True),
    ("POST", f"{C}/enrol"): Policy("partial", page=True, form=True),
    ("POST", f"{C}/sign-out"): Policy("partial", page=True, form=True),
    ("GET", f"{C}/keys"): _PAGE,
    ("POST", C + "/keys/{key_id}/revoke"): Policy("operator", page=True, form=True),
}


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form, bounded; one value per field (the first)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items()}


def add_console_routes(app: FastAPI, plane: AdminPlane, identity: IdentityAdmin | None) -> None:
    env = environment()
    settings = plane.settings

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("who", None)
        context.setdefault("csrf_token", "")
        context.setdefault("error", "")
        html = env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=security_headers())

    def go(path: str) -> RedirectResponse:
        return RedirectResponse(path, status_code=303, headers=security_headers())

    def principal(request: Request) -> Principal | None:
        return request.scope.get("bastion.admin")

    def session_csrf(request: Request) -> str:
        p = principal(request)
        if p is None or p.session_id is None or plane.sessions is None:
            return ""
        return plane.sessions.csrf_token(p.session_id)

    def csrf_ok(form: dict[str, str], expected: str) -> bool:
        return bool(expected) and hmac.compare_digest(form.get("csrf_token", "").encode(), expected.encode())

    def ip(request: Request) -> str:
        client = request.scope.get("client") or ("", 0)
        return str(client[0])

    def with_session(response: Response, session_id: str) -> Response:
        response.set_cookie(
            plane.cookie_name,
            session_id,
            max_age=int(settings.session_max),
            path="/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(PRE_CSRF_COOKIE, path=f"{C}/", samesite="strict")
        return response

    def who(request: Request) -> dict[str, str] | None:
        p = principal(request)
        if p is None or p.session is None:
            return None
        return {"name": p.session.name, "role": p.session.role}

    @app.get(f"{C}/", include_in_schema=False)
    def home() -> Response:
        return go(f"{C}/keys")

    @app.get(f"{C}/static/console.css", include_in_schema=False)
    def stylesheet() -> Response:
        return Response(CSS, media_type="text/css", headers=security_headers())

    @app.get(f"{C}/sign-in", include_in_schema=False)
    def sign_in_page() -> Response:
        token = secrets.token_urlsafe(32)
        response = page("sign_in.html", csrf_token=token, email="")
        response.set_cookie(
            PRE_CSRF_COOKIE,
            token,
            path=f"{C}/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.post(f"{C}/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        form = await _form(request)
        if not csrf_ok(form, request.cookies.get(PRE_CSRF_COOKIE, "")):
            return page(
                "sign_in.html", 403, csrf_token="", email="", error="The form expired; reload the page."
            )
        accounts, sessions = plane.need()
        if not plane.ip_attempt(ip(request)):
            return page(
                "sign_in.html",
                429,
                csrf_token=form["csrf_token"],
                email="",
                error="Too many attempts from this address; try later.",
            )
        email = form.get("email", "")[:254]
        try:
            row = await anyio.to_thread.run_sync(
                lambda: accounts.sign_in_password(
                    email, form.get("password", "")[:1024], source_ip=ip(request)
                )
            )
        except SignInFailed:
            return page(
                "sign_in.html",
                401,
                csrf_token=form["csrf_token"],
                email=email,
                error="The sign-in did not succeed.",
            )
        stage = "mfa" if row["totp_secret"] is not None else ("enrol" if settings.require_mfa else "full")
        if stage == "full":
            accounts.signed_in(row, source_ip=ip(request), method="password")
        session_id = sessions.create(row["id"], stage, source_ip=ip(request))
        target = {"mfa": f"{C}/mfa", "enrol": f"{C}/enrol", "full": f"{C}/keys"}[stage]
        return with_session(go(target), session_id)

    @app.get(f"{C}/mfa", include_in_schema=False)
    def mfa_page(request: Request) -> Response:
        p = principal(request)
        if p is None or p.session is None or p.session.stage != "mfa":
            return go(f"{C}/keys")
        return page("mfa.html", csrf_token=session_csrf(request))

    @app.post(f"{C}/mfa", include_in_schema=False)
    async def mfa(request: Request) -> Response:
        form = await _form(request)
        p = principal(request)
        if not csrf_ok(form, session_csrf(request)) or p is None or p.session is None:
            return page("mfa.html", 403, csrf_token=session_csrf(request), error="The form expired.")
        if p.session.stage != "mfa":
            return go(f"{C}/keys")
        accounts, sessions = plane.need()
        code = form.get("code", "").strip()[:32]
        totp = code.isdigit() and len(code) == 6
        try:
            factor = accounts.verify_second_factor(
                p.session.admin_id,
                code=code if totp else None,
                recovery_code=None if totp else code,
                source_ip=ip(request),
            )
        except SignInFailed:
            if sessions.lookup(p.session_id or "", touch=False) is None:  # locked: the session is gone
                return go(f"{C}/sign-in")
            return page("mfa.html", 401, csrf_token=session_csrf(request), error="The code is not valid.")
        row = accounts.account_for_sign_in(p.session.admin_id, source_ip=ip(request), method=factor)
        accounts.signed_in(row, source_ip=ip(request), method=f"mfa:{factor}")
        new_id = sessions.advance(p.session, "full", mfa_at=plane.clock(), source_ip=ip(request))
        return with_session(go(f"{C}/keys"), new_id)

    @app.get(f"{C}/enrol", include_in_schema=False)
    def enrol_page(request: Request) -> Response:
        p = principal(request)
        if p is None or p.session is None or p.session.has_mfa or p.session.stage == "mfa":
            return go(f"{C}/keys")
        accounts, _ = plane.need()
        enrolment = accounts.begin_totp(p.session.admin_id)
        return page(
            "enrol.html",
            csrf_token=session_csrf(request),
            who=who(request) if p.session.stage == "full" else None,
            qr_svg=enrolment.qr_svg,
            otpauth_uri=enrolment.otpauth_uri,
        )

    @app.post(f"{C}/enrol", include_in_schema=False)
    async def enrol(request: Request) -> Response:
        form = await _form(request)
        p = principal(request)
        if not csrf_ok(form, session_csrf(request)) or p is None or p.session is None:
            return go(f"{C}/sign-in")
        accounts, sessions = plane.need()
        try:
            codes = accounts.confirm_totp(
                p.session.admin_id, form.get("code", "")[:16], actor=p.actor, source_ip=ip(request)
            )
        except (SignInFailed, IdentityError):
            return go(f"{C}/enrol")  # a fresh secret and QR code; the failure is counted and logged
        row = accounts.account_for_sign_in(p.session.admin_id, source_ip=ip(request), method="totp")
        if p.session.stage == "enrol":
            accounts.signed_in(row, source_ip=ip(request), method="mfa:enrolment")
        new_id = sessions.advance(p.session, "full", mfa_at=plane.clock(), source_ip=ip(request))
        response = page(
            "recovery.html",
            codes=codes,
            who={"name": row["name"], "role": row["role"]},
            csrf_token=sessions.csrf_token(new_id),
        )
        return with_session(response, new_id)

    @app.post(f"{C}/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        form = await _form(request)
        p = principal(request)
        if not csrf_ok(form, session_csrf(request)) or p is None or p.session is None:
            return go(f"{C}/keys")  # not from our own form: nothing happens
        accounts, sessions = plane.need()
        sessions.end(p.session)
        accounts.emit("admin_auth.signed_out", severity="info", actor=p.actor, source_ip=ip(request))
        response = go(f"{C}/sign-in")
        response.delete_cookie(
            plane.cookie_name, path="/", secure=settings.cookie_secure, httponly=True, samesite="strict"
        )
        return response

    @app.get(f"{C}/keys", include_in_schema=False)
    def keys_page(request: Request) -> Response:
        p = principal(request)
        rows = identity.list_keys() if identity is not None else []
        can_revoke = p is not None and role_rank(p.role) >= role_rank("operator")
        message = request.query_params.get("revoked")
        return page(
            "keys.html",
            keys=rows,
            who=who(request),
            csrf_token=session_csrf(request),
            can_revoke=can_revoke,
            message=f"Key {message} revoked." if message and message.isalnum() and len(message) <= 16 else "",
        )

    @app.post(C + "/keys/{key_id}/revoke", include_in_schema=False)
    async def revoke(key_id: str, request: Request) -> Response:
        form = await _form(request)
        p = principal(request)
        if not csrf_ok(form, session_csrf(request)) or p is None:
            return HTMLResponse(
                "The form expired; reload the page.", status_code=403, headers=security_headers()
            )
        if identity is None:
            raise IdentityError(409, "identity_unavailable", "identity management needs the store")
        await anyio.to_thread.run_sync(lambda: identity.revoke_key(key_id, actor=p.actor))
        return go(f"{C}/keys?revoked={key_id}" if key_id.isalnum() else f"{C}/keys")
