"""SMS pumping (P17): traffic that pays someone else's number ranges, spotted on the egress route and
cut off like Twilio's own protection (error 30450: a destination blocked for a cool-down).

Three patterns, each per egress route, on shared state (:class:`bastion.core.ports.Tallies`: per process
in memory, every instance on Redis):

* **sequential numbers** — ``sequential`` distinct numbers that differ only in their last
  ``range_digits`` digits within ``within`` (default 10 numbers in one 1000-number range in 10 minutes);
  the range is blocked;
* **sudden volume** to one country — this window's destinations against the day's average window,
  ``factor`` times more and at least ``min_count``; the country is blocked;
* **low completion** — delivery reports (Twilio status callbacks routed through Bastion, see
  :class:`DeliveryReports`) for one prefix: at least ``min_reports`` and fewer than ``min_rate``
  delivered; the prefix is blocked.

A pattern found is the event ``egress.pumping_detected`` (the ``sms_pumping`` alert sends it on); with
``auto_block`` the range is refused for ``block_for`` — 429 (or 403) and ``egress.pumping_blocked`` for
every request to it. Without ``auto_block`` only the event is recorded. The state fails closed (503).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.decision import Context, Deny, Verdict
from ..core.ports import StateUnavailable, Tallies
from ..core.request import RequestView
from .egress_payload import Destination, NumberRefused, parse_destination, payload
from .geo import DESTINATIONS
from .json_body import JsonLimits
from .refusals import state_unavailable

__all__ = ["DeliveryReports", "PumpingDetector", "PumpingPolicy"]

_DAY = 86400.0
DELIVERED = frozenset({"delivered", "read"})
FAILED = frozenset({"undelivered", "failed"})


@dataclass(frozen=True, slots=True)
class PumpingPolicy:
    auto_block: bool = True
    sequential: int = 10
    within: float = 600.0
    range_digits: int = 3
    block_for: float = 1800.0
    status: int = 429
    volume: bool = True
    volume_within: float = 600.0
    volume_factor: float = 10.0
    volume_min_count: int = 100
    completion: bool = True
    completion_within: float = 3600.0
    completion_min_reports: int = 20
    completion_min_rate: float = 0.3
    completion_prefix: int = 6


class PumpingDetector:
    name = "sms_pumping"

    def __init__(
        self, route: str, policy: PumpingPolicy, tallies: Tallies, clock: Callable[[], float]
    ) -> None:
        self.route = route
        self.policy = policy
        self.tallies = tallies
        self.clock = clock

    # -- the keys of one destination's blocks -------------------------------------------------------
    def range_of(self, dest: Destination) -> str:
        return dest.e164[: -self.policy.range_digits]

    def _blocks(self, dest: Destination) -> list[tuple[str, str]]:
        """(kind, block key) for everything that could block this destination."""
        country = dest.country or f"+{dest.calling_code}"
        return [
            ("range", f"pump|{self.route}|range|{self.range_of(dest)}"),
            ("country", f"pump|{self.route}|country|{country}"),
            ("prefix", f"pump|{self.route}|prefix|{dest.prefix(self.policy.completion_prefix)}"),
        ]

    def _blocked(self, dest: Destination, kind: str, wait: float, evidence: dict[str, Any]) -> Deny:
        seconds = max(1, int(wait + 0.999))
        return Deny(
            self.policy.status,
            "egress_pumping_blocked",
            "Messages to this destination are paused after suspicious traffic; retry later.",
            headers=(("retry-after", str(seconds)),) if self.policy.status == 429 else (),
            evidence={"country": dest.country, "blocked": kind, "retry_after": seconds, **evidence},
            event="egress.pumping_blocked",
        )

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        found: list[Destination] = ctx.notes.get(DESTINATIONS) or []
        if not found:
            return None
        now = self.clock()
        try:
            for index, dest in enumerate(found):
                verdict = await self._one(req, ctx, dest, index, now)
                if verdict is not None:
                    return verdict
        except StateUnavailable:
            return state_unavailable("tallies", cause="sms_pumping")
        return None

    async def _one(
        self, req: RequestView, ctx: Context, dest: Destination, index: int, now: float
    ) -> Deny | None:
        p = self.policy
        tallies = self.tallies
        blocks = self._blocks(dest)
        for kind, key in blocks:
            wait = await tallies.blocked_for(key, now)
            if wait > 0:
                return self._blocked(dest, kind, wait, {kind: key.rsplit("|", 1)[1]})
        member = f"{req.request_id}.{index}"
        # Sequential numbers: distinct numbers in one range.
        seen = await tallies.distinct(
            f"pump|{self.route}|seq|{self.range_of(dest)}", dest.e164, p.within, now
        )
        if seen >= p.sequential:
            return await self._detected(
                ctx, dest, blocks[0], "sequential_numbers", {"numbers": seen, "within": p.within}, now
            )
        if p.volume:
            country = dest.country or f"+{dest.calling_code}"
            recent = await tallies.distinct(f"pump|{self.route}|vol|{country}", member, p.volume_within, now)
            day = await tallies.distinct(f"pump|{self.route}|day|{country}", member, _DAY, now)
            windows = _DAY / p.volume_within
            usual = max(day - recent, 0) / max(windows - 1, 1.0)
            if recent >= p.volume_min_count and recent > p.volume_factor * max(usual, 1.0):
                evidence = {"messages": recent, "usual": round(usual, 2), "within": p.volume_within}
                # Without a day of history to compare with (a new route, a restart on memory://), a burst
                # may be a launch: it is reported, and blocked only once there is history.
                warm = day - recent >= p.volume_min_count
                return await self._detected(
                    ctx, dest, blocks[1], "volume_spike", evidence, now, block_it=warm
                )
        return None

    async def _detected(
        self,
        ctx: Context,
        dest: Destination,
        block: tuple[str, str],
        pattern: str,
        evidence: dict[str, Any],
        now: float,
        *,
        block_it: bool = True,
    ) -> Deny | None:
        kind, key = block
        where = key.rsplit("|", 1)[1]
        data = {"egress": self.route, "pattern": pattern, "country": dest.country, kind: where, **evidence}
        blocking = self.policy.auto_block and block_it
        if blocking:
            await self.tallies.block(key, self.policy.block_for, now)
            data["blocked_for"] = self.policy.block_for
        ctx.notices.append(("egress.pumping_detected", data))
        if blocking:
            return self._blocked(dest, kind, self.policy.block_for, {kind: where, "pattern": pattern})
        return None

    async def report(self, to: str, status: str, sid: str, now: float, emit: Callable[..., None]) -> None:
        """A delivery report for a message to ``to``: count it, and block the prefix on low completion."""
        p = self.policy
        if not p.completion or status not in DELIVERED | FAILED:
            return
        try:
            dest = parse_destination(to, None, False)
        except NumberRefused:
            return
        prefix = dest.prefix(p.completion_prefix)
        base = f"pump|{self.route}|outcome|{prefix}"
        total = await self.tallies.distinct(base + "|all", sid, p.completion_within, now)
        if status in DELIVERED:
            await self.tallies.distinct(base + "|ok", sid, p.completion_within, now)
        ok = await self.tallies.count(base + "|ok", p.completion_within, now)
        if total < p.completion_min_reports:
            return
        rate = ok / total
        if rate >= p.completion_min_rate:
            return
        key = f"pump|{self.route}|prefix|{prefix}"
        if await self.tallies.blocked_for(key, now) > 0:
            return
        data: dict[str, Any] = {
            "egress": self.route,
            "pattern": "low_completion",
            "country": dest.country,
            "prefix": prefix,
            "reports": total,
            "delivered": ok,
        }
        if p.auto_block:
            await self.tallies.block(key, p.block_for, now)
            data["blocked_for"] = p.block_for
        emit("egress.pumping_detected", data)


class DeliveryReports:
    """On a route that receives Twilio status callbacks (after its signature check): feeds each message's
    outcome (``MessageStatus``, ``To``) to an egress route's pumping detector. Never refuses anything."""

    name = "delivery_reports"

    def __init__(self, detector: PumpingDetector, json_limits: JsonLimits) -> None:
        self.detector = detector
        self.json_limits = json_limits

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        body = await payload(req, ctx, self.json_limits)
        if isinstance(body, Deny):
            return None
        status = next(iter(body.values("MessageStatus") or body.values("SmsStatus")), "").lower()
        to = next(iter(body.values("To")), "")
        sid = next(iter(body.values("MessageSid") or body.values("SmsSid")), "")
        if not status or not to or not sid:
            return None

        def emit(type_: str, data: dict[str, Any]) -> None:
            ctx.notices.append((type_, data))

        with contextlib.suppress(StateUnavailable):  # a report is advice: never refuse the callback for it
            await self.detector.report(to, status, sid[:64], self.detector.clock(), emit)
        return None
