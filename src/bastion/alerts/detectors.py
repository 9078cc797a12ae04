"""The detectors behind alert rules: one class per built-in, plus the ``when:`` counting rule.

Every detector has the same shape. It is built from its rule, the shared :class:`AlertState` and a
:class:`Samples` log; an event detector reads the event types it names (``types``, prefixes) through
``on_event`` and a use detector reads the authenticated requests the engine aggregated since the last step
through ``on_uses``. Either returns :class:`Finding` values — "this rule's threshold is crossed for this
group, with this evidence" — and nothing else: the engine claims the cooldown, emits ``alert.fired`` and
delivers. No detector keeps a count of its own (two instances must add to the same numbers), only bounded
local caches that spare Redis a call.

The decisions, parameters and evidence of each are in docs/alerts.md.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Protocol, TypeVar, runtime_checkable
from zoneinfo import ZoneInfo

from ..config.models import AlertCondition, AlertRuleSettings
from ..core.events import Event, severity_rank
from .state import AlertState, Baseline, key_part

__all__ = [
    "AdminOutsidePolicy",
    "CountingRule",
    "CredentialStuffing",
    "EventDetector",
    "Finding",
    "KeyUsedAfterRotation",
    "NewSourceCountry",
    "Samples",
    "TrafficSpike",
    "UndeclaredEndpoint",
    "UseDetector",
    "build_detector",
    "sample_document",
]

SEEN_TTL = 90 * 86400.0  # a key's seen countries / addresses are forgotten after 90 days without change
MAX_SAMPLES = 5

Use = tuple[str, str | None, str]  # (consumer, key id or None, source ip)
T = TypeVar("T")


@dataclass(slots=True)
class Finding:
    group: str
    summary: str  # one line, for a mail subject and logs
    evidence: dict[str, Any]
    samples: list[Event] = field(default_factory=list)
    source_ip: str | None = None  # when the group is one client address
    cooldown_group: str | None = None  # the cooldown's group when wider than ``group`` (default: group)


class EventDetector(Protocol):
    detector: str  # the builtin's name, or "when"
    types: tuple[str, ...]  # event type prefixes it reads

    async def on_event(self, event: Event, at: float) -> list[Finding]: ...


@runtime_checkable
class UseDetector(Protocol):
    detector: str

    async def on_uses(self, counts: Mapping[str, int], uses: Iterable[Use], now: float) -> list[Finding]: ...


class Samples:
    """The last few events of each (rule, group) this instance saw — the evidence an alert shows. Bounded:
    at most ``max_groups`` groups, the least recently touched dropped first."""

    def __init__(self, max_groups: int = 10_000) -> None:
        self.max_groups = max_groups
        self._groups: OrderedDict[tuple[str, str], deque[Event]] = OrderedDict()

    def add(self, rule: str, group: str, event: Event) -> None:
        groups = self._groups
        key = (rule, group)
        recent = groups.get(key)
        if recent is None:
            if len(groups) >= self.max_groups:
                groups.popitem(last=False)
            recent = groups[key] = deque(maxlen=MAX_SAMPLES)
        else:
            groups.move_to_end(key)
        recent.append(event)

    def get(self, rule: str, group: str) -> list[Event]:
        return list(self._groups.get((rule, group), ()))


async def gather_bounded(calls: Iterable[Awaitable[T]], limit: int = 32) -> list[T]:
    """Await ``calls`` ``limit`` at a time, results in order: state calls overlap on the pipelined Redis
    connection (and are sent in order), without a burst of thousands in flight at once."""
    out: list[T] = []
    batch: list[Awaitable[T]] = []
    for call in calls:
        batch.append(call)
        if len(batch) >= limit:
            out += await asyncio.gather(*batch)
            batch = []
    if batch:
        out += await asyncio.gather(*batch)
    return out


def sample_document(event: Event) -> dict[str, Any]:
    """An event as an alert's evidence shows it: small, and nothing a secret could hide in."""
    doc: dict[str, Any] = {
        "id": event.id,
        "time": _iso(event.time),
        "type": event.type,
        "source_ip": event.source_ip,
        "actor": event.actor,
        "reason": event.reason,
    }
    key_id = event.data.get("key_id")
    if isinstance(key_id, str):
        doc["key_id"] = key_id  # a key's public id, never the key
    return doc


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _actor_parts(actor: str | None) -> tuple[str | None, str | None]:
    """``consumer:<name>/key:<id>`` → (name, id); ``consumer:<name>`` → (name, None)."""
    if not actor or not actor.startswith("consumer:"):
        return None, None
    consumer, _, rest = actor[len("consumer:") :].partition("/")
    key_id = rest[len("key:") :] if rest.startswith("key:") else None
    return consumer or None, key_id or None


@lru_cache(maxsize=65_536)  # parsing is the costly part of a failed login's handling; clients repeat
def _network(ip: str) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) an address belongs to; an IPv4-mapped IPv6 address is IPv4."""
    try:
        addr = ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ip_network(f"{addr}/{prefix}", strict=False))


# -- credential stuffing ---------------------------------------------------------------------------------


def _identifier(event: Event) -> str | None:
    """What a failed attempt tried to be: the key id it named, else another identifier it presented."""
    data = event.data
    for field_name, kind in (("key_id", "key"), ("credential_id", "credential"), ("client_id", "client")):
        value = data.get(field_name)
        if isinstance(value, str) and value:
            return f"{kind}:{value}"
    consumer, key_id = _actor_parts(event.actor)
    if key_id:
        return f"key:{key_id}"
    return f"consumer:{consumer}" if consumer else None


class CredentialStuffing:
    """Many identities failing from one place, or one identity failing from many places."""

    detector = "credential_stuffing"
    types: tuple[str, ...] = ("auth.failed",)

    def __init__(self, rule: AlertRuleSettings, state: AlertState, samples: Samples) -> None:
        self.rule = rule.name
        self.state = state
        self.samples = samples
        self.distinct: int = rule.parameter("distinct")
        self.within: float = rule.parameter("within")
        self.ips: int = rule.parameter("ips")

    async def on_event(self, event: Event, at: float) -> list[Finding]:
        ident = _identifier(event)
        if ident is None:
            return []
        ip = event.source_ip
        net = _network(ip) if ip else None
        name, state, found = self.rule, self.state, []
        if ip and net:
            by_ip = await state.add_distinct(f"cs:{name}:ip:{ip}", key_part(ident), at, self.within)
            by_net = await state.add_distinct(f"cs:{name}:net:{net}", key_part(ident), at, self.within)
            self.samples.add(name, f"ip:{ip}", event)
            self.samples.add(name, f"net:{net}", event)
            # One address crossing the threshold is reported as that address, an attack spread over its
            # network as the network; the cooldown is the network's in both cases, so one attack is one
            # alert even when instances (or concurrent events) see the two counts cross in either order.
            if by_ip >= self.distinct:
                found.append(self._finding("ip", f"ip:{ip}", ip, by_ip, source_ip=ip, cooldown=f"net:{net}"))
            elif by_net >= self.distinct:
                found.append(self._finding("net", f"net:{net}", net, by_net, cooldown=f"net:{net}"))
            by_key = await state.add_distinct(f"cs:{name}:id:{key_part(ident)}", ip, at, self.within)
            self.samples.add(name, ident, event)
            if by_key >= self.ips:
                found.append(self._finding("identity", ident, ident, by_key))
        return found

    def _finding(
        self,
        by: str,
        group: str,
        subject: str,
        n: int,
        source_ip: str | None = None,
        cooldown: str | None = None,
    ) -> Finding:
        window = _duration(self.within)
        if by == "identity":
            evidence = {"by": by, "identity": subject, "distinct_ips": n, "threshold": self.ips}
            summary = f"{subject} failed from {n} addresses in {window}"
        else:
            evidence = {"by": by, by: subject, "distinct_identities": n, "threshold": self.distinct}
            summary = f"{n} identities failed from {subject} in {window}"
        evidence["window"] = self.within
        return Finding(group, summary, evidence, self.samples.get(self.rule, group), source_ip, cooldown)


# -- traffic spike ---------------------------------------------------------------------------------------


class TrafficSpike:
    """A consumer's requests in the last closed interval against its usual rate (an EWMA)."""

    detector = "traffic_spike"

    def __init__(
        self, rule: AlertRuleSettings, state: AlertState, *, settle: float = 2.0, max_consumers: int = 100_000
    ) -> None:
        self.rule = rule.name
        self.state = state
        self.factor: float = rule.parameter("factor")
        self.min_rate: int = rule.parameter("min_rate")
        self.interval: float = rule.parameter("interval")
        self.half_life: float = rule.parameter("half_life")
        self.warmup: int = rule.parameter("warmup")
        # each interval the old mean keeps this weight: after `half_life` seconds, half
        self.decay: float = 0.5 ** (self.interval / self.half_life)
        self.settle = settle  # wait this long after an interval ends: other instances are still adding
        self.max_consumers = max_consumers
        self._pending: dict[str, set[int]] = {}  # consumer -> intervals this instance counted, not evaluated
        self.ttl = self.interval * 3 + settle
        self.baseline_ttl = max(7 * 86400.0, 20 * self.half_life)

    def _weight(self, history: int) -> float:
        """The weight of a new interval: a plain mean of the first ones (so a first, partial interval
        cannot anchor the baseline for hours), then the EWMA's constant weight."""
        return max(1.0 - self.decay, 1.0 / (history + 1))

    def _idle(self, mean: float, history: int, idle: int) -> tuple[float, int]:
        """Fold in ``idle`` intervals nobody counted: zero requests each."""
        while idle > 0 and self._weight(history) > 1.0 - self.decay:
            mean *= 1.0 - self._weight(history)
            history += 1
            idle -= 1
        if idle > 0:
            mean = mean * self.decay**idle if idle < 100_000 else 0.0
            history += idle
        return mean, history

    def _bucket(self, consumer: str, index: int) -> str:
        return f"ts:{self.rule}:{key_part(consumer)}:{index}"

    async def on_uses(self, counts: Mapping[str, int], uses: Iterable[Use], now: float) -> list[Finding]:
        index = math.floor(now / self.interval)
        pending = self._pending
        await gather_bounded(
            self.state.add(self._bucket(c, index), n, now, self.ttl) for c, n in counts.items()
        )
        for consumer in counts:
            seen = pending.get(consumer)
            if seen is None:
                if len(pending) >= self.max_consumers:
                    continue
                seen = pending[consumer] = set()
            seen.add(index)
        due: list[tuple[str, int]] = []
        for consumer in list(pending):
            intervals = pending[consumer]
            for i in sorted(i for i in intervals if now >= (i + 1) * self.interval + self.settle):
                intervals.discard(i)
                due.append((consumer, i))
            if not intervals:
                del pending[consumer]
        # one consumer's intervals stay in order: an interval is folded in only after the one before it
        by_consumer: dict[str, list[int]] = {}
        for consumer, i in due:
            by_consumer.setdefault(consumer, []).append(i)
        results = await gather_bounded(self._evaluate_all(c, ix, now) for c, ix in by_consumer.items())
        return [f for found in results for f in found]

    async def _evaluate_all(self, consumer: str, intervals: list[int], now: float) -> list[Finding]:
        found = []
        for i in intervals:
            finding = await self._evaluate(consumer, i, now)
            if finding is not None:
                found.append(finding)
        return found

    async def _evaluate(self, consumer: str, index: int, now: float) -> Finding | None:
        state, part = self.state, key_part(consumer)
        # one instance folds each closed interval into the baseline
        if not await state.claim(f"ts-eval:{self.rule}:{part}:{index}", now, self.ttl):
            return None
        count = await state.add(self._bucket(consumer, index), 0, now, self.ttl)
        base_key = f"ts-base:{self.rule}:{part}"
        base = await state.baseline(base_key, now)
        if base is not None and base.last >= index:
            return None  # a later interval is already folded in (this instance lagged): nothing to add
        finding = None
        if base is None:
            updated = Baseline(float(count), 1, index)
        else:
            mean, history = self._idle(base.value, base.intervals, index - base.last - 1)
            if history >= self.warmup and count >= self.min_rate and count >= self.factor * mean:
                ratio = count / mean if mean > 0 else None
                evidence = {
                    "consumer": consumer,
                    "count": count,
                    "baseline": round(mean, 3),
                    "ratio": round(ratio, 2) if ratio is not None else None,
                    "factor": self.factor,
                    "min_rate": self.min_rate,
                    "interval": self.interval,
                    "interval_start": _iso(index * self.interval),
                    "history_intervals": history,
                }
                times = f"{ratio:.1f} times its usual rate" if ratio is not None else "after being idle"
                summary = f"{consumer}: {count} requests in {_duration(self.interval)}, {times}"
                finding = Finding(consumer, summary, evidence)
            updated = Baseline(mean + self._weight(history) * (count - mean), history + 1, index)
        await state.set_baseline(base_key, updated, now, self.baseline_ttl)
        return finding


# -- new source country / address -------------------------------------------------------------------------


# The events that show an admin account (or the bearer admin token) at work: a completed sign-in, a first
# factor that passed (a password known somewhere new matters before the second factor does), an API call.
ADMIN_PRESENCE_EVENTS = ("admin_auth.signed_in", "admin_auth.first_factor_passed", "admin.action")


class NewSourceCountry:
    """A key (or a consumer without keys) used from a country — or with ``on: ip`` an address — it was
    never used from before. The first one seen is the baseline.

    Admin accounts are covered through their events (:data:`ADMIN_PRESENCE_EVENTS`, read by ``on_event``):
    each ``admin:<name>`` actor, and ``admin:token``, has its own set of countries (or addresses), and a
    sign-in or call from a new one is a finding grouped by the actor."""

    detector = "new_source_country"
    types: tuple[str, ...] = ADMIN_PRESENCE_EVENTS

    def __init__(
        self,
        rule: AlertRuleSettings,
        state: AlertState,
        geo: Callable[[str], str | None],
        *,
        cache_for: float = 3600.0,
        max_cached: int = 100_000,
    ) -> None:
        self.rule = rule.name
        self.state = state
        self.geo = geo
        self.on: str = rule.parameter("on")
        self.cache_for = cache_for  # a known (subject, member) skips Redis this long (also refreshes its TTL)
        self.max_cached = max_cached
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _country(self, ip: str) -> str | None:
        try:
            return self.geo(ip)
        except Exception:  # a lookup that fails is an unknown country, never an alert's failure
            return None

    async def on_event(self, event: Event, at: float) -> list[Finding]:
        """An admin account's (or the admin token's) sign-in or call from a country it never came from."""
        actor, ip = event.actor, event.source_ip
        if not actor or not actor.startswith("admin:") or not ip:
            return []
        country = self._country(ip)
        member = country if self.on == "country" else ip
        if member is None:
            return []  # private or unknown address: no country to compare
        known, pair = self._known, (actor, member)
        cached = known.get(pair)
        if cached is not None and cached > at:
            return []
        seen = await self.state.remember(
            f"seen:{self.rule}:{self.on}:{key_part(actor)}", member, at, SEEN_TTL
        )
        if len(known) >= self.max_cached:
            known.popitem(last=False)
        known[pair] = at + self.cache_for
        known.move_to_end(pair)
        if not (seen.new and seen.known > 0):
            return []
        label = "countries" if self.on == "country" else "addresses"
        evidence = {
            "on": self.on,
            "actor": actor,
            "event_type": event.type,
            "ip": ip,
            "country": country,
            f"previous_{label}": sorted(seen.sample),
            f"known_{label}": seen.known,
        }
        new = f"country {country}" if self.on == "country" else f"address {ip}"
        what = "signed in" if event.type.startswith("admin_auth.") else "used the admin API"
        return [Finding(actor, f"{actor} {what} from a new {new}", evidence, [event], source_ip=ip)]

    async def on_uses(self, counts: Mapping[str, int], uses: Iterable[Use], now: float) -> list[Finding]:
        known = self._known
        todo: dict[tuple[str, str], tuple[str, str | None, str, str | None]] = {}
        for consumer, key_id, ip in uses:
            subject = f"key:{key_id}" if key_id else f"consumer:{consumer}"
            country = self._country(ip)
            member = country if self.on == "country" else ip
            if member is None:
                continue  # private or unknown address: no country to compare
            cached = known.get((subject, member))
            if (cached is not None and cached > now) or (subject, member) in todo:
                continue
            todo[(subject, member)] = (consumer, key_id, ip, country)
        answers = await gather_bounded(
            self.state.remember(f"seen:{self.rule}:{self.on}:{key_part(subject)}", member, now, SEEN_TTL)
            for subject, member in todo
        )
        found = []
        for ((subject, member), (consumer, key_id, ip, country)), seen in zip(
            todo.items(), answers, strict=True
        ):
            if len(known) >= self.max_cached:
                known.popitem(last=False)
            known[(subject, member)] = now + self.cache_for
            known.move_to_end((subject, member))
            if seen.new and seen.known > 0:
                label = "countries" if self.on == "country" else "addresses"
                evidence = {
                    "on": self.on,
                    "consumer": consumer,
                    "key_id": key_id,
                    "ip": ip,
                    "country": country,
                    f"previous_{label}": sorted(seen.sample),
                    f"known_{label}": seen.known,
                }
                new = f"country {country}" if self.on == "country" else f"address {ip}"
                summary = f"{subject} used from a new {new}"
                found.append(Finding(subject, summary, evidence, source_ip=ip))
        return found


# -- one alert per event ---------------------------------------------------------------------------------


class UndeclaredEndpoint:
    detector = "undeclared_endpoint"
    types: tuple[str, ...] = ("inventory.undeclared_endpoint",)

    def __init__(self, rule: AlertRuleSettings, samples: Samples) -> None:
        self.rule = rule.name
        self.samples = samples

    async def on_event(self, event: Event, at: float) -> list[Finding]:
        data = event.data
        method, template = data.get("method"), data.get("template")
        if isinstance(method, str) and isinstance(template, str):
            group = f"{method} {template}"
            evidence = {"method": method, "template": template, "count": data.get("count")}
            summary = f"undeclared endpoint {method} {template} called"
        else:  # the summary of a flush that found more than it reports one by one
            group = "*"
            evidence = {"more": data.get("more"), "not_recorded": data.get("not_recorded")}
            summary = "many undeclared endpoints called"
        self.samples.add(self.rule, group, event)
        return [Finding(group, summary, evidence, self.samples.get(self.rule, group))]


class KeyUsedAfterRotation:
    detector = "key_used_after_rotation"
    types: tuple[str, ...] = ("api_key.used_after_rotation",)

    def __init__(self, rule: AlertRuleSettings, samples: Samples) -> None:
        self.rule = rule.name
        self.samples = samples

    async def on_event(self, event: Event, at: float) -> list[Finding]:
        data = event.data
        key_id = data.get("key_id") or _actor_parts(event.actor)[1]
        if not isinstance(key_id, str):
            return []
        group = f"key:{key_id}"
        evidence = {k: data.get(k) for k in ("key_id", "new_key_id", "consumer", "grace_until")}
        evidence["source_ip"] = event.source_ip
        self.samples.add(self.rule, group, event)
        summary = f"rotated key {key_id} still used"
        return [Finding(group, summary, evidence, self.samples.get(self.rule, group), event.source_ip)]


_PUMPING_EVIDENCE = (
    "egress",
    "pattern",
    "country",
    "range",
    "prefix",
    "numbers",
    "messages",
    "reports",
    "blocked_for",
)


class SmsPumping:
    """An egress route found an SMS pumping pattern (``egress.pumping_detected``): one alert per range."""

    detector = "sms_pumping"
    types: tuple[str, ...] = ("egress.pumping_detected",)

    def __init__(self, rule: AlertRuleSettings, samples: Samples) -> None:
        self.rule = rule.name
        self.samples = samples

    async def on_event(self, event: Event, at: float) -> list[Finding]:
        data = event.data
        where = next((data[k] for k in ("range", "prefix", "country") if isinstance(data.get(k), str)), None)
        if where is None:
            return []
        group = f"{data.get('egress') or ''}|{where}"
        evidence = {k: data.get(k) for k in _PUMPING_EVIDENCE if data.get(k) is not None}
        self.samples.add(self.rule, group, event)
        summary = f"SMS pumping ({data.get('pattern')}) towards {where}"
        return [Finding(group, summary, evidence, self.samples.get(self.rule, group))]


def _parse_hours(text: str) -> tuple[int, int]:
    start, end = text.split("-")
    h1, m1 = start.split(":")
    h2, m2 = end.split(":")
    return int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)


# Sign-in steps of admin accounts, failed or not (password, email code, TOTP, SSO).
_ADMIN_SIGN_IN_EVENTS = (
    "admin_auth.signed_in",
    "admin_auth.first_factor_passed",
    "admin_auth.sign_in_failed",
    "admin_auth.mfa_failed",
    "admin_auth.sso_failed",
)
_ADMIN_FAILURES = (
    "admin.auth_failed",
    "admin_auth.sign_in_failed",
    "admin_auth.mfa_failed",
    "admin_auth.sso_failed",
)


class AdminOutsidePolicy:
    """An admin API call, an admin account's sign-in step or a failed admin login outside the allowed hours
    or from outside the allowed networks."""

    detector = "admin_outside_policy"
    types: tuple[str, ...] = ("admin.action", "admin.auth_failed", *_ADMIN_SIGN_IN_EVENTS)

    def __init__(self, rule: AlertRuleSettings, samples: Samples) -> None:
        self.rule = rule.name
        self.samples = samples
        hours: str | None = rule.parameter("hours")
        self.hours_text = hours
        self.hours = _parse_hours(hours) if hours else None
        self.timezone_name: str = rule.parameter("timezone")
        self.zone = ZoneInfo(self.timezone_name)
        self.allow_ips: list[IPv4Network | IPv6Network] = list(rule.parameter("allow_ips"))

    def _inside_hours(self, t: float) -> tuple[bool, str]:
        local = datetime.fromtimestamp(t, self.zone)
        minute = local.hour * 60 + local.minute
        shown = local.strftime("%Y-%m-%d %H:%M %Z")
        if self.hours is None:
            return True, shown
        start, end = self.hours
        if start == end:
            return True, shown
        inside = start <= minute < end if start < end else minute >= start or minute < end
        return inside, shown

    def _allowed_ip(self, ip: str | None) -> bool:
        if not self.allow_ips:
            return True
        if not ip:
            return False  # an address it cannot check is outside the policy
        try:
            addr = ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow_ips)

    async def on_event(self, event: Event, at: float) -> list[Finding]:
        inside, local_time = self._inside_hours(event.time)
        violations = []
        if not inside:
            violations.append("outside_hours")
        # A sign-in step recorded without an address (a password change's check) has its admin.action.
        judge_ip = event.source_ip is not None or not event.type.startswith("admin_auth.")
        if judge_ip and not self._allowed_ip(event.source_ip):
            violations.append("ip_not_allowed")
        if not violations:
            return []
        actor = event.actor or "anonymous"
        group = f"{actor}|{'+'.join(violations)}"
        self.samples.add(self.rule, group, event)
        evidence = {
            "violations": violations,
            "event_type": event.type,
            "actor": event.actor,
            "source_ip": event.source_ip,
            "local_time": local_time,
            "hours": self.hours_text,
            "timezone": self.timezone_name,
            "allow_ips": [str(n) for n in self.allow_ips],
        }
        if event.type in _ADMIN_FAILURES:
            what = "admin login failure"
        else:
            what = "admin sign-in" if event.type.startswith("admin_auth.") else "admin action"
        summary = f"{what} by {actor} {' and '.join(v.replace('_', ' ') for v in violations)}"
        return [Finding(group, summary, evidence, self.samples.get(self.rule, group), event.source_ip)]


# -- when: counting rules --------------------------------------------------------------------------------


def _group_value(event: Event, group_by: str) -> str | None:
    if group_by in ("consumer", "key_id"):
        value = event.data.get(group_by)
        if isinstance(value, str) and value:
            return value
        consumer, key_id = _actor_parts(event.actor)
        return consumer if group_by == "consumer" else key_id
    value = getattr(event, group_by)
    return value if isinstance(value, str) and value else None


class CountingRule:
    """``when: {type, count, within, group_by, severity}``: fire when ``count`` events of the type prefix
    (at least ``severity``) fall within ``within`` for one value of ``group_by``. Events without that field
    are not counted."""

    detector = "when"

    def __init__(
        self, rule: AlertRuleSettings, condition: AlertCondition, state: AlertState, samples: Samples
    ) -> None:
        self.rule = rule.name
        self.condition = condition
        self.state = state
        self.samples = samples
        self.types: tuple[str, ...] = (condition.type,)
        self.min_rank = severity_rank(condition.severity) if condition.severity else 0

    async def on_event(self, event: Event, at: float) -> list[Finding]:
        cond = self.condition
        if severity_rank(event.severity) < self.min_rank:
            return []
        if event.type == "alert.fired" and event.data.get("rule") == self.rule:
            return []  # never count our own alerts
        if cond.group_by is None:
            group = "*"
        else:
            value = _group_value(event, cond.group_by)
            if value is None:
                return []
            group = f"{cond.group_by}:{value}"
        n = await self.state.count(f"when:{self.rule}:{key_part(group)}", at, cond.within)
        self.samples.add(self.rule, group, event)
        if n < cond.count:
            return []
        evidence = {
            "type": cond.type,
            "group_by": cond.group_by,
            "count": n,
            "threshold": cond.count,
            "window": cond.within,
            "min_severity": cond.severity,
        }
        where = f" for {group}" if cond.group_by else ""
        summary = f"{n} {cond.type}* events in {_duration(cond.within)}{where}"
        source_ip = group[len("source_ip:") :] if cond.group_by == "source_ip" else None
        return [Finding(group, summary, evidence, self.samples.get(self.rule, group), source_ip)]


def build_detector(
    rule: AlertRuleSettings,
    state: AlertState,
    samples: Samples,
    geo: Callable[[str], str | None],
    *,
    settle: float = 2.0,
) -> EventDetector | UseDetector:
    if rule.when is not None:
        return CountingRule(rule, rule.when, state, samples)
    match rule.builtin:
        case "credential_stuffing":
            return CredentialStuffing(rule, state, samples)
        case "traffic_spike":
            return TrafficSpike(rule, state, settle=settle)
        case "new_source_country":
            return NewSourceCountry(rule, state, geo)
        case "undeclared_endpoint":
            return UndeclaredEndpoint(rule, samples)
        case "key_used_after_rotation":
            return KeyUsedAfterRotation(rule, samples)
        case "admin_outside_policy":
            return AdminOutsidePolicy(rule, samples)
        case "sms_pumping":
            return SmsPumping(rule, samples)
    raise ValueError(f"unknown detector {rule.builtin!r}")
