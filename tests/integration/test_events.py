"""The event log: the batching writer and the queries on a real SQLite file, then the events a real
gateway writes for denied requests and on shutdown.

Nothing here sleeps to let time pass: waits poll an observable effect (a row, a counter) with a
bounded deadline, and event times are injected with ``new_event(now=...)``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

from bastion.core.events import Event
from bastion.events.query import (
    MAX_PAGE_SIZE,
    EventFilter,
    QueryError,
    get_event,
    parse_time,
    query_events,
)
from bastion.events.writer import EventWriter, new_event
from bastion.store.database import open_database
from bastion.store.schema import events_table

from ..support import EchoUpstream, GatewayThread, config_text, load_text, request

T0 = 1_700_000_000.0  # a fixed "now" for injected event times


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_database(f"sqlite:///{tmp_path / 'events.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def writer(engine: Engine) -> Iterator[EventWriter]:
    """A writer whose thread is NOT started: tests drive ``flush()`` themselves."""
    w = EventWriter(engine, queue_size=100_000, batch_size=500, flush_interval=60.0)
    yield w
    w.close(timeout=10)


def count(engine: Engine, type_: str | None = None) -> int:
    stmt = select(func.count()).select_from(events_table)
    if type_ is not None:
        stmt = stmt.where(events_table.c.type == type_)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def rows_of(engine: Engine, type_: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(events_table).where(events_table.c.type == type_)).mappings().all()
    return [{**r, "data": json.loads(r["data"])} for r in rows]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)  # a poll interval, not a way to make time pass


def ev(type_: str, t: float, **fields: Any) -> Event:
    return new_event(type_, now=t, **fields)


# -- the writer -----------------------------------------------------------------------------------------


class TestWriter:
    def test_written_in_batches_and_queryable(self, engine: Engine) -> None:
        commits: list[int] = []
        event.listen(engine, "commit", lambda _conn: commits.append(1))
        w = EventWriter(engine, queue_size=10_000, batch_size=100, flush_interval=60.0)
        for i in range(250):
            w.emit(ev("request.denied", T0 + i, reason="route_not_found", data={"i": i}))
        commits.clear()
        assert w.flush() == 250
        assert len(commits) == 3  # 100 + 100 + 50: one transaction per batch, not per event
        assert w.written == 250
        rows, _ = query_events(engine, EventFilter(), page_size=1000)
        assert sorted(r["data"]["i"] for r in rows) == list(range(250))
        w.close()

    def test_row_fields_round_trip(self, engine: Engine, writer: EventWriter) -> None:
        e = ev(
            "request.denied",
            T0,
            severity="warning",
            request_id="abc123",
            route="orders:GET /v1/orders",
            method="GET",
            path="/v1/orders",
            source_ip="203.0.113.9",
            actor="system",
            reason="ip_denied",
            data={"status": 403, "scope": "route"},
        )
        writer.emit(e)
        writer.flush()
        got = get_event(engine, e.id)
        assert got is not None
        assert got["id"] == e.id
        assert got["time"] == "2023-11-14T22:13:20Z"
        assert got["type"] == "request.denied"
        assert got["severity"] == "warning"
        assert got["request_id"] == "abc123"
        assert got["route"] == "orders:GET /v1/orders"
        assert (got["method"], got["path"], got["source_ip"]) == ("GET", "/v1/orders", "203.0.113.9")
        assert (got["actor"], got["reason"]) == ("system", "ip_denied")
        assert got["data"] == {"status": 403, "scope": "route"}

    def test_get_event_unknown_or_malformed_id(self, engine: Engine) -> None:
        assert get_event(engine, "01HZZZZZZZZZZZZZZZZZZZZZZZ") is None
        assert get_event(engine, "not-an-id") is None
        assert get_event(engine, "' OR 1=1 --") is None

    def test_background_thread_writes_without_being_asked(self, engine: Engine) -> None:
        w = EventWriter(engine, queue_size=1000, batch_size=500, flush_interval=0.05)
        w.start()
        try:
            for i in range(7):
                w.emit(ev("admin.action", T0 + i))
            wait_for(lambda: count(engine) == 7, what="the periodic flush")
        finally:
            w.close()

    def test_full_batch_wakes_the_writer_early(self, engine: Engine) -> None:
        # flush_interval is a minute: only the batch-size wake-up can explain a prompt write.
        w = EventWriter(engine, queue_size=1000, batch_size=20, flush_interval=60.0)
        w.start()
        try:
            for i in range(20):
                w.emit(ev("admin.action", T0 + i))
            wait_for(lambda: count(engine) == 20, what="the batch-size wake-up")
        finally:
            w.close()

    def test_close_flushes_everything_queued(self, engine: Engine) -> None:
        w = EventWriter(engine, queue_size=10_000, batch_size=500, flush_interval=60.0)
        w.start()
        for i in range(1234):
            w.emit(ev("request.denied", T0 + i / 1000))
        w.close()
        assert count(engine) == 1234
        assert w.written == 1234
        assert w.dropped == 0

    def test_close_without_thread_flushes(self, engine: Engine) -> None:
        w = EventWriter(engine, queue_size=100, batch_size=10, flush_interval=60.0)
        for i in range(33):
            w.emit(ev("request.denied", T0 + i))
        w.close()
        assert count(engine) == 33

    def test_overflow_is_counted_and_reported(self, engine: Engine) -> None:
        w = EventWriter(engine, queue_size=10, batch_size=500, flush_interval=60.0)
        for i in range(25):
            w.emit(ev("request.denied", T0 + i))  # never raises, never blocks
        assert w.dropped == 15
        w.flush()
        assert count(engine, "request.denied") == 10
        [dropped] = rows_of(engine, "events.dropped")
        assert dropped["data"]["count"] == 15
        assert dropped["data"]["queue_size"] == 10
        assert dropped["severity"] == "error"
        assert dropped["reason"] == "event_queue_full"
        # Reported once: a later flush without new drops adds no second report.
        w.emit(ev("request.denied", T0 + 100))
        w.flush()
        assert count(engine, "events.dropped") == 1
        # New drops are reported with their own count, not the running total.
        for i in range(12):
            w.emit(ev("request.denied", T0 + 200 + i))
        w.flush()
        reports = sorted(r["data"]["count"] for r in rows_of(engine, "events.dropped"))
        assert reports == [2, 15]
        w.close()

    def test_database_failure_does_not_raise_and_the_batch_is_retried(self, engine: Engine) -> None:
        w = EventWriter(engine, queue_size=1000, batch_size=500, flush_interval=0.02)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE events"))
        w.start()
        try:
            e = ev("request.denied", T0, reason="route_not_found")
            w.emit(e)  # the request path: must not raise although every insert now fails
            wait_for(lambda: w.failures >= 2, what="failed write attempts")
            assert w.written == 0
            events_table.create(engine)  # the database comes back
            wait_for(lambda: w.written == 1, what="the retried batch")
            assert get_event(engine, e.id) is not None
        finally:
            w.close(timeout=10)

    def test_emit_keeps_queueing_while_the_database_is_down(self, engine: Engine) -> None:
        w = EventWriter(engine, queue_size=1000, batch_size=500, flush_interval=0.02)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE events"))
        w.start()
        try:
            w.emit(ev("request.denied", T0))
            wait_for(lambda: w.failures >= 1, what="a failed write")
            later = [ev("request.denied", T0 + 1 + i) for i in range(5)]
            for e in later:
                w.emit(e)
            events_table.create(engine)
            wait_for(lambda: count(engine) == 6, what="all six events")
            assert w.dropped == 0
        finally:
            w.close(timeout=10)

    def test_an_outage_is_spooled_to_a_file_and_written_back_exactly_once(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.jsonl"
        # A small queue: while the database is down, batches go to the spool instead of waiting in it.
        w = EventWriter(
            engine, queue_size=50, batch_size=10, flush_interval=0.01, dead_letter_path=str(spool)
        )
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE events"))
        w.start()
        try:
            sent = []
            for i in range(300):
                e = ev("request.denied", T0 + i)
                sent.append(e.id)
                w.emit(e)
                if i % 10 == 9:
                    wait_for(lambda: len(w._queue) == 0, what="the queue to drain into the spool")
            wait_for(lambda: w.dead_lettered >= 300, what="every event in the spool")
            assert w.dropped == 0 and w.written == 0
            assert len(spool.read_text().splitlines()) == 300
            events_table.create(engine)  # the database comes back
            wait_for(lambda: count(engine) == 300, what="the spooled events in the database")
            wait_for(lambda: not spool.exists(), what="the spool to be removed")
            with engine.connect() as conn:
                ids = [r.id for r in conn.execute(select(events_table.c.id).order_by(events_table.c.id))]
            assert ids == sorted(sent)  # each exactly once, none lost
        finally:
            w.close(timeout=10)

    def test_a_spool_left_behind_is_replayed_at_start_without_duplicates(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.jsonl"
        first = EventWriter(engine, flush_interval=60.0, dead_letter_path=str(spool))
        written = [ev("request.denied", T0 + i) for i in range(3)]
        for e in written:
            first.emit(e)
        first.flush()
        # A crash between inserting the spool and truncating it leaves rows that are already written.
        pending = [ev("request.denied", T0 + 10 + i) for i in range(2)]
        from bastion.events.writer import row_for as _row

        spool.write_text("".join(json.dumps(_row(e), default=str) + "\n" for e in [*written, *pending]))
        second = EventWriter(engine, flush_interval=0.01, dead_letter_path=str(spool))
        second.start()
        try:
            wait_for(lambda: not spool.exists(), what="the spool to be replayed")
            assert count(engine) == 5  # the three already written are not written twice
        finally:
            second.close(timeout=10)

    def test_close_on_a_broken_database_gives_up_in_bounded_time(self, tmp_path: Path) -> None:
        eng = open_database(f"sqlite:///{tmp_path / 'broken.db'}")
        try:
            with eng.begin() as conn:
                conn.execute(text("DROP TABLE events"))
            w = EventWriter(eng, queue_size=100, batch_size=10, flush_interval=60.0)
            w.emit(ev("request.denied", T0))
            started = time.monotonic()
            w.close(timeout=10)  # must return: shutdown cannot hang on a dead database
            assert time.monotonic() - started < 10
            assert w.failures >= 1
            assert w.written == 0
        finally:
            eng.dispose()


# -- queries --------------------------------------------------------------------------------------------


@pytest.fixture
def sample(engine: Engine, writer: EventWriter) -> list[Event]:
    """Ten events one minute apart, of several types, IPs and severities."""
    specs = [
        ("request.denied", "10.0.0.1", "warning"),
        ("request.denied", "10.0.0.2", "notice"),
        ("admin.action", "127.0.0.1", "info"),
        ("request.denied", "10.0.0.1", "warning"),
        ("admin.auth_failed", "10.0.0.9", "warning"),
        ("requests.other", "10.0.0.1", "info"),
        ("gateway.started", None, "info"),
        ("request.denied", "10.0.0.2", "warning"),
        ("events.dropped", None, "error"),
        ("request.denied", "10.0.0.1", "notice"),
    ]
    events = [ev(t, T0 + 60 * i, source_ip=ip, severity=sev) for i, (t, ip, sev) in enumerate(specs)]
    for e in events:
        writer.emit(e)
    writer.flush()
    return events


def all_pages(engine: Engine, flt: EventFilter, page_size: int) -> list[list[dict[str, Any]]]:
    pages, token = [], None
    while True:
        page, token = query_events(engine, flt, page_size=page_size, page_token=token)
        pages.append(page)
        if token is None:
            return pages
        assert len(pages) < 10_000


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


class TestQueryFilters:
    def test_no_filter_returns_everything_newest_first(self, engine: Engine, sample: list[Event]) -> None:
        rows, token = query_events(engine, EventFilter(), page_size=50)
        assert token is None
        assert ids(rows) == [e.id for e in reversed(sample)]

    def test_type_is_a_prefix(self, engine: Engine, sample: list[Event]) -> None:
        rows, _ = query_events(engine, EventFilter(type="request."))
        assert {r["type"] for r in rows} == {"request.denied"}
        assert len(rows) == 5  # "requests.other" does not start with "request."
        rows, _ = query_events(engine, EventFilter(type="admin."))
        assert sorted(r["type"] for r in rows) == ["admin.action", "admin.auth_failed"]
        rows, _ = query_events(engine, EventFilter(type="admin.action"))
        assert [r["type"] for r in rows] == ["admin.action"]

    def test_type_prefix_is_not_a_like_pattern(self, engine: Engine, writer: EventWriter) -> None:
        writer.emit(ev("a_b.x", T0))
        writer.emit(ev("aXb.x", T0 + 1))
        writer.emit(ev("a%.y", T0 + 2))
        writer.flush()
        assert [r["type"] for r in query_events(engine, EventFilter(type="a_b"))[0]] == ["a_b.x"]
        assert [r["type"] for r in query_events(engine, EventFilter(type="a%"))[0]] == ["a%.y"]

    def test_source_ip(self, engine: Engine, sample: list[Event]) -> None:
        rows, _ = query_events(engine, EventFilter(source_ip="10.0.0.1"))
        assert len(rows) == 4
        assert {r["source_ip"] for r in rows} == {"10.0.0.1"}
        assert query_events(engine, EventFilter(source_ip="10.0.0"))[0] == []  # exact, not prefix

    def test_severity(self, engine: Engine, sample: list[Event]) -> None:
        rows, _ = query_events(engine, EventFilter(severity="notice"))
        assert [r["severity"] for r in rows] == ["notice", "notice"]
        rows, _ = query_events(engine, EventFilter(severity="error"))
        assert [r["type"] for r in rows] == ["events.dropped"]

    def test_since_is_inclusive_until_exclusive(self, engine: Engine, sample: list[Event]) -> None:
        rows, _ = query_events(engine, EventFilter(since=T0 + 120, until=T0 + 300))
        assert ids(rows) == [sample[4].id, sample[3].id, sample[2].id]

    def test_filters_combine(self, engine: Engine, sample: list[Event]) -> None:
        flt = EventFilter(type="request.", source_ip="10.0.0.1", severity="warning", since=T0 + 1)
        rows, _ = query_events(engine, flt)
        assert ids(rows) == [sample[3].id]

    def test_since_with_durations_and_iso(self, engine: Engine, sample: list[Event]) -> None:
        now = T0 + 9 * 60 + 1  # one second after the newest sample
        rows, _ = query_events(engine, EventFilter(since=parse_time("3m", now)))
        assert ids(rows) == [sample[9].id, sample[8].id, sample[7].id]
        rows, _ = query_events(engine, EventFilter(until=parse_time("8m", now)))
        assert ids(rows) == [sample[1].id, sample[0].id]
        rows, _ = query_events(engine, EventFilter(since=parse_time("2023-11-14T22:20:20Z", now)))
        assert ids(rows) == [sample[9].id, sample[8].id, sample[7].id]

    def test_no_match(self, engine: Engine, sample: list[Event]) -> None:
        assert query_events(engine, EventFilter(type="nothing.")) == ([], None)


class TestPagination:
    def test_every_event_exactly_once_newest_first(self, engine: Engine, writer: EventWriter) -> None:
        events = [ev("request.denied", T0 + i * 0.01) for i in range(137)]
        for e in events:
            writer.emit(e)
        writer.flush()
        pages = all_pages(engine, EventFilter(), page_size=10)
        assert [len(p) for p in pages] == [10] * 13 + [7]
        seen = [r for p in pages for r in p]
        assert ids(seen) == [e.id for e in reversed(events)]
        assert ids(seen) == sorted(ids(seen), reverse=True)

    def test_exact_multiple_of_the_page_size(self, engine: Engine, writer: EventWriter) -> None:
        for i in range(20):
            writer.emit(ev("x.y", T0 + i))
        writer.flush()
        pages = all_pages(engine, EventFilter(), page_size=10)
        assert sum(len(p) for p in pages) == 20
        assert all(pages), "no empty trailing page after an exact fit"

    def test_pagination_with_a_filter(self, engine: Engine, sample: list[Event]) -> None:
        pages = all_pages(engine, EventFilter(type="request."), page_size=2)
        assert [len(p) for p in pages] == [2, 2, 1]
        expected = [e.id for e in reversed(sample) if e.type == "request.denied"]
        assert ids([r for p in pages for r in p]) == expected

    def test_stable_while_new_events_arrive(self, engine: Engine, writer: EventWriter) -> None:
        original = [ev("request.denied", T0 + i) for i in range(30)]
        for e in original:
            writer.emit(e)
        writer.flush()
        seen: list[str] = []
        page, token = query_events(engine, EventFilter(), page_size=7)
        seen += ids(page)
        n = 0
        while token is not None:
            # Newer events land between page requests; they must neither shift nor repeat the pages.
            for _ in range(3):
                writer.emit(ev("request.denied", T0 + 1000 + n))
                n += 1
            writer.flush()
            page, token = query_events(engine, EventFilter(), page_size=7, page_token=token)
            seen += ids(page)
        assert seen == [e.id for e in reversed(original)]

    @pytest.mark.parametrize(
        "token",
        [
            "garbage!!",
            "bm90IGpzb24",  # "not json"
            base64.urlsafe_b64encode(b'{"after": "01HZZZZZZZZZZZZZZZZZZZZZZZ"}').decode(),
            base64.urlsafe_b64encode(b'{"before": "x\' OR 1=1 --"}').decode(),
            base64.urlsafe_b64encode(b'{"before": 12}').decode(),
            base64.urlsafe_b64encode(b"[1, 2]").decode(),
        ],
    )
    def test_invalid_page_token(self, engine: Engine, token: str) -> None:
        with pytest.raises(QueryError):
            query_events(engine, EventFilter(), page_token=token)

    @pytest.mark.parametrize("size", [0, -1, MAX_PAGE_SIZE + 1])
    def test_page_size_out_of_bounds(self, engine: Engine, size: int) -> None:
        with pytest.raises(QueryError):
            query_events(engine, EventFilter(), page_size=size)

    @pytest.mark.parametrize("size", [1, MAX_PAGE_SIZE])
    def test_page_size_bounds_are_inclusive(self, engine: Engine, sample: list[Event], size: int) -> None:
        rows, _ = query_events(engine, EventFilter(), page_size=size)
        assert len(rows) == min(size, len(sample))
        assert MAX_PAGE_SIZE == 1000


class TestParseTime:
    NOW = 1_700_000_000.0

    @pytest.mark.parametrize(
        ("value", "ago"),
        [("1h", 3600), ("30m", 1800), ("7d", 7 * 86400), ("45s", 45), ("500ms", 0.5), (" 2h ", 7200)],
    )
    def test_durations_mean_that_long_ago(self, value: str, ago: float) -> None:
        assert parse_time(value, self.NOW) == pytest.approx(self.NOW - ago)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2023-11-14T22:13:20Z", 1_700_000_000.0),
            ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
            ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
            ("2023-11-14T22:13:20", 1_700_000_000.0),  # naive means UTC
            ("2023-11-14", 1_699_920_000.0),
        ],
    )
    def test_iso_times(self, value: str, expected: float) -> None:
        assert parse_time(value, self.NOW) == expected

    @pytest.mark.parametrize("value", ["", "yesterday", "1 hour", "1w", "-1h", "2023-13-01T00:00:00Z"])
    def test_rejects_anything_else(self, value: str) -> None:
        with pytest.raises(QueryError):
            parse_time(value, self.NOW)


# -- through the real gateway -------------------------------------------------------------------------


def db_engine(gw: GatewayThread) -> Engine:
    return open_database(gw.loaded.settings.storage.database, migrate_schema=False)


def wait_for_denial(engine: Engine, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [r for r in rows_of(engine, "request.denied") if r["request_id"] == request_id]
        return bool(found)

    wait_for(look, timeout, what=f"the request.denied event of {request_id}")
    assert len(found) == 1
    return found[0]


class TestGatewayDenials:
    @pytest.mark.parametrize(
        ("method", "target", "status", "code", "event_path"),
        [
            ("GET", "/no/such/endpoint", 404, "route_not_found", "/no/such/endpoint"),
            ("GET", "/v1//orders/./42/../../nope", 404, "route_not_found", "/v1/nope"),
            ("DELETE", "/v1/orders/42", 405, "method_not_allowed", "/v1/orders/42"),
            ("PUT", "//v1/orders/42/%2e%2e/7", 405, "method_not_allowed", "/v1/orders/7"),
            # Rejected before canonicalisation: the event keeps the raw target for the investigator.
            ("GET", "/public/..%2f..%2fetc/pw", 400, "path_encoded_slash", "/public/..%2f..%2fetc/pw"),
        ],
    )
    def test_denied_request_is_an_event(
        self, gateway: GatewayThread, method: str, target: str, status: int, code: str, event_path: str
    ) -> None:
        got_status, headers, body = request(gateway.port, method, target)
        assert got_status == status
        problem = json.loads(body)
        assert problem["code"] == code
        request_id = headers["x-request-id"]
        assert problem["request_id"] == request_id
        eng = db_engine(gateway)
        try:
            row = wait_for_denial(eng, request_id)
        finally:
            eng.dispose()
        assert row["reason"] == code
        assert row["method"] == method
        assert row["path"] == event_path
        assert row["source_ip"] == "127.0.0.1"
        assert row["data"]["status"] == status

    def test_ip_denied_request_is_an_event(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        routes = """
      - path: /internal/{name}
        methods: [GET]
        auth: none
        ip_deny: [127.0.0.0/8]
      - path: /partners
        methods: [GET]
        auth: none
        ip_allow: [192.0.2.0/24]
"""
        loaded = load_text(config_text(upstream.port, tmp_path / "ip.db", routes=routes))
        with GatewayThread(loaded) as gw:
            denied = request(gw.port, "GET", "/internal/report")
            not_allowed = request(gw.port, "GET", "/partners")
            eng = db_engine(gw)
            try:
                for (status, headers, body), code, path, route in (
                    (denied, "ip_denied", "/internal/report", "orders:GET /internal/{name}"),
                    (not_allowed, "ip_not_allowed", "/partners", "orders:GET /partners"),
                ):
                    assert status == 403
                    assert json.loads(body)["code"] == code
                    row = wait_for_denial(eng, headers["x-request-id"])
                    assert (row["reason"], row["method"], row["path"]) == (code, "GET", path)
                    assert row["source_ip"] == "127.0.0.1"
                    assert row["route"] == route
                    assert row["data"]["scope"] == "route"
            finally:
                eng.dispose()
        assert upstream.requests == []  # nothing denied ever reached the origin

    def test_untrusted_forwarded_for_is_not_the_source_ip(self, gateway: GatewayThread) -> None:
        _, headers, _ = request(gateway.port, "GET", "/nope", headers={"X-Forwarded-For": "203.0.113.7"})
        eng = db_engine(gateway)
        try:
            row = wait_for_denial(eng, headers["x-request-id"])
        finally:
            eng.dispose()
        assert row["source_ip"] == "127.0.0.1"

    def test_allowed_requests_are_not_denial_events(self, gateway: GatewayThread) -> None:
        status, headers, _ = request(gateway.port, "GET", "/v1/orders/42")
        assert status == 200
        marker_status, marker_headers, _ = request(gateway.port, "GET", "/marker")
        assert marker_status == 404
        eng = db_engine(gateway)
        try:
            wait_for_denial(eng, marker_headers["x-request-id"])  # later than the allowed one
            assert all(r["request_id"] != headers["x-request-id"] for r in rows_of(eng, "request.denied"))
        finally:
            eng.dispose()


class TestShutdownFlush:
    def test_events_emitted_before_stop_are_written(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        # A minute between periodic flushes and a batch bigger than the traffic: only the shutdown flush
        # can put these rows in the database.
        db = tmp_path / "flush.db"
        text_ = config_text(upstream.port, db, extra="events: {flush_interval: 60s, batch_size: 500}")
        gw = GatewayThread(load_text(text_)).start()
        request_ids = []
        try:
            for i in range(40):
                status, headers, _ = request(gw.port, "GET", f"/missing/{i}")
                assert status == 404
                request_ids.append(headers["x-request-id"])
            eng = open_database(f"sqlite:///{db}", migrate_schema=False)
            try:
                assert count(eng, "request.denied") == 0  # still queued, not yet written
            finally:
                eng.dispose()
        finally:
            gw.stop()
        eng = open_database(f"sqlite:///{db}", migrate_schema=False)
        try:
            denied = rows_of(eng, "request.denied")
            assert sorted(r["request_id"] for r in denied) == sorted(request_ids)
            assert {r["path"] for r in denied} == {f"/missing/{i}" for i in range(40)}
            assert count(eng, "gateway.started") == 1
            assert count(eng, "gateway.stopped") == 1
            [started] = rows_of(eng, "gateway.started")
            [stopped] = rows_of(eng, "gateway.stopped")
            assert started["id"] < stopped["id"]
            assert started["actor"] == "system"
        finally:
            eng.dispose()

    def test_fixture_gateway_flushes_on_stop(self, gateway: GatewayThread) -> None:
        status, headers, _ = request(gateway.port, "PATCH", "/v1/orders/1")
        assert status == 405
        gateway.stop()
        eng = db_engine(gateway)
        try:
            ids_ = [r["request_id"] for r in rows_of(eng, "request.denied")]
            assert headers["x-request-id"] in ids_
            assert count(eng, "gateway.stopped") == 1
        finally:
            eng.dispose()
