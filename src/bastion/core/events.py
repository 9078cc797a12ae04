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

__all__ = ["SEVERITIES", "Event", "make_event_id"]

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
    reason: str | None = None  # the stable deny code, when there is one
    data: Mapping[str, Any] = field(default_factory=dict)
