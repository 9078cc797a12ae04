"""Twilio's own SDK (twilio-python) against a real gateway on loopback: webhook signatures and Public
Key Client Validation, end to end.

Webhooks are signed by ``twilio.request_validator.RequestValidator.compute_signature`` (the SDK's own
rendering of what Twilio's back end sends; its ``validate`` is asked too, as the reference the gateway
must agree with) and posted as raw bytes, so each test controls exactly what arrives: a form with
repeated fields, unicode, ``+`` and spaces; a JSON body signed through ``bodySHA256``; SharedKey
signatures; default ports; a TLS proxy; a public base URL. Whatever the gateway refuses never reaches
the echo upstream, and the event names the cause but never a secret.

PKCV requests are made by ``twilio.rest.Client`` over the SDK's ``ValidationClient``, changed in one
way only: ``https://*.twilio.com`` becomes ``http://127.0.0.1:<gateway port>`` (path and query kept).
Its session records every prepared request, so a token the SDK made can be replayed or tampered with,
and it can hold a request back (``hold``) to get a signed request that was never sent.

Three gateways: the main one (no trusted proxy), one behind a declared TLS proxy (``trusted_proxies``)
and one with ``public_base_url``. Each module-scoped; tests that change identity state make their own
consumers. Every PKCV request carries a unique value: the gateway remembers each token's request hash
until it expires, so two identical requests would be one request and its replay.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twilio.base.exceptions import TwilioException
from twilio.http.validation_client import ValidationClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from ._identity import FORM, Reply, Stack, identity_stack

# Test fixtures, not secrets.
PRIMARY_TOKEN = "primary-auth-token-9f2c41d7e3b05a68"
SECONDARY_TOKEN = "secondary-auth-token-51be0c97d2a4f386"
SHARED_KEY_ID = "webhooks_sharedkey_1"
SHARED_KEY = "shared-key-secret-7d3e19a0c5b2f84e"
TWILIO_ENV = {
    "TWILIO_AUTH_TOKEN": PRIMARY_TOKEN,
    "TWILIO_AUTH_TOKEN_SECONDARY": SECONDARY_TOKEN,
    "TWILIO_SHARED_KEY": SHARED_KEY,
}
ACCOUNT_SID = "AC" + "3b7e" * 8
API_KEY_SID = "SK" + "c10d" * 8
API_KEY_SECRET = "api-key-secret-2e6f80b4a91c7d53"
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
TO = "+15558675310"
FROM = "+15017122661"
JSON = "application/json"

SMS_ROUTE = """
      - path: /hooks/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          replay_window: 0  # identical messages are resent on purpose (replays: test_webhook_replay.py)
          auth_tokens: [${env:TWILIO_AUTH_TOKEN}, ${env:TWILIO_AUTH_TOKEN_SECONDARY}]
          shared_keys: {webhooks_sharedkey_1: ${env:TWILIO_SHARED_KEY}}
"""

ROUTES = (
    SMS_ROUTE
    + """
      - path: /hooks/voice
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          replay_window: 0  # identical messages are resent on purpose (replays: test_webhook_replay.py)
          auth_tokens:
            - ${env:TWILIO_AUTH_TOKEN}
      - path: /hooks/x
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          replay_window: 0  # identical messages are resent on purpose (replays: test_webhook_replay.py)
          auth_tokens:
            - ${env:TWILIO_AUTH_TOKEN}
          public_url: http://hooks.example.com/hooks/x
      - path: /hooks/y
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          replay_window: 0  # identical messages are resent on purpose (replays: test_webhook_replay.py)
          auth_tokens:
            - ${env:TWILIO_AUTH_TOKEN}
          public_url: https://hooks.example.com:443/hooks/y
      - path: /2010-04-01/Accounts/{account}/Messages.json
        methods: [GET, POST]
        auth: [pkcv]
      - path: /v1/secure
        methods: [POST]
        auth: [api_key]
        require_pkcv: true
"""
)

EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
  lockout: {failures: 10000, within: 5m, block_for: 5m}
"""


# -- gateways -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with identity_stack(tmp_path_factory.mktemp("twilio"), ROUTES, EXTRA, env=TWILIO_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Behind a TLS-terminating proxy on 127.0.0.1, which the config trusts."""
    tmp = tmp_path_factory.mktemp("twilio-proxied")
    with identity_stack(tmp, SMS_ROUTE, "", trusted_proxies=["127.0.0.1/32"], env=TWILIO_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def based(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Published as https://hooks.example.com/prefix (a proxy strips the prefix)."""
    tmp = tmp_path_factory.mktemp("twilio-based")
    extra = "public_base_url: https://hooks.example.com/prefix\n"
    with identity_stack(tmp, SMS_ROUTE, extra, env=TWILIO_ENV) as s:
        yield s


# -- webhook helpers ------------------------------------------------------------------------------------


class Form(dict[str, list[str]]):
    """Form fields as a web framework hands them to ``RequestValidator`` (the ``getlist`` of Django's
    QueryDict), so a field sent several times is signed with each of its values."""

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Form:
        form = cls()
        for name, value in pairs:
            form.setdefault(name, []).append(value)
        return form

    def getlist(self, name: str) -> list[str]:
        return self[name]


# What an inbound SMS looks like, with the awkward parts: a repeated field (with a repeated value), non-ASCII
# text, a literal "+", spaces, "&" and "=" inside values, and an empty field.
SMS = [
    ("MessageSid", "SM" + "5e" * 16),
    ("AccountSid", ACCOUNT_SID),
    ("From", FROM),
    ("To", TO),
    ("Body", "Héllo wörld ☃ 1+1 = 2 & ça va? 📞"),
    ("MediaUrl0", "https://api.twilio.com/2010-04-01/Media/ME1?a=1&b=2"),
    ("Tag", "zeta"),
    ("Tag", "alpha"),
    ("Tag", "zeta"),
    ("Empty", ""),
]
SMS_BODY = urlencode(SMS).encode()  # spaces as "+", a literal "+" as "%2B", UTF-8 percent-encoded


def sign(url: str, params: Mapping[str, Any] | None = None, token: str = PRIMARY_TOKEN, **kw: Any) -> str:
    return RequestValidator(token).compute_signature(url, params if params is not None else {}, **kw)


def sdk_accepts(
    url: str, params: Mapping[str, Any] | str, signature: str, token: str = PRIMARY_TOKEN
) -> bool:
    """What the SDK's own ``validate`` says about a request (the reference the gateway must agree with)."""
    return bool(RequestValidator(token).validate(url, params, signature))


def local_url(stack: Stack, target: str) -> str:
    return f"http://127.0.0.1:{stack.port}{target}"


def post_webhook(
    stack: Stack,
    target: str,
    body: bytes,
    signature: str | None,
    headers: Mapping[str, str] | None = None,
    content_type: str = FORM,
) -> Reply:
    sent = {"Content-Type": content_type, **(headers or {})}
    if signature is not None:
        sent["X-Twilio-Signature"] = signature
    return stack.call("POST", target, sent, body)


def assert_delivered(reply: Reply, body: bytes, signature: str) -> dict[str, Any]:
    """The upstream got the request with the very bytes that were sent, and the signature header."""
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["method"] == "POST"
    assert echo["body_bytes"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert reply.upstream_headers()["x-twilio-signature"] == [signature]
    return echo


def assert_refused(stack: Stack, reply: Reply, cause: str, upstream_before: int) -> dict[str, Any]:
    """403 ``webhook_signature_invalid``, nothing forwarded, and the event names ``cause``."""
    assert reply.status == 403, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json()["code"] == "webhook_signature_invalid"
    assert len(stack.upstream.requests) == upstream_before
    event = stack.event_for("webhook.signature_invalid", reply)
    assert event["reason"] == "webhook_signature_invalid"
    assert event["data"]["scheme"] == "twilio"
    assert event["data"]["cause"] == cause
    return event


# -- webhooks: what the SDK signs gets through, unchanged -----------------------------------------------


class TestWebhookDelivery:
    @pytest.mark.parametrize(
        ("body", "params"),
        [
            pytest.param(SMS_BODY, Form.of(SMS), id="urlencoded"),
            # Written by hand: "%20" and "+" are both spaces, "%2B" is a plus, "%F0%9F%93%9E" is one emoji.
            pytest.param(
                b"Body=one+two%20three%2Bfour&Tag=b&Tag=a&Tag=b&Emoji=%F0%9F%93%9E&Empty=&Eq=a%3Db%26c",
                Form.of(
                    [
                        ("Body", "one two three+four"),
                        ("Tag", "b"),
                        ("Tag", "a"),
                        ("Tag", "b"),
                        ("Emoji", "📞"),
                        ("Empty", ""),
                        ("Eq", "a=b&c"),
                    ]
                ),
                id="hand-encoded",
            ),
        ],
    )
    def test_a_form_webhook_signed_by_the_sdk_reaches_the_upstream_byte_for_byte(
        self, stack: Stack, body: bytes, params: Form
    ) -> None:
        target = "/hooks/sms?Attempt=1&Flag"
        url = local_url(stack, target)
        signature = sign(url, params)
        assert sdk_accepts(url, params, signature)
        reply = post_webhook(stack, target, body, signature)
        echo = assert_delivered(reply, body, signature)
        assert echo["path"] == target
        assert reply.upstream_headers()["content-type"] == [FORM]

    def test_a_form_with_a_charset_in_its_content_type_is_still_a_form(self, stack: Stack) -> None:
        url = local_url(stack, "/hooks/sms")
        signature = sign(url, Form.of(SMS))
        reply = post_webhook(
            stack,
            "/hooks/sms",
            SMS_BODY,
            signature,
            content_type="application/x-www-form-urlencoded; charset=UTF-8",
        )
        assert_delivered(reply, SMS_BODY, signature)

    def test_a_json_webhook_is_signed_through_its_body_hash(self, stack: Stack) -> None:
        body = json.dumps(
            {"type": "com.twilio.messaging.message.delivered", "data": {"body": "Héllo + ☃", "n": [1, 2]}},
            ensure_ascii=False,
            separators=(", ", ": "),  # whitespace a re-serialisation would not reproduce
        ).encode()
        target = f"/hooks/sms?bodySHA256={hashlib.sha256(body).hexdigest()}"
        url = local_url(stack, target)
        signature = sign(url)  # the URL only: a JSON webhook has no form parameters
        assert sdk_accepts(url, body.decode(), signature)
        reply = post_webhook(stack, target, body, signature, content_type=JSON)
        echo = assert_delivered(reply, body, signature)
        assert echo["path"] == target

        # One byte changed, same length: the URL (and so the signature) still match, the hash does not.
        changed = body.replace(b'"n": [1, 2]', b'"n": [1, 3]')
        assert len(changed) == len(body) and changed != body
        assert not sdk_accepts(url, changed.decode(), signature)
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, target, changed, signature, content_type=JSON)
        assert_refused(stack, reply, "body_hash_mismatch", before)

    def test_a_json_body_without_a_body_hash_is_signed_by_nothing(self, stack: Stack) -> None:
        body = b'{"type": "unsigned"}'
        url = local_url(stack, "/hooks/sms")
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, "/hooks/sms", body, sign(url), content_type=JSON)
        assert_refused(stack, reply, "body_unsigned", before)

    @pytest.mark.parametrize("token", [PRIMARY_TOKEN, SECONDARY_TOKEN], ids=["primary", "secondary"])
    def test_both_auth_tokens_are_accepted_during_a_rotation(self, stack: Stack, token: str) -> None:
        signature = sign(local_url(stack, "/hooks/sms"), Form.of(SMS), token)
        assert_delivered(post_webhook(stack, "/hooks/sms", SMS_BODY, signature), SMS_BODY, signature)

    def test_a_third_token_is_not(self, stack: Stack) -> None:
        signature = sign(local_url(stack, "/hooks/sms"), Form.of(SMS), secrets.token_hex(16))
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature)
        assert_refused(stack, reply, "signature_mismatch", before)


# -- webhooks: tampering --------------------------------------------------------------------------------

OTHER_SMS = [(n, "Send me $1000" if n == "Body" else v) for n, v in SMS]


@dataclass
class Tamper:
    signed_target: str  # what the signature covers (its URL on this gateway, unless signed_url says)
    signed: list[tuple[str, str]]
    sent_target: str
    sent: list[tuple[str, str]]
    cause: str = "signature_mismatch"
    signed_url: str | None = None
    token: str = PRIMARY_TOKEN
    header: str | None = "signature"  # None: no X-Twilio-Signature; "": an empty one


TAMPERING = {
    "changed-value": Tamper("/hooks/sms", SMS, "/hooks/sms", OTHER_SMS),
    "added-parameter": Tamper("/hooks/sms", SMS, "/hooks/sms", [*SMS, ("Price", "0")]),
    "removed-parameter": Tamper("/hooks/sms", SMS, "/hooks/sms", [p for p in SMS if p[0] != "MediaUrl0"]),
    "removed-repeated-value": Tamper("/hooks/sms", SMS, "/hooks/sms", [p for p in SMS if p[1] != "alpha"]),
    "other-path": Tamper("/hooks/sms", SMS, "/hooks/voice", SMS),
    "other-query": Tamper("/hooks/sms?Attempt=1", SMS, "/hooks/sms?Attempt=2", SMS),
    "added-query": Tamper("/hooks/sms", SMS, "/hooks/sms?Attempt=1", SMS),
    "other-port": Tamper("", SMS, "/hooks/sms", SMS, signed_url="http://127.0.0.1:1/hooks/sms"),
    "other-scheme": Tamper("", SMS, "/hooks/sms", SMS, signed_url="https://127.0.0.1/hooks/sms"),
    "wrong-token": Tamper("/hooks/sms", SMS, "/hooks/sms", SMS, token="not-the-" + PRIMARY_TOKEN),
    "missing-header": Tamper("/hooks/sms", SMS, "/hooks/sms", SMS, cause="signature_missing", header=None),
    "empty-header": Tamper("/hooks/sms", SMS, "/hooks/sms", SMS, cause="signature_missing", header=""),
}


class TestWebhookTampering:
    @pytest.mark.parametrize("case", list(TAMPERING))
    def test_a_tampered_webhook_is_refused_and_never_forwarded(self, stack: Stack, case: str) -> None:
        t = TAMPERING[case]
        url = t.signed_url or local_url(stack, t.signed_target)
        signature = sign(url, Form.of(t.signed), t.token)
        body = urlencode(t.sent).encode()
        if t.header == "signature":  # the SDK agrees that this is not the request it signed
            assert not sdk_accepts(local_url(stack, t.sent_target), Form.of(t.sent), signature)
        header = {"signature": signature, None: None, "": ""}[t.header]
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, t.sent_target, body, header)
        event = assert_refused(stack, reply, t.cause, before)
        if t.cause == "signature_mismatch":
            # The event says which URL the gateway checked (so an operator can fix public_url), without
            # its query (which may carry anything).
            assert event["data"]["url"] == local_url(stack, t.sent_target).partition("?")[0]

    def test_the_untampered_original_passes(self, stack: Stack) -> None:
        """The baseline of the cases above: the same signature over the request as signed is good."""
        target = "/hooks/sms?Attempt=1"
        signature = sign(local_url(stack, target), Form.of(SMS))
        assert_delivered(post_webhook(stack, target, SMS_BODY, signature), SMS_BODY, signature)


# -- webhooks: SharedKey signatures ---------------------------------------------------------------------


class TestSharedKey:
    def settings(self, key: str = SHARED_KEY_ID, algorithm: str = "HMAC_SHA256") -> dict[str, str]:
        return {"X-Twilio-Webhooks-Signature-Settings": f"key={key},algorithm={algorithm}"}

    def test_a_shared_key_signature_with_hmac_sha256_is_accepted(self, stack: Stack) -> None:
        url = local_url(stack, "/hooks/sms")
        signature = sign(url, Form.of(SMS), SHARED_KEY, algorithm="HMAC_SHA256")
        assert RequestValidator(SHARED_KEY).validate(url, Form.of(SMS), signature, algorithm="HMAC_SHA256")
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature, self.settings())
        assert_delivered(reply, SMS_BODY, signature)

    def test_the_same_signature_computed_with_sha1_is_refused(self, stack: Stack) -> None:
        signature = sign(local_url(stack, "/hooks/sms"), Form.of(SMS), SHARED_KEY, algorithm="HMAC_SHA1")
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature, self.settings())
        assert_refused(stack, reply, "signature_mismatch", before)

    def test_an_unknown_key_id_is_refused(self, stack: Stack) -> None:
        signature = sign(local_url(stack, "/hooks/sms"), Form.of(SMS), SHARED_KEY, algorithm="HMAC_SHA256")
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature, self.settings("webhooks_sharedkey_9"))
        event = assert_refused(stack, reply, "signature_key_unknown", before)
        assert event["data"]["key"] == "webhooks_sharedkey_9"

    def test_the_auth_token_does_not_stand_in_for_the_shared_key(self, stack: Stack) -> None:
        signature = sign(local_url(stack, "/hooks/sms"), Form.of(SMS), PRIMARY_TOKEN, algorithm="HMAC_SHA256")
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature, self.settings())
        assert_refused(stack, reply, "signature_mismatch", before)

    def test_a_shared_key_signature_without_its_settings_header_is_refused(self, stack: Stack) -> None:
        signature = sign(local_url(stack, "/hooks/sms"), Form.of(SMS), SHARED_KEY, algorithm="HMAC_SHA256")
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature)
        assert_refused(stack, reply, "signature_mismatch", before)


# -- webhooks: which URL is signed -----------------------------------------------------------------------

# (route, URL the signature covers, accepted). The routes' public_url values are
# http://hooks.example.com/hooks/x and https://hooks.example.com:443/hooks/y. Twilio's back end signs
# with or without the default port, so like the SDK's validate() both are accepted; a wrong port,
# another scheme's default port or another scheme is not.
DEFAULT_PORTS = [
    ("/hooks/x", "http://hooks.example.com/hooks/x", True),
    ("/hooks/x", "http://hooks.example.com:80/hooks/x", True),
    ("/hooks/x", "http://hooks.example.com:443/hooks/x", False),
    ("/hooks/x", "http://hooks.example.com:8080/hooks/x", False),
    ("/hooks/x", "https://hooks.example.com/hooks/x", False),
    ("/hooks/x", "http://other.example.com/hooks/x", False),
    ("/hooks/y", "https://hooks.example.com/hooks/y", True),
    ("/hooks/y", "https://hooks.example.com:443/hooks/y", True),
    ("/hooks/y", "https://hooks.example.com:80/hooks/y", False),
    ("/hooks/y", "http://hooks.example.com/hooks/y", False),
]
PUBLIC_URLS = {
    "/hooks/x": "http://hooks.example.com/hooks/x",
    "/hooks/y": "https://hooks.example.com:443/hooks/y",
}


class TestSignedUrl:
    @pytest.mark.parametrize(("route", "signed_url", "accepted"), DEFAULT_PORTS)
    def test_default_ports_like_the_sdk(
        self, stack: Stack, route: str, signed_url: str, accepted: bool
    ) -> None:
        signature = sign(signed_url, Form.of(SMS))
        assert sdk_accepts(PUBLIC_URLS[route], Form.of(SMS), signature) is accepted
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, route, SMS_BODY, signature)
        if accepted:
            assert_delivered(reply, SMS_BODY, signature)
        else:
            event = assert_refused(stack, reply, "signature_mismatch", before)
            assert event["data"]["url"] == PUBLIC_URLS[route]

    @pytest.mark.parametrize(
        ("host", "signed_url"),
        [
            ("hooks.example.com", "http://hooks.example.com:80/hooks/sms?Attempt=1"),
            ("hooks.example.com:80", "http://hooks.example.com/hooks/sms?Attempt=1"),
            ("hooks.example.com", "http://hooks.example.com/hooks/sms?Attempt=1"),
        ],
    )
    def test_the_default_port_of_the_requests_own_host(
        self, stack: Stack, host: str, signed_url: str
    ) -> None:
        """Without public_url the URL is the request's scheme and Host: ``:80`` added or dropped."""
        signature = sign(signed_url, Form.of(SMS))
        assert sdk_accepts(f"http://{host}/hooks/sms?Attempt=1", Form.of(SMS), signature)
        reply = post_webhook(stack, "/hooks/sms?Attempt=1", SMS_BODY, signature, {"Host": host})
        assert_delivered(reply, SMS_BODY, signature)

    def test_behind_a_trusted_tls_proxy_the_public_url_is_signed(self, proxied: Stack) -> None:
        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
        signature = sign("https://hooks.example.com/hooks/sms?Attempt=1", Form.of(SMS))
        reply = post_webhook(proxied, "/hooks/sms?Attempt=1", SMS_BODY, signature, forwarded)
        assert_delivered(reply, SMS_BODY, signature)

        # The address the gateway itself saw is not what Twilio called.
        signature = sign(local_url(proxied, "/hooks/sms?Attempt=1"), Form.of(SMS))
        before = len(proxied.upstream.requests)
        reply = post_webhook(proxied, "/hooks/sms?Attempt=1", SMS_BODY, signature, forwarded)
        event = assert_refused(proxied, reply, "signature_mismatch", before)
        assert event["data"]["url"] == "https://hooks.example.com/hooks/sms"

    def test_forwarded_headers_from_an_untrusted_peer_do_not_change_the_url(self, stack: Stack) -> None:
        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
        signature = sign("https://hooks.example.com/hooks/sms", Form.of(SMS))
        before = len(stack.upstream.requests)
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature, forwarded)
        event = assert_refused(stack, reply, "signature_mismatch", before)
        assert event["data"]["url"] == local_url(stack, "/hooks/sms")

        signature = sign(local_url(stack, "/hooks/sms"), Form.of(SMS))
        reply = post_webhook(stack, "/hooks/sms", SMS_BODY, signature, forwarded)
        assert_delivered(reply, SMS_BODY, signature)

    def test_public_base_url_prefixes_the_path_as_received(self, based: Stack) -> None:
        signature = sign("https://hooks.example.com/prefix/hooks/sms?Attempt=1", Form.of(SMS))
        reply = post_webhook(based, "/hooks/sms?Attempt=1", SMS_BODY, signature)
        echo = assert_delivered(reply, SMS_BODY, signature)
        assert echo["path"] == "/hooks/sms?Attempt=1"

        for url in (
            local_url(based, "/hooks/sms?Attempt=1"),
            "https://hooks.example.com/hooks/sms?Attempt=1",
        ):
            before = len(based.upstream.requests)
            reply = post_webhook(based, "/hooks/sms?Attempt=1", SMS_BODY, sign(url, Form.of(SMS)))
            event = assert_refused(based, reply, "signature_mismatch", before)
            assert event["data"]["url"] == "https://hooks.example.com/prefix/hooks/sms"


def test_webhook_events_never_contain_a_token_or_shared_key(stack: Stack) -> None:
    url = local_url(stack, "/hooks/sms")
    shared = {"X-Twilio-Webhooks-Signature-Settings": f"key={SHARED_KEY_ID},algorithm=HMAC_SHA256"}
    refused = [
        post_webhook(stack, "/hooks/sms", SMS_BODY, sign(url, Form.of(OTHER_SMS))),
        post_webhook(
            stack,
            "/hooks/voice",
            SMS_BODY,
            sign(local_url(stack, "/hooks/voice"), Form.of(SMS), SECONDARY_TOKEN),
        ),
        post_webhook(stack, "/hooks/sms", SMS_BODY, sign(url, Form.of(SMS), SHARED_KEY), shared),
        post_webhook(stack, f"/hooks/sms?bodySHA256={'0' * 64}", b"{}", sign(url), content_type=JSON),
        post_webhook(stack, "/hooks/sms", SMS_BODY, None),
    ]
    for reply in refused:
        assert reply.status == 403, reply.body
        stack.event_for("webhook.signature_invalid", reply)  # written before the search below
    assert post_webhook(stack, "/hooks/sms", SMS_BODY, sign(url, Form.of(SMS))).status == 200
    text = stack.all_events_text()
    assert "webhook.signature_invalid" in text
    for secret in (PRIMARY_TOKEN, SECONDARY_TOKEN, SHARED_KEY):
        assert secret not in text


# -- PKCV: the SDK's ValidationClient pointed at the gateway ---------------------------------------------


class Held(Exception):
    """Raised instead of sending: the test wants the signed request, not its answer."""


class RecordingSession(requests.Session):
    """The ValidationClient's session: records every prepared request (with its token) and response."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []
        self.replies: list[requests.Response] = []
        self.hold = False

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(request.copy())
        if self.hold:
            raise Held
        response = super().send(request, **kwargs)
        self.replies.append(response)
        return response


@dataclass
class Signer:
    consumer: str
    credential_id: str
    private_pem: str
    api_key: str | None = None


class LocalValidationClient(ValidationClient):
    """twilio-python's signing HTTP client, sending to the gateway instead of ``*.twilio.com``; ``host``
    makes it sign (and send) that Host header, as a pass-through deployment in front of Twilio would."""

    def __init__(self, port: int, signer: Signer, host: str | None = None) -> None:
        super().__init__(ACCOUNT_SID, API_KEY_SID, signer.credential_id, signer.private_pem)
        self.port = port
        self.host = host
        self.session: RecordingSession = RecordingSession()

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Any:
        parts = urlsplit(url)
        if parts.scheme == "https" and (parts.hostname or "").endswith(".twilio.com"):
            url = urlunsplit(("http", f"127.0.0.1:{self.port}", parts.path, parts.query, ""))
        sent = dict(headers or {})
        if self.host is not None:
            sent["Host"] = self.host
        return super().request(
            method,
            url,
            params=params,
            data=data,
            headers=sent,
            auth=auth,
            timeout=timeout or 10,
            allow_redirects=allow_redirects,
        )

    def last_reply(self) -> Reply:
        response = self.session.replies[-1]
        return Reply(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
        )

    def last_sent(self) -> requests.PreparedRequest:
        return self.session.sent[-1]


MakeSdk = Callable[..., tuple[Client, LocalValidationClient]]


@pytest.fixture
def sdk(stack: Stack) -> Iterator[MakeSdk]:
    """``sdk(signer, host=None)``: a twilio ``Client`` over a :class:`LocalValidationClient`."""
    made: list[LocalValidationClient] = []

    def make(signer: Signer, host: str | None = None) -> tuple[Client, LocalValidationClient]:
        http = LocalValidationClient(stack.port, signer, host)
        made.append(http)
        return Client(API_KEY_SID, API_KEY_SECRET, ACCOUNT_SID, http_client=http), http

    yield make
    for http in made:
        http.session.close()


def rsa_key_pair() -> tuple[str, str]:
    """(private PEM for the SDK, public PEM to register): 2048 bits, e = 65537, as Twilio requires."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def new_signer(stack: Stack, consumer: str, *, api_key: bool = False) -> Signer:
    """A consumer (new), its registered public key and, with ``api_key``, an API key."""
    adm = stack.admin()
    adm.create_consumer(consumer, actor="test")
    private, public = rsa_key_pair()
    record = adm.add_public_key(consumer, public, name="sdk", actor="test")
    assert record["id"].startswith("CR") and record["consumer"] == consumer
    key = adm.create_key(consumer, actor="test")[1] if api_key else None
    return Signer(consumer, record["id"], private, key)


@pytest.fixture(scope="module")
def acme(stack: Stack) -> Signer:
    return new_signer(stack, "acme", api_key=True)


def unique(text: str) -> str:
    return f"{text} {secrets.token_hex(6)}"


def unique_number() -> str:
    """A sender to filter a message list by: makes each GET (and so its token) one of a kind."""
    return f"+1555{secrets.randbelow(10**7):07d}"


def refused_status(exc: TwilioException) -> int | None:
    """The HTTP status of the SDK's exception for a refused call (a problem+json answer becomes a
    TwilioServiceException, anything else a TwilioRestException)."""
    return getattr(exc, "status", None)


def send_message(client: Client, text: str) -> None:
    """``messages.create``; the echo upstream's answer is no Message, so what the SDK makes of it is
    not the point: the test reads the exchange the session recorded."""
    with contextlib.suppress(TwilioException):
        client.messages.create(to=TO, from_=FROM, body=unique(text))


def body_of(prepared: requests.PreparedRequest) -> bytes:
    body = prepared.body or b""
    return body.encode() if isinstance(body, str) else body


def resend(
    stack: Stack,
    prepared: requests.PreparedRequest,
    *,
    method: str | None = None,
    target: str | None = None,
    headers: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
    body: bytes | None = None,
) -> Reply:
    """Send a request the SDK prepared (and signed) again, changed as asked, over a raw connection."""
    dropped = {name.lower() for name in drop}
    sent_headers = {k: v for k, v in prepared.headers.items() if k.lower() not in dropped}
    data = body_of(prepared)
    if body is not None:
        data = body
        sent_headers["Content-Length"] = str(len(body))
    sent_headers.update(headers or {})
    path = target if target is not None else prepared.path_url
    return stack.call(method or prepared.method or "GET", path, sent_headers, data or None)


def assert_reached_upstream(reply: Reply, consumer: str) -> dict[str, list[str]]:
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers()
    assert seen["x-bastion-consumer"] == [consumer]
    # The credentials stop at the gateway.
    assert "authorization" not in seen
    assert "twilio-client-validation" not in seen
    return seen


def assert_pkcv_refused(
    stack: Stack, reply: Reply, cause: str, upstream_before: int, code: str = "pkcv_invalid"
) -> None:
    assert reply.status == 401, reply.body
    assert reply.json()["code"] == code
    assert len(stack.upstream.requests) == upstream_before
    assert stack.event_for("auth.failed", reply)["data"]["cause"] == cause


class TestPkcvThroughTheSdk:
    def test_messages_create_and_list_reach_the_upstream_as_the_consumer(
        self, stack: Stack, acme: Signer, sdk: MakeSdk
    ) -> None:
        client, http = sdk(acme)
        send_message(client, "Hello from the SDK +1 & ☃")
        created = http.last_reply()
        sent = http.last_sent()
        assert "Twilio-Client-Validation" in sent.headers
        assert sent.headers["Host"] == f"127.0.0.1:{stack.port}"
        assert_reached_upstream(created, "acme")
        echo = created.json()
        assert (echo["method"], echo["path"]) == ("POST", MESSAGES_PATH)
        assert echo["body_sha256"] == hashlib.sha256(body_of(sent)).hexdigest()
        form = parse_qs(body_of(sent).decode())
        assert form["To"] == [TO] and form["From"] == [FROM]
        assert form["Body"][0].startswith("Hello from the SDK +1 & ☃ ")

        # A page of messages: a GET whose query (To=%2B…&PageSize=2) is part of the signed request. The
        # SDK cannot make a page of the echo's answer; the upstream got the request all the same.
        sender = unique_number()
        with contextlib.suppress(TwilioException):
            client.messages.list(to=TO, from_=sender, limit=2)
        listed = http.last_reply()
        assert_reached_upstream(listed, "acme")
        echo = listed.json()
        target = urlsplit(echo["path"])
        assert (echo["method"], target.path) == ("GET", MESSAGES_PATH)
        assert parse_qs(target.query) == {"To": [TO], "From": [sender], "PageSize": ["2"]}
        assert echo["path"] == http.last_sent().path_url

    def test_a_request_without_a_token_is_refused(self, stack: Stack) -> None:
        before = len(stack.upstream.requests)
        reply = stack.post_form(MESSAGES_PATH, {"To": TO, "Body": "unsigned"})
        assert_pkcv_refused(stack, reply, "pkcv_missing", before, code="pkcv_required")

    def test_a_token_for_an_unknown_credential_is_refused(self, stack: Stack, sdk: MakeSdk) -> None:
        private, _public = rsa_key_pair()  # never registered
        client, http = sdk(Signer("nobody", "CR" + secrets.token_hex(16), private))
        before = len(stack.upstream.requests)
        with pytest.raises(TwilioException) as info:
            client.messages.create(to=TO, from_=FROM, body=unique("unknown"))
        assert refused_status(info.value) == 401
        assert_pkcv_refused(stack, http.last_reply(), "pkcv_credential_unknown", before)


# How a signed request is changed. Each is resent over a raw connection with the SDK's token.
def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _other_body(p: requests.PreparedRequest) -> dict[str, Any]:
    return {"body": body_of(p).replace(b"Body=", b"Body=X")}


def _other_account(p: requests.PreparedRequest) -> dict[str, Any]:
    return {"target": MESSAGES_PATH.replace(ACCOUNT_SID, "AC" + "0" * 32)}


POST_TAMPERING: dict[str, Callable[[requests.PreparedRequest], dict[str, Any]]] = {
    "body": _other_body,
    "authorization": lambda p: {"headers": basic_auth(API_KEY_SID, "another-secret")},
    "no-authorization": lambda p: {"drop": ["Authorization"]},
    "host": lambda p: {"headers": {"Host": "api.twilio.com"}},
    "path": _other_account,
    "added-query": lambda p: {"target": MESSAGES_PATH + "?Status=sent"},
}
GET_TAMPERING: dict[str, Callable[[requests.PreparedRequest], dict[str, Any]]] = {
    "query-value": lambda p: {"target": p.path_url.replace("PageSize=2", "PageSize=1000")},
    "query-dropped": lambda p: {"target": MESSAGES_PATH},
    "method": lambda p: {"method": "POST"},
}


class TestPkcvTampering:
    @pytest.mark.parametrize("case", [*POST_TAMPERING, *GET_TAMPERING])
    def test_a_changed_request_is_refused_and_the_genuine_one_still_passes(
        self, stack: Stack, acme: Signer, sdk: MakeSdk, case: str
    ) -> None:
        client, http = sdk(acme)
        http.session.hold = True  # signed by the SDK, not sent
        with pytest.raises(Held):
            if case in POST_TAMPERING:
                client.messages.create(to=TO, from_=FROM, body=unique("tamper"))
            else:
                client.messages.list(to=TO, from_=unique_number(), limit=2)
        genuine = http.last_sent()
        change = (POST_TAMPERING.get(case) or GET_TAMPERING[case])(genuine)
        before = len(stack.upstream.requests)
        reply = resend(stack, genuine, **change)
        assert_pkcv_refused(stack, reply, "pkcv_request_hash_mismatch", before)

        # The refusal did not use the token up: the request as signed passes, once.
        assert_reached_upstream(resend(stack, genuine), "acme")
        before = len(stack.upstream.requests)
        assert_pkcv_refused(stack, resend(stack, genuine), "pkcv_replayed", before)

    def test_the_same_request_sent_twice_is_a_replay(self, stack: Stack, acme: Signer, sdk: MakeSdk) -> None:
        client, http = sdk(acme)
        send_message(client, "once")
        assert_reached_upstream(http.last_reply(), "acme")
        sent = http.last_sent()
        before = len(stack.upstream.requests)
        for replay in (lambda: resend(stack, sent), lambda: _via_session(http, sent)):
            assert_pkcv_refused(stack, replay(), "pkcv_replayed", before)
        text = stack.all_events_text()
        assert sent.headers["Twilio-Client-Validation"] not in text
        assert sent.headers["Authorization"] not in text
        assert API_KEY_SECRET not in text


def _via_session(http: LocalValidationClient, prepared: requests.PreparedRequest) -> Reply:
    """The very same prepared request, sent again by the SDK's own session."""
    http.session.send(prepared.copy(), timeout=10)
    return http.last_reply()


class TestPkcvCredentials:
    def test_a_revoked_public_key_is_refused_at_once(self, stack: Stack, sdk: MakeSdk) -> None:
        signer = new_signer(stack, "pkcv-revoked")
        client, http = sdk(signer)
        send_message(client, "before revocation")
        assert_reached_upstream(http.last_reply(), "pkcv-revoked")
        revoked = stack.admin().revoke_public_key(signer.credential_id, actor="test")
        assert revoked["revoked_at"] is not None
        before = len(stack.upstream.requests)
        with pytest.raises(TwilioException) as info:
            client.messages.create(to=TO, from_=FROM, body=unique("after revocation"))
        assert refused_status(info.value) == 401
        assert_pkcv_refused(stack, http.last_reply(), "pkcv_credential_unknown", before)

    def test_a_disabled_consumer_is_refused_until_enabled(self, stack: Stack, sdk: MakeSdk) -> None:
        signer = new_signer(stack, "pkcv-disabled")
        client, http = sdk(signer)
        send_message(client, "enabled")
        assert_reached_upstream(http.last_reply(), "pkcv-disabled")
        stack.admin().set_consumer_active("pkcv-disabled", False, actor="test")
        before = len(stack.upstream.requests)
        send_message(client, "disabled")
        assert_pkcv_refused(stack, http.last_reply(), "consumer_disabled", before)
        stack.admin().set_consumer_active("pkcv-disabled", True, actor="test")
        send_message(client, "enabled again")
        assert_reached_upstream(http.last_reply(), "pkcv-disabled")

    def secure(self, http: LocalValidationClient, api_key: str) -> Reply:
        """POST /v1/secure with the consumer's API key as a bearer token (signed into the PKCV token)."""
        http.request(
            "POST",
            "https://api.twilio.com/v1/secure",
            data={"Amount": "10", "Nonce": secrets.token_hex(6)},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        return http.last_reply()

    def test_require_pkcv_takes_the_key_of_the_api_keys_consumer(
        self, stack: Stack, acme: Signer, sdk: MakeSdk
    ) -> None:
        assert acme.api_key is not None
        _, own = sdk(acme)
        assert_reached_upstream(self.secure(own, acme.api_key), "acme")

        # A key another consumer registered, with acme's API key: both valid, not the same consumer.
        other = new_signer(stack, "pkcv-other")
        _, foreign = sdk(other)
        before = len(stack.upstream.requests)
        assert_pkcv_refused(stack, self.secure(foreign, acme.api_key), "pkcv_consumer_mismatch", before)

        # The API key alone is not enough on this route.
        reply = stack.call(
            "POST",
            "/v1/secure",
            {"Authorization": f"Bearer {acme.api_key}", "Content-Type": FORM},
            b"Amount=10",
        )
        assert_pkcv_refused(stack, reply, "pkcv_missing", before, code="pkcv_required")


class TestPkcvSignedHost:
    """The pass-through mode: the SDK signs ``host:api.twilio.com`` (what Twilio itself would verify).
    The gateway recomputes the canonical request from the Host header it receives, so such a token is
    good exactly when the request really carries ``Host: api.twilio.com``."""

    def test_a_token_for_api_twilio_com_passes_with_that_host(
        self, stack: Stack, acme: Signer, sdk: MakeSdk
    ) -> None:
        client, http = sdk(acme, host="api.twilio.com")
        send_message(client, "pass-through")
        assert http.last_sent().headers["Host"] == "api.twilio.com"
        assert_reached_upstream(http.last_reply(), "acme")

    def test_a_token_for_api_twilio_com_fails_with_another_host(
        self, stack: Stack, acme: Signer, sdk: MakeSdk
    ) -> None:
        client, http = sdk(acme, host="api.twilio.com")
        http.session.hold = True
        with pytest.raises(Held):
            client.messages.create(to=TO, from_=FROM, body=unique("wrong host"))
        genuine = http.last_sent()
        before = len(stack.upstream.requests)
        reply = resend(stack, genuine, headers={"Host": f"127.0.0.1:{stack.port}"})
        assert_pkcv_refused(stack, reply, "pkcv_request_hash_mismatch", before)
        assert_reached_upstream(resend(stack, genuine), "acme")
