"""Alert rules over admin accounts: ``admin_outside_policy`` reads the sign-in events of admin accounts
(password, email code, TOTP, SSO — passed or failed), and ``new_source_country`` follows each admin account
(and the admin token) through its sign-ins and calls. Pure: scripted events, memory state, a fake clock,
iptocc's embedded data for countries. No sockets, no sleeping."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bastion.alerts import MemoryAlertState, default_geo
from bastion.alerts.detectors import NewSourceCountry
from bastion.config.models import AlertSettings
from bastion.core.events import Event
from bastion.events.writer import new_event

from .test_alert_detectors import ADMIN, COUNTRY, T0, Harness

US, US2, GB, PRIVATE = "8.8.8.8", "8.8.4.4", "81.2.69.142", "10.0.0.7"


def sign_in(type_: str, t: float, ip: str | None, actor: str | None = "admin:alice", **data: Any) -> Event:
    return new_event(type_, now=t, source_ip=ip, actor=actor, data=data)


# -- admin_outside_policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "summary"),
    [
        ("admin_auth.signed_in", "admin sign-in"),
        ("admin_auth.first_factor_passed", "admin sign-in"),
        ("admin_auth.sign_in_failed", "admin login failure"),
        ("admin_auth.mfa_failed", "admin login failure"),
        ("admin_auth.sso_failed", "admin login failure"),
    ],
)
def test_a_sign_in_step_at_night_fires(type_: str, summary: str) -> None:
    h = Harness([ADMIN])
    fired = h.feed([sign_in(type_, T0 - 6 * 3600, "10.1.2.3")])  # 03:00 in Paris
    assert [a.data["group"] for a in fired] == ["admin:alice|outside_hours"]
    assert fired[0].data["summary"].startswith(summary)
    assert fired[0].data["evidence"]["event_type"] == type_


def test_an_sso_failure_from_outside_the_networks_fires_without_an_actor() -> None:
    h = Harness([ADMIN])
    fired = h.feed([sign_in("admin_auth.sso_failed", T0 + 3600, "203.0.113.9", actor=None)])
    assert [a.data["group"] for a in fired] == ["anonymous|ip_not_allowed"]
    assert fired[0].source_ip == "203.0.113.9"


def test_a_sign_in_inside_the_policy_does_not_fire() -> None:
    h = Harness([ADMIN])
    assert h.feed([sign_in("admin_auth.signed_in", T0 + 3600, "10.1.2.3", method="sso")]) == []


def test_a_sign_in_step_without_an_address_is_judged_on_its_hours_only() -> None:
    h = Harness([ADMIN])
    assert h.feed([sign_in("admin_auth.sign_in_failed", T0 + 3600, None)]) == []  # 10:00, no address
    fired = h.feed([sign_in("admin_auth.sign_in_failed", T0 - 6 * 3600, None, actor="admin:bob")])
    assert [a.data["group"] for a in fired] == ["admin:bob|outside_hours"]


def test_other_admin_auth_events_are_not_sign_ins() -> None:
    h = Harness([ADMIN])
    night = T0 - 6 * 3600
    quiet = [
        sign_in("admin_auth.session_expired", night, None),
        sign_in("admin_auth.sso_started", night, "203.0.113.9", actor=None),
        sign_in("admin_auth.code_sent", night, "203.0.113.9"),
    ]
    assert h.feed(quiet) == []


# -- new_source_country over admin accounts ----------------------------------------------------------


def detector(**params: Any) -> NewSourceCountry:
    rule = AlertSettings.model_validate({"rules": [{**COUNTRY, **params}]}).rules[0]
    return NewSourceCountry(rule, MemoryAlertState(), default_geo)


def see(d: NewSourceCountry, event: Event) -> list[Any]:
    return asyncio.run(d.on_event(event, event.time))


def test_an_admin_signing_in_from_a_new_country_is_a_finding() -> None:
    d = detector()
    assert see(d, sign_in("admin_auth.signed_in", T0, US, method="password")) == []  # the baseline
    assert see(d, sign_in("admin.action", T0 + 60, US2)) == []  # same country
    found = see(d, sign_in("admin_auth.signed_in", T0 + 3600, GB, method="sso"))
    assert len(found) == 1
    finding = found[0]
    assert finding.group == "admin:alice" and finding.source_ip == GB
    assert finding.summary == "admin:alice signed in from a new country GB"
    ev = finding.evidence
    assert (ev["country"], ev["previous_countries"], ev["known_countries"]) == ("GB", ["US"], 1)
    assert ev["event_type"] == "admin_auth.signed_in" and ev["actor"] == "admin:alice"
    assert see(d, sign_in("admin_auth.signed_in", T0 + 7200, GB)) == []  # GB is known now


def test_a_password_known_abroad_shows_before_the_second_factor() -> None:
    d = detector()
    see(d, sign_in("admin_auth.signed_in", T0, US))
    found = see(d, sign_in("admin_auth.first_factor_passed", T0 + 10, GB, method="password", next="mfa"))
    assert [f.group for f in found] == ["admin:alice"]


def test_each_admin_and_the_token_have_their_own_countries() -> None:
    d = detector()
    see(d, sign_in("admin_auth.signed_in", T0, US))
    assert see(d, sign_in("admin_auth.signed_in", T0 + 1, GB, actor="admin:bob")) == []  # bob's baseline
    see(d, sign_in("admin.action", T0 + 2, US, actor="admin:token"))
    found = see(d, sign_in("admin.action", T0 + 3, GB, actor="admin:token"))
    assert [(f.group, f.summary) for f in found] == [
        ("admin:token", "admin:token used the admin API from a new country GB")
    ]


def test_private_unknown_and_other_actors_are_ignored() -> None:
    d = detector()
    see(d, sign_in("admin_auth.signed_in", T0, US))
    assert see(d, sign_in("admin_auth.signed_in", T0 + 1, PRIVATE)) == []
    assert see(d, sign_in("admin_auth.signed_in", T0 + 2, None)) == []
    assert see(d, sign_in("admin_auth.signed_in", T0 + 3, GB, actor=None)) == []
    assert see(d, sign_in("admin_auth.signed_in", T0 + 4, GB, actor="consumer:acme/key:k1")) == []


def test_on_ip_follows_addresses() -> None:
    d = detector(on="ip")
    see(d, sign_in("admin_auth.signed_in", T0, PRIVATE))
    found = see(d, sign_in("admin_auth.signed_in", T0 + 1, "10.0.0.8"))
    assert [f.evidence["previous_addresses"] for f in found] == [[PRIVATE]]


def test_the_detector_names_the_admin_events_it_reads() -> None:
    assert set(detector().types) == {"admin_auth.signed_in", "admin_auth.first_factor_passed", "admin.action"}


def test_through_the_engine_an_admin_from_a_new_country_fires() -> None:
    h = Harness([COUNTRY])
    h.feed([sign_in("admin_auth.signed_in", T0, US)], at=T0)
    fired = h.feed([sign_in("admin_auth.signed_in", T0 + 60, GB)], at=T0 + 60)
    assert [a.data["group"] for a in fired] == ["admin:alice"]
