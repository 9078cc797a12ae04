"""Bastion's OAuth 2.0 server on the gateway listener, end to end with a real client library (authlib):
client credentials with ``client_secret_basic``, ``client_secret_post`` and ``private_key_jwt``
(RFC 7523), the RFC 6749 §5.2 error responses, the access-token format (RFC 9068), introspection
(RFC 7662), revocation (RFC 7009), metadata (RFC 8414), and tokens failing the moment their consumer
is disabled or their client revoked.

One gateway serves the module. The issuer is ``http://127.0.0.1`` (the port is chosen at start), so a
``private_key_jwt`` assertion names ``http://127.0.0.1/oauth/token`` as its audience.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from bastion.core.identity import AuthFailure

from ._identity import (
    VARYING_HEADERS,
    Reply,
    Stack,
    b64url,
    basic,
    bearer,
    identity_stack,
    unverified_parts,
)

ISSUER = "http://127.0.0.1"
TOKEN_PATH = "/oauth/token"
INTROSPECT_PATH = "/oauth/introspect"
REVOKE_PATH = "/oauth/revoke"
TOKEN_TTL = 600
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

ROUTES = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: [oauth2]
        scopes: [orders:read]
      - path: /v1/orders
        methods: [POST]
        auth: [oauth2]
        scopes: [orders:write]
"""

EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
  lockout: {failures: 10000, within: 5m, block_for: 5m}  # brute force has its own test file
oauth2:
  issuer: http://127.0.0.1
  token_ttl: 10m
"""


class Client:
    def __init__(self, client_id: str, secret: str | None = None, key: ECKey | None = None) -> None:
        self.client_id = client_id
        self.secret = secret
        self.key = key

    @property
    def basic(self) -> dict[str, str]:
        assert self.secret is not None
        return basic(self.client_id, self.secret)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with identity_stack(tmp_path_factory.mktemp("oauth"), ROUTES, EXTRA) as s:
        adm = s.admin()
        adm.create_consumer("acme", ["orders:read", "orders:write"], actor="test")
        adm.create_consumer("globex", ["orders:read", "orders:write"], actor="test")
        adm.create_consumer("auditor", ["orders:read", "bastion:introspect"], actor="test")
        yield s


def new_client(stack: Stack, consumer: str = "acme", scopes: list[str] | None = None) -> Client:
    record, secret = stack.admin().create_client(consumer, scopes, actor="test")
    assert secret is not None
    return Client(record["client_id"], secret)


def new_jwt_client(stack: Stack, consumer: str = "acme", scopes: list[str] | None = None) -> Client:
    key = ECKey.generate_key("P-256", parameters={"kid": "pk-" + secrets.token_hex(4)})
    record, secret = stack.admin().create_client(
        consumer, scopes, jwks={"keys": [key.as_dict(private=False)]}, actor="test"
    )
    assert secret is None
    assert record["auth_method"] == "private_key_jwt"
    return Client(record["client_id"], key=key)


def url(stack: Stack, path: str) -> str:
    return f"http://127.0.0.1:{stack.port}{path}"


def token_for(stack: Stack, client: Client, scope: str | None = None) -> str:
    fields = {"grant_type": "client_credentials"}
    if scope is not None:
        fields["scope"] = scope
    reply = stack.post_form(TOKEN_PATH, fields, client.basic)
    assert reply.status == 200, reply.body
    return str(reply.json()["access_token"])


def assertion(client: Client, *, audience: str = ISSUER + TOKEN_PATH, **overrides: Any) -> str:
    """A ``private_key_jwt`` client assertion (RFC 7523 §3)."""
    assert client.key is not None
    now = int(time.time())
    claims = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(16),
        **overrides,
    }
    return jwt.encode({"alg": "ES256", "kid": client.key.kid}, claims, client.key, algorithms=["ES256"])


def assert_oauth_error(reply: Reply, status: int, error: str) -> dict[str, Any]:
    """RFC 6749 §5.2: a JSON object with ``error`` (and here always ``error_description``), not cached."""
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].split(";")[0] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["pragma"] == "no-cache"
    doc = reply.json()
    assert doc["error"] == error
    assert isinstance(doc["error_description"], str) and doc["error_description"]
    assert set(doc) <= {"error", "error_description", "error_uri"}
    return doc


def comparable(reply: Reply) -> tuple[int, dict[str, str], bytes]:
    return reply.status, {k: v for k, v in reply.headers.items() if k not in VARYING_HEADERS}, reply.body


# -- a real OAuth2 client library -----------------------------------------------------------------------


class TestWithAuthlib:
    @pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
    def test_client_credentials_then_a_protected_call(self, stack: Stack, method: str) -> None:
        client = new_client(stack)
        with OAuth2Session(
            client.client_id,
            client.secret,
            scope="orders:read orders:write",
            token_endpoint_auth_method=method,
        ) as session:
            token = session.fetch_token(url(stack, TOKEN_PATH), grant_type="client_credentials")
            assert token["token_type"].lower() == "bearer"
            assert token["expires_in"] == TOKEN_TTL
            assert set(token["scope"].split()) == {"orders:read", "orders:write"}
            response = session.get(url(stack, "/v1/orders/7"))  # the session sends the bearer token
            assert response.status_code == 200, response.text
            seen = dict(response.json()["headers"])
            assert seen["x-bastion-consumer"] == "acme"
            assert seen["x-bastion-scopes"] == "orders:read orders:write"
            assert "authorization" not in seen
            response = session.post(url(stack, "/v1/orders"), json={"item": 1})
            assert response.status_code == 200, response.text

    def test_private_key_jwt(self, stack: Stack) -> None:
        client = new_jwt_client(stack, scopes=["orders:read"])
        auth = PrivateKeyJWT(
            ISSUER + TOKEN_PATH,
            alg="ES256",
            headers={"kid": client.key.kid},
            claims={"exp": int(time.time()) + 120},  # RFC 7523 §3: a short-lived assertion
        )
        with OAuth2Session(client.client_id, client.key, token_endpoint_auth_method=auth) as session:
            token = session.fetch_token(url(stack, TOKEN_PATH), grant_type="client_credentials")
            assert token["scope"] == "orders:read"
            response = session.get(url(stack, "/v1/orders/7"))
            assert response.status_code == 200, response.text
            assert dict(response.json()["headers"])["x-bastion-consumer"] == "acme"

    def test_introspect_and_revoke_through_the_library(self, stack: Stack) -> None:
        client = new_client(stack)
        with OAuth2Session(client.client_id, client.secret) as session:
            token = session.fetch_token(url(stack, TOKEN_PATH), grant_type="client_credentials")
            access = token["access_token"]
            info = session.introspect_token(url(stack, INTROSPECT_PATH), token=access)
            assert info.status_code == 200
            assert info.json()["active"] is True
            revoked = session.revoke_token(url(stack, REVOKE_PATH), token=access)
            assert revoked.status_code == 200
            assert session.introspect_token(url(stack, INTROSPECT_PATH), token=access).json() == {
                "active": False
            }
            assert session.get(url(stack, "/v1/orders/7")).status_code == 401


# -- private_key_jwt (RFC 7523) ------------------------------------------------------------------------


class TestPrivateKeyJwt:
    def form(self, client_assertion: str, **extra: str) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion,
            **extra,
        }

    def test_an_assertion_is_accepted_once(self, stack: Stack) -> None:
        client = new_jwt_client(stack)
        signed = assertion(client)
        first = stack.post_form(TOKEN_PATH, self.form(signed))
        assert first.status == 200, first.body
        replay = stack.post_form(TOKEN_PATH, self.form(signed))
        assert_oauth_error(replay, 401, "invalid_client")
        event = stack.event_for("auth.failed", replay)
        assert event["data"]["cause"] == "client_assertion_replayed"

    @pytest.mark.parametrize("audience", [ISSUER + TOKEN_PATH, ISSUER])
    def test_the_audience_may_be_the_token_endpoint_or_the_issuer(self, stack: Stack, audience: str) -> None:
        client = new_jwt_client(stack)
        reply = stack.post_form(TOKEN_PATH, self.form(assertion(client, audience=audience)))
        assert reply.status == 200, reply.body

    @pytest.mark.parametrize(
        "case",
        ["other-key", "wrong-audience", "expired", "sub-differs", "long-lived", "client-id-differs"],
    )
    def test_bad_assertions_are_invalid_client(self, stack: Stack, case: str) -> None:
        client = new_jwt_client(stack)
        now = int(time.time())
        extra: dict[str, str] = {}
        if case == "other-key":
            impostor = Client(
                client.client_id, key=ECKey.generate_key("P-256", parameters={"kid": client.key.kid})
            )
            signed = assertion(impostor)
        elif case == "wrong-audience":
            signed = assertion(client, audience="https://elsewhere.example/token")
        elif case == "expired":
            signed = assertion(client, iat=now - 600, exp=now - 300)
        elif case == "sub-differs":
            signed = assertion(client, sub="bcl_someoneelse")
        elif case == "long-lived":
            signed = assertion(client, exp=now + 86400)
        else:
            signed = assertion(client)
            extra["client_id"] = "bcl_someoneelse"
        assert_oauth_error(stack.post_form(TOKEN_PATH, self.form(signed, **extra)), 401, "invalid_client")


# -- RFC 6749 §5.2 error responses ---------------------------------------------------------------------


class TestTokenErrors:
    def test_a_bad_secret_and_an_unknown_client_look_the_same(self, stack: Stack) -> None:
        client = new_client(stack)
        form = {"grant_type": "client_credentials"}
        wrong = stack.post_form(TOKEN_PATH, form, basic(client.client_id, "bcs_" + "x" * 43))
        unknown = stack.post_form(TOKEN_PATH, form, basic("bcl_" + "y" * 20, "bcs_" + "x" * 43))
        for reply in (wrong, unknown):
            assert_oauth_error(reply, 401, "invalid_client")
            # RFC 6749 §5.2: the client used the Authorization header, so 401 and a challenge in its scheme.
            assert reply.headers["www-authenticate"].lower().startswith("basic")
        assert comparable(wrong) == comparable(unknown)

    def test_a_bad_secret_in_the_body_is_invalid_client(self, stack: Stack) -> None:
        client = new_client(stack)
        form = {"grant_type": "client_credentials", "client_id": client.client_id, "client_secret": "nope"}
        reply = stack.post_form(TOKEN_PATH, form)
        assert_oauth_error(reply, 401, "invalid_client")
        # the client id it tried is in the event: credential stuffing against clients is counted by it
        assert stack.event_for("auth.failed", reply)["data"]["client_id"] == client.client_id

    def test_no_client_authentication_is_invalid_client(self, stack: Stack) -> None:
        assert_oauth_error(
            stack.post_form(TOKEN_PATH, {"grant_type": "client_credentials"}), 401, "invalid_client"
        )

    @pytest.mark.parametrize("grant", ["password", "authorization_code", "refresh_token", "urn:x:custom"])
    def test_other_grants_are_unsupported(self, stack: Stack, grant: str) -> None:
        client = new_client(stack)
        reply = stack.post_form(TOKEN_PATH, {"grant_type": grant}, client.basic)
        assert_oauth_error(reply, 400, "unsupported_grant_type")

    def test_a_missing_grant_type_is_invalid_request(self, stack: Stack) -> None:
        client = new_client(stack)
        assert_oauth_error(
            stack.post_form(TOKEN_PATH, {"scope": "orders:read"}, client.basic), 400, "invalid_request"
        )

    def test_an_empty_grant_type_counts_as_missing(self, stack: Stack) -> None:
        # RFC 6749 §3.2: "Parameters sent without a value MUST be treated as if they were omitted".
        client = new_client(stack)
        assert_oauth_error(stack.post_form(TOKEN_PATH, "grant_type=", client.basic), 400, "invalid_request")

    def test_an_empty_scope_counts_as_omitted(self, stack: Stack) -> None:
        # RFC 6749 §3.2 again: an empty scope is no scope parameter, so the client's default scopes.
        client = new_client(stack)
        reply = stack.post_form(TOKEN_PATH, "grant_type=client_credentials&scope=", client.basic)
        assert reply.status == 200, reply.body
        assert reply.json()["scope"] == "orders:read orders:write"

    def test_a_repeated_parameter_is_invalid_request(self, stack: Stack) -> None:
        client = new_client(stack)
        body = "grant_type=client_credentials&grant_type=client_credentials"
        assert_oauth_error(stack.post_form(TOKEN_PATH, body, client.basic), 400, "invalid_request")
        body = "grant_type=client_credentials&scope=orders:read&scope=orders:write"
        assert_oauth_error(stack.post_form(TOKEN_PATH, body, client.basic), 400, "invalid_request")

    @pytest.mark.parametrize("content_type", ["application/json", "text/plain", "multipart/form-data"])
    def test_a_body_that_is_not_a_form_is_invalid_request(self, stack: Stack, content_type: str) -> None:
        client = new_client(stack)
        reply = stack.post_form(
            TOKEN_PATH, "grant_type=client_credentials", client.basic, content_type=content_type
        )
        assert_oauth_error(reply, 400, "invalid_request")

    def test_two_client_authentication_methods_are_invalid_request(self, stack: Stack) -> None:
        client = new_client(stack)
        form = {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
        }
        assert_oauth_error(stack.post_form(TOKEN_PATH, form, client.basic), 400, "invalid_request")

    @pytest.mark.parametrize("scope", ["orders:read admin", "orders:delete", "bastion:introspect"])
    def test_a_scope_beyond_the_client_is_invalid_scope(self, stack: Stack, scope: str) -> None:
        client = new_client(stack)
        reply = stack.post_form(
            TOKEN_PATH, {"grant_type": "client_credentials", "scope": scope}, client.basic
        )
        assert_oauth_error(reply, 400, "invalid_scope")

    def test_a_scope_the_consumer_holds_but_the_client_does_not_is_invalid_scope(self, stack: Stack) -> None:
        client = new_client(stack, scopes=["orders:read"])
        form = {"grant_type": "client_credentials", "scope": "orders:write"}
        assert_oauth_error(stack.post_form(TOKEN_PATH, form, client.basic), 400, "invalid_scope")

    def test_the_error_never_echoes_the_secret(self, stack: Stack) -> None:
        client = new_client(stack)
        wrong = "bcs_" + secrets.token_hex(20)
        reply = stack.post_form(
            TOKEN_PATH, {"grant_type": "client_credentials"}, basic(client.client_id, wrong)
        )
        assert_oauth_error(reply, 401, "invalid_client")
        assert wrong.encode() not in reply.body
        stack.event_for("auth.failed", reply)
        text = stack.all_events_text()
        assert wrong not in text
        assert client.secret not in text


# -- the token (RFC 6749 §5.1, RFC 9068) --------------------------------------------------------------


class TestTokens:
    def test_the_token_response(self, stack: Stack) -> None:
        client = new_client(stack)
        reply = stack.post_form(TOKEN_PATH, {"grant_type": "client_credentials"}, client.basic)
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"].split(";")[0] == "application/json"
        assert reply.headers["cache-control"] == "no-store"  # RFC 6749 §5.1
        assert reply.headers["pragma"] == "no-cache"
        doc = reply.json()
        assert doc["token_type"] == "Bearer"
        assert doc["expires_in"] == TOKEN_TTL
        assert doc["scope"] == "orders:read orders:write"

    def test_the_access_token_is_an_rfc9068_jwt(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        header, claims = unverified_parts(token)
        assert header["typ"] == "at+jwt"
        assert header["alg"] == "ES256"
        jwks = stack.get("/.well-known/jwks.json")
        assert jwks.status == 200
        published = jwks.json()
        assert header["kid"] in {k["kid"] for k in published["keys"]}
        assert all("d" not in k for k in published["keys"])  # public halves only
        # The signature verifies with the published key set.
        verified = jwt.decode(token, KeySet.import_key_set(published), algorithms=["ES256"]).claims
        assert verified == claims
        assert claims["iss"] == ISSUER
        assert claims["aud"] == ISSUER  # no oauth2.audience configured: the issuer
        assert claims["sub"] == client.client_id
        assert claims["client_id"] == client.client_id
        assert isinstance(claims["iat"], int)
        assert claims["exp"] - claims["iat"] == TOKEN_TTL
        assert abs(claims["iat"] - time.time()) < 60
        assert claims["scope"] == "orders:read orders:write"
        assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
        assert unverified_parts(token_for(stack, client))[1]["jti"] != claims["jti"]

    def test_scope_down_selection(self, stack: Stack) -> None:
        client = new_client(stack)
        reply = stack.post_form(
            TOKEN_PATH, {"grant_type": "client_credentials", "scope": "orders:read"}, client.basic
        )
        assert reply.status == 200, reply.body
        assert reply.json()["scope"] == "orders:read"
        token = reply.json()["access_token"]
        assert unverified_parts(token)[1]["scope"] == "orders:read"
        ok = stack.get("/v1/orders/1", bearer(token))
        assert ok.status == 200
        assert ok.upstream_headers()["x-bastion-scopes"] == ["orders:read"]
        denied = stack.call("POST", "/v1/orders", bearer(token), b"{}")
        assert denied.status == 403
        assert denied.json()["code"] == "insufficient_scope"

    def test_a_tampered_token_is_refused(self, stack: Stack) -> None:
        token = token_for(stack, new_client(stack, scopes=["orders:read"]))
        head, _payload, sig = token.split(".")
        _, claims = unverified_parts(token)
        forged = b64url(json.dumps({**claims, "scope": "orders:read orders:write"}).encode())
        reply = stack.call("POST", "/v1/orders", bearer(f"{head}.{forged}.{sig}"), b"{}")
        assert reply.status == 401
        assert reply.json()["code"] == "auth_invalid"

    def test_an_expired_token_is_refused(self, stack: Stack) -> None:
        # token_ttl cannot be under a minute, so time is moved for the verifier instead of waiting.
        token = token_for(stack, new_client(stack))
        exp = unverified_parts(token)[1]["exp"]
        verifier = stack.identity.verifiers["oauth2"]
        assert asyncio.run(verifier.verify(token, exp - 1)).consumer == "acme"
        with pytest.raises(AuthFailure) as failure:
            asyncio.run(verifier.verify(token, exp + 60))
        assert failure.value.code == "jwt_expired"


# -- introspection (RFC 7662) ---------------------------------------------------------------------------


class TestIntrospection:
    def introspect(self, stack: Stack, token: str, caller: Client | None, **extra: str) -> Reply:
        return stack.post_form(INTROSPECT_PATH, {"token": token, **extra}, caller.basic if caller else None)

    def test_an_active_token(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client, "orders:read")
        reply = self.introspect(stack, token, client, token_type_hint="access_token")
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"].split(";")[0] == "application/json"
        doc = reply.json()
        claims = unverified_parts(token)[1]
        assert doc["active"] is True
        assert doc["scope"] == "orders:read"
        assert doc["client_id"] == client.client_id
        assert doc["exp"] == claims["exp"]
        assert doc["iat"] == claims["iat"]
        assert doc["sub"] == client.client_id
        assert doc["iss"] == ISSUER
        assert doc["token_type"] == "Bearer"

    def test_another_client_of_the_same_consumer_may_introspect(self, stack: Stack) -> None:
        token = token_for(stack, new_client(stack))
        assert self.introspect(stack, token, new_client(stack)).json()["active"] is True

    def test_a_client_of_another_consumer_learns_nothing(self, stack: Stack) -> None:
        token = token_for(stack, new_client(stack))
        reply = self.introspect(stack, token, new_client(stack, "globex"))
        assert reply.status == 200
        assert reply.json() == {"active": False}

    def test_a_client_holding_the_introspection_scope_may_introspect_any_token(self, stack: Stack) -> None:
        token = token_for(stack, new_client(stack))
        auditor = new_client(stack, "auditor")
        assert self.introspect(stack, token, auditor).json()["active"] is True

    @pytest.mark.parametrize("garbage", ["garbage", "eyJhbGciOiJub25lIn0.e30.", "a.b.c", "x" * 3000])
    def test_garbage_is_inactive(self, stack: Stack, garbage: str) -> None:
        reply = self.introspect(stack, garbage, new_client(stack))
        assert reply.status == 200
        assert reply.json() == {"active": False}

    def test_an_unauthenticated_caller_is_invalid_client(self, stack: Stack) -> None:
        token = token_for(stack, new_client(stack))
        reply = self.introspect(stack, token, None)
        assert_oauth_error(reply, 401, "invalid_client")
        assert token.encode() not in reply.body

    def test_a_wrongly_authenticated_caller_is_invalid_client(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        reply = stack.post_form(INTROSPECT_PATH, {"token": token}, basic(client.client_id, "wrong"))
        assert_oauth_error(reply, 401, "invalid_client")

    def test_a_missing_token_is_invalid_request(self, stack: Stack) -> None:
        client = new_client(stack)
        assert_oauth_error(stack.post_form(INTROSPECT_PATH, {}, client.basic), 400, "invalid_request")

    def test_a_private_key_jwt_client_may_introspect(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        caller = new_jwt_client(stack)
        form = {
            "token": token,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(caller),
        }
        reply = stack.post_form(INTROSPECT_PATH, form)
        assert reply.status == 200, reply.body
        assert reply.json()["active"] is True


# -- revocation (RFC 7009) -------------------------------------------------------------------------------


class TestRevocation:
    def revoke(self, stack: Stack, token: str, caller: Client | None, **extra: str) -> Reply:
        return stack.post_form(REVOKE_PATH, {"token": token, **extra}, caller.basic if caller else None)

    def test_a_revoked_token_is_refused_at_once(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        assert stack.get("/v1/orders/1", bearer(token)).status == 200
        reply = self.revoke(stack, token, client, token_type_hint="access_token")
        assert reply.status == 200, reply.body
        assert reply.headers["cache-control"] == "no-store"
        refused = stack.get("/v1/orders/1", bearer(token))
        assert refused.status == 401
        assert refused.json()["code"] == "auth_invalid"
        assert stack.event_for("auth.failed", refused)["data"]["cause"] == "token_revoked"
        introspected = stack.post_form(INTROSPECT_PATH, {"token": token}, client.basic)
        assert introspected.json() == {"active": False}
        # Revoking twice is fine, and other tokens of the client still work.
        assert self.revoke(stack, token, client).status == 200
        assert stack.get("/v1/orders/1", bearer(token_for(stack, client))).status == 200

    def test_a_tampered_copy_of_a_remembered_token_is_refused(self, stack: Stack) -> None:
        """Verified tokens are remembered under their signature's last characters: a token that ends the
        same (the same signature over other claims) must still be verified, and fail."""
        client = new_client(stack, scopes=["orders:read"])
        token = token_for(stack, client)
        assert stack.get("/v1/orders/1", bearer(token)).status == 200  # verified, and remembered
        head, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["scope"] = "orders:read orders:write"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        tampered = f"{head}.{forged}.{signature}"
        refused = stack.call("POST", "/v1/orders", bearer(tampered), b"{}")
        assert refused.status == 401
        assert stack.event_for("auth.failed", refused)["data"]["cause"] == "jwt_signature_invalid"
        assert stack.get("/v1/orders/1", bearer(token)).status == 200

    def test_a_revocation_survives_a_reload_of_the_identities(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        assert self.revoke(stack, token, client).status == 200
        stack.admin().create_consumer("reload-trigger", ["orders:read"], actor="test")  # reloads the snapshot
        assert stack.get("/v1/orders/1", bearer(token)).status == 401

    def test_an_unknown_hint_is_ignored(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        assert self.revoke(stack, token, client, token_type_hint="refresh_token").status == 200
        assert stack.get("/v1/orders/1", bearer(token)).status == 401

    @pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
    def test_revoking_garbage_is_200(self, stack: Stack, garbage: str) -> None:
        # RFC 7009 §2.2: invalid tokens do not cause an error response.
        assert self.revoke(stack, garbage, new_client(stack)).status == 200

    def test_another_clients_token_cannot_be_revoked(self, stack: Stack) -> None:
        owner = new_client(stack)
        token = token_for(stack, owner)
        for caller in (new_client(stack), new_client(stack, "globex")):
            reply = self.revoke(stack, token, caller)
            assert_oauth_error(reply, 400, "unauthorized_client")
        assert stack.get("/v1/orders/1", bearer(token)).status == 200

    def test_an_unauthenticated_caller_is_invalid_client(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        assert_oauth_error(self.revoke(stack, token, None), 401, "invalid_client")
        assert stack.get("/v1/orders/1", bearer(token)).status == 200

    def test_a_missing_token_is_invalid_request(self, stack: Stack) -> None:
        assert_oauth_error(stack.post_form(REVOKE_PATH, {}, new_client(stack).basic), 400, "invalid_request")


# -- changes to the consumer or client take effect on the next request ------------------------------


class TestLifecycle:
    def test_disabling_the_consumer_fails_its_tokens_at_once(self, stack: Stack) -> None:
        stack.admin().create_consumer("initech", ["orders:read"], actor="test")
        client = new_client(stack, "initech")
        token = token_for(stack, client)
        assert stack.get("/v1/orders/1", bearer(token)).status == 200
        stack.admin().set_consumer_active("initech", False, actor="test")
        assert stack.get("/v1/orders/1", bearer(token)).status == 401
        form = {"grant_type": "client_credentials"}
        assert_oauth_error(stack.post_form(TOKEN_PATH, form, client.basic), 401, "invalid_client")
        stack.admin().set_consumer_active("initech", True, actor="test")
        assert stack.get("/v1/orders/1", bearer(token)).status == 200

    def test_revoking_the_client_fails_its_tokens_at_once(self, stack: Stack) -> None:
        client = new_client(stack)
        token = token_for(stack, client)
        assert stack.get("/v1/orders/1", bearer(token)).status == 200
        stack.admin().revoke_client(client.client_id, actor="test")
        assert stack.get("/v1/orders/1", bearer(token)).status == 401
        form = {"grant_type": "client_credentials"}
        assert_oauth_error(stack.post_form(TOKEN_PATH, form, client.basic), 401, "invalid_client")

    def test_narrowing_the_consumer_narrows_its_tokens_at_once(self, stack: Stack) -> None:
        stack.admin().create_consumer("umbrella", ["orders:read", "orders:write"], actor="test")
        token = token_for(stack, new_client(stack, "umbrella"))
        assert stack.call("POST", "/v1/orders", bearer(token), b"{}").status == 200
        stack.admin().update_consumer_scopes("umbrella", ["orders:read"], actor="test")
        assert stack.call("POST", "/v1/orders", bearer(token), b"{}").status == 403


# -- discovery (RFC 8414, RFC 7517) ----------------------------------------------------------------------


class TestMetadata:
    def metadata(self, stack: Stack) -> dict[str, Any]:
        reply = stack.get("/.well-known/oauth-authorization-server")
        assert reply.status == 200
        assert reply.headers["content-type"].split(";")[0] == "application/json"
        return reply.json()

    def test_the_endpoints_are_listed(self, stack: Stack) -> None:
        doc = self.metadata(stack)
        assert doc["issuer"] == ISSUER
        assert doc["token_endpoint"] == ISSUER + TOKEN_PATH
        assert doc["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
        assert doc["introspection_endpoint"] == ISSUER + INTROSPECT_PATH
        assert doc["revocation_endpoint"] == ISSUER + REVOKE_PATH
        assert doc["grant_types_supported"] == ["client_credentials"]
        assert {"client_secret_basic", "client_secret_post", "private_key_jwt"} <= set(
            doc["token_endpoint_auth_methods_supported"]
        )
        assert "ES256" in doc["token_endpoint_auth_signing_alg_values_supported"]

    def test_the_required_members_are_present(self, stack: Stack) -> None:
        # RFC 8414 §2: issuer and response_types_supported are REQUIRED (an empty list for a server
        # without an authorization endpoint); authorization_endpoint is not, with no grant that uses it.
        doc = self.metadata(stack)
        assert "response_types_supported" in doc
        assert isinstance(doc["response_types_supported"], list)

    def test_a_client_library_can_read_the_metadata(self, stack: Stack) -> None:
        response = requests.get(url(stack, "/.well-known/oauth-authorization-server"), timeout=10)
        assert response.status_code == 200
        assert response.json()["issuer"] == ISSUER


class TestHostileClientAuthentication:
    """Inputs that once escaped as 500s: each is an ordinary invalid_client now."""

    def test_a_deeply_nested_client_assertion(self, stack: Stack) -> None:
        payload = b64url(b"[" * 3000)
        head = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
        fields = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": f"{head}.{payload}.AAAA",
        }
        for path in ("/oauth/token", "/oauth/introspect", "/oauth/revoke"):
            reply = stack.post_form(path, {**fields, "token": "x"} if path != "/oauth/token" else fields)
            assert reply.status == 401, (path, reply.body)
            assert reply.json()["error"] == "invalid_client"

    def test_a_basic_header_that_is_not_ascii(self, stack: Stack) -> None:
        reply = stack.post_form(
            "/oauth/token", {"grant_type": "client_credentials"}, {"Authorization": "Basic \xe9\xe9"}
        )
        assert reply.status == 401, reply.body
        assert reply.json()["error"] == "invalid_client"
