"""OpenAPI documents at config load (routes generated or checked against the document, clear errors for a
bad document) and the schema translation behind request validation (3.0 and 3.1 keywords, read-only
fields, integer formats, reject_unknown_fields with allOf)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bastion.checks.openapi import SpecError, compile_operations
from bastion.config.errors import ConfigError
from bastion.config.loader import load_config_text

SPEC_31: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "t", "version": "1"},
    "servers": [{"url": "https://api.example.com/api"}],
    "paths": {
        "/orders/{order_id}": {
            "parameters": [
                {"name": "order_id", "in": "path", "required": True, "schema": {"type": "integer"}}
            ],
            "get": {"responses": {"200": {"description": "ok"}}},
            "patch": {
                "security": [{"oauth": ["orders:write"]}],
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}}
                },
                "responses": {"200": {"description": "ok"}},
            },
        },
        "/orders": {
            "post": {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}},
                },
                "responses": {"201": {"description": "ok"}},
            }
        },
    },
    "components": {
        "securitySchemes": {
            "oauth": {
                "type": "oauth2",
                "flows": {"clientCredentials": {"tokenUrl": "/t", "scopes": {"orders:write": "w"}}},
            }
        },
        "schemas": {
            "Order": {
                "type": "object",
                "required": ["id", "items"],
                "properties": {
                    "id": {"type": "string", "readOnly": True},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                    "note": {"type": ["string", "null"]},
                    "parent": {"$ref": "#/components/schemas/Order"},
                },
            },
            "Item": {
                "type": "object",
                "properties": {"qty": {"type": "integer", "format": "int32"}, "sku": {"type": "string"}},
            },
        },
    },
}


def write(tmp_path: Path, spec: dict[str, Any], name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def config(tmp_path: Path, service: str) -> Any:
    text = f"""
storage: {{database: "sqlite:///{tmp_path}/b.db"}}
services:
  - name: shop
    upstream: http://127.0.0.1:9
{service}
"""
    return load_config_text(text, source="test.yaml", base_dir=tmp_path)


def problems(tmp_path: Path, service: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, service)
    return str(info.value)


# -- routes and the document ---------------------------------------------------------------------------


def test_routes_are_generated_from_every_operation_with_the_base_path_and_scopes(tmp_path: Path) -> None:
    write(tmp_path, SPEC_31)
    loaded = config(
        tmp_path,
        "    openapi: spec.json\n    route_defaults: {auth: [api_key], rate_limit: [5/second]}\n"
        "    routes: from_openapi\nidentity: {pepper: 0123456789abcdef0123}",
    )
    routes = {(r.methods[0], r.path): r for r in loaded.settings.services[0].routes}
    assert set(routes) == {
        ("GET", "/api/orders/{order_id}"),
        ("PATCH", "/api/orders/{order_id}"),
        ("POST", "/api/orders"),
    }
    assert routes[("PATCH", "/api/orders/{order_id}")].scopes == ["orders:write"]
    assert routes[("GET", "/api/orders/{order_id}")].scopes == []
    for route in routes.values():
        assert route.auth == ["api_key"] and [lim.text for lim in route.rate_limit] == ["5/second"]


def test_listed_routes_must_agree_with_the_document(tmp_path: Path) -> None:
    write(tmp_path, SPEC_31)
    agreeing = """    openapi: spec.json
    routes:
      - {path: "/api/orders/{order_id}", methods: [GET, PATCH], auth: none}
      - {path: /api/orders, methods: [POST], auth: none}
"""
    assert len(config(tmp_path, agreeing).settings.services[0].routes) == 2
    extra = agreeing + "      - {path: /api/refunds, methods: [POST], auth: none}\n"
    assert "POST /api/refunds is not an operation of the OpenAPI document" in problems(tmp_path, extra)
    renamed = agreeing.replace("{order_id}", "{id}")
    message = problems(tmp_path, renamed)
    assert "the document writes it /api/orders/{order_id}" in message
    missing = agreeing.replace("GET, PATCH", "GET")
    message = problems(tmp_path, missing)
    assert "operations no route lists: PATCH /api/orders/{order_id}" in message
    assert "routes: from_openapi" in message


@pytest.mark.parametrize(
    ("service", "words"),
    [
        ("    openapi: nope.yaml\n    routes: from_openapi", "does not exist"),
        ("    routes: from_openapi", "routes: from_openapi needs openapi"),
        ("    openapi: spec.json\n    routes: from_openapi", "need route_defaults with auth"),
        (
            "    openapi: spec.json\n    route_defaults: {auth: none, path: /x}\n    routes: from_openapi",
            "route_defaults cannot set path",
        ),
        (
            "    openapi: spec.json\n    route_defaults: {auth: none, scopes: [a]}\n    routes: from_openapi",
            "scopes need authentication",
        ),
        (
            "    validate: strict\n    routes:\n      - {path: /x, methods: [GET], auth: none}",
            "validate needs openapi",
        ),
        (
            "    openapi: spec.json\n    validate: sometimes\n    route_defaults: {auth: none}\n"
            "    routes: from_openapi",
            "validate",
        ),
    ],
)
def test_config_mistakes_are_named(tmp_path: Path, service: str, words: str) -> None:
    write(tmp_path, SPEC_31)
    assert words in problems(tmp_path, service)


def test_an_invalid_document_is_refused_with_where_and_why(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(SPEC_31))
    bad["paths"]["/orders"]["post"]["parameters"] = [{"name": "x", "in": "nowhere"}]
    write(tmp_path, bad)
    generated = "    openapi: spec.json\n    route_defaults: {auth: none}\n    routes: from_openapi"
    message = problems(tmp_path, generated)
    assert "not a valid OpenAPI document at paths//orders/post/parameters/0/in" in message
    assert '"nowhere" is not one of' in message and "Failed validating" not in message
    assert "test.yaml:6" in message  # the line of the service's openapi: key


def test_yaml_that_is_not_openapi_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("swagger: '2.0'\ninfo: {}\n")
    assert "not an OpenAPI 3.0 or 3.1 document" in problems(
        tmp_path, "    openapi: a.yaml\n    route_defaults: {auth: none}\n    routes: from_openapi"
    )
    (tmp_path / "b.yaml").write_text("openapi: 3.1.0\n  : [\n")
    assert "not valid YAML" in problems(
        tmp_path, "    openapi: b.yaml\n    route_defaults: {auth: none}\n    routes: from_openapi"
    )


# -- schema translation --------------------------------------------------------------------------------


def ops(spec: dict[str, Any], **kwargs: Any) -> dict[tuple[str, str], Any]:
    return compile_operations(spec, **kwargs)


def body_schema(op: Any) -> Any:
    return op.media["application/json"]


def test_read_only_fields_cannot_be_sent_and_are_not_required() -> None:
    order = body_schema(ops(SPEC_31)[("POST", "/api/orders")])
    assert order.valid({"items": []})
    assert not order.valid({"id": "x", "items": []})
    assert order.errors({"id": "x", "items": []}, "body") == [
        ("body.id", "is read-only: it cannot be sent in a request")
    ]


def test_recursive_schemas_and_int32_bounds() -> None:
    order = body_schema(ops(SPEC_31)[("POST", "/api/orders")])
    assert order.valid({"items": [{"qty": 1}], "parent": {"items": [], "parent": {"items": []}}})
    assert not order.valid({"items": [], "parent": {"items": [{"qty": 2**31}]}})
    assert order.errors({"items": [], "parent": {"items": [{"qty": 2**31}]}}, "body") == [
        ("body.parent.items[0].qty", f"must be <= {2**31 - 1}")
    ]
    assert order.valid({"items": [], "note": None})


def test_openapi_30_nullable_and_boolean_exclusive_bounds() -> None:
    spec = json.loads(json.dumps(SPEC_31))
    spec["openapi"] = "3.0.3"
    spec["components"]["schemas"]["Item"]["properties"] = {
        "price": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True},
        "kind": {"type": "string", "enum": ["a", "b"], "nullable": True},
    }
    order = body_schema(ops(spec)[("POST", "/api/orders")])
    assert order.valid({"items": [{"price": 0.5, "kind": None}, {"price": None, "kind": "a"}]})
    assert not order.valid({"items": [{"price": 0}]})
    assert not order.valid({"items": [{"kind": "c"}]})


def test_reject_unknown_fields_closes_every_object_and_merges_all_of() -> None:
    spec = json.loads(json.dumps(SPEC_31))
    spec["components"]["schemas"]["Item"] = {
        "allOf": [
            {"$ref": "#/components/schemas/Base"},
            {"type": "object", "properties": {"qty": {"type": "integer"}}},
        ]
    }
    spec["components"]["schemas"]["Base"] = {"type": "object", "properties": {"sku": {"type": "string"}}}
    loose = body_schema(ops(spec)[("POST", "/api/orders")])
    strict = body_schema(ops(spec, reject_unknown=True)[("POST", "/api/orders")])
    doc = {"items": [{"sku": "a", "qty": 1}]}
    assert loose.valid(doc) and strict.valid(doc)
    sneaky = {"items": [{"sku": "a", "qty": 1, "price": 0}], "is_admin": True}
    assert loose.valid(sneaky)
    assert not strict.valid(sneaky)
    assert sorted(strict.errors(sneaky, "body")) == [
        ("body.is_admin", "is not an allowed property"),
        ("body.items[0].price", "is not an allowed property"),
    ]


def test_unsupported_keywords_and_external_refs_are_spec_errors() -> None:
    spec = json.loads(json.dumps(SPEC_31))
    spec["components"]["schemas"]["Item"] = {"type": "object", "unevaluatedProperties": False}
    with pytest.raises(SpecError, match="unevaluatedProperties is not supported"):
        ops(spec)
    spec["components"]["schemas"]["Item"] = {"$ref": "other.yaml#/Item"}
    with pytest.raises(SpecError, match="inside the document"):
        ops(spec)


def test_error_reasons_come_from_the_schema_never_the_value() -> None:
    spec = json.loads(json.dumps(SPEC_31))
    spec["components"]["schemas"]["Item"]["properties"]["sku"] = {
        "type": "string",
        "pattern": "^[A-Z]{3}$",
        "maxLength": 3,
        "format": "uuid",
    }
    order = body_schema(ops(spec)[("POST", "/api/orders")])
    payload = "<script>alert('sk_live_123')</script>"
    doc = {"items": [{"sku": payload, "qty": payload}], payload: 1, "note": 5}
    errors = order.errors(doc, "body")
    text = json.dumps(errors)
    assert payload not in text and "sk_live" not in text and "script" not in text
    assert ("body.items[0].qty", "must be of type integer") in errors
    assert ("body.items[0].sku", "does not match the required pattern") in errors
    assert ("body.note", "must be of type string or null") in errors


def test_a_schema_that_does_not_compile_is_a_config_error_at_its_openapi_line(tmp_path: Path) -> None:
    from bastion.runtime.gateway import build_gateway

    bad = json.loads(json.dumps(SPEC_31))
    bad["components"]["schemas"]["Item"] = {"type": "object", "unevaluatedProperties": False}
    write(tmp_path, bad)
    generated = "    openapi: spec.json\n    route_defaults: {auth: none}\n    routes: from_openapi"
    loaded = config(tmp_path, generated)
    with pytest.raises(ConfigError) as info:
        build_gateway(loaded)
    assert "test.yaml:6: services[0].openapi" in str(info.value)
    assert "/orders/{order_id}: the schema keyword unevaluatedProperties is not supported" in str(info.value)


class TestUuidFormatInRust:
    """``format: uuid`` runs as a pattern in the fast validator; the answers stay the format's."""

    SCHEMA: dict[str, Any] = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
            "ref": {"type": "string", "format": "uuid", "pattern": "^0"},
            "format": {"type": "string", "enum": ["uuid", "other"]},  # a property named format: data
            "any": {"format": "uuid"},  # a non-string value is not checked by a string format
        },
    }
    GOOD = "5b1e2a4c-1d2e-4f3a-9b8c-7d6e5f4a3b2c"

    @pytest.mark.parametrize(
        "value,valid",
        [
            ({"id": GOOD, "ids": [GOOD, GOOD.upper()]}, True),
            ({"id": GOOD + "x"}, False),
            ({"id": "5b1e2a4c1d2e4f3a9b8c7d6e5f4a3b2c"}, False),
            ({"ids": [GOOD, "nope"]}, False),
            ({"ref": "0" + GOOD[1:]}, True),
            ({"ref": GOOD}, False),  # a uuid, but not starting with 0
            ({"ref": "0abc"}, False),  # starts with 0, not a uuid
            ({"format": "uuid"}, True),
            ({"format": "something"}, False),
            ({"any": 42}, True),
            ({"any": "not-a-uuid"}, False),
        ],
    )
    def test_same_answers_as_the_format(self, value: dict[str, Any], valid: bool) -> None:
        from bastion.checks.openapi import _Schema

        schema = _Schema(self.SCHEMA)
        assert schema.valid(value) is valid
        # jsonschema, checking the format itself on the untouched schema, agrees.
        assert (not any(True for _ in schema._slow_validator().iter_errors(value))) is valid


def test_the_media_type_answer_is_remembered_per_spelling_and_bounded() -> None:
    op = ops(SPEC_31)[("POST", "/api/orders")]
    json_schema = body_schema(op)
    for spelling in ("application/json", "Application/JSON; charset=utf-8", " application/json ;x=1"):
        assert op.media_for(spelling) == (True, json_schema, "application/json")
        assert op.media_for(spelling) == (True, json_schema, "application/json")  # from the memo
    assert op.media_for("text/plain") == (False, None, "text/plain")
    assert op.media_for(None) == (False, None, "")
    for n in range(500):  # a client inventing spellings cannot grow it without bound
        assert op.media_for(f"application/x-{n}")[0] is False
    assert len(op._media_memo) <= 64
    assert op.media_for("application/json")[1] is json_schema
