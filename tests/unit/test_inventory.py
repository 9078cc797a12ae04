"""The API inventory (P2) without a gateway: path templates case by case, the bounded in-process
``Observer``, the recorder against a real SQLite file (with an injected clock; its thread is only started
where the thread itself is under test), and the report.

What is pinned: which segments fold to ``{id}`` and which words never do; the bounds a scanner runs into
(16 segments, 64 characters, ``max_observed`` entries, ``max_events`` events per flush plus one summary);
that "first seen" is decided by the store, so two recorders on one database emit one event; and that a
store that fails keeps the observations for the next flush.
"""

from __future__ import annotations

import random
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from bastion.config import load_config_text
from bastion.inventory import Observer, declared, template_path
from bastion.inventory.recorder import InventoryRecorder
from bastion.inventory.report import load_inventory, report
from bastion.runtime.gateway import compile_routes
from bastion.store.database import open_database
from bastion.store.schema import inventory_observed_table, route_traffic_table

T0 = 1_700_000_000.0
DAY = 86400.0
EVENT = "inventory.undeclared_endpoint"

# -- template_path --------------------------------------------------------------------------------------

FOLDS: list[tuple[str, str]] = [
    ("/v1/users/123", "/v1/users/{id}"),
    ("/v1/users/0", "/v1/users/{id}"),
    ("/v1/users/12345678901234567890123", "/v1/users/{id}"),
    ("/prices/19.99", "/prices/{id}"),
    ("/v1/users/123/orders/456", "/v1/users/{id}/orders/{id}"),
    ("/u/550e8400-e29b-41d4-a716-446655440000", "/u/{id}"),
    ("/u/550E8400-E29B-41D4-A716-446655440000", "/u/{id}"),
    ("/u/550e8400e29b41d4a716446655440000", "/u/{id}"),  # a UUID without dashes
    ("/blobs/deadbeefdeadbeef", "/blobs/{id}"),  # 16 hex digits
    ("/commits/3f786850e387550fdab836ed7e6dc881de23001b", "/commits/{id}"),  # a SHA-1
    ("/reset/eyJhbGciOiJIUzI1NiJ9abc123XYZ", "/reset/{id}"),  # an opaque token with digits
    ("/s/AbCdEfGhIjKlMnOpQrSt1", "/s/{id}"),
    ("/customers/cus_Nffrfeufghj1", "/customers/{id}"),  # prefix_ ids
    ("/orders/ord-12ab34cd", "/orders/{id}"),
    ("/x/12/", "/x/{id}/"),  # the trailing slash stays
]

KEPT: list[str] = [
    "/",
    "/v1",
    "/v2/me",
    "/health",
    "/healthz",
    "/v1/notifications",
    "/v1/users/me/preferences",
    "/internationalization",  # a long word with no digit
    "/oauth2/token",
    "/s3",
    "/2fa",
    "/api_v1",
    "/user_settings",
    "/wp-admin/admin-ajax.php",
    "/.env",
    "/.git/config",
    "/actuator/heapdump",
    "/blobs/deadbeefdeadbee",  # 15 hex digits: not yet an id
    "/1.2.3",  # a version, not a number
    "/-1",
    "/0x1f",
    "/x//y",
    "/files/" + "z" * 64,  # exactly the segment limit: kept whole
]


@pytest.mark.parametrize(("path", "expected"), FOLDS, ids=[p for p, _ in FOLDS])
def test_identifier_segments_fold(path: str, expected: str) -> None:
    assert template_path(path) == expected


@pytest.mark.parametrize("path", KEPT)
def test_words_and_short_segments_do_not_fold(path: str) -> None:
    assert template_path(path) == path


def test_token_length_boundary() -> None:
    nineteen = "abcdefghijklmnopqr1"  # 19 characters with a digit
    assert len(nineteen) == 19 and template_path(f"/s/{nineteen}") == f"/s/{nineteen}"
    assert template_path(f"/s/{nineteen}z") == "/s/{id}"
    # twenty letters and no digit: a word, however long
    assert template_path("/s/" + "z" * 40) == "/s/" + "z" * 40


def test_distinct_ids_are_one_endpoint() -> None:
    paths = [f"/v1/users/{n}/orders/{n * 7}" for n in range(1, 50)]
    assert {template_path(p) for p in paths} == {"/v1/users/{id}/orders/{id}"}


def test_long_segments_are_cut() -> None:
    assert template_path("/a/" + "z" * 500 + "/b") == "/a/" + "z" * 64 + "/b"


def test_at_most_sixteen_segments() -> None:
    path = "/" + "/".join(f"s{i}x" for i in range(40))
    out = template_path(path)
    parts = out.split("/")
    assert parts[1:17] == [f"s{i}x" for i in range(16)]
    assert parts[17:] == ["{…}"]
    assert template_path("/" + "/".join(f"s{i}x" for i in range(16))) == "/" + "/".join(
        f"s{i}x" for i in range(16)
    )


_path_segments = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + "-_.~%", max_size=120), max_size=60
)


@given(_path_segments)
@settings(max_examples=200, deadline=None, database=None)
def test_templates_are_bounded(segments: list[str]) -> None:
    out = template_path("/" + "/".join(segments))
    parts = out.split("/")
    assert len(parts) <= 1 + 16 + 1
    assert all(len(p) <= 64 for p in parts)
    assert len(out) <= 1200  # inventory_observed.template is VARCHAR(1200)


# -- the Observer ---------------------------------------------------------------------------------------


class TestObserver:
    def test_counts_and_times_per_method_and_template(self) -> None:
        obs = Observer(100)
        obs.observe("GET", "/v1/users/1", T0)
        obs.observe("GET", "/v1/users/2", T0 + 5)
        obs.observe("DELETE", "/v1/users/3", T0 + 7)
        assert obs.entries == {
            ("GET", "/v1/users/{id}"): [2, T0, T0 + 5],
            ("DELETE", "/v1/users/{id}"): [1, T0 + 7, T0 + 7],
        }

    def test_take_hands_over_and_resets(self) -> None:
        obs = Observer(1)
        obs.observe("GET", "/a", T0)
        obs.observe("GET", "/b", T0)
        entries, overflow = obs.take()
        assert (entries, overflow) == ({("GET", "/a"): [1, T0, T0]}, 1)
        assert (obs.entries, obs.overflow) == ({}, 0)
        obs.observe("GET", "/b", T0)
        assert obs.entries == {("GET", "/b"): [1, T0, T0]}

    def test_known_endpoints_still_count_when_full(self) -> None:
        obs = Observer(2)
        for path in ("/a", "/b", "/c", "/a", "/d", "/a"):
            obs.observe("GET", path, T0)
        assert obs.entries == {("GET", "/a"): [3, T0, T0], ("GET", "/b"): [1, T0, T0]}
        assert obs.overflow == 2

    def test_long_methods_are_cut(self) -> None:
        obs = Observer(10)
        obs.observe("X" * 5000, "/a", T0)
        assert list(obs.entries) == [("X" * 16, "/a")]

    def test_a_scanner_cannot_grow_it(self) -> None:
        rng = random.Random(1234)
        obs = Observer(50)
        for _ in range(20_000):
            word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12)))
            obs.observe(rng.choice(["GET", "POST", "PUT"]), f"/{word}/{word[::-1]}", T0)
        assert len(obs.entries) == 50
        assert sum(int(e[0]) for e in obs.entries.values()) + obs.overflow == 20_000


# -- the recorder against a real SQLite file ------------------------------------------------------------


class Events:
    """The recorder's ``emit``: what it would have written to the event log."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, type_: str, **fields: Any) -> None:
        with self._lock:
            self.calls.append((type_, fields))

    def endpoints(self) -> list[tuple[str, str, int]]:
        return [
            (f["data"]["method"], f["data"]["template"], f["data"]["count"])
            for t, f in self.calls
            if t == EVENT and "template" in f["data"]
        ]

    def summaries(self) -> list[dict[str, Any]]:
        return [f["data"] for t, f in self.calls if t == EVENT and "more" in f["data"]]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_database(db_url)
    yield eng
    eng.dispose()


def recorder(engine: Engine, *, max_observed: int = 100, max_events: int = 50,
             clock: Clock | None = None) -> tuple[InventoryRecorder, Observer, dict[str, int], Events]:
    obs, events = Observer(max_observed), Events()
    hits: dict[str, int] = {}
    rec = InventoryRecorder(engine, obs, hits, events, max_events=max_events, clock=clock or Clock())
    return rec, obs, hits, events


def observed_rows(engine: Engine) -> dict[tuple[str, str], tuple[int, float, float]]:
    t = inventory_observed_table.c
    with engine.connect() as db:
        rows = db.execute(select(t.method, t.template, t.count, t.first_seen, t.last_seen)).all()
    return {(method, template): (count, first, last) for method, template, count, first, last in rows}


def traffic_rows(engine: Engine) -> dict[str, tuple[int, float, float]]:
    t = route_traffic_table.c
    with engine.connect() as db:
        rows = db.execute(select(t.route_id, t.count, t.first_seen, t.last_seen)).all()
    return {route: (count, first, last) for route, count, first, last in rows}


class TestRecorder:
    def test_nothing_observed_writes_and_emits_nothing(self, engine: Engine) -> None:
        rec, _obs, _hits, events = recorder(engine)
        assert rec.flush() == 0
        assert events.calls == []
        assert observed_rows(engine) == {} and traffic_rows(engine) == {}

    def test_new_endpoints_are_events_once(self, engine: Engine) -> None:
        rec, obs, _hits, events = recorder(engine)
        obs.observe("GET", "/admin/users/1", T0)
        obs.observe("GET", "/admin/users/2", T0 + 1)
        obs.observe("POST", "/graphql", T0 + 2)
        assert rec.flush() == 2
        assert sorted(events.endpoints()) == [("GET", "/admin/users/{id}", 2), ("POST", "/graphql", 1)]
        for type_, fields in events.calls:
            assert type_ == EVENT and fields["severity"] == "warning"
            assert fields["path"] == fields["data"]["template"]
            assert fields["method"] == fields["data"]["method"]
        # seen again: counted, never announced again
        obs.observe("GET", "/admin/users/3", T0 + 10)
        assert rec.flush() == 0
        assert len(events.calls) == 2
        assert observed_rows(engine) == {
            ("GET", "/admin/users/{id}"): (3, T0, T0 + 10),
            ("POST", "/graphql"): (1, T0 + 2, T0 + 2),
        }

    def test_counts_add_up_across_flushes(self, engine: Engine) -> None:
        rec, obs, _hits, events = recorder(engine)
        total = 0
        for round_ in range(5):
            for i in range(round_ + 1):
                obs.observe("GET", f"/probe/{i}", T0 + round_)
                total += 1
            rec.flush()
        assert observed_rows(engine) == {("GET", "/probe/{id}"): (total, T0, T0 + 4)}
        assert events.endpoints() == [("GET", "/probe/{id}", 1)]

    def test_route_hits_are_written_with_the_clock(self, engine: Engine) -> None:
        clock = Clock()
        rec, _obs, hits, events = recorder(engine, clock=clock)
        hits["orders:GET /v1/orders"] = 3
        hits["orders:POST /v1/orders"] = 0  # zero hits are not traffic
        rec.flush()
        assert hits == {}
        clock.now = T0 + 60
        hits["orders:GET /v1/orders"] = 2
        rec.flush()
        assert traffic_rows(engine) == {"orders:GET /v1/orders": (5, T0, T0 + 60)}
        assert events.calls == []  # traffic on declared routes is not an event

    def test_two_recorders_on_one_database_emit_one_event(self, db_url: str, engine: Engine) -> None:
        other = open_database(db_url)
        try:
            rec_a, obs_a, _, events_a = recorder(engine)
            rec_b, obs_b, _, events_b = recorder(other)
            obs_a.observe("GET", "/shadow/1", T0 + 5)
            obs_b.observe("GET", "/shadow/2", T0)  # seen earlier by the second instance
            obs_b.observe("GET", "/shadow/3", T0 + 9)
            assert rec_a.flush() == 1
            assert rec_b.flush() == 0
            assert events_a.endpoints() == [("GET", "/shadow/{id}", 1)]
            assert events_b.calls == []
            assert observed_rows(engine) == {("GET", "/shadow/{id}"): (3, T0, T0 + 9)}
        finally:
            other.dispose()

    def test_two_recorders_flushing_at_once_emit_one_event(self, db_url: str, engine: Engine) -> None:
        other = open_database(db_url)
        try:
            a, b = recorder(engine), recorder(other)
            for i, (_rec, obs, _hits, _events) in enumerate((a, b)):
                for n in range(20):
                    obs.observe("GET", f"/race/{n}/{i}", T0 + i)  # one endpoint, /race/{id}/{id}
                    obs.observe("PUT", f"/race-{n}", T0 + i)  # twenty endpoints, seen by both
            barrier = threading.Barrier(2)

            def run(rec: InventoryRecorder, obs: Observer) -> None:
                barrier.wait()
                deadline = time.monotonic() + 30
                # A lost race on SQLite is "database is locked": the observations wait for the next flush.
                while True:
                    rec.flush()
                    if not obs.entries or time.monotonic() > deadline:
                        return

            threads = [threading.Thread(target=run, args=(r[0], r[1])) for r in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            announced = a[3].endpoints() + b[3].endpoints()
            keys = [(m, tpl) for m, tpl, _ in announced]
            assert sorted(keys) == sorted(set(keys)), "an endpoint was announced twice"
            rows = observed_rows(engine)
            assert len(rows) == 21 and set(keys) == set(rows)
            assert rows[("GET", "/race/{id}/{id}")][0] == 40
            assert all(rows[("PUT", f"/race-{n}")][0] == 2 for n in range(20))
        finally:
            other.dispose()

    def test_a_failing_store_keeps_the_observations(self, engine: Engine) -> None:
        rec, obs, hits, events = recorder(engine)
        obs.observe("GET", "/kept/1", T0)
        obs.observe("GET", "/kept/2", T0 + 1)
        hits["orders:GET /v1/orders"] = 4
        with engine.begin() as db:  # the store breaks: the table is gone
            db.execute(text("ALTER TABLE inventory_observed RENAME TO inventory_observed_away"))
        assert rec.flush() == 0
        assert rec.failures == 1
        assert events.calls == []
        assert obs.entries == {("GET", "/kept/{id}"): [2, T0, T0 + 1]}
        assert hits == {"orders:GET /v1/orders": 4}
        # the gateway keeps observing meanwhile; the failed flush's data merges with the new
        obs.observe("GET", "/kept/3", T0 + 2)
        hits["orders:GET /v1/orders"] += 1
        assert rec.flush() == 0 and rec.failures == 2
        assert obs.entries[("GET", "/kept/{id}")][0] == 3
        with engine.begin() as db:  # the store is back
            db.execute(text("ALTER TABLE inventory_observed_away RENAME TO inventory_observed"))
        assert rec.flush() == 1
        assert events.endpoints() == [("GET", "/kept/{id}", 3)]
        assert observed_rows(engine) == {("GET", "/kept/{id}"): (3, T0, T0 + 2)}
        assert traffic_rows(engine)["orders:GET /v1/orders"][0] == 5
        assert obs.entries == {} and hits == {}

    def test_restored_observations_stay_bounded(self, engine: Engine) -> None:
        class Busy(Observer):
            """New endpoints arrive while a flush is under way: the observer fills up again."""

            def take(self) -> tuple[dict[tuple[str, str], list[float]], int]:
                taken = super().take()
                for path in ("/c", "/d"):
                    self.observe("GET", path, T0 + 1)
                return taken

        obs, events = Busy(2), Events()
        rec = InventoryRecorder(engine, obs, {}, events, clock=Clock())
        obs.observe("GET", "/a", T0)
        obs.observe("GET", "/b", T0)
        with engine.begin() as db:
            db.execute(text("ALTER TABLE inventory_observed RENAME TO away"))
        rec.flush()
        assert set(obs.entries) == {("GET", "/c"), ("GET", "/d")}
        assert obs.overflow == 2  # /a and /b could not be put back: counted, not kept
        with engine.begin() as db:
            db.execute(text("ALTER TABLE away RENAME TO inventory_observed"))
        rec.flush()  # (takes /c and /d, and Busy adds them again for the next flush)
        assert set(observed_rows(engine)) == {("GET", "/c"), ("GET", "/d")}
        assert events.summaries() == [{"more": 0, "not_recorded": 2}]

    def test_at_most_max_events_then_one_summary(self, engine: Engine) -> None:
        rec, obs, _hits, events = recorder(engine, max_events=5)
        for i in range(60):
            obs.observe("GET", f"/scan{i}", T0)
        assert rec.flush() == 60
        assert len(events.endpoints()) == 5
        assert events.summaries() == [{"more": 55, "not_recorded": 0}]
        assert len(observed_rows(engine)) == 60  # all recorded, only the events are capped

    def test_overflow_is_reported_in_the_summary(self, engine: Engine) -> None:
        rec, obs, _hits, events = recorder(engine, max_observed=3)
        for i in range(10):
            obs.observe("GET", f"/scan{i}", T0)
        assert rec.flush() == 3
        assert len(events.endpoints()) == 3
        assert events.summaries() == [{"more": 0, "not_recorded": 7}]
        # only overflow: still one summary, no endpoint events
        for i in range(10):
            obs.observe("GET", f"/scan{i}", T0)
        rec.flush()
        assert len(events.endpoints()) == 3
        assert events.summaries()[-1] == {"more": 0, "not_recorded": 7}

    def test_a_scanner_gets_bounded_storage_and_events(self, engine: Engine) -> None:
        rng = random.Random(99)
        rec, obs, _hits, events = recorder(engine, max_observed=50, max_events=50)
        for _ in range(20_000):
            word = "".join(rng.choices(string.ascii_lowercase, k=10))
            obs.observe("GET", f"/{word}", T0)
        assert len(obs.entries) == 50
        rec.flush()
        assert len(events.calls) <= 51
        assert len(events.endpoints()) == 50
        assert events.summaries() == [{"more": 0, "not_recorded": 19_950}]
        assert len(observed_rows(engine)) == 50

    def test_the_thread_flushes_and_close_flushes_the_rest(self, engine: Engine) -> None:
        obs, events = Observer(100), Events()
        rec = InventoryRecorder(engine, obs, {}, events, interval=0.02, clock=Clock())
        rec.start()
        try:
            obs.observe("GET", "/bg/1", T0)
            deadline = time.monotonic() + 10
            while ("GET", "/bg/{id}") not in observed_rows(engine):  # polling the thread's effect
                assert time.monotonic() < deadline, "the recorder thread did not flush"
                threading.Event().wait(0.02)
        finally:
            rec.close()
        obs.observe("POST", "/after-close", T0)
        rec.close()  # closing again only flushes
        assert ("POST", "/after-close") in observed_rows(engine)


# -- declared routes and the report ---------------------------------------------------------------------

CONFIG = """
services:
  - name: orders
    upstream: http://127.0.0.1:9000
    routes:
      - path: /v1/orders/{order_id}
        methods: [GET, DELETE]
        auth: none
      - path: /v1/orders
        methods: [POST, GET]
        auth: none
        rate_limit: [10/second]
      - path: /files/{rest:path}
        methods: [GET]
        auth: none
  - name: billing
    upstream: http://127.0.0.1:9001
    routes:
      - path: /v1/invoices
        methods: [GET]
        auth: none
"""


@pytest.fixture
def services() -> Any:
    return load_config_text(CONFIG, source="bastion.yaml", env={}).settings.services


def test_declared_route_ids_are_the_gateways(services: Any) -> None:
    # (compiled without the state runtime that rate limits need: the ids do not depend on it)
    plain = load_config_text(CONFIG.replace("rate_limit: [10/second]", ""), source="b.yaml", env={})
    assert [e.route_id for e in declared(services)] == [r.id for r in compile_routes(plain.settings)]
    first = declared(services)[1].as_dict()
    assert first == {
        "route": "orders:GET POST /v1/orders",
        "service": "orders",
        "methods": ["GET", "POST"],
        "path": "/v1/orders",
        "auth": "none",
        "scopes": [],
        "rate_limit": ["10/second"],
        "from_openapi": False,
    }


def _seed(engine: Engine, observed: list[tuple[str, str, int]], traffic: dict[str, float]) -> None:
    with engine.begin() as db:
        for method, template, count in observed:
            db.execute(inventory_observed_table.insert().values(
                method=method, template=template, count=count, first_seen=T0, last_seen=T0))
        for route, last in traffic.items():
            db.execute(route_traffic_table.insert().values(
                route_id=route, count=7, first_seen=T0, last_seen=last))


class TestReport:
    def test_declared_unused_and_undeclared(self, engine: Engine, services: Any) -> None:
        _seed(engine, [
            ("GET", "/admin", 9),
            ("DELETE", "/v1/orders", 4),  # a declared path, an undeclared method
            ("GET", "/v1/orders/{id}", 3),  # declared since it was observed
            ("GET", "/files/a/b/c", 2),  # the {rest:path} route matches it
            ("PUT", "/files/a", 1),
        ], {
            "orders:DELETE GET /v1/orders/{order_id}": T0 + 29 * DAY,  # recent
            "orders:GET POST /v1/orders": T0,  # 31 days before now
        })
        found = report(services, engine, unused_after=30 * DAY, now=T0 + 31 * DAY)
        by_route = {row["route"]: row for row in found["declared"]}
        assert by_route["orders:DELETE GET /v1/orders/{order_id}"]["requests"] == 7
        assert by_route["orders:DELETE GET /v1/orders/{order_id}"]["last_seen"] == T0 + 29 * DAY
        assert by_route["billing:GET /v1/invoices"]["requests"] == 0
        assert by_route["billing:GET /v1/invoices"]["last_seen"] is None
        assert {row["route"] for row in found["unused"]} == {
            "orders:GET POST /v1/orders",  # traffic, but too long ago
            "orders:GET /files/{rest:path}",  # never
            "billing:GET /v1/invoices",
        }
        assert [(e["method"], e["path"], e["count"]) for e in found["undeclared"]] == [
            ("GET", "/admin", 9), ("DELETE", "/v1/orders", 4), ("PUT", "/files/a", 1),
        ]
        assert found["unused_after_seconds"] == 30 * DAY
    def test_head_is_declared_where_get_is(self, engine: Engine, services: Any) -> None:
        # HEAD /v1/invoices was a 404 before the billing route existed; today the GET route serves it.
        _seed(engine, [("HEAD", "/v1/invoices", 2)], {})
        found = report(services, engine, unused_after=DAY, now=T0)
        assert found["undeclared"] == []

    def test_empty_store(self, engine: Engine, services: Any) -> None:
        found = report(services, engine, unused_after=DAY, now=T0)
        assert len(found["declared"]) == 4
        assert len(found["unused"]) == 4
        assert found["undeclared"] == []

    def test_load_inventory_most_requested_first(self, engine: Engine) -> None:
        _seed(engine, [("GET", "/a", 1), ("GET", "/b", 50), ("GET", "/c", 7)], {})
        observed, traffic = load_inventory(engine, limit=2)
        assert [o["path"] for o in observed] == ["/b", "/c"]
        assert traffic == {}
