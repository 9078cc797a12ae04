"""Replays of signed webhooks through a real gateway: a Twilio webhook (Twilio signs no timestamp, so the
signature is remembered for ``replay_window``) and a Standard Webhooks message are delivered once; a copy
is 409 ``webhook_replayed``. When the upstream never answers (502/504), the record is dropped, so the
sender's retry is delivered instead of being refused as a replay."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from ..support import EchoUpstream, GatewayThread, config_text, load_text, request

TOKEN = "replay-test-auth-token-0123456789"  # test fixtures, not secrets
SECRET = base64.b64encode(b"standard-webhooks-secret-32bytes").decode()
ENV = {"TWILIO_AUTH_TOKEN": TOKEN, "WEBHOOK_SECRET": "whsec_" + SECRET}
FORM = "application/x-www-form-urlencoded"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROUTES = """
      - path: /hooks/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          auth_tokens: [${env:TWILIO_AUTH_TOKEN}]
      - path: /hooks/generic
        methods: [POST]
        auth: [hmac_signature]
        hmac:
          secrets: [${env:WEBHOOK_SECRET}]
      - path: /status/{code}
        methods: [POST]
        auth: [hmac_signature]
        hmac:
          secrets: [${env:WEBHOOK_SECRET}]
"""


def down_service(port: int) -> str:
    return f"""
  - name: down
    upstream: http://127.0.0.1:{port}
    timeouts: {{connect: 1s, read: 1s}}
    routes:
      - path: /down/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          auth_tokens: [${{env:TWILIO_AUTH_TOKEN}}]
      - path: /down/generic
        methods: [POST]
        auth: [hmac_signature]
        hmac:
          secrets: [${{env:WEBHOOK_SECRET}}]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, EchoUpstream]]:
    with EchoUpstream() as upstream:
        db = tmp_path_factory.mktemp("replay") / "bastion.db"
        text = config_text(upstream.port, db, routes=ROUTES) + down_service(closed_port())
        with GatewayThread(load_text(text, env=ENV)) as gateway:
            yield gateway, upstream


def twilio_post(port: int, path: str, fields: list[tuple[str, str]]) -> int:
    signature = RequestValidator(TOKEN).compute_signature(f"http://127.0.0.1:{port}{path}", dict(fields))
    body = urlencode(fields).encode()
    headers = {"Content-Type": FORM, "X-Twilio-Signature": signature}
    return request(port, "POST", path, headers=headers, body=body)[0]


def standard_post(port: int, path: str, msg_id: str, body: bytes) -> tuple[int, bytes]:
    ts = str(int(time.time()))
    key = base64.b64decode(SECRET)
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    headers = {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1," + sig}
    status, _, data = request(
        port, "POST", path, headers={**headers, "Content-Type": "application/json"}, body=body
    )
    return status, data


def test_twilio_webhook_is_delivered_once(gw: tuple[GatewayThread, EchoUpstream]) -> None:
    gateway, upstream = gw
    fields = [("MessageSid", "SM" + "1" * 32), ("Body", "hello")]
    before = len(upstream.requests)
    assert twilio_post(gateway.port, "/hooks/sms", fields) == 200
    assert twilio_post(gateway.port, "/hooks/sms", fields) == 409
    assert len(upstream.requests) == before + 1
    # Another message (another SID) is not a replay of the first.
    assert (
        twilio_post(gateway.port, "/hooks/sms", [("MessageSid", "SM" + "2" * 32), ("Body", "hello")]) == 200
    )


def test_standard_webhook_is_delivered_once(gw: tuple[GatewayThread, EchoUpstream]) -> None:
    gateway, upstream = gw
    before = len(upstream.requests)
    assert standard_post(gateway.port, "/hooks/generic", "msg_once_1", b'{"n": 1}')[0] == 200
    status, body = standard_post(gateway.port, "/hooks/generic", "msg_once_1", b'{"n": 1}')
    assert status == 409 and b"webhook_replayed" in body
    assert len(upstream.requests) == before + 1


@pytest.mark.parametrize("path", ["/down/sms", "/down/generic"])
def test_a_retry_after_the_upstream_never_answered_is_not_a_replay(
    gw: tuple[GatewayThread, EchoUpstream], path: str
) -> None:
    gateway, _ = gw
    for _ in range(2):  # the first attempt and the sender's retry: both reach for the upstream (502), not 409
        if path == "/down/sms":
            status = twilio_post(gateway.port, path, [("MessageSid", "SM" + "3" * 32)])
        else:
            status = standard_post(gateway.port, path, "msg_retry_1", b"{}")[0]
        assert status == 502


@pytest.mark.parametrize("code", [500, 503])
def test_a_retry_after_the_upstream_failed_with_5xx_is_not_a_replay(
    gw: tuple[GatewayThread, EchoUpstream], code: int
) -> None:
    """The upstream answered but did not take the webhook (5xx): the sender's retry must reach it again, or
    the message is lost (a 409 tells the sender it was delivered)."""
    gateway, upstream = gw
    before = len(upstream.requests)
    for _ in range(2):
        status, _ = standard_post(gateway.port, f"/status/{code}", f"msg_5xx_{code}", b"{}")
        assert status == code
    assert len(upstream.requests) == before + 2
    # A 4xx is the upstream's answer about the message itself: the record stays, a retry is a replay.
    assert standard_post(gateway.port, "/status/422", f"msg_4xx_{code}", b"{}")[0] == 422
    assert standard_post(gateway.port, "/status/422", f"msg_4xx_{code}", b"{}")[0] == 409
