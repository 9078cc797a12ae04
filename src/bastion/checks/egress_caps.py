"""Caps on outbound traffic (P10, P16): per destination country, destination prefix, destination number or
caller, through the same atomic counters as rate limits (exact across instances on Redis).

Each destination of a request counts once against every cap that applies to it (the caller's cap counts
the request once); destinations are counted in order, so a request refused at its third destination has
used up the counts of the first two. The counters fail closed: when the state backend cannot answer, the
request is refused (503) — an uncapped burst of premium SMS is exactly what a cap exists to stop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.decision import Context, Deny, Verdict
from ..core.ports import Counters, StateUnavailable
from ..core.ratelimit import Limit, retry_seconds
from ..core.request import RequestView
from .egress_payload import Destination
from .geo import DESTINATIONS
from .refusals import state_unavailable

__all__ = ["Cap", "EgressCaps"]


@dataclass(frozen=True, slots=True)
class Cap:
    per: str  # destination_country | destination_prefix | destination | caller
    limit: Limit
    prefix_length: int = 6


class EgressCaps:
    name = "egress_caps"

    def __init__(
        self, route: str, caps: Sequence[Cap], counters: Counters, clock: Callable[[], float]
    ) -> None:
        self.route = route
        self.caps = tuple(caps)
        self.counters = counters
        self.clock = clock

    def _key(self, cap: Cap, dest: Destination | None, caller: str) -> str | None:
        if cap.per == "caller":
            return f"egress|{self.route}|caller|{caller}"
        if dest is None:
            return None
        if cap.per == "destination_country":
            return f"egress|{self.route}|country|{dest.country or '+' + str(dest.calling_code)}"
        if cap.per == "destination_prefix":
            return f"egress|{self.route}|prefix{cap.prefix_length}|{dest.prefix(cap.prefix_length)}"
        return f"egress|{self.route}|number|{dest.e164}"

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        caller = ctx.principal.consumer if ctx.principal is not None else str(req.client_ip)
        found: list[Destination] = ctx.notes.get(DESTINATIONS) or []
        targets: list[Destination | None] = list(found) or [None]
        now = self.clock()
        for index, dest in enumerate(targets):
            keys: list[str] = []
            limits: list[Limit] = []
            for cap in self.caps:
                if cap.per == "caller" and index > 0:
                    continue  # one request counts once against its caller
                key = self._key(cap, dest, caller)
                if key is not None:
                    keys.append(key)
                    limits.append(cap.limit)
            if not keys:
                continue
            try:
                decision = await self.counters.hit(keys, limits, now, f"{req.request_id}.{index}")
            except StateUnavailable:
                return state_unavailable("counters", cause="egress_caps")
            if not decision.allowed:
                wait = retry_seconds(decision)
                evidence: dict[str, object] = {"limit": decision.exceeded}
                if dest is not None:
                    evidence["country"] = dest.country
                return Deny(
                    429,
                    "egress_cap_exceeded",
                    "A cap on this egress route is reached; retry later.",
                    headers=(("retry-after", str(wait)),) if wait else (),
                    evidence=evidence,
                    event="egress.cap_exceeded",
                )
        return None
