"""The engine: from a parsed request to a decision (forward or respond), with events.

``Gateway.admit`` is the per-request entry point shared by every face (the proxy today, the ASGI
middleware later). Everything it consults was compiled at load by :func:`build_gateway`: the router,
each route's check tuple, CIDR sets, header sets, prebuilt responses.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from sqlalchemy import Engine

from ..checks.api_key import QUERY_PARAM
from ..checks.cors import Cors
from ..checks.inspect import InspectCheck
from ..checks.inspection import Inspector
from ..checks.ip_access import IpAccess
from ..checks.json_body import JsonLimits
from ..checks.limits import BodyLimit
from ..checks.openapi import OpenApiCheck, Operation, SpecError, compile_operations
from ..checks.pkcv import HEADER as PKCV_HEADER
from ..checks.rate_limit import RateLimitCheck
from ..config.egress import EgressSettings
from ..config.loader import LoadedConfig
from ..config.models import APP_UPSTREAM, GatewayConfig, ServiceSettings
from ..core.chain import Check
from ..core.decision import LATER, Answer, Context, Deny
from ..core.events import Event
from ..core.fields import FieldFilter
from ..core.forwarding import HOP_BY_HOP, ForwardedInfo, NetworkSet, resolve_forwarded
from ..core.headers import Headers
from ..core.identity import IdentityHeaders, Principal, identity_headers
from ..core.paths import PathRejected, canonicalize_path, validate_query
from ..core.ports import EventSink
from ..core.problem import problem_body
from ..core.request import Body, IPAddress, RequestView
from ..core.router import Route, RouteError, Router
from ..events.writer import new_event
from ..inventory import Observer
from .egress import EgressProblem, compile_egress, delivery_reports, egress_target
from .identity import IdentityRuntime
from .metrics import Metrics
from .state import StateRuntime

__all__ = ["Forward", "Gateway", "Respond", "UpstreamSpec", "actor_of", "build_gateway", "check_upstreams"]

METHOD_OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
# Never forwarded from the client as-is: Bastion writes its own values (or none).
GATEWAY_OWNED = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "x-request-id",
        "x-bastion-consumer",  # set by Bastion from the authenticated principal, never by the client
        "x-bastion-scopes",
    }
)
# Upstream response headers that only leak implementation details (P7).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}\Z")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_~!$&'()*+,;=%]+)(:\d{1,5})?$")


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamSpec:
    """One per service, shared by its routes. Compared and hashed by identity: the data plane looks its
    connection pool up by spec on every request, and hashing thirteen fields each time cost ~1 µs."""

    name: str
    scheme: str
    host: str
    port: int
    base_path: str  # prefix before the canonical path ("" for none)
    host_header: str
    preserve_host: bool
    connect_timeout: float
    read_timeout: float
    max_idle: int
    tls_verify: bool
    ca_file: str | None
    proxy: tuple[str, int] | None = None  # an HTTP CONNECT proxy on the way (egress routes)
    outbound: Any = None  # egress routes: the bastion.egress.Outbound that writes the provider's request


@dataclass(slots=True)
class Forward:
    req: RequestView
    ctx: Context
    upstream: UpstreamSpec
    target: str  # path?query for the upstream request line
    headers: list[tuple[str, str]]  # upstream request headers, framing headers excluded
    # who called, when authenticated: X-Bastion-Consumer and X-Bastion-Scopes, sent after ``headers``
    identity: IdentityHeaders | None = None


@dataclass(slots=True)
class Respond:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    close: bool = False
    code: str = ""


@dataclass(slots=True)
class _Parsed:
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    # The credential headers (Authorization, the API-key header, PKCV), kept out of upstream_headers:
    # an authenticated route never forwards them, and the others add them back.
    credentials: list[tuple[str, str]] = field(default_factory=list)


class Gateway:
    def __init__(
        self,
        settings: GatewayConfig,
        router: Router,
        events: EventSink,
        *,
        source: str = "",
        identity: IdentityRuntime | None = None,
        state: StateRuntime | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.state = state
        self.router = router
        self.events = events
        self.source = source
        self.trusted = NetworkSet(settings.trusted_proxies)
        self.limits = settings.limits
        self.timeouts = settings.timeouts
        self.tls_on = settings.tls is not None
        self.scheme = "https" if self.tls_on else "http"
        self.reject_override = settings.method_override_headers == "reject"
        self.credential_headers = frozenset(
            {"authorization", settings.identity.api_key_header.lower(), PKCV_HEADER}
        )
        # The names _split_headers treats specially (one set test for every other field).
        self._set_aside = METHOD_OVERRIDE_HEADERS | HOP_BY_HOP | GATEWAY_OWNED | self.credential_headers
        self.underscores = settings.underscore_headers
        base: list[tuple[str, str]] = [("x-content-type-options", "nosniff")]
        if settings.tls is not None:
            hsts = f"max-age={int(settings.tls.hsts_max_age)}"
            if settings.tls.hsts_include_subdomains:
                hsts += "; includeSubDomains"
            base.append(("strict-transport-security", hsts))
        base.extend((k.lower(), v) for k, v in settings.response_headers.items())
        self.security_headers: tuple[tuple[str, str], ...] = tuple(base)
        self.strip_response = frozenset(settings.responses.hide_headers)
        self.replace_upstream_errors = settings.responses.replace_upstream_errors
        # The inventory (P2): undeclared endpoints observed, and requests per declared route. Collected by
        # the inventory recorder's thread; the request path only updates these dictionaries.
        self.observer = Observer(settings.inventory.max_observed) if settings.inventory.observe else None
        self.route_hits: dict[str, int] = {}
        self.in_flight = 0
        # Monitoring (runtime/monitoring.py): the counters behind /metrics, and a hook the alert engine
        # sets when a detector needs every authenticated request (consumer, key id, client address).
        self.metrics = Metrics()
        self.on_use: Callable[[str, str | None, Any], None] | None = None
        self._direct: dict[IPAddress, ForwardedInfo] = {}
        # Request ids: a random per-process prefix and a counter. Unique without a syscall per request;
        # they identify, they do not authenticate.
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = itertools.count(1)

    def _next_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    # -- events ------------------------------------------------------------------------------------
    def emit(self, type: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):  # an event must never break a request
            self.events.emit(new_event(type, **fields))

    def deny(
        self,
        status: int,
        code: str,
        *,
        detail: str = "",
        method: str | None = None,
        path: str | None = None,
        source_ip: IPAddress | str | None = None,
        request_id: str | None = None,
        route: Route | None = None,
        headers: Sequence[tuple[str, str]] = (),
        evidence: Any = None,
        severity: str = "warning",
        close: bool = False,
        head: bool = False,
        event: str = "request.denied",
        actor: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Respond:
        """Build the problem+json response for a deny and record the event."""
        self.metrics.denied(status, code)
        data = {"status": status}
        if evidence:
            data.update(evidence)
        if event:  # "": counted into a summary by the check (rate-limit refusals), not recorded one by one
            self.emit(
                event,
                severity=severity,
                request_id=request_id,
                route=route.id if route else None,
                method=method,
                path=_safe_path(path),
                source_ip=str(source_ip) if source_ip is not None else None,
                actor=actor,
                reason=code,
                data=data,
            )
        return self.problem(status, code, detail, request_id, headers, close=close, head=head, extra=extra)

    def problem(
        self,
        status: int,
        code: str,
        detail: str = "",
        request_id: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        *,
        close: bool = False,
        head: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> Respond:
        body = problem_body(status, code, detail, request_id, extra)
        out = [
            ("content-type", "application/problem+json"),
            ("cache-control", "no-store"),
            *self.security_headers,
            *headers,
        ]
        if request_id:
            out.append(("x-request-id", request_id))
        if head:
            out.append(("content-length", str(len(body))))
            body = b""
        return Respond(status, out, body, close, code)

    # -- the per-request path ----------------------------------------------------------------------
    async def admit(
        self,
        method: str,
        raw_path: str,
        query: str,
        raw_headers: list[tuple[str, str]],
        peer: IPAddress,
        body: Body,
        scheme: str | None = None,
    ) -> Forward | Respond:
        """``scheme``: how the client reached this process, when the adapter knows better than the config
        (the ASGI server's ``scope["scheme"]``); the proxy leaves it to ``tls``."""
        head = method == "HEAD"
        headers = Headers(raw_headers)
        if self.trusted or (scheme is not None and scheme != self.scheme):
            fwd = resolve_forwarded(peer, scheme or self.scheme, headers, self.trusted)
        else:
            # No proxy is trusted: the answer depends on the peer alone, so it is cached (bounded).
            fwd = self._direct.get(peer)  # type: ignore[assignment]
            if fwd is None:
                fwd = resolve_forwarded(peer, self.scheme, headers, self.trusted)
                if len(self._direct) < 65536:
                    self._direct[peer] = fwd
        trusted_id = fwd.request_id
        request_id = trusted_id if trusted_id and _REQUEST_ID.match(trusted_id) else self._next_request_id()
        client = fwd.client_ip
        if fwd.host is not None and not _HOST.match(fwd.host):
            fwd = fwd._replace(host=None)  # a trusted proxy's X-Forwarded-Host must still be a host
        try:
            path = canonicalize_path(raw_path)
            if query:
                validate_query(query)
        except PathRejected as exc:
            return self.deny(
                400,
                exc.code,
                detail="The request path is not allowed.",
                method=method,
                path=raw_path,
                source_ip=client,
                request_id=request_id,
                head=head,
            )

        host = headers.get("host")
        hosts = [host] if host is not None and not headers.repeated("host") else headers.getall("host")
        if len(hosts) != 1 or not _HOST.match(hosts[0]):
            code = "host_missing" if not hosts else ("host_duplicate" if len(hosts) > 1 else "host_invalid")
            return self.deny(
                400,
                code,
                detail="A single valid Host header is required.",
                method=method,
                path=path,
                source_ip=client,
                request_id=request_id,
                head=head,
            )

        parsed = self._split_headers(raw_headers, headers)
        if isinstance(parsed, str):
            return self.deny(
                400,
                parsed,
                detail="A request header is not allowed.",
                method=method,
                path=path,
                source_ip=client,
                request_id=request_id,
                head=head,
            )

        preflight = method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers
        match = self.router.match(path)
        if match is None:
            if self.observer is not None:
                self.observer.observe(method, path, time.time())
            return self.deny(
                404,
                "route_not_found",
                detail="No such endpoint.",
                method=method,
                path=path,
                source_ip=client,
                request_id=request_id,
                severity="notice",
                head=head,
            )
        lookup = method
        if preflight:
            lookup = (headers.get("access-control-request-method") or "").strip()
        route = match.endpoint.route_for(lookup)
        if route is None or (preflight and not route.options.get("cors")):
            if self.observer is not None and not preflight:
                self.observer.observe(method, path, time.time())
            return self.deny(
                405,
                "method_not_allowed",
                detail="This method is not allowed here.",
                method=method,
                path=path,
                source_ip=client,
                request_id=request_id,
                headers=(("allow", match.endpoint.allow),),
                head=head,
            )

        hits = self.route_hits
        hits[route.id] = hits.get(route.id, 0) + 1
        seen = headers if len(parsed.kept) == len(raw_headers) else Headers(parsed.kept)
        req = RequestView(
            method,
            path,
            query,
            seen,
            client,
            peer,
            fwd.scheme,
            fwd.host or hosts[0],
            route,
            match.params_for(route),
            body,
            request_id,
            raw_path,
        )
        if body.declared_length != 0:
            body.cap(route.max_body)  # a check that reads the body reads at most this
        ctx = Context(request_id)
        verdict = None
        for decide_now, later in route.steps:  # run_checks, inlined: this is the per-request path
            verdict = LATER if decide_now is None else decide_now(req, ctx)
            if verdict is LATER:
                verdict = await later(req, ctx)
            if verdict is not None:
                break
        principal = ctx.principal
        if ctx.notices:
            self._notices(req, ctx)
        if verdict is not None:
            if isinstance(verdict, Deny):
                return self.deny(
                    verdict.status,
                    verdict.code,
                    detail=verdict.detail,
                    method=method,
                    path=path,
                    source_ip=client,
                    request_id=request_id,
                    route=route,
                    headers=(*verdict.headers, *ctx.response_headers),
                    evidence=verdict.evidence,
                    severity=verdict.severity,
                    head=head,
                    event=verdict.event,
                    actor=actor_of(principal),
                    extra=verdict.extra,
                )
            assert isinstance(verdict, Answer)
            out = [*verdict.headers, *self.security_headers, ("x-request-id", request_id)]
            if not any(n == "content-length" for n, _ in out):
                out.append(("content-length", str(len(verdict.body))))
            return Respond(verdict.status, out, b"" if head else verdict.body)

        upstream: UpstreamSpec = route.target  # type: ignore[assignment]
        if upstream.outbound is not None:
            # the provider's own allowlist decides what of the caller's headers go on (outbound.headers)
            return await self._egress(req, ctx, upstream, parsed.upstream_headers + parsed.credentials)
        up_headers = parsed.upstream_headers
        if parsed.credentials and (principal is None or not route.options["strip_credentials"]):
            up_headers.extend(parsed.credentials)  # auth: none, forward_credentials, a webhook signature
        if ctx.notes:
            # forward_unknown: false (OpenAPI): only the declared query parameters and headers go upstream
            query = ctx.notes.get("forward_query", query)
            declared = ctx.notes.get("forward_headers")
            if declared is not None:
                up_headers = [(n, v) for n, v in up_headers if n in declared or n in PROTOCOL_HEADERS]
        if route.options.get("response_fields") is not None:
            # The response is read and filtered: ask for it whole (no Range: a slice cannot be filtered
            # and could cut a denied value out of its field) and uncompressed.
            up_headers = [(n, v) for n, v in up_headers if n not in _WHOLE_RESPONSE]
            up_headers.append(("accept-encoding", "identity"))
        identity = None
        if principal is not None:
            if self.on_use is not None:
                self.on_use(principal.consumer, principal.key_id, client)  # the engine makes it text, once
            identity = principal.upstream_headers or identity_headers(principal.consumer, principal.scopes)
            if query and route.options["api_key_in_query"]:
                query = _without_api_key(query)
        host_header = (fwd.host or hosts[0]) if upstream.preserve_host else upstream.host_header
        up_headers.append(("host", host_header))
        up_headers.append(("x-forwarded-for", fwd.forwarded_for))
        up_headers.append(("x-forwarded-proto", fwd.scheme))
        up_headers.append(("x-forwarded-host", fwd.host or hosts[0]))
        up_headers.append(("x-request-id", request_id))
        target = upstream.base_path + path
        if query:
            target += "?" + query
        return Forward(req, ctx, upstream, target, up_headers, identity)

    async def _egress(
        self, req: RequestView, ctx: Context, upstream: UpstreamSpec, caller_headers: list[tuple[str, str]]
    ) -> Forward:
        """An egress route's request to the provider: its own headers, credential and signature."""
        outbound = upstream.outbound
        path = upstream.base_path + outbound.path(req.path)
        headers = outbound.headers(caller_headers, upstream.host_header)
        if outbound.signer is not None:
            body = await req.body.read()  # already read and bounded by the checks when it has fields
            outbound.sign(
                headers,
                method=req.method,
                path=path,
                query=req.query,
                body=body,
                params=ctx.notes.get("egress_params", {}),
            )
        principal = ctx.principal
        if principal is not None and self.on_use is not None:
            self.on_use(principal.consumer, principal.key_id, req.client_ip)  # new country, traffic spikes
        destinations = ctx.notes.get("egress_destinations") or ()
        self.emit(
            "egress.forwarded",
            severity="info",
            request_id=req.request_id,
            route=req.route.id,
            method=req.method,
            path=_safe_path(req.path),
            source_ip=str(req.client_ip),
            actor=actor_of(principal),
            data={
                "operation": f"{req.method} {outbound.path(req.path)}"[:300],
                "countries": sorted({d.country or f"+{d.calling_code}" for d in destinations}),
            },
        )
        return Forward(req, ctx, upstream, path + ("?" + req.query if req.query else ""), headers)

    def upstream_failed(self, ctx: Context) -> None:
        """The upstream never answered this request: undo what checks recorded for it (replay records)."""
        undo, ctx.undo = ctx.undo, None
        for action in undo or ():
            with contextlib.suppress(Exception):  # best effort: never turn a 502 into a 500
                action()

    def _notices(self, req: RequestView, ctx: Context) -> None:
        for type_, data in ctx.notices:
            self.emit(
                type_,
                severity="notice" if type_ == "request.invalid" else "warning",
                reason=data.get("reason"),
                request_id=req.request_id,
                route=req.route.id,
                method=req.method,
                path=req.path,
                source_ip=str(req.client_ip),
                actor=actor_of(ctx.principal),
                data=data,
            )

    def _split_headers(self, raw: list[tuple[str, str]], headers: Headers) -> _Parsed | str:
        """One pass: the headers policies see, and the ones forwarded upstream."""
        if headers.repeats is not None and "content-type" in headers.repeats:
            # Checks judge the body as one media type (validation, inspection, signatures); an upstream
            # may read it as the other one (the last, or both joined). Refused, never judged as one type
            # and used as another.
            return "content_type_repeated"
        nominated: frozenset[str] = frozenset()
        conn = headers.getall("connection") if "connection" in headers else None
        if conn:
            nominated = (
                frozenset(t.strip().lower() for v in conn for t in v.split(",") if t.strip()) - GATEWAY_OWNED
            )  # "Connection: X-Forwarded-For" must not remove ours (CVE-2022-31813)
        out = _Parsed()
        up = out.upstream_headers
        kept = out.kept
        set_aside = self._set_aside
        for header in raw:
            name = header[0]
            if "_" in name:
                if self.underscores == "reject":
                    return "header_name_underscore"
                if self.underscores == "drop":
                    continue
                dashed = name.replace("_", "-")
                if dashed in GATEWAY_OWNED or dashed in HOP_BY_HOP:
                    # X_Bastion_Consumer would reach CGI/WSGI-style upstreams as X-Bastion-Consumer.
                    continue
            if name in set_aside:  # one set test for an ordinary field; these are looked at again
                if name in METHOD_OVERRIDE_HEADERS:
                    if self.reject_override:
                        return "method_override_rejected"
                    continue
                kept.append(header)
                if name in self.credential_headers and name not in nominated:
                    out.credentials.append(header)
                continue
            kept.append(header)
            if nominated and name in nominated:
                continue
            up.append(header)
        return out


# With forward_unknown: false, the headers an upstream still gets besides those the operation declares:
# what HTTP itself needs to carry the request and its body, and content negotiation.
PROTOCOL_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "accept",
        "accept-encoding",
        "accept-language",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "range",
        "authorization",  # only when forward_credentials keeps it: credentials are stripped before this
    }
)


_WHOLE_RESPONSE = frozenset({"accept-encoding", "range", "if-range"})


def actor_of(principal: Principal | None) -> str | None:
    """Who acted, as events record it: ``consumer:<name>/key:<id>`` (or ``/client:<id>``)."""
    if principal is None:
        return None
    if principal.key_id is not None:
        return f"consumer:{principal.consumer}/key:{principal.key_id}"
    if principal.client_id is not None:
        return f"consumer:{principal.consumer}/client:{principal.client_id}"
    return f"consumer:{principal.consumer}"


def _without_api_key(query: str) -> str:
    """The forwarded query, without the key a route accepted there (it never reaches the upstream)."""
    return "&".join(p for p in query.split("&") if unquote_plus(p.split("=", 1)[0]) != QUERY_PARAM)


def _safe_path(path: str | None) -> str | None:
    if path is None:
        return None
    clipped = path[:512]
    return clipped.encode("ascii", "backslashreplace").decode("ascii") if not clipped.isascii() else clipped


# -- building -------------------------------------------------------------------------------------


def _upstream_spec(svc: ServiceSettings) -> UpstreamSpec:
    if svc.upstream == APP_UPSTREAM:
        # The wrapped application (BastionMiddleware): no network, no base path, the client's Host kept.
        return UpstreamSpec(
            name=svc.name,
            scheme=APP_UPSTREAM,
            host="",
            port=0,
            base_path="",
            host_header="",
            preserve_host=True,
            connect_timeout=svc.timeouts.connect,
            read_timeout=svc.timeouts.read,
            max_idle=0,
            tls_verify=svc.tls_verify,
            ca_file=None,
        )
    parts = urlsplit(svc.upstream)
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname or ""
    default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
    host_for_header = f"[{host}]" if ":" in host else host
    host_header = host_for_header if default_port else f"{host_for_header}:{port}"
    return UpstreamSpec(
        name=svc.name,
        scheme=scheme,
        host=host,
        port=port,
        base_path=parts.path.rstrip("/"),
        host_header=host_header,
        preserve_host=svc.preserve_host,
        connect_timeout=svc.timeouts.connect,
        read_timeout=svc.timeouts.read,
        max_idle=svc.max_idle_connections,
        tls_verify=svc.tls_verify,
        ca_file=str(svc.ca_file) if svc.ca_file else None,
    )


def _egress_spec(eg: EgressSettings, outbound: Any) -> UpstreamSpec:
    scheme, host, port, base_path = egress_target(eg)
    default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
    host_for_header = f"[{host}]" if ":" in host else host
    proxy = None
    if eg.proxy is not None:
        p = urlsplit(eg.proxy)
        proxy = (p.hostname or "", p.port or 80)
    return UpstreamSpec(
        name=f"egress:{eg.name}",
        scheme=scheme,
        host=host,
        port=port,
        base_path=base_path,
        host_header=host_for_header if default_port else f"{host_for_header}:{port}",
        preserve_host=False,
        connect_timeout=eg.timeouts.connect,
        read_timeout=eg.timeouts.read,
        max_idle=eg.max_idle_connections,
        tls_verify=eg.tls_verify,
        ca_file=str(eg.ca_file) if eg.ca_file else None,
        proxy=proxy,
        outbound=outbound,
    )


def compile_routes(
    settings: GatewayConfig,
    identity: IdentityRuntime | None = None,
    state: StateRuntime | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Route]:
    """Each route's chain, cheap checks first: ip → size → cors → authn → authz (→ rate → … later)."""
    routes: list[Route] = []
    json_limits = JsonLimits(**settings.limits.json_.model_dump())
    inspector: Inspector | None = None
    for s_index, svc in enumerate(settings.services):
        spec = _upstream_spec(svc)
        operations = _ServiceOperations(svc)
        service_ip = IpAccess(svc.ip_allow, svc.ip_deny, scope="service")
        for r_index, rs in enumerate(svc.routes):
            methods = frozenset(rs.methods)
            checks: list[Check] = []
            if service_ip:
                checks.append(service_ip)
            route_ip = IpAccess(rs.ip_allow, rs.ip_deny, scope="route")
            if route_ip:
                checks.append(route_ip)
            max_body = rs.max_body if rs.max_body is not None else settings.limits.max_body
            checks.append(BodyLimit(max_body))
            if rs.cors is not None:
                cors_methods = rs.cors.allow_methods or sorted(methods)
                checks.append(
                    Cors(
                        allow_origins=rs.cors.allow_origins,
                        allow_methods=cors_methods,
                        allow_headers=rs.cors.allow_headers,
                        expose_headers=rs.cors.expose_headers,
                        allow_credentials=rs.cors.allow_credentials,
                        max_age=rs.cors.max_age,
                    )
                )
            route_id = f"{svc.name}:{' '.join(sorted(methods))} {rs.path}"
            if rs.auth != "none":
                if identity is None:
                    raise RuntimeError("routes with auth need the identity runtime")
                checks.extend(identity.checks_for(rs, route_id))
            if rs.delivery_reports is not None:
                checks.append(delivery_reports(settings, rs.delivery_reports, state, json_limits, clock))
            quota = settings.consumers_defaults.quota if rs.authenticates_consumers else None
            # A consumer's own quota (consumers set-quota) replaces the default wherever quotas are in force:
            # on routes with rate limits, and on every consumer route once consumers_defaults.quota is set.
            quotas = identity.consumer_quota if identity is not None and rs.authenticates_consumers else None
            if rs.rate_limit or quota is not None:
                if state is None:
                    raise RuntimeError("rate limits need the state runtime")
                checks.append(
                    RateLimitCheck(
                        route_id=route_id,
                        limits=rs.rate_limit,
                        by=rs.limit_by,
                        on_failure=rs.on_state_failure,
                        counters=state.counters,
                        fallback=state.fallback,
                        clock=clock,
                        refusals=state.refusals,
                        quota=quota,
                        quotas=quotas,
                    )
                )
            validation = svc.validation or ("strict" if svc.openapi is not None else "off")
            if svc.openapi is not None and validation != "off":
                ops = operations.get(rs.reject_unknown_fields, methods, rs.path)
                if ops:
                    checks.append(
                        OpenApiCheck(
                            ops,
                            mode=validation,
                            json_limits=json_limits,
                            forward_unknown=rs.forward_unknown,
                        )
                    )
            inspect = rs.inspect or svc.inspect or settings.inspection.default
            if inspect != "off":
                if inspector is None:  # compiled once, shared by every route
                    inspector = Inspector(settings.inspection.paranoia)
                checks.append(
                    InspectCheck(
                        inspector,
                        mode=inspect,
                        json_limits=json_limits,
                        max_value=settings.inspection.max_value,
                    )
                )
            fields = None
            if rs.response_fields is not None:
                rf = rs.response_fields
                fields = (rf.max_body, FieldFilter(deny=rf.deny, allow=rf.allow).apply)
            routes.append(
                Route(
                    id=route_id,
                    service=svc.name,
                    template=rs.path,
                    methods=methods,
                    checks=tuple(checks),
                    max_body=max_body,
                    target=spec,
                    trailing_slash_either=rs.trailing_slash == "either",
                    options={
                        "cors": rs.cors is not None,
                        "location": ("services", s_index, "routes", r_index),
                        # Authorization, the API-key header and PKCV's (Gateway.credential_headers)
                        "strip_credentials": rs.auth != "none" and not rs.forward_credentials,
                        "api_key_in_query": rs.api_key_in_query and not rs.forward_credentials,
                        "response_fields": fields,
                    },
                )
            )
    routes.extend(compile_egress(settings, identity, state, clock, spec_for=_egress_spec))
    if identity is not None and identity.oauth is not None:
        o = settings.oauth2
        assert o is not None
        for path, (methods, endpoint) in identity.oauth.endpoints().items():
            routes.append(
                Route(
                    id=f"oauth2:{' '.join(methods)} {path}",
                    service="oauth2",
                    template=path,
                    methods=frozenset(methods),
                    checks=(BodyLimit(o.max_body), endpoint),
                    max_body=o.max_body,
                    target=None,
                    options={
                        "cors": False,
                        "location": ("oauth2",),
                        "strip_credentials": False,
                        "api_key_in_query": False,
                    },
                )
            )
    return routes


class _SpecProblem(Exception):
    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


class _ServiceOperations:
    """A service's OpenAPI operations, compiled once per flavour (with and without
    ``reject_unknown_fields``) and only when a route asks."""

    def __init__(self, svc: ServiceSettings) -> None:
        self.svc = svc
        self._compiled: dict[bool, dict[tuple[str, str], Operation]] = {}

    def get(self, reject_unknown: bool, methods: frozenset[str], path: str) -> dict[str, Operation]:
        doc = self.svc.openapi
        assert doc is not None
        if reject_unknown not in self._compiled:
            try:
                self._compiled[reject_unknown] = compile_operations(doc.spec, reject_unknown=reject_unknown)
            except SpecError as exc:
                raise _SpecProblem(self.svc.name, f"{doc.file}: {exc}") from None
        ops = self._compiled[reject_unknown]
        return {m: ops[(m, path)] for m in methods if (m, path) in ops}


def _check_oauth_paths(loaded: LoadedConfig, routes: list[Route]) -> None:
    """The OAuth2 endpoints must be distinct and reachable: no two on one path, and none inside a
    route's template (a literal endpoint path would silently take requests that route expects)."""
    from ..config.errors import ConfigError, ConfigIssue

    o = loaded.settings.oauth2
    if o is None:
        return
    named = {
        "token_path": o.token_path,
        "introspection_path": o.introspection_path,
        "revocation_path": o.revocation_path,
        "jwks_path": o.jwks_path,
        "metadata_path": o.metadata_path,
    }
    issues = []
    seen: dict[str, str] = {}
    user = [r for r in routes if r.service != "oauth2"]
    router = Router(user) if user else None
    for key, path in named.items():
        line = loaded.lines.get(("oauth2", key)) or loaded.lines.get(("oauth2",))
        if path in seen:
            issues.append(
                ConfigIssue(loaded.source, line, f"oauth2.{key}", f"same path as oauth2.{seen[path]}")
            )
            continue
        seen[path] = key
        match = router.match(path) if router is not None else None
        if match is not None:
            issues.append(
                ConfigIssue(
                    loaded.source,
                    line,
                    f"oauth2.{key}",
                    f"{path} is also matched by the route {match.endpoint.template}",
                )
            )
    if issues:
        raise ConfigError(issues)


def check_upstreams(loaded: LoadedConfig, *, middleware: bool) -> None:
    """``upstream: app`` means the application BastionMiddleware wraps: the proxy (``bastion serve``) has no
    such application, and the middleware forwards nowhere else. A ConfigError names each service."""
    from ..config.errors import ConfigError, ConfigIssue

    issues = []
    for index, svc in enumerate(loaded.settings.services):
        is_app = svc.upstream == APP_UPSTREAM
        if is_app == middleware:
            continue
        message = (
            f"service {svc.name!r} forwards to {svc.upstream}; BastionMiddleware serves only services with "
            "upstream: app (the application it wraps)"
            if middleware
            else "upstream: app is for BastionMiddleware (bastion.asgi); bastion serve needs an http:// or "
            "https:// URL"
        )
        line = loaded.lines.get(("services", index, "upstream"))
        issues.append(ConfigIssue(loaded.source, line, f"services[{index}].upstream", message))
    if middleware:
        # An egress route calls a provider with a credential only Bastion holds: inside the application
        # that would hand the request (and the credential) to the application instead.
        for index, _eg in enumerate(loaded.settings.egress):
            line = loaded.lines.get(("egress", index)) or loaded.lines.get(("egress",))
            message = "egress routes are served by bastion serve (the gateway), not by BastionMiddleware"
            issues.append(ConfigIssue(loaded.source, line, f"egress[{index}]", message))
    if issues:
        raise ConfigError(issues)


def _dotted(loc: tuple[Any, ...]) -> str:
    """A route's location in the config, as a dotted path for an error."""
    if loc[0] == "egress":
        return f"egress[{loc[1]}].listen_path"
    if loc[0] == "services":
        return f"services[{loc[1]}].routes[{loc[3]}].path"
    return ".".join(str(p) for p in loc)


class _NullSink:
    def emit(self, event: Event) -> None:
        return None


def build_gateway(
    loaded: LoadedConfig,
    events: EventSink | None = None,
    *,
    engine: Engine | None = None,
    clock: Callable[[], float] = time.time,
) -> Gateway:
    """Compile a loaded config; route table problems become ConfigErrors with the route's line.

    With ``engine``, identities come from that store (call ``gateway.identity.start()`` before serving);
    without one, the identity snapshot stays empty (every credential fails): for checks and tests.
    """
    from ..config.errors import ConfigError, ConfigIssue

    settings = loaded.settings
    sink = events or _NullSink()

    def emit(type: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):
            sink.emit(new_event(type, **fields))

    state = StateRuntime(settings.storage, emit)
    identity = IdentityRuntime(
        settings,
        engine,
        emit,
        clock=clock,
        source=loaded.source,
        lines=loaded.lines,
        replay=state.replay,
        state=state,
    )
    try:
        routes = compile_routes(settings, identity, state, clock)
    except _SpecProblem as exc:
        index = next(i for i, svc in enumerate(settings.services) if svc.name == exc.service)
        line = loaded.lines.get(("services", index, "openapi"))
        issue = ConfigIssue(loaded.source, line, f"services[{index}].openapi", str(exc))
        raise ConfigError([issue]) from None
    except EgressProblem as exc:
        line = loaded.lines.get(("egress", exc.index, "allow")) or loaded.lines.get(("egress", exc.index))
        issue = ConfigIssue(loaded.source, line, f"egress[{exc.index}]", str(exc))
        raise ConfigError([issue]) from None
    issues: list[ConfigIssue] = []
    for route in routes:
        try:
            Router([route])
        except RouteError as exc:
            loc = route.options["location"]
            issues.append(
                ConfigIssue(loaded.source, loaded.lines.get((*loc, "path")), _dotted(loc), str(exc))
            )
    if issues:
        raise ConfigError(issues)
    _check_oauth_paths(loaded, routes)
    try:
        router = Router(routes)
    except RouteError as exc:
        if exc.route is None:
            raise ConfigError([ConfigIssue(loaded.source, None, "services", str(exc))]) from None
        loc = exc.route.options["location"]
        raise ConfigError(
            [ConfigIssue(loaded.source, loaded.lines.get((*loc, "path")), _dotted(loc), str(exc))]
        ) from None
    return Gateway(settings, router, sink, source=loaded.source, identity=identity, state=state)
