"""Authentication and authorisation through the real proxy: API keys (header, bearer, opt-in query),
the principal headers the upstream receives, credential stripping, revocation, consumer disable and
rotation taking effect on the next request, the events failures leave (never the secret), and JWTs from
an external issuer whose JWKS is served on 127.0.0.1.

One gateway serves the whole module; each test makes its own consumers or keys when it changes state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support import raw_exchange, status_of

from ._identity import (
    JwksServer,
    Reply,
    Stack,
    b64url,
    bad_checksum,
    basic,
    bearer,
    identity_stack,
    key_id,
    key_secret,
    random_key,
)

IDP_ISSUER = "https://idp.example.com/"
IDP_AUDIENCE = "orders-api"
IDP_KEY = RSAKey.generate_key(2048, parameters={"kid": "corp-1", "alg": "RS256", "use": "sig"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "corp-1"})  # same kid, not the IdP's key

ROUTES = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: [api_key, oauth2, "jwt:corp-idp"]
        scopes: [orders:read]
      - path: /v1/orders
        methods: [POST]
        auth: [api_key]
        scopes: [orders:write]
      - path: /public/{rest:path}
        methods: [GET]
        auth: none
      - path: /v1/export
        methods: [GET]
        auth: [api_key]
        scopes: [orders:read]
        api_key_in_query: true
      - path: /v1/passthrough
        methods: [GET]
        auth: [api_key]
        forward_credentials: true
      - path: /v1/partners/{order_id}
        methods: [GET]
        auth: ["jwt:corp-idp"]
        scopes: [orders:read]
      - path: /v1/reports/{report_id}
        methods: [GET]
        auth: ["jwt:corp-idp", oauth2]
        scopes: [orders:read]
"""

EXTRA = """
identity:
  pepper: ${{env:BASTION_PEPPER}}
  lockout: {{failures: 10000, within: 5m, block_for: 5m}}  # stuffing has its own file
oauth2:
  issuer: http://127.0.0.1
jwt_issuers:
  - name: corp-idp
    issuer: {issuer}
    audience: {audience}
    jwks_url: {jwks_url}
    algorithms: [RS256, ES256]
"""

# The issue's route (any of three methods), a route that takes only the external issuer's tokens and
# one that lists the issuer before Bastion's own tokens.
JWT_ROUTES = ["/v1/orders/7", "/v1/partners/7", "/v1/reports/7"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    jwks = {"keys": [IDP_KEY.as_dict(private=False)]}
    with JwksServer(jwks) as idp:
        extra = EXTRA.format(issuer=IDP_ISSUER, audience=IDP_AUDIENCE, jwks_url=idp.url)
        with identity_stack(tmp_path_factory.mktemp("auth"), ROUTES, extra) as s:
            yield s


@pytest.fixture(scope="module")
def shop(stack: Stack) -> dict[str, str]:
    """A consumer with a read-only key and a read-write key."""
    adm = stack.admin()
    adm.create_consumer("shop", ["orders:read", "orders:write"], actor="test")
    _, read = adm.create_key("shop", ["orders:read"], actor="test")
    _, both = adm.create_key("shop", actor="test")
    return {"read": read, "both": both}


def new_consumer(stack: Stack, name: str, scopes: list[str] | None = None) -> str:
    """A fresh consumer (for tests that change state) and a key with all its scopes."""
    adm = stack.admin()
    adm.create_consumer(name, scopes or ["orders:read", "orders:write"], actor="test")
    return adm.create_key(name, actor="test")[1]


def assert_problem(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.headers["cache-control"] == "no-store"
    doc = reply.json()
    assert doc["status"] == status
    assert doc["code"] == code
    assert doc["request_id"] == reply.headers["x-request-id"]
    return doc


# -- API keys through the proxy -----------------------------------------------------------------------


class TestApiKeys:
    @pytest.mark.parametrize("style", ["bearer", "x-api-key", "X-API-KEY"])
    def test_a_valid_key_reaches_the_upstream_as_the_consumer(
        self, stack: Stack, shop: dict[str, str], style: str
    ) -> None:
        key = shop["read"]
        headers = bearer(key) if style == "bearer" else {style: key}
        reply = stack.get("/v1/orders/42", headers)
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        assert seen["x-bastion-consumer"] == ["shop"]
        assert seen["x-bastion-scopes"] == ["orders:read"]
        # The caller's credential never reaches the upstream.
        assert "authorization" not in seen
        assert "x-api-key" not in seen
        assert key not in reply.body.decode()

    def test_scopes_header_lists_every_effective_scope(self, stack: Stack, shop: dict[str, str]) -> None:
        reply = stack.call("POST", "/v1/orders", {"X-API-Key": shop["both"]}, b"{}")
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        assert seen["x-bastion-consumer"] == ["shop"]
        assert seen["x-bastion-scopes"] == ["orders:read orders:write"]

    def test_principal_headers_from_the_client_are_replaced(self, stack: Stack, shop: dict[str, str]) -> None:
        spoof = {
            "X-Bastion-Consumer": "root",
            "X-Bastion-Scopes": "orders:read orders:write admin:all",
            "X-API-Key": shop["read"],
        }
        reply = stack.get("/v1/orders/1", spoof)
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        assert seen["x-bastion-consumer"] == ["shop"]
        assert seen["x-bastion-scopes"] == ["orders:read"]

    def test_principal_headers_from_the_client_are_stripped_on_open_routes(self, stack: Stack) -> None:
        spoof = {"X-Bastion-Consumer": "root", "X-Bastion-Scopes": "admin:all", "x-bastion-consumer": "again"}
        reply = stack.get("/public/page", spoof)
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        assert "x-bastion-consumer" not in seen
        assert "x-bastion-scopes" not in seen

    def test_an_open_route_forwards_the_authorization_header(self, stack: Stack) -> None:
        # Stripping is for credentials Bastion consumed; an auth: none route consumed none.
        reply = stack.get("/public/page", {"Authorization": "Bearer upstream-own-token"})
        assert reply.status == 200
        assert reply.upstream_headers()["authorization"] == ["Bearer upstream-own-token"]

    def test_an_open_route_forwards_every_credential_header_in_per_name_order(self, stack: Stack) -> None:
        raw = raw_exchange(
            stack.port,
            b"GET /public/page HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer one\r\nX-API-Key: k1\r\n"
            b"Authorization: Bearer two\r\nConnection: close\r\n\r\n",
        )
        assert status_of(raw) == 200
        seen = Reply(200, {}, raw.split(b"\r\n\r\n", 1)[1]).upstream_headers()
        assert seen["authorization"] == ["Bearer one", "Bearer two"]
        assert seen["x-api-key"] == ["k1"]

    def test_a_credential_named_in_connection_is_hop_by_hop_on_an_open_route(self, stack: Stack) -> None:
        reply = stack.get("/public/page", {"Authorization": "Bearer hop", "Connection": "Authorization"})
        assert reply.status == 200
        assert "authorization" not in reply.upstream_headers()

    @pytest.mark.parametrize("style", ["bearer", "x-api-key"])
    def test_forward_credentials_passes_the_credential_on(
        self, stack: Stack, shop: dict[str, str], style: str
    ) -> None:
        key = shop["read"]
        headers = bearer(key) if style == "bearer" else {"X-API-Key": key}
        reply = stack.get("/v1/passthrough", headers)
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        if style == "bearer":
            assert seen["authorization"] == [f"Bearer {key}"]
        else:
            assert seen["x-api-key"] == [key]
        assert seen["x-bastion-consumer"] == ["shop"]

    def test_no_credentials_is_auth_required(self, stack: Stack) -> None:
        before = len(stack.upstream.requests)
        reply = stack.get("/v1/orders/1")
        assert_problem(reply, 401, "auth_required")
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert len(stack.upstream.requests) == before

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda key: random_key(), id="unknown-id"),
            pytest.param(lambda key: random_key(key_id(key)), id="wrong-secret"),
            pytest.param(bad_checksum, id="bad-checksum"),
            pytest.param(lambda key: key[:-1], id="truncated"),
            pytest.param(lambda key: "bst_short", id="garbage-with-prefix"),
        ],
    )
    @pytest.mark.parametrize("style", ["bearer", "x-api-key"])
    def test_a_bad_key_is_auth_invalid(
        self, stack: Stack, shop: dict[str, str], make: Any, style: str
    ) -> None:
        presented = make(shop["read"])
        headers = bearer(presented) if style == "bearer" else {"X-API-Key": presented}
        before = len(stack.upstream.requests)
        reply = stack.get("/v1/orders/1", headers)
        assert_problem(reply, 401, "auth_invalid")
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
        assert len(stack.upstream.requests) == before

    def test_two_different_keys_in_one_request_are_refused(self, stack: Stack, shop: dict[str, str]) -> None:
        reply = stack.get("/v1/orders/1", {**bearer(shop["read"]), "X-API-Key": shop["both"]})
        assert_problem(reply, 401, "auth_invalid")

    def test_a_key_in_the_query_string_is_ignored_unless_the_route_opts_in(
        self, stack: Stack, shop: dict[str, str]
    ) -> None:
        reply = stack.get(f"/v1/orders/1?api_key={shop['read']}")
        assert_problem(reply, 401, "auth_required")

    def test_the_opted_in_route_takes_the_key_from_the_query_and_removes_it(
        self, stack: Stack, shop: dict[str, str]
    ) -> None:
        key = shop["read"]
        reply = stack.get(f"/v1/export?page=2&api_key={key}&sort=asc")
        assert reply.status == 200, reply.body
        assert reply.upstream_target() == "/v1/export?page=2&sort=asc"
        assert reply.upstream_headers()["x-bastion-consumer"] == ["shop"]
        reply = stack.get(f"/v1/export?api_key={key}")
        assert reply.status == 200, reply.body
        assert reply.upstream_target() == "/v1/export"

    def test_the_opted_in_route_never_forwards_the_key_whatever_its_encoding(
        self, stack: Stack, shop: dict[str, str]
    ) -> None:
        # api%5Fkey is the same parameter name once decoded: if Bastion authenticates with it, it must
        # also remove it, or the key reaches the upstream (and its access logs).
        key = shop["read"]
        before = len(stack.upstream.requests)
        reply = stack.get(f"/v1/export?api%5Fkey={key}&page=2")
        forwarded = stack.upstream.requests[before:]
        assert key not in repr(forwarded), reply.status

    def test_the_opted_in_route_still_takes_header_keys(self, stack: Stack, shop: dict[str, str]) -> None:
        reply = stack.get("/v1/export?page=1", {"X-API-Key": shop["read"]})
        assert reply.status == 200, reply.body
        assert reply.upstream_target() == "/v1/export?page=1"

    def test_insufficient_scope_is_403(self, stack: Stack, shop: dict[str, str]) -> None:
        before = len(stack.upstream.requests)
        reply = stack.call("POST", "/v1/orders", {"X-API-Key": shop["read"]}, b"{}")
        assert_problem(reply, 403, "insufficient_scope")
        challenge = reply.headers["www-authenticate"]
        assert challenge.startswith("Bearer")
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="orders:write"' in challenge
        assert len(stack.upstream.requests) == before


# -- changes take effect on the next request ----------------------------------------------------------


class TestLifecycle:
    def test_revocation_is_immediate(self, stack: Stack) -> None:
        key = new_consumer(stack, "revoked-co")
        assert stack.get("/v1/orders/1", {"X-API-Key": key}).status == 200
        stack.admin().revoke_key(key_id(key), actor="test")
        reply = stack.get("/v1/orders/1", {"X-API-Key": key})
        assert_problem(reply, 401, "auth_invalid")
        # The client cannot tell, but the event log names the use of a revoked key (a leak signal).
        assert stack.event_for("auth.failed", reply)["data"]["cause"] == "api_key_revoked"

    def test_disabling_the_consumer_is_immediate(self, stack: Stack) -> None:
        key = new_consumer(stack, "disabled-co")
        assert stack.get("/v1/orders/1", bearer(key)).status == 200
        stack.admin().set_consumer_active("disabled-co", False, actor="test")
        assert_problem(stack.get("/v1/orders/1", bearer(key)), 401, "auth_invalid")
        stack.admin().set_consumer_active("disabled-co", True, actor="test")
        assert stack.get("/v1/orders/1", bearer(key)).status == 200

    def test_narrowing_the_consumer_narrows_its_keys_at_once(self, stack: Stack) -> None:
        key = new_consumer(stack, "narrowed-co")
        assert stack.call("POST", "/v1/orders", bearer(key), b"{}").status == 200
        stack.admin().update_consumer_scopes("narrowed-co", ["orders:read"], actor="test")
        assert_problem(stack.call("POST", "/v1/orders", bearer(key), b"{}"), 403, "insufficient_scope")
        reply = stack.get("/v1/orders/1", bearer(key))
        assert reply.upstream_headers()["x-bastion-scopes"] == ["orders:read"]

    def test_both_keys_work_during_the_rotation_grace(self, stack: Stack) -> None:
        old = new_consumer(stack, "rotating-co")
        record, new = stack.admin().rotate_key(key_id(old), grace=3600, actor="test")
        assert record["id"] == key_id(new) != key_id(old)
        for key in (old, new):
            reply = stack.get("/v1/orders/1", {"X-API-Key": key})
            assert reply.status == 200, reply.body
            assert reply.upstream_headers()["x-bastion-consumer"] == ["rotating-co"]
        used = stack.wait_event("api_key.used_after_rotation", lambda e: e["data"]["key_id"] == key_id(old))
        assert used["data"]["new_key_id"] == key_id(new)
        assert used["data"]["consumer"] == "rotating-co"
        assert used["actor"] == f"consumer:rotating-co/key:{key_id(old)}"
        # Only the old key's use is flagged.
        assert not [
            e for e in stack.events("api_key.used_after_rotation") if e["data"]["key_id"] == key_id(new)
        ]
        text = json.dumps(used)
        assert key_secret(old) not in text and key_secret(new) not in text

    @pytest.mark.parametrize("how", ["no-grace", "grace-over"])
    def test_after_the_grace_only_the_new_key_works(self, stack: Stack, how: str) -> None:
        old = new_consumer(stack, f"rotated-{how}")
        if how == "no-grace":
            _, new = stack.admin().rotate_key(key_id(old), grace=0, actor="test")
        else:  # rotated two hours ago with a one-hour grace
            past = stack.admin(clock=lambda: time.time() - 7200)
            _, new = past.rotate_key(key_id(old), grace=3600, actor="test")
        assert_problem(stack.get("/v1/orders/1", {"X-API-Key": old}), 401, "auth_invalid")
        assert stack.get("/v1/orders/1", {"X-API-Key": new}).status == 200

    def test_failures_are_events_with_cause_and_key_id_but_never_the_key(
        self, stack: Stack, shop: dict[str, str]
    ) -> None:
        valid = shop["both"]
        wrong = random_key(key_id(valid))
        unknown = random_key()
        checksum = bad_checksum(random_key())
        malformed = random_key()[:-1]
        in_query = random_key(key_id(valid))
        cases = [
            (stack.get("/v1/orders/1", {"X-API-Key": wrong}), "api_key_mismatch", key_id(valid)),
            (stack.get("/v1/orders/1", bearer(unknown)), "api_key_unknown", key_id(unknown)),
            (stack.get("/v1/orders/1", {"X-API-Key": checksum}), "api_key_checksum", None),
            (stack.get("/v1/orders/1", {"X-API-Key": malformed}), "api_key_malformed", None),
            (stack.get(f"/v1/export?api_key={in_query}"), "api_key_mismatch", key_id(valid)),
        ]
        for reply, cause, kid in cases:
            assert_problem(reply, 401, "auth_invalid")
            event = stack.event_for("auth.failed", reply)
            assert event["reason"] == "auth_invalid"
            assert event["data"]["cause"] == cause
            assert event["data"].get("key_id") == kid
            assert event["source_ip"] == "127.0.0.1"
        assert stack.get("/v1/orders/1", {"X-API-Key": valid}).status == 200
        text = stack.all_events_text()
        for key in (valid, wrong, unknown, checksum, malformed, in_query):
            assert key not in text
            assert key_secret(key) not in text


# -- a token of Bastion's own OAuth2 server on the mixed routes -------------------------------------


def bastion_token(stack: Stack, consumer: str) -> str:
    adm = stack.admin()
    adm.create_consumer(consumer, ["orders:read"], actor="test")
    client, secret = adm.create_client(consumer, actor="test")
    assert secret is not None
    reply = stack.post_form(
        "/oauth/token", {"grant_type": "client_credentials"}, basic(client["client_id"], secret)
    )
    assert reply.status == 200, reply.body
    return str(reply.json()["access_token"])


@pytest.mark.parametrize("path", ["/v1/orders/1", "/v1/reports/1"])
def test_the_mixed_routes_take_bastion_oauth_tokens(stack: Stack, path: str) -> None:
    # Any listed method may authenticate, whatever the order it is listed in.
    consumer = "oauth-co-" + path.split("/")[2]
    reply = stack.get(path, bearer(bastion_token(stack, consumer)))
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers()
    assert seen["x-bastion-consumer"] == [consumer]
    assert seen["x-bastion-scopes"] == ["orders:read"]
    assert "authorization" not in seen


# -- an external issuer (jwt:corp-idp) -------------------------------------------------------------


def idp_token(
    key: RSAKey = IDP_KEY,
    *,
    header: dict[str, Any] | None = None,
    **overrides: Any,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": IDP_ISSUER,
        "aud": IDP_AUDIENCE,
        "sub": "partner-a",
        "scope": "orders:read",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    head = header or {"alg": "RS256", "kid": "corp-1", "typ": "JWT"}
    return jwt.encode(head, claims, key, algorithms=[head["alg"]])


def alg_none_token() -> str:
    now = int(time.time())
    head = b64url(json.dumps({"alg": "none", "kid": "corp-1", "typ": "JWT"}).encode())
    body = {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": "partner-a", "scope": "orders:read"}
    claims = b64url(json.dumps({**body, "iat": now, "exp": now + 300}).encode())
    return f"{head}.{claims}."


BAD_TOKENS = {
    "wrong-audience": (lambda: idp_token(aud="another-api"), "jwt_audience_invalid"),
    "wrong-issuer": (lambda: idp_token(iss="https://evil.example.com/"), "token_issuer_unknown"),
    "expired": (
        lambda: idp_token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        "jwt_expired",
    ),
    "no-exp": (lambda: idp_token(exp=None), "jwt_missing_claim"),
    "alg-none": (alg_none_token, "jwt_alg_not_allowed"),
    "unknown-kid": (
        lambda: idp_token(OTHER_KEY, header={"alg": "RS256", "kid": "corp-unknown", "typ": "JWT"}),
        "jwt_kid_unknown",
    ),
    "wrong-signing-key": (lambda: idp_token(OTHER_KEY), "jwt_signature_invalid"),
}


class TestExternalIssuer:
    @pytest.mark.parametrize("path", JWT_ROUTES)
    def test_a_token_from_the_issuer_gets_through_as_its_subject(self, stack: Stack, path: str) -> None:
        reply = stack.get(path, bearer(idp_token()))
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        assert seen["x-bastion-consumer"] == ["partner-a"]
        assert seen["x-bastion-scopes"] == ["orders:read"]
        assert "authorization" not in seen

    @pytest.mark.parametrize("path", JWT_ROUTES)
    def test_a_token_without_the_route_scope_is_403(self, stack: Stack, path: str) -> None:
        reply = stack.get(path, bearer(idp_token(scope="orders:write profile")))
        assert_problem(reply, 403, "insufficient_scope")

    @pytest.mark.parametrize("path", JWT_ROUTES)
    @pytest.mark.parametrize("case", sorted(BAD_TOKENS))
    def test_bad_tokens_are_refused(self, stack: Stack, case: str, path: str) -> None:
        make, _cause = BAD_TOKENS[case]
        before = len(stack.upstream.requests)
        reply = stack.get(path, bearer(make()))
        assert_problem(reply, 401, "auth_invalid")
        assert len(stack.upstream.requests) == before

    @pytest.mark.parametrize("case", sorted(BAD_TOKENS))
    def test_the_event_names_what_was_wrong(self, stack: Stack, case: str) -> None:
        make, cause = BAD_TOKENS[case]
        reply = stack.get("/v1/partners/7", bearer(make()))
        assert_problem(reply, 401, "auth_invalid")
        assert stack.event_for("auth.failed", reply)["data"]["cause"] == cause

    @pytest.mark.parametrize("path", JWT_ROUTES)
    def test_a_disabled_consumer_of_that_name_blocks_the_subject(self, stack: Stack, path: str) -> None:
        adm = stack.admin()
        if not [c for c in adm.list_consumers() if c["name"] == "partner-a"]:
            adm.create_consumer("partner-a", ["orders:read"], actor="test")
        token = idp_token()
        assert stack.get(path, bearer(token)).status == 200  # verified, and remembered
        adm.set_consumer_active("partner-a", False, actor="test")
        try:
            refused = stack.get(path, bearer(token))  # a token already verified is refused all the same
            assert_problem(refused, 401, "auth_invalid")
            assert stack.event_for("auth.failed", refused)["data"]["cause"] == "consumer_disabled"
        finally:
            adm.set_consumer_active("partner-a", True, actor="test")
        reply = stack.get(path, bearer(token))
        assert reply.status == 200, reply.body
        assert reply.upstream_headers()["x-bastion-consumer"] == ["partner-a"]

    def test_a_consumer_registered_later_applies_to_a_remembered_token(self, stack: Stack) -> None:
        """The principal is remembered with the token for the consumer record it was built from: a
        consumer registered under the subject afterwards (its address list) applies at once."""
        token = idp_token(sub="partner-late")
        for _ in range(2):  # verified, then recalled
            reply = stack.get("/v1/partners/7", bearer(token))
            assert reply.status == 200, reply.body
            assert reply.upstream_headers()["x-bastion-consumer"] == ["partner-late"]
        adm = stack.admin()
        adm.create_consumer("partner-late", ["orders:read"], ip_allow=["192.0.2.0/24"], actor="test")
        assert_problem(stack.get("/v1/partners/7", bearer(token)), 403, "ip_not_allowed")


def test_the_events_hold_no_token(stack: Stack) -> None:
    token = idp_token(aud="not-ours")
    reply = stack.get("/v1/partners/9", bearer(token))
    assert reply.status == 401
    stack.event_for("auth.failed", reply)
    signature = token.rsplit(".", 1)[1]
    text = stack.all_events_text()
    assert token not in text
    assert signature not in text


def test_the_first_token_is_verified_while_the_jwks_is_fetched(tmp_path: Path) -> None:
    """A fresh gateway has no JWKS yet: the first request waits for the fetch (no error, no 401)."""
    routes = """
      - path: /v1/partners/{order_id}
        methods: [GET]
        auth: ["jwt:corp-idp"]
        scopes: [orders:read]
"""
    with JwksServer({"keys": [IDP_KEY.as_dict(private=False)]}) as idp:
        extra = EXTRA.format(issuer=IDP_ISSUER, audience=IDP_AUDIENCE, jwks_url=idp.url)
        with identity_stack(tmp_path, routes, extra) as fresh:
            reply = fresh.get("/v1/partners/1", bearer(idp_token()))
            assert reply.status == 200, reply.body
            assert reply.upstream_headers()["x-bastion-consumer"] == ["partner-a"]
            assert idp.fetches == 1


# -- claims of an external issuer never become headers as they are -----------------------------------


class TestExternalClaimsAreHeaderSafe:
    """An issuer signs what it signs: a scope item or a subject with a line break, a NUL or non-ASCII
    text must not inject or spoof an upstream header, nor crash the exchange."""

    def test_a_scope_with_a_line_break_is_dropped_not_forwarded(self, stack: Stack) -> None:
        token = idp_token(scope=None, scp=["orders:read", "zz\r\nX-Bastion-Consumer: admin", "a\x00b"])
        reply = stack.get("/v1/partners/1", bearer(token))
        assert reply.status == 200, reply.body
        seen = reply.upstream_headers()
        assert seen["x-bastion-consumer"] == ["partner-a"]
        assert seen["x-bastion-scopes"] == ["orders:read"]

    def test_a_space_separated_scope_claim_keeps_only_scope_tokens(self, stack: Stack) -> None:
        reply = stack.get("/v1/partners/1", bearer(idp_token(scope="orders:read bad\r\nX-Injected:1")))
        assert reply.status == 200, reply.body
        assert "x-injected" not in reply.upstream_headers()

    @pytest.mark.parametrize("subject", ["日本", "with space", "line\r\nbreak", "", "x" * 257])
    def test_a_subject_a_header_cannot_carry_is_refused(self, stack: Stack, subject: str) -> None:
        reply = stack.get("/v1/partners/1", bearer(idp_token(sub=subject)))
        assert reply.status == 401, reply.body
        assert reply.json()["code"] == "auth_invalid"
        assert stack.event_for("auth.failed", reply)["data"]["cause"] == "jwt_subject_invalid"
