"""Console pages that observe: the overview (charts over time and counts), events with the Monitor API's
filters (and their export, for operators with a fresh second factor), alerts, the API inventory and the
posture score.

Everything here reads: the event log through :mod:`bastion.events.query` (the same filters and cursor
paging as ``GET /admin/v1/events``), the inventory through :mod:`bastion.inventory.report`, the posture
through :mod:`bastion.adapters.audit` run on the running configuration, and the charts are drawn by
:mod:`bastion.events.svg` (static SVG that escapes its labels: no script, nothing external). Handlers are
sync: FastAPI runs them in its thread pool, so the event loop never waits on the database.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Engine, func, select

from ...config.loader import LoadedConfig
from ...core.events import SEVERITIES
from ...events import svg
from ...events.export import EventExport, export_headers
from ...events.query import EventFilter, QueryError, event_filter, get_event, query_events
from ...events.report import DENY_TYPES
from ...inventory.report import report as inventory_report
from ...store.schema import events_table, route_traffic_table
from .. import audit as posture
from .web import Console, security_headers

__all__ = ["RANGES", "activity", "add_monitor_pages"]

C = "/console"
HOUR = 3600.0
DAY = 86400.0
# Overview and alert periods: (value, label, bucket width, buckets).
RANGES: dict[str, tuple[str, float, int]] = {
    "24h": ("last 24 hours", HOUR, 24),
    "7d": ("last 7 days", DAY, 7),
    "30d": ("last 30 days", DAY, 30),
}
PAGE_SIZES = (25, 50, 100, 200)
POSTURE_TTL = 30.0  # the audit reads the whole store and verifies the event chain: not on every click
# The Monitor API's filters and their length limits (as in GET /admin/v1/events).
FILTERS = {
    "type": 64,
    "actor": 256,
    "resource": 256,
    "source_ip": 64,
    "severity": 16,
    "min_severity": 16,
    "since": 64,
    "until": 64,
}
EVENT_FIELDS = (
    "id", "time", "type", "severity", "actor", "resource", "source_ip", "method", "path", "route", "reason",
    "request_id",
)  # fmt: skip


def activity(engine: Engine, now: float, width: float, buckets: int) -> dict[str, Any]:
    """Events, refused requests and alerts per bucket (``buckets`` of ``width`` seconds, ending at the
    next bucket boundary after ``now``, in UTC), the period's totals and its top deny reasons. One small
    indexed query per bucket (bucketing in SQL needs ``floor``, which not every SQLite has)."""
    t = events_table.c
    end = (now // width + 1) * width
    start = end - width * buckets
    labels: list[str] = []
    series: dict[str, list[float]] = {"events": [], "denied": [], "alerts": []}
    totals: Counter[str] = Counter()
    with engine.connect() as db:
        for i in range(buckets):
            lo, hi = start + i * width, start + (i + 1) * width
            when = datetime.fromtimestamp(lo, UTC)
            labels.append(when.strftime("%H:00") if width < DAY else when.strftime("%m-%d"))
            counts = dict(
                db.execute(
                    select(t.type, func.count()).where(t.time >= lo, t.time < hi).group_by(t.type)
                ).all()
            )
            series["events"].append(float(sum(counts.values())))
            series["denied"].append(float(sum(counts.get(k, 0) for k in DENY_TYPES)))
            series["alerts"].append(float(counts.get("alert.fired", 0)))
            totals.update({k: int(v) for k, v in counts.items()})
        n = func.count().label("n")
        reasons = db.execute(
            select(func.coalesce(t.reason, t.type), n)
            .where(t.time >= start, t.type.in_(DENY_TYPES))
            .group_by(func.coalesce(t.reason, t.type))
            .order_by(n.desc())
            .limit(8)
        ).all()
        routes = db.execute(
            select(route_traffic_table.c.route_id, route_traffic_table.c.count)
            .order_by(route_traffic_table.c.count.desc())
            .limit(10)
        ).all()
        requests = db.execute(select(func.coalesce(func.sum(route_traffic_table.c.count), 0))).scalar_one()
    return {
        "start": start,
        "labels": labels,
        "series": series,
        "events": sum(totals.values()),
        "denied": sum(totals.get(k, 0) for k in DENY_TYPES),
        "auth_failed": totals.get("auth.failed", 0),
        "alerts": totals.get("alert.fired", 0),
        "reasons": [(str(r), int(c)) for r, c in reasons],
        "routes": [(str(r), int(c)) for r, c in routes],
        "requests": int(requests or 0),
    }


def _no_event(*_args: Any, **_fields: Any) -> None:
    """The emitter of a console without a gateway (tests that build the pages alone)."""


def _alert_row(event: Mapping[str, Any]) -> dict[str, Any]:
    data = event.get("data") or {}
    resource = event.get("resource") or ""
    rule = data.get("rule") or (resource.removeprefix("alert:") if resource.startswith("alert:") else "")
    group = data.get("group")
    if isinstance(group, Mapping):
        group = ", ".join(f"{k}={v}" for k, v in group.items())
    channels = data.get("channels")
    return {
        "id": event["id"],
        "time": event["time"],
        "rule": str(rule or event.get("reason") or "—"),
        "severity": event.get("severity", ""),
        "group": "" if group in (None, "") else str(group),
        "summary": str(data.get("summary") or ""),
        "channels": ", ".join(str(c) for c in channels) if isinstance(channels, list) else "",
    }


def add_monitor_pages(app: FastAPI, console: Console) -> None:
    posture_cache: dict[str, Any] = {}
    posture_lock = threading.Lock()

    def engine_or_page(request: Request) -> Engine | Response:
        if console.engine is None:
            return console.problem(request, 409, "Unavailable", "This page needs storage.database.")
        return console.engine

    def range_of(request: Request, name: str, default: str) -> str:
        """A period from the query (one of ``RANGES``); anything else is the default."""
        chosen = request.query_params.get(name, default)
        return chosen if chosen in RANGES else default

    def shown_filters(request: Request) -> dict[str, str]:
        """The Monitor API's filters as typed in the query, each cut to its length limit."""
        q = request.query_params
        return {name: q.get(name, "").strip()[:limit] for name, limit in FILTERS.items()}

    def filter_of(shown: Mapping[str, str]) -> EventFilter:
        """The filter of the events page and its export (``QueryError`` when one is not valid)."""
        return event_filter(
            console.clock(),
            since=shown["since"] or None,
            until=shown["until"] or None,
            **{k: (v or None) for k, v in shown.items() if k not in ("since", "until")},
        )

    # -- overview ---------------------------------------------------------------------------------------

    @app.get(f"{C}/", include_in_schema=False)
    def home() -> Response:
        return console.go(f"{C}/overview")

    @app.get(f"{C}/overview", include_in_schema=False)
    def overview(request: Request) -> Response:
        engine = engine_or_page(request)
        if isinstance(engine, Response):
            return engine
        chosen = range_of(request, "range", "24h")
        label, width, buckets = RANGES[chosen]
        now = console.clock()
        data = activity(engine, now, width, buckets)
        chart = svg.column_chart(
            data["labels"],
            [(name, values) for name, values in data["series"].items()],
            title=f"Events, denials and alerts per {'hour' if width < DAY else 'day'}, {label}",
            width=960,
            height=280,
        )
        routes = svg.bar_chart(
            data["routes"], title="Requests per declared route", width=620, label_width=260
        )
        reasons = svg.bar_chart(
            data["reasons"],
            title="Refused requests by reason",
            width=620,
            label_width=220,
            color=svg.PALETTE[1],
        )
        counts: dict[str, Any] = {
            k: data[k] for k in ("events", "denied", "auth_failed", "alerts", "requests")
        }
        if console.identity is not None:
            consumers = console.identity.list_consumers()
            keys = console.identity.list_keys(include_revoked=False)
            clients = console.identity.list_clients()
            counts.update(
                consumers=len(consumers),
                consumers_active=sum(1 for c in consumers if c["status"] == "active"),
                keys_active=sum(1 for k in keys if k["expires_at"] is None or k["expires_at"] > now),
                clients_active=sum(1 for c in clients if c["revoked_at"] is None),
            )
        else:
            counts.update(consumers=0, consumers_active=0, keys_active=0, clients_active=0)
        latest, _ = query_events(engine, EventFilter(type="alert.fired", since=data["start"]), page_size=5)
        return console.render(
            request,
            "overview.html",
            section="overview",
            ranges=[(k, v[0]) for k, v in RANGES.items()],
            range=chosen,
            range_label=label,
            bucket_label="hour" if width < DAY else "day",
            counts=counts,
            activity_chart=chart,
            routes_chart=routes if data["routes"] else "",
            reasons_chart=reasons if data["reasons"] else "",
            alerts=[_alert_row(e) for e in latest],
        )

    # -- events -----------------------------------------------------------------------------------------

    @app.get(f"{C}/events", include_in_schema=False)
    def events(request: Request) -> Response:
        engine = engine_or_page(request)
        if isinstance(engine, Response):
            return engine
        q = request.query_params
        shown = shown_filters(request)
        try:
            page_size = int(q.get("page_size", "50"))
        except ValueError:
            page_size = 50
        page_size = min(max(page_size, 1), 1000)
        token = q.get("page_token", "")[:256] or None
        rows: list[dict[str, Any]] = []
        next_token = None
        status, problem = 200, ""
        try:
            flt = filter_of(shown)
            rows, next_token = query_events(engine, flt, page_size=page_size, page_token=token)
        except QueryError as exc:
            status, problem = 400, f"The filter is not valid: {exc}"
        kept = {k: v for k, v in shown.items() if v}
        base = {**kept, "page_size": str(page_size)} if page_size != 50 else kept
        return console.render(
            request,
            "events.html",
            status,
            section="events",
            f=shown,
            severities=SEVERITIES,
            page_size=page_size,
            page_sizes=sorted({*PAGE_SIZES, page_size}),
            events=rows,
            problem=problem,
            next_page=f"{C}/events?" + urlencode({**base, "page_token": next_token}) if next_token else "",
            first_page=f"{C}/events?" + urlencode(base) if token else "",
            export=f"{C}/events/export" + ("?" + urlencode(kept) if kept else ""),
        )

    # Before /events/{event_id}: routes match in order.
    @app.get(f"{C}/events/export", include_in_schema=False)
    def export(request: Request) -> Response:
        """The events the page's filters match, as a JSON Lines download (GET /admin/v1/events/export)."""
        engine = engine_or_page(request)
        if isinstance(engine, Response):
            return engine
        if console.needs_step_up(request):
            return console.step_up(request, "events")
        shown = shown_filters(request)
        try:
            job = EventExport(engine, filter_of(shown))
        except QueryError as exc:
            return console.problem(request, 400, "The filter is not valid", str(exc), back="events")
        emit: Callable[..., None] = console.gateway.emit if console.gateway is not None else _no_event
        lines = job.stream(
            emit,
            {k: v for k, v in shown.items() if v},
            actor=console.actor(request),
            source_ip=console.ip(request),
        )
        headers = {**security_headers(), **export_headers(console.clock())}
        return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)

    @app.get(C + "/events/{event_id}", include_in_schema=False)
    def event(event_id: str, request: Request) -> Response:
        engine = engine_or_page(request)
        if isinstance(engine, Response):
            return engine
        found = get_event(engine, event_id)
        if found is None:
            return console.problem(
                request, 404, "No such event", "There is no event with this id.", back="events"
            )
        return console.render(request, "event.html", section="events", event=found, fields=EVENT_FIELDS)

    # -- alerts -----------------------------------------------------------------------------------------

    @app.get(f"{C}/alerts", include_in_schema=False)
    def alerts(request: Request) -> Response:
        engine = engine_or_page(request)
        if isinstance(engine, Response):
            return engine
        since = range_of(request, "since", "7d")
        token = request.query_params.get("page_token", "")[:256] or None
        now = console.clock()
        flt = event_filter(now, since=since, type="alert.fired")
        try:
            rows, next_token = query_events(engine, flt, page_size=50, page_token=token)
        except QueryError:
            rows, next_token = [], None
        t = events_table.c
        with engine.connect() as db:
            n = func.count().label("n")
            by_rule = db.execute(
                select(func.coalesce(t.resource, t.reason, t.type), n)
                .where(t.type == "alert.fired", t.time >= flt.since)
                .group_by(func.coalesce(t.resource, t.reason, t.type))
                .order_by(n.desc())
                .limit(12)
            ).all()
        items = [(str(r).removeprefix("alert:"), int(c)) for r, c in by_rule]
        chart = svg.bar_chart(items, title="Alerts by rule", width=720, color=svg.PALETTE[2]) if items else ""
        return console.render(
            request,
            "alerts.html",
            section="alerts",
            ranges=[(k, v[0]) for k, v in RANGES.items()],
            since=since,
            chart=chart,
            alerts=[_alert_row(e) for e in rows],
            next_page=f"{C}/alerts?" + urlencode({"since": since, "page_token": next_token})
            if next_token
            else "",
        )

    # -- inventory --------------------------------------------------------------------------------------

    @app.get(f"{C}/inventory", include_in_schema=False)
    def inventory(request: Request) -> Response:
        engine = engine_or_page(request)
        if isinstance(engine, Response):
            return engine
        if console.gateway is None:
            return console.problem(request, 409, "Unavailable", "The inventory needs the running gateway.")
        settings = console.gateway.settings
        unused_after = settings.inventory.unused_after
        inv = inventory_report(settings.services, engine, unused_after=unused_after, now=console.clock())
        return console.render(
            request,
            "inventory.html",
            section="inventory",
            inv=inv,
            unused_after=f"{unused_after / DAY:g} days",
        )

    # -- posture ----------------------------------------------------------------------------------------

    def audit_report() -> tuple[posture.AuditReport, float]:
        gateway = console.gateway
        assert gateway is not None
        now = console.clock()
        with posture_lock:
            cached = posture_cache.get("report")
            if cached is not None and now - cached[1] < POSTURE_TTL:
                return cached  # type: ignore[no-any-return]
            lines = gateway.identity.settings_lines if gateway.identity is not None else {}
            loaded = LoadedConfig(gateway.settings, gateway.source or "(running configuration)", lines=lines)
            store, detail = posture.read_store(loaded, now=now)
            posture_cache["report"] = (posture.audit(loaded, store, detail), now)
            return posture_cache["report"]  # type: ignore[no-any-return]

    @app.get(f"{C}/posture", include_in_schema=False)
    def posture_page(request: Request) -> Response:
        if console.gateway is None:
            return console.problem(request, 409, "Unavailable", "The posture needs the running gateway.")
        report, computed_at = audit_report()
        return console.render(
            request,
            "posture.html",
            section="posture",
            report=report,
            computed_at=computed_at,
            counts=list(report.counts().items()),
            practices=[
                (pid, posture.PRACTICES[pid], status, results) for pid, status, results in report.practices()
            ],
        )
