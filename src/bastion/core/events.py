"""Events as values: every deny and every security-relevant action becomes one :class:`Event`.

Types are ``resource.action`` (``request.denied``, ``admin.auth_failed``, ``events.dropped``); the
catalogue with each type's ``data`` fields is docs/events.md. ``data`` must already be redacted:
events never carry secrets or raw payloads.

Ids are ULIDs (RFC-less but well known): 48 bits of milliseconds then 80 random bits, Crockford
base32, so they sort by creation time and make stable pagination cursors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SEVERITIES", "Event", "event_document", "make_event_id", "severity_rank"]

SEVERITIES = ("debug", "info", "notice", "warning", "error", "critical")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def make_event_id(ms: int, random80: bytes) -> str:
    """A 26-character ULID from a millisecond timestamp and 10 random bytes (both injected)."""
    if len(random80) != 10:
        raise ValueError("ULIDs need exactly 10 random bytes")
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(random80, "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    time: float  # seconds since the epoch, UTC
    type: str
    severity: str = "info"
    request_id: str | None = None
    route: str | None = None
    method: str | None = None
    path: str | None = None
    source_ip: str | None = None
    actor: str | None = None
    resource: str | None = (
        None  # what the event is about: ``api_key:<id>``, ``consumer:<name>``, ``alert:<rule>``
    )
    reason: str | None = None  # the stable deny code, when there is one
    data: Mapping[str, Any] = field(default_factory=dict)


_RANK = {name: i for i, name in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """The order of a severity in :data:`SEVERITIES` (``debug`` 0 … ``critical`` 5); unknown ones rank 0."""
    return _RANK.get(severity, 0)


def event_document(event: Event) -> dict[str, Any]:
    """An event as the JSON document the admin API, the CLI and the export sinks show: ``time`` in
    ISO 8601 UTC (``Z``; a fraction only when there is one), every field present (``None`` when unset)."""
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(event.time, UTC).isoformat().replace("+00:00", "Z")
    return {
        "id": event.id,
        "time": stamp,
        "type": event.type,
        "severity": event.severity,
        "request_id": event.request_id,
        "route": event.route,
        "method": event.method,
        "path": event.path,
        "source_ip": event.source_ip,
        "actor": event.actor,
        "resource": event.resource,
        "reason": event.reason,
        "data": dict(event.data),
    }
