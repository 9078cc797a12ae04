"""The admin API (``/admin/v1``), served by uvicorn on its own listener.

Access control is a pure ASGI wrapper in front of the FastAPI app, so it covers every route including
the generated OpenAPI document: the peer address must be in ``admin.allow_ips`` (the TCP peer; no
forwarded header is believed on this listener), and every path except ``/admin/v1/health`` needs
``Authorization: Bearer <admin.token>``. Failures and every authenticated call are events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from ipaddress import ip_address
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..core.forwarding import NetworkSet
from ..core.problem import problem_body
from ..events.query import QueryError, event_filter, get_event, query_events
from ..identity.manage import IdentityError
from ..inventory.report import report as inventory_report
from ..runtime.gateway import Gateway
from .admin_identity import add_identity_routes

__all__ = ["build_admin_app"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
PREFIX = "/admin/v1"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class AdminGuard:
    def __init__(self, app: ASGIApp, gateway: Gateway, token: str, allow_ips: NetworkSet) -> None:
        self.app = app
        self.gateway = gateway
        self._token_digest = _digest(token)
        self.allow = allow_ips

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
        if path != f"{PREFIX}/health":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, presented = auth.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                _digest(presented.strip()), self._token_digest
            )
            if not ok:
                self.gateway.emit(
                    "admin.auth_failed",
                    severity="warning",
                    method=method,
                    path=path[:512],
                    source_ip=str(peer),
                    reason="admin_unauthorized",
                    data={"had_credentials": bool(auth)},
                )
                await _problem(
                    send,
                    401,
                    "admin_unauthorized",
                    "A valid admin bearer token is required.",
                    extra=[(b"www-authenticate", b'Bearer realm="bastion-admin"')],
                )
                return
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
                actor="admin:token",
                data={"status": status_box.get("status")},
            )
            return
        await self.app(scope, receive, send)


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
) -> ASGIApp:
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

    if gateway.identity is not None and gateway.identity.engine is not None:
        add_identity_routes(
            app, gateway.identity.admin(), default_grace=gateway.settings.identity.rotation_grace
        )
    _document_bearer_auth(app)
    return AdminGuard(app, gateway, token, allow_ips)


def _document_bearer_auth(app: FastAPI) -> None:
    """The OpenAPI document says what AdminGuard enforces: a bearer token on every path but health."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            doc.setdefault("components", {})["securitySchemes"] = {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "admin.token"}
            }
            doc["security"] = [{"adminToken": []}]
            health = doc.get("paths", {}).get(f"{PREFIX}/health", {}).get("get")
            if health is not None:
                health["security"] = []
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
