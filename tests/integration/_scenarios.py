"""One set of scenarios, two faces: the proxy (``bastion serve``'s data plane in front of a real origin)
and BastionMiddleware (the same config with ``upstream: app``, inside a FastAPI application served by a
real uvicorn). Both run on loopback and are driven by the same raw HTTP client, so a scenario cannot tell
which face it talks to — which is the point: the middleware is the gateway with "forward upstream"
replaced by "call the application".

A face offers ``call`` (one request, a :class:`Reply`), ``make_key``, ``events`` and ``wait_event``. The
application behind the middleware answers like :class:`tests.support.EchoUpstream`: it reports the request
it saw as JSON, ``/status/<code>`` answers with that status, ``/fixture/<name>`` serves :data:`FIXTURES`
verbatim and ``/stream/<size>`` streams that many bytes in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Engine, select

from bastion.asgi import BastionMiddleware
from bastion.store.database import open_database
from bastion.store.schema import events_table
from bastion.testing import MemoryGateway, lifespan, make_key, memory_gateway

from ..support import EchoUpstream, GatewayThread, load_text, request
from ._identity import PEPPER, Reply, wait_for
from .test_responses import DENIED, DOC, TRACE

TWILIO_TOKEN = "twilio-test-token-0123456789abcdef"  # a test fixture, not a secret
HOOK_URL = "https://hooks.example.com/hooks/sms"  # the public URL Twilio signs (routes' public_url)
ENV = {"BASTION_PEPPER": PEPPER, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
RATE = 3  # requests per hour on /v1/limited, per key

OPENAPI = """
openapi: 3.1.0
info: {title: Orders, version: "1"}
paths:
  /v1/orders/{order_id}:
    get:
      parameters: [{name: order_id, in: path, required: true, schema: {type: string, maxLength: 20}}]
      responses: {"200": {description: An order}}
  /v1/orders:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              additionalProperties: false
              required: [sku, qty]
              properties:
                sku: {type: string, pattern: "^[A-Z0-9-]{3,20}$"}
                qty: {type: integer, minimum: 1, maximum: 100}
      responses: {"201": {description: Placed}}
  /v1/limited:
    get:
      responses: {"200": {description: Limited}}
"""

CONFIG = """
listen: 127.0.0.1:0
storage:
  database: sqlite:///{db}
  state: memory://
identity:
  pepper: ${{env:BASTION_PEPPER}}
  lockout: {{failures: 10000, within: 5m, block_for: 5m}}
services:
  - name: api
    upstream: {upstream}
    openapi: {openapi}
    routes:
      - path: /v1/orders/{{order_id}}
        methods: [GET]
        auth: [api_key]
        scopes: [orders:read]
      - path: /v1/orders
        methods: [POST]
        auth: [api_key]
        scopes: [orders:write]
        max_body: 4KiB
      - path: /v1/limited
        methods: [GET]
        auth: [api_key]
        rate_limit: [{rate}/hour]
        rate_limit_by: key
  - name: hooks
    upstream: {upstream}
    routes:
      - path: /hooks/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          auth_tokens: [${{env:TWILIO_AUTH_TOKEN}}]
          public_url: {hook_url}
  - name: open
    upstream: {upstream}
    routes:
      - path: /status/{{code}}
        methods: [GET]
        auth: none
      - path: /fixture/account
        methods: [GET]
        auth: none
        response_fields: {{deny: [password, "*.token", user.email]}}  # test_responses' DOC → DENIED
      - path: /fixture/crash
        methods: [GET]
        auth: none
      - path: /stream/{{size}}
        methods: [GET]
        auth: none
      - path: /upload
        methods: [POST]
        auth: none
        max_body: 64KiB
"""

FILTERED = DENIED  # what a client gets of DOC on /fixture/account
# What /fixture/<name> serves, on both faces: (status, headers, body).
FIXTURES: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {
    "/fixture/account": (200, [("content-type", "application/json")], json.dumps(DOC).encode()),
    # A crashing origin: its stack trace must never reach a client.
    "/fixture/crash": (500, [("content-type", "text/plain"), ("retry-after", "7")], TRACE),
}


def config_for(tmp: Path, upstream: str) -> str:
    openapi = tmp / "openapi.yaml"
    openapi.write_text(OPENAPI, encoding="utf-8")
    return CONFIG.format(
        db=tmp / "bastion.db", upstream=upstream, openapi=openapi, rate=RATE, hook_url=HOOK_URL
    )


class Face(Protocol):
    name: str

    @property
    def port(self) -> int: ...

    def call(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ) -> Reply: ...

    def make_key(self, consumer: str, scopes: list[str]) -> str: ...

    def events(self, type_: str) -> list[dict[str, Any]]: ...


def wait_event(face: Face, type_: str, reply: Reply) -> dict[str, Any]:
    """The ``type_`` event of the request that got ``reply`` (by request id); the writer batches."""
    request_id = reply.headers["x-request-id"]

    def find() -> dict[str, Any] | None:
        return next((e for e in face.events(type_) if e["request_id"] == request_id), None)

    found: dict[str, Any] = wait_for(find, what=f"a {type_} event")
    return found


# -- the proxy face -----------------------------------------------------------------------------------


class ProxyFace:
    name = "proxy"

    def __init__(self, gw: GatewayThread, upstream: EchoUpstream, engine: Engine) -> None:
        self.gw, self.upstream, self.engine = gw, upstream, engine

    @property
    def port(self) -> int:
        return self.gw.port

    def call(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ) -> Reply:
        return Reply(*request(self.gw.port, method, path, headers=headers, body=body))

    def make_key(self, consumer: str, scopes: list[str]) -> str:
        assert self.gw.running is not None and self.gw.running.gateway is not None
        identity = self.gw.running.gateway.identity
        assert identity is not None
        return make_key(identity.admin(), consumer, scopes)

    def events(self, type_: str) -> list[dict[str, Any]]:
        query = select(events_table).where(events_table.c.type == type_).order_by(events_table.c.id)
        with self.engine.connect() as conn:
            return [{**r._mapping, "data": json.loads(r.data)} for r in conn.execute(query)]


@contextmanager
def proxy_face(tmp: Path) -> Iterator[ProxyFace]:
    with EchoUpstream() as upstream:
        upstream.fixtures.update(FIXTURES)
        loaded = load_text(config_for(tmp, f"http://127.0.0.1:{upstream.port}"), env=ENV)
        with GatewayThread(loaded) as gw:
            engine = open_database(loaded.settings.storage.database, migrate_schema=False)
            try:
                yield ProxyFace(gw, upstream, engine)
            finally:
                engine.dispose()


# -- the middleware face ------------------------------------------------------------------------------


def echo_app() -> FastAPI:
    """A FastAPI application that answers like EchoUpstream (see the module docstring)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    hidden = {"server": "echo-app/9.9", "x-powered-by": "pytest"}

    @app.get("/status/{code}")
    async def status(code: int, request: Request) -> Response:
        return Response(
            await _report(request), status_code=code, media_type="application/json", headers=hidden
        )

    @app.get("/stream/{size}")
    async def stream(size: int) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            while sent < size:
                n = min(16384, size - sent)
                yield b"y" * n
                sent += n

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.api_route("/fixture/{name}", methods=["GET", "POST"])
    async def fixture(name: str) -> Response:
        status, headers, body = FIXTURES[f"/fixture/{name}"]
        return Response(body, status_code=status, headers=dict(headers))

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(request: Request) -> Response:
        return Response(await _report(request), media_type="application/json", headers=hidden)

    return app


async def _report(request: Request) -> bytes:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    doc = {
        "method": request.method,
        "path": target,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
    }
    return json.dumps(doc).encode()


class _Uvicorn(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process owns its signals


class UvicornThread:
    """A real uvicorn on 127.0.0.1 (port chosen by the OS) in a thread, lifespan on."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="on",
            proxy_headers=False,  # Bastion's trusted_proxies decides who the client is
            server_header=False,
            date_header=False,
            log_level="warning",
            access_log=False,
        )
        self.server = _Uvicorn(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        self._thread.start()
        wait_for(lambda: self.server.started or not self._thread.is_alive(), what="uvicorn to start")
        if not self.server.started:
            raise RuntimeError("uvicorn did not start (see the log above)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(15)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])


class MiddlewareFace:
    name = "middleware"

    def __init__(self, server: UvicornThread, bastion: MemoryGateway) -> None:
        self.server, self.bastion = server, bastion

    @property
    def port(self) -> int:
        return self.server.port

    def call(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ) -> Reply:
        return Reply(*request(self.server.port, method, path, headers=headers, body=body))

    def make_key(self, consumer: str, scopes: list[str]) -> str:
        return make_key(self.bastion, consumer, scopes)

    def events(self, type_: str) -> list[dict[str, Any]]:
        return self.bastion.events(type_)


@contextmanager
def middleware_face(tmp: Path, app_factory: Callable[[], FastAPI] = echo_app) -> Iterator[MiddlewareFace]:
    with memory_gateway(config_for(tmp, "app"), **ENV) as bastion:
        app = app_factory()
        app.add_middleware(BastionMiddleware, config=bastion)
        with UvicornThread(app) as server:
            yield MiddlewareFace(server, bastion)


@contextmanager
def face(name: str, tmp: Path) -> Iterator[Face]:
    maker = proxy_face if name == "proxy" else middleware_face
    with maker(tmp) as f:
        yield f


# -- in process (httpx.ASGITransport, the lifespan run by bastion.testing.lifespan) -------------------


class Reached:
    """A pure ASGI layer to put *inside* BastionMiddleware (``app.add_middleware(Reached.layer(...))`` before
    adding Bastion): it records every request that got past Bastion to the application."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def layer(self, app: Any) -> Any:
        async def record(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.requests.append((scope["method"], scope["path"]))
            await app(scope, receive, send)

        return record


def in_process(
    app: Any,
    scenario: Callable[[httpx.AsyncClient], Awaitable[Any]],
    *,
    client: tuple[str, int] = ("127.0.0.1", 5000),
    run_lifespan: bool = True,
) -> Any:
    """Run ``scenario`` against ``app`` over ``httpx.ASGITransport`` (the TCP peer is ``client``), inside
    the application's lifespan unless told otherwise; what the scenario returns."""

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app, client=client)
        async with contextlib.AsyncExitStack() as stack:
            if run_lifespan:
                await stack.enter_async_context(lifespan(app))
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
            return await scenario(http)

    return asyncio.run(main())
