"""The identity admin API over its real listener: ``/admin/v1/consumers``, ``/admin/v1/keys`` and
``/admin/v1/clients``. Changes take effect on this gateway before the response is sent (no polling for
the proxy); keys and client secrets appear once, with ``Cache-Control: no-store``; errors are
problem+json with a stable code; every change is an event with the actor ``admin:token``.

One gateway serves the module; each test uses its own consumer names, so tests do not see each
other's changes.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from joserfc.jwk import ECKey

from bastion.core.identity import parse_api_key
from bastion.identity.credentials import Peppers

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text, request

PEPPER = "test-pepper-0123456789abcdef"  # a test fixture, not a secret
ACTOR = "admin:token"
DAY = 86400.0

ROUTES = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: [api_key, oauth2]
        scopes: [orders:read]
      - path: /v1/orders
        methods: [POST]
        auth: [api_key]
        scopes: [orders:write]
"""
EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
  max_key_ttl: 30d
  rotation_grace: 2h
  lockout: {failures: 1000, within: 5m, block_for: 5m}
oauth2:
  issuer: http://127.0.0.1:9
"""

Reply = tuple[int, dict[str, str], Any]
SEQUENCE = itertools.count(1)  # unique consumer names for parametrised tests


# -- fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    db = tmp_path_factory.mktemp("identity-admin") / "bastion.db"
    loaded = load_text(
        config_text(upstream.port, db, routes=ROUTES, extra=EXTRA), env={"BASTION_PEPPER": PEPPER}
    )
    with GatewayThread(loaded) as gateway:
        yield gateway


def call(
    gw: GatewayThread,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = ADMIN_TOKEN,
    raw: bytes | None = None,
) -> Reply:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        out = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    parsed: Any = payload
    if out.get("content-type", "").startswith(("application/json", "application/problem+json")):
        parsed = json.loads(payload)
    return resp.status, out, parsed


def ok(gw: GatewayThread, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, headers, doc = call(gw, method, path, body)
    assert got == status, doc
    assert headers["content-type"].startswith("application/json")
    return doc


def problem(reply: Reply, status: int, code: str | None = None) -> Any:
    got, headers, body = reply
    assert got == status, body
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["cache-control"] == "no-store"
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
        assert body["type"].endswith(code)
    assert "Traceback" not in json.dumps(body)
    return body


def consumer(gw: GatewayThread, name: str, scopes: list[str], **fields: Any) -> Any:
    return ok(gw, "POST", "/admin/v1/consumers", {"name": name, "scopes": scopes, **fields}, 201)


def new_key(gw: GatewayThread, consumer_name: str, **fields: Any) -> Any:
    status, headers, doc = call(gw, "POST", "/admin/v1/keys", {"consumer": consumer_name, **fields})
    assert status == 201, doc
    assert headers["cache-control"] == "no-store"
    return doc


def proxy(gw: GatewayThread, key: str, method: str = "GET", path: str = "/v1/orders/7") -> int:
    return request(gw.port, method, path, headers={"X-API-Key": key})[0]


def forwarded(upstream: EchoUpstream) -> dict[str, str]:
    _, _, headers = upstream.requests[-1]
    return {k.lower(): v for k, v in headers}


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)  # a poll interval, not a way to make time pass


def events(gw: GatewayThread, prefix: str) -> Any:
    doc = ok(gw, "GET", "/admin/v1/events?" + urlencode({"type": prefix, "page_size": 1000}))
    return doc["events"]


def public_jwks() -> dict[str, Any]:
    return {"keys": [ECKey.generate_key("P-256", parameters={"kid": "c1"}).as_dict(private=False)]}


def token_for(gw: GatewayThread, client_id: str, secret: str) -> tuple[int, Any]:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    status, _, body = request(
        gw.port,
        "POST",
        "/oauth/token",
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        body=b"grant_type=client_credentials",
    )
    return status, json.loads(body)


# -- authentication ---------------------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/admin/v1/consumers"),
    ("GET", "/admin/v1/consumers"),
    ("GET", "/admin/v1/consumers/anyone"),
    ("POST", "/admin/v1/consumers/anyone/disable"),
    ("POST", "/admin/v1/consumers/anyone/enable"),
    ("PUT", "/admin/v1/consumers/anyone/scopes"),
    ("POST", "/admin/v1/keys"),
    ("GET", "/admin/v1/keys"),
    ("GET", "/admin/v1/keys/AAAAAAAAAAAA"),
    ("POST", "/admin/v1/keys/AAAAAAAAAAAA/revoke"),
    ("POST", "/admin/v1/keys/AAAAAAAAAAAA/rotate"),
    ("POST", "/admin/v1/clients"),
    ("GET", "/admin/v1/clients"),
    ("POST", "/admin/v1/clients/bcl_x/revoke"),
]


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[f"{m} {p}" for m, p in ENDPOINTS])
    @pytest.mark.parametrize("token", [None, ADMIN_TOKEN + "x"], ids=["no-token", "wrong-token"])
    def test_every_identity_endpoint_needs_the_token(
        self, gw: GatewayThread, method: str, path: str, token: str | None
    ) -> None:
        body = {"name": "intruder", "consumer": "intruder", "scopes": []}
        reply = call(gw, method, path, body if method in ("POST", "PUT") else None, token=token)
        problem(reply, 401, "admin_unauthorized")
        assert reply[1]["www-authenticate"].startswith("Bearer")

    def test_an_unauthenticated_create_changes_nothing(self, gw: GatewayThread) -> None:
        problem(call(gw, "POST", "/admin/v1/consumers", {"name": "sneaky", "scopes": []}, token=None), 401)
        problem(call(gw, "GET", "/admin/v1/consumers/sneaky"), 404, "not_found")


# -- consumers ---------------------------------------------------------------------------------------------


class TestConsumers:
    def test_create_list_show(self, gw: GatewayThread) -> None:
        doc = consumer(
            gw, "c-create", ["orders:write", "orders:read"], ip_allow=["10.0.0.0/8"], metadata={"team": "a"}
        )
        assert doc["name"] == "c-create"
        assert doc["status"] == "active"
        assert doc["scopes"] == ["orders:read", "orders:write"]
        assert doc["ip_allow"] == ["10.0.0.0/8"]
        assert doc["metadata"] == {"team": "a"}
        assert doc["created_by"] == ACTOR
        assert ok(gw, "GET", "/admin/v1/consumers/c-create") == doc
        listed = ok(gw, "GET", "/admin/v1/consumers")["consumers"]
        assert doc in listed
        names = [c["name"] for c in listed]
        assert names == sorted(names)

    def test_duplicate_is_a_conflict(self, gw: GatewayThread) -> None:
        consumer(gw, "c-dup", ["orders:read"])
        body = problem(
            call(gw, "POST", "/admin/v1/consumers", {"name": "c-dup", "scopes": []}), 409, "conflict"
        )
        assert "c-dup" in body["detail"]
        assert ok(gw, "GET", "/admin/v1/consumers/c-dup")["scopes"] == ["orders:read"]

    def test_unknown_consumer_is_404(self, gw: GatewayThread) -> None:
        for method, path, body in [
            ("GET", "/admin/v1/consumers/nobody", None),
            ("POST", "/admin/v1/consumers/nobody/disable", None),
            ("POST", "/admin/v1/consumers/nobody/enable", None),
            ("PUT", "/admin/v1/consumers/nobody/scopes", {"scopes": ["a:r"]}),
        ]:
            problem(call(gw, method, path, body), 404, "not_found")

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"name": "c-bad", "ip_allow": ["10.0.0.1/8"]}, "invalid_ip_allow"),
            ({"name": "c-bad", "ip_allow": ["nowhere"]}, "invalid_ip_allow"),
            ({"name": "c-bad", "scopes": ["has space"]}, "invalid_scope"),
            ({"name": "c bad"}, "invalid_name"),
            ({"name": "c-bad", "metadata": {"blob": "x" * 5000}}, "invalid_metadata"),
            ({"name": "c-bad", "status": "disabled"}, None),  # extra field
            ({"name": "c-bad", "scopes": "orders:read"}, None),  # wrong type
            ({"scopes": ["orders:read"]}, None),  # missing name
        ],
    )
    def test_invalid_bodies_are_400(self, gw: GatewayThread, body: dict[str, Any], code: str | None) -> None:
        problem(call(gw, "POST", "/admin/v1/consumers", body), 400, code)
        problem(call(gw, "GET", "/admin/v1/consumers/c-bad"), 404)

    def test_extra_field_is_named_in_the_problem(self, gw: GatewayThread) -> None:
        body = problem(call(gw, "POST", "/admin/v1/consumers", {"name": "c-extra", "owner": "me"}), 400)
        assert "owner" in body["detail"]

    def test_body_that_is_not_json(self, gw: GatewayThread) -> None:
        problem(call(gw, "POST", "/admin/v1/consumers", raw=b"{not json"), 400)

    def test_disable_and_enable_take_effect_at_once(self, gw: GatewayThread) -> None:
        consumer(gw, "c-toggle", ["orders:read"])
        key = new_key(gw, "c-toggle")["key"]
        assert proxy(gw, key) == 200
        doc = ok(gw, "POST", "/admin/v1/consumers/c-toggle/disable")
        assert doc["status"] == "disabled"
        assert proxy(gw, key) == 401
        assert ok(gw, "GET", "/admin/v1/consumers/c-toggle")["status"] == "disabled"
        assert ok(gw, "POST", "/admin/v1/consumers/c-toggle/enable")["status"] == "active"
        assert proxy(gw, key) == 200

    def test_replace_scopes(self, gw: GatewayThread) -> None:
        consumer(gw, "c-scopes", ["orders:read", "orders:write"])
        key = new_key(gw, "c-scopes", scopes=["orders:read"])["key"]
        assert proxy(gw, key) == 200
        doc = ok(gw, "PUT", "/admin/v1/consumers/c-scopes/scopes", {"scopes": ["orders:write", "extra:x"]})
        assert doc["scopes"] == ["extra:x", "orders:write"]
        assert proxy(gw, key) == 403  # a key never holds more than its consumer, even afterwards
        ok(gw, "PUT", "/admin/v1/consumers/c-scopes/scopes", {"scopes": ["orders:read"]})
        assert proxy(gw, key) == 200

    def test_change_responses_are_the_stored_record(self, gw: GatewayThread) -> None:
        consumer(gw, "c-record", ["orders:read"])
        for method, path, body in [
            ("PUT", "/admin/v1/consumers/c-record/scopes", {"scopes": ["orders:write"]}),
            ("POST", "/admin/v1/consumers/c-record/disable", None),
            ("POST", "/admin/v1/consumers/c-record/enable", None),
        ]:
            changed = ok(gw, method, path, body)
            assert changed == ok(gw, "GET", "/admin/v1/consumers/c-record"), path

    def test_a_name_never_reaches_another_consumer(self, gw: GatewayThread) -> None:
        # Lookups accept a name or an id; a consumer named like another one's id must not make
        # ``/consumers/<that string>`` land on the other consumer.
        first = consumer(gw, "c-first", ["orders:read"])
        reply = call(gw, "POST", "/admin/v1/consumers", {"name": first["id"], "scopes": []})
        if reply[0] != 201:  # refusing the name is as good as resolving it unambiguously
            assert reply[0] in (400, 409)
            problem(reply, reply[0])
            return
        for _ in range(3):
            assert ok(gw, "GET", f"/admin/v1/consumers/{first['id']}")["name"] == first["id"]
        ok(gw, "POST", f"/admin/v1/consumers/{first['id']}/disable")
        assert ok(gw, "GET", "/admin/v1/consumers/c-first")["status"] == "active"

    def test_invalid_scopes_bodies(self, gw: GatewayThread) -> None:
        consumer(gw, "c-badscopes", ["orders:read"])
        path = "/admin/v1/consumers/c-badscopes/scopes"
        problem(call(gw, "PUT", path, {"scopes": ["has space"]}), 400, "invalid_scope")
        problem(call(gw, "PUT", path, {"scopes": ["a:r"], "name": "other"}), 400)
        problem(call(gw, "PUT", path, {}), 400)
        assert ok(gw, "GET", "/admin/v1/consumers/c-badscopes")["scopes"] == ["orders:read"]


# -- keys --------------------------------------------------------------------------------------------------


class TestKeys:
    def test_create_shows_the_key_once_and_it_works_at_once(
        self, gw: GatewayThread, upstream: EchoUpstream
    ) -> None:
        consumer(gw, "k-create", ["orders:read", "orders:write"])
        before = time.time()
        doc = new_key(gw, "k-create", scopes=["orders:read"], ttl="7d", name="ci")
        after = time.time()
        assert set(doc) == {"id", "key", "expires_at", "record"}
        assert parse_api_key(doc["key"]) == doc["id"]
        assert before + 7 * DAY <= doc["expires_at"] <= after + 7 * DAY
        record = doc["record"]
        assert record["id"] == doc["id"]
        assert record["consumer"] == "k-create"
        assert record["scopes"] == ["orders:read"]
        assert record["name"] == "ci"
        assert record["created_by"] == ACTOR
        assert record["expires_at"] == doc["expires_at"]
        assert "digest" not in json.dumps(record) and doc["key"] not in json.dumps(record)
        assert ok(gw, "GET", f"/admin/v1/keys/{doc['id']}") == record

        assert proxy(gw, doc["key"]) == 200  # no polling: visible before the response was sent
        seen = forwarded(upstream)
        assert seen["x-bastion-consumer"] == "k-create"
        assert seen["x-bastion-scopes"] == "orders:read"
        assert "x-api-key" not in seen
        assert proxy(gw, doc["key"], "POST", "/v1/orders") == 403  # orders:write was not granted

    def test_defaults_are_the_consumers_scopes_and_the_max_ttl(self, gw: GatewayThread) -> None:
        consumer(gw, "k-defaults", ["orders:read", "orders:write"])
        before = time.time()
        doc = new_key(gw, "k-defaults")
        assert before + 30 * DAY <= doc["expires_at"] <= time.time() + 30 * DAY  # identity.max_key_ttl
        assert doc["record"]["scopes"] == ["orders:read", "orders:write"]
        assert proxy(gw, doc["key"], "POST", "/v1/orders") == 200

    def test_ttl_in_seconds(self, gw: GatewayThread) -> None:
        consumer(gw, "k-seconds", ["orders:read"])
        before = time.time()
        doc = new_key(gw, "k-seconds", ttl=3600)
        assert before + 3600 <= doc["expires_at"] <= time.time() + 3600

    @pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
    def test_a_lifetime_that_is_not_a_finite_number_is_refused(self, gw: GatewayThread, raw: bytes) -> None:
        # json.loads accepts NaN and Infinity; a NaN lifetime once compared false both ways and made a
        # key that never expired.
        consumer(gw, "k-nan-" + raw.decode().strip("-").lower()[:3] + str(len(raw)), ["orders:read"])
        name = "k-nan-" + raw.decode().strip("-").lower()[:3] + str(len(raw))
        body = b'{"consumer": "' + name.encode() + b'", "ttl": ' + raw + b"}"
        problem(call(gw, "POST", "/admin/v1/keys", raw=body), 400)
        key = new_key(gw, name)
        rotate = b'{"grace": ' + raw + b"}"
        problem(call(gw, "POST", f"/admin/v1/keys/{key['id']}/rotate", raw=rotate), 400)
        assert ok(gw, "GET", f"/admin/v1/keys/{key['id']}")["rotated_to"] is None

    def test_permissions_and_ip_allow(self, gw: GatewayThread) -> None:
        consumer(gw, "k-limits", ["orders:read"])
        narrow = new_key(gw, "k-limits", permissions=["GET /v1/orders/7"])
        assert narrow["record"]["permissions"] == ["GET /v1/orders/7"]
        assert proxy(gw, narrow["key"], path="/v1/orders/7") == 200
        assert proxy(gw, narrow["key"], path="/v1/orders/8") == 403
        elsewhere = new_key(gw, "k-limits", ip_allow=["10.0.0.0/8"])
        assert elsewhere["record"]["ip_allow"] == ["10.0.0.0/8"]
        assert proxy(gw, elsewhere["key"]) == 403
        here = new_key(gw, "k-limits", ip_allow=["127.0.0.1"])
        assert here["record"]["ip_allow"] == ["127.0.0.1/32"]
        assert proxy(gw, here["key"]) == 200

    @pytest.mark.parametrize(
        ("fields", "status", "code"),
        [
            ({"scopes": ["orders:read", "admin:all"]}, 400, "invalid_scope"),
            ({"ttl": "1000d"}, 400, "invalid_ttl"),
            ({"ttl": "banana"}, 400, None),
            ({"ttl": -5}, 400, None),
            ({"ip_allow": ["10.0.0.1/8"]}, 400, "invalid_ip_allow"),
            ({"permissions": ["FETCH /x"]}, 400, "invalid_permission"),
            ({"key": "bst_chosen_by_me"}, 400, None),  # extra field: a caller never picks the key
            ({"expires_at": 1}, 400, None),
            ({"consumer": "nobody"}, 404, "not_found"),
        ],
    )
    def test_invalid_requests(
        self, gw: GatewayThread, fields: dict[str, Any], status: int, code: str | None
    ) -> None:
        name = f"k-invalid-{next(SEQUENCE)}"
        consumer(gw, name, ["orders:read"])
        before = {k["id"] for k in ok(gw, "GET", "/admin/v1/keys")["keys"]}
        body = problem(call(gw, "POST", "/admin/v1/keys", {"consumer": name, **fields}), status, code)
        after = {k["id"] for k in ok(gw, "GET", "/admin/v1/keys")["keys"]}
        assert before == after
        if code == "invalid_scope":
            assert "admin:all" in body["detail"] and "orders:read" not in body["detail"]
        if code == "invalid_ttl":
            assert "max_key_ttl" in body["detail"]

    def test_list_never_shows_keys_or_digests(self, gw: GatewayThread) -> None:
        consumer(gw, "k-list", ["orders:read"])
        created = [new_key(gw, "k-list") for _ in range(2)]
        peppers = Peppers(PEPPER)
        for path in ("/admin/v1/keys", "/admin/v1/keys?consumer=k-list"):
            status, _, raw = call(gw, "GET", path)
            assert status == 200
            text = json.dumps(raw)
            assert {c["id"] for c in created} <= {k["id"] for k in raw["keys"]}
            assert "digest" not in text
            for c in created:
                assert c["key"] not in text
                assert c["key"].split("_")[2] not in text
                assert peppers.key_digest(c["key"]).hex() not in text
        mine = ok(gw, "GET", "/admin/v1/keys?consumer=k-list")["keys"]
        assert [k["id"] for k in mine] == [c["id"] for c in created]
        problem(call(gw, "GET", "/admin/v1/keys?consumer=nobody"), 404, "not_found")
        for c in created:
            assert "digest" not in json.dumps(ok(gw, "GET", f"/admin/v1/keys/{c['id']}"))

    def test_unknown_key_is_404(self, gw: GatewayThread) -> None:
        for method, path in [
            ("GET", "/admin/v1/keys/AAAAAAAAAAAA"),
            ("POST", "/admin/v1/keys/AAAAAAAAAAAA/revoke"),
            ("POST", "/admin/v1/keys/AAAAAAAAAAAA/rotate"),
        ]:
            problem(call(gw, method, path), 404, "not_found")

    def test_revoke_is_immediate(self, gw: GatewayThread) -> None:
        consumer(gw, "k-revoke", ["orders:read"])
        doc = new_key(gw, "k-revoke")
        other = new_key(gw, "k-revoke")
        assert proxy(gw, doc["key"]) == 200
        out = ok(gw, "POST", f"/admin/v1/keys/{doc['id']}/revoke")
        assert proxy(gw, doc["key"]) == 401
        assert proxy(gw, other["key"]) == 200
        assert out["revoked_at"] is not None and out["revoked_by"] == ACTOR
        assert ok(gw, "GET", f"/admin/v1/keys/{doc['id']}") == out
        assert ok(gw, "POST", f"/admin/v1/keys/{doc['id']}/revoke")["revoked_at"] == out["revoked_at"]

    def test_rotate_with_grace(self, gw: GatewayThread) -> None:
        consumer(gw, "k-rotate", ["orders:read", "orders:write"])
        old = new_key(gw, "k-rotate", scopes=["orders:read"], permissions=["GET /v1/orders/*"])
        before = time.time()
        status, headers, new = call(gw, "POST", f"/admin/v1/keys/{old['id']}/rotate", {"grace": "1h"})
        after = time.time()
        assert status == 201, new
        assert headers["cache-control"] == "no-store"
        assert set(new) == {"id", "key", "expires_at", "record"}
        assert parse_api_key(new["key"]) == new["id"] != old["id"]
        assert new["record"]["rotated_from"] == old["id"]
        assert new["record"]["scopes"] == ["orders:read"]
        assert new["record"]["permissions"] == ["GET /v1/orders/*"]
        old_record = ok(gw, "GET", f"/admin/v1/keys/{old['id']}")
        assert old_record["rotated_to"] == new["id"]
        assert before + 3600 <= old_record["expires_at"] <= after + 3600
        assert proxy(gw, new["key"]) == 200
        assert proxy(gw, old["key"]) == 200  # during the grace period
        problem(
            call(gw, "POST", f"/admin/v1/keys/{old['id']}/rotate", {"grace": "1h"}), 409, "already_rotated"
        )

        def used_after_rotation() -> list[dict[str, Any]]:
            return [e for e in events(gw, "api_key.used_after_rotation") if e["data"]["key_id"] == old["id"]]

        [event] = wait_for(used_after_rotation, what="api_key.used_after_rotation")
        assert event["data"]["new_key_id"] == new["id"]
        assert event["data"]["consumer"] == "k-rotate"
        assert old["key"] not in json.dumps(event)

    def test_rotate_without_a_body_uses_the_configured_grace(self, gw: GatewayThread) -> None:
        consumer(gw, "k-rotate-default", ["orders:read"])
        old = new_key(gw, "k-rotate-default")
        before = time.time()
        ok(gw, "POST", f"/admin/v1/keys/{old['id']}/rotate", status=201)
        expires = ok(gw, "GET", f"/admin/v1/keys/{old['id']}")["expires_at"]
        assert before + 2 * 3600 <= expires <= time.time() + 2 * 3600  # identity.rotation_grace: 2h

    def test_rotate_invalid_bodies(self, gw: GatewayThread) -> None:
        consumer(gw, "k-rotate-bad", ["orders:read"])
        old = new_key(gw, "k-rotate-bad")
        path = f"/admin/v1/keys/{old['id']}/rotate"
        problem(call(gw, "POST", path, {"grace": "whenever"}), 400)
        problem(call(gw, "POST", path, {"grace": "1h", "ttl": "1d"}), 400)
        problem(call(gw, "POST", path, {"grace": -60}), 400)
        assert ok(gw, "GET", f"/admin/v1/keys/{old['id']}")["rotated_to"] is None
        ok(gw, "POST", f"/admin/v1/keys/{old['id']}/revoke")
        problem(call(gw, "POST", path, {"grace": "1h"}), 409, "key_inactive")


# -- OAuth clients -----------------------------------------------------------------------------------------


class TestWithoutPepper:
    def test_keys_and_clients_need_a_pepper(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        routes = """
      - path: /open
        methods: [GET]
        auth: none
"""
        loaded = load_text(config_text(upstream.port, tmp_path / "bastion.db", routes=routes))
        with GatewayThread(loaded) as plain:
            consumer(plain, "np-shop", ["orders:read"])
            for path in ("/admin/v1/keys", "/admin/v1/clients"):
                body = problem(call(plain, "POST", path, {"consumer": "np-shop"}), 409, "pepper_missing")
                assert "identity.pepper must be configured" in body["detail"]
            assert ok(plain, "GET", "/admin/v1/keys")["keys"] == []
            assert ok(plain, "GET", "/admin/v1/clients")["clients"] == []


class TestClients:
    def test_create_list_and_revoke(self, gw: GatewayThread) -> None:
        consumer(gw, "o-client", ["orders:read", "orders:write"])
        status, headers, doc = call(
            gw, "POST", "/admin/v1/clients", {"consumer": "o-client", "scopes": ["orders:read"]}
        )
        assert status == 201, doc
        assert headers["cache-control"] == "no-store"
        assert set(doc) == {"client_id", "client_secret", "record"}
        assert doc["client_id"].startswith("bcl_") and doc["client_secret"].startswith("bcs_")
        record = doc["record"]
        assert record["consumer"] == "o-client"
        assert record["scopes"] == ["orders:read"]
        assert record["auth_method"] == "client_secret_basic"
        assert record["created_by"] == ACTOR
        assert doc["client_secret"] not in json.dumps(record)

        for path in ("/admin/v1/clients", "/admin/v1/clients?consumer=o-client"):
            listed = ok(gw, "GET", path)["clients"]
            assert record in listed
            text = json.dumps(listed)
            assert doc["client_secret"] not in text and "digest" not in text
            assert Peppers(PEPPER).client_secret_digest(doc["client_secret"]).hex() not in text
        problem(call(gw, "GET", "/admin/v1/clients?consumer=nobody"), 404, "not_found")

        # The secret gets a token; the token opens the route; revocation stops both at once.
        status, token = token_for(gw, doc["client_id"], doc["client_secret"])
        assert status == 200, token
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        assert request(gw.port, "GET", "/v1/orders/1", headers=bearer)[0] == 200
        out = ok(gw, "POST", f"/admin/v1/clients/{doc['client_id']}/revoke")
        assert out["revoked_at"] is not None and out["revoked_by"] == ACTOR
        assert request(gw.port, "GET", "/v1/orders/1", headers=bearer)[0] == 401
        assert token_for(gw, doc["client_id"], doc["client_secret"])[0] == 401
        [row] = [
            c for c in ok(gw, "GET", "/admin/v1/clients")["clients"] if c["client_id"] == doc["client_id"]
        ]
        assert row["revoked_at"] == out["revoked_at"]

    def test_create_with_jwks(self, gw: GatewayThread) -> None:
        consumer(gw, "o-jwks", ["orders:read"])
        doc = ok(gw, "POST", "/admin/v1/clients", {"consumer": "o-jwks", "jwks": public_jwks()}, 201)
        assert doc["client_secret"] is None
        assert doc["record"]["auth_method"] == "private_key_jwt"

    @pytest.mark.parametrize(
        ("fields", "status", "code"),
        [
            ({"scopes": ["root:all"]}, 400, "invalid_scope"),
            ({"jwks": {"keys": [ECKey.generate_key("P-256").as_dict(private=True)]}}, 400, "invalid_jwks"),
            ({"jwks": {"keys": []}}, 400, "invalid_jwks"),
            ({"client_secret": "chosen"}, 400, None),  # extra field
            ({"consumer": "nobody"}, 404, "not_found"),
        ],
        ids=["scope", "private-jwk", "empty-jwks", "extra-field", "unknown-consumer"],
    )
    def test_invalid_requests(
        self, gw: GatewayThread, fields: dict[str, Any], status: int, code: str | None
    ) -> None:
        name = f"o-invalid-{next(SEQUENCE)}"
        consumer(gw, name, ["orders:read"])
        before = len(ok(gw, "GET", "/admin/v1/clients")["clients"])
        problem(call(gw, "POST", "/admin/v1/clients", {"consumer": name, **fields}), status, code)
        assert len(ok(gw, "GET", "/admin/v1/clients")["clients"]) == before

    def test_unknown_client_is_404(self, gw: GatewayThread) -> None:
        problem(call(gw, "POST", "/admin/v1/clients/bcl_nothing/revoke"), 404, "not_found")


# -- events, the store and the OpenAPI document ------------------------------------------------------------


class TestAudit:
    def test_every_change_is_an_event_with_the_admin_actor(self, gw: GatewayThread) -> None:
        consumer(gw, "e-audit", ["orders:read"])
        ok(gw, "POST", "/admin/v1/consumers/e-audit/disable")
        ok(gw, "POST", "/admin/v1/consumers/e-audit/enable")
        ok(gw, "PUT", "/admin/v1/consumers/e-audit/scopes", {"scopes": ["orders:read", "orders:write"]})
        key = new_key(gw, "e-audit")
        new = ok(gw, "POST", f"/admin/v1/keys/{key['id']}/rotate", {"grace": "1h"}, 201)
        ok(gw, "POST", f"/admin/v1/keys/{new['id']}/revoke")
        client = ok(gw, "POST", "/admin/v1/clients", {"consumer": "e-audit"}, 201)
        ok(gw, "POST", f"/admin/v1/clients/{client['client_id']}/revoke")

        wanted = {
            ("consumer.created", "consumer:e-audit"),
            ("consumer.disabled", "consumer:e-audit"),
            ("consumer.enabled", "consumer:e-audit"),
            ("consumer.updated", "consumer:e-audit"),
            ("api_key.created", f"api_key:{key['id']}"),
            ("api_key.rotated", f"api_key:{key['id']}"),
            ("api_key.revoked", f"api_key:{new['id']}"),
            ("client.created", f"client:{client['client_id']}"),
            ("client.revoked", f"client:{client['client_id']}"),
        }

        def mine() -> list[dict[str, Any]]:
            found = []
            for prefix in ("consumer.", "api_key.", "client."):
                found += [e for e in events(gw, prefix) if (e["type"], e["data"].get("resource")) in wanted]
            return found if len(found) >= len(wanted) else []

        found = wait_for(mine, what="the change events")
        assert {(e["type"], e["data"]["resource"]) for e in found} == wanted
        assert len(found) == len(wanted)
        for event in found:
            assert event["actor"] == ACTOR, event
        assert {e["data"].get("new_key_id") for e in found if e["type"] == "api_key.rotated"} == {new["id"]}
        text = json.dumps(found)
        assert key["key"] not in text and new["key"] not in text and client["client_secret"] not in text

    def test_failed_changes_leave_no_change_event(self, gw: GatewayThread) -> None:
        consumer(gw, "e-quiet", ["orders:read"])
        problem(call(gw, "POST", "/admin/v1/keys", {"consumer": "e-quiet", "scopes": ["x:y"]}), 400)
        problem(call(gw, "POST", "/admin/v1/consumers", {"name": "e-quiet"}), 409)
        marker = new_key(gw, "e-quiet")  # events are written in order: wait for this one, then look

        def created() -> list[dict[str, Any]]:
            return [e for e in events(gw, "api_key.created") if e["data"]["consumer"] == "e-quiet"]

        assert [e["data"]["key_id"] for e in wait_for(created, what="api_key.created")] == [marker["id"]]
        assert [
            e["type"] for e in events(gw, "consumer.") if e["data"]["resource"] == "consumer:e-quiet"
        ] == ["consumer.created"]

    def test_the_store_never_holds_a_key_or_a_client_secret(self, gw: GatewayThread) -> None:
        consumer(gw, "e-vault", ["orders:read"])
        keys = [new_key(gw, "e-vault")["key"] for _ in range(2)]
        rotated = ok(gw, "POST", f"/admin/v1/keys/{parse_api_key(keys[0])}/rotate", {"grace": "1h"}, 201)
        keys.append(rotated["key"])
        client = ok(gw, "POST", "/admin/v1/clients", {"consumer": "e-vault"}, 201)
        secret = client["client_secret"]
        resource = f"client:{client['client_id']}"
        # Scan after the events of these changes are written too (the writer flushes in batches).
        wait_for(
            lambda: any(e["data"]["resource"] == resource for e in events(gw, "client.created")),
            what="the client.created event",
        )
        db = gw.loaded.settings.storage.database.removeprefix("sqlite:///")
        dump: list[str] = []
        with contextlib.closing(sqlite3.connect(db)) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):  # table names come from sqlite_master
                    dump.extend(str(v) for v in row)
        text = "\n".join(dump)
        for key in keys:
            assert key not in text and key.split("_")[2] not in text
            assert Peppers(PEPPER).key_digest(key).hex() in text
        assert secret not in text and secret[4:] not in text


NEW_PATHS = {
    "/admin/v1/consumers": {"get", "post"},
    "/admin/v1/consumers/{name}": {"get"},
    "/admin/v1/consumers/{name}/disable": {"post"},
    "/admin/v1/consumers/{name}/enable": {"post"},
    "/admin/v1/consumers/{name}/scopes": {"put"},
    "/admin/v1/keys": {"get", "post"},
    "/admin/v1/keys/{key_id}": {"get"},
    "/admin/v1/keys/{key_id}/revoke": {"post"},
    "/admin/v1/keys/{key_id}/rotate": {"post"},
    "/admin/v1/clients": {"get", "post"},
    "/admin/v1/clients/{client_id}/revoke": {"post"},
}


class TestOpenApi:
    def test_lists_the_identity_paths(self, gw: GatewayThread) -> None:
        doc = ok(gw, "GET", "/admin/v1/openapi.json")
        for path, methods in NEW_PATHS.items():
            assert path in doc["paths"], path
            assert set(doc["paths"][path]) == methods, path
        schemas = doc["components"]["schemas"]
        for name in ("ConsumerIn", "KeyIn", "ClientIn", "RotateIn", "ScopesIn"):
            assert schemas[name].get("additionalProperties") is False, name

    def test_creating_responses_are_documented_as_201(self, gw: GatewayThread) -> None:
        paths = ok(gw, "GET", "/admin/v1/openapi.json")["paths"]
        for path in (
            "/admin/v1/consumers",
            "/admin/v1/keys",
            "/admin/v1/clients",
            "/admin/v1/keys/{key_id}/rotate",
        ):
            assert "201" in paths[path]["post"]["responses"], path
