"""Alert rules, pure: every built-in detector and the ``when:`` rule driven by scripted events on the
in-memory state with an injected clock — a scenario that must fire and a near miss that must not — plus
the cooldown, the engine's bounds and the shape of ``alert.fired``. No sockets, no sleeping."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from bastion.alerts import AlertEngine, DeliveryError, FallbackAlertState, MemoryAlertState
from bastion.alerts.channels import email_message, sign_standard_webhook
from bastion.alerts.state import Baseline, key_part
from bastion.checks.hmac_webhook import standard_webhooks_secret
from bastion.config.models import AlertSettings
from bastion.core.events import Event
from bastion.core.ports import StateUnavailable
from bastion.events.writer import new_event

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC, a Friday


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Harness:
    """An engine on memory state with a fake clock; ``emitted`` is everything it emitted."""

    def __init__(
        self,
        rules: Sequence[dict[str, Any]],
        *,
        state: Any = None,
        geo: Callable[[str], str | None] | None = None,
        channels: dict[str, Any] | None = None,
        channel_settings: Sequence[dict[str, Any]] = (),
        **kw: Any,
    ) -> None:
        self.clock = Clock()
        self.emitted: list[Event] = []
        settings = AlertSettings.model_validate({"channels": list(channel_settings), "rules": list(rules)})
        self.engine = AlertEngine(
            settings,
            state=state if state is not None else MemoryAlertState(),
            emit=self.emitted.append,
            clock=self.clock,
            geo=geo,
            channels=channels if channels is not None else {},
            **kw,
        )

    def step(self, at: float | None = None) -> list[Event]:
        if at is not None:
            self.clock.t = at
        return asyncio.run(self.engine.step())

    def feed(self, events: Sequence[Event], at: float | None = None) -> list[Event]:
        for event in events:
            self.engine.observe(event)
        return self.step(at)

    def fired(self) -> list[Event]:
        return [e for e in self.emitted if e.type == "alert.fired"]


def failed(ip: str, key_id: str | None, t: float = T0, **data: Any) -> Event:
    extra = {"key_id": key_id} if key_id else {}
    return new_event(
        "auth.failed",
        now=t,
        severity="warning",
        source_ip=ip,
        reason="auth_invalid",
        path="/v1/orders",
        data={"status": 401, "cause": "api_key_unknown", **extra, **data},
    )


STUFFING = {"name": "stuffing", "builtin": "credential_stuffing"}


# -- credential stuffing ---------------------------------------------------------------------------------


def test_ten_distinct_keys_failing_from_one_ip_fire_once_with_evidence() -> None:
    h = Harness([STUFFING])
    fired = h.feed([failed("203.0.113.9", f"key{i}", T0 + i) for i in range(10)], at=T0 + 10)
    assert len(fired) == 1 and h.fired() == fired
    alert = fired[0]
    assert alert.type == "alert.fired" and alert.severity == "warning"
    assert alert.actor == "system" and alert.resource == "alert:stuffing" and alert.source_ip == "203.0.113.9"
    data = alert.data
    assert data["rule"] == "stuffing" and data["detector"] == "credential_stuffing"
    assert data["group"] == "ip:203.0.113.9" and data["channels"] == []
    ev = data["evidence"]
    assert (
        ev["by"] == "ip" and ev["distinct_identities"] == 10 and ev["threshold"] == 10 and ev["window"] == 300
    )
    samples = ev["samples"]
    assert len(samples) == 5
    assert set(samples[0]) == {"id", "time", "type", "source_ip", "actor", "reason", "key_id"}
    assert samples[-1]["key_id"] == "key9" and samples[-1]["type"] == "auth.failed"
    json.dumps(data)  # the whole alert is JSON
    # the burst goes on: no second alert within the cooldown
    assert h.feed([failed("203.0.113.9", f"more{i}", T0 + 11) for i in range(20)], at=T0 + 12) == []
    assert h.engine.stats["fired"] == 1 and h.engine.stats["suppressed"] >= 20


def test_nine_distinct_keys_or_one_key_many_times_do_not_fire() -> None:
    h = Harness([STUFFING])
    events = [failed("203.0.113.9", f"key{i}", T0 + i) for i in range(9)]
    events += [failed("203.0.113.9", "key0", T0 + 10 + i) for i in range(50)]
    assert h.feed(events, at=T0 + 60) == []


def test_keys_spread_over_unrelated_networks_do_not_fire() -> None:
    h = Harness([STUFFING])
    events = [failed(f"198.{18 + i}.{i}.7", f"key{i}", T0 + i) for i in range(10)]
    assert h.feed(events, at=T0 + 10) == []


def test_a_slow_attack_outside_the_window_does_not_fire() -> None:
    h = Harness([STUFFING])
    for i in range(12):  # one new key every 40 s: never 10 within 5 minutes
        assert h.feed([failed("203.0.113.9", f"key{i}", T0 + 40 * i)], at=T0 + 40 * i) == []


def test_one_slash_24_is_one_group() -> None:
    h = Harness([STUFFING])
    events = [failed(f"203.0.113.{10 + i}", f"key{i}", T0 + i) for i in range(10)]
    fired = h.feed(events, at=T0 + 10)
    assert [a.data["group"] for a in fired] == ["net:203.0.113.0/24"]
    ev = fired[0].data["evidence"]
    assert ev["by"] == "net" and ev["net"] == "203.0.113.0/24" and ev["distinct_identities"] == 10
    assert fired[0].source_ip is None


def test_ipv6_addresses_group_by_slash_64_and_mapped_ipv4_by_slash_24() -> None:
    h = Harness([STUFFING])
    events = [failed(f"2001:db8:1:2::{i + 1:x}", f"key{i}", T0 + i) for i in range(10)]
    assert [a.data["group"] for a in h.feed(events, at=T0 + 10)] == ["net:2001:db8:1:2::/64"]
    h = Harness([STUFFING])
    events = [failed(f"::ffff:198.51.100.{i + 1}", f"key{i}", T0 + i) for i in range(10)]
    assert [a.data["group"] for a in h.feed(events, at=T0 + 10)] == ["net:198.51.100.0/24"]


def test_one_key_failing_from_ten_addresses_fires_and_from_nine_does_not() -> None:
    h = Harness([STUFFING])
    events = [failed(f"198.{18 + i}.0.1", "k_target", T0 + i) for i in range(9)]
    assert h.feed(events, at=T0 + 9) == []
    fired = h.feed([failed("192.0.2.200", "k_target", T0 + 10)], at=T0 + 10)
    assert [a.data["group"] for a in fired] == ["key:k_target"]
    ev = fired[0].data["evidence"]
    assert ev["by"] == "identity" and ev["distinct_ips"] == 10 and ev["threshold"] == 10


def test_other_identifiers_count_and_failures_naming_none_are_skipped() -> None:
    h = Harness([{**STUFFING, "distinct": 3}])
    events = [
        failed("203.0.113.9", None, T0, client_id="app-1"),
        failed("203.0.113.9", None, T0, credential_id="cred-7"),
        failed("203.0.113.9", None, T0),  # names nothing: not an identity
        failed("203.0.113.9", None, T0),
    ]
    assert h.feed(events, at=T0 + 1) == []
    fired = h.feed([failed("203.0.113.9", "k1", T0 + 1)], at=T0 + 2)
    assert fired[0].data["evidence"]["distinct_identities"] == 3


def test_parameters_override_the_defaults() -> None:
    h = Harness([{**STUFFING, "distinct": 3, "within": "1m"}])
    assert h.feed([failed("203.0.113.9", f"k{i}", T0 + 30 * i) for i in range(3)], at=T0 + 60) == []
    assert len(h.feed([failed("203.0.113.9", f"x{i}", T0 + 100 + i) for i in range(3)], at=T0 + 103)) == 1


def test_cooldown_one_alert_per_rule_and_group_then_again_after_it() -> None:
    h = Harness([{**STUFFING, "cooldown": "10m"}])
    burst = lambda t, tag: [failed("203.0.113.9", f"{tag}{i}", t + i) for i in range(10)]  # noqa: E731
    assert len(h.feed(burst(T0, "a"), at=T0 + 10)) == 1
    assert h.feed(burst(T0 + 300, "b"), at=T0 + 310) == []  # inside the cooldown
    # another group is not held by this one's cooldown
    assert len(h.feed([failed("198.51.100.1", f"c{i}", T0 + 320) for i in range(10)], at=T0 + 320)) == 1
    fired = h.feed(burst(T0 + 700, "d"), at=T0 + 710)  # the cooldown is over
    assert [a.data["group"] for a in fired] == ["ip:203.0.113.9"]
    assert h.engine.stats["fired"] == 3


def test_a_rule_with_no_cooldown_fires_every_time() -> None:
    h = Harness([{**STUFFING, "distinct": 2, "cooldown": 0}])
    fired = h.feed([failed("203.0.113.9", f"k{i}", T0) for i in range(4)], at=T0)
    assert len(fired) == 3


# -- traffic spike ---------------------------------------------------------------------------------------

SPIKE = {"name": "spike", "builtin": "traffic_spike"}  # 5x, >= 60, 1m intervals, 30m half-life, warmup 5


def drive_traffic(h: Harness, rates: Sequence[int], consumer: str = "acme", start: int = 0) -> list[Event]:
    """``rates[i]`` requests in interval ``start + i`` (observed mid-interval), one step each."""
    fired = []
    for i, rate in enumerate(rates):
        t = T0 + (start + i) * 60 + 30
        h.clock.t = t
        for _ in range(rate):
            h.engine.observe_use(consumer, "k1", "203.0.113.9")
        fired += h.step(t)
    return fired


def test_a_steady_high_rate_never_fires() -> None:
    h = Harness([SPIKE])
    assert drive_traffic(h, [3000] * 40) == []
    # nor does ordinary noise around it
    assert drive_traffic(h, [2400, 3600, 2900, 4100, 2000, 3300] * 5, start=40) == []


def test_a_jump_fires_once_with_the_baseline_in_evidence() -> None:
    h = Harness([SPIKE])
    assert drive_traffic(h, [40, 50, 45, 55, 50, 48, 52, 50, 47, 53]) == []
    fired = drive_traffic(h, [900, 950, 10], start=10)  # the 900 is judged once its interval is over
    assert len(fired) == 1
    alert = fired[0]
    assert alert.data["group"] == "acme" and alert.data["detector"] == "traffic_spike"
    ev = alert.data["evidence"]
    assert ev["count"] == 900 and 45 < ev["baseline"] < 55 and ev["ratio"] > 15
    assert ev["factor"] == 5.0 and ev["min_rate"] == 60 and ev["interval"] == 60
    assert ev["history_intervals"] == 10 and ev["interval_start"].endswith("Z")
    # the second high interval is held by the cooldown (15 min by default)
    assert h.engine.stats["suppressed"] == 1


def test_no_alert_before_warmup_or_below_min_rate() -> None:
    h = Harness([SPIKE])
    assert drive_traffic(h, [10, 10, 10, 500, 10]) == []  # a jump in the 4th interval: not warmed up
    h = Harness([SPIKE])
    assert drive_traffic(h, [5] * 10 + [50, 5]) == []  # 10x the baseline, but under min_rate (60/min)


def test_each_consumer_has_its_own_baseline_and_idle_intervals_count_as_zero() -> None:
    h = Harness([{**SPIKE, "min_rate": 10}])
    for i in range(10):
        h.clock.t = T0 + i * 60 + 30
        for _ in range(1000):
            h.engine.observe_use("big", None, "203.0.113.9")
        for _ in range(10):
            h.engine.observe_use("small", None, "203.0.113.9")
        assert h.step() == []
    assert [a.data["group"] for a in drive_traffic(h, [200, 0], consumer="small", start=10)] == ["small"]
    # a consumer idle for hours comes back with a burst: its baseline has decayed toward zero
    fired = drive_traffic(h, [500, 0], consumer="big", start=400)
    assert [a.data["group"] for a in fired] == ["big"] and fired[0].data["evidence"]["baseline"] < 1


# -- new source country ----------------------------------------------------------------------------------

COUNTRY = {"name": "new-country", "builtin": "new_source_country"}


def use(h: Harness, t: float, *uses: tuple[str, str | None, str]) -> list[Event]:
    h.clock.t = t
    for consumer, key_id, ip in uses:
        h.engine.observe_use(consumer, key_id, ip)
    return h.step()


def test_iptocc_answers_public_addresses_and_none_for_private_ones() -> None:
    from bastion.alerts import default_geo

    assert [default_geo(ip) for ip in ("8.8.8.8", "81.2.69.142", "1.0.16.1")] == ["US", "GB", "JP"]
    assert default_geo("2001:4860:4860::8888") == "US"
    for private in ("10.1.2.3", "192.168.1.1", "127.0.0.1", "100.64.0.1", "::1", "fe80::1", "203.0.113.5"):
        assert default_geo(private) is None
    assert default_geo("not an address") is None


def test_the_first_country_is_the_baseline_and_a_new_one_fires() -> None:
    h = Harness([COUNTRY])
    assert use(h, T0, ("acme", "k1", "8.8.8.8")) == []
    assert use(h, T0 + 1, ("acme", "k1", "8.8.4.4"), ("acme", "k1", "10.0.0.1")) == []
    fired = use(h, T0 + 2, ("acme", "k1", "81.2.69.142"))
    assert len(fired) == 1
    alert = fired[0]
    assert alert.data["group"] == "key:k1" and alert.source_ip == "81.2.69.142"
    ev = alert.data["evidence"]
    assert ev["on"] == "country" and ev["country"] == "GB" and ev["ip"] == "81.2.69.142"
    assert ev["previous_countries"] == ["US"] and ev["known_countries"] == 1
    assert ev["consumer"] == "acme" and ev["key_id"] == "k1"
    # GB is now known: no second alert, even once the cooldown is over
    assert use(h, T0 + 3600, ("acme", "k1", "81.2.69.142")) == []


def test_same_country_from_a_new_address_does_not_fire() -> None:
    h = Harness([COUNTRY])
    assert use(h, T0, ("acme", "k1", "8.8.8.8")) == []
    assert use(h, T0 + 5, ("acme", "k1", "8.8.4.4"), ("acme", "k1", "2001:4860:4860::8888")) == []
    assert use(h, T0 + 6, ("acme", "k2", "1.0.16.1")) == []  # another key's first country: its baseline


def test_a_consumer_without_key_is_its_own_subject() -> None:
    h = Harness([COUNTRY])
    assert use(h, T0, ("jwt-user", None, "1.0.16.1")) == []
    fired = use(h, T0 + 1, ("jwt-user", None, "8.8.8.8"))
    assert [a.data["group"] for a in fired] == ["consumer:jwt-user"]


def test_on_ip_fires_on_a_new_address_including_private_ones() -> None:
    h = Harness([{**COUNTRY, "on": "ip"}])
    assert use(h, T0, ("acme", "k1", "10.0.0.1"), ("acme", "k1", "10.0.0.1")) == []
    assert use(h, T0 + 1, ("acme", "k1", "10.0.0.1")) == []
    fired = use(h, T0 + 2, ("acme", "k1", "10.0.0.2"))
    assert len(fired) == 1
    ev = fired[0].data["evidence"]
    assert ev["on"] == "ip" and ev["ip"] == "10.0.0.2" and ev["country"] is None
    assert ev["previous_addresses"] == ["10.0.0.1"]


def test_a_geo_lookup_that_fails_is_an_unknown_country() -> None:
    def broken(ip: str) -> str | None:
        raise RuntimeError("no data")

    h = Harness([COUNTRY], geo=broken)
    assert use(h, T0, ("acme", "k1", "8.8.8.8")) == [] and use(h, T0 + 1, ("acme", "k1", "1.0.16.1")) == []
    assert h.engine.stats["errors"] == 0


# -- one alert per event ---------------------------------------------------------------------------------


def undeclared(method: str, template: str, t: float = T0) -> Event:
    return new_event(
        "inventory.undeclared_endpoint",
        now=t,
        severity="warning",
        method=method,
        path=template,
        data={"method": method, "template": template, "count": 3},
    )


def test_undeclared_endpoint_alerts_per_method_and_template() -> None:
    h = Harness([{"name": "shadow", "builtin": "undeclared_endpoint"}])
    fired = h.feed([undeclared("GET", "/v1/admin/{id}"), undeclared("GET", "/v1/admin/{id}")])
    assert [a.data["group"] for a in fired] == ["GET /v1/admin/{id}"]
    assert fired[0].data["evidence"]["template"] == "/v1/admin/{id}"
    assert len(h.feed([undeclared("DELETE", "/v1/admin/{id}")])) == 1
    # near miss: a plain 404 is not an inventory finding
    denied = new_event("request.denied", now=T0, reason="route_not_found", path="/v1/x", data={"status": 404})
    assert h.feed([denied]) == []
    summary = new_event("inventory.undeclared_endpoint", now=T0, data={"more": 12, "not_recorded": 0})
    assert [a.data["group"] for a in h.feed([summary])] == ["*"]


def test_key_used_after_rotation_alerts_per_key() -> None:
    h = Harness([{"name": "old-key", "builtin": "key_used_after_rotation", "severity": "error"}])
    data = {"key_id": "k1", "new_key_id": "k2", "consumer": "acme", "grace_until": T0 + 3600}
    event = new_event(
        "api_key.used_after_rotation",
        now=T0,
        source_ip="203.0.113.9",
        actor="consumer:acme/key:k1",
        data=data,
    )
    fired = h.feed([event])
    assert [a.data["group"] for a in fired] == ["key:k1"] and fired[0].severity == "error"
    assert fired[0].data["evidence"]["new_key_id"] == "k2"
    rotated = new_event("api_key.rotated", now=T0, data={"key_id": "k3", "new_key_id": "k4"})
    assert h.feed([rotated]) == []  # near miss: rotating is not using


ADMIN = {
    "name": "admin-policy",
    "builtin": "admin_outside_policy",
    "hours": "08:00-19:00",
    "timezone": "Europe/Paris",
    "allow_ips": ["10.0.0.0/8"],
}


def admin(t: float, ip: str | None, type_: str = "admin.action") -> Event:
    actor = "admin:token" if type_ == "admin.action" else None
    return new_event(type_, now=t, source_ip=ip, actor=actor, data={"status": 200})


def test_admin_action_inside_hours_from_an_allowed_address_does_not_fire() -> None:
    h = Harness([ADMIN])
    assert h.feed([admin(T0 + 3600, "10.1.2.3")]) == []  # 10:00 in Paris (UTC+1 in January)


def test_admin_action_at_night_or_from_elsewhere_fires() -> None:
    h = Harness([ADMIN])
    fired = h.feed([admin(T0 - 6 * 3600, "10.1.2.3")])  # 03:00 in Paris
    assert [a.data["group"] for a in fired] == ["admin:token|outside_hours"]
    ev = fired[0].data["evidence"]
    assert ev["violations"] == ["outside_hours"] and ev["local_time"].startswith("2027-01-15 03:00")
    fired = h.feed([admin(T0 + 3600, "203.0.113.9")])
    assert [a.data["group"] for a in fired] == ["admin:token|ip_not_allowed"]
    fired = h.feed([admin(T0 + 13 * 3600, "198.51.100.1", "admin.auth_failed")])  # 22:00, outside
    assert [a.data["group"] for a in fired] == ["anonymous|outside_hours+ip_not_allowed"]
    assert fired[0].data["summary"].startswith("admin login failure")


def test_admin_hours_may_wrap_midnight() -> None:
    h = Harness([{"name": "night-ops", "builtin": "admin_outside_policy", "hours": "22:00-06:00"}])
    assert h.feed([admin(T0 - 5 * 3600, "203.0.113.9")]) == []  # 03:00 UTC: inside
    assert len(h.feed([admin(T0 + 4 * 3600, "203.0.113.9")])) == 1  # 12:00 UTC: outside


# -- when: counting rules --------------------------------------------------------------------------------


def denied(ip: str, t: float, severity: str = "warning", actor: str | None = None) -> Event:
    return new_event(
        "request.denied", now=t, severity=severity, source_ip=ip, actor=actor, reason="ip_denied", data={}
    )


def test_when_rule_counts_per_group() -> None:
    rule = {
        "name": "denials",
        "when": {"type": "request.", "count": 5, "within": "1m", "group_by": "source_ip"},
    }
    h = Harness([rule])
    events = [denied("203.0.113.1", T0 + i) for i in range(4)] + [
        denied("203.0.113.2", T0 + i) for i in range(4)
    ]
    assert h.feed(events, at=T0 + 5) == []
    fired = h.feed([denied("203.0.113.2", T0 + 6)], at=T0 + 6)
    assert [a.data["group"] for a in fired] == ["source_ip:203.0.113.2"]
    alert = fired[0]
    assert alert.data["detector"] == "when" and alert.source_ip == "203.0.113.2"
    ev = alert.data["evidence"]
    assert ev["count"] == 5 and ev["threshold"] == 5 and ev["window"] == 60 and ev["group_by"] == "source_ip"
    # the window slides: the first four of 203.0.113.1 are too old by now
    assert h.feed([denied("203.0.113.1", T0 + 70)], at=T0 + 70) == []


def test_when_rule_severity_floor_and_groups_read_from_the_actor() -> None:
    rule = {
        "name": "consumer-errors",
        "when": {
            "type": "request.denied",
            "count": 3,
            "within": "5m",
            "group_by": "consumer",
            "severity": "error",
        },
    }
    h = Harness([rule])
    actor = "consumer:acme/key:k1"
    events = [denied("203.0.113.1", T0, "warning", actor) for _ in range(5)]  # below the floor
    events += [denied("203.0.113.1", T0, "error") for _ in range(5)]  # no consumer: not counted
    assert h.feed(events) == []
    fired = h.feed([denied(f"203.0.113.{i}", T0 + 1, "critical", actor) for i in range(3)])
    assert [a.data["group"] for a in fired] == ["consumer:acme"]


def test_when_rule_without_group_by_counts_everything() -> None:
    h = Harness([{"name": "locked", "when": {"type": "auth.locked_out", "count": 2, "within": "1h"}}])
    event = new_event("auth.locked_out", now=T0, data={"subject": "source_ip"})
    fired = h.feed([event, event])
    assert [a.data["group"] for a in fired] == ["*"] and fired[0].source_ip is None


# -- the engine ------------------------------------------------------------------------------------------


def test_overflow_is_counted_and_types_no_rule_reads_are_ignored() -> None:
    h = Harness([STUFFING], queue_size=10)
    for i in range(15):
        h.engine.observe(failed("203.0.113.9", f"k{i}"))
    for _ in range(100):
        h.engine.observe(new_event("gateway.started", now=T0))
    stats = h.engine.stats
    assert stats["observed"] == 10 and stats["dropped"] == 5 and stats["queued"] == 10
    assert len(h.step()) == 1  # the ten that fit are ten distinct keys
    assert h.engine.stats["queued"] == 0


def test_an_engine_without_rules_ignores_everything() -> None:
    h = Harness([])
    h.engine.observe(failed("203.0.113.9", "k1"))
    h.engine.observe_use("acme", "k1", "8.8.8.8")
    assert h.step() == [] and h.engine.stats["observed"] == 0


def test_steps_are_bounded_and_the_rest_waits() -> None:
    h = Harness([{**STUFFING, "distinct": 2}], max_per_step=3, concurrency=2)
    for i in range(7):
        h.engine.observe(failed("203.0.113.9", f"k{i}"))
    h.step()
    assert h.engine.stats["queued"] == 4
    h.step()
    h.step()
    assert h.engine.stats["queued"] == 0 and h.engine.stats["fired"] == 1


class BrokenState(MemoryAlertState):
    async def add_distinct(self, key: str, member: str, now: float, window: float) -> int:
        raise StateUnavailable("redis: down")

    async def claim(self, key: str, now: float, ttl: float) -> bool:
        raise StateUnavailable("redis: down")


def test_a_state_that_fails_never_reaches_the_caller() -> None:
    h = Harness([STUFFING], state=BrokenState())
    assert h.feed([failed("203.0.113.9", f"k{i}") for i in range(10)]) == []
    assert h.engine.stats["errors"] == 10


def test_the_fallback_state_keeps_alerting_from_memory_and_counts_failures() -> None:
    h = Harness([STUFFING], state=FallbackAlertState(BrokenState()))
    assert len(h.feed([failed("203.0.113.9", f"k{i}") for i in range(10)])) == 1
    assert h.engine.stats["state_failures"] == 31 and h.engine.stats["errors"] == 0


class FlakyChannel:
    def __init__(self, name: str, failures: int, retry: bool = True) -> None:
        self.name = name
        self.failures = failures
        self.retry = retry
        self.attempts = 0
        self.sent: list[Event] = []

    async def send(self, alert: Event) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise DeliveryError("ConnectError" if self.retry else "http_404", retry=self.retry)
        self.sent.append(alert)

    async def aclose(self) -> None:
        return None


CHANNELS = [{"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s3cret"}]


def run_with_channel(channel: FlakyChannel) -> Harness:
    h = Harness(
        [{**STUFFING, "channels": ["ops"]}],
        channels={"ops": channel},
        channel_settings=CHANNELS,
        retry_delays=(0, 0, 0, 0),
    )

    async def scenario() -> None:
        for i in range(10):
            h.engine.observe(failed("203.0.113.9", f"k{i}"))
        assert len(await h.engine.step()) == 1
        await h.engine.aclose()

    asyncio.run(scenario())
    return h


def test_deliveries_retry_then_succeed() -> None:
    channel = FlakyChannel("ops", failures=3)
    h = run_with_channel(channel)
    assert channel.attempts == 4 and len(channel.sent) == 1
    assert h.engine.stats["deliveries"] == 1 and h.engine.stats["deliveries_failed"] == 0


def test_a_delivery_that_keeps_failing_becomes_an_event() -> None:
    channel = FlakyChannel("ops", failures=99)
    h = run_with_channel(channel)
    assert channel.attempts == 5  # bounded
    failures = [e for e in h.emitted if e.type == "alert.delivery_failed"]
    assert len(failures) == 1 and h.engine.stats["deliveries_failed"] == 1
    alert = h.fired()[0]
    assert failures[0].data == {
        "rule": "stuffing",
        "channel": "ops",
        "alert_id": alert.id,
        "error": "ConnectError",
        "attempts": 5,
    }
    assert failures[0].severity == "error" and failures[0].resource == "alert:stuffing"


def test_a_permanent_failure_is_not_retried() -> None:
    channel = FlakyChannel("ops", failures=99, retry=False)
    h = run_with_channel(channel)
    assert channel.attempts == 1
    assert [e.data["error"] for e in h.emitted if e.type == "alert.delivery_failed"] == ["http_404"]


# -- state and channel details ---------------------------------------------------------------------------


def test_memory_state_is_bounded() -> None:
    state = MemoryAlertState(max_keys=100, max_members=50)

    async def scenario() -> None:
        for i in range(1000):
            await state.add_distinct(f"k{i}", "m", T0, 60)
        assert len(state._short) == 100 and state.evicted == 900
        for i in range(500):
            n = await state.add_distinct("wide", f"m{i}", T0 + i / 1000, 60)
        assert n == 50
        seen = [await state.remember("seen", f"ip{i}", T0, 3600) for i in range(60)]
        assert seen[-1].known == 50 and seen[-1].new

    asyncio.run(scenario())


def test_claims_and_baselines_follow_the_given_clock() -> None:
    state = MemoryAlertState()

    async def scenario() -> None:
        assert await state.claim("c", T0, 10) and not await state.claim("c", T0 + 9.9, 10)
        assert await state.claim("c", T0 + 10, 10)
        await state.set_baseline("b", Baseline(1.5, 3, 7), T0, 100)
        assert await state.baseline("b", T0 + 99) == Baseline(1.5, 3, 7)
        assert await state.baseline("b", T0 + 100) is None

    asyncio.run(scenario())
    assert Baseline.load(Baseline(2.25, 4, 9).dump()) == Baseline(2.25, 4, 9)
    assert Baseline.load(b"garbage") is None


def test_key_parts_stay_short_and_printable() -> None:
    assert key_part("GET /v1/users/{id}") == "GET /v1/users/{id}"
    assert key_part("x" * 500).startswith("sha256:") and len(key_part("x" * 500)) == 39
    assert key_part("a\r\nb").startswith("sha256:")


def test_the_webhook_signature_is_the_standard_webhooks_example() -> None:
    key = standard_webhooks_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sig = sign_standard_webhook(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    raw = hmac.new(b"plain", b"id.1.body", hashlib.sha256).digest()
    assert sign_standard_webhook(b"plain", "id", "1", b"body") == "v1," + base64.b64encode(raw).decode()


def test_the_email_is_plain_text_with_a_safe_subject() -> None:
    h = Harness([{"name": "shadow", "builtin": "undeclared_endpoint"}])
    fired = h.feed([undeclared("GET", "/v1/a\r\nBcc: evil@example.com/{id}")])
    msg = email_message(fired[0], "bastion@example.com", ["ops@example.com", "sec@example.com"])
    assert msg["Subject"].startswith("[Bastion] shadow: undeclared endpoint GET /v1/a??Bcc")
    assert msg["Bcc"] is None and msg["To"] == "ops@example.com, sec@example.com"
    body = msg.get_content()
    assert fired[0].id in body and "Rule:      shadow (undeclared_endpoint)" in body
    assert "Sample events:" in body and msg.get_content_type() == "text/plain"


@pytest.mark.parametrize("secret", ["whsec_!!!notbase64", "whsec_"])
def test_a_broken_whsec_secret_is_refused_at_load(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_ secret must be followed by base64") as info:
        AlertSettings.model_validate(
            {"channels": [{**CHANNELS[0], "secret": secret}], "rules": [{**STUFFING, "channels": ["ops"]}]}
        )
    assert "channels.0.webhook.secret" in str(info.value)


def test_a_flood_of_short_lived_keys_cannot_evict_a_keys_history() -> None:
    """Made-up key ids (each a short-lived counter) fill the store: the countries seen for a real key (a
    long-lived set) stay, so a stolen key used from a new country still alerts."""
    state = MemoryAlertState(max_keys=100)

    async def scenario() -> None:
        await state.remember("seen:k1", "FR", T0, 90 * 86400)
        for i in range(1000):
            await state.add_distinct(f"cs:id:{i}", "10.0.0.1", T0 + i, 60)
        seen = await state.remember("seen:k1", "RU", T0 + 2000, 90 * 86400)
        assert seen.new and seen.known == 1 and seen.sample == ("FR",)

    asyncio.run(scenario())


def test_expired_entries_go_before_live_ones() -> None:
    state = MemoryAlertState(max_keys=10)

    async def scenario() -> None:
        for i in range(9):
            await state.claim(f"old{i}", T0, 10)  # all expired by T0 + 100
        assert await state.claim("live", T0 + 50, 3600)
        for i in range(5):
            await state.claim(f"new{i}", T0 + 100, 10)
        assert not await state.claim("live", T0 + 101, 3600)  # still held: the expired went first
        assert state.evicted == 0

    asyncio.run(scenario())


def test_a_lagging_caller_counts_only_up_to_its_own_now() -> None:
    state = MemoryAlertState()

    async def scenario() -> None:
        for i in range(9):
            await state.count("c", T0 + 200 + i, 60)
            await state.add_distinct("d", f"m{i}", T0 + 200 + i, 60)
        assert await state.count("c", T0, 60) == 1  # an event from 200 s earlier, seen late
        assert await state.add_distinct("d", "late", T0, 60) == 1

    asyncio.run(scenario())
