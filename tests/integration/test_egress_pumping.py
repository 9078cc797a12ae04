"""SMS pumping and caps on an egress route, end to end: the real ``twilio`` SDK sends through Bastion to a
fake api.twilio.com. A pumping run (sequential numbers in one range) fires the ``sms_pumping`` alert and
is cut off; ordinary traffic is not. Delivery reports (Twilio status callbacks, signed, routed through
Bastion) feed the low-completion detector. Each test uses its own number ranges or its own gateway, so
the detectors' memory does not leak between them.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from twilio.base.exceptions import TwilioException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from ._fake_twilio import ACCOUNT_SID, API_KEY_SECRET, API_KEY_SID, FakeTwilio
from ._identity import Reply, Stack, identity_stack
from .test_egress import ViaBastion

AUTH_TOKEN = "twilio-auth-token-for-tests-0001"  # a test fixture, not a secret
MESSAGES = f"/egress/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
ENV = {
    "TWILIO_API_KEY_SID": API_KEY_SID,
    "TWILIO_API_KEY_SECRET": API_KEY_SECRET,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
}


def config(provider_port: int, *, pumping: str = "", caps: str = "") -> str:
    return f"""
identity: {{pepper: ${{env:BASTION_PEPPER}}}}
alerts:
  rules:
    - {{name: pumping, builtin: sms_pumping}}
egress:
  - name: twilio
    listen_path: /egress/twilio
    target: http://127.0.0.1:{provider_port}
    callers: [billing-service]
    credentials:
      basic: {{username: ${{env:TWILIO_API_KEY_SID}}, password: ${{env:TWILIO_API_KEY_SECRET}}}}
    allow:
      - {{method: POST, path: "/2010-04-01/Accounts/{{account}}/Messages.json"}}
    geo: {{fields: [To], allow_countries: [US, CA, GB, FR]}}
{caps}
{pumping}
"""


ROUTES = """
      - path: /twilio/status
        methods: [POST]
        auth: [twilio_signature]
        twilio: {auth_tokens: ["${env:TWILIO_AUTH_TOKEN}"], replay_window: 0}
        delivery_reports: twilio
"""


@pytest.fixture()
def provider() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


def start(
    tmp: Path, provider: FakeTwilio, state: str = "memory://", **kw: str
) -> Iterator[tuple[Stack, Client, str]]:
    with identity_stack(tmp, ROUTES, config(provider.port, **kw), env=ENV, state=state) as stack:
        adm = stack.admin()
        adm.create_consumer("billing-service", actor="test")
        key = adm.create_key("billing-service", actor="test")[1]
        client = Client("billing-service", key, ACCOUNT_SID, http_client=ViaBastion(stack.port))
        yield stack, client, key


@pytest.fixture(params=["memory://", "redis://127.0.0.1:6379/0"], ids=["memory", "redis"])
def gateway(
    tmp_path: Path, provider: FakeTwilio, request: pytest.FixtureRequest
) -> Iterator[tuple[Stack, Client, str]]:
    """On the embedded state and on the real Redis (the detectors' tallies shared by every instance)."""
    yield from start(tmp_path, provider, state=request.param)


def sms(client: Client, to: str) -> int:
    """The status of sending one message (201 from the provider, or Bastion's refusal)."""
    try:
        client.messages.create(to=to, from_="+15005550006", body="Your code is 123456")
    except TwilioException as exc:
        return int(exc.status)  # type: ignore[attr-defined]
    return 201


class TestSequentialNumbers:
    def test_a_pumping_run_fires_the_alert_and_blocks_the_range(
        self, gateway: tuple[Stack, Client, str], provider: FakeTwilio
    ) -> None:
        stack, client, _ = gateway
        # Ten numbers that differ only in their last three digits, one after the other: the pumping shape.
        statuses = [sms(client, f"+1415555{2600 + i}") for i in range(12)]
        assert statuses[:9] == [201] * 9
        assert statuses[9:] == [429, 429, 429]  # the tenth trips the detector; the range stays blocked
        reached = {r.form()["To"] for r in provider.received}
        assert f"+1415555{2609}" not in reached and f"+1415555{2611}" not in reached
        detected = stack.wait_event("egress.pumping_detected")
        assert detected["data"]["pattern"] == "sequential_numbers"
        assert detected["data"]["range"] == "+14155552"
        assert detected["data"]["country"] == "US"
        blocked = stack.wait_event("egress.pumping_blocked")
        assert blocked["data"]["country"] == "US"
        alert = stack.wait_event("alert.fired", lambda e: e["data"]["rule"] == "pumping")
        assert alert["data"]["detector"] == "sms_pumping"
        assert alert["data"]["evidence"]["range"] == "+14155552"
        # Other ranges, even in the same country, are unaffected.
        assert sms(client, "+12025550143") == 201

    def test_the_block_answers_429_with_retry_after(self, gateway: tuple[Stack, Client, str]) -> None:
        stack, _, key = gateway
        headers = {"Authorization": "Basic " + base64.b64encode(f"billing-service:{key}".encode()).decode()}
        replies: list[Reply] = [
            stack.post_form(MESSAGES, {"To": f"+1613555{i:04d}", "Body": "x"}, headers)
            for i in range(100, 111)
        ]
        assert [r.status for r in replies][:9] == [201] * 9
        last = replies[-1]
        assert last.status == 429
        assert last.json()["code"] == "egress_pumping_blocked"
        assert 1700 <= int(last.headers["retry-after"]) <= 1800

    def test_ordinary_traffic_is_not_blocked(self, gateway: tuple[Stack, Client, str]) -> None:
        stack, client, _ = gateway
        # Forty messages to numbers spread across ranges and countries, some to the same people twice.
        numbers = [f"+1415555{2000 + 137 * i:04d}"[:12] for i in range(10)]
        numbers += [f"+447400{123456 + 9871 * i}" for i in range(10)]
        numbers += [f"+3361234{5678 + 1013 * i:04d}"[:12] for i in range(5)]
        statuses = [sms(client, n) for n in numbers + numbers[:15]]
        assert statuses == [201] * len(statuses)
        assert not [e for e in stack.events() if e["type"].startswith("egress.pumping")]


class TestNoAutoBlock:
    def test_without_auto_block_only_the_alert_is_raised(self, tmp_path: Path, provider: FakeTwilio) -> None:
        for stack, client, _ in start(tmp_path, provider, pumping="    sms_pumping: {auto_block: false}"):
            statuses = [sms(client, f"+1415555{2700 + i}") for i in range(12)]
            assert statuses == [201] * 12
            detected = stack.wait_event("egress.pumping_detected")
            assert "blocked_for" not in detected["data"]
            assert not stack.events("egress.pumping_blocked")


class TestCaps:
    def test_a_country_cap_refuses_the_next_message_with_429(
        self, tmp_path: Path, provider: FakeTwilio
    ) -> None:
        caps = "    caps:\n      - {per: destination_country, limit: 3/hour}\n"
        for stack, client, _ in start(tmp_path, provider, caps=caps):
            ca = [sms(client, n) for n in ("+16135550101", "+14165550102", "+16045550103", "+15145550104")]
            assert ca == [201, 201, 201, 429]
            assert sms(client, "+14155552671") == 201  # another country has its own count
            event = stack.wait_event("egress.cap_exceeded")
            assert event["data"]["country"] == "CA"
            assert event["data"]["limit"] == "3/hour"


class TestDeliveryReports:
    def test_low_completion_blocks_the_prefix(self, tmp_path: Path, provider: FakeTwilio) -> None:
        pumping = "    sms_pumping: {completion: {min_reports: 5, min_rate: 0.5}}"
        for stack, client, _ in start(tmp_path, provider, pumping=pumping):
            validator = RequestValidator(AUTH_TOKEN)
            url = f"http://127.0.0.1:{stack.port}/twilio/status"
            # Twilio reports five messages to one prefix: one delivered, four undelivered.
            for i, status in enumerate(["delivered", "undelivered", "undelivered", "failed", "undelivered"]):
                params = {
                    "MessageSid": f"SM{i:032x}",
                    "MessageStatus": status,
                    "To": f"+3361234{5600 + i * 7}",
                }
                signature = validator.compute_signature(url, params)
                reply = stack.post_form("/twilio/status", params, {"X-Twilio-Signature": signature})
                assert reply.status == 200, reply.body  # reports are delivered to the application as usual
            detected = stack.wait_event("egress.pumping_detected")
            assert detected["data"]["pattern"] == "low_completion"
            assert detected["data"]["prefix"] == "+336123"
            assert sms(client, "+33612349999") == 429  # same prefix: blocked
            assert sms(client, "+33698765432") == 201  # another prefix of the same country

    def test_unsigned_reports_are_refused_and_count_for_nothing(
        self, tmp_path: Path, provider: FakeTwilio
    ) -> None:
        pumping = "    sms_pumping: {completion: {min_reports: 2, min_rate: 0.5}}"
        for stack, client, _ in start(tmp_path, provider, pumping=pumping):
            for i in range(5):
                params = {"MessageSid": f"SM{i:032x}", "MessageStatus": "failed", "To": "+33612345678"}
                reply = stack.post_form("/twilio/status", params, {"X-Twilio-Signature": "forged"})
                assert reply.status == 403
            assert sms(client, "+33612345678") == 201
            assert not stack.events("egress.pumping_detected")


class TestTwoInstances:
    def test_a_run_split_across_two_gateways_on_redis_is_one_run(
        self, tmp_path: Path, provider: FakeTwilio
    ) -> None:
        """Two instances sharing Redis: five numbers of the range through each still trip the detector,
        and the block then holds on both."""
        shared = f"redis://127.0.0.1:6379/0\n  state_prefix: test-pump-{secrets.token_hex(6)}"
        one = start(tmp_path / "one", provider, state=shared)
        two = start(tmp_path / "two", provider, state=shared)
        (_, first, _), (_, second, _) = next(one), next(two)
        try:
            statuses = []
            for i in range(10):
                client = first if i % 2 == 0 else second
                statuses.append(sms(client, f"+1415555{2800 + i}"))
            assert statuses == [201] * 9 + [429]
            assert sms(first, "+14155552890") == 429
            assert sms(second, "+14155552891") == 429
        finally:
            for gen in (one, two):
                with contextlib.suppress(StopIteration):
                    next(gen)
