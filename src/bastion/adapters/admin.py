"""The admin API (``/admin/v1``), served by uvicorn on its own listener.

Access control is a pure ASGI wrapper in front of the FastAPI app, so it covers every route including
the generated OpenAPI document: the peer address must be in ``admin.allow_ips`` (the TCP peer; no
forwarded header is believed on this listener); then the matched route's policy (``admin_auth``) decides:
health and the sign-in steps are public, everything else needs ``Authorization: Bearer <admin.token>``
(unless ``admin.token_enabled`` is false) or an admin account's session cookie with the route's role, a
CSRF token on state-changing calls and, for sensitive routes, a recent second factor. Failures, refusals
and every authenticated call are events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from ipaddress import ip_address
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import cookie_parser
from starlette.routing import Match

from .. import __version__
from ..config.models import AdminAccountSettings, AdminSettings
from ..core.forwarding import NetworkSet
from ..core.problem import problem_body
from ..events.export import MAX_EXPORT, EventExport, export_headers
from ..events.query import QueryError, event_filter, get_event, query_events
from ..identity.admin_codes import AdminMailer, SignInCodes
from ..identity.admin_sessions import AdminSessions
from ..identity.admins import ROLES, AdminAccounts, AdminKeys, role_rank
from ..identity.manage import IdentityError
from ..inventory.report import report as inventory_report
from ..runtime.gateway import Gateway
from .admin_auth import ROUTE_POLICIES, VIEWER, AdminPlane, Policy, Principal, add_auth_routes, check_policies
from .admin_identity import IDENTITY_POLICIES, add_identity_routes
from .admin_oidc import SSO_POLICIES, add_sso_routes
from .console import CONSOLE_POLICIES, add_console_routes, security_headers

__all__ = ["build_admin_app"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
PREFIX = "/admin/v1"
CONSOLE = "/console"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class AdminGuard:
    """IP allow-list, then authentication and the route's policy (``admin_auth``), then the app."""

    def __init__(
        self,
        app: ASGIApp,
        gateway: Gateway,
        token: str,
        allow_ips: NetworkSet,
        *,
        router: FastAPI | None = None,
        policies: dict[tuple[str, str], Policy] | None = None,
        plane: AdminPlane | None = None,
        token_enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self._token_digest = _digest(token)
        self.allow = allow_ips
        self.router = router
        self.policies = policies or {}
        self.plane = plane
        self.token_enabled = token_enabled
        self.clock = clock

    def _policy(self, scope: Scope) -> Policy:
        """The matched route's policy; a path or method with no route needs a viewer (then 404/405)."""
        if self.router is not None:
            method = "GET" if scope.get("method") == "HEAD" else scope.get("method", "")
            for route in self.router.routes:
                match, _ = route.matches(scope)
                if match is Match.FULL:
                    return self.policies.get((method, getattr(route, "path", "")), VIEWER)
        return VIEWER

    async def _authenticate(
        self, headers: dict[bytes, bytes], peer: str, method: str, path: str, *, quiet: bool = False
    ) -> Principal | tuple[int, str, str]:
        """The caller, or why not. ``quiet``: a console page opened with no credentials at all is a browser
        on its way to the sign-in page, not a failed authentication (no event)."""
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth:
            scheme, _, presented = auth.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                _digest(presented.strip()), self._token_digest
            )
            if ok and self.token_enabled:
                return Principal(kind="token", actor="admin:token", role="admin")
            self.gateway.emit(
                "admin.auth_failed",
                severity="warning",
                method=method,
                path=path[:512],
                source_ip=peer,
                reason="admin_token_disabled" if ok else "admin_unauthorized",
                data={"had_credentials": True},
            )
            return 401, "admin_unauthorized", "A valid admin bearer token or session is required."
        cookie = _cookie(headers, self.plane.cookie_name) if self.plane is not None else None
        if cookie is not None and self.plane is not None:
            found = await anyio.to_thread.run_sync(self.plane.session_from_cookie, cookie)
            if found is not None:
                session, session_id = found
                return Principal(
                    kind="session",
                    actor=session.actor,
                    role=session.role,
                    session=session,
                    session_id=session_id,
                )
        if cookie is not None or not quiet:
            self.gateway.emit(
                "admin.auth_failed",
                severity="warning",
                method=method,
                path=path[:512],
                source_ip=peer,
                reason="admin_unauthorized",
                data={"had_credentials": cookie is not None},
            )
        detail = (
            "The session has ended; sign in again." if cookie else "A valid admin bearer token is required."
        )
        return 401, "admin_unauthorized", detail

    def _refuse(
        self, principal: Principal, policy: Policy, scope: Scope, headers: dict[bytes, bytes]
    ) -> tuple[int, str, str] | None:
        """Why this principal may not make this call (status, code, detail), or None."""
        session = principal.session
        if session is not None and session.stage != "full" and policy.level != "partial":
            return 401, "admin_mfa_required", "Complete the sign-in (second factor) first."
        if policy.level in ROLES and role_rank(principal.role) < role_rank(policy.level):
            return 403, "admin_forbidden", f"This needs the {policy.level} role."
        if session is not None and scope.get("method") not in SAFE_METHODS and not policy.form:
            assert self.plane is not None and principal.session_id is not None
            expected = self.plane.sessions.csrf_token(principal.session_id) if self.plane.sessions else ""
            presented = headers.get(b"x-csrf-token", b"").decode("latin-1")
            if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
                return 403, "admin_csrf_failed", "The X-CSRF-Token header is missing or wrong."
        if policy.sensitive and session is not None:
            assert self.plane is not None
            fresh = (
                session.mfa_at is not None
                and self.clock() - session.mfa_at <= self.plane.settings.step_up_within
            )
            if not fresh:
                return (
                    403,
                    "admin_step_up_required",
                    "Confirm a second factor first (POST /admin/v1/auth/step-up).",
                )
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No websocket (or other) route exists; refuse rather than skip the checks below.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "")
        client = scope.get("client") or ("", 0)
        try:
            peer = ip_address(client[0])
        except ValueError:
            peer = None
        if peer is None or peer not in self.allow:
            self.gateway.emit(
                "admin.ip_denied",
                severity="warning",
                method=method,
                path=path[:512],
                source_ip=str(peer) if peer else None,
                reason="admin_ip_denied",
            )
            await _problem(send, 403, "admin_ip_denied", "This address may not use the admin API.")
            return
        policy = self._policy(scope)
        headers = dict(scope.get("headers") or [])
        if policy.level == "public":
            if (
                method not in SAFE_METHODS
                and not _is_json(headers)
                and not (policy.form and _is_form(headers))
            ):
                # A cross-site form cannot send JSON: refusing anything else stops login CSRF.
                await _problem(send, 415, "unsupported_media_type", "The body must be application/json.")
                return
            await self.app(scope, receive, send)
            return
        found = await self._authenticate(headers, str(peer), method, path, quiet=policy.page)
        if isinstance(found, tuple):
            status, code, detail = found
            if policy.page:
                await _redirect(send, f"{CONSOLE}/sign-in", code)
                return
            extra = [(b"www-authenticate", b'Bearer realm="bastion-admin"')]
            await _problem(send, status, code, detail, extra=extra)
            return
        principal = found
        refused = self._refuse(principal, policy, scope, headers)
        if refused is not None:
            status, code, detail = refused
            if policy.page and code == "admin_mfa_required" and principal.session is not None:
                await _redirect(send, f"{CONSOLE}/{principal.session.stage}", code)
                return
            self.gateway.emit(
                "admin.forbidden",
                severity="warning",
                method=method,
                path=path[:512],
                source_ip=str(peer),
                actor=principal.actor,
                reason=code,
                data={"role": principal.role, "needs": policy.level, "sensitive": policy.sensitive},
            )
            await _problem(send, status, code, detail)
            return
        scope["bastion.admin"] = principal
        status_box: dict[str, int] = {}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, send_wrapper)
        if path == "/metrics":  # a scrape every few seconds is not an admin action
            return
        self.gateway.emit(
            "admin.action",
            severity="info",
            method=method,
            path=path[:512],
            source_ip=str(peer),
            actor=principal.actor,
            data={"status": status_box.get("status"), "role": principal.role},
        )


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _is_json(headers: dict[bytes, bytes]) -> bool:
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return kind == b"application/json"


def _is_form(headers: dict[bytes, bytes]) -> bool:
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return kind == b"application/x-www-form-urlencoded"


async def _redirect(send: Any, location: str, code: str) -> None:
    """A console page without a (complete) session: to where it can get one. ``location`` is always a
    fixed console path, never a value from the request."""
    headers = [(k.encode(), v.encode()) for k, v in security_headers().items()]
    headers += [
        (b"location", location.encode()),
        (b"x-bastion-refused", code.encode()),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _cookie(headers: dict[bytes, bytes], name: str) -> str | None:
    raw = headers.get(b"cookie")
    if not raw:
        return None
    return cookie_parser(raw.decode("latin-1")).get(name)


async def _problem(
    send: Any, status: int, code: str, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = problem_body(status, code, detail)
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Problem(BaseModel):
    """RFC 9457 problem details, as every admin error is sent."""

    type: str
    title: str
    status: int
    code: str
    detail: str


# Every admin error is problem+json; "4XX" also keeps FastAPI from documenting a 422 it never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "description": "Problem details (RFC 9457) with a stable `code`",
        "content": {"application/problem+json": {"schema": Problem.model_json_schema()}},
    }
}


def build_admin_app(
    gateway: Gateway,
    engine: Engine,
    token: str,
    allow_ips: NetworkSet,
    *,
    stats: Callable[[], dict[str, Any]] | None = None,
    metrics: Callable[[], bytes] | None = None,
    clock: Callable[[], float] = time.time,
    mail_ssl_context: Any = None,
) -> ASGIApp:
    admin_settings = gateway.settings.admin
    plane = _build_plane(gateway, engine, admin_settings, clock=clock, mail_ssl_context=mail_ssl_context)
    app = FastAPI(
        title="Bastion admin API",
        version=__version__,
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
        description="Manage and observe a Bastion gateway. Every call except health needs "
        "`Authorization: Bearer <admin token>` from an allowed address.",
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Any, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_query", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "error"
        )
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            code = "invalid_request"  # FastAPI could not read the JSON body (not UTF-8, too deep)
        return JSONResponse(
            json.loads(problem_body(exc.status_code, code, str(exc.detail))),
            status_code=exc.status_code,
            media_type="application/problem+json",
            headers={"cache-control": "no-store"},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Any, exc: RequestValidationError) -> JSONResponse:
        # Name the parameters that are wrong, never echo their values.
        errors = exc.errors()
        in_body = any(err.get("loc", ("",))[0] == "body" for err in errors)
        if any(err.get("type") == "json_invalid" for err in errors):
            detail = "The request body is not valid JSON."
        else:
            names = sorted({".".join(str(p) for p in err.get("loc", ())[1:]) for err in errors})
            detail = "Invalid parameter(s): " + ", ".join(n for n in names if n)
            if detail.endswith(": "):
                detail = "The request body is missing or not a JSON object."
        return JSONResponse(
            json.loads(problem_body(400, "invalid_request" if in_body else "invalid_query", detail)),
            status_code=400,
            media_type="application/problem+json",
            headers={"cache-control": "no-store"},
        )

    if metrics is not None:

        @app.get("/metrics", include_in_schema=False)
        def prometheus() -> Response:  # sync: reading the workers' snapshot files stays off the loop
            return Response(
                metrics(),
                media_type="text/plain; version=0.0.4; charset=utf-8",
                headers={"cache-control": "no-store"},
            )

    @app.get(f"{PREFIX}/health", tags=["system"], summary="Liveness of the gateway")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get(f"{PREFIX}/status", tags=["system"], summary="Counters of this process")
    async def status() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **(stats() if stats else {})}

    @app.get(f"{PREFIX}/events", tags=["events"], summary="Query the event log, newest first")
    def list_events(  # sync: FastAPI runs it in a thread, so the event loop never waits on the database
        type: str | None = Query(None, max_length=64, description="prefix match, e.g. `request.`"),
        actor: str | None = Query(
            None, max_length=256, description="exact, or up to a `/`: `consumer:shop` matches its keys"
        ),
        resource: str | None = Query(None, max_length=256, description="e.g. `api_key:<id>`"),
        source_ip: str | None = Query(None, max_length=64),
        severity: str | None = Query(None, max_length=16),
        min_severity: str | None = Query(None, max_length=16, description="this severity or worse"),
        since: str | None = Query(None, max_length=64, description="duration (`1h`) or ISO 8601 time"),
        until: str | None = Query(None, max_length=64, description="duration (`10m`) or ISO 8601 time"),
        page_size: int = Query(50, ge=1, le=1000),
        page_token: str | None = Query(None, max_length=256),
    ) -> dict[str, Any]:
        now = time.time()
        try:
            flt = event_filter(
                now,
                since=since,
                until=until,
                type=type,
                actor=actor,
                resource=resource,
                source_ip=source_ip,
                severity=severity,
                min_severity=min_severity,
            )
            events, token = query_events(engine, flt, page_size=page_size, page_token=page_token)
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"events": events, "next_page_token": token}

    # Before /events/{event_id}: routes match in order (here and in the guard).
    @app.get(
        f"{PREFIX}/events/export",
        tags=["events"],
        summary="Export the event log as JSON Lines, oldest first (operator, step-up)",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "one event document per line, as GET /admin/v1/events returns them",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            }
        },
    )
    def export_events(  # sync: the filters are checked here, so a mistake is a 400 before any line
        request: Request,
        type: str | None = Query(None, max_length=64, description="prefix match, e.g. `request.`"),
        actor: str | None = Query(None, max_length=256),
        resource: str | None = Query(None, max_length=256),
        source_ip: str | None = Query(None, max_length=64),
        severity: str | None = Query(None, max_length=16),
        min_severity: str | None = Query(None, max_length=16),
        since: str | None = Query(None, max_length=64),
        until: str | None = Query(None, max_length=64),
        after: str | None = Query(None, max_length=26, description="continue after this event id"),
        limit: int = Query(100_000, ge=1, le=MAX_EXPORT, description="at most this many events"),
    ) -> StreamingResponse:
        filters = {
            "type": type,
            "actor": actor,
            "resource": resource,
            "source_ip": source_ip,
            "severity": severity,
            "min_severity": min_severity,
            "since": since,
            "until": until,
            "after": after,
        }
        try:
            flt = event_filter(clock(), **{k: v for k, v in filters.items() if k != "after"})
            export = EventExport(engine, flt, after=after or "", limit=limit)
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from None
        principal = request.scope.get("bastion.admin")
        lines = export.stream(
            gateway.emit,
            {k: v for k, v in filters.items() if v},
            actor=principal.actor if principal is not None else "admin:token",
            source_ip=str((request.scope.get("client") or ("",))[0]),
        )
        return StreamingResponse(lines, media_type="application/x-ndjson", headers=export_headers(clock()))

    @app.get(PREFIX + "/events/{event_id}", tags=["events"], summary="One event by id")
    def one_event(event_id: str) -> dict[str, Any]:
        event = get_event(engine, event_id)
        if event is None:
            raise HTTPException(404, "No such event.")
        return event

    @app.get(f"{PREFIX}/inventory", tags=["inventory"], summary="Declared, called-but-undeclared, unused")
    def inventory() -> dict[str, Any]:  # sync: runs in a thread, off the event loop
        settings = gateway.settings
        return inventory_report(
            settings.services, engine, unused_after=settings.inventory.unused_after, now=time.time()
        )

    @app.exception_handler(IdentityError)
    async def _identity_error(_request: Any, exc: IdentityError) -> JSONResponse:
        return JSONResponse(
            json.loads(problem_body(exc.status, exc.code, exc.message)),
            status_code=exc.status,
            media_type="application/problem+json",
            headers={"cache-control": "no-store"},
        )

    identity = None
    if gateway.identity is not None and gateway.identity.engine is not None:
        identity = gateway.identity.admin()
        add_identity_routes(
            app, identity, default_grace=gateway.settings.identity.rotation_grace, emit=gateway.emit
        )
    add_auth_routes(app, plane)
    pepper = gateway.settings.identity.pepper
    add_sso_routes(
        app,
        plane,
        pepper=pepper.reveal() if pepper is not None else None,
        replay=gateway.state.replay if gateway.state is not None else None,  # a flow completes once
    )
    add_console_routes(app, plane, identity, engine=engine, gateway=gateway, clock=clock)
    policies = {**ROUTE_POLICIES, **IDENTITY_POLICIES, **CONSOLE_POLICIES, **SSO_POLICIES}
    check_policies(app, policies)  # a route without an access policy is a bug: refuse to start
    _document_bearer_auth(app, policies, plane.cookie_name)
    return AdminGuard(
        app,
        gateway,
        token,
        allow_ips,
        router=app,
        policies=policies,
        plane=plane,
        token_enabled=admin_settings.token_enabled if admin_settings is not None else True,
        clock=clock,
    )


def _build_plane(
    gateway: Gateway,
    engine: Engine,
    admin_settings: AdminSettings | None,
    *,
    clock: Callable[[], float],
    mail_ssl_context: Any = None,
) -> AdminPlane:
    """Admin accounts need the store and identity.pepper (their TOTP secrets are encrypted under it)."""
    settings = admin_settings.accounts if admin_settings is not None else AdminAccountSettings()
    pepper = gateway.settings.identity.pepper
    if pepper is None:
        return AdminPlane(None, None, None, settings, clock=clock)
    keys = AdminKeys(pepper.reveal())
    accounts = AdminAccounts(engine, keys, settings, emit=gateway.emit, clock=clock)
    sessions = AdminSessions(engine, keys, settings, emit=gateway.emit, clock=clock)
    mailer = AdminMailer(settings.email, ssl_context=mail_ssl_context) if settings.email is not None else None
    links = settings.external_url if settings.magic_links else None
    codes = SignInCodes(engine, accounts, settings, mailer, link_base=links, clock=clock)
    return AdminPlane(accounts, sessions, codes, settings, clock=clock)


def _document_bearer_auth(app: FastAPI, policies: dict[tuple[str, str], Policy], cookie: str) -> None:
    """The OpenAPI document says what AdminGuard enforces: the bearer token or a session cookie on every
    path but the public ones, and each operation's least role (``x-bastion-role``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            doc.setdefault("components", {})["securitySchemes"] = {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "admin.token"},
                "adminSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": cookie,
                    "description": "an admin account's session (POST /admin/v1/auth/login); state-changing "
                    "calls also need the X-CSRF-Token header",
                },
            }
            doc["security"] = [{"adminToken": []}, {"adminSession": []}]
            for path, item in doc.get("paths", {}).items():
                for method, operation in item.items():
                    policy = policies.get((method.upper(), path))
                    if policy is None:
                        continue
                    if policy.level == "public":
                        operation["security"] = []
                    operation["x-bastion-role"] = policy.level
                    if policy.sensitive:
                        operation["x-bastion-step-up"] = True
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
