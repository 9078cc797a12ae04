"""Signing in to the console: password, or a code emailed to the person (or the link in the same email),
then the TOTP or a recovery code (or TOTP enrolment), sign-out, and step-up (a fresh second factor before
a sensitive action).

Before sign-in there is no session to hold a CSRF token, so every sign-in form repeats a random token that
is also in a ``SameSite=Strict`` cookie (double submit): a cross-site form cannot sign anyone in. Each
completed step issues a new session id (``AdminSessions.advance``).

The emailed link opens ``GET /console/sign-in/link?token=…``, which only shows a page: mail scanners and
link previews fetch links, so a GET must not spend the token or sign anyone in. The page's button posts
the token with a double-submit token, and only that POST checks it (per client address limits, events).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...identity.admin_codes import CodeLimited, SignInCodes, link_token_shape
from ...identity.admins import SignInFailed
from ...identity.manage import IdentityError
from .web import SLUGS, Console

__all__ = ["PRE_CSRF_COOKIE", "add_sign_in_routes"]

C = "/console"
PRE_CSRF_COOKIE = "bastion_console_csrf"
LANDING = f"{C}/keys"  # where a completed sign-in goes


def _factor(code: str) -> tuple[str | None, str | None]:
    """(TOTP code, recovery code): six digits are a TOTP code, anything else a recovery code."""
    code = code.strip()[:32]
    return (code, None) if code.isdigit() and len(code) == 6 else (None, code)


def add_sign_in_routes(app: FastAPI, console: Console) -> None:
    plane = console.plane
    settings = plane.settings
    ip = console.ip

    def with_session(response: Response, session_id: str) -> Response:
        plane.set_session_cookie(response, session_id)
        response.delete_cookie(PRE_CSRF_COOKIE, path=f"{C}/", samesite="strict")
        return response

    def passwordless() -> bool:
        return plane.codes is not None and plane.codes.enabled

    def links() -> bool:
        return plane.codes is not None and plane.codes.enabled and plane.codes.link_base is not None

    def sign_in_form(status: int, token: str, email: str = "", error: str = "") -> Response:
        # The SSO link only when admin.accounts.sso is configured (getattr: the setting may not exist).
        sso = getattr(settings, "sso", None) is not None
        return console.render(
            None,
            "sign_in.html",
            status,
            csrf_token=token,
            email=email,
            error=error,
            sso=sso,
            passwordless=passwordless(),
        )

    def code_form(status: int, token: str, email: str, error: str = "") -> Response:
        return console.render(
            None, "sign_in_code.html", status, csrf_token=token, email=email, error=error, link=links()
        )

    def link_page(status: int, token: str = "", link_token: str = "", error: str = "") -> Response:
        return console.render(
            None, "sign_in_link.html", status, csrf_token=token, token=link_token, error=error
        )

    def pre_csrf(response: Response, token: str) -> Response:
        response.set_cookie(
            PRE_CSRF_COOKIE,
            token,
            path=f"{C}/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite="strict",
        )
        return response

    def double_submit(form: dict[str, str], request: Request) -> bool:
        return console.csrf_ok(form, request.cookies.get(PRE_CSRF_COOKIE, ""))

    def over_limit(request: Request) -> bool:
        """Count a sign-in attempt from this client address; True (and an event) beyond ``ip_attempts``."""
        return plane.over_ip_limit(ip(request), {"console": True})

    async def email_form(request: Request) -> tuple[dict[str, str], SignInCodes, str] | Response:
        """A passwordless sign-in form: its double-submit token checked, sign-in by email configured, and
        the address typed; or the sign-in page saying why not."""
        form = await console.read_form(request)
        if not double_submit(form, request):
            return sign_in_form(403, "", error="The form expired; reload the page.")
        codes = plane.codes
        if codes is None or not codes.enabled:
            return sign_in_form(404, form["csrf_token"], error="Sign-in by email is not configured.")
        return form, codes, form.get("email", "").strip()[:254]

    async def begin(request: Request, row: Any, method: str) -> Response:
        """The first factor passed: a session at the stage the account needs next, and on to that page."""
        stage = plane.first_factor_stage(row)
        session_id = await console.run(
            lambda: plane.start_session(
                row, stage, source_ip=ip(request), method=method, data={"console": True}
            )
        )
        target = {"mfa": f"{C}/mfa", "enrol": f"{C}/enrol", "full": LANDING}[stage]
        return with_session(console.go(target), session_id)

    @app.get(f"{C}/sign-in", include_in_schema=False)
    def sign_in_page() -> Response:
        token = secrets.token_urlsafe(32)
        return pre_csrf(sign_in_form(200, token), token)

    @app.post(f"{C}/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        form = await console.read_form(request)
        if not double_submit(form, request):
            return sign_in_form(403, "", error="The form expired; reload the page.")
        accounts, _ = plane.need()
        if not plane.ip_attempt(ip(request)):
            return sign_in_form(
                429, form["csrf_token"], error="Too many attempts from this address; try later."
            )
        email = form.get("email", "")[:254]
        password = form.get("password", "")[:1024]
        try:
            row = await console.run(lambda: accounts.sign_in_password(email, password, source_ip=ip(request)))
        except SignInFailed:
            return sign_in_form(401, form["csrf_token"], email=email, error="The sign-in did not succeed.")
        return await begin(request, row, "password")

    # -- passwordless: a code by email, or the link in the same email --------------------------------------

    @app.post(f"{C}/sign-in/email", include_in_schema=False)
    async def email_code(request: Request) -> Response:
        """Email a code (and a link): the same page for every address, known or not."""
        got = await email_form(request)
        if isinstance(got, Response):
            return got
        form, codes, email = got
        try:
            await console.run(lambda: codes.request(email, source_ip=ip(request)))
        except CodeLimited:
            return sign_in_form(
                429, form["csrf_token"], email=email, error="Too many codes asked for; try later."
            )
        return code_form(200, form["csrf_token"], email)

    @app.post(f"{C}/sign-in/code", include_in_schema=False)
    async def email_code_verify(request: Request) -> Response:
        got = await email_form(request)
        if isinstance(got, Response):
            return got
        form, codes, email = got
        if over_limit(request):
            return code_form(
                429, form["csrf_token"], email, "Too many attempts from this address; try later."
            )
        code = form.get("code", "").strip()[:16]
        try:
            row = await console.run(lambda: codes.verify(email, code, source_ip=ip(request)))
        except SignInFailed:
            return code_form(401, form["csrf_token"], email, "The code is not valid, or it has expired.")
        return await begin(request, row, "email_code")

    @app.get(f"{C}/sign-in/link", include_in_schema=False)
    def link_landing(request: Request) -> Response:
        """Only a page with a button: nothing is looked up or spent here (link scanners fetch links)."""
        token = request.query_params.get("token", "")[:128]
        if not links() or not link_token_shape(token):
            return link_page(404, error="This sign-in link is not valid.")
        csrf = secrets.token_urlsafe(32)
        return pre_csrf(link_page(200, csrf, token), csrf)

    @app.post(f"{C}/sign-in/link", include_in_schema=False)
    async def link_sign_in(request: Request) -> Response:
        form = await console.read_form(request)
        if not double_submit(form, request):
            return link_page(403, error="The form expired: open the link from the email again.")
        codes = plane.codes
        if codes is None or not links():
            return link_page(404, error="This sign-in link is not valid.")
        if over_limit(request):
            return link_page(429, error="Too many attempts from this address; try later.")
        token = form.get("token", "")[:128]
        try:
            row = await console.run(lambda: codes.verify_link(token, source_ip=ip(request)))
        except SignInFailed:
            return link_page(401, error="This sign-in link has expired or was already used.")
        return await begin(request, row, "email_link")

    @app.get(f"{C}/mfa", include_in_schema=False)
    def mfa_page(request: Request) -> Response:
        p = console.principal(request)
        if p is None or p.session is None or p.session.stage != "mfa":
            return console.go(LANDING)
        return console.render(request, "mfa.html", csrf_token=console.csrf_token(request))

    @app.post(f"{C}/mfa", include_in_schema=False)
    async def mfa(request: Request) -> Response:
        form = await console.read_form(request)
        p = console.principal(request)
        token = console.csrf_token(request)
        if not console.csrf_ok(form, token) or p is None or p.session is None:
            return console.render(request, "mfa.html", 403, csrf_token=token, error="The form expired.")
        session = p.session
        if session.stage != "mfa":
            return console.go(LANDING)
        accounts, sessions = plane.need()
        if not plane.ip_attempt(ip(request)):
            return console.render(
                request, "mfa.html", 429, csrf_token=token, error="Too many attempts from this address."
            )
        totp, recovery = _factor(form.get("code", ""))
        try:
            factor = await console.run(
                lambda: accounts.verify_second_factor(
                    session.admin_id, code=totp, recovery_code=recovery, source_ip=ip(request)
                )
            )
        except SignInFailed:
            if sessions.lookup(p.session_id or "", touch=False) is None:  # locked: the session is gone
                return console.go(f"{C}/sign-in")
            return console.render(request, "mfa.html", 401, csrf_token=token, error="The code is not valid.")

        def finish() -> str:
            row = accounts.account_for_sign_in(session.admin_id, source_ip=ip(request), method=factor)
            accounts.signed_in(row, source_ip=ip(request), method=f"mfa:{factor}")
            return sessions.advance(session, "full", mfa_at=plane.clock(), source_ip=ip(request))

        return with_session(console.go(LANDING), await console.run(finish))

    @app.get(f"{C}/enrol", include_in_schema=False)
    def enrol_page(request: Request) -> Response:
        p = console.principal(request)
        if p is None or p.session is None or p.session.has_mfa or p.session.stage == "mfa":
            return console.go(LANDING)
        accounts, _ = plane.need()
        enrolment = accounts.begin_totp(p.session.admin_id)
        return console.render(
            request,
            "enrol.html",
            csrf_token=console.csrf_token(request),
            qr_svg=enrolment.qr_svg,
            otpauth_uri=enrolment.otpauth_uri,
        )

    @app.post(f"{C}/enrol", include_in_schema=False)
    async def enrol(request: Request) -> Response:
        form = await console.read_form(request)
        p = console.principal(request)
        if not console.csrf_ok(form, console.csrf_token(request)) or p is None or p.session is None:
            return console.go(f"{C}/sign-in")
        session = p.session
        accounts, sessions = plane.need()
        try:
            codes = await console.run(
                lambda: accounts.confirm_totp(
                    session.admin_id, form.get("code", "")[:16], actor=p.actor, source_ip=ip(request)
                )
            )
        except (SignInFailed, IdentityError):
            return console.go(f"{C}/enrol")  # a fresh secret and QR code; the failure is counted and logged

        def finish() -> tuple[dict[str, str], str]:
            row = accounts.account_for_sign_in(session.admin_id, source_ip=ip(request), method="totp")
            if session.stage == "enrol":
                accounts.signed_in(row, source_ip=ip(request), method="mfa:enrolment")
            new_id = sessions.advance(session, "full", mfa_at=plane.clock(), source_ip=ip(request))
            return {"name": row["name"], "role": row["role"]}, new_id

        who, new_id = await console.run(finish)
        response = console.render(
            None, "recovery.html", codes=codes, who=who, csrf_token=sessions.csrf_token(new_id)
        )
        return with_session(response, new_id)

    @app.post(f"{C}/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        form = await console.read_form(request)
        p = console.principal(request)
        if not console.csrf_ok(form, console.csrf_token(request)) or p is None or p.session is None:
            return console.go(LANDING)  # not from our own form: nothing happens
        accounts, sessions = plane.need()
        session = p.session
        await console.run(lambda: sessions.end(session))
        accounts.emit("admin_auth.signed_out", severity="info", actor=p.actor, source_ip=ip(request))
        response = console.go(f"{C}/sign-in")
        plane.clear_session_cookie(response)
        return response

    def back_of(value: str) -> str:
        return value if value in SLUGS else "overview"

    @app.get(f"{C}/step-up", include_in_schema=False)
    def step_up_page(request: Request) -> Response:
        back = back_of(request.query_params.get("back", ""))
        return console.render(request, "step_up.html", section=back, take_notes=False, back=back)

    @app.post(f"{C}/step-up", include_in_schema=False)
    async def step_up(request: Request) -> Response:
        form = await console.form(request)
        if form is None:
            return console.expired(request)
        back = back_of(form.get("back", ""))
        p = console.principal(request)
        if p is None or p.session is None:
            return console.go(f"{C}/{back}")  # the bearer token needs no step-up
        session = p.session
        accounts, sessions = plane.need()

        def again(status: int, error: str) -> Response:
            return console.render(
                request, "step_up.html", status, section=back, take_notes=False, back=back, error=error
            )

        if not session.has_mfa:
            return again(409, "This account has no second factor yet: sign out and enrol one at sign-in.")
        if not plane.ip_attempt(ip(request)):
            return again(429, "Too many attempts from this address; try later.")
        totp, recovery = _factor(form.get("code", ""))
        try:
            await console.run(
                lambda: accounts.verify_second_factor(
                    session.admin_id, code=totp, recovery_code=recovery, source_ip=ip(request)
                )
            )
        except SignInFailed:
            if sessions.lookup(p.session_id or "", touch=False) is None:  # locked: the session is gone
                return console.go(f"{C}/sign-in")
            return again(401, "The code is not valid.")
        await console.run(lambda: sessions.stepped_up(session))
        accounts.emit("admin_auth.stepped_up", severity="info", actor=session.actor, source_ip=ip(request))
        console.note(request, back, message="Confirmed. You can do it now.")
        return console.go(f"{C}/{back}")
