"""Admin sign-in with an OpenID Connect provider: the authorization code flow with PKCE against a fake
provider on loopback (``_fake_idp``), driven by HTTP clients that keep cookies and follow redirects.

The admin app is built the way ``bastion serve`` builds it (``build_admin_app``) with an injected clock and
served by uvicorn on a loopback socket; the fake provider signs its ID tokens with the same clock, so expiry
is tested by moving the clock, never by waiting. Events are captured as the gateway emits them. One test runs
the real ``bastion serve`` listener (``GatewayThread``) to prove the wiring.

What must hold: a full sign-in gives a session with the role the groups map to (the highest); a person in
no mapped group, a wrong or reused state, a missing, expired or forged pre-session cookie, a wrong nonce,
audience or issuer, an expired token, ``alg: none``, an HS256 token MACed with the public key, a token
signed by another key, an unverified email where one is needed, a disabled account — each is refused with
the same 401 and one ``admin_auth.sso_failed`` event naming the cause; a code stolen on its way back is
useless without the browser's PKCE verifier; no secret reaches an event or the database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyotp
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from joserfc import jwt

from bastion.adapters.admin import build_admin_app
from bastion.config.errors import ConfigError
from bastion.config.models import Secret
from bastion.core.events import Event
from bastion.core.forwarding import NetworkSet
from bastion.identity.admin_oidc import OidcProvider, SsoFailed, identity_link
from bastion.runtime.gateway import build_gateway
from bastion.store.database import open_database

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text
from ._fake_idp import CLIENT_ID, CLIENT_SECRET, FakeIdp, new_key, s256
from .test_admin import wait_for
from .test_admin_accounts import ADMIN_BLOCK as ACCOUNTS_BLOCK
from .test_admin_accounts import PEPPER, FakeClock, admin_gateway

P = "/admin/v1"
START = f"{P}/auth/oidc/start"
CALLBACK = f"{P}/auth/oidc/callback"
T0 = 1_800_000_000.0
FLOW = "bastion_sso"  # the pre-session cookie (cookie_secure: false on loopback)
SESSION = "bastion_admin"
JSON = {"accept": "application/json"}

ADMIN_BLOCK = """
admin:
  listen: 127.0.0.1:{port}
  token: ${{env:BASTION_ADMIN_TOKEN}}
  allow_ips: [127.0.0.1/32]
  accounts:
    cookie_secure: false
    require_mfa: {require_mfa}
    ip_attempts: 10000
    sso:
      issuer: {issuer}
      client_id: {client_id}
      client_secret: ${{env:SSO_CLIENT_SECRET}}
      redirect_url: {redirect}
      role_map: {{ops-admins: admin, ops: operator, readers: viewer}}
{sso_extra}
identity:
  pepper: ${{env:BASTION_PEPPER}}
"""


class Recorder:
    """The gateway's event sink: every event, as it is emitted."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, event_type: str) -> list[Event]:
        with self.lock:
            return [e for e in self.events if e.type == event_type]

    def clear(self) -> None:
        with self.lock:
            self.events.clear()

    def text(self) -> str:
        with self.lock:
            return json.dumps([dataclasses.asdict(e) for e in self.events], default=str)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # a thread of the test process: no signal handlers
        yield


class Sso:
    """The admin app with SSO configured against ``idp``, on a loopback socket, with an injected clock."""

    def __init__(
        self,
        tmp_path: Path,
        idp: FakeIdp,
        clock: FakeClock,
        *,
        sso_extra: str = "",
        require_mfa: bool = False,
    ) -> None:
        self.idp = idp
        self.clock = clock
        self.tmp_path = tmp_path
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.redirect = f"{self.base}{CALLBACK}"
        idp.redirect_uris.add(self.redirect)
        extra = ADMIN_BLOCK.format(
            port=self.port,
            require_mfa=str(require_mfa).lower(),
            issuer=idp.issuer,
            client_id=CLIENT_ID,
            redirect=self.redirect,
            sso_extra=sso_extra,
        )
        self.db = tmp_path / "sso.db"
        loaded = load_text(
            config_text(9, self.db, extra=extra, admin=False),
            env={"BASTION_PEPPER": PEPPER, "SSO_CLIENT_SECRET": CLIENT_SECRET},
        )
        self.engine = open_database(loaded.settings.storage.database)
        self.events = Recorder()
        gateway = build_gateway(loaded, events=self.events, engine=self.engine, clock=clock)
        app = build_admin_app(gateway, self.engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]), clock=clock)
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)  # type: ignore[arg-type]
        self.server = _Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, what="the admin app")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.dispose()

    # -- a browser, step by step ----------------------------------------------------------------------
    def begin(self) -> tuple[str, str]:
        """``start``: the pre-session cookie and the provider's authorization URL."""
        reply = httpx.get(f"{self.base}{START}", follow_redirects=False, timeout=15)
        assert reply.status_code == 302, reply.text
        return reply.cookies[FLOW], reply.headers["location"]

    def authorize(self, url: str) -> str:
        """The provider's authorization endpoint: where it sends the browser back."""
        reply = httpx.get(url, follow_redirects=False, timeout=15)
        assert reply.status_code == 302, reply.text
        return reply.headers["location"]

    def callback(self, url: str, flow: str | None, accept: str = "application/json") -> httpx.Response:
        headers = {"accept": accept}
        if flow is not None:
            headers["cookie"] = f"{FLOW}={flow}"
        return httpx.get(url, headers=headers, follow_redirects=False, timeout=15)

    def sign_in(self) -> httpx.Response:
        flow, url = self.begin()
        return self.callback(self.authorize(url), flow)

    def refused(self, reply: httpx.Response, cause: str) -> Event:
        """The same 401 for every cause; the cause only in the event."""
        assert reply.status_code == 401, reply.text
        assert reply.json()["code"] == "admin_sso_failed"
        assert cause not in reply.text
        failed = self.events.of("admin_auth.sso_failed")
        assert failed and failed[-1].reason == cause, [(e.reason, e.data) for e in failed]
        assert not self.events.of("admin_auth.sso_succeeded")
        return failed[-1]

    def session(self, reply: httpx.Response) -> httpx.Client:
        """A client holding the session the callback set."""
        client = httpx.Client(base_url=self.base, timeout=15, headers=JSON)
        client.cookies.set(SESSION, reply.cookies[SESSION])
        return client

    def token_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, timeout=15, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )


def person(**claims: Any) -> dict[str, Any]:
    """A person at the provider, unique to the test."""
    tag = uuid.uuid4().hex[:8]
    return {
        "sub": f"user-{tag}",
        "email": f"p{tag}@example.com",
        "email_verified": True,
        "groups": ["ops"],
        **claims,
    }


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def idp(clock: FakeClock) -> Iterator[FakeIdp]:
    with FakeIdp(clock) as provider:
        yield provider


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdp, clock: FakeClock) -> Iterator[Sso]:
    harness = Sso(tmp_path_factory.mktemp("sso"), idp, clock)
    yield harness
    harness.close()


def _reset(idp: FakeIdp) -> None:
    idp.user = person()
    idp.claims, idp.header = {}, {}
    idp.sign_with = idp.raw_id_token = idp.send_iss = idp.token_status = None
    idp.deny = False
    idp.discovery_extra = {}
    idp.client_secret = CLIENT_SECRET
    idp.published = [idp.key]


@pytest.fixture
def sso(shared: Sso) -> Sso:
    _reset(shared.idp)
    shared.events.clear()
    return shared


@pytest.fixture
def make(tmp_path: Path, idp: FakeIdp, clock: FakeClock) -> Iterator[Any]:
    """A harness of its own, with more SSO settings."""
    made: list[Sso] = []

    def build(sso_extra: str = "", *, require_mfa: bool = False) -> Sso:
        _reset(idp)
        harness = Sso(tmp_path / str(len(made)), idp, clock, sso_extra=sso_extra, require_mfa=require_mfa)
        made.append(harness)
        return harness

    yield build
    for harness in made:
        harness.close()


# -- signing in -------------------------------------------------------------------------------------------


class TestSignIn:
    def test_a_full_sign_in_gives_a_session_with_the_mapped_role(self, sso: Sso) -> None:
        idp, user = sso.idp, sso.idp.user
        with httpx.Client(base_url=sso.base, follow_redirects=True, timeout=15, headers=JSON) as browser:
            reply = browser.get(START)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["stage"] == "full" and body["admin"] == {"name": user["email"], "role": "operator"}
            assert FLOW not in browser.cookies  # the pre-session ended with the callback
            hops = [str(r.url).split("?")[0] for r in reply.history]
            assert hops == [f"{sso.base}{START}", f"{idp.issuer}/authorize"]
            me = browser.get(f"{P}/auth/session").json()
            assert (me["actor"], me["role"], me["stage"]) == (f"admin:{user['email']}", "operator", "full")
            assert me["csrf_token"] == body["csrf_token"]
            assert browser.get(f"{P}/keys").status_code == 200  # an operator route
            csrf = {"x-csrf-token": body["csrf_token"]}
            name = f"c-{uuid.uuid4().hex[:6]}"
            made = browser.post(f"{P}/consumers", json={"name": name, "scopes": []}, headers=csrf)
            assert made.status_code == 201 and made.json()["created_by"] == f"admin:{user['email']}"
            assert browser.post(f"{P}/admins", json={}, headers=csrf).status_code == 403  # not an admin
        # the request to the provider: PKCE S256, state, nonce, the configured redirect
        asked = idp.records.authorize[-1]
        assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
        assert asked["redirect_uri"] == sso.redirect and asked["scope"] == "openid email profile"
        assert len(asked["state"]) >= 43 and len(asked["nonce"]) >= 43
        # the token request: client secret by HTTP Basic, the verifier that matches the challenge
        token = idp.records.token[-1]
        assert (token.client_auth, token.client_ok, token.pkce_ok, token.answered) == (
            "basic",
            True,
            True,
            200,
        )
        assert s256(token.form["code_verifier"]) == asked["code_challenge"]
        # events: the account made just in time, then the sign-in
        created = sso.events.of("admin_account.created")
        assert len(created) == 1 and created[0].resource == f"admin:{user['email']}"
        assert created[0].actor == identity_link(idp.issuer, user["sub"])
        assert created[0].data == {"role": "operator", "password": False}
        ok = sso.events.of("admin_auth.sso_succeeded")[0]
        assert ok.actor == f"admin:{user['email']}" and ok.source_ip == "127.0.0.1"
        assert ok.data["created"] is True and ok.data["groups"] == ["ops"] and ok.data["next"] == "full"
        signed = sso.events.of("admin_auth.signed_in")[0]
        assert signed.data == {"method": "sso", "role": "operator"}
        assert sso.events.of("admin_auth.sso_started")[0].source_ip == "127.0.0.1"

    def test_the_cookies(self, sso: Sso) -> None:
        start = httpx.get(f"{sso.base}{START}", follow_redirects=False, timeout=15)
        assert start.headers["cache-control"] == "no-store"
        flow = start.headers["set-cookie"]
        assert flow.startswith(f"{FLOW}=") and "HttpOnly" in flow and "SameSite=lax" in flow
        assert "Max-Age=600" in flow and "Path=/" in flow
        reply = sso.callback(sso.authorize(start.headers["location"]), start.cookies[FLOW])
        cookies = reply.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith(f"{SESSION}="))
        assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
        cleared = next(c for c in cookies if c.startswith(f"{FLOW}="))
        assert "Max-Age=0" in cleared or "expires=Thu, 01 Jan 1970" in cleared

    def test_a_browser_gets_a_page_that_moves_on_without_leaking_the_callback_url(self, sso: Sso) -> None:
        flow, url = sso.begin()
        reply = sso.callback(sso.authorize(url), flow, accept="text/html,application/xhtml+xml,*/*")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
        assert '<meta http-equiv="refresh" content="0;url=/console/">' in reply.text
        assert reply.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in reply.headers["content-security-policy"]
        assert reply.headers["cache-control"] == "no-store"
        assert SESSION in reply.cookies

    def test_the_highest_role_wins_and_the_role_follows_the_groups(self, sso: Sso) -> None:
        idp = sso.idp
        idp.user["groups"] = ["readers", "unrelated", "ops-admins", "ops"]
        first = sso.sign_in()
        assert first.json()["admin"]["role"] == "admin"
        assert sso.events.of("admin_auth.sso_succeeded")[-1].data["groups"] == [
            "ops",
            "ops-admins",
            "readers",
        ]
        idp.user["groups"] = ["readers"]  # moved to another team at the provider
        second = sso.sign_in()
        assert second.json()["admin"] == {"name": idp.user["email"], "role": "viewer"}
        changed = sso.events.of("admin_account.role_changed")
        assert len(changed) == 1 and changed[0].data == {"role": "viewer"}
        assert changed[0].actor == identity_link(idp.issuer, idp.user["sub"])
        assert sso.events.of("admin_auth.sso_succeeded")[-1].data["previous_role"] == "admin"
        assert len(sso.events.of("admin_account.created")) == 1  # the same account both times
        with sso.session(second) as client:
            assert client.get(f"{P}/auth/session").json()["role"] == "viewer"
            assert client.post(f"{P}/consumers", json={"name": "nope"}).status_code == 403

    def test_a_single_group_string_is_a_group(self, sso: Sso) -> None:
        sso.idp.user["groups"] = "ops-admins"
        assert sso.sign_in().json()["admin"]["role"] == "admin"

    def test_no_matching_group_is_refused(self, sso: Sso) -> None:
        sso.idp.user["groups"] = ["marketing"]
        event = sso.refused(sso.sign_in(), "no_role")
        assert event.actor is None  # no account was made
        assert not sso.events.of("admin_account.created")

    def test_groups_taken_away_refuse_an_existing_account(self, sso: Sso) -> None:
        assert sso.sign_in().status_code == 200
        sso.idp.user["groups"] = []
        sso.events.clear()
        event = sso.refused(sso.sign_in(), "no_role")
        assert event.actor == f"admin:{sso.idp.user['email']}"

    def test_default_role_viewer_lets_a_person_in_no_group_in_as_viewer(self, make: Any) -> None:
        harness = make("      default_role: viewer")
        harness.idp.user["groups"] = ["marketing"]
        assert harness.sign_in().json()["admin"]["role"] == "viewer"

    def test_a_disabled_account_stays_refused(self, sso: Sso) -> None:
        name = sso.idp.user["email"]
        assert sso.sign_in().status_code == 200
        with sso.token_client() as admin:
            assert admin.post(f"{P}/admins/{name}/disable").json()["status"] == "disabled"
        sso.events.clear()
        event = sso.refused(sso.sign_in(), "disabled")
        assert event.actor == f"admin:{name}"
        with sso.token_client() as admin:
            admin.post(f"{P}/admins/{name}/enable")
        assert sso.sign_in().status_code == 200

    def test_an_account_made_another_way_is_never_taken_over(self, sso: Sso) -> None:
        email = sso.idp.user["email"]
        with sso.token_client() as admin:
            made = admin.post(f"{P}/admins", json={"name": "pw-user", "email": email, "role": "admin"})
            assert made.status_code == 201, made.text
        sso.events.clear()
        event = sso.refused(sso.sign_in(), "account_conflict")
        assert event.actor == "admin:pw-user"

    def test_a_person_is_their_subject_not_their_address(self, sso: Sso) -> None:
        first = sso.sign_in().json()["admin"]["name"]
        sso.idp.user["email"] = f"renamed-{uuid.uuid4().hex[:6]}@example.com"
        assert sso.sign_in().json()["admin"]["name"] == first  # same sub: the same account
        sso.idp.user["sub"] = f"someone-else-{uuid.uuid4().hex[:6]}"
        sso.idp.user["email"] = first  # another person with the first one's old address
        sso.events.clear()
        sso.refused(sso.sign_in(), "account_conflict")

    def test_sso_not_configured_answers_409(self, tmp_path: Path) -> None:
        with EchoUpstream() as up, admin_gateway(up, tmp_path / "plain.db") as gw:
            for path in (START, CALLBACK):
                reply = httpx.get(f"http://127.0.0.1:{gw.admin_port}{path}", timeout=15)
                assert reply.status_code == 409 and reply.json()["code"] == "sso_unavailable"


# -- the flow: state, pre-session cookie, PKCE, the provider's answers ----------------------------------


class TestFlow:
    def test_a_wrong_state(self, sso: Sso) -> None:
        flow, url = sso.begin()
        back = sso.authorize(url)
        forged = back.replace("state=", "state=x")
        sso.refused(sso.callback(forged, flow), "state_mismatch")

    def test_a_missing_state(self, sso: Sso) -> None:
        flow, url = sso.begin()
        back = urlsplit(sso.authorize(url))
        code = parse_qs(back.query)["code"][0]
        sso.refused(sso.callback(f"{sso.redirect}?{urlencode({'code': code})}", flow), "state_mismatch")

    def test_a_reused_state(self, sso: Sso) -> None:
        flow, url = sso.begin()
        back = sso.authorize(url)
        assert sso.callback(back, flow).status_code == 200
        sso.events.clear()
        redeemed = len(sso.idp.records.token)
        sso.refused(sso.callback(back, flow), "state_reused")  # the same browser state, replayed
        assert len(sso.idp.records.token) == redeemed  # refused before the code went anywhere

    def test_a_missing_pre_session_cookie(self, sso: Sso) -> None:
        _, url = sso.begin()
        sso.refused(sso.callback(sso.authorize(url), None), "no_flow")

    def test_an_expired_pre_session_cookie(self, sso: Sso) -> None:
        flow, url = sso.begin()
        back = sso.authorize(url)
        sso.clock.now += 601  # flow_timeout is 10 minutes
        event = sso.refused(sso.callback(back, flow), "flow_expired")
        assert event.data == {"age": 601}

    def test_a_forged_pre_session_cookie(self, sso: Sso) -> None:
        flow, url = sso.begin()
        back = sso.authorize(url)
        raw = bytearray(base64.urlsafe_b64decode(flow))
        raw[-40] ^= 1
        sso.refused(sso.callback(back, base64.urlsafe_b64encode(bytes(raw)).decode()), "flow_invalid")

    def test_another_browsers_cookie_does_not_fit(self, sso: Sso) -> None:
        mine, url = sso.begin()
        theirs, _ = sso.begin()
        sso.refused(sso.callback(sso.authorize(url), theirs), "state_mismatch")
        assert mine != theirs

    def test_a_stolen_code_is_useless_without_the_browsers_verifier(self, sso: Sso) -> None:
        """PKCE: the victim's code, sent back with the attacker's own flow (state and cookie fit), is
        refused by the provider because the attacker's verifier is not the victim's."""
        _, victim_url = sso.begin()
        victim_code = parse_qs(urlsplit(sso.authorize(victim_url)).query)["code"][0]
        flow, url = sso.begin()
        back = urlsplit(sso.authorize(url))
        state = parse_qs(back.query)["state"][0]
        injected = f"{sso.redirect}?{urlencode({'code': victim_code, 'state': state})}"
        event = sso.refused(sso.callback(injected, flow), "token_rejected")
        assert event.data == {"status": 400, "error": "invalid_grant"}
        attempt = sso.idp.records.token[-1]
        assert attempt.form["code"] == victim_code and attempt.pkce_ok is False

    def test_the_provider_checks_the_client_secret(self, sso: Sso) -> None:
        sso.idp.client_secret = "another-secret-the-provider-holds-now"
        event = sso.refused(sso.sign_in(), "token_rejected")
        assert event.data == {"status": 401, "error": "invalid_client"}
        assert sso.idp.records.token[-1].client_ok is False

    def test_the_person_refusing_at_the_provider(self, sso: Sso) -> None:
        sso.idp.deny = True
        event = sso.refused(sso.sign_in(), "idp_error")
        assert event.data == {"error": "access_denied"}

    def test_a_provider_error_text_never_reaches_the_log(self, sso: Sso) -> None:
        flow, url = sso.begin()
        state = parse_qs(urlsplit(url).query)["state"][0]
        junk = "<script>alert(1)</script> and more"
        back = f"{sso.redirect}?{urlencode({'error': junk, 'state': state})}"
        event = sso.refused(sso.callback(back, flow), "idp_error")
        assert event.data == {"error": None} and junk not in sso.events.text()

    def test_rfc9207_an_authorization_response_from_another_issuer(self, sso: Sso) -> None:
        sso.idp.send_iss = "https://mix-up.example"
        sso.refused(sso.sign_in(), "issuer_mismatch")
        sso.idp.send_iss = sso.idp.issuer
        sso.events.clear()
        assert sso.sign_in().status_code == 200

    def test_the_token_endpoint_failing_is_a_502(self, sso: Sso) -> None:
        sso.idp.token_status = 503
        reply = sso.sign_in()
        assert reply.status_code == 502 and reply.json()["code"] == "sso_provider_unavailable"
        assert sso.events.of("admin_auth.sso_failed")[-1].reason == "token_endpoint_unavailable"


# -- the ID token ---------------------------------------------------------------------------------------


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def _hs256_with_public_key(idp: FakeIdp) -> Any:
    """The classic confusion attack: HS256, MACed with the provider's *public* key as the secret."""
    pem = idp.key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def make(claims: dict[str, Any]) -> str:
        signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(claims)}"
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    return make


@pytest.mark.parametrize(
    ("case", "jwt_code"),
    [
        ("wrong_nonce", None),
        ("no_nonce", None),
        ("wrong_audience", "jwt_audience_invalid"),
        ("wrong_issuer", "jwt_issuer_invalid"),
        ("expired", "jwt_expired"),
        ("not_yet_valid", "jwt_not_yet_valid"),
        ("issued_in_the_future", "jwt_issued_in_future"),
        ("alg_none", "jwt_alg_not_allowed"),
        ("hs256_with_the_public_key", "jwt_alg_not_allowed"),
        ("another_key_same_kid", "jwt_signature_invalid"),
        ("another_key_unknown_kid", "jwt_kid_unknown"),
        ("no_subject", "jwt_missing_claim"),
        ("several_audiences_without_azp", None),
        ("someone_elses_azp", None),
    ],
)
def test_id_tokens_that_must_be_refused(sso: Sso, case: str, jwt_code: str | None) -> None:
    idp = sso.idp
    now = sso.clock.now
    match case:
        case "wrong_nonce":
            idp.claims = {"nonce": "a-nonce-from-another-flow"}
        case "no_nonce":
            idp.claims = {"nonce": None}
        case "wrong_audience":
            idp.claims = {"aud": "another-client"}
        case "wrong_issuer":
            idp.claims = {"iss": "https://another-issuer.example"}
        case "expired":
            idp.claims = {"iat": now - 700, "exp": now - 61}  # beyond the 60 s leeway
        case "not_yet_valid":
            idp.claims = {"nbf": now + 600}
        case "issued_in_the_future":
            idp.claims = {"iat": now + 600, "exp": now + 900}
        case "alg_none":
            idp.raw_id_token = _unsigned
        case "hs256_with_the_public_key":
            idp.raw_id_token = _hs256_with_public_key(idp)
        case "another_key_same_kid":
            idp.sign_with = new_key("k1")
        case "another_key_unknown_kid":
            idp.sign_with = new_key("k-attacker")
        case "no_subject":
            idp.claims = {"sub": None}
        case "several_audiences_without_azp":
            idp.claims = {"aud": [CLIENT_ID, "another-client"]}
        case "someone_elses_azp":
            idp.claims = {"azp": "another-client"}
    expected = {
        "wrong_nonce": "nonce_mismatch",
        "no_nonce": "nonce_mismatch",
        "several_audiences_without_azp": "azp_mismatch",
        "someone_elses_azp": "azp_mismatch",
    }.get(case, "id_token_invalid")
    event = sso.refused(sso.sign_in(), expected)
    if jwt_code is not None:
        assert event.data == {"jwt": jwt_code}
    assert not sso.events.of("admin_account.created")


@pytest.mark.parametrize("case", ["expired_within_the_leeway", "several_audiences_with_azp", "azp_is_us"])
def test_id_tokens_that_pass(sso: Sso, case: str) -> None:
    sso.idp.claims = {
        "expired_within_the_leeway": {"exp": sso.clock.now - 30},  # clocks drift
        "several_audiences_with_azp": {"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID},
        "azp_is_us": {"azp": CLIENT_ID},
    }[case]
    reply = sso.sign_in()
    assert reply.status_code == 200, [(e.reason, e.data) for e in sso.events.of("admin_auth.sso_failed")]


# -- email ---------------------------------------------------------------------------------------------


class TestEmail:
    def test_a_new_account_needs_a_verified_address(self, sso: Sso) -> None:
        sso.idp.user["email_verified"] = False
        sso.refused(sso.sign_in(), "email_not_verified")
        sso.idp.user.pop("email")
        sso.events.clear()
        sso.refused(sso.sign_in(), "email_missing")

    def test_a_known_account_needs_no_address(self, sso: Sso) -> None:
        assert sso.sign_in().status_code == 200
        sso.idp.user.pop("email")
        assert sso.sign_in().status_code == 200

    def test_allowed_domains(self, make: Any) -> None:
        harness = make("      allowed_domains: [Example.com]")
        idp = harness.idp
        idp.user["email_verified"] = False
        harness.refused(harness.sign_in(), "email_not_verified")
        harness.events.clear()
        idp.user["email_verified"] = "true"  # some providers send a string
        assert harness.sign_in().status_code == 200
        idp.user.update(sub="x-" + uuid.uuid4().hex, email="mallory@example.com.evil.test")
        harness.events.clear()
        event = harness.refused(harness.sign_in(), "email_domain_not_allowed")
        assert event.data == {"domain": "example.com.evil.test"}
        idp.user.pop("email")
        harness.events.clear()
        harness.refused(harness.sign_in(), "email_missing")


# -- MFA ---------------------------------------------------------------------------------------------------


class TestMfa:
    def test_by_default_sso_is_the_first_factor_and_totp_is_still_due(self, make: Any) -> None:
        harness = make(require_mfa=True)
        harness.idp.user["amr"] = ["pwd", "mfa"]  # the provider did MFA, but trust_idp_mfa is off
        reply = harness.sign_in()
        assert reply.json()["stage"] == "enrol"
        passed = harness.events.of("admin_auth.first_factor_passed")[-1]
        assert passed.data == {"method": "sso", "next": "enrol"}
        assert not harness.events.of("admin_auth.signed_in")
        with harness.session(reply) as client:
            refused = client.get(f"{P}/keys")
            assert refused.status_code == 401 and refused.json()["code"] == "admin_mfa_required"
            assert client.get(f"{P}/auth/session").json()["stage"] == "enrol"

    def test_an_enrolled_account_is_asked_for_its_code(self, make: Any) -> None:
        harness = make(require_mfa=True)
        reply = harness.sign_in()
        with harness.session(reply) as client:
            csrf = {"x-csrf-token": reply.json()["csrf_token"]}
            uri = client.post(f"{P}/auth/mfa/totp", headers=csrf).json()["otpauth_uri"]
            totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
            code = {"code": totp.at(harness.clock.now)}
            assert (
                client.post(f"{P}/auth/mfa/totp/confirm", json=code, headers=csrf).json()["stage"] == "full"
            )
        harness.clock.now += 30
        second = harness.sign_in()
        assert second.json()["stage"] == "mfa"
        with harness.session(second) as client:
            csrf = {"x-csrf-token": second.json()["csrf_token"]}
            assert client.get(f"{P}/keys").status_code == 401
            done = client.post(f"{P}/auth/mfa", json={"code": totp.at(harness.clock.now)}, headers=csrf)
            assert done.status_code == 200 and done.json()["stage"] == "full"
        methods = [e.data["method"] for e in harness.events.of("admin_auth.signed_in")]
        assert methods == ["mfa:enrolment", "mfa:totp"]

    def test_trusted_provider_mfa_completes_the_sign_in(self, make: Any) -> None:
        harness = make("      trust_idp_mfa: true", require_mfa=True)
        harness.idp.user["amr"] = ["pwd", "mfa"]
        reply = harness.sign_in()
        assert reply.json()["stage"] == "full"
        assert harness.events.of("admin_auth.signed_in")[-1].data["method"] == "sso:idp_mfa"
        assert harness.events.of("admin_auth.sso_succeeded")[-1].data["idp_mfa"] is True
        with harness.session(reply) as client:
            me = client.get(f"{P}/auth/session").json()
            assert me["stage"] == "full" and me["mfa_at"] == int(harness.clock.now) - 5  # the auth_time

    @pytest.mark.parametrize(
        ("amr_setting", "amr", "stage"),
        [
            ("", ["pwd"], "enrol"),
            ("", ["otp"], "enrol"),  # one factor: by default only "mfa" counts
            ("", "mfa", "enrol"),  # not a list: not an amr
            ("      idp_mfa_amr: [mfa, otp]", ["pwd", "otp"], "full"),
        ],
    )
    def test_what_counts_as_provider_mfa(self, make: Any, amr_setting: str, amr: Any, stage: str) -> None:
        harness = make("      trust_idp_mfa: true\n" + amr_setting, require_mfa=True)
        harness.idp.user["amr"] = amr
        assert harness.sign_in().json()["stage"] == stage


# -- the provider: discovery, JWKS --------------------------------------------------------------------


class _Settings:
    def __init__(self, idp: FakeIdp) -> None:
        self.issuer = idp.issuer
        self.client_id = CLIENT_ID
        self.redirect_url = "http://127.0.0.1:1/admin/v1/auth/oidc/callback"
        self.scopes = ["openid"]
        self.groups_claim = "groups"
        self.role_map = {"ops": "operator"}
        self.default_role = "none"
        self.allowed_domains: list[str] = []
        self.trust_idp_mfa = False
        self.idp_mfa_amr = ["mfa"]
        self.algorithms = ["RS256"]
        self.leeway = 60.0
        self.flow_timeout = 600.0
        self.client_secret = Secret(CLIENT_SECRET)


class TestProvider:
    def test_discovery_and_jwks_are_cached_and_refetched_on_a_new_key(self, idp: FakeIdp) -> None:
        _reset(idp)
        mono = FakeClock(1000.0)
        provider = OidcProvider(_Settings(idp), clock=idp.clock, monotonic=mono)  # type: ignore[arg-type]

        def token(key: Any) -> str:
            now = idp.clock()
            claims = {
                "iss": idp.issuer,
                "aud": CLIENT_ID,
                "sub": "s",
                "iat": now,
                "exp": now + 60,
                "nonce": "n",
            }
            return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

        async def run() -> None:
            before = idp.records.discovery_fetches, idp.records.jwks_fetches
            for _ in range(3):
                await provider.metadata()
                assert (await provider.verify(token(idp.key), "n"))["sub"] == "s"
            assert (idp.records.discovery_fetches, idp.records.jwks_fetches) == (before[0] + 1, before[1] + 1)
            rotated = new_key("k2")  # the provider rotates its key
            idp.published = [idp.key, rotated]
            mono.now += 31  # past the refetch rate limit
            assert (await provider.verify(token(rotated), "n"))["sub"] == "s"
            assert idp.records.jwks_fetches == before[1] + 2
            # a burst of unknown kids costs at most one fetch per min_refresh_interval
            for i in range(20):
                with pytest.raises(SsoFailed) as exc:
                    await provider.verify(token(new_key(f"unknown-{i}")), "n")
                assert exc.value.data == {"jwt": "jwt_kid_unknown"}
            assert idp.records.jwks_fetches == before[1] + 2
            mono.now += 3601  # the discovery document is refetched after its TTL
            await provider.metadata()
            assert idp.records.discovery_fetches == before[0] + 2

        asyncio.run(run())

    def test_a_document_for_another_issuer_is_refused(self, idp: FakeIdp) -> None:
        _reset(idp)
        idp.discovery_extra = {"issuer": "https://someone-else.example"}
        provider = OidcProvider(_Settings(idp), clock=idp.clock)  # type: ignore[arg-type]
        with pytest.raises(SsoFailed) as exc:
            asyncio.run(provider.metadata())
        assert exc.value.cause == "discovery_failed" and exc.value.provider
        assert "issuer" in exc.value.data["error"]

    def test_a_provider_without_s256_is_refused(self, idp: FakeIdp) -> None:
        _reset(idp)
        idp.discovery_extra = {"code_challenge_methods_supported": ["plain"]}
        provider = OidcProvider(_Settings(idp), clock=idp.clock)  # type: ignore[arg-type]
        with pytest.raises(SsoFailed) as exc:
            asyncio.run(provider.metadata())
        assert "S256" in exc.value.data["error"]

    def test_an_unreachable_provider_is_a_502_at_start(self, tmp_path: Path, clock: FakeClock) -> None:
        with FakeIdp(clock) as gone:
            harness = Sso(tmp_path, gone, clock)
        try:  # the provider has stopped
            reply = httpx.get(f"{harness.base}{START}", follow_redirects=False, timeout=15)
            assert reply.status_code == 502 and reply.json()["code"] == "sso_provider_unavailable"
            assert FLOW not in reply.cookies
            failed = harness.events.of("admin_auth.sso_failed")[-1]
            assert failed.reason == "discovery_failed" and failed.severity == "error"
        finally:
            harness.close()

    def test_client_secret_post_when_basic_is_not_offered(self, make: Any) -> None:
        harness = make()
        harness.idp.discovery_extra = {"token_endpoint_auth_methods_supported": ["client_secret_post"]}
        assert harness.sign_in().status_code == 200
        token = harness.idp.records.token[-1]
        assert (token.client_auth, token.client_ok) == ("post", True)


# -- no secret anywhere ------------------------------------------------------------------------------


def test_no_secret_reaches_an_event_or_the_database(sso: Sso) -> None:
    idp = sso.idp
    flows = []
    for _ in range(2):
        flow, url = sso.begin()
        flows.append(flow)
        assert sso.callback(sso.authorize(url), flow).status_code == 200
    idp.claims = {"nonce": "wrong"}
    flow, url = sso.begin()
    flows.append(flow)
    sso.callback(sso.authorize(url), flow)
    secrets_seen = [CLIENT_SECRET, *flows, *idp.records.codes, *idp.records.id_tokens]
    for asked in idp.records.authorize:
        secrets_seen += [asked["state"], asked["nonce"], asked["code_challenge"]]
    secrets_seen += [t.form["code_verifier"] for t in idp.records.token]
    events = sso.events.text()
    conn = sqlite3.connect(sso.db)
    try:
        dumped = "\n".join(conn.iterdump())
    finally:
        conn.close()
    for value in secrets_seen:
        assert value not in events
        assert value not in dumped


# -- the real listener -------------------------------------------------------------------------------


def test_bastion_serve_wires_the_routes(tmp_path: Path, idp: FakeIdp) -> None:
    """The real listener (``bastion serve``'s code) offers the start route with PKCE."""
    _reset(idp)
    sso_block = f"""
    sso:
      issuer: {idp.issuer}
      client_id: {CLIENT_ID}
      client_secret: ${{env:SSO_CLIENT_SECRET}}
      redirect_url: http://127.0.0.1:8081/admin/v1/auth/oidc/callback
      role_map: {{ops: operator}}
"""
    extra = ACCOUNTS_BLOCK.format(token_enabled="true", lockout=5, ip_attempts=1000, accounts_extra=sso_block)
    with EchoUpstream() as up:
        loaded = load_text(
            config_text(up.port, tmp_path / "serve.db", admin=False, extra=extra),
            env={"BASTION_PEPPER": PEPPER, "SSO_CLIENT_SECRET": CLIENT_SECRET},
        )
        with GatewayThread(loaded) as gw:
            reply = httpx.get(f"http://127.0.0.1:{gw.admin_port}{START}", timeout=15)
    assert reply.status_code == 302
    target = urlsplit(reply.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{idp.issuer}/authorize"
    query = parse_qs(target.query)
    assert query["code_challenge_method"] == ["S256"] and query["client_id"] == [CLIENT_ID]
    assert FLOW in reply.cookies


# -- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sso", "message"),
    [
        ("issuer: http://idp.example.com", "https://"),
        ("redirect_url: https://ops.example.com/callback", "must end with /admin/v1/auth/oidc/callback"),
        ("redirect_url: http://ops.example.com/admin/v1/auth/oidc/callback", "https://"),
        ("scopes: [email, profile]", "scopes must include openid"),
        ("algorithms: [RS256, HS256]", "ID token algorithms"),
        ("algorithms: [none]", "ID token algorithms"),
        ("role_map: {}", "nobody could sign in"),
        ("role_map: {ops: root}", "role_map"),
        ("default_role: admin", "default_role"),
        ("allowed_domains: ['not a domain']", "allowed_domains"),
        ("flow_timeout: 2h", "flow_timeout"),
        ("leeway: 1h", "leeway"),
        ("unknown_key: 1", "unknown_key"),
    ],
)
def test_config_mistakes_are_named(tmp_path: Path, sso: str, message: str) -> None:
    fields = {
        "issuer": "https://idp.example.com",
        "client_id": "bastion",
        "client_secret": "${env:SSO_CLIENT_SECRET}",
        "redirect_url": "https://ops.example.com/admin/v1/auth/oidc/callback",
        "role_map": "{ops: admin}",
    }
    key, _, value = sso.partition(": ")
    fields[key] = value
    body = "\n".join(f"      {k}: {v}" for k, v in fields.items())
    extra = f"admin:\n  token: '{'t' * 32}'\n  accounts:\n    sso:\n{body}\n"
    with pytest.raises(ConfigError) as exc:
        load_text(config_text(1, tmp_path / "c.db", admin=False, extra=extra), env={"SSO_CLIENT_SECRET": "x"})
    assert message in str(exc.value.issues), exc.value.issues


def test_config_defaults_and_a_literal_secret_is_flagged(tmp_path: Path) -> None:
    extra = (
        f"admin:\n  token: '{'t' * 32}'\n  accounts:\n    sso:\n"
        "      issuer: https://idp.example.com\n      client_id: bastion\n"
        "      client_secret: literally-in-the-file\n"
        "      redirect_url: https://ops.example.com/admin/v1/auth/oidc/callback\n"
        "      default_role: viewer\n"
    )
    loaded = load_text(config_text(1, tmp_path / "c.db", admin=False, extra=extra))
    assert loaded.settings.admin is not None
    sso = loaded.settings.admin.accounts.sso
    assert sso is not None
    assert (sso.scopes, sso.groups_claim, sso.default_role, sso.trust_idp_mfa) == (
        ["openid", "email", "profile"],
        "groups",
        "viewer",
        False,
    )
    assert (sso.idp_mfa_amr, sso.leeway, sso.flow_timeout, sso.allowed_domains) == (["mfa"], 60.0, 600.0, [])
    assert "literally-in-the-file" not in repr(sso)
    assert any(w.path == "admin.accounts.sso.client_secret" for w in loaded.warnings)
