"""The admin API mounted as a sub-application of the protected application:
``app.mount("/bastion", BastionAdmin())`` — the same admin API (``/bastion/admin/v1/…``, ``/bastion/metrics``)
on the middleware's running engine, behind the admin listener's guard (``admin.allow_ips``, the bearer token).

In process (``httpx.ASGITransport``, whose ``client`` sets the TCP peer), with a recording layer inside
Bastion: an admin request never reaches the application's router, even when one of its routes matches.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.routing import Mount

from bastion.asgi import BastionAdmin, BastionMiddleware
from bastion.testing import memory_gateway

from . import _scenarios as sc
from ._identity import PEPPER

TOKEN = "admin-token-0123456789abcdef"  # a test fixture, not a secret
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"

CONFIG = """
identity: {pepper: "${env:BASTION_PEPPER}"}
admin: {token: "${env:ADMIN_TOKEN}", allow_ips: [127.0.0.1/32]}
services:
  - name: orders
    upstream: app
    routes:
      - {path: "/v1/orders/{order_id}", methods: [GET], auth: [api_key], scopes: [orders:read]}
"""
ENV = {"BASTION_PEPPER": PEPPER, "ADMIN_TOKEN": TOKEN}


def orders_app(mount: str = "/bastion") -> tuple[FastAPI, sc.Reached]:
    app = FastAPI()

    @app.get("/v1/orders/{order_id}")
    async def order(order_id: str, request: Request) -> dict[str, Any]:
        who = request.scope["bastion"]
        return {"id": order_id, "consumer": who.consumer if who else None}

    # Declared before the mount, so Starlette would route admin paths here: Bastion must not let it.
    @app.get("/bastion/{rest:path}")
    async def decoy(rest: str) -> dict[str, str]:
        return {"decoy": rest}

    app.mount(mount, BastionAdmin())
    reached = sc.Reached()
    app.add_middleware(reached.layer)
    return app, reached


def problem(reply: httpx.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith(PROBLEM)
    assert reply.json()["code"] == code


class TestMountedAdmin:
    def test_the_guard_is_the_admin_listeners(self) -> None:
        with memory_gateway(CONFIG, **ENV) as bastion:
            app, reached = orders_app()
            app.add_middleware(BastionMiddleware, config=bastion)

            async def scenario(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
                return {
                    "health": await client.get("/bastion/admin/v1/health"),
                    "no_token": await client.get("/bastion/admin/v1/consumers"),
                    "wrong_token": await client.get(
                        "/bastion/admin/v1/consumers", headers={"Authorization": "Bearer nope"}
                    ),
                    "merged": await client.get("/bastion//admin/v1/consumers"),
                    "escaped": await client.get("/%62astion/admin/v1/./consumers"),
                    "token": await client.get("/bastion/admin/v1/consumers", headers=AUTH),
                    "metrics": await client.get("/bastion/metrics", headers=AUTH),
                    "unknown": await client.get("/bastion/admin/v2/consumers", headers=AUTH),
                }

            r = sc.in_process(app, scenario)

            async def from_elsewhere(client: httpx.AsyncClient) -> httpx.Response:
                return await client.get("/bastion/admin/v1/consumers", headers=AUTH)

            app2, _ = orders_app()
            app2.add_middleware(BastionMiddleware, config=bastion)
            elsewhere = sc.in_process(app2, from_elsewhere, client=("203.0.113.9", 4000))
            failed = [e["reason"] for e in bastion.events("admin.auth_failed")]
            ip_denied = bastion.events("admin.ip_denied")
        assert r["health"].json()["status"] == "ok"
        for name in ("no_token", "wrong_token", "merged", "escaped"):
            problem(r[name], 401, "admin_unauthorized")
        assert failed == ["admin_unauthorized"] * 4
        assert r["token"].json() == {"consumers": []}
        assert r["metrics"].status_code == 200 and b"bastion_" in r["metrics"].content
        problem(r["unknown"], 404, "not_found")  # the admin API's own 404, not the decoy's answer
        problem(elsewhere, 403, "admin_ip_denied")
        assert [e["source_ip"] for e in ip_denied] == ["203.0.113.9"]
        assert reached.requests == []  # neither the decoy route nor the mount was ever called

    def test_a_key_created_through_it_opens_a_protected_endpoint_and_events_are_listed(self) -> None:
        with memory_gateway(CONFIG, **ENV) as bastion:
            app, reached = orders_app()
            app.add_middleware(BastionMiddleware, config=bastion)

            async def scenario(client: httpx.AsyncClient) -> dict[str, Any]:
                out: dict[str, Any] = {}
                out["refused"] = await client.get("/v1/orders/42")
                consumer = {"name": "shop", "scopes": ["orders:read"]}
                out["consumer"] = await client.post(
                    "/bastion/admin/v1/consumers", json=consumer, headers=AUTH
                )
                out["key"] = await client.post(
                    "/bastion/admin/v1/keys", json={"consumer": "shop"}, headers=AUTH
                )
                key = out["key"].json()["key"]
                out["order"] = await client.get("/v1/orders/42", headers={"X-API-Key": key})
                bastion.events()  # the writer batches: what is queued is written first
                out["denied"] = await client.get(
                    "/bastion/admin/v1/events", params={"type": "request.denied"}, headers=AUTH
                )
                out["created"] = await client.get(
                    "/bastion/admin/v1/events", params={"type": "api_key.created"}, headers=AUTH
                )
                return out

            r = sc.in_process(app, scenario)
        problem(r["refused"], 401, "auth_required")
        assert r["consumer"].status_code == 201, r["consumer"].text
        assert r["key"].status_code == 201, r["key"].text
        assert r["key"].headers["cache-control"] == "no-store"
        assert r["order"].status_code == 200, r["order"].text
        assert r["order"].json() == {"id": "42", "consumer": "shop"}
        denied = r["denied"].json()["events"]
        assert [(e["reason"], e["request_id"]) for e in denied] == [
            ("auth_required", r["refused"].headers["x-request-id"])
        ]
        created = r["created"].json()["events"]
        assert [(e["actor"], e["resource"]) for e in created] == [
            ("admin:token", f"api_key:{r['key'].json()['id']}")
        ]
        assert reached.requests == [("GET", "/v1/orders/42")]  # the application saw only its own endpoint

    def test_a_nested_mount_is_found(self) -> None:
        with memory_gateway(CONFIG, **ENV) as bastion:
            app = FastAPI()
            app.router.routes.append(Mount("/ops", routes=[Mount("/bastion", app=BastionAdmin())]))
            app.add_middleware(BastionMiddleware, config=bastion)

            async def scenario(client: httpx.AsyncClient) -> list[int]:
                return [
                    (await client.get("/ops/bastion/admin/v1/health")).status_code,
                    (await client.get("/ops/bastion/admin/v1/keys")).status_code,
                    (await client.get("/ops/bastion/admin/v1/keys", headers=AUTH)).status_code,
                ]

            assert sc.in_process(app, scenario) == [200, 401, 200]


class TestMisuse:
    def test_without_the_middleware_the_mount_refuses(self) -> None:
        app, _ = orders_app(mount="/admin-api")

        async def scenario(client: httpx.AsyncClient) -> httpx.Response:
            return await client.get("/admin-api/admin/v1/consumers", headers=AUTH)

        problem(sc.in_process(app, scenario), 503, "admin_unavailable")

    def test_a_mount_needs_the_admin_block(self) -> None:
        config = CONFIG.replace('admin: {token: "${env:ADMIN_TOKEN}", allow_ips: [127.0.0.1/32]}\n', "")
        with memory_gateway(config, **ENV) as bastion:
            app, _ = orders_app()
            app.add_middleware(BastionMiddleware, config=bastion)
            with pytest.raises(
                RuntimeError, match=r"BastionAdmin is mounted at /bastion: .* needs an admin: block"
            ):
                sc.in_process(app, lambda client: client.get("/v1/orders/1"))

    @pytest.mark.parametrize("mount", ["/", "/{tenant}/bastion"])
    def test_a_mount_at_the_root_or_under_a_parameter_is_refused(self, mount: str) -> None:
        with memory_gateway(CONFIG, **ENV) as bastion:
            app = FastAPI()
            app.mount(mount, BastionAdmin())
            app.add_middleware(BastionMiddleware, config=bastion)
            with pytest.raises(RuntimeError, match=f"BastionAdmin is mounted at {mount}: mount it"):
                sc.in_process(app, lambda client: client.get("/v1/orders/1"))
