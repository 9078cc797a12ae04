"""The per-route checks called directly, with a hand-built RequestView: no server, no sockets.

Each check is a coroutine; ``asyncio.run`` drives it. The codes asserted here are the stable,
documented ones that clients and the event log see.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from ipaddress import ip_address, ip_network

import pytest

from bastion.checks.cors import Cors
from bastion.checks.ip_access import IpAccess
from bastion.checks.limits import BodyLimit
from bastion.core.chain import run_checks
from bastion.core.decision import LATER, Answer, Context, Deny, Verdict
from bastion.core.headers import Headers
from bastion.core.request import RequestView
from bastion.core.router import Route

ROUTE = Route(
    id="orders:GET POST /v1/orders",
    service="orders",
    template="/v1/orders",
    methods=frozenset({"GET", "POST"}),
)


class FakeBody:
    """The Body port: only ``declared_length`` matters to these checks; reading it would be a bug."""

    def __init__(self, declared_length: int | None) -> None:
        self._length = declared_length

    @property
    def declared_length(self) -> int | None:
        return self._length

    async def read(self) -> bytes:
        raise AssertionError("a check that only needs the declared length must not read the body")

    def arrived(self) -> bytes | None:
        raise AssertionError("a check that only needs the declared length must not read the body")


def view(
    *,
    method: str = "GET",
    client_ip: str = "127.0.0.1",
    headers: Sequence[tuple[str, str]] = (),
    length: int | None = None,
) -> RequestView:
    # Headers expects lower-cased names (the adapter lower-cases them once).
    hdrs = Headers([("host", "api.example"), *((n.lower(), v) for n, v in headers)])
    ip = ip_address(client_ip)
    return RequestView(
        method=method,
        path="/v1/orders",
        query="",
        headers=hdrs,
        client_ip=ip,
        peer_ip=ip,
        scheme="https",
        host="api.example",
        route=ROUTE,
        params={},
        body=FakeBody(length),
        request_id="req-1",
        raw_path="/v1/orders",
    )


def run(check: object, req: RequestView, ctx: Context | None = None) -> Verdict:
    ctx = ctx if ctx is not None else Context("req-1")
    return asyncio.run(check(req, ctx))  # type: ignore[operator]


def nets(*cidrs: str) -> list:
    return [ip_network(c) for c in cidrs]


# -- IpAccess -----------------------------------------------------------------------------------------


def assert_deny(verdict: Verdict, status: int, code: str) -> Deny:
    assert isinstance(verdict, Deny), verdict
    assert (verdict.status, verdict.code) == (status, code)
    return verdict


class TestIpAccess:
    def test_allow_list_admits_members(self) -> None:
        check = IpAccess(nets("127.0.0.0/8", "192.168.0.0/16"), [], scope="route")
        assert run(check, view(client_ip="127.0.0.1")) is None
        assert run(check, view(client_ip="192.168.44.5")) is None

    def test_allow_list_refuses_others(self) -> None:
        check = IpAccess(nets("127.0.0.0/8"), [], scope="route")
        deny = assert_deny(run(check, view(client_ip="8.8.8.8")), 403, "ip_not_allowed")
        assert deny.evidence["scope"] == "route"
        # The client learns nothing about the lists.
        assert "127" not in deny.detail

    def test_allow_list_boundaries(self) -> None:
        check = IpAccess(nets("10.1.0.0/16"), [], scope="route")
        assert run(check, view(client_ip="10.1.0.0")) is None
        assert run(check, view(client_ip="10.1.255.255")) is None
        assert_deny(run(check, view(client_ip="10.0.255.255")), 403, "ip_not_allowed")
        assert_deny(run(check, view(client_ip="10.2.0.0")), 403, "ip_not_allowed")

    def test_deny_list_refuses_members(self) -> None:
        check = IpAccess([], nets("10.0.0.0/8"), scope="service")
        deny = assert_deny(run(check, view(client_ip="10.20.30.40")), 403, "ip_denied")
        assert deny.evidence["scope"] == "service"

    def test_deny_list_admits_others(self) -> None:
        check = IpAccess([], nets("10.0.0.0/8"), scope="route")
        assert run(check, view(client_ip="11.0.0.1")) is None
        assert run(check, view(client_ip="127.0.0.1")) is None

    def test_deny_wins_over_allow(self) -> None:
        check = IpAccess(nets("10.0.0.0/8"), nets("10.9.0.0/16"), scope="route")
        assert run(check, view(client_ip="10.1.1.1")) is None
        assert_deny(run(check, view(client_ip="10.9.1.1")), 403, "ip_denied")
        assert_deny(run(check, view(client_ip="11.0.0.1")), 403, "ip_not_allowed")

    def test_deny_wins_when_both_lists_hold_the_same_network(self) -> None:
        check = IpAccess(nets("10.0.0.0/8"), nets("10.0.0.0/8"), scope="route")
        assert_deny(run(check, view(client_ip="10.0.0.1")), 403, "ip_denied")

    def test_empty_lists_allow_everyone_and_are_falsy(self) -> None:
        check = IpAccess([], [], scope="route")
        assert not check  # the compiler leaves an empty check out of the chain
        for ip in ("127.0.0.1", "8.8.8.8", "::1", "2001:db8::1"):
            assert run(check, view(client_ip=ip)) is None

    def test_non_empty_lists_are_truthy(self) -> None:
        assert IpAccess(nets("10.0.0.0/8"), [], scope="route")
        assert IpAccess([], nets("10.0.0.0/8"), scope="route")

    def test_ipv6_allow(self) -> None:
        check = IpAccess(nets("2001:db8::/32", "::1/128"), [], scope="route")
        assert run(check, view(client_ip="2001:db8:1::5")) is None
        assert run(check, view(client_ip="::1")) is None
        assert_deny(run(check, view(client_ip="2001:db9::1")), 403, "ip_not_allowed")
        # An IPv4 client is not in an IPv6-only allow list.
        assert_deny(run(check, view(client_ip="127.0.0.1")), 403, "ip_not_allowed")

    def test_ipv6_deny(self) -> None:
        check = IpAccess([], nets("fd00::/8"), scope="route")
        assert_deny(run(check, view(client_ip="fd12:3456::1")), 403, "ip_denied")
        assert run(check, view(client_ip="fe80::1")) is None

    def test_ipv4_mapped_address_matches_ipv4_deny_list(self) -> None:
        # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; the IPv4 rule must still apply.
        check = IpAccess([], nets("10.0.0.0/8"), scope="route")
        assert_deny(run(check, view(client_ip="::ffff:10.1.2.3")), 403, "ip_denied")
        assert run(check, view(client_ip="::ffff:11.1.2.3")) is None

    def test_ipv4_mapped_address_matches_ipv4_allow_list(self) -> None:
        check = IpAccess(nets("127.0.0.0/8"), [], scope="route")
        assert run(check, view(client_ip="::ffff:127.0.0.1")) is None
        assert_deny(run(check, view(client_ip="::ffff:8.8.8.8")), 403, "ip_not_allowed")

    def test_repeated_lookups_give_the_same_answer(self) -> None:
        # Membership is cached per address; a cached "no" must stay "no" and a "yes" stay "yes".
        check = IpAccess(nets("127.0.0.0/8"), nets("127.0.0.2/32"), scope="route")
        for _ in range(3):
            assert run(check, view(client_ip="127.0.0.1")) is None
            assert_deny(run(check, view(client_ip="127.0.0.2")), 403, "ip_denied")
            assert_deny(run(check, view(client_ip="8.8.8.8")), 403, "ip_not_allowed")

    def test_does_not_touch_the_context(self) -> None:
        ctx = Context("req-1")
        run(IpAccess([], nets("10.0.0.0/8"), scope="route"), view(client_ip="10.0.0.1"), ctx)
        assert ctx.response_headers == []


# -- BodyLimit ----------------------------------------------------------------------------------------


class TestBodyLimit:
    def test_declared_length_over_the_limit(self) -> None:
        deny = assert_deny(run(BodyLimit(16384), view(method="POST", length=16385)), 413, "body_too_large")
        assert deny.evidence["max_body"] == 16384

    def test_declared_length_at_the_limit_passes(self) -> None:
        assert run(BodyLimit(16384), view(method="POST", length=16384)) is None

    def test_small_and_empty_bodies_pass(self) -> None:
        assert run(BodyLimit(16384), view(method="POST", length=1)) is None
        assert run(BodyLimit(16384), view(method="POST", length=0)) is None

    def test_zero_limit_refuses_any_body(self) -> None:
        assert_deny(run(BodyLimit(0), view(method="POST", length=1)), 413, "body_too_large")
        assert run(BodyLimit(0), view(method="POST", length=0)) is None

    def test_chunked_body_passes_the_check(self) -> None:
        # No declared length: the data plane counts the bytes while streaming, against route.max_body.
        assert run(BodyLimit(16384), view(method="POST", length=None)) is None

    def test_huge_declared_length(self) -> None:
        assert_deny(run(BodyLimit(1 << 20), view(method="PUT", length=1 << 62)), 413, "body_too_large")


# -- decided at once (decide_now) -----------------------------------------------------------------------


class Recorder:
    """A check that says what it was asked: ``now`` is what decide_now returns (LATER: it must wait),
    ``later`` what the awaited check returns."""

    name = "recorder"

    def __init__(self, calls: list[str], label: str, now: object, later: Verdict = None) -> None:
        self.calls, self.label, self.now, self.later = calls, label, now, later

    def decide_now(self, req: RequestView, ctx: Context) -> object:
        self.calls.append(f"{self.label}:now")
        return self.now

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        self.calls.append(f"{self.label}:awaited")
        return self.later


class Awaited:
    """A check with no decide_now: always awaited."""

    name = "awaited"

    def __init__(self, calls: list[str], verdict: Verdict = None) -> None:
        self.calls, self.verdict = calls, verdict

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        self.calls.append("awaited")
        return self.verdict


class TestDecidedAtOnce:
    """A check may decide without being awaited (``decide_now``); the chain awaits it only on LATER."""

    def test_the_chain_awaits_only_what_must_wait(self) -> None:
        calls: list[str] = []
        no = Deny(403, "no", "No.")
        checks = (
            Recorder(calls, "a", None),  # passes at once
            Recorder(calls, "b", LATER),  # must wait: awaited, passes
            Awaited(calls),
            Recorder(calls, "c", LATER, later=no),  # waits, then refuses: the chain ends there
            Recorder(calls, "d", None),
        )
        assert asyncio.run(run_checks(checks, view(), Context("r"))) is no
        assert calls == ["a:now", "b:now", "b:awaited", "awaited", "c:now", "c:awaited"]
        calls.clear()
        refused_now = (Recorder(calls, "a", no), Recorder(calls, "b", None))
        assert asyncio.run(run_checks(refused_now, view(), Context("r"))) is no
        assert calls == ["a:now"]  # decided at once, never awaited; nothing after it runs

    def test_what_is_left_is_awaited_not_the_whole_check(self) -> None:
        """A check with decide_later: after LATER the chain awaits that, not the check (whose __call__ would
        do decide_now's work again)."""
        calls: list[str] = []

        class Split(Recorder):
            async def decide_later(self, req: RequestView, ctx: Context) -> Verdict:
                self.calls.append(f"{self.label}:later")
                return self.later

        no = Deny(403, "no", "No.")
        split = Split(calls, "s", LATER, later=no)
        assert asyncio.run(run_checks((split,), view(), Context("r"))) is no
        assert calls == ["s:now", "s:later"]
        route = dataclasses.replace(ROUTE, checks=(split,))
        assert route.steps == ((split.decide_now, split.decide_later),)

    def test_a_route_pairs_each_check_with_its_decide_now(self) -> None:
        calls: list[str] = []
        quick, slow = Recorder(calls, "q", None), Awaited(calls)
        route = dataclasses.replace(ROUTE, checks=(quick, slow))
        assert route.steps == ((quick.decide_now, quick), (None, slow))
        assert dataclasses.replace(route, checks=(slow,)).steps == ((None, slow),)  # derived again
        assert ROUTE.steps == ()

    @pytest.mark.parametrize(
        "check",
        [
            BodyLimit(16),
            IpAccess(nets("10.0.0.0/8"), [], scope="route"),
            IpAccess([], nets("192.0.2.0/24"), scope="service"),
        ],
    )
    def test_at_once_or_awaited_the_same_verdict(self, check: object) -> None:
        for req in (
            view(length=None),
            view(method="POST", length=16),
            view(method="POST", length=17),
            view(client_ip="10.1.2.3"),
            view(client_ip="192.0.2.7", length=17),
            view(client_ip="198.51.100.1"),
        ):
            now = check.decide_now(req, Context("r"))  # type: ignore[attr-defined]
            assert now is not LATER  # these never wait
            assert now == run(check, req)


# -- CORS ---------------------------------------------------------------------------------------------

APP = "https://app.example"
EVIL = "https://evil.example"


def cors(**kw: object) -> Cors:
    args: dict[str, object] = {
        "allow_origins": [APP],
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["content-type", "x-trace"],
        "max_age": 600.0,
    }
    args.update(kw)
    return Cors(**args)  # type: ignore[arg-type]


def preflight(origin: str = APP, method: str = "POST", req_headers: str | None = None) -> RequestView:
    headers = [("origin", origin), ("access-control-request-method", method)]
    if req_headers is not None:
        headers.append(("access-control-request-headers", req_headers))
    return view(method="OPTIONS", headers=headers)


def header_map(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        assert name not in out, f"{name} sent twice"
        out[name] = value
    return out


class TestCorsPreflight:
    def test_answered_at_the_gateway(self) -> None:
        verdict = run(cors(), preflight(req_headers="Content-Type, X-Trace"))
        assert isinstance(verdict, Answer)
        assert verdict.status == 204
        assert verdict.body == b""
        h = header_map(verdict.headers)
        assert h["access-control-allow-origin"] == APP
        assert set(h["access-control-allow-methods"].replace(" ", "").split(",")) == {"GET", "POST"}
        allowed_headers = set(h["access-control-allow-headers"].replace(" ", "").split(","))
        assert allowed_headers == {"content-type", "x-trace"}
        assert h["access-control-max-age"] == "600"
        assert "origin" in h["vary"].lower()
        assert "access-control-allow-credentials" not in h

    def test_without_requested_headers(self) -> None:
        verdict = run(cors(), preflight(method="GET"))
        assert isinstance(verdict, Answer) and verdict.status == 204
        assert header_map(verdict.headers)["access-control-allow-origin"] == APP

    def test_origin_compared_case_insensitively(self) -> None:
        verdict = run(cors(allow_origins=["https://App.Example"]), preflight(origin=APP))
        assert isinstance(verdict, Answer) and verdict.status == 204

    def test_bad_origin(self) -> None:
        assert_deny(run(cors(), preflight(origin=EVIL)), 403, "cors_preflight_denied")

    def test_origin_must_match_exactly(self) -> None:
        # Suffix/prefix tricks and a different scheme or port are different origins.
        for origin in (
            "https://app.example.evil.example",
            "http://app.example",
            "https://app.example:8443",
            "https://xapp.example",
            "null",
        ):
            assert_deny(run(cors(), preflight(origin=origin)), 403, "cors_preflight_denied")

    def test_bad_method(self) -> None:
        assert_deny(run(cors(), preflight(method="DELETE")), 403, "cors_preflight_denied")

    def test_bad_header(self) -> None:
        verdict = run(cors(), preflight(req_headers="content-type, authorization"))
        assert_deny(verdict, 403, "cors_preflight_denied")

    def test_wildcard_headers_allow_any(self) -> None:
        verdict = run(cors(allow_headers=["*"]), preflight(req_headers="x-anything"))
        assert isinstance(verdict, Answer) and verdict.status == 204

    def test_credentials_echo_the_exact_origin(self) -> None:
        verdict = run(cors(allow_credentials=True), preflight())
        assert isinstance(verdict, Answer)
        h = header_map(verdict.headers)
        assert h["access-control-allow-origin"] == APP
        assert h["access-control-allow-credentials"] == "true"

    def test_wildcard_without_credentials(self) -> None:
        verdict = run(cors(allow_origins=["*"]), preflight(origin=EVIL))
        assert isinstance(verdict, Answer)
        assert header_map(verdict.headers)["access-control-allow-origin"] == "*"

    def test_wildcard_with_credentials_never_sends_star(self) -> None:
        # The loader refuses this combination; the check still must never pair "*" with credentials.
        verdict = run(cors(allow_origins=["*"], allow_credentials=True), preflight(origin=EVIL))
        assert isinstance(verdict, Answer)
        h = header_map(verdict.headers)
        assert h["access-control-allow-origin"] == EVIL
        assert h["access-control-allow-credentials"] == "true"

    def test_options_without_request_method_is_not_a_preflight(self) -> None:
        # A plain OPTIONS from an allowed origin is an actual request: headers added, nothing answered.
        ctx = Context("req-1")
        assert run(cors(), view(method="OPTIONS", headers=[("origin", APP)]), ctx) is None
        assert ("access-control-allow-origin", APP) in ctx.response_headers

    def test_preflight_does_not_touch_the_context(self) -> None:
        ctx = Context("req-1")
        run(cors(), preflight(), ctx)
        assert ctx.response_headers == []


class TestCorsActualRequest:
    def test_allowed_origin_adds_headers(self) -> None:
        ctx = Context("req-1")
        assert run(cors(expose_headers=["x-total"]), view(headers=[("origin", APP)]), ctx) is None
        h = header_map(ctx.response_headers)
        assert h["access-control-allow-origin"] == APP
        assert "origin" in h["vary"].lower()
        assert h["access-control-expose-headers"] == "x-total"
        assert "access-control-allow-credentials" not in h
        assert "access-control-allow-methods" not in h  # preflight-only

    def test_other_origin_refused(self) -> None:
        ctx = Context("req-1")
        verdict = run(cors(), view(method="POST", headers=[("origin", EVIL)]), ctx)
        assert_deny(verdict, 403, "cors_origin_denied")
        assert ctx.response_headers == []

    def test_no_origin_is_not_cors(self) -> None:
        ctx = Context("req-1")
        assert run(cors(), view(), ctx) is None
        assert ctx.response_headers == []

    def test_credentials_echo_the_exact_origin(self) -> None:
        ctx = Context("req-1")
        assert run(cors(allow_credentials=True), view(headers=[("origin", APP)]), ctx) is None
        h = header_map(ctx.response_headers)
        assert h["access-control-allow-origin"] == APP
        assert h["access-control-allow-credentials"] == "true"

    def test_wildcard_without_credentials(self) -> None:
        ctx = Context("req-1")
        assert run(cors(allow_origins=["*"]), view(headers=[("origin", EVIL)]), ctx) is None
        h = header_map(ctx.response_headers)
        assert h["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in h

    def test_wildcard_with_credentials_never_sends_star(self) -> None:
        ctx = Context("req-1")
        check = cors(allow_origins=["*"], allow_credentials=True)
        assert run(check, view(headers=[("origin", EVIL)]), ctx) is None
        assert header_map(ctx.response_headers)["access-control-allow-origin"] == EVIL

    @pytest.mark.parametrize("method", ["GET", "POST"])
    def test_method_does_not_matter_for_actual_requests(self, method: str) -> None:
        # Route methods are the router's business (405); CORS only judges the origin here.
        ctx = Context("req-1")
        assert run(cors(), view(method=method, headers=[("origin", APP)]), ctx) is None
