"""A scripted credential-stuffing and brute-force run against a real gateway.

Lockout is ``{failures: 5, within: 5m, block_for: 5m}``. The gateway trusts 127.0.0.1 as a proxy, so
each test plays its own source addresses through ``X-Forwarded-For`` and tests do not lock each other
out. What is asserted: the first five failures are indistinguishable 401s, then 429 with ``Retry-After``
for whatever the source presents (the valid key included); a key id attacked from many sources is
locked for everyone; the token endpoint is protected the same way; and every kind of bad key (unknown
id, wrong secret, bad checksum, revoked, expired, disabled consumer) gets the same answer. Timing is
not asserted (it is noisy on shared machines); the digest comparison is constant-time by construction.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest

from ..integration._identity import (
    VARYING_HEADERS,
    Reply,
    Stack,
    bad_checksum,
    basic,
    bearer,
    identity_stack,
    key_id,
    random_base62,
    random_key,
    wait_for,
)

FAILURES = 5
BLOCK_FOR = 300

ROUTES = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: [api_key, oauth2]
        scopes: [orders:read]
"""

EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
  lockout: {failures: 5, within: 5m, block_for: 5m}
oauth2:
  issuer: http://127.0.0.1
"""

_addresses = (IPv4Address("198.18.0.1") + n for n in itertools.count())  # RFC 2544 benchmarking range


def new_source() -> str:
    """A source address no other test has used."""
    return str(next(_addresses))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with identity_stack(
        tmp_path_factory.mktemp("stuffing"), ROUTES, EXTRA, trusted_proxies=["127.0.0.1/32"]
    ) as s:
        adm = s.admin()
        adm.create_consumer("victim", ["orders:read"], actor="test")
        yield s


def new_key(stack: Stack) -> str:
    return stack.admin().create_key("victim", actor="test")[1]


def attempt(stack: Stack, source: str, key: str, style: str = "x-api-key") -> Reply:
    headers = {"X-Forwarded-For": source}
    headers.update(bearer(key) if style == "bearer" else {"X-API-Key": key})
    return stack.get("/v1/orders/1", headers)


def without_request_id(reply: Reply) -> tuple[int, dict[str, str], dict[str, Any], bytes]:
    """Everything about a response that must not vary between two failures."""
    doc = reply.json()
    request_id = doc.pop("request_id")
    assert request_id == reply.headers["x-request-id"]
    headers = {k: v for k, v in reply.headers.items() if k not in VARYING_HEADERS}
    return reply.status, headers, doc, reply.body.replace(request_id.encode(), b"<id>")


def assert_locked(reply: Reply) -> int:
    assert reply.status == 429, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json()["code"] == "auth_locked_out"
    retry_after = int(reply.headers["retry-after"])
    assert 0 < retry_after <= BLOCK_FOR
    return retry_after


# -- API keys --------------------------------------------------------------------------------------------


def test_stuffing_from_one_source_locks_that_source(stack: Stack) -> None:
    attacker = new_source()
    target = new_key(stack)  # its id is tried with wrong secrets
    valid = new_key(stack)  # never attacked: a 429 for it comes from the source's lock alone
    tries = [random_key(), random_key(key_id(target)), random_key(), random_key(key_id(target))]
    tries += [random_key() for _ in range(8)]
    replies = [attempt(stack, attacker, k, "bearer" if i % 2 else "x-api-key") for i, k in enumerate(tries)]

    first = replies[:FAILURES]
    for reply in first:
        assert reply.status == 401
        assert reply.json()["code"] == "auth_invalid"
    reference = without_request_id(first[0])
    for reply in first[1:]:  # status, headers and body bytes identical apart from the request id
        assert without_request_id(reply) == reference
    for reply in replies[FAILURES:]:
        assert_locked(reply)

    # Even the valid key is refused from this source, and nothing reached the upstream.
    before = len(stack.upstream.requests)
    assert_locked(attempt(stack, attacker, valid))
    assert len(stack.upstream.requests) == before
    # Other sources are not affected, and the attacked key id (two of the failures) is not locked.
    assert attempt(stack, new_source(), valid).status == 200
    assert attempt(stack, new_source(), target).status == 200

    locked = stack.wait_event("auth.locked_out", lambda e: e["source_ip"] == attacker)
    assert locked["data"]["subject"] == "source_ip"
    assert locked["data"]["block_for"] == BLOCK_FOR

    def failed() -> list[dict[str, Any]]:
        return [e for e in stack.events("auth.failed") if e["source_ip"] == attacker]

    wait_for(lambda: len(failed()) == FAILURES, what="one auth.failed event per failure")
    assert {e["data"]["cause"] for e in failed()} == {"api_key_unknown", "api_key_mismatch"}


def test_a_key_id_attacked_from_many_sources_refuses_guesses_but_not_its_holder(stack: Stack) -> None:
    target = new_key(stack)
    sibling = new_key(stack)  # same consumer, different key id
    for _ in range(FAILURES):
        reply = attempt(stack, new_source(), random_key(key_id(target)))
        assert reply.status == 401
        assert reply.json()["code"] == "auth_invalid"
    # Further guesses under that id are refused from any address, without a verdict on the secret …
    assert_locked(attempt(stack, new_source(), random_key(key_id(target)), "bearer"))
    assert_locked(attempt(stack, new_source(), random_key(key_id(target))))
    # … but whoever holds the real key is not locked out by someone else's failures under its id.
    fresh = new_source()
    assert attempt(stack, fresh, target).status == 200
    assert attempt(stack, fresh, sibling).status == 200
    locked = stack.wait_event("auth.locked_out", lambda e: e["data"].get("key_id") == key_id(target))
    assert locked["data"]["subject"] == "key_id"
    text = stack.all_events_text()
    assert target not in text


def test_bad_bearer_tokens_count_too(stack: Stack) -> None:
    attacker = new_source()
    valid = new_key(stack)
    for i in range(FAILURES):
        reply = stack.get(
            "/v1/orders/1", {"X-Forwarded-For": attacker, **bearer(f"eyJhbGciOiJFUzI1NiJ9.e30.{i}")}
        )
        assert reply.status == 401
    assert_locked(attempt(stack, attacker, valid))


# -- the token endpoint --------------------------------------------------------------------------------


def token_request(stack: Stack, source: str, client_id: str, secret: str) -> Reply:
    headers = {"X-Forwarded-For": source, **basic(client_id, secret)}
    return stack.post_form("/oauth/token", {"grant_type": "client_credentials"}, headers)


def assert_token_locked(reply: Reply) -> None:
    # The issue: past the threshold the source is answered 429 with Retry-After, on every face.
    assert reply.status == 429, reply.body
    assert 0 < int(reply.headers["retry-after"]) <= BLOCK_FOR
    assert reply.headers["cache-control"] == "no-store"


def test_secret_guessing_at_the_token_endpoint_locks_the_source(stack: Stack) -> None:
    client, secret = stack.admin().create_client("victim", actor="test")
    assert secret is not None
    attacker = new_source()
    for _ in range(FAILURES):
        reply = token_request(stack, attacker, "bcl_" + random_base62(20), "bcs_" + random_base62(43))
        assert reply.status == 401
        assert reply.json()["error"] == "invalid_client"
    assert_token_locked(token_request(stack, attacker, client["client_id"], secret))
    assert token_request(stack, new_source(), client["client_id"], secret).status == 200
    stack.wait_event(
        "auth.locked_out", lambda e: e["source_ip"] == attacker and e["data"]["subject"] == "oauth_client"
    )


def test_secret_guessing_for_one_client_from_many_sources_locks_the_guessing(stack: Stack) -> None:
    client, secret = stack.admin().create_client("victim", actor="test")
    assert secret is not None
    for _ in range(FAILURES):
        reply = token_request(stack, new_source(), client["client_id"], "bcs_" + random_base62(43))
        assert reply.status == 401
        assert reply.json()["error"] == "invalid_client"
    # More guesses for that client id are refused from any address; the client itself still gets tokens.
    assert_token_locked(token_request(stack, new_source(), client["client_id"], "bcs_" + random_base62(43)))
    assert token_request(stack, new_source(), client["client_id"], secret).status == 200


# -- every bad key looks the same -------------------------------------------------------------------------


def bad_keys(stack: Stack) -> dict[str, str]:
    adm = stack.admin()
    real = new_key(stack)
    revoked = new_key(stack)
    adm.revoke_key(key_id(revoked), actor="test")
    # Issued two days ago with a one-day lifetime.
    _, expired = stack.admin(clock=lambda: time.time() - 2 * 86400).create_key(
        "victim", ttl=86400, actor="test"
    )
    name = "gone-" + random_base62(6)
    adm.create_consumer(name, ["orders:read"], actor="test")
    _, disabled = adm.create_key(name, actor="test")
    adm.set_consumer_active(name, False, actor="test")
    return {
        "unknown-id": random_key(),
        "wrong-secret": random_key(key_id(real)),
        "bad-checksum": bad_checksum(real),
        "revoked": revoked,
        "expired": expired,
        "disabled-consumer": disabled,
    }


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_every_kind_of_bad_key_gets_the_same_answer(stack: Stack, style: str) -> None:
    keys = bad_keys(stack)
    replies = {case: attempt(stack, new_source(), key, style) for case, key in keys.items()}
    shapes = {case: without_request_id(reply) for case, reply in replies.items()}
    reference = shapes["unknown-id"]
    assert reference[0] == 401
    assert reference[2]["code"] == "auth_invalid"
    for case, shape in shapes.items():
        assert shape == reference, case
    # The difference is in the event log only.
    causes = {case: stack.event_for("auth.failed", reply)["data"]["cause"] for case, reply in replies.items()}
    assert causes["wrong-secret"] == "api_key_mismatch"
    assert causes["bad-checksum"] == "api_key_checksum"
    assert causes["disabled-consumer"] == "consumer_disabled"
