"""Signed requests, pure: every test vector of anchors.md §4.1 (X-Twilio-Signature) and §4.2 (PKCV) verbatim,
the published Standard Webhooks and GitHub vectors, and the three checks driven with a hand-built request
and an injected clock (no server, no sleeping)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

import pytest

from bastion.checks.hmac_webhook import PRESETS, HmacWebhook, custom_scheme, standard_webhooks_secret
from bastion.checks.pkcv import Pkcv, canonical_java, canonical_python, request_hash
from bastion.checks.twilio_signature import (
    TwilioSignature,
    signature_settings,
    twilio_signature,
    url_candidates,
)
from bastion.core.decision import Context, Deny, Verdict
from bastion.core.headers import Headers
from bastion.core.identity import AuthFailure, Principal
from bastion.core.ports import StateUnavailable
from bastion.core.request import BodyReadError, RequestView
from bastion.core.router import Route
from bastion.state.memory import MemoryReplayCache

ROUTE = Route(id="hooks:POST /hooks/sms", service="hooks", template="/hooks/sms", methods=frozenset({"POST"}))
FORM = "application/x-www-form-urlencoded"


class Body:
    """The Body port over fixed bytes; counts reads (a check reads at most once)."""

    def __init__(self, data: bytes = b"", error: BodyReadError | None = None) -> None:
        self.data = data
        self.error = error
        self.reads = 0

    @property
    def declared_length(self) -> int | None:
        return len(self.data)

    def cap(self, limit: int) -> None:
        return None

    async def read(self) -> bytes:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.data

    def arrived(self) -> bytes | None:
        return None  # as a body still on its way: read() is counted


def view(
    *,
    method: str = "POST",
    raw_path: str = "/hooks/sms",
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    body: Body | None = None,
    scheme: str = "https",
    host: str = "mycompany.com",
) -> RequestView:
    ip = ip_address("203.0.113.7")
    return RequestView(
        method=method,
        path=raw_path,
        query=query,
        headers=Headers([("host", host), *((n.lower(), v) for n, v in headers)]),
        client_ip=ip,
        peer_ip=ip,
        scheme=scheme,
        host=host,
        route=ROUTE,
        params={},
        body=body if body is not None else Body(),
        request_id="req-1",
        raw_path=raw_path,
    )


def run(check: Any, req: RequestView, ctx: Context | None = None) -> Verdict:
    return asyncio.run(check(req, ctx if ctx is not None else Context("req-1")))


def cause(verdict: Verdict) -> str:
    assert isinstance(verdict, Deny), verdict
    return str(verdict.evidence["cause"])


# -- anchors.md §4.1: X-Twilio-Signature -------------------------------------------------------------

TOKEN = b"12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": ["CA1234567890ABCDE"],
    "Digits": ["1234"],
    "From": ["+14158675309"],
    "To": ["+18005551212"],
    "Caller": ["+14158675309"],
}
JSON_BODY = b'{"property": "value", "boolean": true}'
JSON_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"

VECTORS = [
    ("url as given", URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    (
        "https + :443",
        "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        PARAMS,
        "kvajT1Ptam85bY51eRf/AJRuM3w=",
    ),
    ("http + :80", "http://mycompany.com:80/myapp.php?foo=1&bar=2", PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    (
        "http + :1234",
        "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
        PARAMS,
        "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
    ),
    (
        "multi-valued",
        URL,
        {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234", "1234"]},
        "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
    ),
    ("json via bodySHA256", URL + "&bodySHA256=" + JSON_HASH, {}, "a9nBmqA0ju/hNViExpshrM61xv4="),
]


@pytest.mark.parametrize(("case", "url", "params", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_twilio_vectors(case: str, url: str, params: dict[str, list[str]], expected: str) -> None:
    assert twilio_signature(TOKEN, url, params) == expected


def test_twilio_documented_example() -> None:
    # twilio.com/docs/usage/security#validating-requests (reliability.md §C): different caller numbers.
    params = {
        "CallSid": ["CA1234567890ABCDE"],
        "Caller": ["+12349013030"],
        "Digits": ["1234"],
        "From": ["+12349013030"],
        "To": ["+18005551212"],
    }
    assert twilio_signature(TOKEN, URL, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_json_body_hash_vector() -> None:
    assert hashlib.sha256(JSON_BODY).hexdigest() == JSON_HASH


def test_url_candidates_both_schemes() -> None:
    assert url_candidates(URL) == [URL, "https://mycompany.com:443/myapp.php?foo=1&bar=2"]
    assert url_candidates("http://mycompany.com:80/a") == [
        "http://mycompany.com:80/a",
        "http://mycompany.com/a",
    ]
    assert url_candidates("http://mycompany.com/a") == ["http://mycompany.com/a", "http://mycompany.com:80/a"]
    assert url_candidates("http://[::1]:8080/a?x=1") == ["http://[::1]:8080/a?x=1", "http://[::1]/a?x=1"]


def test_signature_settings_header() -> None:
    assert signature_settings(None) == (None, "HMAC_SHA1")
    assert signature_settings("key=ks_1,algorithm=HMAC_SHA256") == ("ks_1", "HMAC_SHA256")
    assert signature_settings(" algorithm = hmac_sha256 , key = k ") == ("k", "HMAC_SHA256")


def form_body(params: dict[str, list[str]]) -> bytes:
    from urllib.parse import urlencode

    return urlencode([(k, v) for k, vs in params.items() for v in vs]).encode()


def twilio_check(**kw: Any) -> TwilioSignature:
    return TwilioSignature([TOKEN], **kw)


@pytest.mark.parametrize(("case", "url", "params", "expected"), VECTORS[:5], ids=[v[0] for v in VECTORS[:5]])
def test_twilio_check_accepts_each_vector(
    case: str, url: str, params: dict[str, list[str]], expected: str
) -> None:
    # The request arrives at the URL without a default port; the vector may have signed it with one.
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    public = f"{parts.scheme}://{parts.netloc}{parts.path}"
    body = Body(form_body(params))
    req = view(
        query=parts.query, headers=[("X-Twilio-Signature", expected), ("Content-Type", FORM)], body=body
    )
    assert run(twilio_check(public_url=public), req) is None
    assert body.reads == 1


def test_twilio_check_json_vector_and_tampered_body() -> None:
    query = "foo=1&bar=2&bodySHA256=" + JSON_HASH
    sig = "a9nBmqA0ju/hNViExpshrM61xv4="
    headers = [("X-Twilio-Signature", sig), ("Content-Type", "application/json")]
    check = twilio_check(public_url="https://mycompany.com/myapp.php")
    assert run(check, view(query=query, headers=headers, body=Body(JSON_BODY))) is None
    tampered = JSON_BODY.replace(b"true", b"fals")
    assert cause(run(check, view(query=query, headers=headers, body=Body(tampered)))) == "body_hash_mismatch"


def test_twilio_url_from_request_and_public_base() -> None:
    sig = twilio_signature(TOKEN, "https://hooks.example.com/base/hooks/sms?x=1", {})
    req = view(query="x=1", headers=[("X-Twilio-Signature", sig)], host="10.0.0.5:8080", scheme="http")
    assert cause(run(twilio_check(), req)) == "signature_mismatch"
    assert run(twilio_check(public_base_url="https://hooks.example.com/base/"), req) is None
    direct = twilio_signature(TOKEN, "http://10.0.0.5:8080/hooks/sms?x=1", {})
    req2 = view(query="x=1", headers=[("X-Twilio-Signature", direct)], host="10.0.0.5:8080", scheme="http")
    assert run(twilio_check(), req2) is None


def test_twilio_refusals() -> None:
    params = {"Body": ["hello"], "From": ["+15550001111"]}
    url = "https://mycompany.com/hooks/sms"
    good = twilio_signature(TOKEN, url, params)
    check = twilio_check()

    def send(
        sig: str | None, body: bytes, ctype: str = FORM, extra: Sequence[tuple[str, str]] = ()
    ) -> Verdict:
        headers = [("Content-Type", ctype), *extra]
        if sig is not None:
            headers.append(("X-Twilio-Signature", sig))
        return run(check, view(headers=headers, body=Body(body)))

    assert send(good, form_body(params)) is None
    assert cause(send(None, form_body(params))) == "signature_missing"
    assert cause(send("  ", form_body(params))) == "signature_missing"
    assert cause(send(good, form_body({**params, "Body": ["hullo"]}))) == "signature_mismatch"
    assert cause(send(good, form_body({**params, "Extra": ["1"]}))) == "signature_mismatch"
    assert cause(send(good, b"Body=hello&From=%2B15550001111&From=%FF")) == "body_malformed"
    # Signed as a form, sent as JSON: the body is covered by nothing.
    assert cause(send(good, b'{"Body": "hello"}', "application/json")) == "body_unsigned"
    wrong = twilio_signature(b"54321", url, params)
    verdict = send(wrong, form_body(params))
    assert cause(verdict) == "signature_mismatch"
    assert (
        isinstance(verdict, Deny) and verdict.status == 403 and verdict.event == "webhook.signature_invalid"
    )
    assert verdict.code == "webhook_signature_invalid"


def test_twilio_rotation_and_shared_key() -> None:
    params = {"Body": ["x"]}
    url = "https://mycompany.com/hooks/sms"
    check = TwilioSignature([b"primary", b"secondary"], {"ks_1": b"shared-secret"})
    body = form_body(params)

    def send(sig: str, settings: str | None = None) -> Verdict:
        headers = [("Content-Type", FORM), ("X-Twilio-Signature", sig)]
        if settings is not None:
            headers.append(("X-Twilio-Webhooks-Signature-Settings", settings))
        return run(check, view(headers=headers, body=Body(body)))

    assert send(twilio_signature(b"primary", url, params)) is None
    assert send(twilio_signature(b"secondary", url, params)) is None
    sha256 = twilio_signature(b"shared-secret", url, params, "HMAC_SHA256")
    assert send(sha256, "key=ks_1,algorithm=HMAC_SHA256") is None
    # The algorithm follows the header: the same secret with SHA1 does not pass, nor a token in its place.
    assert cause(send(twilio_signature(b"shared-secret", url, params), "key=ks_1,algorithm=HMAC_SHA256")) == (
        "signature_mismatch"
    )
    assert cause(
        send(twilio_signature(b"primary", url, params, "HMAC_SHA256"), "key=ks_1,algorithm=HMAC_SHA256")
    ) == ("signature_mismatch")
    assert cause(send(sha256, "key=ks_2,algorithm=HMAC_SHA256")) == "signature_key_unknown"
    assert cause(send(sha256, "key=ks_1,algorithm=HMAC_MD5")) == "signature_algorithm_unsupported"


def test_twilio_body_read_error_is_passed_on() -> None:
    req = view(
        headers=[("X-Twilio-Signature", "x"), ("Content-Type", FORM)],
        body=Body(error=BodyReadError(413, "body_too_large")),
    )
    verdict = run(twilio_check(), req)
    assert isinstance(verdict, Deny) and (verdict.status, verdict.code) == (413, "body_too_large")


# -- generic HMAC webhooks -----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="  # the Standard Webhooks specification's example


def hmac_check(
    preset: str,
    secrets: Sequence[bytes],
    clock: Clock,
    replay: MemoryReplayCache | None = None,
    tolerance: float = 300.0,
) -> HmacWebhook:
    return HmacWebhook(
        PRESETS[preset],
        secrets,
        tolerance=tolerance,
        replay=replay if replay is not None else MemoryReplayCache(),
        clock=clock,
        namespace="route-1",
    )


def sw_headers(sig: str = SW_SIG, ts: int = SW_TS, msg_id: str = SW_ID) -> list[tuple[str, str]]:
    return [("webhook-id", msg_id), ("webhook-timestamp", str(ts)), ("webhook-signature", sig)]


def test_standard_webhooks_vector_replay_and_stale_window() -> None:
    clock = Clock(SW_TS + 10)
    check = hmac_check("standard_webhooks", [standard_webhooks_secret(SW_SECRET)], clock)
    assert run(check, view(headers=sw_headers(), body=Body(SW_BODY))) is None
    # Replayed within the window: refused as a replay.
    clock.now = SW_TS + 200
    verdict = run(check, view(headers=sw_headers(), body=Body(SW_BODY)))
    assert isinstance(verdict, Deny) and (verdict.status, verdict.code, verdict.event) == (
        409,
        "webhook_replayed",
        "webhook.replayed",
    )
    # Outside the window: refused as stale (before the signature is even computed).
    clock.now = SW_TS + 301
    assert cause(run(check, view(headers=sw_headers(), body=Body(SW_BODY)))) == "timestamp_stale"
    clock.now = SW_TS - 301
    assert cause(run(check, view(headers=sw_headers(), body=Body(SW_BODY)))) == "timestamp_stale"


def test_standard_webhooks_several_signatures_and_secrets() -> None:
    clock = Clock(SW_TS)
    check = hmac_check("standard_webhooks", [b"old-secret", standard_webhooks_secret(SW_SECRET)], clock)
    header = "v1,AAAA v1a,ignored " + SW_SIG
    assert run(check, view(headers=sw_headers(header), body=Body(SW_BODY))) is None
    check2 = hmac_check("standard_webhooks", [standard_webhooks_secret(SW_SECRET)], clock)
    assert cause(run(check2, view(headers=sw_headers(SW_SIG, msg_id="msg_other"), body=Body(SW_BODY)))) == (
        "signature_mismatch"
    )
    assert cause(run(check2, view(headers=sw_headers(SW_SIG, ts=SW_TS + 1), body=Body(SW_BODY)))) == (
        "signature_mismatch"
    )
    assert cause(run(check2, view(headers=sw_headers("v2,xyz"), body=Body(SW_BODY)))) == "signature_malformed"
    assert (
        cause(run(check2, view(headers=[("webhook-signature", SW_SIG)], body=Body(SW_BODY)))) == "id_missing"
    )


def test_replays_are_per_route_and_only_after_verification() -> None:
    clock = Clock(SW_TS)
    replay = MemoryReplayCache()
    secret = standard_webhooks_secret(SW_SECRET)
    a = hmac_check("standard_webhooks", [secret], clock, replay)
    b = HmacWebhook(
        PRESETS["standard_webhooks"], [secret], tolerance=300, replay=replay, clock=clock, namespace="route-2"
    )
    # A forged message under the real id does not burn the id.
    assert cause(
        run(a, view(headers=sw_headers("v1," + base64.b64encode(b"x" * 32).decode()), body=Body(SW_BODY)))
    ) == ("signature_mismatch")
    assert run(a, view(headers=sw_headers(), body=Body(SW_BODY))) is None
    assert run(b, view(headers=sw_headers(), body=Body(SW_BODY))) is None


def test_replay_cache_full_fails_closed() -> None:
    clock = Clock(SW_TS)
    replay = MemoryReplayCache(max_entries=1)
    check = hmac_check("standard_webhooks", [standard_webhooks_secret(SW_SECRET)], clock, replay)
    assert asyncio.run(replay.first_seen("other", SW_TS + 600, SW_TS)) is True
    verdict = run(check, view(headers=sw_headers(), body=Body(SW_BODY)))
    assert isinstance(verdict, Deny) and (verdict.status, verdict.code) == (503, "state_unavailable")


def test_memory_replay_cache_expiry() -> None:
    cache = MemoryReplayCache(max_entries=2)
    assert asyncio.run(cache.first_seen("a", 110.0, 100.0)) is True
    assert asyncio.run(cache.first_seen("a", 110.0, 105.0)) is False
    assert asyncio.run(cache.first_seen("b", 120.0, 105.0)) is True
    with pytest.raises(StateUnavailable):
        asyncio.run(cache.first_seen("c", 130.0, 105.0))
    # "a" expired: it may be seen again, and its slot is free.
    assert asyncio.run(cache.first_seen("a", 140.0, 111.0)) is True
    assert len(cache) == 2


def test_github_vector_and_replay() -> None:
    # docs.github.com "Validating webhook deliveries" example.
    secret = b"It's a Secret to Everybody"
    sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    clock = Clock(1_700_000_000)
    check = hmac_check("github", [secret], clock)
    body = Body(b"Hello, World!")
    assert run(check, view(headers=[("X-Hub-Signature-256", sig)], body=body)) is None
    verdict = run(check, view(headers=[("X-Hub-Signature-256", sig)], body=Body(b"Hello, World!")))
    assert isinstance(verdict, Deny) and verdict.code == "webhook_replayed"
    # After the remembered window the same delivery passes again: GitHub signs no timestamp.
    clock.now += 302
    assert run(check, view(headers=[("X-Hub-Signature-256", sig)], body=Body(b"Hello, World!"))) is None
    sha1 = "sha1=" + hmac.new(secret, b"Hello, World!", hashlib.sha1).hexdigest()
    assert cause(run(check, view(headers=[("X-Hub-Signature-256", sha1)], body=Body(b"Hello, World!")))) == (
        "signature_malformed"
    )


def test_stripe_layout() -> None:
    secret = "whsec_test_secret_used_as_is"
    ts = 1_700_000_000
    body = b'{"id": "evt_1"}'
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    clock = Clock(ts + 5)
    check = hmac_check("stripe", [secret.encode()], clock)
    header = f"t={ts},v1={'0' * 64},v1={sig},v0={sig}"
    assert run(check, view(headers=[("Stripe-Signature", header)], body=Body(body))) is None
    assert (
        run(check, view(headers=[("Stripe-Signature", header)], body=Body(body))).code == "webhook_replayed"
    )  # type: ignore[union-attr]
    assert cause(
        run(check, view(headers=[("Stripe-Signature", f"t={ts + 1},v1={sig}")], body=Body(body)))
    ) == ("signature_mismatch")
    assert cause(run(check, view(headers=[("Stripe-Signature", f"v1={sig}")], body=Body(body)))) == (
        "timestamp_missing"
    )
    assert cause(run(check, view(headers=[("Stripe-Signature", f"t=-5,v1={sig}")], body=Body(body)))) == (
        "timestamp_malformed"
    )


def test_custom_scheme() -> None:
    scheme = custom_scheme(
        signature_header="X-Sig",
        timestamp_header="X-Ts",
        id_header=None,
        algorithm="sha512",
        encoding="base64",
        prefix="sha512=",
    )
    secret = b"custom-secret"
    ts = 1_700_000_000
    body = b"payload"
    sig = base64.b64encode(hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha512).digest()).decode()
    check = HmacWebhook(
        scheme, [secret], tolerance=60, replay=MemoryReplayCache(), clock=Clock(ts), namespace="r"
    )
    assert run(check, view(headers=[("X-Sig", "sha512=" + sig), ("X-Ts", str(ts))], body=Body(body))) is None
    assert cause(run(check, view(headers=[("X-Sig", sig), ("X-Ts", str(ts))], body=Body(body)))) == (
        "signature_malformed"
    )


def test_whsec_secret_decoding() -> None:
    assert standard_webhooks_secret(SW_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert standard_webhooks_secret("plain") == b"plain"
    with pytest.raises(ValueError):
        standard_webhooks_secret("whsec_***")


# -- anchors.md §4.2: PKCV canonical requests -------------------------------------------------------

PKCV_HEADERS = Headers([("authorization", "foobar"), ("host", "api.twilio.com")])
SIGNED = ("authorization", "host")


def test_pkcv_vectors() -> None:
    get = canonical_python("GET", "/Messages", "PageSize=5&Limit=10", PKCV_HEADERS, SIGNED, b"foobar")
    assert request_hash(get) == "4dc9b67bed579647914587b0e22a1c65c1641d8674797cd82de65e766cce5f80"
    post = canonical_python("POST", "/Messages", "", PKCV_HEADERS, SIGNED, b"testbody")
    assert request_hash(post) == "bd792c967c20d546c738b94068f5f72758a10d26c12979677501e1eefe58c65a"
    # The Java form agrees wherever nothing needs normalising.
    assert canonical_java("GET", "/Messages", "PageSize=5&Limit=10", PKCV_HEADERS, SIGNED, b"foobar") == get


def test_pkcv_canonical_shape() -> None:
    text = canonical_python("GET", "/a", "b=2&a=1", PKCV_HEADERS, SIGNED, b"")
    assert text == "GET\n/a\na=1&b=2\nauthorization:foobar\nhost:api.twilio.com\n\nauthorization;host\n"


def test_pkcv_java_form_normalises() -> None:
    headers = Headers([("authorization", "Basic x"), ("host", "api.example:443"), ("host", "b")])
    java = canonical_java("GET", "/a/./b/../c%7e d*", "q=a+b&p=*&r=%7E", headers, SIGNED, b"")
    lines = java.split("\n")
    assert lines[1] == "/a/c~%20d%2A"
    assert lines[2] == "p=%2A&q=a%20b&r=~"
    assert lines[4] == "host:api.example,b"
    assert canonical_java("GET", "", "", headers, SIGNED, b"").split("\n")[1] == "/"


class Validator:
    """The ClientValidator port with fixed answers (the JWT itself is tested in the integration suite)."""

    def __init__(self, principal: Principal, hrh: tuple[str, ...], rqh: str, exp: float) -> None:
        from bastion.identity.pkcv import PkcvClaims

        self.principal = principal
        self.claims = PkcvClaims(hrh, rqh, exp)
        self.failure: AuthFailure | None = None

    def verify(self, token: str, now: float) -> tuple[Principal, Any]:
        if self.failure is not None:
            raise self.failure
        return self.principal, self.claims


def test_pkcv_check_hash_replay_and_consumer() -> None:
    principal = Principal(
        "shop", frozenset({"orders:read"}), "pkcv", consumer_id="C1", credential_id="CR" + "0" * 32
    )
    headers = [("authorization", "foobar"), ("Twilio-Client-Validation", "token")]
    req = view(
        method="GET",
        raw_path="/Messages",
        query="PageSize=5&Limit=10",
        headers=headers,
        body=Body(b"foobar"),
        host="api.twilio.com",
    )
    rqh = "4dc9b67bed579647914587b0e22a1c65c1641d8674797cd82de65e766cce5f80"
    clock = Clock(1000.0)
    validator = Validator(principal, SIGNED, rqh, 1200.0)
    check = Pkcv(validator, MemoryReplayCache(), clock)
    ctx = Context("r")
    assert run(check, req, ctx) is None and ctx.principal == principal
    assert cause(run(check, req)) == "pkcv_replayed"
    changed = req._replace(query="PageSize=6&Limit=10", body=Body(b"foobar"))
    assert cause(run(check, changed)) == "pkcv_request_hash_mismatch"
    missing = view(headers=[("authorization", "foobar")])
    verdict = run(check, missing)
    assert isinstance(verdict, Deny) and (verdict.status, verdict.code) == (401, "pkcv_required")
    validator.failure = AuthFailure("pkcv_expired")
    assert cause(run(check, req)) == "pkcv_expired"
    # require_pkcv: the token's consumer must be the one the route's credential authenticated.
    validator.failure = None
    required = Pkcv(validator, MemoryReplayCache(), clock, required=True)
    other = Context("r", principal=replace(principal, consumer_id="C2"))
    assert cause(run(required, req._replace(body=Body(b"foobar")), other)) == "pkcv_consumer_mismatch"
    same = Context("r", principal=replace(principal, method="api_key", credential_id=None))
    assert run(required, req._replace(body=Body(b"foobar")), same) is None
    assert same.principal is not None and same.principal.method == "api_key"


def test_pkcv_java_form_accepted_by_check() -> None:
    principal = Principal("shop", frozenset(), "pkcv", consumer_id="C1", credential_id="CR" + "1" * 32)
    headers = [("authorization", "Basic abc"), ("Twilio-Client-Validation", "t")]
    req = view(method="GET", raw_path="/v1/x%7e", query="a=b+c", headers=headers, host="gw.example:443")
    java = canonical_java("GET", "/v1/x%7e", "a=b+c", req.headers, SIGNED, b"")
    assert java != canonical_python("GET", "/v1/x%7e", "a=b+c", req.headers, SIGNED, b"")
    check = Pkcv(Validator(principal, SIGNED, request_hash(java), 1200.0), MemoryReplayCache(), Clock(1000.0))
    assert run(check, req) is None


def test_signature_helpers_are_stdlib_hmac() -> None:
    # The Twilio signature is exactly base64(HMAC-SHA1) of the documented string (no hand-rolled crypto).
    data = URL + "".join(k + v for k in sorted(PARAMS) for v in sorted(set(PARAMS[k])))
    expected = base64.b64encode(hmac.new(TOKEN, data.encode(), hashlib.sha1).digest()).decode()
    assert twilio_signature(TOKEN, URL, PARAMS) == expected
    assert json.loads(json.dumps({"ok": True}))


def test_twilio_replay_window_and_undo() -> None:
    params = {"MessageSid": ["SM1"], "Body": ["x"]}
    sig = twilio_signature(TOKEN, "https://mycompany.com/hooks/sms", params)
    clock = Clock(1000.0)
    replay = MemoryReplayCache()
    check = TwilioSignature([TOKEN], replay=replay, replay_window=300.0, clock=clock, namespace="r")

    def send(ctx: Context | None = None) -> Verdict:
        req = view(
            headers=[("Content-Type", FORM), ("X-Twilio-Signature", sig)], body=Body(form_body(params))
        )
        return run(check, req, ctx)

    first = Context("a")
    assert send(first) is None and first.undo is not None
    verdict = send()
    assert isinstance(verdict, Deny) and (verdict.status, verdict.code, verdict.event) == (
        409,
        "webhook_replayed",
        "webhook.replayed",
    )
    # The upstream never answered the first delivery: undoing it lets the sender's retry through.
    for action in first.undo:
        action()
    assert send() is None
    clock.now += 301  # after the window the same signed message is accepted again (Twilio signs no time)
    assert send() is None
    # replay_window 0: off (explicitly configured), no record kept.
    off = TwilioSignature([TOKEN], replay=replay, replay_window=0.0, clock=clock)
    ctx = Context("b")
    req = view(headers=[("Content-Type", FORM), ("X-Twilio-Signature", sig)], body=Body(form_body(params)))
    assert run(off, req, ctx) is None and ctx.undo is None


def test_hmac_undo_forgets_the_id() -> None:
    clock = Clock(SW_TS)
    replay = MemoryReplayCache()
    check = hmac_check("standard_webhooks", [standard_webhooks_secret(SW_SECRET)], clock, replay)
    ctx = Context("a")
    assert run(check, view(headers=sw_headers(), body=Body(SW_BODY)), ctx) is None
    assert ctx.undo is not None and len(replay) == 1
    for action in ctx.undo:
        action()
    assert len(replay) == 0
    assert run(check, view(headers=sw_headers(), body=Body(SW_BODY))) is None
