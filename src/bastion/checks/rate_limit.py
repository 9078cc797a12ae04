"""Rate limits and quotas (P10): ``rate_limit: [10/second, 1000/hour]`` per route, counted per consumer,
key, client address, route or header value (``rate_limit_by``), plus each consumer's quota.

One call to the :class:`Counters` port per request decides every limit at once; a refused request consumes
nothing. Allowed responses carry ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (IETF
httpapi draft) for the limit closest to refusing; a refusal is 429 with ``Retry-After``.

When the state backend cannot answer, ``on_state_failure`` decides: ``local`` (default) counts in this
process instead (the same limits, per process), ``closed`` refuses with 503, ``open`` lets the request
through. The decision is an event (at most one a minute per route and mode).

Refusals are events, but an attack must not flood the event log: the first refusal of a subject on a route
is recorded at once, the following ones within the minute are counted and recorded as one summary event
(``data.summary``, ``data.count``) when the minute ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from ipaddress import IPv6Address
from typing import Any

from ..core.decision import Context, Deny, Verdict
from ..core.forwarding import ip_text
from ..core.identity import Principal
from ..core.ports import Counters, StateUnavailable
from ..core.ratelimit import Decision, Limit
from ..core.request import RequestView
from .refusals import state_unavailable

__all__ = ["RateLimitCheck", "RefusalLog"]

SUMMARY_WINDOW = 60.0


class RefusalLog:
    """Counts refusals per (route, subject, limit) and says which to record: the first of each minute at
    once, the rest as one summary when the minute ends (``emit`` is called with the summary).

    Bounded: at most ``max_keys`` groups are open. Past that, refusals of new groups are counted into one
    overflow summary per route (``data.overflow``) instead of being recorded one by one, so an attacker
    cycling through more subjects than the log holds still cannot flood the event log. One timer sweeps
    the log once per window, however many groups are open."""

    def __init__(
        self, emit: Callable[..., None], window: float = SUMMARY_WINDOW, max_keys: int = 10_000
    ) -> None:
        self.emit = emit
        self.window = window
        self.max_keys = max_keys
        self._open: OrderedDict[tuple[str, str, str], list[Any]] = OrderedDict()
        self._overflow: dict[str, list[Any]] = {}  # route -> [since, count]
        self._sweeping = False

    def refused(self, key: tuple[str, str, str], now: float, data: dict[str, Any]) -> bool:
        """True: record this refusal now. False: it was counted into a summary."""
        entry = self._open.get(key)
        if entry is not None and now < entry[0] + self.window:
            entry[1] += 1
            return False
        if entry is not None:
            self._close(key)
        if len(self._open) >= self.max_keys:
            self._sweep(now)
        if len(self._open) >= self.max_keys:
            over = self._overflow.get(key[0])
            if over is None:
                self._overflow[key[0]] = [now, 1, data.get("limit")]
            else:
                over[1] += 1
            self._schedule()
            return False
        self._open[key] = [now, 0, data]
        self._schedule()
        return True

    def _schedule(self) -> None:
        if self._sweeping:
            return
        # No running loop (direct calls in tests): summaries come with later refusals or flush().
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(self.window, self._timer)
            self._sweeping = True

    def _timer(self) -> None:
        self._sweeping = False
        import time as _time

        self._sweep(_time.time())
        if self._open or self._overflow:
            self._schedule()

    def _sweep(self, now: float) -> None:
        for key in [k for k, e in self._open.items() if now >= e[0] + self.window]:
            self._close(key)
        for route in [r for r, o in self._overflow.items() if now >= o[0] + self.window]:
            self._close_overflow(route)

    def _close(self, key: tuple[str, str, str]) -> None:
        started, count, data = self._open.pop(key)
        if count:
            self.emit(
                "rate_limit.exceeded",
                severity="warning",
                route=key[0],
                data={**data, "summary": True, "count": count, "since": started, "window": self.window},
            )

    def _close_overflow(self, route: str) -> None:
        started, count, limit = self._overflow.pop(route)
        self.emit(
            "rate_limit.exceeded",
            severity="warning",
            route=route,
            data={
                "summary": True,
                "overflow": True,  # refusals of more subjects than the log holds, counted together
                "count": count,
                "limit": limit,
                "since": started,
                "window": self.window,
            },
        )

    def flush(self) -> None:
        for key in list(self._open):
            self._close(key)
        for route in list(self._overflow):
            self._close_overflow(route)


class RateLimitCheck:
    name = "rate_limit"

    def __init__(
        self,
        *,
        route_id: str,
        limits: Sequence[Limit],
        by: str,
        on_failure: str,
        counters: Counters,
        fallback: Counters,
        clock: Callable[[], float],
        refusals: RefusalLog,
        quota: Limit | None = None,
        quotas: Callable[[str], Limit | None] | None = None,
    ) -> None:
        self.route_id = route_id
        self.route_tag = hashlib.sha256(route_id.encode()).hexdigest()[:12]
        self.limits = tuple(limits)
        self.by = by
        self.header = by[7:].lower() if by.startswith("header:") else None
        self.on_failure = on_failure
        self.counters = counters
        self.fallback = fallback
        self.clock = clock
        self.refusals = refusals
        self.quota = quota  # the consumers' default quota
        self.quotas = quotas  # a consumer's own quota, when it has one (by consumer id)
        self._failure_noted: dict[str, float] = {}
        self._refused_until: OrderedDict[str, tuple[float, Decision]] = OrderedDict()
        self._member_prefix = os.urandom(6).hex() + ":"
        self._members = itertools.count()

    def _subject(self, req: RequestView, principal: Principal | None) -> str:
        by = self.by
        if by == "consumer" and principal is not None:
            return "c:" + (principal.consumer_id or "sub:" + principal.consumer)
        if by == "key" and principal is not None:
            ident = principal.key_id or principal.client_id or principal.credential_id
            return ("k:" + ident) if ident else "c:" + (principal.consumer_id or "sub:" + principal.consumer)
        if by == "route":
            return "route"
        if self.header is not None:
            value = req.headers.get(self.header)
            # Hashed: a header value can be anything (long, or a credential); never a key or an event field.
            return "h:" + (
                hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32] if value else "-"
            )
        ip = req.client_ip
        if ip.version == 6:
            # One IPv6 client usually holds a whole /64: counted per /64, or it gets a budget per address.
            return f"ip6:{ip_text(IPv6Address(int(ip) >> 64 << 64))}/64"
        return "ip:" + ip_text(ip)

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        principal = ctx.principal
        subject = self._subject(req, principal)
        consumer_id = principal.consumer_id if principal is not None else None
        # Keys are hash-tagged by the subject a limit counts (one Redis Cluster slot per subject); a route
        # limit counted by address, route or header is shared by every consumer, so never by the consumer.
        # A key's limit is its consumer's business: tagged by the consumer, in the quota's slot.
        tag = "{" + (f"c:{consumer_id}" if self.by == "key" and consumer_id else subject) + "}"
        keys = [f"{tag}:{self.route_tag}:{subject}:{limit.text}" for limit in self.limits]
        limits = list(self.limits)
        if consumer_id is not None:
            quota = (self.quotas(consumer_id) if self.quotas is not None else None) or self.quota
            if quota is not None:
                # Per consumer and calendar period, whatever N is: raising a quota keeps today's count.
                keys.append("{c:" + consumer_id + "}:quota:" + str(quota.calendar))
                limits.append(quota)
        if not limits:
            return None
        now = self.clock()
        # Unique per hit, whatever the request id (a trusted proxy may pass the client's X-Request-Id on).
        member = f"{self._member_prefix}{next(self._members):x}"
        try:
            decision = await self.counters.hit(keys, limits, now, member)
        except StateUnavailable:
            outcome = self._state_failed(ctx, now)
            if outcome is not None:
                return outcome
            if self.on_failure == "open":
                return None
            # Local counting starts where this process left off: what the shared state refused stays
            # refused until its reset, and what it admitted here is already in the local count.
            refused = self._refused_until.get(keys[0])
            if refused is not None and refused[0] > now:
                decision = refused[1]._replace(reset=refused[0] - now)
            else:
                decision = await self.fallback.hit(keys, limits, now, member)
        else:
            if self.fallback is not self.counters and self.on_failure == "local":
                if decision.allowed:
                    await self.fallback.hit(keys, limits, now, member)  # the shadow count for a failure
                else:
                    self._remember_refusal(keys[0], now + decision.reset, decision)
        if decision.allowed:
            ctx.response_headers.extend(_headers(decision))
            return None
        wait = max(1, math.ceil(decision.reset))
        data = {
            "limit": decision.exceeded,
            "by": self.by if not self.header else "header",
            "retry_after": wait,
        }
        if principal is not None:
            data["consumer"] = principal.consumer
        first = self.refusals.refused((self.route_id, subject, decision.exceeded or ""), now, data)
        return Deny(
            429,
            "rate_limited",
            "Too many requests; retry later.",
            headers=(("retry-after", str(wait)), *_headers(decision)),
            evidence=data,
            severity="notice",
            event="rate_limit.exceeded" if first else "",
        )

    def _remember_refusal(self, key: str, until: float, decision: Decision) -> None:
        table = self._refused_until
        table[key] = (until, decision)
        table.move_to_end(key)
        while len(table) > 10_000:
            table.popitem(last=False)

    def _state_failed(self, ctx: Context, now: float) -> Deny | None:
        mode = self.on_failure
        last = self._failure_noted.get(mode, 0.0)
        if now - last >= SUMMARY_WINDOW:  # the decision is an event, at most one a minute per route
            self._failure_noted[mode] = now
            ctx.notices.append(("rate_limit.state_unavailable", {"on_state_failure": mode}))
        if mode == "closed":
            # Recorded once a minute as rate_limit.state_unavailable (above), not per request.
            return state_unavailable("counters", event="", on_state_failure=mode)
        return None


def _headers(decision: Decision) -> tuple[tuple[str, str], ...]:
    return (
        ("ratelimit-limit", str(decision.limit)),
        ("ratelimit-remaining", str(decision.remaining)),
        ("ratelimit-reset", str(math.ceil(decision.reset))),
    )
