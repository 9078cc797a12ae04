"""Two of the issue's sensitive actions over the real admin listener: exporting the event log
(``GET /admin/v1/events/export``, JSON Lines, the Monitor API's filters) and revoking every key of a consumer
(``POST /admin/v1/consumers/{name}/keys/revoke-all``). Both need an operator and, for a session, a second
factor checked within ``step_up_within`` — shown with an injected clock on the same store; the bearer
token (automation) is exempt. The export holds what the event log holds and nothing more: no secret made
anywhere on the way shows up in it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest

from bastion.adapters.admin import build_admin_app
from bastion.core.forwarding import NetworkSet
from bastion.store.database import open_database

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread
from .test_admin import wait_for
from .test_admin_accounts import PASSWORD, PEPPER, FakeClock, seed
from .test_console import api, console_gateway, emit, events_of

P = "/admin/v1"
EXPORT = f"{P}/events/export"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with EchoUpstream() as up:
        gateway = console_gateway(up, tmp_path_factory.mktemp("export") / "bastion.db")
        with gateway:
            yield gateway


def lines(reply: httpx.Response) -> list[dict[str, Any]]:
    assert reply.status_code == 200, reply.text[:300]
    return [json.loads(line) for line in reply.text.splitlines()]


# -- the export ------------------------------------------------------------------------------------------


def test_the_export_is_json_lines_oldest_first_with_the_monitor_api_filters(gw: GatewayThread) -> None:
    now = time.time()
    for i in range(5):
        emit(
            gw,
            "request.denied" if i % 2 else "auth.failed",
            severity="error" if i == 4 else "warning",
            source_ip="198.51.100.20",
            actor=f"consumer:exp-{i % 2}/key:k{i}",
            resource=f"api_key:exp-{i}",
            path=f"/export/{i}",
            reason="auth_invalid",
        )
    emit(gw, "consumer.created", now=now - 7200, severity="notice", source_ip="198.51.100.20", actor="cli:x")
    wait_for(lambda: len(events_of(gw, source_ip="198.51.100.20")) == 6, what="the events to export")
    with api(gw) as client:
        reply = client.get(EXPORT, params={"source_ip": "198.51.100.20"})
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        assert reply.headers["cache-control"] == "no-store"
        assert reply.headers["content-disposition"].startswith('attachment; filename="bastion-events-')
        everything = lines(reply)
        assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)  # oldest first
        for params in (
            {},
            {"type": "request."},
            {"actor": "consumer:exp-1"},
            {"resource": "api_key:exp-3"},
            {"severity": "error"},
            {"min_severity": "warning"},
            {"since": "1h"},
            {"until": "1h"},
        ):
            query = {"source_ip": "198.51.100.20", **params}
            listed = client.get(f"{P}/events", params={**query, "page_size": 1000}).json()["events"]
            assert lines(client.get(EXPORT, params=query)) == list(reversed(listed)), params
            assert listed, params
        # an export stops at `limit`; `after` continues where it stopped
        first = lines(client.get(EXPORT, params={"source_ip": "198.51.100.20", "limit": 4}))
        rest = lines(
            client.get(EXPORT, params={"source_ip": "198.51.100.20", "after": first[-1]["id"], "limit": 4})
        )
        assert first + rest == everything and len(first) == 4
        for bad in ({"severity": "loud"}, {"since": "yesterday"}, {"after": "x"}, {"limit": 0}):
            refused = client.get(EXPORT, params=bad)
            assert refused.status_code == 400 and refused.headers["content-type"].startswith(
                "application/problem+json"
            ), bad

    def exported() -> Any:
        found = [
            e
            for e in events_of(gw, type="events.exported", actor="admin:token")
            if e["data"]["filters"] == {"source_ip": "198.51.100.20"} and e["data"]["limit"] == 100_000
        ]
        return found and found[-1]

    event = wait_for(exported, what="the events.exported event")
    assert event["data"]["count"] == 6 and event["data"]["complete"] is True
    assert event["data"]["truncated"] is False and event["severity"] == "notice"


def test_the_export_holds_no_secret_beyond_the_event_log(gw: GatewayThread) -> None:
    with api(gw) as client:
        assert (
            client.post(f"{P}/consumers", json={"name": "exp-secrets", "scopes": ["a:b"]}).status_code == 201
        )
        key = client.post(f"{P}/keys", json={"consumer": "exp-secrets"}).json()
        oauth = client.post(f"{P}/clients", json={"consumer": "exp-secrets"}).json()
        made = client.post(
            f"{P}/admins", json={"name": "exp-gen", "email": "exp-gen@example.com", "role": "viewer"}
        ).json()
        wait_for(
            lambda: events_of(gw, type="admin_account.created", resource="admin:exp-gen"),
            what="the account's event",
        )
        text = client.get(EXPORT).text
        exported = [json.loads(line) for line in text.splitlines()]
        by_id = {e["id"]: e for e in client.get(f"{P}/events", params={"page_size": 1000}).json()["events"]}
    for secret in (key["key"], oauth["client_secret"], made["password"], ADMIN_TOKEN, PEPPER, PASSWORD):
        assert secret not in text
    assert "hash" not in exported[0] and "prev_hash" not in exported[0]  # the chain's columns stay inside
    for event in exported:  # each line is the Monitor API's document of that event, nothing more
        if event["id"] in by_id:
            assert event == by_id[event["id"]]


# -- revoking every key of a consumer --------------------------------------------------------------------


def test_revoke_all_keys_of_a_consumer(gw: GatewayThread) -> None:
    with api(gw) as client:
        client.post(f"{P}/consumers", json={"name": "fleet", "scopes": []})
        client.post(f"{P}/consumers", json={"name": "bystander", "scopes": []})
        made = [client.post(f"{P}/keys", json={"consumer": "fleet"}).json() for _ in range(3)]
        other = client.post(f"{P}/keys", json={"consumer": "bystander"}).json()
        client.post(f"{P}/keys/{made[2]['id']}/revoke")  # already revoked: not counted
        rotated = client.post(f"{P}/keys/{made[0]['id']}/rotate", json={"grace": "1h"}).json()
        live = {made[0]["id"], made[1]["id"], rotated["id"]}  # the rotated key is in its grace period
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=15) as data:
            for k in (made[0]["key"], made[1]["key"], rotated["key"], other["key"]):
                assert data.get("/v1/secure", headers={"x-api-key": k}).status_code == 200
            reply = client.post(f"{P}/consumers/fleet/keys/revoke-all")
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert (body["consumer"], body["revoked"], set(body["keys"])) == ("fleet", 3, live)
            for k in (made[0]["key"], made[1]["key"], rotated["key"]):
                assert data.get("/v1/secure", headers={"x-api-key": k}).status_code == 401
            assert data.get("/v1/secure", headers={"x-api-key": other["key"]}).status_code == 200
        records = client.get(f"{P}/keys", params={"consumer": "fleet"}).json()["keys"]
        assert all(r["revoked_at"] is not None for r in records)
        assert {r["revoked_by"] for r in records if r["id"] in live} == {"admin:token"}
        assert client.get(f"{P}/consumers/fleet").json()["status"] == "active"  # the consumer stays
        again = client.post(f"{P}/consumers/fleet/keys/revoke-all").json()
        assert (again["revoked"], again["keys"]) == (0, [])
        missing = client.post(f"{P}/consumers/nobody-here/keys/revoke-all")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"

    def found() -> Any:
        summary = events_of(gw, type="consumer.keys_revoked", resource="consumer:fleet")
        revoked = [e for e in events_of(gw, type="api_key.revoked") if e["data"].get("consumer") == "fleet"]
        return len(summary) == 2 and len(revoked) == 4 and summary

    summary = wait_for(found, what="the revocation events")
    counts = sorted(e["data"]["count"] for e in summary)
    assert counts == [0, 3] and {e["actor"] for e in summary} == {"admin:token"}
    assert {e["severity"] for e in summary} == {"notice"}


def test_openapi_marks_both_as_operator_with_step_up(gw: GatewayThread) -> None:
    with api(gw) as client:
        doc = client.get(f"{P}/openapi.json").json()
    export = doc["paths"][EXPORT]["get"]
    revoke = doc["paths"][P + "/consumers/{name}/keys/revoke-all"]["post"]
    for operation in (export, revoke):
        assert operation["x-bastion-role"] == "operator" and operation["x-bastion-step-up"] is True
    assert "application/x-ndjson" in export["responses"]["200"]["content"]


# -- step-up ---------------------------------------------------------------------------------------------


def test_a_session_needs_a_fresh_second_factor_for_both(gw: GatewayThread) -> None:
    """The admin app in-process on the gateway's store, with a clock the test moves: a second factor older
    than step_up_within (10 minutes) is refused with 403 admin_step_up_required and nothing happens; a
    step-up with a new code makes both work."""
    assert gw.running is not None and gw.running.gateway is not None
    clock = FakeClock(time.time())
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    app: Any = build_admin_app(
        gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]), clock=clock
    )
    seed(gw, "exp-operator", "operator")
    with api(gw) as client:
        client.post(f"{P}/consumers", json={"name": "stepped-fleet", "scopes": []})
        key = client.post(f"{P}/keys", json={"consumer": "stepped-fleet"}).json()
    revoke_all = f"{P}/consumers/stepped-fleet/keys/revoke-all"

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            signed = await c.post(
                f"{P}/auth/login", json={"email": "exp-operator@example.com", "password": PASSWORD}
            )
            csrf = {"x-csrf-token": signed.json()["csrf_token"]}
            begun = (await c.post(f"{P}/auth/mfa/totp", headers=csrf)).json()
            totp = pyotp.TOTP(parse_qs(urlsplit(begun["otpauth_uri"]).query)["secret"][0])
            done = await c.post(f"{P}/auth/mfa/totp/confirm", json={"code": totp.at(clock.now)}, headers=csrf)
            csrf = {"x-csrf-token": done.json()["csrf_token"]}
            fresh = await c.get(EXPORT, params={"type": "admin_auth."})
            assert fresh.status_code == 200, fresh.text[:200]
            clock.now += 601
            for reply in (
                await c.get(EXPORT),
                await c.post(revoke_all, headers=csrf),
            ):
                assert reply.status_code == 403 and reply.json()["code"] == "admin_step_up_required"
            stepped = await c.post(f"{P}/auth/step-up", json={"code": totp.at(clock.now)}, headers=csrf)
            assert stepped.status_code == 200, stepped.text
            assert (await c.get(EXPORT, params={"type": "admin_auth."})).status_code == 200
            revoked = await c.post(revoke_all, headers=csrf)
            assert revoked.status_code == 200 and revoked.json()["keys"] == [key["id"]]

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()

    def refused() -> list[str]:
        events = events_of(gw, type="admin.forbidden", actor="admin:exp-operator")
        return sorted(e["path"] for e in events if e["reason"] == "admin_step_up_required")

    wait_for(lambda: len(refused()) == 2, what="the step-up refusals")
    assert refused() == sorted([EXPORT, revoke_all])
    with api(gw) as client:
        assert client.get(f"{P}/keys/{key['id']}").json()["revoked_by"] == "admin:exp-operator"
