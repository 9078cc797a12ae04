"""BastionMiddleware: the gateway's engine as pure ASGI middleware (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from ipaddress import IPv4Address, ip_address
from typing import Any
from urllib.parse import quote, unquote

from ..config.errors import ConfigError, ConfigIssue
from ..config.loader import LoadedConfig, load_config
from ..core.paths import PathRejected, canonicalize_path
from ..core.request import BodyReadError, IPAddress
from ..runtime.gateway import Forward, Gateway, Respond, check_upstreams
from ._admin import admin_mounts
from ._body import ReceiveBody
from ._openapi import OpenApiSource, resolve_app_openapi
from ._principal import Denied, principal_view
from ._response import Responder, send_respond
from ._runtime import EngineRuntime

__all__ = ["BastionMiddleware"]

log = logging.getLogger("bastion.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LOOPBACK = IPv4Address("127.0.0.1")
ADMIN_PREFIX = "/admin/v1"
_PATH_SAFE = "/!$&'()*+,=:@-._~"  # a decoded scope["path"] re-encoded, when the server gave no raw_path
_DETAILS = {
    "body_too_large": "The request body is larger than this endpoint accepts.",
    "request_body_timeout": "The request body took too long.",
}
# Server extensions that hand the body to the server directly, past ``send``: not offered on routes whose
# response Bastion must read (response_fields).
_BYPASSING_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopy")


class BastionMiddleware:
    """``app.add_middleware(BastionMiddleware, config="bastion.yaml")``.

    ``config``: a path to ``bastion.yaml``, a :class:`~bastion.config.LoadedConfig`, or an object with a
    ``loaded`` attribute holding one (``bastion.testing.MemoryGateway``; its ``bind`` method, when it has
    one, is told the running middleware). ``clock``: the time source of every check (tests pass a
    ``bastion.testing.FrozenClock``). ``env``: the mapping ``${env:…}`` references read (default
    ``os.environ``). ``admin``: also serve the admin API (``/admin/v1``, behind ``admin.allow_ips`` and
    ``admin.token``) from the application's listener; or mount it where it belongs, ``app.mount("/bastion",
    BastionAdmin())`` (``_admin.py``). ``openapi``: the document ``services[].openapi: app`` stands for — a
    mapping, or a callable returning one; by default the application's own ``openapi()`` (``_openapi.py``).

    Every service must have ``upstream: app``. The engine starts with the application's lifespan (or, when
    the server runs none, on the first request) and stops with it; that is when the application's document
    is read and the admin mounts are found.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: str | os.PathLike[str] | LoadedConfig | Any,
        *,
        clock: Callable[[], float] | None = None,
        env: Mapping[str, str] | None = None,
        admin: bool = False,
        openapi: OpenApiSource | None = None,
    ) -> None:
        self.app = app
        self._source = config
        self.loaded = _loaded(config, env)
        if isinstance(openapi, Mapping):  # known now: the config is complete before anything starts
            self.loaded = self.loaded.with_app_openapi(openapi)
        check_upstreams(self.loaded, middleware=True)
        if admin and self.loaded.settings.admin is None:
            raise ConfigError(
                [
                    ConfigIssue(
                        self.loaded.source,
                        None,
                        "admin",
                        "admin=True needs an admin: block (token, allow_ips)",
                    )
                ]
            )
        self.clock = clock or getattr(config, "clock", None) or time.time
        self.runtime: EngineRuntime | None = None
        self.gateway: Gateway | None = None
        self._serve_admin = admin
        self._admin_app: ASGIApp | None = None
        # Where the admin API is answered: (canonical path prefix, whether it is a BastionAdmin mount).
        self._admin_at: tuple[tuple[str, bool], ...] = ()
        self._admin_starts: tuple[str, ...] = ()  # their first segments: the cheap test of every request
        self._openapi = openapi
        self._lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def startup(self, scope: Scope | None = None) -> Gateway:
        """Start the engine (idempotent): the lifespan does it; so does the first request without one.
        ``scope``'s ``app`` (Starlette's and FastAPI's own) is the application whose document ``openapi: app``
        means and whose routes may mount :class:`~bastion.asgi.BastionAdmin`."""
        async with self._lock:
            if self.gateway is not None:
                return self.gateway
            # The application: the wrapped app when it is one (BastionMiddleware(fastapi_app, …)), else the
            # one whose middleware stack this is (Starlette and FastAPI put themselves in scope["app"]).
            application = scope.get("app") if scope is not None else None
            candidates = tuple(a for a in (self.app, application) if a is not None)
            self.loaded = resolve_app_openapi(self.loaded, self._openapi, candidates)
            routed = next((a for a in candidates if hasattr(a, "routes")), None)
            mounts = admin_mounts(routed, self.loaded.source) if routed is not None else ()
            if mounts and self.loaded.settings.admin is None:
                raise ConfigError(
                    [
                        ConfigIssue(
                            self.loaded.source,
                            None,
                            "admin",
                            f"BastionAdmin is mounted at {mounts[0]}: the admin API needs an admin: block "
                            "(token, allow_ips)",
                        )
                    ]
                )
            runtime = EngineRuntime(self.loaded, self.clock)
            gateway = runtime.start()
            try:
                await runtime.attach()
            except BaseException:
                await runtime.stop()
                raise
            if self._serve_admin or mounts:
                self._admin_app = runtime.admin_app()
            at = ((ADMIN_PREFIX, False),) if self._serve_admin else ()
            self._admin_at = at + tuple((m, True) for m in mounts)
            self._admin_starts = tuple(sorted({"/" + p.split("/")[1] for p, _ in self._admin_at}))
            self.runtime, self.gateway = runtime, gateway
        bind = getattr(self._source, "bind", None)
        if callable(bind):
            bind(self)
        return gateway

    async def shutdown(self) -> None:
        """Stop the engine: the last events are written before this returns."""
        async with self._lock:
            runtime, self.runtime, self.gateway, self._admin_app = self.runtime, None, None, None
            if runtime is None:
                return
            bind = getattr(self._source, "bind", None)
            if callable(bind):
                bind(None)
            await runtime.stop()

    # -- ASGI --------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            gateway = self.gateway or await self.startup(scope)
            admin = self._admin_app
            if admin is not None and (child := _admin_scope(scope, self._admin_starts, self._admin_at)):
                await admin(child, receive, send)  # its own guard: allow_ips, token
                return
            await self._http(gateway, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bastion starts before the application's own startup and stops after its shutdown."""
        first = await receive()
        try:
            await self.startup(scope)
        except Exception as exc:
            log.exception("bastion could not start")
            await send({"type": "lifespan.startup.failed", "message": f"bastion: {exc}"})
            return
        pending = [first]
        answered = False

        async def app_receive() -> Message:
            return pending.pop() if pending else await receive()

        async def app_send(message: Message) -> None:
            nonlocal answered
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                answered = True
                if kind == "lifespan.startup.failed":
                    await self.shutdown()
            elif kind.startswith("lifespan.shutdown."):
                await self.shutdown()
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if answered:
                await self.shutdown()
                raise
        except BaseException:  # cancelled: stop what was started, and let the cancellation go on
            await self.shutdown()
            raise
        if answered:
            await self.shutdown()
            return
        # The application does not speak the lifespan protocol: Bastion's own lifespan still runs.
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Not yet protected, so not served: closed with 1008 (policy violation), and recorded."""
        gateway = self.gateway or await self.startup(scope)
        raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8")
        gateway.deny(
            403,
            "websocket_unsupported",
            method="GET",
            path=raw.partition(b"?")[0].decode("latin-1"),
            source_ip=_peer(scope),
        )
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008, "reason": "not served through Bastion"})

    async def _http(self, gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw = scope.get("raw_path")
        raw_path = raw.partition(b"?")[0].decode("latin-1") if raw else quote(scope["path"], safe=_PATH_SAFE)
        query = scope.get("query_string", b"").decode("latin-1")
        peer = _peer(scope)
        raw_headers = scope["headers"]
        headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw_headers]
        head_bytes = sum(len(n) + len(v) for n, v in raw_headers) + 4 * len(raw_headers)
        limits = gw.limits
        # What the proxy's parser refuses before routing: the ASGI server's own limits may be looser.
        refusal = None
        if len(raw_path) + len(query) + 1 > limits.max_url:
            refusal = (414, "url_too_long", "The request URL is too long.")
        elif len(headers) > limits.max_headers:
            refusal = (431, "too_many_headers", "The request has too many header fields.")
        elif head_bytes > limits.max_header_bytes:
            refusal = (431, "headers_too_large", "The request header fields are too large.")
        declared, has_body, framing = _framing(headers, scope.get("http_version", "1.1"))
        if refusal is None and framing is not None:
            refusal = (400, framing, "The request is malformed.")
        if refusal is None and gw.in_flight >= limits.max_in_flight:
            resp = gw.deny(
                503,
                "overloaded",
                detail="The gateway is busy; retry later.",
                method=method,
                path=raw_path[:512],
                source_ip=peer,
                headers=(("retry-after", "1"),),
                head=method == "HEAD",
            )
            await send_respond(send, resp)
            return
        if refusal is not None:
            status, code, detail = refusal
            resp = gw.deny(
                status,
                code,
                detail=detail,
                method=method,
                path=raw_path[:512],
                source_ip=peer,
                head=method == "HEAD",
            )
            await send_respond(send, resp)
            return
        body = ReceiveBody(receive, declared, has_body, gw.timeouts.body)
        started = time.monotonic()
        gw.in_flight += 1
        try:
            try:
                decision = await gw.admit(method, raw_path, query, headers, peer, body, scope.get("scheme"))
            except Exception:
                log.exception("admission failed")
                resp = gw.deny(
                    500,
                    "internal_error",
                    detail="The gateway failed to handle the request.",
                    method=method,
                    path=raw_path[:512],
                    source_ip=peer,
                    severity="error",
                )
                await send_respond(send, resp)
                return
            if isinstance(decision, Respond):
                await send_respond(send, decision)
                return
            await self._forward(gw, decision, body, scope, receive, send)
        finally:
            gw.in_flight -= 1
            gw.metrics.observe(time.monotonic() - started)  # the latency histogram of /metrics

    async def _forward(
        self, gw: Gateway, fwd: Forward, body: ReceiveBody, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Call the application as the upstream: the canonical path, the headers the gateway forwards (the
        caller's credentials stripped, X-Bastion-* and X-Forwarded-* set), the resolved client address."""
        req = fwd.req
        runtime = self.runtime
        assert runtime is not None
        body.cap(req.route.max_body)
        path, _, query = fwd.target.partition("?")
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fwd.headers]
        if fwd.identity is not None:
            headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fwd.identity.pairs]
        length = len(body.cached) if body.cached is not None else body.declared_length
        if length is not None and (length or req.method in ("POST", "PUT", "PATCH")):
            headers.append((b"content-length", b"%d" % length))
        child = dict(scope)
        child["path"] = unquote(path)  # canonical: %2F never reaches here, so decoding is unambiguous
        child["raw_path"] = path.encode("ascii")
        child["query_string"] = query.encode("latin-1")
        child["headers"] = headers
        child["scheme"] = req.scheme
        client = scope.get("client")
        child["client"] = (str(req.client_ip), client[1] if client else 0)
        child["bastion"] = principal_view(fwd.ctx.principal, req.request_id)
        responder = Responder(gw, fwd, send, runtime.response_skip, runtime.security_headers)
        if responder.fields is not None and "extensions" in scope:
            child["extensions"] = {
                k: v for k, v in scope["extensions"].items() if k not in _BYPASSING_EXTENSIONS
            }
        replay = body.cached is not None
        ended = False

        async def app_receive() -> Message:
            nonlocal replay, ended
            if replay:
                replay, ended = False, True
                return {"type": "http.request", "body": body.cached, "more_body": False}
            if ended:
                return await receive()  # after the body: the server reports the disconnect
            try:
                chunk = await body.next_chunk()
            except BodyReadError:
                ended = True
                return {"type": "http.disconnect"}  # the application stops; Bastion answers below
            if chunk is None:
                ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}

        try:
            await self.app(child, app_receive, responder.send)
        except Denied as denied:
            if not responder.started:
                d = denied.deny
                await responder.refuse(
                    d.status,
                    d.code,
                    d.detail,
                    dict(d.evidence),
                    headers=[*d.headers, *fwd.ctx.response_headers],
                    event=d.event,
                    severity=d.severity,
                )
            return
        except Exception:
            if body.error is not None:  # the application failed reading a body Bastion cut off
                await self._body_failed(responder, body.error)
                return
            if fwd.ctx.undo is not None:
                gw.upstream_failed(fwd.ctx)
            if not responder.started:
                await responder.refuse(
                    500,
                    "upstream_error",
                    "The upstream service failed to handle the request.",
                    {"service": fwd.upstream.name, "upstream_status": 500, "stage": "exception"},
                    headers=fwd.ctx.response_headers,
                    event="upstream.error",
                )
            raise  # the server logs the traceback; the client got Bastion's answer
        if body.error is not None and not responder.started:
            await self._body_failed(responder, body.error)
        elif not responder.started and not responder.finished and not responder.holding:
            # Returned without a response: what an ASGI server answers with 500, Bastion answers as such.
            await responder.refuse(
                500,
                "upstream_error",
                "The upstream service failed to handle the request.",
                {"service": fwd.upstream.name, "upstream_status": 500, "stage": "no_response"},
                headers=fwd.ctx.response_headers,
                event="upstream.error",
            )
        else:
            await responder.finish()

    async def _body_failed(self, responder: Responder, err: BodyReadError) -> None:
        if responder.started:
            return  # the head is out: nothing more to say
        await responder.refuse(
            err.status,
            err.code,
            _DETAILS.get(err.code, "The request body is malformed."),
            severity="warning",
        )


def _loaded(config: Any, env: Mapping[str, str] | None) -> LoadedConfig:
    if isinstance(config, LoadedConfig):
        return config
    if isinstance(config, str | os.PathLike):
        return load_config(config, env=env, defer_app_openapi=True)  # openapi: app is read at startup
    loaded = getattr(config, "loaded", None)
    if isinstance(loaded, LoadedConfig):
        return loaded
    raise TypeError(
        "config must be a path to bastion.yaml, a LoadedConfig, or a bastion.testing.MemoryGateway"
    )


def _admin_scope(scope: Scope, starts: tuple[str, ...], at: tuple[tuple[str, bool], ...]) -> Scope | None:
    """The admin API's scope when the canonical path is under one of ``at`` (``/admin/v1`` with
    ``admin=True``, a BastionAdmin mount), else None. Under a mount, the admin API sees its own paths
    (``/bastion/admin/v1/keys`` → ``/admin/v1/keys``)."""
    raw = scope.get("raw_path")
    path = raw.partition(b"?")[0].decode("latin-1") if raw else quote(scope["path"], safe=_PATH_SAFE)
    if not path.startswith(starts) and "//" not in path and "/." not in path and "%" not in path:
        return None  # the common case, decided without canonicalising twice
    try:
        canonical = canonicalize_path(path)
    except PathRejected:
        return None  # the gateway refuses it
    for prefix, mounted in at:
        if canonical == prefix or canonical.startswith(prefix + "/"):
            if not mounted:
                return {**scope, "path": unquote(canonical)}
            own = canonical[len(prefix) :] or "/"
            return {**scope, "path": unquote(own), "raw_path": own.encode("latin-1"), "root_path": ""}
    return None


_PEERS: dict[str, IPAddress] = {}  # parsed peer addresses (bounded): parsing one costs a few µs


def _peer(scope: Scope) -> IPAddress:
    """The TCP peer as the server reports it. Without one (a Unix socket) or with a name that is not an
    address (test clients say "testclient"), the peer is this host: trusted_proxies decides the rest."""
    client = scope.get("client")
    if not client:
        return _LOOPBACK
    host = client[0]
    peer = _PEERS.get(host)
    if peer is None:
        try:
            peer = ip_address(host)
        except ValueError:
            peer = _LOOPBACK
        if len(_PEERS) < 65536:
            _PEERS[host] = peer
    return peer


def _framing(headers: list[tuple[str, str]], version: str) -> tuple[int | None, bool, str | None]:
    """(declared length, has a body, error code). The server already parsed the framing; Bastion needs the
    declared length (413 before reading) and refuses what the proxy would refuse as ambiguous."""
    lengths = [v for n, v in headers if n == "content-length"]
    chunked = any(n == "transfer-encoding" for n, _ in headers)
    if lengths and chunked:
        return None, True, "content_length_with_transfer_encoding"
    if chunked:
        return None, True, None
    if lengths:
        v = lengths[0].strip()
        if len(set(lengths)) != 1 or not v.isdigit() or not v.isascii() or len(v) > 18:
            return None, True, "content_length_invalid"
        return int(v), int(v) > 0, None
    if version in ("1.0", "1.1"):
        return 0, False, None
    return None, True, None  # HTTP/2 and 3 may send a body without declaring its length
