"""BastionMiddleware end to end, on a real uvicorn on loopback.

``TestBothFaces`` runs the shared scenarios (``_scenarios.py``) through the proxy and through the
middleware, with one config that differs only in ``upstream``: keys (valid, unknown, missing), scopes,
rate limits, Twilio-signed webhooks (valid, tampered, replayed), OpenAPI validation, the canonical path,
body limits, the response policy (5xx replaced, identifying headers hidden, JSON fields filtered,
streams passed through) and the events each leaves. The expectations are the same; so must the answers be.

``TestExampleApp`` runs examples/fastapi_app (FastAPI, its own generated OpenAPI document, the
``bastion.fastapi`` dependencies) as a user would. The rest covers the config switch (``upstream: app``
is refused by ``bastion serve``, and the middleware refuses anything else), the lifespan, WebSocket
refusal and the ``bastion.testing`` helpers.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from click.testing import CliRunner

from bastion.adapters.cli import main as cli
from bastion.asgi import BastionMiddleware, BastionPrincipal
from bastion.checks.twilio_signature import twilio_signature as bastion_twilio_signature
from bastion.config import ConfigError
from bastion.testing import FrozenClock, lifespan, make_key, memory_gateway, twilio_signature

from ..support import GatewayThread, load_text, raw_exchange, request, status_of
from . import _scenarios as sc
from ._identity import PEPPER, Reply, random_key

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastapi_app"
PROBLEM = "application/problem+json"


def assert_problem(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith(PROBLEM)
    doc = reply.json()
    assert (doc["status"], doc["code"]) == (status, code)
    assert doc["request_id"] == reply.headers["x-request-id"]
    return doc


def form(params: dict[str, str]) -> bytes:
    return urlencode(params).encode()


def post_chunked(port: int, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """A POST whose body has no declared length (Transfer-Encoding: chunked)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
        conn.request("POST", path, body=iter(chunks), headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- the same scenarios through both faces -------------------------------------------------------------


@pytest.fixture(scope="module", params=["proxy", "middleware"])
def face(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sc.Face]:
    with sc.face(request.param, tmp_path_factory.mktemp(request.param)) as f:
        yield f


@pytest.fixture(scope="module")
def keys(face: sc.Face) -> dict[str, str]:
    return {
        "reader": face.make_key("reader", ["orders:read"]),
        "writer": face.make_key("writer", ["orders:read", "orders:write"]),
    }


class TestBothFaces:
    @pytest.mark.parametrize("style", ["x-api-key", "bearer"])
    def test_a_valid_key_reaches_the_application_as_its_consumer(
        self, face: sc.Face, keys: dict[str, str], style: str
    ) -> None:
        key = keys["reader"]
        headers = {"X-API-Key": key} if style == "x-api-key" else {"Authorization": f"Bearer {key}"}
        reply = face.call("GET", "/v1/orders/42", {**headers, "X-Bastion-Consumer": "root"})
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        assert seen["x-bastion-consumer"] == ["reader"]  # Bastion's, never the client's
        assert seen["x-bastion-scopes"] == ["orders:read"]
        assert seen["x-request-id"] == [reply.headers["x-request-id"]]
        assert "x-api-key" not in seen and "authorization" not in seen  # the credential stays at Bastion
        assert reply.upstream_target() == "/v1/orders/42"

    def test_two_content_types_are_refused_before_any_check(
        self, face: sc.Face, keys: dict[str, str]
    ) -> None:
        body = b'{"qty": 1}'
        raw = raw_exchange(
            face.port,
            b"POST /v1/orders/42 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: %s\r\n"
            b"Content-Type: application/json\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (keys["writer"].encode(), len(body), body),
        )
        assert status_of(raw) == 400 and b'"code":"content_type_repeated"' in raw

    def test_no_key_is_auth_required_and_recorded(self, face: sc.Face) -> None:
        reply = face.call("GET", "/v1/orders/42")
        assert_problem(reply, 401, "auth_required")
        assert reply.headers["www-authenticate"].startswith("Bearer")
        event = sc.wait_event(face, "request.denied", reply)
        assert (event["reason"], event["path"], event["method"]) == ("auth_required", "/v1/orders/42", "GET")

    def test_an_unknown_key_is_auth_invalid_and_never_recorded(self, face: sc.Face) -> None:
        key = random_key()
        reply = face.call("GET", "/v1/orders/42", {"X-API-Key": key})
        assert_problem(reply, 401, "auth_invalid")
        event = sc.wait_event(face, "auth.failed", reply)
        assert key not in json.dumps(event, default=str)

    def test_a_key_without_the_scope_is_insufficient_scope(self, face: sc.Face, keys: dict[str, str]) -> None:
        body = b'{"sku": "ABC-1", "qty": 1}'
        headers = {"X-API-Key": keys["reader"], "Content-Type": "application/json"}
        reply = face.call("POST", "/v1/orders", headers, body)
        assert_problem(reply, 403, "insufficient_scope")
        assert 'scope="orders:write"' in reply.headers["www-authenticate"]

    def test_the_rate_limit_answers_429_with_retry_after(self, face: sc.Face) -> None:
        key = face.make_key(f"limited-{face.name}", ["orders:read"])
        for _ in range(sc.RATE):
            assert face.call("GET", "/v1/limited", {"X-API-Key": key}).status == 200
        reply = face.call("GET", "/v1/limited", {"X-API-Key": key})
        assert_problem(reply, 429, "rate_limited")
        assert int(reply.headers["retry-after"]) > 0

    def test_validation_refuses_a_body_the_document_does_not_allow(
        self, face: sc.Face, keys: dict[str, str]
    ) -> None:
        headers = {"X-API-Key": keys["writer"], "Content-Type": "application/json"}
        bad = face.call("POST", "/v1/orders", headers, b'{"sku": "ABC-1", "qty": 0, "admin": true}')
        doc = assert_problem(bad, 422, "request_invalid")
        assert {e["location"] for e in doc["errors"]} >= {"body.qty"}
        good = face.call("POST", "/v1/orders", headers, b'{"sku": "ABC-1", "qty": 2}')
        assert good.status == 200, good.body
        assert good.json()["body_bytes"] == len(b'{"sku": "ABC-1", "qty": 2}')  # the body a check read

    def test_a_signed_twilio_webhook_is_delivered_once(self, face: sc.Face) -> None:
        params = {"From": "+15550001111", "Body": f"hello {face.name}", "MessageSid": f"SM{face.name}"}
        signature = twilio_signature(sc.TWILIO_TOKEN, sc.HOOK_URL, params)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
        reply = face.call("POST", "/hooks/sms", headers, form(params))
        assert reply.status == 200, reply.body
        assert reply.json()["body_bytes"] == len(form(params))
        replayed = face.call("POST", "/hooks/sms", headers, form(params))
        assert_problem(replayed, 409, "webhook_replayed")

    def test_a_tampered_twilio_webhook_is_refused(self, face: sc.Face) -> None:
        params = {"From": "+15550001111", "Body": "pay 10"}
        signature = twilio_signature(sc.TWILIO_TOKEN, sc.HOOK_URL, params)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
        reply = face.call("POST", "/hooks/sms", headers, form({**params, "Body": "pay 10000"}))
        assert_problem(reply, 403, "webhook_signature_invalid")
        sc.wait_event(face, "webhook.signature_invalid", reply)

    def test_an_application_5xx_is_replaced(self, face: sc.Face) -> None:
        reply = face.call("GET", "/fixture/crash")
        assert_problem(reply, 500, "upstream_error")
        assert b"Traceback" not in reply.body and b"postgres" not in reply.body
        assert reply.headers["retry-after"] == "7"
        event = sc.wait_event(face, "upstream.error", reply)
        assert event["data"]["upstream_status"] == 500

    def test_identifying_headers_are_hidden_and_security_headers_added(self, face: sc.Face) -> None:
        reply = face.call("GET", "/status/200")
        assert reply.status == 200
        assert "server" not in reply.headers and "x-powered-by" not in reply.headers
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-request-id"]

    def test_response_fields_filter_the_json_body(self, face: sc.Face) -> None:
        reply = face.call("GET", "/fixture/account")
        assert reply.status == 200, reply.body
        assert reply.json() == sc.FILTERED
        assert int(reply.headers["content-length"]) == len(reply.body)

    def test_a_streamed_response_passes_through_whole(self, face: sc.Face) -> None:
        reply = face.call("GET", "/stream/1000000")
        assert reply.status == 200
        assert reply.body == b"y" * 1_000_000

    def test_the_application_sees_the_canonical_path(self, face: sc.Face, keys: dict[str, str]) -> None:
        reply = face.call("GET", "/v1//orders/./%34%32", {"X-API-Key": keys["reader"]})
        assert reply.status == 200, reply.body
        assert reply.upstream_target() == "/v1/orders/42"
        assert_problem(face.call("GET", "/v1/orders/a%2Fb"), 400, "path_encoded_slash")

    def test_forwarding_headers_from_an_untrusted_client_are_replaced(self, face: sc.Face) -> None:
        spoof = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example", "X-Request-Id": "mine"}
        reply = face.call("GET", "/status/200", spoof)
        seen = reply.upstream_headers()
        assert seen["x-forwarded-for"] == ["127.0.0.1"]  # no proxy is trusted: the peer is the client
        assert seen["x-forwarded-host"] != ["evil.example"]
        assert seen["x-request-id"] == [reply.headers["x-request-id"]] != ["mine"]

    def test_an_undeclared_route_is_not_found(self, face: sc.Face) -> None:
        assert_problem(face.call("GET", "/v1/secret"), 404, "route_not_found")
        assert_problem(face.call("DELETE", "/v1/orders/42"), 405, "method_not_allowed")

    def test_a_declared_body_over_max_body_is_413(self, face: sc.Face) -> None:
        reply = face.call("POST", "/upload", {"Content-Type": "application/octet-stream"}, b"x" * 70_000)
        assert_problem(reply, 413, "body_too_large")

    def test_a_chunked_body_over_max_body_is_cut_off_with_413(self, face: sc.Face) -> None:
        status, body = post_chunked(face.port, "/upload", [b"z" * 10_000] * 7)
        assert status == 413, body
        assert json.loads(body)["code"] == "body_too_large"

    def test_a_chunked_body_under_max_body_streams_through(self, face: sc.Face) -> None:
        status, body = post_chunked(face.port, "/upload", [b"z" * 10_000] * 5)
        assert status == 200, body
        assert json.loads(body)["body_bytes"] == 50_000

    def test_an_upload_under_max_body_streams_to_the_application(self, face: sc.Face) -> None:
        reply = face.call("POST", "/upload", {"Content-Type": "application/octet-stream"}, b"x" * 60_000)
        assert reply.status == 200, reply.body
        assert reply.json()["body_bytes"] == 60_000


# -- the example application ----------------------------------------------------------------------------


def _example() -> ModuleType:
    name = "bastion_example_fastapi_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the models' annotations through the module
    spec.loader.exec_module(module)
    return module


EXAMPLE_ENV = {"BASTION_PEPPER": PEPPER, "TWILIO_AUTH_TOKEN": sc.TWILIO_TOKEN}


class Example:
    def __init__(self, server: sc.UvicornThread, bastion: Any) -> None:
        self.server, self.bastion = server, bastion

    def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> Reply:
        return Reply(*request(self.server.port, method, path, headers=headers, body=body))


@pytest.fixture(scope="module")
def example() -> Iterator[Example]:
    with memory_gateway(EXAMPLE / "bastion.yaml", **EXAMPLE_ENV) as bastion:
        app = _example().create_app(bastion)
        with sc.UvicornThread(app) as server:
            yield Example(server, bastion)


@pytest.fixture(scope="module")
def shop(example: Example) -> str:
    return make_key(example.bastion, "shop", ["orders:read", "orders:write"])


class TestExampleApp:
    def test_the_openapi_document_is_the_applications_own(self, example: Example, shop: str) -> None:
        assert example.call("GET", "/v1/me", {"X-API-Key": shop}).status == 200  # the engine is running
        gateway = example.bastion.gateway
        assert gateway is not None
        orders = next(s for s in gateway.settings.services if s.name == "orders")
        assert orders.openapi is not None
        assert orders.openapi.spec == _example().build_api().openapi()  # openapi: app, read at startup

    def test_the_principal_reaches_the_endpoint(self, example: Example, shop: str) -> None:
        reply = example.call("GET", "/v1/me", {"X-API-Key": shop})
        assert reply.status == 200, reply.body
        me = reply.json()
        assert me["consumer"] == "shop" and me["method"] == "api_key"
        assert me["scopes"] == ["orders:read", "orders:write"]
        assert me["request_id"] == reply.headers["x-request-id"]
        assert me["client"] == "127.0.0.1"
        assert me["credentials_seen"] == []

    def test_an_order_is_validated_placed_and_listed_without_internal_fields(
        self, example: Example, shop: str
    ) -> None:
        headers = {"X-API-Key": shop, "Content-Type": "application/json"}
        unknown = json.dumps({"email": "a@example.com", "items": [{"sku": "ABC-1", "qty": 1}], "paid": True})
        assert_problem(example.call("POST", "/v1/orders", headers, unknown.encode()), 422, "request_invalid")
        order = {"email": "a@example.com", "items": [{"sku": "ABC-1", "qty": 2}]}
        placed = example.call("POST", "/v1/orders", headers, json.dumps(order).encode())
        assert placed.status == 201, placed.body
        assert placed.json()["placed_by"] == "shop"
        listed = example.call("GET", "/v1/orders", {"X-API-Key": shop})
        assert listed.status == 200
        assert listed.json()[0]["email"] == "a@example.com"
        assert all("internal_note" not in o for o in listed.json())

    def test_require_scopes_refuses_like_a_check_and_records_it(self, example: Example, shop: str) -> None:
        reply = example.call("DELETE", "/v1/orders/ord-1", {"X-API-Key": shop})
        assert_problem(reply, 403, "insufficient_scope")
        assert 'scope="orders:admin"' in reply.headers["www-authenticate"]
        event = next(
            e
            for e in example.bastion.events("request.denied")
            if e["request_id"] == reply.headers["x-request-id"]
        )
        assert event["reason"] == "insufficient_scope"
        assert event["actor"].startswith("consumer:shop/key:")
        assert event["data"]["required"] == ["orders:admin"]
        admin = make_key(example.bastion, "ops", ["orders:read", "orders:write", "orders:admin"])
        assert example.call("DELETE", "/v1/orders/ord-1", {"X-API-Key": admin}).status == 204

    def test_an_exception_in_an_endpoint_is_a_generic_500(self, example: Example, shop: str) -> None:
        reply = example.call("GET", "/v1/orders/ord-1/invoice", {"X-API-Key": shop})
        assert_problem(reply, 500, "upstream_error")
        assert b"hunter2" not in reply.body and b"billing" not in reply.body
        events = example.bastion.events("upstream.error")
        assert any(e["request_id"] == reply.headers["x-request-id"] for e in events)

    def test_a_streaming_response_streams(self, example: Example, shop: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", example.server.port, timeout=10)
        try:
            conn.request("GET", "/v1/export", headers={"X-API-Key": shop})
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("transfer-encoding") == "chunked"  # not buffered into one length
            assert resp.getheader("x-powered-by") is None
            lines = resp.read().decode().splitlines()
        finally:
            conn.close()
        assert lines[0] == "id,email" and len(lines) == 1001

    def test_a_twilio_webhook_signed_for_the_url_it_was_sent_to(self, example: Example) -> None:
        url = f"http://127.0.0.1:{example.server.port}/hooks/sms"
        params = {"From": "+15550002222", "Body": "STOP"}
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(sc.TWILIO_TOKEN, url, params),
        }
        reply = example.call("POST", "/hooks/sms", headers, form(params))
        assert reply.status == 200, reply.body
        assert b"Got: STOP" in reply.body
        forged = example.call("POST", "/hooks/sms", {**headers, "X-Twilio-Signature": "AAAA"}, form(params))
        assert_problem(forged, 403, "webhook_signature_invalid")

    def test_an_open_route_has_no_principal(self, example: Example) -> None:
        assert example.call("GET", "/health").json() == {"status": "ok"}


# -- configuration: upstream: app ------------------------------------------------------------------------


APP_CONFIG = """
storage: {database: "sqlite:///unused.db"}
services:
  - name: api
    upstream: app
    routes:
      - {path: /ping, methods: [GET], auth: none}
"""


class TestUpstreamApp:
    def test_bastion_serve_refuses_upstream_app(self) -> None:
        with pytest.raises(ConfigError, match="upstream: app is for BastionMiddleware"):
            GatewayThread(load_text(APP_CONFIG)).start()

    def test_bastion_check_says_which_face(self, tmp_path: Path) -> None:
        path = tmp_path / "bastion.yaml"
        path.write_text(APP_CONFIG, encoding="utf-8")
        refused = CliRunner().invoke(cli, ["check", "-c", str(path)])
        assert refused.exit_code == 1
        assert "services[0].upstream: upstream: app is for BastionMiddleware" in refused.output
        accepted = CliRunner().invoke(cli, ["check", "--middleware", "-c", str(path)])
        assert accepted.exit_code == 0, accepted.output

    def test_the_middleware_refuses_a_network_upstream(self) -> None:
        loaded = load_text(APP_CONFIG.replace("upstream: app", "upstream: http://127.0.0.1:9"))
        with pytest.raises(ConfigError, match="BastionMiddleware serves only services with upstream: app"):
            BastionMiddleware(lambda *a: None, config=loaded)  # type: ignore[arg-type,return-value]

    def test_the_middleware_refuses_egress_routes(self) -> None:
        egress = """identity: {pepper: pepper-for-the-middleware-test-0123}
egress:
  - name: sms
    listen_path: /egress/sms
    target: https://api.twilio.com
    callers: [app]
    credentials: {bearer: provider-token-for-the-test}
"""
        loaded = load_text(egress + APP_CONFIG)
        with pytest.raises(ConfigError, match=r"egress routes are served by bastion serve"):
            BastionMiddleware(lambda *a: None, config=loaded)  # type: ignore[arg-type,return-value]

    def test_an_invalid_upstream_still_names_both_forms(self) -> None:
        with pytest.raises(ConfigError, match="or app: the application BastionMiddleware wraps"):
            load_text(APP_CONFIG.replace("upstream: app", "upstream: ftp://x"))


# -- lifespan, websockets, in-process use ------------------------------------------------------------


async def _ping(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI application: no lifespan support, one answer for every request."""
    if scope["type"] != "http":
        raise RuntimeError("lifespan is not supported here")
    principal = scope.get("bastion")
    body = json.dumps({"consumer": principal.consumer if principal else None}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


CLOCKED = """
identity: {pepper: "${env:BASTION_PEPPER}"}
services:
  - name: api
    upstream: app
    routes:
      - {path: /ping, methods: [GET], auth: [api_key], rate_limit: [2/minute]}
"""


class TestInProcess:
    def test_lifespan_rate_limits_and_a_frozen_clock_over_asgi_transport(self) -> None:
        clock = FrozenClock()
        with memory_gateway(CLOCKED, clock=clock, BASTION_PEPPER=PEPPER) as bastion:
            app = BastionMiddleware(_ping, config=bastion)

            async def scenario() -> list[int]:
                async with lifespan(app):
                    key = make_key(bastion, "shop", ["x:y"])
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                        statuses = [(await client.get("/ping", headers={"X-API-Key": key})).status_code]
                        statuses += [(await client.get("/ping", headers={"X-API-Key": key})).status_code]
                        statuses += [(await client.get("/ping", headers={"X-API-Key": key})).status_code]
                        clock.advance(61)  # out of the sliding window: no sleeping
                        reply = await client.get("/ping", headers={"X-API-Key": key})
                        statuses.append(reply.status_code)
                        assert reply.json() == {"consumer": "shop"}
                return statuses

            assert asyncio.run(scenario()) == [200, 200, 429, 200]
            types = [e["type"] for e in bastion.events()]
            # Bastion's own lifespan ran around an application without one; the writer drained on stop.
            assert {"gateway.started", "gateway.stopped"} <= set(types)
            assert "rate_limit.exceeded" in types

    def test_without_a_lifespan_the_first_request_starts_the_engine(self) -> None:
        with memory_gateway(CLOCKED, BASTION_PEPPER=PEPPER) as bastion:
            app = BastionMiddleware(_ping, config=bastion)

            async def scenario() -> int:
                transport = httpx.ASGITransport(app=app)  # runs no lifespan
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    status = (await client.get("/ping")).status_code
                assert bastion.gateway is not None
                await app.shutdown()
                return status

            assert asyncio.run(scenario()) == 401
            assert bastion.gateway is None
            assert [e["reason"] for e in bastion.events("request.denied")] == ["auth_required"]

    def test_bastion_answers_a_cors_preflight_and_decorates_the_applications_answer(self) -> None:
        cors = "cors: {allow_origins: ['https://shop.example'], allow_headers: [x-api-key]}"
        config = CLOCKED.replace("rate_limit: [2/minute]}", f"rate_limit: [2/minute], {cors}}}")
        with memory_gateway(config, BASTION_PEPPER=PEPPER) as bastion:
            app = BastionMiddleware(_ping, config=bastion)
            origin = {"Origin": "https://shop.example"}

            async def scenario() -> tuple[httpx.Response, httpx.Response]:
                async with lifespan(app):
                    key = make_key(bastion, "shop", ["x:y"])
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                        ask = {**origin, "Access-Control-Request-Method": "GET"}
                        preflight = await client.options("/ping", headers=ask)
                        actual = await client.get("/ping", headers={**origin, "X-API-Key": key})
                        return preflight, actual

            preflight, actual = asyncio.run(scenario())
            assert preflight.status_code in (200, 204)
            assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
            assert actual.status_code == 200
            assert actual.headers["access-control-allow-origin"] == "https://shop.example"
            assert actual.headers["x-request-id"]

    def test_a_websocket_is_closed_with_policy_violation(self) -> None:
        with memory_gateway(CLOCKED, BASTION_PEPPER=PEPPER) as bastion:
            app = BastionMiddleware(_ping, config=bastion)
            sent: list[dict[str, Any]] = []

            async def scenario() -> None:
                async def receive() -> dict[str, Any]:
                    return {"type": "websocket.connect"}

                async def send(message: dict[str, Any]) -> None:
                    sent.append(message)

                scope = {
                    "type": "websocket",
                    "path": "/ping",
                    "raw_path": b"/ping",
                    "headers": [],
                    "client": None,
                }
                async with lifespan(app):
                    await app(scope, receive, send)

            asyncio.run(scenario())
            assert sent == [{"type": "websocket.close", "code": 1008, "reason": "not served through Bastion"}]
            assert [e["reason"] for e in bastion.events("request.denied")] == ["websocket_unsupported"]

    def test_the_admin_api_can_be_served_by_the_middleware(self) -> None:
        config = CLOCKED + "admin: {token: '${env:ADMIN_TOKEN}', allow_ips: [127.0.0.1/32]}\n"
        token = "admin-token-0123456789abcdef"  # a test fixture, not a secret
        with memory_gateway(config, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=token) as bastion:
            app = BastionMiddleware(_ping, config=bastion, admin=True)

            async def scenario() -> list[int]:
                async with lifespan(app):
                    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
                    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                        auth = {"Authorization": f"Bearer {token}"}
                        created = await client.post(
                            "/admin/v1/consumers", json={"name": "shop", "scopes": ["x:y"]}, headers=auth
                        )
                        return [
                            (await client.get("/admin/v1/health")).status_code,
                            (await client.get("/admin/v1/consumers")).status_code,
                            created.status_code,
                            (await client.get("/%61dmin/v1/consumers/shop", headers=auth)).status_code,
                            (await client.get("/admin/v2/consumers", headers=auth)).status_code,
                        ]

            assert asyncio.run(scenario()) == [200, 401, 201, 200, 404]
            assert [e["reason"] for e in bastion.events("admin.auth_failed")] == ["admin_unauthorized"]
            assert [e["reason"] for e in bastion.events("request.denied")] == ["route_not_found"]

    def test_admin_needs_an_admin_block(self) -> None:
        with pytest.raises(ConfigError, match="admin=True needs an admin: block"):
            BastionMiddleware(_ping, config=load_text(CLOCKED, env={"BASTION_PEPPER": PEPPER}), admin=True)

    def test_memory_gateway_takes_a_mapping_or_a_file_name(self, tmp_path: Path) -> None:
        route = {"path": "/ping", "methods": ["GET"], "auth": "none"}
        mapping = {"services": [{"name": "api", "upstream": "app", "routes": [route]}]}
        with memory_gateway(mapping) as a:
            storage = a.loaded.settings.storage
            assert storage.database.startswith(f"sqlite:///{a.directory}") and storage.state == "memory://"
        assert not Path(a.directory).exists()  # nothing left behind
        path = tmp_path / "bastion.yaml"
        path.write_text(APP_CONFIG, encoding="utf-8")
        with memory_gateway(str(path)) as b:
            assert b.loaded.source == str(path)
            assert b.database_url != "sqlite:///unused.db"

    def test_the_principal_object(self) -> None:
        who = BastionPrincipal("shop", frozenset({"a", "b"}), "api_key", "k1", None, "r1")
        assert who.has_scopes("a") and not who.has_scopes("a", "c")


def test_twilio_signature_matches_bastions_own() -> None:
    params = {"To": "+15550001111", "Body": "héllo"}
    url = "https://hooks.example.com/sms?x=1"
    mine = bastion_twilio_signature(sc.TWILIO_TOKEN.encode(), url, {k: [v] for k, v in params.items()})
    assert twilio_signature(sc.TWILIO_TOKEN, url, params) == mine
