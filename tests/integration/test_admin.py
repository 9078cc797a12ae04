"""The admin API over its real listener: bearer token, IP allow-list on the TCP peer, the events
endpoints with filters and cursor pagination, the OpenAPI document, and the events admin calls leave.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine, select

from bastion.store.database import open_database
from bastion.store.schema import events_table

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text, request

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def admin(
    gw: GatewayThread,
    path: str,
    *,
    token: str | None = ADMIN_TOKEN,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], Any]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request(method, path, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        out_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    body: Any = raw
    if out_headers.get("content-type", "").startswith(("application/json", "application/problem+json")):
        body = json.loads(raw)
    return resp.status, out_headers, body


def events_url(**params: Any) -> str:
    return "/admin/v1/events" + ("?" + urlencode(params) if params else "")


def assert_problem(status: int, headers: dict[str, str], body: Any, expected: int, code: str) -> None:
    assert status == expected, body
    assert headers["content-type"].startswith("application/problem+json")
    assert isinstance(body, dict)
    assert body["status"] == expected
    assert body["code"] == code
    assert body["type"].endswith(code)


@pytest.fixture
def db(gateway: GatewayThread) -> Iterator[Engine]:
    eng = open_database(gateway.loaded.settings.storage.database, migrate_schema=False)
    yield eng
    eng.dispose()


def rows(engine: Engine, type_: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(select(events_table).where(events_table.c.type == type_)).mappings().all()
    return [{**r, "data": json.loads(r["data"])} for r in found]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)  # a poll interval, not a way to make time pass


def deny_requests(gw: GatewayThread, n: int, prefix: str = "/missing") -> list[str]:
    """Make ``n`` denied (404) requests; return their request ids."""
    out = []
    for i in range(n):
        status, headers, _ = request(gw.port, "GET", f"{prefix}/{i}")
        assert status == 404
        out.append(headers["x-request-id"])
    return out


def wait_until_listed(gw: GatewayThread, request_ids: list[str]) -> None:
    wanted = set(request_ids)

    def listed() -> bool:
        status, _, body = admin(gw, events_url(type="request.denied", page_size=1000))
        assert status == 200
        return wanted <= {e["request_id"] for e in body["events"]}

    wait_for(listed, what="denied requests to reach the event log")


# -- authentication ----------------------------------------------------------------------------------


class TestAuthentication:
    def test_health_needs_no_token(self, gateway: GatewayThread) -> None:
        status, headers, body = admin(gateway, "/admin/v1/health", token=None)
        assert status == 200
        assert body["status"] == "ok"
        assert "version" in body
        assert "server" not in headers

    def test_events_without_token(self, gateway: GatewayThread) -> None:
        status, headers, body = admin(gateway, "/admin/v1/events", token=None)
        assert_problem(status, headers, body, 401, "admin_unauthorized")
        assert headers["www-authenticate"].startswith("Bearer")
        assert headers["cache-control"] == "no-store"

    def test_events_with_wrong_token(self, gateway: GatewayThread) -> None:
        status, headers, body = admin(gateway, "/admin/v1/events", token=ADMIN_TOKEN + "x")
        assert_problem(status, headers, body, 401, "admin_unauthorized")
        assert headers["www-authenticate"].startswith("Bearer")

    @pytest.mark.parametrize(
        "authorization",
        [
            f"Basic {ADMIN_TOKEN}",
            ADMIN_TOKEN,
            "Bearer",
            "Bearer ",
            f"Token {ADMIN_TOKEN}",
            f"Bearer {ADMIN_TOKEN[:-1]}",
        ],
    )
    def test_other_credential_shapes_are_refused(self, gateway: GatewayThread, authorization: str) -> None:
        status, headers, body = admin(
            gateway, "/admin/v1/events", token=None, headers={"Authorization": authorization}
        )
        assert_problem(status, headers, body, 401, "admin_unauthorized")

    def test_token_in_query_string_is_not_accepted(self, gateway: GatewayThread) -> None:
        status, headers, body = admin(gateway, events_url(token=ADMIN_TOKEN), token=None)
        assert_problem(status, headers, body, 401, "admin_unauthorized")

    def test_bearer_scheme_is_case_insensitive(self, gateway: GatewayThread) -> None:
        status, _, body = admin(
            gateway, "/admin/v1/events", token=None, headers={"Authorization": f"bearer {ADMIN_TOKEN}"}
        )
        assert status == 200
        assert "events" in body

    def test_right_token(self, gateway: GatewayThread) -> None:
        status, headers, body = admin(gateway, "/admin/v1/events")
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        assert set(body) == {"events", "next_page_token"}
        assert isinstance(body["events"], list)

    @pytest.mark.parametrize(
        "path",
        [
            "/admin/v1/events/",
            "/admin/v1/health/../events",
            "/admin/v1/health/",
            "/admin/v1//events",
            "/admin/v1/status",
            "/admin/v1/openapi.json",
            "/admin/v1/nope",
            "/docs",
            "/",
        ],
    )
    def test_everything_but_health_needs_the_token(self, gateway: GatewayThread, path: str) -> None:
        status, headers, body = admin(gateway, path, token=None)
        assert_problem(status, headers, body, 401, "admin_unauthorized")

    def test_failed_auth_is_an_event(self, gateway: GatewayThread, db: Engine) -> None:
        wrong = "wrong-token-8d41e2c0b7a9"
        admin(gateway, "/admin/v1/events", token=None)
        admin(gateway, "/admin/v1/openapi.json", token=wrong)
        failed = wait_for(lambda: len(rows(db, "admin.auth_failed")) >= 2 and rows(db, "admin.auth_failed"),
                          what="admin.auth_failed events")
        by_path = {r["path"]: r for r in failed}
        assert set(by_path) == {"/admin/v1/events", "/admin/v1/openapi.json"}
        for row in failed:
            assert row["method"] == "GET"
            assert row["source_ip"] == "127.0.0.1"
            assert row["reason"] == "admin_unauthorized"
            assert row["severity"] == "warning"
        assert by_path["/admin/v1/events"]["data"]["had_credentials"] is False
        assert by_path["/admin/v1/openapi.json"]["data"]["had_credentials"] is True
        # The presented credential is never recorded.
        assert all(wrong not in json.dumps(r, default=str) for r in failed)

    def test_authenticated_calls_are_admin_action_events(self, gateway: GatewayThread, db: Engine) -> None:
        assert admin(gateway, events_url(type="nothing."))[0] == 200
        assert admin(gateway, "/admin/v1/events/01HZZZZZZZZZZZZZZZZZZZZZZZ")[0] == 404
        actions = wait_for(lambda: len(rows(db, "admin.action")) >= 2 and rows(db, "admin.action"),
                           what="admin.action events")
        by_path = {r["path"]: r for r in actions}
        assert by_path["/admin/v1/events"]["data"]["status"] == 200
        assert by_path["/admin/v1/events/01HZZZZZZZZZZZZZZZZZZZZZZZ"]["data"]["status"] == 404
        for row in actions:
            assert row["actor"] == "admin:token"
            assert row["method"] == "GET"
            assert row["source_ip"] == "127.0.0.1"
            assert ADMIN_TOKEN not in json.dumps(row, default=str)

    def test_forwarded_for_is_not_believed_for_the_event(self, gateway: GatewayThread, db: Engine) -> None:
        admin(gateway, "/admin/v1/events", token=None,
              headers={"X-Forwarded-For": "10.9.9.9", "X-Real-IP": "10.9.9.9"})
        [row] = wait_for(lambda: rows(db, "admin.auth_failed"), what="admin.auth_failed")
        assert row["source_ip"] == "127.0.0.1"


# -- the events endpoints --------------------------------------------------------------------------------


class TestEventsEndpoint:
    def test_denied_requests_are_listed(self, gateway: GatewayThread) -> None:
        ids = deny_requests(gateway, 3)
        wait_until_listed(gateway, ids)
        status, _, body = admin(gateway, events_url(type="request.denied"))
        assert status == 200
        listed = [e for e in body["events"] if e["request_id"] in ids]
        assert len(listed) == 3
        for e in listed:
            assert e["type"] == "request.denied"
            assert e["reason"] == "route_not_found"
            assert e["method"] == "GET"
            assert e["source_ip"] == "127.0.0.1"
            assert e["path"].startswith("/missing/")
            assert e["time"].endswith("Z")
            assert set(e) >= {"id", "time", "type", "severity", "request_id", "route", "method", "path",
                              "source_ip", "actor", "reason", "data"}
        # Newest first.
        assert [e["id"] for e in body["events"]] == sorted((e["id"] for e in body["events"]), reverse=True)

    def test_type_filter_is_a_prefix(self, gateway: GatewayThread) -> None:
        wait_until_listed(gateway, deny_requests(gateway, 1))
        status, _, body = admin(gateway, events_url(type="request."))
        assert status == 200
        assert body["events"] and {e["type"] for e in body["events"]} == {"request.denied"}
        status, _, body = admin(gateway, events_url(type="gateway."))
        assert {e["type"] for e in body["events"]} == {"gateway.started"}

    def test_source_ip_filter(self, gateway: GatewayThread) -> None:
        wait_until_listed(gateway, deny_requests(gateway, 2))
        status, _, body = admin(gateway, events_url(type="request.", source_ip="127.0.0.1"))
        assert status == 200
        assert len(body["events"]) == 2
        status, _, body = admin(gateway, events_url(type="request.", source_ip="10.0.0.1"))
        assert status == 200
        assert body["events"] == []

    def test_since_and_until(self, gateway: GatewayThread) -> None:
        wait_until_listed(gateway, deny_requests(gateway, 2))
        status, _, body = admin(gateway, events_url(type="request.", since="1h"))
        assert (status, len(body["events"])) == (200, 2)
        status, _, body = admin(gateway, events_url(type="request.", since="2000-01-01T00:00:00Z"))
        assert (status, len(body["events"])) == (200, 2)
        status, _, body = admin(gateway, events_url(type="request.", until="2000-01-01T00:00:00Z"))
        assert (status, body["events"]) == (200, [])
        status, _, body = admin(gateway, events_url(type="request.", since="2999-01-01T00:00:00Z"))
        assert (status, body["events"]) == (200, [])
        status, _, body = admin(gateway, events_url(type="request.", until="1h"))
        assert (status, body["events"]) == (200, [])

    @pytest.mark.parametrize("param", ["since", "until"])
    def test_bad_time_is_a_400_problem(self, gateway: GatewayThread, param: str) -> None:
        status, headers, body = admin(gateway, events_url(**{param: "yesterday"}))
        assert_problem(status, headers, body, 400, "invalid_query")

    def test_cursor_pagination(self, gateway: GatewayThread) -> None:
        ids = deny_requests(gateway, 12)
        wait_until_listed(gateway, ids)
        seen: list[str] = []
        pages = 0
        token: str | None = None
        while True:
            params: dict[str, Any] = {"type": "request.denied", "page_size": 5}
            if token:
                params["page_token"] = token
            status, _, body = admin(gateway, events_url(**params))
            assert status == 200
            seen += [e["request_id"] for e in body["events"]]
            pages += 1
            token = body["next_page_token"]
            if token is None:
                break
            # New events between pages must not disturb the walk.
            deny_requests(gateway, 1, prefix="/between")
        assert pages == 3
        assert sorted(seen) == sorted(ids)
        assert len(seen) == len(set(seen))

    @pytest.mark.parametrize("token", ["garbage", "eyJiZWZvcmUiOiAxfQ", "x" * 200])
    def test_bad_page_token_is_a_400_problem(self, gateway: GatewayThread, token: str) -> None:
        status, headers, body = admin(gateway, events_url(page_token=token))
        assert_problem(status, headers, body, 400, "invalid_query")

    @pytest.mark.parametrize("size", [1001, 0, -5])
    def test_page_size_out_of_bounds(self, gateway: GatewayThread, size: int) -> None:
        status, _, _ = admin(gateway, events_url(page_size=size))
        assert 400 <= status < 500

    def test_page_size_1000_is_allowed(self, gateway: GatewayThread) -> None:
        assert admin(gateway, events_url(page_size=1000))[0] == 200

    def test_one_event_by_id(self, gateway: GatewayThread) -> None:
        [rid] = deny_requests(gateway, 1)
        wait_until_listed(gateway, [rid])
        _, _, body = admin(gateway, events_url(type="request.denied"))
        [listed] = [e for e in body["events"] if e["request_id"] == rid]
        status, _, one = admin(gateway, f"/admin/v1/events/{listed['id']}")
        assert status == 200
        assert one == listed

    @pytest.mark.parametrize("event_id", ["01HZZZZZZZZZZZZZZZZZZZZZZZ", "nope", "%27%20OR%201%3D1"])
    def test_unknown_event_is_a_404_problem(self, gateway: GatewayThread, event_id: str) -> None:
        status, headers, body = admin(gateway, f"/admin/v1/events/{event_id}")
        assert_problem(status, headers, body, 404, "not_found")


class TestOpenApi:
    def test_needs_the_token(self, gateway: GatewayThread) -> None:
        status, headers, body = admin(gateway, "/admin/v1/openapi.json", token=None)
        assert_problem(status, headers, body, 401, "admin_unauthorized")

    def test_lists_the_paths(self, gateway: GatewayThread) -> None:
        status, _, doc = admin(gateway, "/admin/v1/openapi.json")
        assert status == 200
        assert doc["openapi"].startswith("3.")
        assert {"/admin/v1/health", "/admin/v1/events", "/admin/v1/events/{event_id}"} <= set(doc["paths"])
        params = {p["name"] for p in doc["paths"]["/admin/v1/events"]["get"]["parameters"]}
        assert {"type", "source_ip", "since", "until", "page_size", "page_token"} <= params

    def test_no_interactive_docs(self, gateway: GatewayThread) -> None:
        assert admin(gateway, "/docs")[0] == 404
        assert admin(gateway, "/redoc")[0] == 404


# -- the admin IP allow-list --------------------------------------------------------------------------

ADMIN_10_ONLY = """
admin:
  listen: 127.0.0.1:0
  token: ${env:BASTION_ADMIN_TOKEN}
  allow_ips: [10.0.0.0/8]
"""


@pytest.fixture
def fenced(upstream: EchoUpstream, tmp_path: Path) -> Iterator[GatewayThread]:
    """A gateway whose admin API only admits 10.0.0.0/8: loopback callers are outside it."""
    loaded = load_text(config_text(upstream.port, tmp_path / "fenced.db", admin=False, extra=ADMIN_10_ONLY))
    with GatewayThread(loaded) as gw:
        yield gw


class TestIpAllowList:
    @pytest.mark.parametrize(
        ("path", "token"),
        [
            ("/admin/v1/health", None),
            ("/admin/v1/events", ADMIN_TOKEN),
            ("/admin/v1/events", None),
            ("/admin/v1/openapi.json", ADMIN_TOKEN),
            ("/admin/v1/events/01HZZZZZZZZZZZZZZZZZZZZZZZ", ADMIN_TOKEN),
            ("/nope", None),
        ],
    )
    def test_every_call_from_outside_is_refused(
        self, fenced: GatewayThread, path: str, token: str | None
    ) -> None:
        status, headers, body = admin(fenced, path, token=token)
        assert_problem(status, headers, body, 403, "admin_ip_denied")

    @pytest.mark.parametrize(
        "spoof",
        [
            {"X-Forwarded-For": "10.1.2.3"},
            {"X-Real-IP": "10.1.2.3"},
            {"Forwarded": "for=10.1.2.3"},
            {"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3", "Forwarded": "for=10.1.2.3"},
        ],
    )
    def test_forwarded_headers_are_never_believed(self, fenced: GatewayThread, spoof: dict[str, str]) -> None:
        status, headers, body = admin(fenced, "/admin/v1/events", headers=spoof)
        assert_problem(status, headers, body, 403, "admin_ip_denied")

    def test_refusals_are_events(self, fenced: GatewayThread) -> None:
        admin(fenced, "/admin/v1/health", token=None)
        admin(fenced, "/admin/v1/events", headers={"X-Forwarded-For": "10.1.2.3"})
        eng = open_database(fenced.loaded.settings.storage.database, migrate_schema=False)
        try:
            denied = wait_for(lambda: len(rows(eng, "admin.ip_denied")) >= 2 and rows(eng, "admin.ip_denied"),
                              what="admin.ip_denied events")
            assert {r["path"] for r in denied} == {"/admin/v1/health", "/admin/v1/events"}
            for row in denied:
                assert row["source_ip"] == "127.0.0.1"  # the TCP peer, never the forwarded claim
                assert row["reason"] == "admin_ip_denied"
                assert row["method"] == "GET"
            # Refused before authentication: no auth_failed, no action recorded.
            assert rows(eng, "admin.auth_failed") == []
            assert rows(eng, "admin.action") == []
        finally:
            eng.dispose()

    def test_data_plane_is_unaffected(self, fenced: GatewayThread) -> None:
        status, _, _ = request(fenced.port, "GET", "/v1/orders/1")
        assert status == 200


class TestStatus:
    def test_status_reports_the_data_plane_and_event_counters(self, gateway: GatewayThread) -> None:
        for i in range(3):
            assert request(gateway.port, "GET", f"/v1/orders/{i}")[0] == 200
        assert request(gateway.port, "GET", "/nope")[0] == 404
        status, _, body = admin(gateway, "/admin/v1/status")
        assert status == 200
        assert body["status"] == "ok"
        assert body["in_flight"] == 0
        assert body["connections"]["rejected"] == 0
        assert body["connections"]["fast_path_forwards"] >= 2  # the first request opened the upstream
        assert body["upstream_connections_opened"] == {"orders": 1}
        assert set(body["events"]) == {"queued", "written", "dropped", "write_failures", "dead_lettered"}
        assert body["events"]["dropped"] == 0
