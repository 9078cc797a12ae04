"""Reading events back: filters and cursor pagination for the admin API and ``bastion events``.

Pages are newest first. The cursor (``page_token``) is the id of the last event of the previous page,
made opaque; ids are ULIDs, so "older than the cursor" is stable while new events are written.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, or_, select

from ..config.units import parse_duration
from ..core.events import SEVERITIES
from ..store.schema import events_table

__all__ = ["EventFilter", "QueryError", "event_filter", "parse_time", "query_events"]

MAX_PAGE_SIZE = 1000
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


class QueryError(ValueError):
    """A filter or page token the caller got wrong (400 in the admin API)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    type: str | None = None  # prefix match: "request." matches request.denied
    actor: str | None = None  # exact, or a prefix up to a "/": consumer:shop matches consumer:shop/key:…
    resource: str | None = None
    source_ip: str | None = None
    since: float | None = None
    until: float | None = None
    severity: str | None = None
    min_severity: str | None = None  # this severity or worse

    def __post_init__(self) -> None:
        for name in ("severity", "min_severity"):
            value = getattr(self, name)
            if value is not None and value not in SEVERITIES:
                raise QueryError(f"{name} must be one of {', '.join(SEVERITIES)}")


def event_filter(
    now: float, *, since: str | None = None, until: str | None = None, **fields: str | None
) -> EventFilter:
    """An :class:`EventFilter` from text as a user writes it (``since``/``until``: ``1h`` or ISO 8601);
    :class:`QueryError` says what is wrong. The admin API and ``bastion events`` build theirs here."""
    return EventFilter(
        since=parse_time(since, now) if since else None,
        until=parse_time(until, now) if until else None,
        **fields,  # type: ignore[arg-type]
    )


def parse_time(value: str, now: float) -> float:
    """``1h``/``30m``/``7d`` mean that long before ``now``; otherwise an ISO 8601 timestamp."""
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h|d)", value):
        return now - parse_duration(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"expected a duration like 1h or an ISO 8601 time, not {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def encode_token(event_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": event_id}).encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        doc = json.loads(base64.urlsafe_b64decode(padded.encode()))
        before = doc["before"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise QueryError("invalid page_token") from None
    if not isinstance(before, str) or not _ULID.fullmatch(before):
        raise QueryError("invalid page_token")
    return before


_INTERNAL = (
    "chain",
    "seq",
    "prev_hash",
    "hash",
)  # the hash chain's columns: `bastion events verify` reads them


def row_to_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as the event document (the shape of ``core.events.event_document``)."""
    out = {k: v for k, v in row.items() if k not in _INTERNAL}
    out["data"] = json.loads(out["data"]) if out.get("data") else {}
    out["time"] = datetime.fromtimestamp(out["time"], UTC).isoformat().replace("+00:00", "Z")
    return out


def query_events(
    engine: Engine, flt: EventFilter, *, page_size: int = 50, page_token: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise QueryError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    t = events_table.c
    conds = _conditions(flt)
    if page_token:
        conds.append(t.id < decode_token(page_token))
    stmt = select(events_table).order_by(t.id.desc()).limit(page_size + 1)
    if conds:
        stmt = stmt.where(and_(*conds))
    with engine.connect() as conn:
        rows = [row_to_dict(r._mapping) for r in conn.execute(stmt)]
    next_token = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_token = encode_token(rows[-1]["id"])
    return rows, next_token


def get_event(engine: Engine, event_id: str) -> dict[str, Any] | None:
    if not _ULID.fullmatch(event_id):
        return None
    with engine.connect() as conn:
        row = conn.execute(select(events_table).where(events_table.c.id == event_id)).first()
    return row_to_dict(row._mapping) if row else None


def _conditions(flt: EventFilter) -> list[Any]:
    t = events_table.c
    conds: list[Any] = []
    if flt.type:
        conds.append(t.type.startswith(flt.type, autoescape=True))
    if flt.actor:
        conds.append(or_(t.actor == flt.actor, t.actor.startswith(flt.actor + "/", autoescape=True)))
    if flt.resource:
        conds.append(t.resource == flt.resource)
    if flt.source_ip:
        conds.append(t.source_ip == flt.source_ip)
    if flt.severity:
        conds.append(t.severity == flt.severity)
    if flt.min_severity:
        conds.append(t.severity.in_(SEVERITIES[SEVERITIES.index(flt.min_severity) :]))
    if flt.since is not None:
        conds.append(t.time >= flt.since)
    if flt.until is not None:
        conds.append(t.time < flt.until)
    return conds


def events_after(
    engine: Engine, flt: EventFilter, after: str, *, up_to: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Events with an id above ``after`` (and at most ``up_to``), oldest first (``bastion events
    --follow``). An empty ``after`` means from the beginning."""
    t = events_table.c
    conds = [t.id > after, *_conditions(flt)]
    if up_to is not None:
        conds.append(t.id <= up_to)
    stmt = select(events_table).where(and_(*conds)).order_by(t.id).limit(limit)
    with engine.connect() as conn:
        return [row_to_dict(r._mapping) for r in conn.execute(stmt)]


def newest_id(engine: Engine) -> str:
    """The id of the newest event ('' when there is none)."""
    with engine.connect() as conn:
        return (
            conn.execute(select(events_table.c.id).order_by(events_table.c.id.desc()).limit(1)).scalar() or ""
        )
