"""The audit report (``bastion report``): what the event log, the identity store and the inventory say
about a period — who was denied, whose credentials failed, which keys nobody uses or are about to expire,
which alerts fired and which endpoints were called that nobody declared.

Theory of operation: :func:`gather` reads the store once (SQLAlchemy Core; counting is done in SQL where
rows can be many, so a week under attack is still a handful of small result sets) into a :class:`Report`
of plain values; :func:`sections` turns that into titled tables; :func:`render_markdown` and
:func:`render_html` only format. Nothing after :func:`gather` does I/O.

Everything read from the database is untrusted text — a path, an actor, a rule name or a source address
may carry markup. The HTML renderer escapes every value (and the page's Content-Security-Policy forbids
scripts and external resources, so even a mistake could not run anything); the Markdown renderer escapes
the characters that would end a table cell or start markup (``|``, backticks, ``<``, ``[``, newlines…).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any, Literal

from sqlalchemy import Engine, and_, func, or_, select

from ..store.schema import (
    api_keys_table,
    consumers_table,
    events_table,
    inventory_observed_table,
    public_keys_table,
)
from . import svg

__all__ = ["DENY_TYPES", "Report", "build_report", "gather", "render_html", "render_markdown", "sections"]

DAY = 86400.0
# The events that are a refused request, whatever refused it.
DENY_TYPES = ("request.denied", "auth.failed", "webhook.signature_invalid", "rate_limit.exceeded")
UNKNOWN_KEY = "(unknown key)"
UNKNOWN_CREDENTIAL = "(unknown credential)"
UNIDENTIFIED = "(no key or consumer named)"
TOP_SOURCES = 10
MAX_ROWS = 50  # per table; the rest is counted ("and N more")
MAX_CHART_COLUMNS = 62  # a longer period is charted in buckets of several days
MAX_CELL = 160
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_ACTOR_CONSUMER = re.compile(r"consumer:([^/]+)")


# -- the values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    ip: str
    denials: int
    reasons: tuple[tuple[str, int], ...]
    last_seen: float


@dataclass(frozen=True, slots=True)
class ConsumerFailures:
    consumer: str
    failures: int
    causes: tuple[tuple[str, int], ...]
    keys: int  # distinct key ids named
    last_seen: float


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    consumer: str
    name: str
    created_at: float
    last_used_at: float | None
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Alert:
    time: float
    rule: str
    group: str
    count: str
    severity: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    requests: int
    first_seen: float
    last_seen: float
    new: bool  # first seen in the period


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float
    denied: int
    auth_failed: int


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    since: float
    now: float
    unused_after: float
    expiring_within: float
    counts: Mapping[str, int]  # events in the period by type (summaries expanded, see _count_types)
    distinct_sources: int
    sources: list[Source]
    bucket_days: int
    buckets: list[Bucket]
    consumers: list[ConsumerFailures]
    unused_keys: list[Key]
    expiring_keys: list[Key]
    alerts: list[Alert]
    endpoints: list[Endpoint]
    new_endpoints: int  # first seen in the period, including those only counted in summary events


@dataclass(frozen=True, slots=True)
class Section:
    id: str
    heading: str
    note: str
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    more: int = 0  # rows left out
    numeric: frozenset[int] = frozenset()  # right-aligned columns
    chart: str = ""  # inline SVG, HTML only
    extra: list[str] = field(default_factory=list)  # further plain-text lines


# -- reading ------------------------------------------------------------------------------------------


def build_report(
    engine: Engine,
    *,
    since: float,
    now: float,
    fmt: Literal["html", "md"],
    title: str = "Bastion security report",
    unused_after: float = 30 * DAY,
    expiring_within: float = 14 * DAY,
    undeclared: Iterable[Mapping[str, Any]] | None = None,
) -> str:
    """The report on ``[since, now)`` as a self-contained HTML page or as Markdown.

    ``undeclared``: the inventory report's ``undeclared`` list (``bastion.inventory.report.report``), which
    leaves out observed endpoints a route has declared since; without it every endpoint in
    ``inventory_observed`` counts."""
    if fmt not in ("html", "md"):
        raise ValueError(f"unknown report format {fmt!r}: html or md")
    data = gather(
        engine,
        since=since,
        now=now,
        title=title,
        unused_after=unused_after,
        expiring_within=expiring_within,
        undeclared=undeclared,
    )
    return render_html(data) if fmt == "html" else render_markdown(data)


def gather(
    engine: Engine,
    *,
    since: float,
    now: float,
    title: str = "Bastion security report",
    unused_after: float = 30 * DAY,
    expiring_within: float = 14 * DAY,
    undeclared: Iterable[Mapping[str, Any]] | None = None,
) -> Report:
    """Everything the report shows, read from the store."""
    if not since < now:
        raise ValueError("the report period is empty: since must be before now")
    if unused_after <= 0 or expiring_within <= 0:
        raise ValueError("unused_after and expiring_within must be positive")
    t = events_table.c
    period = and_(t.time >= since, t.time < now)
    with engine.connect() as db:
        summaries = _rate_limit_summaries(db, period)
        counts = _count_types(db, period, summaries)
        distinct, sources = _top_sources(db, period)
        bucket_days, buckets = _buckets(db, since, now, summaries)
        consumers = _auth_failures(db, period)
        unused, expiring = _keys(db, now, unused_after, expiring_within)
        alerts = _alerts(db, period)
        endpoints, new_endpoints = _endpoints(db, period, since, undeclared)
    return Report(
        title=title,
        since=since,
        now=now,
        unused_after=unused_after,
        expiring_within=expiring_within,
        counts=counts,
        distinct_sources=distinct,
        sources=sources,
        bucket_days=bucket_days,
        buckets=buckets,
        consumers=consumers,
        unused_keys=unused,
        expiring_keys=expiring,
        alerts=alerts,
        endpoints=endpoints,
        new_endpoints=new_endpoints,
    )


def _data(text: str | None) -> dict[str, Any]:
    """An event's ``data``: a JSON object, or ``{}`` for anything else."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _rate_limit_summaries(db: Any, period: Any) -> list[tuple[float, int]]:
    """``(time, refusals)`` of the ``rate_limit.exceeded`` summaries: the refusals that follow a sampled
    first one are not events of their own, only a count in a summary (which has no request fields)."""
    t = events_table.c
    rows = db.execute(
        select(t.time, t.data).where(period, t.type == "rate_limit.exceeded", t.source_ip.is_(None))
    )
    out = []
    for time_, text in rows:
        data = _data(text)
        if data.get("summary") is True:
            out.append((float(time_), _int(data.get("count"))))
    return out


def _count_types(db: Any, period: Any, summaries: list[tuple[float, int]]) -> dict[str, int]:
    """Events in the period by type; ``rate_limit.exceeded`` counts refusals (a summary is its count,
    not one), ``denied`` is every refused request, and ``inventory.undeclared_endpoint`` is filled in
    by :func:`_endpoints`."""
    t = events_table.c
    wanted = (*DENY_TYPES, "alert.fired")
    counts: dict[str, int] = dict.fromkeys(wanted, 0)
    for type_, n in db.execute(
        select(t.type, func.count()).where(period, t.type.in_(wanted)).group_by(t.type)
    ):
        counts[type_] = int(n)
    counts["rate_limit.exceeded"] += sum(n - 1 for _, n in summaries)
    counts["denied"] = sum(counts[k] for k in DENY_TYPES)
    return counts


def _top_sources(db: Any, period: Any) -> tuple[int, list[Source]]:
    t = events_table.c
    where = and_(period, t.type.in_(DENY_TYPES), t.source_ip.is_not(None))
    distinct = db.execute(select(func.count(func.distinct(t.source_ip))).where(where)).scalar_one()
    n = func.count().label("n")
    top = db.execute(
        select(t.source_ip, n, func.max(t.time))
        .where(where)
        .group_by(t.source_ip)
        .order_by(n.desc(), t.source_ip)
        .limit(TOP_SOURCES)
    ).all()
    reasons: dict[str, Counter[str]] = {ip: Counter() for ip, _, _ in top}
    if top:
        rows = db.execute(
            select(t.source_ip, t.reason, t.type, func.count())
            .where(where, t.source_ip.in_(list(reasons)))
            .group_by(t.source_ip, t.reason, t.type)
        )
        for ip, reason, type_, count in rows:
            reasons[ip][reason or type_] += int(count)
    sources = [Source(ip, int(count), tuple(_top(reasons[ip], 3)), float(last)) for ip, count, last in top]
    return int(distinct), sources


def _top(counter: Counter[str], k: int) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def _buckets(
    db: Any, since: float, now: float, summaries: list[tuple[float, int]]
) -> tuple[int, list[Bucket]]:
    """Denials and auth failures per UTC day (or per several days, for a long period). One small
    indexed query per bucket: portable, where bucketing in SQL needs ``floor`` (not in every SQLite)."""
    t = events_table.c
    first_day = since - since % DAY
    days = int((now - first_day + DAY - 1) // DAY)
    width = max(1, -(-days // MAX_CHART_COLUMNS))
    out = []
    start = first_day
    while start < now:
        lo, hi = max(start, since), min(start + width * DAY, now)
        counts = dict(
            db.execute(
                select(t.type, func.count())
                .where(t.time >= lo, t.time < hi, t.type.in_(DENY_TYPES))
                .group_by(t.type)
            ).all()
        )
        denied = sum(int(counts.get(k, 0)) for k in DENY_TYPES)
        denied += sum(n - 1 for when, n in summaries if lo <= when < hi)
        out.append(Bucket(start, denied, int(counts.get("auth.failed", 0))))
        start += width * DAY
    return width, out


def _auth_failures(db: Any, period: Any) -> list[ConsumerFailures]:
    """``auth.failed`` by consumer: named by the actor (``consumer:<name>/…``) or ``data.consumer``, or
    found from the key (``data.key_id``) or PKCV credential (``data.credential_id``) the failure named."""
    t = events_table.c
    grouped = db.execute(
        select(t.actor, t.data, t.reason, func.count(), func.max(t.time))
        .where(period, t.type == "auth.failed")
        .group_by(t.actor, t.data, t.reason)
    ).all()
    parsed = [(actor, _data(text), reason, int(n), float(last)) for actor, text, reason, n, last in grouped]
    key_ids = {d["key_id"] for _, d, _, _, _ in parsed if isinstance(d.get("key_id"), str)}
    cred_ids = {d["credential_id"] for _, d, _, _, _ in parsed if isinstance(d.get("credential_id"), str)}
    key_owner = _owners(db, api_keys_table, key_ids)
    cred_owner = _owners(db, public_keys_table, cred_ids)
    failures: Counter[str] = Counter()
    causes: dict[str, Counter[str]] = {}
    keys: dict[str, set[str]] = {}
    last: dict[str, float] = {}
    for actor, data, reason, n, when in parsed:
        key_id = data.get("key_id") if isinstance(data.get("key_id"), str) else None
        consumer = _consumer_of(actor, data, key_id, key_owner, cred_owner)
        failures[consumer] += n
        cause = data.get("cause")
        causes.setdefault(consumer, Counter())[cause if isinstance(cause, str) else reason or "—"] += n
        if key_id is not None:
            keys.setdefault(consumer, set()).add(key_id)
        last[consumer] = max(last.get(consumer, when), when)
    return [
        ConsumerFailures(name, n, tuple(_top(causes[name], 3)), len(keys.get(name, ())), last[name])
        for name, n in _top(failures, len(failures))
    ]


def _consumer_of(
    actor: str | None,
    data: Mapping[str, Any],
    key_id: str | None,
    key_owner: Mapping[str, str],
    cred_owner: Mapping[str, str],
) -> str:
    if actor and (m := _ACTOR_CONSUMER.match(actor)):
        return m.group(1)
    named = data.get("consumer")
    if isinstance(named, str) and named:
        return named
    if key_id is not None:
        return key_owner.get(key_id, UNKNOWN_KEY)
    credential = data.get("credential_id")
    if isinstance(credential, str):
        return cred_owner.get(credential, UNKNOWN_CREDENTIAL)
    return UNIDENTIFIED


def _owners(db: Any, table: Any, ids: set[str]) -> dict[str, str]:
    """Credential id → its consumer's name, for the ids that exist."""
    c = consumers_table.c
    found: dict[str, str] = {}
    pending = sorted(ids)
    for start in range(0, len(pending), 500):
        chunk = pending[start : start + 500]
        rows = db.execute(
            select(table.c.id, c.name)
            .select_from(table.join(consumers_table, table.c.consumer_id == c.id))
            .where(table.c.id.in_(chunk))
        )
        found.update({str(i): str(name) for i, name in rows})
    return found


def _keys(db: Any, now: float, unused_after: float, expiring_within: float) -> tuple[list[Key], list[Key]]:
    """Keys that work — not revoked, not expired, not replaced by a rotation (the old key of a rotation
    expires by design), of an active consumer — and have not been used for ``unused_after``, or expire
    within ``expiring_within``."""
    k, c = api_keys_table.c, consumers_table.c
    cutoff = now - unused_after
    base = (
        select(k.id, c.name, k.name, k.created_at, k.last_used_at, k.expires_at)
        .select_from(api_keys_table.join(consumers_table, k.consumer_id == c.id))
        .where(
            k.revoked_at.is_(None),
            k.rotated_to.is_(None),
            c.status == "active",
            or_(k.expires_at.is_(None), k.expires_at > now),
        )
    )
    unused_q = base.where(
        or_(k.last_used_at < cutoff, and_(k.last_used_at.is_(None), k.created_at < cutoff))
    ).order_by(k.last_used_at.is_not(None), k.last_used_at, k.created_at, k.id)
    expiring_q = base.where(k.expires_at.is_not(None), k.expires_at <= now + expiring_within).order_by(
        k.expires_at, k.id
    )
    return [Key(*row) for row in db.execute(unused_q)], [Key(*row) for row in db.execute(expiring_q)]


def _alerts(db: Any, period: Any) -> list[Alert]:
    t = events_table.c
    columns = [t.time, t.severity, t.reason, t.data]
    if "resource" in t:  # a newer schema: what the event is about, ``alert:<rule>``
        columns.append(t.resource)
    rows = db.execute(
        select(*columns).where(period, t.type == "alert.fired").order_by(t.time.desc()).limit(MAX_ROWS)
    )
    out = []
    for row in rows:
        data = _data(row.data)
        resource = getattr(row, "resource", None) or ""
        rule = data.get("rule") or data.get("name")
        if not rule and resource.startswith("alert:"):
            rule = resource.removeprefix("alert:")
        evidence = data.get("evidence") if isinstance(data.get("evidence"), dict) else {}
        count = next(
            (
                v
                for v in (
                    data.get("count"),
                    evidence.get("count"),
                    evidence.get("distinct_identities"),
                    evidence.get("distinct_ips"),
                )
                if isinstance(v, int | float) and not isinstance(v, bool)
            ),
            None,
        )
        out.append(
            Alert(
                time=float(row.time),
                rule=str(rule or row.reason or "—"),
                group=_group(data.get("group")),
                count="—" if count is None else str(count),
                severity=str(row.severity),
            )
        )
    return out


def _group(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _endpoints(
    db: Any, period: Any, since: float, undeclared: Iterable[Mapping[str, Any]] | None
) -> tuple[list[Endpoint], int]:
    """Undeclared endpoints called in the period (from ``inventory_observed``), and how many were first
    seen in it (``inventory.undeclared_endpoint`` events, whose summaries count the ones not listed)."""
    t, o = events_table.c, inventory_observed_table.c
    announced: dict[tuple[str, str], tuple[int, float]] = {}
    new_total = 0
    rows = db.execute(
        select(t.time, t.method, t.path, t.data)
        .where(period, t.type == "inventory.undeclared_endpoint")
        .order_by(t.time)
        .limit(10_000)
    )
    for when, method, path, text in rows:
        data = _data(text)
        if "more" in data or "not_recorded" in data:
            new_total += _int(data.get("more"))
            continue
        method = data.get("method") if isinstance(data.get("method"), str) else method
        template = data.get("template") if isinstance(data.get("template"), str) else path
        if method and template:
            announced.setdefault((method, template), (_int(data.get("count")), float(when)))
            new_total += 1
    if undeclared is None:
        observed: Iterable[Mapping[str, Any]] = [
            {"method": m, "path": p, "count": n, "first_seen": f, "last_seen": last}
            for m, p, n, f, last in db.execute(
                select(o.method, o.template, o.count, o.first_seen, o.last_seen)
                .where(o.last_seen >= since)
                .order_by(o.count.desc(), o.method, o.template)
                .limit(10_000)
            )
        ]
    else:
        observed = undeclared
    found: dict[tuple[str, str], Endpoint] = {}
    for entry in observed:
        if float(entry["last_seen"]) < since:
            continue
        key = (str(entry["method"]), str(entry["path"]))
        first = float(entry["first_seen"])
        found[key] = Endpoint(
            key[0],
            key[1],
            int(entry["count"]),
            first,
            float(entry["last_seen"]),
            key in announced or first >= since,
        )
    if undeclared is None:  # an announced endpoint the table does not hold (yet): the event is the record
        for (method, template), (count, when) in announced.items():
            found.setdefault((method, template), Endpoint(method, template, count, when, when, True))
    ordered = sorted(found.values(), key=lambda e: (not e.new, -e.requests, e.method, e.path))
    return ordered, max(new_total, sum(e.new for e in ordered))


# -- the sections -------------------------------------------------------------------------------------


def _iso(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(seconds: float) -> str:
    for unit, size in (("day", DAY), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            n = seconds / size
            text = f"{n:g}" if n.is_integer() else f"{n:.1f}"
            return f"{text} {unit}{'' if text == '1' else 's'}"
    return f"{seconds:g} seconds"


def _ranked(items: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in items)


def _cut(rows: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], int]:
    return rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS)


def sections(r: Report) -> list[Section]:
    """The report as titled tables, in order; ids and headings are stable (links and tests use them)."""
    c = r.counts
    unused_days = f"{r.unused_after / DAY:g}"
    out = [
        Section(
            "summary",
            "Summary",
            f"From {_iso(r.since)} to {_iso(r.now)} (UTC, {_span(r.now - r.since)}).",
            ("Measure", "Count"),
            [
                ("Requests denied (all causes)", str(c["denied"])),
                ("Denied by a check (request.denied)", str(c["request.denied"])),
                ("Authentication failures (auth.failed)", str(c["auth.failed"])),
                ("Webhook signatures refused", str(c["webhook.signature_invalid"])),
                ("Rate-limit refusals", str(c["rate_limit.exceeded"])),
                ("Distinct denied sources", str(r.distinct_sources)),
                ("Alerts fired", str(c["alert.fired"])),
                ("Undeclared endpoints first seen", str(r.new_endpoints)),
                (f"Keys unused for {unused_days}+ days", str(len(r.unused_keys))),
                (f"Keys expiring within {_span(r.expiring_within)}", str(len(r.expiring_keys))),
            ],
            numeric=frozenset({1}),
        )
    ]
    per = "day" if r.bucket_days == 1 else f"{r.bucket_days} days"
    day_rows = [(_iso(b.start)[:10], str(b.denied), str(b.auth_failed)) for b in r.buckets]
    busy = any(b.denied or b.auth_failed for b in r.buckets)
    chart = ""
    if busy:
        chart = svg.column_chart(
            [row[0][5:] for row in day_rows],
            [
                ("Requests denied", [b.denied for b in r.buckets]),
                ("Auth failures", [b.auth_failed for b in r.buckets]),
            ],
            title=f"Requests denied and authentication failures per {per} (UTC)",
        )
    out.append(
        Section(
            "denials-per-day",
            "Denials per day",
            f"Refused requests (all causes) and authentication failures per {per}, UTC days.",
            ("Day (UTC)", "Requests denied", "Auth failures"),
            day_rows if busy else [],
            numeric=frozenset({1, 2}),
            chart=chart,
        )
    )
    source_rows = [(s.ip, str(s.denials), _ranked(s.reasons), _iso(s.last_seen)) for s in r.sources]
    out.append(
        Section(
            "top-denied-sources",
            "Top denied sources",
            f"Client addresses of {', '.join(DENY_TYPES)} events, most denied first (top {TOP_SOURCES} of "
            f"{r.distinct_sources}). Rate-limit refusals are sampled: one event per minute, route and limit.",
            ("Source", "Denials", "Top reasons", "Last denied"),
            source_rows,
            numeric=frozenset({1}),
            chart=svg.bar_chart([(s.ip, s.denials) for s in r.sources], title="Denials by source")
            if r.sources
            else "",
        )
    )
    rows, more = _cut(
        [
            (f.consumer, str(f.failures), _ranked(f.causes), str(f.keys), _iso(f.last_seen))
            for f in r.consumers
        ]
    )
    out.append(
        Section(
            "auth-failures-by-consumer",
            "Auth failures by consumer",
            "auth.failed events by the consumer they name: the actor, or the consumer owning the key or "
            f"credential the request presented. {UNKNOWN_KEY}: a key id no key has; {UNIDENTIFIED}: a "
            "credential that named nothing (a malformed key or token).",
            ("Consumer", "Failures", "Top causes", "Key ids named", "Last failure"),
            rows,
            more,
            numeric=frozenset({1, 3}),
        )
    )
    rows, more = _cut(
        [
            (k.id, k.consumer, k.name, _iso(k.created_at), _iso(k.last_used_at), _iso(k.expires_at))
            for k in r.unused_keys
        ]
    )
    out.append(
        Section(
            "unused-keys",
            f"Keys unused for {unused_days}+ days",
            f"API keys that still work (not revoked, expired or rotated away; consumer active) and were not "
            f"used since {_iso(r.now - r.unused_after)}: revoke what nobody needs.",
            ("Key", "Consumer", "Name", "Created", "Last used", "Expires"),
            rows,
            more,
        )
    )
    rows, more = _cut(
        [
            (
                k.id,
                k.consumer,
                k.name,
                _iso(k.expires_at),
                _span(max((k.expires_at or r.now) - r.now, 0)),
                _iso(k.last_used_at),
            )
            for k in r.expiring_keys
        ]
    )
    out.append(
        Section(
            "expiring-keys",
            "Keys near expiry",
            f"API keys that still work and expire before {_iso(r.now + r.expiring_within)}: rotate them.",
            ("Key", "Consumer", "Name", "Expires", "Expires in", "Last used"),
            rows,
            more,
        )
    )
    rows = [(_iso(a.time), a.rule, a.group, a.count, a.severity) for a in r.alerts]
    out.append(
        Section(
            "alerts-fired",
            "Alerts fired",
            "alert.fired events, newest first.",
            ("Time", "Rule", "Group", "Count", "Severity"),
            rows,
            max(0, c["alert.fired"] - len(rows)),
            numeric=frozenset({3}),
        )
    )
    rows, more = _cut(
        [
            (e.method, e.path, str(e.requests), _iso(e.first_seen), _iso(e.last_seen), "yes" if e.new else "")
            for e in r.endpoints
        ]
    )
    out.append(
        Section(
            "undeclared-endpoints",
            "Undeclared endpoints",
            "Endpoints no route declares (by templated path) called in the period; requests are counted "
            "since the endpoint was first seen. New: first seen in the period.",
            ("Method", "Path", "Requests", "First seen", "Last seen", "New"),
            rows,
            more,
            numeric=frozenset({2}),
            extra=[f"{r.new_endpoints} first seen in the period (inventory.undeclared_endpoint events)."]
            if r.new_endpoints > len([e for e in r.endpoints if e.new])
            else [],
        )
    )
    return out


# -- Markdown -----------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#!])")


def _clean(value: object, limit: int = MAX_CELL) -> str:
    """One line of printable text, at most ``limit`` characters."""
    s = "".join(ch if ch.isprintable() else ("\ufffd" if ch not in "\r\n\t" else " ") for ch in str(value))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _md(value: object, limit: int = MAX_CELL) -> str:
    """A Markdown table cell: nothing in it can end the cell, open a code span, a link or raw HTML."""
    return _MD_SPECIAL.sub(r"\\\1", _clean(value, limit).replace("&", "&amp;"))


def render_markdown(r: Report) -> str:
    lines = [f"# {_md(r.title)}", "", f"Generated {_iso(r.now)} (UTC) by Bastion.", ""]
    for s in sections(r):
        lines += [f"## {_md(s.heading)}", "", _md(s.note, 2000), ""]
        if s.chart:
            lines += ["(The HTML report shows this as a chart.)", ""]
        if not s.rows:
            lines += ["none", ""]
        else:
            lines.append("| " + " | ".join(_md(h) for h in s.headers) + " |")
            lines.append(
                "|" + "|".join("---:" if i in s.numeric else "---" for i in range(len(s.headers))) + "|"
            )
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in s.rows]
            lines.append("")
            if s.more:
                lines += [f"… and {s.more} more not shown.", ""]
        lines += [*(_md(x) for x in s.extra), *([""] if s.extra else [])]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- HTML ---------------------------------------------------------------------------------------------

_STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0;
       background: #f6f7f9; }
header { background: #1f2a38; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d3df; }
nav { padding: 10px 32px; background: #e9edf2; font-size: 13px; }
nav a { color: #1f4f8a; margin-right: 14px; text-decoration: none; }
main { padding: 8px 32px 32px; max-width: 1100px; }
section { background: #fff; border: 1px solid #dde2e8; border-radius: 6px; margin: 16px 0;
          padding: 4px 20px 16px; }
h2 { font-size: 17px; margin: 14px 0 4px; }
p.note { color: #555; margin: 0 0 10px; }
p.none { color: #777; font-style: italic; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eceff3; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f3f5f8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
svg.chart { display: block; max-width: 100%; height: auto; margin: 6px 0 12px; }
details { margin-top: 8px; }
@media print { body { background: #fff; } nav { display: none; } section { break-inside: avoid; } }
"""


def _h(value: object, limit: int = MAX_CELL) -> str:
    return escape(_clean(value, limit), quote=True)


def _html_section(s: Section) -> str:
    out = [
        f'<section id="{escape(s.id, quote=True)}">',
        f"<h2>{_h(s.heading)}</h2>",
        f'<p class="note">{_h(s.note, 2000)}</p>',
    ]
    if not s.rows:
        out.append('<p class="none">none</p>')
    else:
        out.append(s.chart)
        head = "".join(
            f"<th{' class=num' if i in s.numeric else ''}>{_h(h)}</th>" for i, h in enumerate(s.headers)
        )
        body = "".join(
            "<tr>"
            + "".join(f"<td{' class=num' if i in s.numeric else ''}>{_h(v)}</td>" for i, v in enumerate(row))
            + "</tr>"
            for row in s.rows
        )
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        out.append(
            f"<details><summary>Table</summary>{table}</details>" if s.id == "denials-per-day" else table
        )
        if s.more:
            out.append(f'<p class="more">… and {s.more} more not shown.</p>')
    out += [f'<p class="extra">{_h(x)}</p>' for x in s.extra]
    out.append("</section>")
    return "\n".join(out)


def render_html(r: Report) -> str:
    """A self-contained page: inline CSS and SVG, no script, no external resource, and a CSP that says so."""
    parts = sections(r)
    nav = "".join(f'<a href="#{escape(s.id, quote=True)}">{_h(s.heading)}</a>' for s in parts)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',  # constant: no quotes to escape
            '<meta name="referrer" content="no-referrer">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_h(r.title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            f"<header><h1>{_h(r.title)}</h1>",
            f"<p>{_iso(r.since)} to {_iso(r.now)} (UTC) · generated by Bastion</p></header>",
            f"<nav>{nav}</nav>",
            "<main>",
            *(_html_section(s) for s in parts),
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )
