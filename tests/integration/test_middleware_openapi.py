"""``services[].openapi: app``: Bastion validates requests against the wrapped FastAPI application's own
generated OpenAPI document, read once when the application starts.

The example application (examples/fastapi_app, pydantic models, ``openapi: app``) runs in process with a
recording layer *inside* Bastion, so each test can say whether a request reached the application at all.
The rest: routes generated from the document (``routes: from_openapi``) and the inventory that lists them,
where the document comes from (``scope["app"]``, the wrapped application, ``openapi=``), the clear errors
when there is none, and the config switch (``bastion serve`` and ``bastion check`` refuse the key; the
middleware's ``check --middleware`` and the identity commands do not need the document).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bastion.adapters.cli import main as cli
from bastion.asgi import BastionAdmin, BastionMiddleware
from bastion.config import ConfigError, load_config, load_config_text
from bastion.testing import MemoryGateway, make_key, memory_gateway

from . import _scenarios as sc
from ._identity import PEPPER

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastapi_app"
PROBLEM = "application/problem+json"
ENV = {"BASTION_PEPPER": PEPPER, "TWILIO_AUTH_TOKEN": sc.TWILIO_TOKEN}
ADMIN_TOKEN = "admin-token-0123456789abcdef"  # a test fixture, not a secret


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


def protected(api: FastAPI, bastion: Any, **options: Any) -> tuple[FastAPI, sc.Reached]:
    """``api`` with a recorder inside BastionMiddleware: what it records got past Bastion."""
    reached = sc.Reached()
    api.add_middleware(reached.layer)
    api.add_middleware(BastionMiddleware, config=bastion, **options)
    return api, reached


def problem(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith(PROBLEM)
    doc: dict[str, Any] = reply.json()
    assert doc["code"] == code
    return doc


# -- the example application --------------------------------------------------------------------------


@pytest.fixture
def example() -> Any:
    with memory_gateway(EXAMPLE / "bastion.yaml", **ENV) as bastion:
        yield bastion


ORDER = {"email": "a@example.com", "items": [{"sku": "ABC-1", "qty": 2}]}


class TestExampleApp:
    def test_a_body_the_models_refuse_is_bastions_422_and_the_endpoint_never_runs(
        self, example: MemoryGateway
    ) -> None:
        app, reached = protected(_example().build_api(), example)

        async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
            key = make_key(example, "shop", ["orders:read", "orders:write"])
            bad = {"email": "a@example.com", "items": [{"sku": "abc", "qty": 0}]}
            refused = await client.post("/v1/orders", json=bad, headers={"X-API-Key": key})
            placed = await client.post("/v1/orders", json=ORDER, headers={"X-API-Key": key})
            return refused, placed

        refused, placed = sc.in_process(app, scenario)
        doc = problem(refused, 422, "request_invalid")  # problem+json: Bastion's, not FastAPI's {"detail"}
        assert {e["location"] for e in doc["errors"]} == {"body.items[0].sku", "body.items[0].qty"}
        assert placed.status_code == 201, placed.text
        assert placed.json()["placed_by"] == "shop"
        assert reached.requests == [("POST", "/v1/orders")]  # only the valid one got to the application
        denied = example.events("request.denied")
        assert [(e["reason"], e["request_id"]) for e in denied] == [
            ("request_invalid", refused.headers["x-request-id"])
        ]

    def test_unknown_fields_are_refused_by_reject_unknown_fields(self, example: MemoryGateway) -> None:
        app, reached = protected(_example().build_api(), example)
        # The models do not forbid extra fields, so the document allows them: the refusal is Bastion's.
        schemas = _example().build_api().openapi()["components"]["schemas"]
        assert "additionalProperties" not in schemas["NewOrder"]
        assert "additionalProperties" not in schemas["Item"]

        async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
            key = make_key(example, "shop", ["orders:write"])
            top = {**ORDER, "paid": True}
            nested = {**ORDER, "items": [{"sku": "ABC-1", "qty": 1, "discount": 100}]}
            return [
                await client.post("/v1/orders", json=b, headers={"X-API-Key": key}) for b in (top, nested)
            ]

        top, nested = sc.in_process(app, scenario)
        assert problem(top, 422, "request_invalid")["errors"] == [
            {"location": "body.paid", "reason": "is not an allowed property"}
        ]
        assert problem(nested, 422, "request_invalid")["errors"] == [
            {"location": "body.items[0].discount", "reason": "is not an allowed property"}
        ]
        assert reached.requests == []

    def test_the_document_is_read_once_when_the_application_starts(self, example: MemoryGateway) -> None:
        api = _example().build_api()
        generate = api.openapi
        calls: list[int] = []

        def counted() -> dict[str, Any]:
            calls.append(1)
            return generate()

        api.openapi = counted  # type: ignore[method-assign]
        app, _ = protected(api, example)
        assert example.loaded.app_openapi == ("orders",)  # loaded without it: the application decides

        async def scenario(client: httpx.AsyncClient) -> list[Any]:
            started = len(calls)
            key = make_key(example, "shop", ["orders:read", "orders:write"])
            for _ in range(3):
                await client.post("/v1/orders", json=ORDER, headers={"X-API-Key": key})
                await client.get("/v1/orders/ord-1", headers={"X-API-Key": key})
            assert example.gateway is not None
            return [started, len(calls), example.gateway.settings.services[0].openapi]

        started, after, document = sc.in_process(app, scenario)
        assert (started, after) == (1, 1)
        assert document is not None and document.spec == generate()

    def test_without_a_lifespan_the_first_request_reads_it(self, example: MemoryGateway) -> None:
        app, reached = protected(_example().build_api(), example)

        async def scenario(client: httpx.AsyncClient) -> int:
            key = make_key(example, "shop", ["orders:write"])
            bad = await client.post("/v1/orders", json={"email": 5, "items": []}, headers={"X-API-Key": key})
            await example.middleware.shutdown()  # type: ignore[union-attr]
            return bad.status_code

        assert sc.in_process(app, scenario, run_lifespan=False) == 422
        assert reached.requests == []


# -- routes generated from the application's document, and the inventory --------------------------------


class NewItem(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    price: int = Field(ge=0)


def items_api(**options: Any) -> FastAPI:
    api = FastAPI(title="Items", version="1", **options)

    @api.get("/v1/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @api.post("/v1/items", status_code=201)
    async def add_item(item: NewItem) -> dict[str, Any]:
        return item.model_dump()

    @api.get("/internal/debug", include_in_schema=False)
    async def debug() -> dict[str, str]:
        return {"secret": "not for clients"}

    return api


GENERATED = """
identity: {pepper: "${env:BASTION_PEPPER}"}
admin: {token: "${env:ADMIN_TOKEN}", allow_ips: [127.0.0.1/32]}
services:
  - name: items
    upstream: app
    openapi: app
    routes: from_openapi
    route_defaults: {auth: [api_key], rate_limit: [100/minute]}
"""


class TestGeneratedRoutes:
    def test_routes_come_from_the_document_and_the_inventory_declares_them(self) -> None:
        with memory_gateway(GENERATED, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion:
            api = items_api()
            api.mount("/bastion", BastionAdmin())
            app, reached = protected(api, bastion)

            async def scenario(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
                key = {"X-API-Key": make_key(bastion, "shop", [])}
                auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                return {
                    "get": await client.get("/v1/items/7", headers=key),
                    "bad_param": await client.get("/v1/items/seven", headers=key),
                    "add": await client.post("/v1/items", json={"name": "pen", "price": 3}, headers=key),
                    "bad_body": await client.post("/v1/items", json={"name": "", "price": -1}, headers=key),
                    "no_key": await client.get("/v1/items/7"),
                    "hidden": await client.get("/internal/debug", headers=key),
                    "inventory": await client.get("/bastion/admin/v1/inventory", headers=auth),
                }

            r = sc.in_process(app, scenario)
        assert r["get"].json() == {"id": 7}
        assert r["add"].status_code == 201
        assert problem(r["bad_param"], 400, "request_invalid")["errors"] == [  # parameters: 400, bodies: 422
            {"location": "path.item_id", "reason": "must be of type integer"}
        ]
        problem(r["bad_body"], 422, "request_invalid")
        problem(r["no_key"], 401, "auth_required")  # route_defaults apply to every generated route
        problem(r["hidden"], 404, "route_not_found")  # not in the document: no route, never the app
        assert reached.requests == [("GET", "/v1/items/7"), ("POST", "/v1/items")]
        declared = {(tuple(d["methods"]), d["path"]): d for d in r["inventory"].json()["declared"]}
        assert set(declared) == {(("GET",), "/v1/items/{item_id}"), (("POST",), "/v1/items")}
        assert all(d["from_openapi"] and d["auth"] == ["api_key"] for d in declared.values())
        assert all(d["rate_limit"] == ["100/minute"] for d in declared.values())

    def test_the_wrapped_application_itself_gives_the_document(self) -> None:
        """``BastionMiddleware(fastapi_app, …)`` written around the application, not added to it."""
        with memory_gateway(GENERATED, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion:
            app = BastionMiddleware(items_api(), config=bastion)

            async def scenario(client: httpx.AsyncClient) -> list[int]:
                key = {"X-API-Key": make_key(bastion, "shop", [])}
                ok = await client.get("/v1/items/1", headers=key)
                bad = await client.get("/v1/items/x", headers=key)
                return [ok.status_code, bad.status_code]

            assert sc.in_process(app, scenario) == [200, 400]

    def test_listed_routes_must_agree_with_the_document(self) -> None:
        config = GENERATED.replace(
            "routes: from_openapi\n    route_defaults: {auth: [api_key], rate_limit: [100/minute]}",
            "routes:\n      - {path: '/v1/items/{item_id}', methods: [GET], auth: none}\n"
            "      - {path: '/v1/items/{id}/price', methods: [GET], auth: none}",
        )
        with memory_gateway(config, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion:
            app, _ = protected(items_api(), bastion)
            with pytest.raises(RuntimeError) as failed:
                sc.in_process(app, lambda client: client.get("/v1/items/1"))
        message = str(failed.value)
        assert "services[0].routes[1].path" in message
        assert "GET /v1/items/{id}/price is not an operation of the OpenAPI document" in message


# -- where the document comes from, and when there is none --------------------------------------------


class TestNoDocument:
    def test_a_fastapi_application_without_openapi_is_a_clear_error(self) -> None:
        with memory_gateway(GENERATED, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion:
            app, reached = protected(items_api(openapi_url=None), bastion)
            with pytest.raises(RuntimeError) as failed:  # lifespan.startup.failed: the server does not start
                sc.in_process(app, lambda client: client.get("/v1/items/1"))
            assert bastion.gateway is None
        message = str(failed.value)
        assert "<memory_gateway>:7: services[0].openapi:" in message
        assert "publishes no OpenAPI document (FastAPI(openapi_url=None))" in message
        assert reached.requests == []

    def test_without_a_lifespan_the_first_request_fails_the_same_way(self) -> None:
        with memory_gateway(GENERATED, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion:
            app, reached = protected(items_api(openapi_url=None), bastion)
            with pytest.raises(ConfigError, match=r"services\[0\]\.openapi: .*openapi_url=None"):
                sc.in_process(app, lambda client: client.get("/v1/items/1"), run_lifespan=False)
        assert reached.requests == []

    def test_the_document_can_be_given_explicitly(self) -> None:
        with memory_gateway(GENERATED, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion:
            api = items_api(openapi_url=None)  # no /openapi.json, yet the document exists
            app, _ = protected(api, bastion, openapi=api.openapi)

            async def scenario(client: httpx.AsyncClient) -> list[int]:
                key = {"X-API-Key": make_key(bastion, "shop", [])}
                bad = await client.post("/v1/items", json={"name": "pen"}, headers=key)
                return [(await client.get("/v1/items/1", headers=key)).status_code, bad.status_code]

            assert sc.in_process(app, scenario) == [200, 422]

    def test_a_starlette_application_has_no_document(self) -> None:
        async def ping(_request: Any) -> PlainTextResponse:
            return PlainTextResponse("pong")

        with memory_gateway(GENERATED, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion:
            app = Starlette(routes=[Route("/v1/items/{item_id}", ping)])
            app.add_middleware(BastionMiddleware, config=bastion)
            with pytest.raises(RuntimeError, match=r"services\[0\]\.openapi: .*is not a FastAPI application"):
                sc.in_process(app, lambda client: client.get("/v1/items/1"))

    def test_a_document_given_as_a_mapping_is_checked_at_construction(self) -> None:
        not_openapi = r"app\.openapi\(\) is not an OpenAPI 3\.0 or 3\.1 document"
        with (
            memory_gateway(GENERATED, BASTION_PEPPER=PEPPER, ADMIN_TOKEN=ADMIN_TOKEN) as bastion,
            pytest.raises(ConfigError, match=not_openapi),
        ):
            BastionMiddleware(items_api(), config=bastion, openapi={"swagger": "2.0"})


# -- the config switch ----------------------------------------------------------------------------------


APP_DOC = """
storage: {database: "sqlite:///{db}"}
identity: {pepper: "${env:BASTION_PEPPER}"}
services:
  - name: items
    upstream: app
    openapi: app
    routes: from_openapi
    route_defaults: {auth: [api_key]}
"""


@pytest.fixture
def app_doc_config(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(APP_DOC.replace("{db}", str(tmp_path / "bastion.db")), encoding="utf-8")
    return path


NOT_HERE = "services[0].openapi: openapi: app is the application's generated document, which only"


class TestConfig:
    def test_bastion_check_and_serve_refuse_the_key(self, app_doc_config: Path) -> None:
        runner = CliRunner()
        env = {"BASTION_PEPPER": PEPPER}
        checked = runner.invoke(cli, ["check", "-c", str(app_doc_config)], env=env)
        assert checked.exit_code == 1
        assert f"bastion.yaml:7: {NOT_HERE}" in checked.output
        served = runner.invoke(cli, ["serve", "-c", str(app_doc_config)], env=env)
        assert served.exit_code == 1
        assert NOT_HERE in served.output
        with pytest.raises(ConfigError, match=r"services\[0\]\.openapi: openapi: app is the application's"):
            load_config(app_doc_config, env=env)

    def test_bastion_check_middleware_accepts_it_and_says_what_waits(self, app_doc_config: Path) -> None:
        checked = CliRunner().invoke(
            cli, ["check", "--middleware", "-c", str(app_doc_config)], env={"BASTION_PEPPER": PEPPER}
        )
        assert checked.exit_code == 0, checked.output
        assert "services[0].openapi: openapi: app: the application's document is read when" in checked.output

    def test_the_identity_commands_need_no_document(self, app_doc_config: Path) -> None:
        created = CliRunner().invoke(
            cli,
            ["consumers", "create", "shop", "--scope", "items:read", "-c", str(app_doc_config)],
            env={"BASTION_PEPPER": PEPPER},
        )
        assert created.exit_code == 0, created.output

    def test_openapi_app_needs_upstream_app(self) -> None:
        text = APP_DOC.replace("upstream: app", "upstream: http://127.0.0.1:9")
        with pytest.raises(ConfigError, match=r"services\[0\]\.openapi: .*the service needs upstream: app"):
            load_config_text(text, env={"BASTION_PEPPER": PEPPER}, defer_app_openapi=True)

    def test_route_defaults_are_checked_before_the_document_is_known(self) -> None:
        text = APP_DOC.replace("route_defaults: {auth: [api_key]}", "route_defaults: {scopes: [a]}")
        with pytest.raises(ConfigError, match=r"services\[0\]\.route_defaults: routes generated .* need"):
            load_config_text(text, env={"BASTION_PEPPER": PEPPER}, defer_app_openapi=True)

    def test_a_deferred_config_is_completed_by_the_document(self) -> None:
        loaded = load_config_text(APP_DOC, env={"BASTION_PEPPER": PEPPER}, defer_app_openapi=True)
        assert loaded.app_openapi == ("items",) and loaded.settings.services[0].routes == []
        done = loaded.with_app_openapi({**items_api().openapi(), "servers": [{"url": "/ignored"}]})
        assert done.app_openapi == ()
        assert [(r.methods, r.path) for r in done.settings.services[0].routes] == [
            (["GET"], "/v1/items/{item_id}"),
            (["POST"], "/v1/items"),
        ]
