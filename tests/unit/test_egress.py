"""Egress policies without sockets: the config's refusals, operation rules, destination numbers, the URL
field check (with an injected resolver), the SMS pumping detector (with an injected clock), caps and the
outbound headers. The end-to-end behaviour is in tests/integration/test_egress*.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.checks.egress_caps import Cap, EgressCaps
from bastion.checks.egress_operations import OperationRules
from bastion.checks.egress_payload import NumberRefused, parse_destination
from bastion.checks.json_body import JsonLimits
from bastion.checks.outbound_urls import UrlFields, address_refused
from bastion.checks.sms_pumping import PumpingDetector, PumpingPolicy
from bastion.config import ConfigError, load_config_text
from bastion.core.decision import Context, Deny
from bastion.core.headers import Headers
from bastion.core.ratelimit import parse_limit
from bastion.core.request import RequestView
from bastion.core.router import Route
from bastion.egress import Outbound, OutboundHeaders
from bastion.state.memory import MemoryCounters, MemoryTallies

ROUTE = Route(
    id="egress:x", service="egress:x", template="/egress/{operation:path}", methods=frozenset({"POST"})
)


class FakeBody:
    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    @property
    def declared_length(self) -> int | None:
        return len(self.data)

    def cap(self, limit: int) -> None:
        return None

    async def read(self) -> bytes:
        return self.data

    def arrived(self) -> bytes | None:
        return None  # read() is the one way to get it here


def view(
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: FakeBody | None = None,
    query: str = "",
    request_id: str = "req-1",
) -> RequestView:
    from ipaddress import ip_address

    ip = ip_address("127.0.0.1")
    return RequestView(
        method=method,
        path=path,
        query=query,
        headers=Headers([("host", "gw.example"), *headers]),
        client_ip=ip,
        peer_ip=ip,
        scheme="https",
        host="gw.example",
        route=ROUTE,
        params={},
        body=body or FakeBody(),
        request_id=request_id,
        raw_path=path,
    )


ACCOUNT = "AC" + "0" * 32

BASE = """\
identity: {pepper: ${env:PEPPER}}
egress:
  - name: twilio
    listen_path: /egress/twilio
    target: https://api.twilio.com
    callers: [billing-service]
    credentials:
      basic: {username: ${env:SID}, password: ${env:SECRET}}
    allow:
      - {method: POST, path: "/2010-04-01/Accounts/{account}/Messages.json"}
"""
ENV = {"PEPPER": "p" * 32, "SID": "SK" + "1" * 32, "SECRET": "s" * 32}


def config_error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="bastion.yaml", env=env or ENV)
    return "\n".join(str(i) for i in info.value.issues)


class TestConfig:
    def test_the_base_config_loads_without_services(self) -> None:
        loaded = load_config_text(BASE, source="bastion.yaml", env=ENV)
        assert loaded.settings.services == []
        eg = loaded.settings.egress[0]
        assert eg.sms_pumping.sequential == 10 and eg.sms_pumping.block_for == 1800
        assert eg.block_private_urls and eg.tls_verify

    @pytest.mark.parametrize(
        "change,expected",
        [
            (("target: https://api.twilio.com", "target: http://api.twilio.com"), "https"),
            (("listen_path: /egress/twilio", "listen_path: /egress/twilio/"), "path prefix"),
            (("listen_path: /egress/twilio", "listen_path: /egress/../x"), "canonical"),
            (("callers: [billing-service]", "callers: []"), "callers"),
            (
                (
                    "      basic: {username: ${env:SID}, password: ${env:SECRET}}",
                    "      bearer: x\n      basic: {username: a, password: b}",
                ),
                "exactly one",
            ),
            (("    callers:", "    auth: none\n    callers:"), "auth: none"),
            (("    callers:", "    auth: [twilio_signature]\n    callers:"), "webhook sender"),
            (
                ('path: "/2010-04-01/Accounts/{account}/Messages.json"', 'path: "Messages.json"'),
                "path template",
            ),
        ],
    )
    def test_mistakes_are_config_errors(self, change: tuple[str, str], expected: str) -> None:
        text = BASE.replace(*change)
        assert text != BASE
        assert expected in config_error(text)

    def test_the_provider_secret_is_never_echoed_in_an_error(self) -> None:
        text = BASE.replace("allow:", "proxy: https://proxy:1\n    allow:")
        message = config_error(text)
        assert ENV["SECRET"] not in message and "proxy" in message

    def test_geo_countries_and_prefixes_are_checked(self) -> None:
        assert "country code" in config_error(BASE + "    geo: {fields: [To], allow_countries: [USA]}\n")
        assert "both allowed and denied" in config_error(
            BASE + "    geo: {fields: [To], allow_countries: [US], deny_countries: [US]}\n"
        )
        assert "deny_prefixes" in config_error(BASE + "    geo: {fields: [To], deny_prefixes: ['1900']}\n")

    def test_a_pkcv_key_must_be_an_rsa_private_key_of_2048_bits(self) -> None:
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        pem = small.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        text = BASE + "    pkcv: {credential_id: CR" + "a" * 32 + ", private_key: ${env:KEY}}\n"
        message = config_error(text, {**ENV, "KEY": pem})
        assert "2048" in message and "PRIVATE KEY" not in message
        assert "PEM RSA private key" in config_error(text, {**ENV, "KEY": "not a key"})

    def test_caps_per_destination_need_geo(self) -> None:
        message = config_error(BASE + "    caps: [{per: destination_country, limit: 5/hour}]\n")
        assert "need geo" in message
        load_config_text(BASE + "    caps: [{per: caller, limit: 5/hour}]\n", source="bastion.yaml", env=ENV)

    def test_overlapping_prefixes_and_routes_inside_a_prefix_are_refused(self) -> None:
        second = (
            BASE.split("egress:\n", 1)[1]
            .replace("name: twilio", "name: other")
            .replace("/egress/twilio", "/egress/twilio/sub")
        )
        assert "overlaps" in config_error(BASE + second)
        services = """services:
  - name: app
    upstream: http://127.0.0.1:9000
    routes:
      - {path: /egress/twilio/x, methods: [GET], auth: none}
"""
        assert "inside the egress route" in config_error(BASE + services)

    def test_delivery_reports_must_name_an_egress_route_with_geo_and_be_signed(self) -> None:
        services = """services:
  - name: app
    upstream: http://127.0.0.1:9000
    routes:
      - path: /status
        methods: [POST]
        auth: %s
        delivery_reports: twilio
"""
        assert "signed by the provider" in config_error(BASE + services % "none")
        assert "signed by the provider" in config_error(BASE + services % "[api_key]")
        signed = "[twilio_signature]\n        twilio: {auth_tokens: [t]}"
        assert "names no egress route with geo" in config_error(BASE + services % signed)


class TestOperationRules:
    rules = OperationRules(
        "/egress/twilio",
        allow=[("POST", "/2010-04-01/Accounts/{account}/Messages.json"), ("*", "/v1/Things/{sid}")],
        deny=[("POST", "/2010-04-01/Accounts/{account}/Calls.json"), ("*", "/v1/Things/Secret")],
    )

    def test_allow_matches_exactly_and_returns_placeholders(self) -> None:
        assert self.rules.decide("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json") == (
            True,
            {"account": ACCOUNT},
        )
        assert self.rules.decide("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json")[0] is False
        assert self.rules.decide("POST", f"/2010-04-01/Accounts/{ACCOUNT}/messages.json")[0] is False
        assert self.rules.decide("DELETE", "/v1/Things/T1")[0] is True  # "*": any method

    @pytest.mark.parametrize("spelling", ["Calls.json", "calls.json", "CALLS", "Calls.xml", "Calls.json/"])
    def test_deny_matches_any_spelling(self, spelling: str) -> None:
        rules = OperationRules(
            "/e",
            allow=[("POST", "/2010-04-01/Accounts/{a}/{resource}")],
            deny=[("POST", "/2010-04-01/Accounts/{a}/Calls.json")],
        )
        assert rules.decide("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json")[0] is True
        assert rules.decide("POST", f"/2010-04-01/Accounts/{ACCOUNT}/{spelling}")[0] is False

    def test_a_deny_beats_an_allow_that_also_matches(self) -> None:
        assert self.rules.decide("GET", "/v1/Things/Secret")[0] is False
        assert self.rules.decide("GET", "/v1/things/secret.json")[0] is False

    def test_the_operation_is_the_path_under_the_prefix(self) -> None:
        assert self.rules.operation("/egress/twilio/v1/x") == "/v1/x"
        assert self.rules.operation("/egress/twilio") == "/"


class TestDestinations:
    @pytest.mark.parametrize(
        "value,country,kind",
        [
            ("+14155552671", "US", "fixed_line_or_mobile"),
            ("+1 (415) 555-2671", "US", "fixed_line_or_mobile"),
            ("whatsapp:+447400123456", "GB", "mobile"),
            ("+19005550123", "US", "premium_rate"),
        ],
    )
    def test_numbers_are_parsed_and_classified(self, value: str, country: str, kind: str) -> None:
        dest = parse_destination(value, None, True)
        assert (dest.country, dest.type) == (country, kind)
        assert dest.e164.startswith("+")

    def test_national_forms_need_a_default_region(self) -> None:
        with pytest.raises(NumberRefused):
            parse_destination("020 7946 0018", None, True)
        assert parse_destination("07400 123456", "GB", True).e164 == "+447400123456"

    @pytest.mark.parametrize(
        "value", ["client:alice", "sip:a@b", "+1-800-FLOWERS", "", "+", "++1415", "1" * 70]
    )
    def test_what_cannot_be_judged_is_refused(self, value: str) -> None:
        with pytest.raises(NumberRefused):
            parse_destination(value, "US", True)


class TestAddresses:
    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "2002:7f00:1::",
            "224.0.0.1",
            "not-an-ip",
        ],
    )
    def test_internal_addresses_are_refused(self, address: str) -> None:
        assert address_refused(address)

    @pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
    def test_public_addresses_pass(self, address: str) -> None:
        assert not address_refused(address)


def _form_view(body: str, query: str = "") -> RequestView:
    return view(
        "POST",
        "/egress/x",
        headers=[("content-type", "application/x-www-form-urlencoded")],
        body=FakeBody(body.encode()),
        query=query,
    )


class TestUrlFields:
    def make(
        self, answers: dict[str, Sequence[str]], allow_hosts: list[str] | None = None
    ) -> tuple[UrlFields, list[str]]:
        asked: list[str] = []

        async def resolver(host: str) -> Sequence[str]:
            asked.append(host)
            if host not in answers:
                raise OSError("no such host")
            return answers[host]

        check = UrlFields(
            block_private=True, allow_hosts=allow_hosts, json_limits=JsonLimits(), resolver=resolver
        )
        return check, asked

    def run(self, check: UrlFields, body: str) -> Deny | None:
        return asyncio.run(check(_form_view(body), Context("r")))  # type: ignore[return-value]

    def test_a_name_resolving_inside_is_refused_and_cached(self) -> None:
        check, asked = self.make(
            {"hooks.example.com": ["93.184.216.34"], "rebind.example": ["93.184.216.34", "10.0.0.1"]}
        )
        assert self.run(check, "StatusCallback=https%3A%2F%2Fhooks.example.com%2Fs") is None
        refused = self.run(check, "Url=http%3A%2F%2Frebind.example%2F")
        assert isinstance(refused, Deny) and refused.evidence["cause"] == "private_address"
        self.run(check, "StatusCallback=https%3A%2F%2Fhooks.example.com%2Fs")
        assert asked.count("hooks.example.com") == 1

    def test_an_unresolvable_name_is_refused(self) -> None:
        check, _ = self.make({})
        refused = self.run(check, "Url=https%3A%2F%2Fnowhere.invalid%2F")
        assert isinstance(refused, Deny) and refused.evidence["cause"] == "unresolvable"

    def test_url_allow_hosts_restricts_to_named_hosts(self) -> None:
        check, _ = self.make(
            {"a.example.com": ["93.184.216.34"], "b.other.com": ["93.184.216.35"]}, ["*.example.com"]
        )
        assert self.run(check, "Url=https%3A%2F%2Fa.example.com%2F") is None
        refused = self.run(check, "Url=https%3A%2F%2Fb.other.com%2F")
        assert isinstance(refused, Deny) and refused.evidence["cause"] == "host_not_allowed"

    def test_values_that_are_not_urls_are_left_alone(self) -> None:
        check, asked = self.make({})
        assert self.run(check, "Body=see+http+docs&To=%2B14155552671") is None
        assert asked == []


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _dest_view(request_id: str) -> RequestView:
    return view("POST", "/egress/x", request_id=request_id)


class TestPumpingDetector:
    def detector(self, clock: FakeClock, **policy: Any) -> PumpingDetector:
        return PumpingDetector("twilio", PumpingPolicy(**policy), MemoryTallies(), clock)

    def send(self, det: PumpingDetector, to: str, n: int) -> tuple[Deny | None, Context]:
        ctx = Context(f"r{n}")
        ctx.notes["egress_destinations"] = [parse_destination(to, None, False)]
        verdict = asyncio.run(det(_dest_view(f"r{n}"), ctx))
        return verdict, ctx  # type: ignore[return-value]

    def test_the_block_ends_after_block_for(self) -> None:
        clock = FakeClock()
        det = self.detector(clock, volume=False)
        results = [self.send(det, f"+1415555{2600 + i}", i)[0] for i in range(10)]
        assert results[:9] == [None] * 9 and isinstance(results[9], Deny)
        clock.now += 1799
        assert isinstance(self.send(det, "+14155552650", 100)[0], Deny)
        clock.now += 2
        # The block is over, and the old numbers have left the 10-minute window: the range sends again.
        assert self.send(det, "+14155552651", 101)[0] is None

    def test_numbers_spread_over_more_than_the_window_do_not_trip(self) -> None:
        clock = FakeClock()
        det = self.detector(clock, volume=False)
        for i in range(20):
            clock.now += 120  # one every two minutes: never ten in ten minutes
            assert self.send(det, f"+1415555{2600 + i}", i)[0] is None

    def test_a_volume_spike_blocks_the_country(self) -> None:
        clock = FakeClock()
        det = self.detector(clock, sequential=10_000, volume_min_count=30, volume_factor=5.0)
        # A usual day: one message every 10 minutes to France for 12 hours.
        for i in range(72):
            clock.now += 600
            assert self.send(det, f"+336{10000000 + i * 7919:08d}", i)[0] is None
        # Then 40 in a few minutes.
        verdicts = []
        for i in range(40):
            clock.now += 5
            verdicts.append(self.send(det, f"+337{20000000 + i * 104729:08d}", 1000 + i))
        first = next(i for i, (v, _) in enumerate(verdicts) if v is not None)
        assert first == 28  # 30 in the last 10 minutes: the burst's 29th and the day's last message
        _, ctx = verdicts[first]
        assert ctx.notices[0][0] == "egress.pumping_detected"
        assert ctx.notices[0][1]["pattern"] == "volume_spike"
        assert isinstance(self.send(det, "+33612345678", 5000)[0], Deny)  # the whole country is paused
        assert self.send(det, "+14155552671", 5001)[0] is None

    def test_a_burst_without_history_is_reported_not_blocked(self) -> None:
        clock = FakeClock()
        det = self.detector(clock, sequential=10_000, volume_min_count=30, volume_factor=5.0)
        verdicts = []
        for i in range(40):
            clock.now += 5
            verdicts.append(self.send(det, f"+337{20000000 + i * 104729:08d}", i))
        assert all(v is None for v, _ in verdicts)
        notices = [n for _, ctx in verdicts for n in ctx.notices]
        assert notices and notices[0][1]["pattern"] == "volume_spike"
        assert "blocked_for" not in notices[0][1]

    def test_the_state_failing_refuses(self) -> None:
        class Broken(MemoryTallies):
            async def blocked_for(self, key: str, now: float) -> float:
                from bastion.core.ports import StateUnavailable

                raise StateUnavailable("down")

        det = PumpingDetector("twilio", PumpingPolicy(), Broken(), FakeClock())
        ctx = Context("r")
        ctx.notes["egress_destinations"] = [parse_destination("+14155552671", None, False)]
        verdict = asyncio.run(det(_dest_view("r"), ctx))
        assert isinstance(verdict, Deny) and verdict.status == 503


class TestOutbound:
    def test_only_the_short_list_of_caller_headers_goes_out_with_the_credential(self) -> None:
        out = Outbound(
            prefix="/e",
            credential=OutboundHeaders.basic("SK1", "secret"),
            forward=["x-trace"],
            clock=FakeClock(),
        )
        caller = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "twilio-python/9"),
            ("authorization", "Basic caller"),
            ("x-api-key", "bst_x"),
            ("cookie", "a=b"),
            ("x-trace", "1"),
            ("twilio-client-validation", "forged"),
        ]
        headers = Headers(out.headers(caller, "api.twilio.com"))
        assert headers.getall("authorization") == ["Basic U0sxOnNlY3JldA=="]
        assert headers.get("host") == "api.twilio.com"
        assert headers.get("x-trace") == "1" and headers.get("user-agent") == "twilio-python/9"
        for name in ("x-api-key", "cookie", "twilio-client-validation"):
            assert name not in headers
        assert "secret" not in repr(out.credential)


class TestCaps:
    def run(self, caps: EgressCaps, to: list[str], n: int, consumer: str = "app") -> Deny | None:
        from bastion.core.identity import Principal

        ctx = Context(f"r{n}")
        ctx.principal = Principal(consumer=consumer, scopes=frozenset(), method="api_key")
        ctx.notes["egress_destinations"] = [parse_destination(t, None, False) for t in to]
        return asyncio.run(caps(view("POST", "/egress/x", request_id=f"r{n}"), ctx))  # type: ignore[return-value]

    def test_prefix_number_and_caller_caps(self) -> None:
        clock = FakeClock()
        limit = parse_limit("2/hour")
        caps = EgressCaps(
            "twilio",
            [Cap("destination_prefix", limit, prefix_length=6), Cap("caller", parse_limit("5/hour"))],
            MemoryCounters(),
            clock,
        )
        assert self.run(caps, ["+14155552671"], 1) is None
        assert self.run(caps, ["+14155559999"], 2) is None  # same +141555 prefix
        refused = self.run(caps, ["+14155550000"], 3)
        assert isinstance(refused, Deny) and refused.status == 429 and refused.event == "egress.cap_exceeded"
        assert self.run(caps, ["+12025550143"], 4) is None  # another prefix
        assert self.run(caps, ["+16135550199"], 5) is None
        assert self.run(caps, ["+447400123456"], 6) is None  # the caller's 5th
        caller = self.run(caps, ["+33612345678"], 7)
        assert isinstance(caller, Deny) and caller.evidence["limit"] == "5/hour"
        assert self.run(caps, ["+33612345678"], 8, consumer="other") is None
        clock.now += 3601
        assert self.run(caps, ["+14155550000"], 9) is None

    def test_every_destination_of_a_request_counts(self) -> None:
        caps = EgressCaps("t", [Cap("destination", parse_limit("1/hour"))], MemoryCounters(), FakeClock())
        refused = self.run(caps, ["+14155552671", "+14155552671"], 1)
        assert isinstance(refused, Deny)


def test_the_config_names_every_number_type_the_parser_reports() -> None:
    from bastion.checks.egress_payload import _TYPE_NAMES
    from bastion.config.egress import NUMBER_TYPES

    assert set(_TYPE_NAMES.values()) == set(NUMBER_TYPES)


def test_caps_refuse_when_the_counters_cannot_answer() -> None:
    from bastion.core.ports import StateUnavailable

    class Down(MemoryCounters):
        async def hit(self, *args: Any, **kwargs: Any) -> Any:
            raise StateUnavailable("down")

    caps = EgressCaps("t", [Cap("caller", parse_limit("5/hour"))], Down(), FakeClock())
    ctx = Context("r")
    refused = asyncio.run(caps(view("POST", "/egress/x"), ctx))
    assert isinstance(refused, Deny) and refused.status == 503 and refused.code == "state_unavailable"
