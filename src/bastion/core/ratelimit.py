"""Rate limits and quotas as values (P10), and the exact algorithm both state backends implement.

A **rate limit** ``N/period`` is a *sliding log*: a request passes when fewer than N requests passed in
the last ``period`` seconds — over every window of that length, never more than N (no fixed-window double
burst at a boundary, no token-bucket burst on top of a steady rate). A **quota** ``N/day`` or
``N/month`` counts requests in calendar windows (UTC). A request passes only if *every* limit passes, and
a refused request consumes nothing. :func:`decide` is the reference: the in-memory backend runs it, the
Redis backend runs the same steps in one Lua script, and a contract test holds them to the same answers.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "MAX_SLIDING_COUNT",
    "Decision",
    "Limit",
    "LimitParseError",
    "decide",
    "parse_limit",
    "parse_quota",
    "retry_seconds",
    "window_of",
]

MAX_SLIDING_COUNT = 10_000  # a sliding log holds one entry per admitted request in the window
_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_LIMIT = re.compile(r"^\s*([0-9]{1,9})\s*/\s*([0-9]*)\s*(second|minute|hour|day|s|m|h|d)s?\s*$")
_SHORT = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


class LimitParseError(ValueError):
    pass


class Limit(NamedTuple):
    requests: int  # N
    period: float  # seconds (sliding); for calendar quotas, the nominal length
    text: str  # canonical, e.g. "10/second", "1000/hour", "100000/month"
    calendar: str | None = None  # "day" | "month" for quotas


class Decision(NamedTuple):
    allowed: bool
    limit: int  # the binding limit's N (the one closest to refusing, or the one that refused)
    remaining: int
    reset: float  # seconds until the binding limit has room for one more request
    exceeded: str | None = None  # the text of the limit that refused


def parse_limit(text: object) -> Limit:
    """``"10/second"``, ``"1000/hour"``, ``"5/10s"``, ``"100/15m"`` → a sliding limit."""
    if not isinstance(text, str):
        raise LimitParseError("expected a rate such as 10/second or 1000/hour")
    m = _LIMIT.match(text)
    if m is None:
        raise LimitParseError(f"{text[:40]!r} is not a rate; write N/second, N/minute, N/hour, N/day, N/10s")
    count = int(m.group(1))
    multiple = int(m.group(2)) if m.group(2) else 1
    unit = _SHORT.get(m.group(3), m.group(3))
    if count < 1 or multiple < 1:
        raise LimitParseError("a rate needs a count and a period of at least 1")
    if count > MAX_SLIDING_COUNT:
        raise LimitParseError(
            f"at most {MAX_SLIDING_COUNT} requests per window (exact sliding windows remember each request); "
            "use a quota (N/day, N/month) for larger counts"
        )
    period = _UNITS[unit] * multiple
    if period > 7 * 86400:
        raise LimitParseError("a rate's period is at most 7 days; use a quota (N/month) for longer ones")
    text_out = f"{count}/{unit}" if multiple == 1 else f"{count}/{multiple}{unit[0]}"
    return Limit(count, period, text_out)


def parse_quota(text: object) -> Limit:
    """``"100000/month"`` or ``"5000/day"`` → a calendar quota (UTC)."""
    if not isinstance(text, str):
        raise LimitParseError("expected a quota such as 100000/month")
    m = re.match(r"^\s*([0-9]{1,12})\s*/\s*(day|month)\s*$", text)
    if m is None:
        raise LimitParseError(f"{text[:40]!r} is not a quota; write N/day or N/month")
    count = int(m.group(1))
    if count < 1:
        raise LimitParseError("a quota needs a count of at least 1")
    unit = m.group(2)
    return Limit(count, 86400.0 if unit == "day" else 31 * 86400.0, f"{count}/{unit}", unit)


def window_of(limit: Limit, now: float) -> tuple[str, float]:
    """A calendar quota's current window: ``(id, end)`` with ``end`` in epoch seconds (UTC)."""
    t = time.gmtime(now)
    if limit.calendar == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", float(start + 86400)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return f"{t.tm_year:04d}{t.tm_mon:02d}", float(calendar.timegm((year, month, 1, 0, 0, 0)))


def decide(
    limits: Sequence[Limit], logs: Sequence[Sequence[float]], counts: Sequence[int], now: float
) -> tuple[Decision, bool]:
    """The reference decision. ``logs[i]``: the admitted times of sliding limit i, oldest first, already
    trimmed to ``(now - period, now]``; ``counts[i]``: calendar quota i's count in its current window
    (unused slots hold ``()`` / ``0``); only ``len(log)`` and ``log[0]`` are read, O(1) per limit.
    Returns the decision and whether to record the hit (all passed)."""
    refused: list[tuple[float, Limit]] = []
    closest: tuple[int, float, Limit] | None = None
    for limit, log, used in zip(limits, logs, counts, strict=True):
        if limit.calendar is None:
            used = len(log)
            frees_at = log[0] + limit.period - now if log else limit.period
        else:
            frees_at = window_of(limit, now)[1] - now
        if used >= limit.requests:
            # Room again when the oldest admitted request leaves the window (or the quota window ends).
            refused.append((frees_at, limit))
            continue
        left = limit.requests - used - 1
        # After this request is admitted: the binding limit is the one with the least room left.
        reset = frees_at if log or limit.calendar is not None else limit.period
        if closest is None or left < closest[0] or (left == closest[0] and reset > closest[1]):
            closest = (left, reset, limit)
    if refused:
        wait, limit = max(refused, key=lambda r: r[0])
        return Decision(False, limit.requests, 0, max(wait, 0.0), limit.text), False
    assert closest is not None, "decide() needs at least one limit"
    left, reset, limit = closest
    return Decision(True, limit.requests, left, max(reset, 0.0)), True


def retry_seconds(decision: Decision) -> int:
    """``Retry-After`` / ``RateLimit-Reset``: whole seconds, at least 1 when there is any wait."""
    return max(1, math.ceil(decision.reset)) if decision.reset > 0 else 0
