"""The egress gateway end to end: the real ``twilio`` SDK as the application's client, Bastion's egress
route in the middle, and a fake api.twilio.com on loopback (tests/integration/_fake_twilio.py) that
proves what arrived — the injected provider credential and a valid PKCV token, while the application
held neither.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from ._fake_twilio import ACCOUNT_SID, API_KEY_SECRET, API_KEY_SID, CREDENTIAL_SID, FakeTwilio
from ._identity import FORM, Reply, Stack, identity_stack

MESSAGES = f"/egress/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
CALLS = f"/egress/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"


@pytest.fixture(scope="module")
def pkcv_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def egress_config(
    provider_port: int, key_file: Path, *, extra: str = "", credential_id: str = CREDENTIAL_SID
) -> str:
    return f"""
identity: {{pepper: ${{env:BASTION_PEPPER}}}}
egress:
  - name: twilio
    listen_path: /egress/twilio
    target: http://127.0.0.1:{provider_port}
    callers: [billing-service]
    credentials:
      basic: {{username: ${{env:TWILIO_API_KEY_SID}}, password: ${{env:TWILIO_API_KEY_SECRET}}}}
    allow:
      - {{method: POST, path: "/2010-04-01/Accounts/{{account}}/Messages.json"}}
      - {{method: GET,  path: "/2010-04-01/Accounts/{{account}}/Messages/{{sid}}.json"}}
    deny:
      - {{method: POST, path: "/2010-04-01/Accounts/{{account}}/Calls.json"}}
      - {{method: POST, path: "/2010-04-01/Accounts/{{account}}/Conferences/{{c}}/Participants.json"}}
    geo:
      fields: [To]
      allow_countries: [US, CA, GB]
      deny_prefixes: ["+1900"]
    caps:
      - {{per: destination_country, limit: 200/hour}}
    pkcv: {{credential_id: {credential_id}, private_key: ${{file:{key_file}}}}}
{extra}
"""


ENV = {"TWILIO_API_KEY_SID": API_KEY_SID, "TWILIO_API_KEY_SECRET": API_KEY_SECRET}


class ViaBastion(TwilioHttpClient):
    """The SDK's own HTTP client, with api.twilio.com replaced by the egress route (base-URL override)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.base = f"http://127.0.0.1:{port}/egress/twilio"

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().request(method, url.replace("https://api.twilio.com", self.base), *args, **kwargs)


@pytest.fixture(scope="module")
def provider(pkcv_key: rsa.RSAPrivateKey) -> Iterator[FakeTwilio]:
    with FakeTwilio(public_key_pem=_public_pem(pkcv_key)) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, provider: FakeTwilio, pkcv_key: rsa.RSAPrivateKey
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("egress")
    key_file = tmp / "pkcv.pem"
    key_file.write_bytes(_pem(pkcv_key))
    routes = """
      - path: /v1/ping
        methods: [GET]
        auth: none
"""
    with identity_stack(tmp, routes, egress_config(provider.port, key_file), env=ENV) as s:
        adm = s.admin()
        adm.create_consumer("billing-service", ["sms:send"], actor="test")
        adm.create_consumer("reporting", ["reports:read"], actor="test")
        yield s


@pytest.fixture(scope="module")
def app_key(stack: Stack) -> str:
    return stack.admin().create_key("billing-service", actor="test")[1]


@pytest.fixture(scope="module")
def other_key(stack: Stack) -> str:
    return stack.admin().create_key("reporting", actor="test")[1]


@pytest.fixture()
def client(stack: Stack, app_key: str) -> Client:
    # Exactly what the application holds: its consumer name, its Bastion key and the account id.
    return Client("billing-service", app_key, ACCOUNT_SID, http_client=ViaBastion(stack.port))


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def send(stack: Stack, key: str, path: str = MESSAGES, **fields: str) -> Reply:
    return stack.post_form(
        path,
        fields or {"To": "+14155552671", "From": "+15005550006", "Body": "hi"},
        basic("billing-service", key),
    )


def received_since(provider: FakeTwilio, mark: int) -> list[Any]:
    return provider.received[mark:]


# -- the SDK through the egress route -------------------------------------------------------------------


class TestTwilioSdkThroughEgress:
    def test_a_message_to_an_allowed_country_is_sent_with_the_injected_credential_and_pkcv(
        self, client: Client, provider: FakeTwilio, app_key: str
    ) -> None:
        mark = len(provider.received)
        message = client.messages.create(to="+14155552671", from_="+15005550006", body="Your code is 123456")
        assert message.status == "queued"
        assert message.to == "+14155552671"
        got = received_since(provider, mark)
        assert len(got) == 1
        arrived = got[0]
        assert arrived.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        expected = base64.b64encode(f"{API_KEY_SID}:{API_KEY_SECRET}".encode()).decode()
        assert arrived.headers["authorization"] == f"Basic {expected}"
        assert arrived.pkcv == "valid"
        # Nothing of the application's credential, and nothing internal, reaches the provider.
        text = json.dumps(arrived.headers)
        assert app_key not in text and app_key[4:16] not in text
        assert not any(h.startswith(("x-forwarded", "x-bastion", "x-request-id")) for h in arrived.headers)
        assert arrived.form()["Body"] == "Your code is 123456"

    def test_a_message_to_a_blocked_country_is_refused_before_the_provider(
        self, client: Client, provider: FakeTwilio, stack: Stack
    ) -> None:
        mark = len(provider.received)
        with pytest.raises(TwilioException) as info:
            client.messages.create(to="+33612345678", from_="+15005550006", body="hi")
        assert info.value.status == 403
        assert received_since(provider, mark) == []
        event = stack.wait_event("egress.geo_blocked", lambda e: e["data"].get("country") == "FR")
        assert event["data"]["cause"] == "country_not_allowed"
        assert event["actor"].startswith("consumer:billing-service/key:")

    def test_calls_create_is_refused(self, client: Client, provider: FakeTwilio, stack: Stack) -> None:
        mark = len(provider.received)
        with pytest.raises(TwilioException) as info:
            client.calls.create(to="+14155552671", from_="+15005550006", url="https://93.184.216.34/twiml")
        assert info.value.status == 403
        assert received_since(provider, mark) == []
        stack.wait_event("egress.operation_denied", lambda e: "Calls.json" in e["data"].get("operation", ""))

    def test_fetching_a_message_is_allowed(self, client: Client, provider: FakeTwilio) -> None:
        message = client.messages("SM" + "ab" * 16).fetch()
        assert message.status == "delivered"
        assert provider.received[-1].pkcv == "valid"


# -- credentials ----------------------------------------------------------------------------------------


class TestCallers:
    def test_no_credential_is_refused(self, stack: Stack, provider: FakeTwilio) -> None:
        mark = len(provider.received)
        reply = stack.post_form(MESSAGES, {"To": "+14155552671", "Body": "x"})
        assert reply.status == 401
        assert received_since(provider, mark) == []

    def test_a_consumer_not_among_the_callers_is_refused(
        self, stack: Stack, other_key: str, provider: FakeTwilio
    ) -> None:
        mark = len(provider.received)
        reply = stack.post_form(MESSAGES, {"To": "+14155552671", "Body": "x"}, basic("reporting", other_key))
        assert reply.status == 403
        assert reply.json()["code"] == "egress_caller_not_allowed"
        assert received_since(provider, mark) == []

    def test_basic_with_another_consumers_name_is_refused(self, stack: Stack, app_key: str) -> None:
        reply = stack.post_form(MESSAGES, {"To": "+14155552671", "Body": "x"}, basic("reporting", app_key))
        assert reply.status == 401
        event = stack.event_for("auth.failed", reply)
        assert event["data"]["cause"] == "basic_user_mismatch"

    def test_basic_with_the_key_id_as_user_name_works(self, stack: Stack, app_key: str) -> None:
        reply = stack.post_form(MESSAGES, {"To": "+14155552672", "Body": "x"}, basic(app_key[4:16], app_key))
        assert reply.status == 201, reply.body

    def test_the_bearer_key_works_too(self, stack: Stack, app_key: str) -> None:
        reply = stack.post_form(
            MESSAGES, {"To": "+14155552673", "Body": "x"}, {"Authorization": f"Bearer {app_key}"}
        )
        assert reply.status == 201, reply.body

    @pytest.mark.parametrize(
        "value", ["Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic "]
    )
    def test_malformed_basic_is_refused(self, stack: Stack, value: str) -> None:
        reply = stack.post_form(MESSAGES, {"To": "+14155552671"}, {"Authorization": value})
        assert reply.status == 401

    def test_the_provider_secret_is_nowhere_the_caller_or_the_log_can_see(
        self, stack: Stack, app_key: str
    ) -> None:
        replies = [
            send(stack, app_key),
            send(stack, app_key, To="+33612345678", Body="x"),
            send(stack, app_key, path=CALLS, To="+14155552671"),
            stack.post_form(MESSAGES, {"To": "+1"}, basic("billing-service", "bst_wrong")),
        ]
        encoded = base64.b64encode(f"{API_KEY_SID}:{API_KEY_SECRET}".encode()).decode()
        for reply in replies:
            blob = reply.body.decode(errors="replace") + json.dumps(reply.headers)
            assert API_KEY_SECRET not in blob and encoded not in blob
        stack.wait_event("egress.forwarded")
        events = stack.all_events_text()
        assert API_KEY_SECRET not in events and encoded not in events
        assert app_key not in events


# -- operations: deny by default, and no spelling reaches a denied one -----------------------------------


class TestOperations:
    @pytest.mark.parametrize(
        "path",
        [
            CALLS,
            CALLS.replace("Calls.json", "calls.json"),
            CALLS.replace("Calls.json", "CALLS.JSON"),
            CALLS.replace("Calls.json", "Calls.json/"),
            CALLS.replace("Calls.json", "Calls"),
            CALLS.replace("Calls.json", "Calls.xml"),
            CALLS.replace("Calls.json", "%43alls.json"),
            CALLS.replace("Calls.json", "Calls%2Ejson"),
            CALLS.replace("Calls.json", "Messages/../Calls.json"),
            CALLS.replace("Calls.json", "Messages/%2e%2e/Calls.json"),
            CALLS.replace("/Calls.json", "//Calls.json"),
        ],
    )
    def test_no_spelling_of_calls_reaches_the_provider(
        self, stack: Stack, app_key: str, provider: FakeTwilio, path: str
    ) -> None:
        mark = len(provider.received)
        reply = send(stack, app_key, path=path, To="+14155552671", Url="https://93.184.216.34/twiml")
        assert reply.status in (400, 403), (path, reply.status)
        assert received_since(provider, mark) == []

    @pytest.mark.parametrize(
        "method,path",
        [
            ("POST", f"/egress/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Conferences/CF1/Participants.json"),
            ("DELETE", f"/egress/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/SM1.json"),
            ("POST", f"/egress/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json"),
            ("GET", "/egress/twilio/2010-04-01/Accounts.json"),
            ("POST", f"/egress/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Keys.json"),
        ],
    )
    def test_operations_not_allowed_are_refused(
        self, stack: Stack, app_key: str, provider: FakeTwilio, method: str, path: str
    ) -> None:
        mark = len(provider.received)
        reply = stack.call(method, path, {**basic("billing-service", app_key), "Content-Type": FORM}, b"A=1")
        assert reply.status == 403
        assert reply.json()["code"] == "egress_operation_denied"
        assert received_since(provider, mark) == []


# -- geo permissions -----------------------------------------------------------------------------------


class TestGeo:
    @pytest.mark.parametrize(
        "to,cause",
        [
            ("+33612345678", "country_not_allowed"),  # France: not listed
            ("+19005550123", "prefix_denied"),  # +1900 premium
            ("+448712345678", "number_type_denied"),  # UK premium rate, in an allowed country
            ("client:alice", "number_unparseable"),
            ("4155552671", "number_unparseable"),  # national form, no default region
            ("+1415", "number_invalid"),
            ("", "number_unparseable"),
            ("whatsapp:+33612345678", "country_not_allowed"),
        ],
    )
    def test_refused_destinations(
        self, stack: Stack, app_key: str, provider: FakeTwilio, to: str, cause: str
    ) -> None:
        mark = len(provider.received)
        reply = send(stack, app_key, To=to, Body="x")
        assert reply.status == 403, reply.body
        assert reply.json()["code"] == "egress_geo_blocked"
        assert received_since(provider, mark) == []
        event = stack.event_for("egress.geo_blocked", reply)
        assert event["data"]["cause"] == cause

    def test_every_value_of_a_repeated_field_is_checked(
        self, stack: Stack, app_key: str, provider: FakeTwilio
    ) -> None:
        mark = len(provider.received)
        body = urlencode([("To", "+14155552671"), ("to", "+33612345678"), ("Body", "x")])
        reply = stack.post_form(MESSAGES, body, basic("billing-service", app_key))
        assert reply.status == 403
        assert received_since(provider, mark) == []

    def test_a_destination_in_the_query_string_counts(
        self, stack: Stack, app_key: str, provider: FakeTwilio
    ) -> None:
        mark = len(provider.received)
        reply = stack.post_form(
            MESSAGES + "?To=%2B33612345678", {"To": "+14155552671"}, basic("billing-service", app_key)
        )
        assert reply.status == 403
        assert received_since(provider, mark) == []

    def test_a_body_bastion_cannot_read_is_not_forwarded(
        self, stack: Stack, app_key: str, provider: FakeTwilio
    ) -> None:
        mark = len(provider.received)
        body = b'--b\r\nContent-Disposition: form-data; name="To"\r\n\r\n+33612345678\r\n--b--\r\n'
        reply = stack.call(
            "POST",
            MESSAGES,
            {**basic("billing-service", app_key), "Content-Type": "multipart/form-data; boundary=b"},
            body,
        )
        assert reply.status == 415
        assert received_since(provider, mark) == []

    @pytest.mark.parametrize(
        "extra,status",
        [
            ({"Content-Encoding": "gzip"}, 415),
            ({"Content-Encoding": "identity, gzip"}, 415),
        ],
    )
    def test_a_compressed_body_is_not_forwarded(
        self, stack: Stack, app_key: str, provider: FakeTwilio, extra: dict[str, str], status: int
    ) -> None:
        import gzip

        mark = len(provider.received)
        body = gzip.compress(b"To=%2B33612345678&Body=x")
        headers = {**basic("billing-service", app_key), "Content-Type": FORM, **extra}
        reply = stack.call("POST", MESSAGES, headers, body)
        assert reply.status == status
        assert received_since(provider, mark) == []

    def test_two_content_types_are_refused(self, stack: Stack, app_key: str, provider: FakeTwilio) -> None:
        import http.client

        mark = len(provider.received)
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=5)
        body = b'{"To": "+33612345678"}'
        conn.putrequest("POST", MESSAGES)
        for name, value in basic("billing-service", app_key).items():
            conn.putheader(name, value)
        conn.putheader("Content-Type", FORM)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        assert conn.getresponse().status == 400
        conn.close()
        assert received_since(provider, mark) == []

    def test_allowed_countries_pass(self, stack: Stack, app_key: str) -> None:
        for to in ("+16135550199", "+447400123456", "whatsapp:+14155552674"):
            assert send(stack, app_key, To=to, Body="x").status == 201, to


# -- URL fields (SSRF) ------------------------------------------------------------------------------------


class TestUrlFields:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1/status",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://10.0.0.5/hook",
            "http://localhost:8080/x",
            "http://2130706433/x",
            "HTTPS://192.168.1.1/x",
            "https://user@93.184.216.34/x",
            "https://93.184.216.34\\@127.0.0.1/x",
        ],
    )
    def test_a_status_callback_to_an_internal_address_is_refused(
        self, stack: Stack, app_key: str, provider: FakeTwilio, url: str
    ) -> None:
        mark = len(provider.received)
        reply = send(stack, app_key, To="+14155552671", Body="x", StatusCallback=url)
        assert reply.status == 403, url
        assert reply.json()["code"] == "egress_url_refused"
        assert received_since(provider, mark) == []

    def test_a_public_status_callback_passes(self, stack: Stack, app_key: str) -> None:
        reply = send(
            stack, app_key, To="+14155552675", Body="x", StatusCallback="https://93.184.216.34/status"
        )
        assert reply.status == 201, reply.body


# -- PKCV: what the egress signs, Bastion's own ingress verifier accepts -------------------------------------


def test_bastion_ingress_accepts_what_its_egress_signs(tmp_path: Path, pkcv_key: rsa.RSAPrivateKey) -> None:
    ingress_routes = """
      - path: /2010-04-01/Accounts/{account}/Messages.json
        methods: [POST]
        auth: [pkcv]
"""
    with identity_stack(
        tmp_path / "ingress", ingress_routes, "identity: {pepper: ${env:BASTION_PEPPER}}"
    ) as ingress:
        adm = ingress.admin()
        adm.create_consumer("twilio-account", actor="test")
        record = adm.add_public_key("twilio-account", _public_pem(pkcv_key).decode(), actor="test")
        credential_id = record["id"]
        key_file = tmp_path / "pkcv.pem"
        key_file.write_bytes(_pem(pkcv_key))
        config = egress_config(ingress.port, key_file, credential_id=credential_id)
        routes = """
      - path: /v1/ping
        methods: [GET]
        auth: none
"""
        with identity_stack(tmp_path / "egress", routes, config, env=ENV) as egress:
            egress.admin().create_consumer("billing-service", actor="test")
            key = egress.admin().create_key("billing-service", actor="test")[1]
            reply = send(egress, key, To="+14155552671", Body="signed")
            assert reply.status == 200, reply.body  # the ingress's echo upstream answered
            seen = reply.upstream_headers()
            assert seen["x-bastion-consumer"] == ["twilio-account"]


def test_reading_with_a_destination_filter_is_not_a_send(
    stack: Stack, app_key: str, provider: FakeTwilio
) -> None:
    """Geo permissions judge what sends (POST/PUT/PATCH); a GET filtered by To only reads."""
    mark = len(provider.received)
    path = MESSAGES.replace("Messages.json", "Messages/SM0123.json") + "?To=%2B33612345678"
    reply = stack.get(path, basic("billing-service", app_key))
    assert reply.status == 200, reply.body
    assert len(received_since(provider, mark)) == 1


class TestBadInput:
    @pytest.mark.parametrize(
        "content_type,body,status,code",
        [
            ("application/json", b'{"To": "+14155552671", ', 400, "json_invalid"),
            ("application/json", b'{"To": "+14155552671", "To": "+33612345678"}', 400, "json_invalid"),
            (FORM, b"To=%2B1415555267%FF&Body=x", 400, "egress_body_invalid"),
            ("text/plain", b"To=+33612345678", 415, "egress_body_unsupported"),
        ],
    )
    def test_unreadable_bodies_are_refused_and_never_forwarded(
        self,
        stack: Stack,
        app_key: str,
        provider: FakeTwilio,
        content_type: str,
        body: bytes,
        status: int,
        code: str,
    ) -> None:
        mark = len(provider.received)
        headers = {**basic("billing-service", app_key), "Content-Type": content_type}
        reply = stack.call("POST", MESSAGES, headers, body)
        assert reply.status == status, reply.body
        assert reply.json()["code"] == code
        assert received_since(provider, mark) == []

    def test_a_json_destination_is_judged_like_a_form_field(
        self, stack: Stack, app_key: str, provider: FakeTwilio
    ) -> None:
        mark = len(provider.received)
        headers = {**basic("billing-service", app_key), "Content-Type": "application/json"}
        reply = stack.call("POST", MESSAGES, headers, b'{"to": "+33612345678", "Body": "x"}')
        assert reply.status == 403 and reply.json()["code"] == "egress_geo_blocked"
        assert received_since(provider, mark) == []


def test_a_provider_that_is_down_is_a_502_without_the_credential(
    tmp_path: Path, pkcv_key: rsa.RSAPrivateKey
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    key_file = tmp_path / "pkcv.pem"
    key_file.write_bytes(_pem(pkcv_key))
    routes = "      - {path: /v1/ping, methods: [GET], auth: none}\n"
    with identity_stack(tmp_path / "down", routes, egress_config(closed, key_file), env=ENV) as down:
        down.admin().create_consumer("billing-service", actor="test")
        key = down.admin().create_key("billing-service", actor="test")[1]
        reply = send(down, key, To="+14155552671", Body="x")
        assert reply.status == 502 and reply.json()["code"] == "upstream_unavailable"
        event = down.event_for("request.denied", reply)
        assert event["data"]["stage"] == "connect"
        assert API_KEY_SECRET not in reply.body.decode() + down.all_events_text()
