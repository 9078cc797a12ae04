"""The API inventory (P2) through the real gateway: what a scanner's 404s and a client's wrong methods
leave in the store and the event log, and what ``bastion inventory --json`` and
``GET /admin/v1/inventory`` report from it.

The recorder flushes every few seconds and once more when the gateway stops, so each test stops its
gateway before it reads the store: the last flush has then happened, with no waiting for an interval.
Assertions hold whether or not an interval flush also happened during the test.
"""

from __future__ import annotations

import http.client
import json
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from bastion.adapters.cli import main
from bastion.store.database import open_database
from bastion.store.schema import events_table, inventory_observed_table, route_traffic_table

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text, request
from ._dataplane import RawClient, get

EVENT = "inventory.undeclared_endpoint"
ROUTES = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: none
      - path: /v1/orders
        methods: [GET, POST]
        auth: none
      - path: /v1/reports/{report_id}
        methods: [GET]
        auth: none
      - path: /public/{rest:path}
        methods: [GET]
        auth: none
"""
INVENTORY = "inventory: {observe: true, max_observed: 50, unused_after: 30d}"

# (method, path, headers, expected status)
SCRIPT: list[tuple[str, str, dict[str, str], int]] = [
    *[("GET", f"/admin/users/{n}", {}, 404) for n in range(1, 6)],
    *[("GET", "/.env", {}, 404)] * 3,
    ("GET", "/wp-login.php", {}, 404),
    ("GET", "/api/v1/users/550e8400-e29b-41d4-a716-446655440000/tokens", {}, 404),
    ("GET", "/../../etc/passwd", {}, 404),  # canonicalised before it is recorded
    ("POST", "/v1/orders/7", {}, 405),
    ("DELETE", "/v1/orders", {}, 405),
    ("OPTIONS", "/v1/orders", {}, 405),
    # a CORS preflight to a route without CORS: refused, but not an endpoint anyone called
    ("OPTIONS", "/v1/orders", {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}, 405),
    ("GET", "/v1/orders/1", {}, 200),
    ("GET", "/v1/orders/2", {}, 200),
    ("POST", "/v1/orders", {}, 200),
    ("HEAD", "/v1/orders", {}, 200),  # HEAD is served by the GET route: traffic on it
]
UNDECLARED = {
    ("GET", "/admin/users/{id}"): 5,
    ("GET", "/.env"): 3,
    ("GET", "/wp-login.php"): 1,
    ("GET", "/api/v1/users/{id}/tokens"): 1,
    ("GET", "/etc/passwd"): 1,
    ("POST", "/v1/orders/{id}"): 1,
    ("DELETE", "/v1/orders"): 1,
    ("OPTIONS", "/v1/orders"): 1,
}


def gateway_config(upstream_port: int, db: Path, extra: str = INVENTORY) -> str:
    return config_text(upstream_port, db, routes=ROUTES, extra=extra)


def event_rows(engine: Engine, type_: str = EVENT) -> list[dict[str, Any]]:
    with engine.connect() as db:
        rows = db.execute(select(events_table).where(events_table.c.type == type_)).mappings().all()
    return [{**r, "data": json.loads(r["data"])} for r in rows]


def endpoint_events(engine: Engine) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in event_rows(engine):
        if "template" in row["data"]:
            out.setdefault((row["data"]["method"], row["data"]["template"]), []).append(row)
    return out


def observed(engine: Engine) -> dict[tuple[str, str], int]:
    t = inventory_observed_table.c
    with engine.connect() as db:
        rows = db.execute(select(t.method, t.template, t.count)).all()
    return {(method, template): count for method, template, count in rows}


def traffic(engine: Engine) -> dict[str, int]:
    t = route_traffic_table.c
    with engine.connect() as db:
        rows = db.execute(select(t.route_id, t.count)).all()
    return {route: count for route, count in rows}


def admin_get(port: int, path: str, token: str | None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


class Scanned(NamedTuple):
    db: Path
    config: Path
    engine: Engine
    statuses: list[int]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scanned]:
    """One gateway run through SCRIPT, then stopped (its recorder's last flush is done)."""
    tmp = tmp_path_factory.mktemp("inventory")
    db = tmp / "bastion.db"
    with EchoUpstream() as upstream:
        text = gateway_config(upstream.port, db)
        config = tmp / "bastion.yaml"
        config.write_text(text, encoding="utf-8")
        gw = GatewayThread(load_text(text)).start()
        try:
            statuses = [request(gw.port, m, p, headers=h)[0] for m, p, h, _ in SCRIPT]
        finally:
            gw.stop()
    engine = open_database(f"sqlite:///{db}")
    try:
        yield Scanned(db, config, engine, statuses)
    finally:
        engine.dispose()


class TestObservedThroughTheGateway:
    def test_the_script_got_the_expected_answers(self, scanned: Scanned) -> None:
        assert scanned.statuses == [s for *_, s in SCRIPT]

    def test_undeclared_endpoints_recorded_by_template(self, scanned: Scanned) -> None:
        assert observed(scanned.engine) == UNDECLARED

    def test_one_event_per_template(self, scanned: Scanned) -> None:
        events = endpoint_events(scanned.engine)
        assert set(events) == set(UNDECLARED)
        for (method, template), rows in events.items():
            assert len(rows) == 1, (method, template)
            [row] = rows
            assert row["method"] == method and row["path"] == template
            assert row["severity"] == "warning"
            assert 1 <= row["data"]["count"] <= UNDECLARED[(method, template)]

    def test_405_keeps_its_method_and_preflights_are_not_recorded(self, scanned: Scanned) -> None:
        seen = observed(scanned.engine)
        assert seen[("POST", "/v1/orders/{id}")] == 1
        assert seen[("DELETE", "/v1/orders")] == 1
        assert seen[("OPTIONS", "/v1/orders")] == 1  # the plain OPTIONS only, not the preflight

    def test_no_summary_when_under_the_caps(self, scanned: Scanned) -> None:
        assert [r for r in event_rows(scanned.engine) if "more" in r["data"]] == []

    def test_declared_traffic_counted_per_route(self, scanned: Scanned) -> None:
        assert traffic(scanned.engine) == {
            "orders:GET /v1/orders/{order_id}": 2,
            "orders:GET POST /v1/orders": 2,
        }


def _cli_report(scanned: Scanned) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["inventory", "-c", str(scanned.config), "--json"],
                                env={"BASTION_ADMIN_TOKEN": ADMIN_TOKEN}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


class TestReports:
    def test_cli_json_report(self, scanned: Scanned) -> None:
        found = _cli_report(scanned)
        declared = {row["route"]: row for row in found["declared"]}
        assert set(declared) == {
            "orders:GET /v1/orders/{order_id}",
            "orders:GET POST /v1/orders",
            "orders:GET /v1/reports/{report_id}",
            "orders:GET /public/{rest:path}",
        }
        assert declared["orders:GET /v1/orders/{order_id}"]["requests"] == 2
        last_seen = declared["orders:GET /v1/orders/{order_id}"]["last_seen"]
        assert last_seen == pytest.approx(time.time(), abs=600)
        assert declared["orders:GET /v1/reports/{report_id}"]["requests"] == 0
        assert {row["route"] for row in found["unused"]} == {
            "orders:GET /v1/reports/{report_id}",
            "orders:GET /public/{rest:path}",
        }
        assert {(e["method"], e["path"]): e["count"] for e in found["undeclared"]} == UNDECLARED
        assert found["unused_after_seconds"] == 30 * 86400

    def test_cli_table_report(self, scanned: Scanned) -> None:
        result = CliRunner().invoke(main, ["inventory", "-c", str(scanned.config)],
                                    env={"BASTION_ADMIN_TOKEN": ADMIN_TOKEN}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "/admin/users/{id}" in result.output
        assert "/v1/reports/{report_id}" in result.output

    def test_admin_endpoint_needs_the_token_and_matches_the_cli(self, scanned: Scanned) -> None:
        expected = _cli_report(scanned)
        with EchoUpstream() as upstream:
            # a second gateway on the same store serves the admin API; it sees no traffic of its own
            text = scanned.config.read_text(encoding="utf-8")
            text = text.replace(text.split("upstream: ")[1].split("\n")[0], f"http://127.0.0.1:{upstream.port}")
            with GatewayThread(load_text(text)) as gw:
                status, body = admin_get(gw.admin_port, "/admin/v1/inventory", None)
                assert status == 401 and body["code"] == "admin_unauthorized"
                status, body = admin_get(gw.admin_port, "/admin/v1/inventory", "not-" + ADMIN_TOKEN)
                assert status == 401 and body["code"] == "admin_unauthorized"
                assert "declared" not in body
                status, body = admin_get(gw.admin_port, "/admin/v1/inventory", ADMIN_TOKEN)
        assert status == 200
        assert body == expected


class TestInstances:
    def test_two_gateways_on_one_store_emit_one_event(self, tmp_path: Path) -> None:
        db = tmp_path / "shared.db"
        with EchoUpstream() as upstream:
            text = gateway_config(upstream.port, db)
            one = GatewayThread(load_text(text)).start()
            try:
                two = GatewayThread(load_text(text)).start()
                try:
                    assert request(one.port, "GET", "/shadow/1")[0] == 404
                    assert request(two.port, "GET", "/shadow/2")[0] == 404
                    assert request(two.port, "GET", "/shadow/3")[0] == 404
                finally:
                    two.stop()
            finally:
                one.stop()
        engine = open_database(f"sqlite:///{db}")
        try:
            assert observed(engine) == {("GET", "/shadow/{id}"): 3}
            assert len(endpoint_events(engine)[("GET", "/shadow/{id}")]) == 1
        finally:
            engine.dispose()

    def test_observe_off_records_nothing(self, tmp_path: Path) -> None:
        db = tmp_path / "off.db"
        with EchoUpstream() as upstream:
            gw = GatewayThread(load_text(gateway_config(upstream.port, db, "inventory: {observe: false}")))
            gw.start()
            try:
                assert gw.running is not None and gw.running.gateway is not None
                assert gw.running.gateway.observer is None
                assert request(gw.port, "GET", "/admin/users/1")[0] == 404
                assert request(gw.port, "DELETE", "/v1/orders")[0] == 405
            finally:
                gw.stop()
        engine = open_database(f"sqlite:///{db}")
        try:
            assert observed(engine) == {}
            assert event_rows(engine) == []
        finally:
            engine.dispose()


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=12))  # letters only: never folds to {id}


class TestScanner:
    """A scanner walking distinct random paths: the observer stays within max_observed, every stored
    endpoint is announced once, and what could not be kept is counted in one summary per flush."""

    TOTAL = 2_000
    BATCH = 8  # pipelined per write: the gateway refuses more than 16 queued on one connection

    def test_memory_and_events_stay_bounded(self, tmp_path: Path) -> None:
        rng = random.Random(2024)
        db = tmp_path / "scan.db"
        largest = 0
        with EchoUpstream() as upstream:
            gw = GatewayThread(load_text(gateway_config(upstream.port, db))).start()
            started = time.monotonic()
            try:
                assert gw.running is not None and gw.running.gateway is not None
                observer = gw.running.gateway.observer
                assert observer is not None and observer.max_entries == 50
                with RawClient(gw.port, timeout=30) as client:
                    for batch in range(self.TOTAL // self.BATCH):
                        words = [_word(rng) for _ in range(self.BATCH)]
                        client.send(b"".join(get(f"/scan/{w}") for w in words))
                        assert {r.status for r in client.read_responses(self.BATCH)} == {404}
                        if batch % 25 == 0:
                            largest = max(largest, gw.call(lambda: len(observer.entries)))
                largest = max(largest, gw.call(lambda: len(observer.entries)))
            finally:
                gw.stop()
            elapsed = time.monotonic() - started
        assert largest <= 50
        engine = open_database(f"sqlite:///{db}")
        try:
            rows = observed(engine)
            events = endpoint_events(engine)
            summaries = [r["data"] for r in event_rows(engine) if "more" in r["data"]]
        finally:
            engine.dispose()
        # at most max_observed new endpoints per flush: one flush at shutdown, plus one per 5 s interval
        assert 50 <= len(rows) <= 50 * (2 + int(elapsed // 5))
        assert set(events) == set(rows) and all(len(v) == 1 for v in events.values())
        assert summaries, "the overflow must be reported"
        assert all(s["more"] == 0 for s in summaries)  # max_events (50) >= max_observed (50)
        assert sum(rows.values()) + sum(s["not_recorded"] for s in summaries) == self.TOTAL
