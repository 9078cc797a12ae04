"""Who may call which admin route: admin accounts, sessions, roles, CSRF and step-up.

Theory of operation
-------------------
Every route of the admin app has a :class:`Policy` (``ROUTE_POLICIES`` here and in
``admin_identity.IDENTITY_POLICIES``): the least role that may call it, or ``public`` (no principal: health
and the sign-in steps) or ``partial`` (a session that has passed the first factor but not yet MFA). A route
without a policy makes :func:`check_policies` fail when the app is built, so none can be forgotten; the
guard in ``admin.py`` enforces the policy before the app sees the request.

Principals: the bearer ``admin.token`` (role ``admin``, actor ``admin:token``, for automation; refused when
``admin.token_enabled`` is false) or a session cookie of an admin account (actor ``admin:<name>``). A
cookie-authenticated request that changes state must carry the session's CSRF token in ``X-CSRF-Token``
(a synchronizer token: an HMAC of the session id, returned by every sign-in step and by ``GET
/admin/v1/auth/session``). Sensitive routes need the session's last second factor to be recent
(``step_up_within``); the token is exempt (it has no second factor; disable it to require one).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..config.models import AdminAccountSettings
from ..core.problem import problem_body
from ..identity.admin_codes import CodeLimited, SignInCodes
from ..identity.admin_sessions import AdminSessions, Session
from ..identity.admins import ROLES, AdminAccounts, SignInFailed
from ..identity.manage import IdentityError

__all__ = [
    "ROUTE_POLICIES",
    "AdminPlane",
    "Policy",
    "Principal",
    "add_auth_routes",
    "check_policies",
]

PREFIX = "/admin/v1"
LEVELS = ("public", "partial", *ROLES)


@dataclass(frozen=True, slots=True)
class Policy:
    level: str  # public | partial | viewer | operator | admin
    sensitive: bool = False  # needs a recent second factor (step-up)
    page: bool = False  # a console page: a browser without a session is sent to the sign-in page
    form: bool = False  # takes an HTML form; its handler checks the form's csrf_token field


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # token | session
    actor: str
    role: str
    session: Session | None = None
    session_id: str | None = None


PUBLIC = Policy("public")
PARTIAL = Policy("partial")
VIEWER = Policy("viewer")
OPERATOR = Policy("operator")
ADMIN_SENSITIVE = Policy("admin", sensitive=True)

# (method, route path) -> policy, for the routes of admin.py and this module.
ROUTE_POLICIES: dict[tuple[str, str], Policy] = {
    ("GET", f"{PREFIX}/health"): PUBLIC,
    ("GET", f"{PREFIX}/status"): VIEWER,
    ("GET", f"{PREFIX}/events"): VIEWER,
    # Everything the event log holds at once (addresses, actors, paths): operators, with step-up.
    ("GET", f"{PREFIX}/events/export"): Policy("operator", sensitive=True),
    ("GET", PREFIX + "/events/{event_id}"): VIEWER,
    ("GET", f"{PREFIX}/inventory"): VIEWER,
    ("GET", f"{PREFIX}/openapi.json"): VIEWER,
    ("GET", "/metrics"): VIEWER,
    # signing in
    ("POST", f"{PREFIX}/auth/login"): PUBLIC,
    ("POST", f"{PREFIX}/auth/email/start"): PUBLIC,
    ("POST", f"{PREFIX}/auth/email/verify"): PUBLIC,
    ("POST", f"{PREFIX}/auth/mfa"): PARTIAL,
    ("POST", f"{PREFIX}/auth/mfa/totp"): PARTIAL,
    ("POST", f"{PREFIX}/auth/mfa/totp/confirm"): PARTIAL,
    ("GET", f"{PREFIX}/auth/session"): PARTIAL,
    ("POST", f"{PREFIX}/auth/logout"): PARTIAL,
    ("POST", f"{PREFIX}/auth/step-up"): VIEWER,
    ("POST", f"{PREFIX}/auth/recovery-codes"): Policy("viewer", sensitive=True),
    ("POST", f"{PREFIX}/auth/password"): Policy("viewer", sensitive=True),
    # admin accounts
    ("GET", f"{PREFIX}/admins"): VIEWER,
    ("GET", PREFIX + "/admins/{name}"): VIEWER,
    ("POST", f"{PREFIX}/admins"): ADMIN_SENSITIVE,
    ("POST", PREFIX + "/admins/{name}/disable"): ADMIN_SENSITIVE,
    ("POST", PREFIX + "/admins/{name}/enable"): ADMIN_SENSITIVE,
    ("PUT", PREFIX + "/admins/{name}/role"): ADMIN_SENSITIVE,
    ("POST", PREFIX + "/admins/{name}/reset-mfa"): ADMIN_SENSITIVE,
}


def check_policies(app: FastAPI, policies: dict[tuple[str, str], Policy]) -> None:
    """Every method of every route has a policy, and every policy a route (RuntimeError otherwise)."""
    seen = set()
    for route in app.routes:
        path = getattr(route, "path", None)
        for method in getattr(route, "methods", None) or ():
            if method == "HEAD":
                continue  # answered like its GET
            key = (method, path)
            if key not in policies:
                raise RuntimeError(f"admin route {method} {path} has no access policy")
            if policies[key].level not in LEVELS:
                raise RuntimeError(f"admin route {method} {path}: unknown level {policies[key].level}")
            seen.add(key)
    extra = {k for k in policies if k not in seen and k[1] != "/metrics"}
    if extra:
        raise RuntimeError(f"access policies for routes that do not exist: {sorted(extra)}")


# -- request bodies ------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_Body):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class EmailStartIn(_Body):
    email: str = Field(max_length=254)


class EmailVerifyIn(_Body):
    email: str = Field(max_length=254)
    code: str = Field(max_length=16)


class FactorIn(_Body):
    code: str | None = Field(None, max_length=16, description="a TOTP code")
    recovery_code: str | None = Field(None, max_length=32)


class CodeIn(_Body):
    code: str = Field(max_length=16)


class PasswordIn(_Body):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class AdminIn(_Body):
    name: str = Field(max_length=64)
    email: str = Field(max_length=254)
    role: str = Field(max_length=16, description="viewer | operator | admin")
    password: str | None = Field(
        None, max_length=1024, description="omitted: one is generated and returned once"
    )
    passwordless: bool = Field(False, description="no password: signs in with email codes only")


class RoleIn(_Body):
    role: str = Field(max_length=16)


# -- the plane ------------------------------------------------------------------------------------------


class AdminPlane:
    """The admin-account services of one admin app, or none (no store or no pepper)."""

    def __init__(
        self,
        accounts: AdminAccounts | None,
        sessions: AdminSessions | None,
        codes: SignInCodes | None,
        settings: AdminAccountSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self.sessions = sessions
        self.codes = codes
        self.settings = settings
        self.clock = clock
        self.cookie_name = "__Host-bastion_admin" if settings.cookie_secure else "bastion_admin"
        # Sign-in attempts per client address (this process; the per-account lockout is in the store).
        self._ip_attempts: dict[str, tuple[float, int]] = {}
        self._ip_lock = threading.Lock()  # handlers run in FastAPI's thread pool

    def need(self) -> tuple[AdminAccounts, AdminSessions]:
        if self.accounts is None or self.sessions is None:
            raise IdentityError(
                409, "admin_accounts_unavailable", "admin accounts need the store and identity.pepper"
            )
        return self.accounts, self.sessions

    def ip_attempt(self, ip: str) -> bool:
        """Count a sign-in attempt from ``ip``; False when over ``ip_attempts`` per ``ip_window``."""
        now = self.clock()
        with self._ip_lock:
            start, count = self._ip_attempts.get(ip, (now, 0))
            if now - start > self.settings.ip_window:
                start, count = now, 0
            if len(self._ip_attempts) > 50_000:  # bounded: forget the oldest windows
                for key in sorted(self._ip_attempts, key=lambda k: self._ip_attempts[k][0])[:10_000]:
                    del self._ip_attempts[key]
            self._ip_attempts[ip] = (start, count + 1)
        return count + 1 <= self.settings.ip_attempts

    def over_ip_limit(self, ip: str, data: dict[str, Any] | None = None) -> bool:
        """Count a sign-in attempt from ``ip``; True, and an ``admin_auth.ip_limited`` event (with ``data``
        when given), beyond ``ip_attempts`` per ``ip_window``."""
        if self.ip_attempt(ip):
            return False
        if self.accounts is not None:
            extra = {"data": data} if data is not None else {}
            self.accounts.emit(
                "admin_auth.ip_limited",
                severity="warning",
                source_ip=ip,
                reason="admin_rate_limited",
                **extra,
            )
        return True

    def session_from_cookie(self, cookie: str | None) -> tuple[Session, str] | None:
        if cookie is None or self.sessions is None:
            return None
        found = self.sessions.lookup(cookie)
        return (found, cookie) if found is not None else None

    # Starting a session and its cookie live here once, for the admin API, SSO and the console alike.

    def first_factor_stage(self, row: Any) -> str:
        """The stage a first factor (password, email code or link) reaches: the TOTP when the account has
        one, else its enrolment when ``require_mfa`` is on, else a full session."""
        if row["totp_secret"] is not None:
            return "mfa"
        return "enrol" if self.settings.require_mfa else "full"

    def start_session(
        self,
        row: Any,
        stage: str,
        *,
        source_ip: str,
        method: str,
        signed_in_method: str | None = None,
        mfa_at: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        """A first factor passed: record the sign-in (a full session, as ``signed_in_method`` or ``method``)
        or the step passed (``admin_auth.first_factor_passed``, with ``data`` added), and return the new
        session id at ``stage``. Blocking (database calls): call it from a worker thread."""
        accounts, sessions = self.need()
        if stage == "full":
            accounts.signed_in(row, source_ip=source_ip, method=signed_in_method or method)
        else:
            accounts.emit(
                "admin_auth.first_factor_passed",
                severity="info",
                actor=f"admin:{row['name']}",
                source_ip=source_ip,
                data={"method": method, "next": stage, **(data or {})},
            )
        return sessions.create(row["id"], stage, source_ip=source_ip, mfa_at=mfa_at)

    def set_session_cookie(self, response: Response, session_id: str) -> None:
        """The session cookie: ``HttpOnly``, ``SameSite=Strict``, ``Secure`` unless ``cookie_secure`` is
        off (loopback only), ``Path=/`` and ``Max-Age`` of ``session_max``."""
        response.set_cookie(
            self.cookie_name,
            session_id,
            max_age=int(self.settings.session_max),
            path="/",
            secure=self.settings.cookie_secure,
            httponly=True,
            samesite="strict",
        )

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(
            self.cookie_name, path="/", secure=self.settings.cookie_secure, httponly=True, samesite="strict"
        )


def _principal(request: Request) -> Principal | None:
    return request.scope.get("bastion.admin")


def actor_of(request: Request) -> str:
    principal = _principal(request)
    return principal.actor if principal is not None else "admin:token"


def _ip(request: Request) -> str:
    client = request.scope.get("client") or ("", 0)
    return str(client[0])


def _fail(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        json.loads(problem_body(status, code, detail)),
        status_code=status,
        media_type="application/problem+json",
        headers={"cache-control": "no-store", **(headers or {})},
    )


SIGN_IN_FAILED = "The sign-in did not succeed."


def add_auth_routes(app: FastAPI, plane: AdminPlane) -> None:
    """``/admin/v1/auth/...`` (signing in) and ``/admin/v1/admins`` (managing admin accounts)."""
    settings = plane.settings

    def _started(row: Any, request: Request, method: str) -> JSONResponse:
        """The first factor passed: a session at the stage the account needs next."""
        stage = plane.first_factor_stage(row)
        session_id = plane.start_session(row, stage, source_ip=_ip(request), method=method)
        return _session_reply(session_id, stage, row)

    def _session_reply(session_id: str, stage: str, row: Any, **extra: Any) -> JSONResponse:
        _, sessions = plane.need()
        body = {
            "stage": stage,
            "csrf_token": sessions.csrf_token(session_id),
            "admin": {"name": row["name"], "role": row["role"]},
            **extra,
        }
        response = JSONResponse(body, headers={"cache-control": "no-store"})
        plane.set_session_cookie(response, session_id)
        return response

    def _too_many(request: Request) -> JSONResponse | None:
        if not plane.over_ip_limit(_ip(request)):
            return None
        return _fail(
            429,
            "admin_rate_limited",
            "Too many sign-in attempts from this address.",
            {"retry-after": str(int(settings.ip_window))},
        )

    @app.post(f"{PREFIX}/auth/login", tags=["auth"], summary="Sign in with an email address and password")
    def login(body: LoginIn, request: Request) -> Response:
        accounts, _ = plane.need()
        limited = _too_many(request)
        if limited is not None:
            return limited
        try:
            row = accounts.sign_in_password(body.email, body.password, source_ip=_ip(request))
        except SignInFailed:
            return _fail(401, "admin_sign_in_failed", SIGN_IN_FAILED)
        return _started(row, request, "password")

    @app.post(
        f"{PREFIX}/auth/email/start",
        tags=["auth"],
        status_code=202,
        summary="Email a one-time sign-in code (the same answer for every address)",
    )
    def email_start(body: EmailStartIn, request: Request) -> Response:
        plane.need()
        if plane.codes is None or not plane.codes.enabled:
            raise IdentityError(409, "passwordless_unavailable", "admin.accounts.email is not configured")
        try:
            plane.codes.request(body.email, source_ip=_ip(request))
        except CodeLimited as exc:
            return _fail(
                429,
                "admin_rate_limited",
                "Too many sign-in codes asked for; try later.",
                {"retry-after": str(exc.retry_after)},
            )
        return JSONResponse(
            {"status": "sent if the address belongs to an active admin account"},
            status_code=202,
            headers={"cache-control": "no-store"},
        )

    @app.post(f"{PREFIX}/auth/email/verify", tags=["auth"], summary="Sign in with an emailed code")
    def email_verify(body: EmailVerifyIn, request: Request) -> Response:
        plane.need()
        if plane.codes is None or not plane.codes.enabled:
            raise IdentityError(409, "passwordless_unavailable", "admin.accounts.email is not configured")
        limited = _too_many(request)
        if limited is not None:
            return limited
        try:
            row = plane.codes.verify(body.email, body.code, source_ip=_ip(request))
        except SignInFailed:
            return _fail(401, "admin_sign_in_failed", SIGN_IN_FAILED)
        return _started(row, request, "email_code")

    def _session(request: Request) -> tuple[Principal, Session]:
        principal = _principal(request)
        if principal is None or principal.session is None or principal.session_id is None:
            raise IdentityError(409, "session_required", "this needs an admin account's session")
        return principal, principal.session

    @app.post(f"{PREFIX}/auth/mfa", tags=["auth"], summary="Complete a sign-in with a TOTP or recovery code")
    def mfa(body: FactorIn, request: Request) -> Response:
        accounts, sessions = plane.need()
        _, session = _session(request)
        if session.stage != "mfa":
            raise IdentityError(409, "wrong_stage", "this session is not waiting for a second factor")
        if (body.code is None) == (body.recovery_code is None):
            raise IdentityError(400, "invalid_request", "give either code or recovery_code")
        limited = _too_many(request)
        if limited is not None:
            return limited
        try:
            factor = accounts.verify_second_factor(
                session.admin_id, code=body.code, recovery_code=body.recovery_code, source_ip=_ip(request)
            )
        except SignInFailed:
            return _fail(401, "admin_mfa_failed", "The code is not valid.")
        row = accounts.account_for_sign_in(session.admin_id, source_ip=_ip(request), method=factor)
        accounts.signed_in(row, source_ip=_ip(request), method=f"mfa:{factor}")
        new_id = sessions.advance(session, "full", mfa_at=plane.clock(), source_ip=_ip(request))
        return _session_reply(new_id, "full", row)

    @app.post(f"{PREFIX}/auth/mfa/totp", tags=["auth"], summary="Start TOTP enrolment (URI and QR code)")
    def totp_begin(request: Request) -> Response:
        accounts, _ = plane.need()
        _, session = _session(request)
        if session.stage not in ("enrol", "full"):
            raise IdentityError(409, "wrong_stage", "complete the sign-in first")
        enrolment = accounts.begin_totp(session.admin_id)
        accounts.emit(
            "admin_account.mfa_enrolment_started",
            severity="info",
            actor=session.actor,
            resource=session.actor,
            source_ip=_ip(request),
        )
        return JSONResponse(
            {"otpauth_uri": enrolment.otpauth_uri, "qr_svg": enrolment.qr_svg},
            headers={"cache-control": "no-store"},
        )

    @app.post(
        f"{PREFIX}/auth/mfa/totp/confirm",
        tags=["auth"],
        summary="Confirm TOTP with a first code; returns recovery codes (shown once)",
    )
    def totp_confirm(body: CodeIn, request: Request) -> Response:
        accounts, sessions = plane.need()
        _, session = _session(request)
        if session.stage not in ("enrol", "full"):
            raise IdentityError(409, "wrong_stage", "complete the sign-in first")
        try:
            codes = accounts.confirm_totp(
                session.admin_id, body.code, actor=session.actor, source_ip=_ip(request)
            )
        except SignInFailed:
            return _fail(401, "admin_mfa_failed", "The code is not valid.")
        row = accounts.account_for_sign_in(session.admin_id, source_ip=_ip(request), method="totp")
        if session.stage == "enrol":
            accounts.signed_in(row, source_ip=_ip(request), method="mfa:enrolment")
        new_id = sessions.advance(session, "full", mfa_at=plane.clock(), source_ip=_ip(request))
        return _session_reply(new_id, "full", row, recovery_codes=codes)

    @app.get(f"{PREFIX}/auth/session", tags=["auth"], summary="The caller: principal, role, session")
    def who(request: Request) -> Response:
        principal = _principal(request)
        if principal is None:  # not reachable through the guard
            raise IdentityError(401, "admin_unauthorized", "no principal")
        body: dict[str, Any] = {"actor": principal.actor, "role": principal.role, "kind": principal.kind}
        if principal.session is not None and principal.session_id is not None:
            s = principal.session
            _, sessions = plane.need()
            body.update(
                stage=s.stage,
                csrf_token=sessions.csrf_token(principal.session_id),
                expires_at=s.expires_at,
                idle_expires_at=s.last_seen_at + settings.session_idle,
                mfa_at=s.mfa_at,
                mfa=s.has_mfa,
            )
        return JSONResponse(body, headers={"cache-control": "no-store"})

    @app.post(f"{PREFIX}/auth/logout", tags=["auth"], summary="End this session")
    def logout(request: Request) -> Response:
        accounts, sessions = plane.need()
        _, session = _session(request)
        sessions.end(session)
        accounts.emit("admin_auth.signed_out", severity="info", actor=session.actor, source_ip=_ip(request))
        response = JSONResponse({"status": "signed out"}, headers={"cache-control": "no-store"})
        plane.clear_session_cookie(response)
        return response

    @app.post(
        f"{PREFIX}/auth/step-up", tags=["auth"], summary="Check a second factor again (sensitive actions)"
    )
    def step_up(body: FactorIn, request: Request) -> Response:
        accounts, sessions = plane.need()
        _, session = _session(request)
        if (body.code is None) == (body.recovery_code is None):
            raise IdentityError(400, "invalid_request", "give either code or recovery_code")
        if not session.has_mfa:
            raise IdentityError(409, "no_mfa", "enrol TOTP first (POST /admin/v1/auth/mfa/totp)")
        limited = _too_many(request)
        if limited is not None:
            return limited
        try:
            accounts.verify_second_factor(
                session.admin_id, code=body.code, recovery_code=body.recovery_code, source_ip=_ip(request)
            )
        except SignInFailed:
            return _fail(401, "admin_mfa_failed", "The code is not valid.")
        sessions.stepped_up(session)
        accounts.emit("admin_auth.stepped_up", severity="info", actor=session.actor, source_ip=_ip(request))
        return JSONResponse({"mfa_at": plane.clock()}, headers={"cache-control": "no-store"})

    @app.post(f"{PREFIX}/auth/recovery-codes", tags=["auth"], summary="New recovery codes (shown once)")
    def recovery_codes(request: Request) -> Response:
        accounts, _ = plane.need()
        _, session = _session(request)
        codes = accounts.new_recovery_codes(session.admin_id, actor=session.actor)
        return JSONResponse({"recovery_codes": codes}, headers={"cache-control": "no-store"})

    @app.post(f"{PREFIX}/auth/password", tags=["auth"], summary="Change this account's password")
    def change_password(body: PasswordIn, request: Request) -> Response:
        accounts, _ = plane.need()
        _, session = _session(request)
        try:
            accounts.set_password(
                session.admin_id, body.new_password, actor=session.actor, current=body.current_password
            )
        except SignInFailed:
            return _fail(401, "admin_sign_in_failed", SIGN_IN_FAILED)
        response = JSONResponse({"status": "changed; sign in again"}, headers={"cache-control": "no-store"})
        plane.clear_session_cookie(response)
        return response

    # -- admin accounts ---------------------------------------------------------------------------------

    @app.get(f"{PREFIX}/admins", tags=["admins"], summary="List admin accounts")
    def list_admins() -> dict[str, Any]:
        accounts, _ = plane.need()
        return {"admins": accounts.list_all()}

    @app.get(PREFIX + "/admins/{name}", tags=["admins"], summary="One admin account")
    def get_admin(name: str) -> dict[str, Any]:
        accounts, _ = plane.need()
        return accounts.get(name)

    @app.post(f"{PREFIX}/admins", tags=["admins"], status_code=201, summary="Create an admin account")
    def create_admin(body: AdminIn, request: Request, response: Response) -> dict[str, Any]:
        accounts, _ = plane.need()
        response.headers["cache-control"] = "no-store"
        if body.passwordless and body.password is not None:
            raise IdentityError(400, "invalid_request", "passwordless accounts have no password")
        record, generated = accounts.create(
            body.name,
            body.email,
            body.role,
            password=body.password,
            generate=body.password is None and not body.passwordless,
            actor=actor_of(request),
        )
        return {"admin": record, "password": generated}

    def _not_self(request: Request, name: str, what: str) -> None:
        principal = _principal(request)
        if (
            principal is not None
            and principal.session is not None
            and name
            in (
                principal.session.name,
                principal.session.admin_id,
            )
        ):
            raise IdentityError(409, "cannot_change_self", f"an admin cannot {what} their own account")

    @app.post(PREFIX + "/admins/{name}/disable", tags=["admins"], summary="Disable: its sessions end")
    def disable_admin(name: str, request: Request) -> dict[str, Any]:
        accounts, _ = plane.need()
        _not_self(request, name, "disable")
        return accounts.set_active(name, False, actor=actor_of(request))

    @app.post(PREFIX + "/admins/{name}/enable", tags=["admins"], summary="Enable (and unlock)")
    def enable_admin(name: str, request: Request) -> dict[str, Any]:
        accounts, _ = plane.need()
        return accounts.set_active(name, True, actor=actor_of(request))

    @app.put(PREFIX + "/admins/{name}/role", tags=["admins"], summary="Change an admin account's role")
    def set_role(name: str, body: RoleIn, request: Request) -> dict[str, Any]:
        accounts, _ = plane.need()
        _not_self(request, name, "change the role of")
        return accounts.set_role(name, body.role, actor=actor_of(request))

    @app.post(PREFIX + "/admins/{name}/reset-mfa", tags=["admins"], summary="Remove TOTP and recovery codes")
    def reset_mfa(name: str, request: Request) -> dict[str, Any]:
        accounts, _ = plane.need()
        return accounts.reset_mfa(name, actor=actor_of(request))
