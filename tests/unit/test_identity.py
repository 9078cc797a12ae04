"""Identities as values, and the authentication/authorisation checks over an in-memory index.

Pure: no sockets, no database, no sleeping. Key format, checksum and digests (``bastion.core.identity``),
the pepper's derived keys (``bastion.identity.credentials``), scopes and ``METHOD /path`` permissions,
the lockout counter (``bastion.state.memory``), and the three identity checks run by hand on a
``RequestView`` against an :class:`IdentitySnapshot` filled with hand-built records. Time is a
:class:`FakeClock`; coroutines are driven with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import secrets
import string
import types
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.checks.api_key import ApiKeyAuth
from bastion.checks.authn import Authenticate
from bastion.checks.refusals import IDENTITY_UNAVAILABLE
from bastion.checks.scopes import Authorize
from bastion.core.chain import run_checks
from bastion.core.decision import LATER, Context, Deny, Verdict
from bastion.core.forwarding import NetworkSet
from bastion.core.headers import Headers
from bastion.core.identity import (
    BASE62,
    ID_LENGTH,
    KEY_PATTERN,
    SECRET_LENGTH,
    AuthFailure,
    ClientRecord,
    ConsumerRecord,
    KeyRecord,
    ScopeError,
    api_key_digest,
    check_scope_subset,
    format_api_key,
    identity_headers,
    key_principal,
    parse_api_key,
    parse_permission,
    parse_scopes,
    valid_scope,
)
from bastion.core.request import RequestView
from bastion.core.router import Route
from bastion.identity.credentials import Peppers, new_api_key
from bastion.identity.index import IdentitySnapshot, _Data
from bastion.identity.jwt import sign_jwt
from bastion.identity.signing import SigningKeys
from bastion.identity.tokens import LocalTokenVerifier
from bastion.state.memory import MemoryFailureLimiter
from bastion.store.database import open_database

PEPPER = "unit-test-pepper-0123456789abcdef"
PEPPERS = Peppers(PEPPER)
NOW = 1_750_000_000.0


def crc_checksum(body: str) -> str:
    """The documented checksum, computed independently: CRC-32 of the text before it, 6 base62 digits."""
    n = zlib.crc32(body.encode("utf-8"))  # utf-8 only so that tests can build non-ASCII bodies
    digits = []
    for _ in range(6):
        n, d = divmod(n, 62)
        digits.append(BASE62[d])
    return "".join(reversed(digits))


KEYS = st.builds(
    format_api_key,
    st.text(alphabet=BASE62, min_size=12, max_size=12),
    st.text(alphabet=BASE62, min_size=33, max_size=33),
)


def substitute(key: str, position: int, offset: int) -> str:
    """``key`` with the base62 character at ``position`` replaced by another base62 character."""
    char = BASE62[(BASE62.index(key[position]) + offset) % 62]
    return key[:position] + char + key[position + 1 :]


# -- key format ----------------------------------------------------------------------------------------


class TestKeyFormat:
    def test_generated_keys_have_the_documented_shape(self) -> None:
        for _ in range(50):
            public_id, key = new_api_key()
            assert len(key) == 4 + 12 + 1 + 39 == 56
            assert key.startswith("bst_")
            assert key[4:16] == public_id
            assert len(public_id) == ID_LENGTH == 12
            assert key[16] == "_"
            assert set(key[4:16] + key[17:]) <= set(BASE62)
            assert KEY_PATTERN.fullmatch(key)
            assert parse_api_key(key) == public_id

    def test_checksum_is_crc32_of_the_body_in_base62(self) -> None:
        key = format_api_key("A" * 12, "b" * 33)
        body = "bst_" + "A" * 12 + "_" + "b" * 33
        assert key == body + crc_checksum(body)
        assert parse_api_key(key) == "A" * 12

    def test_key_pattern_finds_keys_in_text_and_not_inside_longer_words(self) -> None:
        _, key = new_api_key()
        assert KEY_PATTERN.search(f"export TOKEN={key}\n").group(0) == key  # type: ignore[union-attr]
        assert KEY_PATTERN.search(f'{{"key": "{key}"}}').group(0) == key  # type: ignore[union-attr]
        assert KEY_PATTERN.search(key + "x") is None
        assert KEY_PATTERN.search("x" + key) is None

    # Keys are drawn by hypothesis (not from ``secrets``) so that failures replay; a replacement is an
    # offset in the alphabet, so it always differs from the character it replaces.
    @given(KEYS, st.integers(min_value=17, max_value=55), st.integers(min_value=1, max_value=61))
    def test_every_single_character_change_in_secret_or_checksum_is_rejected(
        self, key: str, position: int, offset: int
    ) -> None:
        assert parse_api_key(key) is not None
        assert parse_api_key(substitute(key, position, offset)) is None

    @given(KEYS, st.integers(min_value=4, max_value=15), st.integers(min_value=1, max_value=61))
    def test_every_single_character_change_in_the_id_is_rejected(
        self, key: str, position: int, offset: int
    ) -> None:
        assert parse_api_key(substitute(key, position, offset)) is None

    @given(
        KEYS,
        st.integers(min_value=0, max_value=55),
        st.characters(codec="utf-8").filter(lambda c: c not in BASE62),
    )
    def test_any_character_outside_base62_is_rejected(self, key: str, position: int, char: str) -> None:
        if key[position] == char:  # "bst_" and "_" themselves
            return
        assert parse_api_key(key[:position] + char + key[position + 1 :]) is None

    def test_wrong_prefix_is_rejected_even_with_a_valid_checksum(self) -> None:
        for prefix in ("bsk_", "BST_", "bst-", "gh__"):
            body = prefix + "A" * 12 + "_" + "b" * 33
            assert parse_api_key(body + crc_checksum(body)) is None

    def test_wrong_lengths_are_rejected_even_with_a_valid_checksum(self) -> None:
        for id_len, secret_len in ((11, 33), (13, 33), (12, 32), (12, 34), (12, 0)):
            body = "bst_" + "A" * id_len + "_" + "b" * secret_len
            assert parse_api_key(body + crc_checksum(body)) is None
        _, key = new_api_key()
        assert parse_api_key(key[:-1]) is None
        assert parse_api_key(key + "0") is None
        assert parse_api_key(" " + key) is None
        assert parse_api_key("") is None

    def test_wrong_alphabet_is_rejected_even_with_a_valid_checksum(self) -> None:
        for secret in ("-" + "b" * 32, "b" * 32 + "_", "b" * 32 + "é", "b" * 32 + "+"):
            body = "bst_" + "A" * 12 + "_" + secret
            assert parse_api_key(body + crc_checksum(body)) is None
        body = "bst_" + "A" * 11 + "/" + "_" + "b" * 33
        assert parse_api_key(body + crc_checksum(body)) is None


class TestSecretEntropy:
    def test_secret_length_gives_at_least_192_bits(self) -> None:
        assert SECRET_LENGTH == 33
        assert len(BASE62) == 62 == len(set(BASE62))
        bits = SECRET_LENGTH * math.log2(len(BASE62))
        assert bits >= 192
        assert (SECRET_LENGTH - 1) * math.log2(62) < 192  # 33 is the shortest secret that reaches it

    def test_keys_are_unique_and_use_the_whole_alphabet(self) -> None:
        generated = [new_api_key() for _ in range(2000)]
        ids = {i for i, _ in generated}
        keys = {k for _, k in generated}
        secrets_ = {k[17:50] for _, k in generated}
        assert len(ids) == len(keys) == len(secrets_) == 2000
        # 66,000 secret characters: each of the 62 is expected ~1,064 times; all must appear.
        assert set("".join(secrets_)) == set(BASE62)


# -- digests and peppers ------------------------------------------------------------------------------


class TestDigest:
    def test_digest_is_hmac_sha256_of_the_whole_key(self) -> None:
        _, key = new_api_key()
        pepper = b"p" * 32
        assert api_key_digest(pepper, key) == hmac.new(pepper, key.encode(), hashlib.sha256).digest()
        assert len(api_key_digest(pepper, key)) == 32

    def test_the_peppers_fast_digest_is_the_same_hmac(self) -> None:
        """Peppers.key_digest copies a precomputed OpenSSL HMAC state: it must equal the plain HMAC,
        every time (the copied state is never consumed)."""
        peppers = Peppers("fast-path-pepper-0123456789abcdef")
        for _ in range(3):
            _, key = new_api_key()
            assert peppers.key_digest(key) == api_key_digest(peppers.keys, key)
            assert peppers.key_digest(key) == peppers.key_digest(key)
        assert peppers.key_digest("bst_" + "é" * 52) != api_key_digest(peppers.keys, "bst_" + "e" * 52)

    @settings(max_examples=200, deadline=None)
    @given(
        pepper=st.text(min_size=16, max_size=80).filter(lambda p: len(p.encode()) >= 16),
        key=st.text(max_size=120),
    )
    def test_both_fast_digests_equal_the_plain_hmac(self, pepper: str, key: str) -> None:
        """The hash-halves path and the OpenSSL-object fallback give the RFC 2104 HMAC for any input."""
        peppers = Peppers(pepper)
        expected = hmac.new(peppers.keys, key.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
        assert peppers.key_digest != peppers._key_digest_openssl  # the hash-halves path is in use
        assert peppers.key_digest(key) == expected
        assert peppers._key_digest_openssl(key) == expected

    def test_digest_depends_on_pepper_and_key(self) -> None:
        _, key = new_api_key()
        _, other = new_api_key()
        assert api_key_digest(b"a" * 32, key) == api_key_digest(b"a" * 32, key)
        assert api_key_digest(b"a" * 32, key) != api_key_digest(b"b" * 32, key)
        assert api_key_digest(b"a" * 32, key) != api_key_digest(b"a" * 32, other)


class TestPeppers:
    def test_short_pepper_is_refused(self) -> None:
        for short in ("", "x", "fifteen-bytes!!", "é" * 7):  # "é" * 7 is 14 bytes
            assert len(short.encode()) < 16
            with pytest.raises(ValueError, match="16 bytes"):
                Peppers(short)
        Peppers("sixteen-bytes!!!")  # exactly 16: accepted
        Peppers("é" * 8)  # 8 characters, 16 bytes: counted in bytes

    def test_purposes_get_independent_keys(self) -> None:
        pepper = "0123456789abcdef0123456789abcdef"  # 32 bytes, the size of a derived key
        p = Peppers(pepper)
        assert len(p.keys) == len(p.clients) == 32
        assert p.keys != p.clients
        assert pepper.encode() not in (p.keys, p.clients)
        # The at-rest encryption key is neither of the digest keys nor the pepper itself.
        token = p.fernet.encrypt(b"signing key")
        for raw in (p.keys, p.clients, pepper.encode()):
            with pytest.raises(InvalidToken):
                Fernet(base64.urlsafe_b64encode(raw)).decrypt(token)

    def test_derivation_is_deterministic_and_pepper_dependent(self) -> None:
        a, b = Peppers(PEPPER), Peppers(PEPPER)
        c = Peppers(PEPPER + "!")
        assert (a.keys, a.clients) == (b.keys, b.clients)
        assert a.fernet.decrypt(b.fernet.encrypt(b"x")) == b"x"
        assert a.keys != c.keys and a.clients != c.clients
        with pytest.raises(InvalidToken):
            c.fernet.decrypt(a.fernet.encrypt(b"x"))

    def test_client_secret_and_key_digests_are_domain_separated(self) -> None:
        _, key = new_api_key()
        assert PEPPERS.key_digest(key) == api_key_digest(PEPPERS.keys, key)
        assert PEPPERS.client_secret_digest(key) != PEPPERS.key_digest(key)
        assert PEPPERS.client_secret_digest("bcs_x") == PEPPERS.client_secret_digest("bcs_x")


# -- scopes -------------------------------------------------------------------------------------------

SCOPE_CHARS = "".join(chr(c) for c in [0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F)])


class TestScopes:
    @given(st.lists(st.text(alphabet=SCOPE_CHARS, min_size=1, max_size=128), max_size=8))
    def test_rfc6749_scope_tokens_are_accepted(self, scopes: list[str]) -> None:
        assert parse_scopes(scopes) == frozenset(scopes)
        assert parse_scopes(" ".join(scopes)) == frozenset(scopes)

    def test_space_separated_string_is_split(self) -> None:
        assert parse_scopes("orders:read  orders:write ") == {"orders:read", "orders:write"}
        assert parse_scopes("") == frozenset()
        assert parse_scopes(["a:b", "a:b"]) == {"a:b"}

    @pytest.mark.parametrize(
        "bad", ["a b", 'say"hi', "back\\slash", "", "x" * 129, "tab\t", "é", "del\x7f", "nul\x00"]
    )
    def test_invalid_scope_tokens_are_rejected(self, bad: str) -> None:
        assert not valid_scope(bad)
        with pytest.raises(ScopeError):
            parse_scopes(["ok", bad])

    def test_longest_scope_is_128(self) -> None:
        assert parse_scopes(["x" * 128]) == {"x" * 128}

    def test_subset_returns_the_asked_scopes(self) -> None:
        held = frozenset({"orders:read", "orders:write", "users:read"})
        assert check_scope_subset(["orders:read"], held) == {"orders:read"}
        assert check_scope_subset([], held) == frozenset()
        assert check_scope_subset(held, held) == held

    def test_subset_error_names_the_extra_scopes(self) -> None:
        with pytest.raises(ScopeError) as info:
            check_scope_subset(["orders:read", "admin", "billing:write"], frozenset({"orders:read"}))
        message = str(info.value)
        assert "admin" in message and "billing:write" in message
        assert "orders:read" not in message
        assert "consumer" in message
        with pytest.raises(ScopeError, match="client"):
            check_scope_subset(["x"], frozenset(), owner="client")


class TestIdentityHeaders:
    def test_the_rendered_lines_are_the_pairs(self) -> None:
        sent = identity_headers("shop", frozenset({"orders:write", "orders:read"}))
        scopes = "orders:read orders:write"  # sorted
        assert sent.pairs == (("x-bastion-consumer", "shop"), ("x-bastion-scopes", scopes))
        assert sent.lines == "x-bastion-consumer: shop\r\nx-bastion-scopes: orders:read orders:write\r\n"
        assert identity_headers("shop", frozenset()).lines.endswith("x-bastion-scopes: \r\n")

    @pytest.mark.parametrize("bad", ["a\r\nx-bastion-scopes: admin", "a\nb", "a\rb", "nul\x00"])
    def test_a_value_that_would_split_a_field_is_refused(self, bad: str) -> None:
        # the callers validate names, subjects and scopes; this is the last line, not the only one
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            identity_headers(bad, frozenset())
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            identity_headers("shop", frozenset({bad}))


# -- permissions --------------------------------------------------------------------------------------


class TestPermissions:
    def test_single_segment_wildcard(self) -> None:
        p = parse_permission("GET /v1/orders/*")
        assert p.allows("GET", "/v1/orders/7")
        assert not p.allows("POST", "/v1/orders/7")
        assert not p.allows("GET", "/v1/orders/7/items")
        assert not p.allows("GET", "/v1/orders")
        assert not p.allows("GET", "/v1/users/7")
        assert not p.allows("GET", "/")

    def test_named_segments_behave_like_a_star(self) -> None:
        named, star = parse_permission("GET /v1/orders/{id}"), parse_permission("GET /v1/orders/*")
        assert named.segments == star.segments
        for method, path in (("GET", "/v1/orders/7"), ("GET", "/v1/orders/7/items"), ("GET", "/v1/orders")):
            assert named.allows(method, path) == star.allows(method, path)
        assert parse_permission("PUT /v1/{org}/orders/{id}").allows("PUT", "/v1/acme/orders/9")

    def test_trailing_double_star_matches_one_or_more_segments(self) -> None:
        p = parse_permission("GET /v1/orders/**")
        assert p.allows("GET", "/v1/orders/7")
        assert p.allows("GET", "/v1/orders/7/items/3")
        assert not p.allows("GET", "/v1/orders")  # zero segments: not matched
        assert not p.allows("GET", "/v1/other/7")
        everything = parse_permission("GET /**")
        assert everything.allows("GET", "/a")
        assert not everything.allows("GET", "/")

    def test_exact_paths(self) -> None:
        p = parse_permission("POST /v1/orders")
        assert p.allows("POST", "/v1/orders")
        assert not p.allows("POST", "/v1/orders/1")
        assert not p.allows("POST", "/v1")
        root = parse_permission("GET /")
        assert root.allows("GET", "/")
        assert not root.allows("GET", "/a")

    def test_star_method_matches_any_method(self) -> None:
        p = parse_permission("* /v1/orders/*")
        for method in ("GET", "POST", "DELETE", "PATCH", "PUT", "OPTIONS", "HEAD"):
            assert p.allows(method, "/v1/orders/1")
        assert not p.allows("GET", "/v1/orders")

    def test_method_is_case_insensitive_in_the_text(self) -> None:
        p = parse_permission("get /v1/orders")
        assert p.method == "GET"
        assert p.text == "GET /v1/orders"

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "GET",
            "/v1/orders",
            "GET v1/orders",
            "FETCH /v1/orders",
            "GET /v1/**/items",
            "GET /v1//orders",
            "GET /v1/**/**",
            "GET\t/v1",
        ],
    )
    def test_bad_permissions_raise(self, bad: str) -> None:
        with pytest.raises(ValueError):
            parse_permission(bad)


# -- the lockout counter ------------------------------------------------------------------------------


def drive(*calls: object) -> list[float]:
    """Run the limiter's coroutines in order on one event loop; their results."""

    async def main() -> list[float]:
        return [await c for c in calls]  # type: ignore[misc]

    return asyncio.run(main())


class TestMemoryFailureLimiter:
    def test_blocks_after_n_failures_within_the_window(self) -> None:
        lim = MemoryFailureLimiter(failures=3, within=60, block_for=300)
        assert drive(lim.failed("ip:a", NOW), lim.failed("ip:a", NOW + 1)) == [0.0, 0.0]
        assert drive(lim.blocked_for("ip:a", NOW + 1)) == [0.0]
        assert drive(lim.failed("ip:a", NOW + 2)) == [300.0]
        assert drive(lim.blocked_for("ip:a", NOW + 2)) == [300.0]
        assert drive(lim.blocked_for("ip:b", NOW + 2)) == [0.0]  # other subjects are not affected

    def test_failures_spread_over_more_than_the_window_do_not_block(self) -> None:
        lim = MemoryFailureLimiter(failures=3, within=60, block_for=300)
        # Any three consecutive failures span 60 s or more.
        results = drive(*(lim.failed("ip:a", NOW + t) for t in (0, 30, 60, 90, 120, 150, 180)))
        assert results == [0.0] * 7
        assert drive(lim.blocked_for("ip:a", NOW + 180)) == [0.0]
        # ... but three inside one window do.
        later = drive(*(lim.failed("ip:a", NOW + t) for t in (300, 305, 310)))
        assert later == [0.0, 0.0, 300.0]

    def test_block_expires_and_blocked_for_counts_down(self) -> None:
        lim = MemoryFailureLimiter(failures=2, within=60, block_for=300)
        drive(lim.failed("key:k", NOW), lim.failed("key:k", NOW))
        assert drive(
            lim.blocked_for("key:k", NOW + 100),
            lim.blocked_for("key:k", NOW + 299.5),
            lim.blocked_for("key:k", NOW + 300),
            lim.blocked_for("key:k", NOW + 301),
        ) == [200.0, 0.5, 0.0, 0.0]
        # The count started again after the block: one more failure does not re-block.
        assert drive(lim.failed("key:k", NOW + 302)) == [0.0]

    def test_active_says_whether_anything_is_blocked(self) -> None:
        # Authenticate skips every lockout lookup while this is False: it must turn True with the first
        # block, stay True while any block stands, and turn False once the last one has expired.
        lim = MemoryFailureLimiter(failures=2, within=60, block_for=300)
        assert not lim.active
        drive(lim.failed("ip:a", NOW))
        assert not lim.active  # a failure is not a block
        drive(lim.failed("ip:a", NOW + 1), lim.failed("key:k", NOW + 100), lim.failed("key:k", NOW + 100))
        assert lim.active
        drive(lim.blocked_for("ip:a", NOW + 302))  # ip:a expired, key:k still blocked
        assert lim.active
        assert drive(lim.blocked_for("key:k", NOW + 400)) == [0.0]
        assert not lim.active
        drive(lim.failed("ip:b", NOW + 500), lim.failed("ip:b", NOW + 500))
        lim.clear()
        assert not lim.active

    def test_memory_is_bounded_by_evicting_the_oldest_subject(self) -> None:
        lim = MemoryFailureLimiter(failures=2, within=60, block_for=300, max_subjects=2)
        drive(lim.failed("ip:a", NOW), lim.failed("ip:b", NOW), lim.failed("ip:c", NOW))
        assert len(lim._seen) <= 2
        # "a" was evicted: its earlier failure is forgotten, so one more does not block it ...
        assert drive(lim.failed("ip:a", NOW + 1)) == [0.0]
        # ... whereas "c" (recent) is blocked by its second failure.
        assert drive(lim.failed("ip:c", NOW + 1)) == [300.0]

    def test_blocked_subjects_are_bounded_too(self) -> None:
        lim = MemoryFailureLimiter(failures=1, within=60, block_for=300, max_subjects=2)
        drive(*(lim.failed(f"ip:{s}", NOW) for s in "abcde"))
        assert len(lim._blocked) <= 2 and len(lim._seen) <= 2
        assert drive(lim.blocked_for("ip:e", NOW)) == [300.0]

    def test_clear_forgets_everything(self) -> None:
        lim = MemoryFailureLimiter(failures=1, within=60, block_for=300)
        drive(lim.failed("ip:a", NOW))
        lim.clear()
        assert drive(lim.blocked_for("ip:a", NOW)) == [0.0]


# -- the checks over a hand-built index ---------------------------------------------------------------

ROUTE = Route(
    id="orders:GET POST /v1/orders/{id}",
    service="orders",
    template="/v1/orders/{id}",
    methods=frozenset({"GET", "POST"}),
)


class FakeBody:
    declared_length = None

    def cap(self, limit: int) -> None:
        pass

    async def read(self) -> bytes:
        raise AssertionError("authentication must not read the body")

    def arrived(self) -> bytes | None:
        raise AssertionError("authentication must not read the body")


def view(
    *,
    method: str = "GET",
    path: str = "/v1/orders/7",
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    client_ip: str = "203.0.113.10",
) -> RequestView:
    ip = ip_address(client_ip)
    return RequestView(
        method=method,
        path=path,
        query=query,
        headers=Headers([("host", "api.example"), *((n.lower(), v) for n, v in headers)]),
        client_ip=ip,
        peer_ip=ip,
        scheme="https",
        host="api.example",
        route=ROUTE,
        params={},
        body=FakeBody(),
        request_id="req-1",
        raw_path=path,
    )


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    """A snapshot with hand-built records, a limiter, a clock and the checks built on them."""

    def __init__(self, *, failures: int = 10, block_for: float = 300.0, in_query: bool = False) -> None:
        self.snapshot = IdentitySnapshot()
        self.data = _Data()
        self.data.revision = 1
        self.snapshot.replace(self.data)
        self.clock = FakeClock()
        self.limiter = MemoryFailureLimiter(failures, 300.0, block_for)
        self.api_keys = ApiKeyAuth(self.snapshot, PEPPERS.key_digest, in_query=in_query)
        self.authn = Authenticate(("api_key",), self.api_keys, (), self.limiter, self.clock)

    def consumer(
        self, name: str, scopes: Iterable[str], *, active: bool = True, ip_allow: Sequence[str] = ()
    ) -> ConsumerRecord:
        rec = ConsumerRecord(
            id=f"c-{name}",
            name=name,
            active=active,
            scopes=frozenset(scopes),
            ip_allow=NetworkSet(ip_allow) if ip_allow else None,
        )
        self.data.consumers[rec.id] = rec
        self.data.by_name[name] = rec
        return rec

    def key(
        self,
        consumer: ConsumerRecord,
        scopes: Iterable[str] | None = None,
        *,
        expires_at: float | None = NOW + 86400,
        permissions: Sequence[str] = (),
        ip_allow: Sequence[str] = (),
        revoked_at: float | None = None,
        rotated_to: str | None = None,
    ) -> tuple[KeyRecord, str]:
        public_id, key = new_api_key()
        rec = KeyRecord(
            id=public_id,
            consumer_id=consumer.id,
            digest=PEPPERS.key_digest(key),
            scopes=frozenset(consumer.scopes if scopes is None else scopes),
            permissions=tuple(parse_permission(p) for p in permissions),
            ip_allow=NetworkSet(ip_allow) if ip_allow else None,
            expires_at=expires_at,
            revoked_at=revoked_at,
            rotated_to=rotated_to,
        )
        owner = self.data.consumers.get(consumer.id)
        if owner is not None and owner.active:  # as load_snapshot does: the principal prebuilt
            rec = replace(rec, principal=key_principal(rec, owner))
        self.data.keys[public_id] = rec
        return rec, key

    def reload(self) -> None:
        """What a snapshot reload does after a consumer changed: every key's principal built anew."""
        for kid, rec in self.data.keys.items():
            owner = self.data.consumers.get(rec.consumer_id)
            alive = owner is not None and owner.active
            self.data.keys[kid] = replace(rec, principal=key_principal(rec, owner) if alive else None)

    def admit(
        self, req: RequestView, required: Iterable[str] = ("orders:read",), ctx: Context | None = None
    ) -> tuple[Verdict, Context]:
        """Authenticate then authorise, as a route's chain does."""
        ctx = ctx if ctx is not None else Context("req-1")
        authz = Authorize(required)

        async def chain() -> Verdict:
            verdict = await self.authn(req, ctx)
            if verdict is not None:
                return verdict
            return await authz(req, ctx)

        return asyncio.run(chain()), ctx


def bearer(key: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {key}")


def deny(verdict: Verdict, status: int, code: str) -> Deny:
    assert isinstance(verdict, Deny), verdict
    assert (verdict.status, verdict.code) == (status, code), verdict
    return verdict


def header(d: Deny, name: str) -> str | None:
    return next((v for n, v in d.headers if n == name), None)


class TestApiKeyChecks:
    def test_valid_key_by_bearer_or_header(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        for hdr in (bearer(key), ("X-API-Key", key)):
            verdict, ctx = w.admit(view(headers=[hdr]))
            assert verdict is None
            assert ctx.principal is not None
            assert ctx.principal.consumer == "shop"
            assert ctx.principal.key_id == rec.id
            assert ctx.principal.method == "api_key"
            assert ctx.principal.scopes == {"orders:read"}
            assert ctx.notices == []
        assert w.snapshot.take_used() == {rec.id: NOW}

    def test_no_credential_is_auth_required(self) -> None:
        w = World()
        d = deny(w.admit(view())[0], 401, "auth_required")
        assert header(d, "www-authenticate") == 'Bearer realm="bastion"'

    def test_expiry(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop, expires_at=NOW)
        w.clock.now = NOW - 1
        assert w.admit(view(headers=[bearer(key)]))[0] is None
        w.clock.now = NOW
        d = deny(w.admit(view(headers=[bearer(key)]))[0], 401, "auth_invalid")
        assert d.evidence["cause"] == "api_key_expired"
        assert d.evidence["key_id"] == rec.id
        w.clock.now = NOW + 1
        assert deny(w.admit(view(headers=[bearer(key)]))[0], 401, "auth_invalid").evidence["cause"] == (
            "api_key_expired"
        )

    def test_rotation_grace_works_and_notices_once_a_minute_per_key(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        old, old_key = w.key(shop, rotated_to="NEWKEY000001", expires_at=NOW + 3600)
        other, other_key = w.key(shop, rotated_to="NEWKEY000002", expires_at=NOW + 3600)

        verdict, ctx = w.admit(view(headers=[bearer(old_key)]))
        assert verdict is None
        assert ctx.notices == [
            (
                "api_key.used_after_rotation",
                {
                    "key_id": old.id,
                    "new_key_id": "NEWKEY000001",
                    "consumer": "shop",
                    "grace_until": NOW + 3600,
                },
            )
        ]
        for t in (1, 30, 59):
            w.clock.now = NOW + t
            verdict, ctx = w.admit(view(headers=[bearer(old_key)]))
            assert verdict is None and ctx.notices == []
        # Another rotated key gets its own notice within the same minute.
        verdict, ctx = w.admit(view(headers=[bearer(other_key)]))
        assert verdict is None
        assert [(t, d["key_id"]) for t, d in ctx.notices] == [("api_key.used_after_rotation", other.id)]
        w.clock.now = NOW + 60
        verdict, ctx = w.admit(view(headers=[bearer(old_key)]))
        assert verdict is None
        assert [t for t, _ in ctx.notices] == ["api_key.used_after_rotation"]
        # The grace period ends with the key's expiry.
        w.clock.now = NOW + 3600
        d = deny(w.admit(view(headers=[bearer(old_key)]))[0], 401, "auth_invalid")
        assert d.evidence["cause"] == "api_key_expired"

    def test_revoked_key(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop, revoked_at=NOW - 10)
        d = deny(w.admit(view(headers=[bearer(key)]))[0], 401, "auth_invalid")
        assert d.evidence["cause"] == "api_key_revoked"

    def test_disabled_consumer(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"], active=False)
        _, key = w.key(shop)
        d = deny(w.admit(view(headers=[bearer(key)]))[0], 401, "auth_invalid")
        assert d.evidence["cause"] == "consumer_disabled"
        assert w.snapshot.take_used() == {}

    def test_key_whose_consumer_is_missing_fails(self) -> None:
        w = World()
        ghost = ConsumerRecord(id="c-ghost", name="ghost", active=True, scopes=frozenset({"orders:read"}))
        _, key = w.key(ghost)
        d = deny(w.admit(view(headers=[bearer(key)]))[0], 401, "auth_invalid")
        assert d.evidence["cause"] == "consumer_disabled"

    def test_effective_scopes_are_key_scopes_within_consumer_scopes(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read", "orders:write"])
        _, key = w.key(shop, ["orders:read", "orders:write"])
        verdict, ctx = w.admit(view(method="POST", headers=[bearer(key)]), ["orders:write"])
        assert verdict is None
        assert ctx.principal is not None and ctx.principal.scopes == {"orders:read", "orders:write"}
        # The consumer loses orders:write: the existing key loses it too.
        w.data.consumers[shop.id] = replace(shop, scopes=frozenset({"orders:read"}))
        w.reload()
        verdict, ctx = w.admit(view(method="POST", headers=[bearer(key)]), ["orders:write"])
        d = deny(verdict, 403, "insufficient_scope")
        assert ctx.principal is not None and ctx.principal.scopes == {"orders:read"}
        challenge = header(d, "www-authenticate")
        assert challenge is not None
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="orders:write"' in challenge
        assert w.admit(view(headers=[bearer(key)]), ["orders:read"])[0] is None

    def test_all_required_scopes_are_needed(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read", "orders:write"])
        _, key = w.key(shop, ["orders:read"])
        deny(
            w.admit(view(headers=[bearer(key)]), ["orders:read", "orders:write"])[0],
            403,
            "insufficient_scope",
        )
        assert w.admit(view(headers=[bearer(key)]), [])[0] is None

    def test_key_ip_allow_list(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop, ip_allow=["10.0.0.0/8"])
        assert w.admit(view(headers=[bearer(key)], client_ip="10.1.2.3"))[0] is None
        deny(w.admit(view(headers=[bearer(key)], client_ip="192.0.2.1"))[0], 403, "ip_not_allowed")

    def test_consumer_ip_allow_list_applies_to_all_its_keys(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"], ip_allow=["10.0.0.0/8"])
        _, plain = w.key(shop)
        _, narrowed = w.key(shop, ip_allow=["10.9.0.0/16", "192.0.2.0/24"])
        assert w.admit(view(headers=[bearer(plain)], client_ip="10.1.2.3"))[0] is None
        deny(w.admit(view(headers=[bearer(plain)], client_ip="192.0.2.1"))[0], 403, "ip_not_allowed")
        # Both lists must admit the address: the key cannot widen its consumer's list.
        assert w.admit(view(headers=[bearer(narrowed)], client_ip="10.9.0.1"))[0] is None
        deny(w.admit(view(headers=[bearer(narrowed)], client_ip="10.1.2.3"))[0], 403, "ip_not_allowed")
        deny(w.admit(view(headers=[bearer(narrowed)], client_ip="192.0.2.1"))[0], 403, "ip_not_allowed")

    def test_permissions_deny_other_methods_and_paths(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read", "orders:write"])
        _, key = w.key(shop, permissions=["GET /v1/orders/*"])
        assert w.admit(view(headers=[bearer(key)]))[0] is None
        deny(w.admit(view(method="POST", headers=[bearer(key)]), [])[0], 403, "permission_denied")
        deny(w.admit(view(path="/v1/orders/7/items", headers=[bearer(key)]))[0], 403, "permission_denied")
        deny(w.admit(view(path="/v1/orders", headers=[bearer(key)]))[0], 403, "permission_denied")

    def test_two_different_keys_in_one_request_are_refused(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        _, key_a = w.key(shop)
        _, key_b = w.key(shop)
        d = deny(w.admit(view(headers=[bearer(key_a), ("X-API-Key", key_b)]))[0], 401, "auth_invalid")
        assert d.evidence["cause"] == "api_key_ambiguous"
        d = deny(w.admit(view(headers=[("X-API-Key", key_a), ("X-API-Key", key_b)]))[0], 401, "auth_invalid")
        assert d.evidence["cause"] == "api_key_ambiguous"
        # The same key twice is not ambiguous.
        assert w.admit(view(headers=[bearer(key_a), ("X-API-Key", key_a)]))[0] is None

    def test_query_string_key_is_ignored_unless_the_route_opts_in(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop)
        deny(w.admit(view(query=f"api_key={key}"))[0], 401, "auth_required")
        opted = Authenticate(("api_key",), w.api_keys.with_query(), (), w.limiter, w.clock)
        ctx = Context("req-2")
        assert asyncio.run(opted(view(query=f"a=1&api_key={key}"), ctx)) is None
        assert ctx.principal is not None and ctx.principal.consumer == "shop"
        assert World(in_query=True).api_keys.credential(view(query=f"api_key={key}"), None) == key

    def test_failures_look_identical_to_the_client(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        unknown = format_api_key("Z" * 12, key[17:50])
        wrong_secret = format_api_key(rec.id, "x" * 33)
        attempts = {
            "unknown id": unknown,
            "wrong secret": wrong_secret,
            "bad checksum": key[:-1] + ("0" if key[-1] != "0" else "1"),
            "bad checksum, unknown id": unknown[:-1] + ("0" if unknown[-1] != "0" else "1"),
            "malformed": "bst_not-a-key",
        }
        denies = {}
        for label, presented in attempts.items():
            for hdr in (bearer(presented), ("X-API-Key", presented)):
                d = deny(w.admit(view(headers=[hdr]))[0], 401, "auth_invalid")
                denies[label] = d
        shape = {(d.status, d.code, d.detail, d.headers) for d in denies.values()}
        assert len(shape) == 1
        ((_, _, detail, headers),) = shape
        assert (
            header(denies["unknown id"], "www-authenticate")
            == 'Bearer realm="bastion", error="invalid_token"'
        )
        assert rec.id not in detail
        assert headers == denies["malformed"].headers
        assert denies["unknown id"].evidence["cause"] == "api_key_unknown"
        assert denies["wrong secret"].evidence["cause"] == "api_key_mismatch"
        assert denies["malformed"].evidence["cause"] == "api_key_malformed"
        assert denies["wrong secret"].evidence["key_id"] == rec.id
        assert all(d.event == "auth.failed" for d in denies.values())

    def test_bad_checksum_has_its_own_cause_in_the_event_log(self) -> None:
        """The four failures look alike to the client but not in the event log: a bad checksum (a typo or
        a truncated key, whether or not its id exists) is told apart from a guess and from garbage."""
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        unknown = format_api_key("Z" * 12, key[17:50])

        def cause(presented: str) -> str:
            d = deny(w.admit(view(headers=[("X-API-Key", presented)]))[0], 401, "auth_invalid")
            return str(d.evidence["cause"])

        others = {
            cause(unknown),
            cause(format_api_key(rec.id, "x" * 33)),
            cause("bst_not-a-key"),
        }
        assert len(others) == 3
        for presented in (key, unknown):
            bad_checksum = presented[:-1] + ("0" if presented[-1] != "0" else "1")
            assert cause(bad_checksum) not in others, presented

    def test_failure_evidence_never_holds_the_presented_key(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, _ = w.key(shop)
        wrong = format_api_key(rec.id, "x" * 33)
        d = deny(w.admit(view(headers=[bearer(wrong)]))[0], 401, "auth_invalid")
        assert wrong not in repr(d)
        assert wrong[17:50] not in repr(d)


def count_digests(monkeypatch: pytest.MonkeyPatch, *api_keys: ApiKeyAuth) -> tuple[list[str], list[bytes]]:
    """The keys these ApiKeyAuths digest (HMAC) and the values they tag (BLAKE2s), as they go."""
    digested: list[str] = []
    tagged: list[bytes] = []

    def counting(k: str) -> bytes:
        digested.append(k)
        return PEPPERS.key_digest(k)

    for auth in api_keys:
        auth.digest = counting  # type: ignore[method-assign]
        monkeypatch.setattr(auth, "_tagger", _CountingTagger(auth._tagger, tagged))
    return digested, tagged


class _CountingTagger:
    """Stands in for ApiKeyAuth's tag state: each copy() is one tag, and what it is fed is recorded."""

    def __init__(self, inner: Any, tagged: list[bytes]) -> None:
        self.inner, self.tagged = inner, tagged

    def copy(self) -> _CountingTagger:
        return _CountingTagger(self.inner.copy(), self.tagged)

    def update(self, data: bytes) -> None:
        self.tagged.append(data)
        self.inner.update(data)

    def digest(self) -> bytes:
        return self.inner.digest()  # type: ignore[no-any-return]


class TestTheCommonCase:
    """Authenticate decides a current key (or a token its verifier has seen) in a few lookups, and sends
    everything else the full way. Both ways must give the same verdict, principal and notices."""

    @staticmethod
    def full_way(w: World) -> Authenticate:
        """The same check, kept off the short way: an unrelated address is locked out, so the limiter is
        active (and every request goes through the lookups of the full way)."""
        limiter = MemoryFailureLimiter(w.limiter.failures, 300.0, 3600.0)
        drive(*(limiter.failed("ip:198.51.100.250", NOW) for _ in range(w.limiter.failures)))
        assert limiter.active
        # its own ApiKeyAuth: the once-a-minute rotation notice is remembered per instance
        return Authenticate(("api_key",), ApiKeyAuth(w.snapshot, PEPPERS.key_digest), (), limiter, w.clock)

    @staticmethod
    def outcome(w: World, authn: Authenticate, req: RequestView, required: Iterable[str]) -> object:
        ctx = Context("req-1")
        authz = Authorize(required)

        async def chain() -> Verdict:
            verdict = await authn(req, ctx)
            return verdict if verdict is not None else await authz(req, ctx)

        verdict = asyncio.run(chain())
        shown = None if verdict is None else (verdict.status, verdict.code, verdict.evidence)  # type: ignore[union-attr]
        return shown, ctx.principal, ctx.notices, w.snapshot.take_used()

    def test_both_ways_give_the_same_answer(self) -> None:
        w = World(failures=100)  # the refusals below must not lock the test's address out
        shop = w.consumer("shop", ["orders:read", "orders:write"])
        fenced = w.consumer("fenced", ["orders:read"], ip_allow=["192.0.2.0/24"])
        off = w.consumer("off", ["orders:read"], active=False)
        good, good_key = w.key(shop, ["orders:read"])
        _, narrow_key = w.key(shop, ["orders:write"])
        _, revoked_key = w.key(shop, revoked_at=NOW - 10)
        _, expired_key = w.key(shop, expires_at=NOW - 1)
        _, rotated_key = w.key(shop, rotated_to="NEWKEY000001", expires_at=NOW + 3600)
        _, fenced_key = w.key(fenced)
        _, pinned_key = w.key(shop, permissions=["POST /v1/orders"])
        _, off_key = w.key(off)
        wrong_secret = format_api_key(good.id, "x" * 33)
        unknown = format_api_key("UNKNOWN00001", "y" * 33)
        requests = [
            [("X-API-Key", good_key)],
            [bearer(good_key)],
            [("Authorization", f"bearer {good_key}")],  # any case of the scheme
            [("X-API-Key", f" {good_key} ")],
            [("X-API-Key", good_key), bearer(good_key)],  # the same key twice: fine
            [("X-API-Key", good_key), bearer(narrow_key)],  # two different keys: refused
            [("X-API-Key", narrow_key)],  # valid, without the scope
            [("X-API-Key", revoked_key)],
            [("X-API-Key", expired_key)],
            [bearer(rotated_key)],  # valid in its grace period, with a notice
            [("X-API-Key", fenced_key)],  # from an address outside its consumer's allow-list
            [("X-API-Key", pinned_key)],  # a GET, where the key may only POST
            [("X-API-Key", off_key)],
            [("X-API-Key", wrong_secret)],
            [bearer(unknown)],
            [("X-API-Key", good_key[:-1])],
            [("X-API-Key", "not a key")],
            [bearer("eyJhbGciOiJub25lIn0.e30.")],
            [("Authorization", "Basic " + base64.b64encode(f"shop:{good_key}".encode()).decode())],
            [],
        ]
        short_way = w.authn
        full_way = self.full_way(w)
        for headers in requests:
            req = view(headers=headers)
            assert self.outcome(w, short_way, req, ["orders:read"]) == self.outcome(
                w, full_way, req, ["orders:read"]
            ), headers

    def test_decide_now_decides_only_the_common_case(self) -> None:
        """The chain calls decide_now without awaiting; anything but a success (or a snapshot too stale
        to trust) is LATER, and awaiting the check then gives the full judgement."""
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        wrong = format_api_key(rec.id, "x" * 33)
        authn = w.authn
        ctx = Context("r")
        assert authn.decide_now(view(headers=[("X-API-Key", key)]), ctx) is None
        assert ctx.principal is not None and ctx.principal.key_id == rec.id
        for headers in (
            [("X-API-Key", wrong)],
            [],
            [("X-API-Key", key), ("X-API-Key", key)],  # a repeated header: the full way
            [("Authorization", "Basic Zm9vOmJhcg==")],
            [bearer("eyJhbGciOiJFUzI1NiJ9.e30.c2ln")],  # a token no verifier has seen
        ):
            ctx = Context("r")
            assert authn.decide_now(view(headers=headers), ctx) is LATER, headers
            assert ctx.principal is None
        drive(*(w.limiter.failed("ip:198.51.100.250", NOW) for _ in range(w.limiter.failures)))
        assert authn.decide_now(view(headers=[("X-API-Key", key)]), Context("r")) is LATER  # lockouts
        stale = Authenticate(
            ("api_key",),
            w.api_keys,
            (),
            MemoryFailureLimiter(10, 300.0, 300.0),
            w.clock,
            freshness=types.SimpleNamespace(fresh_until=NOW - 1),
        )
        assert stale.decide_now(view(headers=[("X-API-Key", key)]), Context("r")) is IDENTITY_UNAVAILABLE

    def test_through_the_chain_a_refused_key_is_digested_once_per_way(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The chain calls decide_now, then awaits decide_later (not the whole check again): a refused key
        costs one tag and one digest on the short way and one digest on the full way, no more (an attacker's
        junk would otherwise buy several HMACs per request)."""
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        digested, tagged = count_digests(monkeypatch, w.api_keys)
        wrong = format_api_key(rec.id, "x" * 33)
        verdict = asyncio.run(run_checks((w.authn,), view(headers=[("X-API-Key", wrong)]), Context("r")))
        deny(verdict, 401, "auth_invalid")
        assert (len(tagged), len(digested)) == (1, 2)
        tagged.clear()
        digested.clear()
        assert asyncio.run(run_checks((w.authn,), view(headers=[("X-API-Key", key)]), Context("r"))) is None
        assert (len(tagged), len(digested)) == (1, 1)  # the first use: tagged and digested, then remembered

    def test_only_a_success_takes_the_short_way(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop)
        full = []
        judge = w.api_keys.authenticate

        def spy(*args: object) -> object:
            full.append(args[0])
            return judge(*args)  # type: ignore[arg-type]

        w.api_keys.authenticate = spy  # type: ignore[method-assign]
        for headers in ([("X-API-Key", key)], [bearer(key)]):
            verdict, ctx = w.admit(view(headers=headers))
            assert verdict is None and ctx.principal is not None and ctx.principal.consumer == "shop"
        assert full == []
        wrong = format_api_key(key[4:16], "x" * 33)
        deny(w.admit(view(headers=[("X-API-Key", wrong)]))[0], 401, "auth_invalid")
        assert full == [wrong]  # a refusal is judged the full way, which names the cause

    def test_a_refusal_costs_the_same_digests_for_a_known_id_and_an_unknown_one(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No timing difference tells an existing key id from an unknown one: every refused key of the
        right length is digested and tagged the same number of times, whatever its record says, and
        whether or not a key of that id is remembered from an earlier request."""
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        off = w.consumer("off", ["orders:read"], active=False)
        good, key = w.key(shop)
        _, revoked_key = w.key(shop, revoked_at=NOW - 10)
        _, expired_key = w.key(shop, expires_at=NOW - 1)
        _, off_key = w.key(off)
        full_way = self.full_way(w)
        digested, tagged = count_digests(monkeypatch, w.api_keys, full_way.api_keys)  # type: ignore[arg-type]
        refused = {
            "unknown id": format_api_key("UNKNOWN00001", "y" * 33),
            "wrong secret, id in use": format_api_key(good.id, "x" * 33),
            "bad checksum": key[:-1] + ("A" if key[-1] != "A" else "B"),
            "revoked": revoked_key,
            "expired": expired_key,
            "consumer disabled": off_key,
            "non-ASCII, a key's length": "bst_" + "é" * 52,  # latin-1 from the wire: tagged, never a crash
            "lone surrogates, a key's length": "bst_" + "\udcff" * 52,  # never from the wire; no crash either
        }
        # the good key first: its id is remembered when the wrong secret comes
        assert asyncio.run(w.authn(view(headers=[("X-API-Key", key)]), Context("r"))) is None
        assert good.id in w.api_keys._seen
        for authn in (w.authn, full_way):
            counts: dict[str, tuple[int, int]] = {}
            for name, presented in refused.items():
                digested.clear()
                tagged.clear()
                verdict = asyncio.run(authn(view(headers=[("X-API-Key", presented)]), Context("r")))
                deny(verdict, 401, "auth_invalid")
                counts[name] = (len(digested), len(tagged))
            assert len(set(counts.values())) == 1, counts
            assert counts["unknown id"][0] >= 1
            assert counts["unknown id"][1] == (1 if authn is w.authn else 0)  # the full way never tags
        digested.clear()
        assert asyncio.run(full_way(view(headers=[("X-API-Key", key)]), Context("r"))) is None
        assert len(digested) == 1  # a valid key, the full way: once
        for authn in (w.authn, full_way):
            digested.clear()
            junk = "bst_" + "A" * 16_000  # a header can hold 16 KiB: refused without digesting it
            for headers in ([("X-API-Key", junk)], [bearer(junk)]):
                deny(asyncio.run(authn(view(headers=headers), Context("r"))), 401, "auth_invalid")
            assert digested == []


class TestRememberedKeys:
    """A key verified by its HMAC is remembered by a keyed BLAKE2s tag, with the record it was verified
    against: the same key again is accepted on the tag, anything else is digested and judged."""

    @staticmethod
    def counted(w: World) -> list[str]:
        digested: list[str] = []

        def counting(k: str) -> bytes:
            digested.append(k)
            return PEPPERS.key_digest(k)

        w.api_keys.digest = counting  # type: ignore[method-assign]
        return digested

    def test_a_key_seen_before_is_not_digested_again(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop)
        digested = self.counted(w)
        for headers in ([("X-API-Key", key)], [bearer(key)], [("X-API-Key", key)]):
            verdict, ctx = w.admit(view(headers=headers))
            assert verdict is None and ctx.principal is not None and ctx.principal.consumer == "shop"
        assert digested == [key]  # the first request only
        assert w.snapshot.take_used() == {key[4:16]: NOW}  # every use still noted
        # nothing of the key's text is kept: only its id, a 32-byte tag and the record
        remembered = w.api_keys._seen[key[4:16]]
        assert len(remembered[0]) == 32 and key.encode() not in remembered[0]
        assert key not in repr(w.api_keys.__dict__) and key[17:50] not in repr(w.api_keys.__dict__)

    def test_a_remembered_id_with_another_secret_is_refused(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        assert w.admit(view(headers=[("X-API-Key", key)]))[0] is None
        bad_checksum = key[:-1] + ("A" if key[-1] != "A" else "B")
        for wrong in (format_api_key(rec.id, "x" * 33), bad_checksum):
            deny(w.admit(view(headers=[("X-API-Key", wrong)]))[0], 401, "auth_invalid")
        assert w.admit(view(headers=[("X-API-Key", key)]))[0] is None

    def test_a_new_record_is_verified_again(self) -> None:
        """The tag stands for "this key matched that record's digest". A reload brings new records, and a
        restored database could hold another key under the same id: the key is digested again, and a
        record whose digest no longer matches refuses it (red if the tag alone were trusted)."""
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        digested = self.counted(w)
        assert w.admit(view(headers=[("X-API-Key", key)]))[0] is None
        w.reload()  # same records, new objects
        assert w.admit(view(headers=[("X-API-Key", key)]))[0] is None
        assert digested == [key, key]
        _, other = w.key(shop)
        w.data.keys[rec.id] = replace(w.data.keys[rec.id], digest=PEPPERS.key_digest(other))
        deny(w.admit(view(headers=[("X-API-Key", key)]))[0], 401, "auth_invalid")

    def test_changes_to_a_remembered_key_take_effect_at_once(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop, expires_at=NOW + 60)
        assert w.admit(view(headers=[("X-API-Key", key)]))[0] is None
        w.clock.now = NOW + 60  # expired, same record
        deny(w.admit(view(headers=[("X-API-Key", key)]))[0], 401, "auth_invalid")
        w.clock.now = NOW
        kid = key[4:16]
        w.data.keys[kid] = replace(w.data.keys[kid], revoked_at=NOW - 1)
        deny(w.admit(view(headers=[("X-API-Key", key)]))[0], 401, "auth_invalid")

    def test_the_memo_never_outgrows_the_snapshot(self) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        keys = [w.key(shop)[1] for _ in range(5)]
        for key in keys:
            assert w.admit(view(headers=[("X-API-Key", key)]))[0] is None
        for key in keys[:4]:
            del w.data.keys[key[4:16]]  # deleted: their entries are stale
        late = [w.key(shop)[1] for _ in range(3)]
        for key in late:
            assert w.admit(view(headers=[("X-API-Key", key)]))[0] is None
            assert len(w.api_keys._seen) <= len(w.data.keys)
        assert set(w.api_keys._seen) == {k[4:16] for k in [keys[4], *late]}


class TestRememberedTokens:
    """A token Bastion issued is verified once and remembered; what can change during its life is looked
    at again on every request, and anything remembered from one snapshot is not used with another."""

    ISSUER = "https://gateway.example"

    def verifier(self, w: World, tmp_path: Path) -> tuple[LocalTokenVerifier, Callable[[], str]]:
        engine = open_database(f"sqlite:///{tmp_path}/keys.db")
        signing = SigningKeys(engine, PEPPERS, alg="ES256", token_ttl=900.0, clock=w.clock)
        signing.refresh()
        kid, key = signing.current()
        local = LocalTokenVerifier(signing, w.snapshot, issuer=self.ISSUER, audience=self.ISSUER)

        def token() -> str:
            claims = {
                "iss": self.ISSUER,
                "aud": self.ISSUER,
                "sub": "cl-shop",
                "client_id": "cl-shop",
                "iat": int(NOW - 10),
                "exp": int(NOW + 600),
                "jti": secrets.token_hex(8),
                "scope": "orders:read",
            }
            return sign_jwt(claims, key, "ES256", kid)

        return local, token

    def test_a_reload_that_repeats_the_revision_number_still_forgets(self, tmp_path: Path) -> None:
        """A restored database can bring back a revision number the gateway has seen before, with other
        contents: what was remembered is tied to the snapshot itself, not to its number."""
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        w.data.clients["cl-shop"] = ClientRecord("cl-shop", shop.id, frozenset({"orders:read"}), None)
        local, token = self.verifier(w, tmp_path)
        t = token()
        assert asyncio.run(local.verify(t, NOW)).consumer == "shop"
        assert local.recall(t, NOW) is not None  # remembered
        restored = _Data()
        restored.revision = w.data.revision  # the same number...
        restored.consumers[shop.id] = replace(shop, active=False)  # ...other contents
        restored.clients = dict(w.data.clients)
        w.snapshot.replace(restored)
        assert local.recall(t, NOW) is None
        with pytest.raises(AuthFailure) as failure:
            asyncio.run(local.verify(t, NOW))
        assert failure.value.code == "consumer_disabled"

    def test_a_token_revoked_here_is_forgotten_at_once(self, tmp_path: Path) -> None:
        w = World()
        shop = w.consumer("shop", ["orders:read"])
        w.data.clients["cl-shop"] = ClientRecord("cl-shop", shop.id, frozenset({"orders:read"}), None)
        local, token = self.verifier(w, tmp_path)
        t, other = token(), token()
        for each in (t, other):
            assert asyncio.run(local.verify(each, NOW)).consumer == "shop"
        jti = json.loads(base64.urlsafe_b64decode(t.split(".")[1] + "=="))["jti"]
        w.snapshot.revoke_token(jti, NOW + 600, NOW)
        assert local.recall(t, NOW) is None
        assert local.recall(other, NOW) is not None
        with pytest.raises(AuthFailure) as failure:
            asyncio.run(local.verify(t, NOW))
        assert failure.value.code == "token_revoked"


class TestLockout:
    def test_source_ip_is_locked_out_even_with_a_valid_key(self) -> None:
        w = World(failures=3, block_for=300)
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop)
        attacker = "198.51.100.7"
        for i in range(3):
            _, guess = new_api_key()
            verdict, ctx = w.admit(view(headers=[bearer(guess)], client_ip=attacker))
            deny(verdict, 401, "auth_invalid")
            locked = [n for n in ctx.notices if n[0] == "auth.locked_out"]
            assert bool(locked) == (i == 2)
        assert locked[0][1]["subject"] == "source_ip"
        w.clock.now += 10
        d = deny(w.admit(view(headers=[bearer(key)], client_ip=attacker))[0], 429, "auth_locked_out")
        assert header(d, "retry-after") == "290"
        assert d.evidence["subject"] == "source_ip"
        # Other sources are unaffected; the block ends after block_for.
        assert w.admit(view(headers=[bearer(key)], client_ip="198.51.100.8"))[0] is None
        w.clock.now = NOW + 300
        assert w.admit(view(headers=[bearer(key)], client_ip=attacker))[0] is None

    def test_malformed_and_missing_credentials_count_too(self) -> None:
        w = World(failures=2)
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop)
        ip = "198.51.100.9"
        deny(w.admit(view(headers=[("X-API-Key", "garbage")], client_ip=ip))[0], 401, "auth_invalid")
        deny(
            w.admit(view(headers=[("Authorization", "Basic Zm9vOmJhcg==")], client_ip=ip))[0],
            401,
            "auth_invalid",
        )
        deny(w.admit(view(headers=[bearer(key)], client_ip=ip))[0], 429, "auth_locked_out")

    def test_key_id_refuses_guesses_across_source_addresses_but_not_its_holder(self) -> None:
        w = World(failures=3, block_for=120)
        shop = w.consumer("shop", ["orders:read"])
        rec, key = w.key(shop)
        _, bystander = w.key(shop)
        for i in range(3):
            wrong = format_api_key(rec.id, string.ascii_letters[i] * 33)
            verdict, ctx = w.admit(view(headers=[bearer(wrong)], client_ip=f"192.0.2.{i + 1}"))
            deny(verdict, 401, "auth_invalid")
        assert [n[1]["subject"] for n in ctx.notices if n[0] == "auth.locked_out"] == ["key_id"]
        # Another guess under that id, from a new address: refused without a verdict on the secret.
        guess = format_api_key(rec.id, "z" * 33)
        d = deny(w.admit(view(headers=[bearer(guess)], client_ip="192.0.2.100"))[0], 429, "auth_locked_out")
        assert header(d, "retry-after") == "120"
        assert d.evidence["subject"] == "key_id" and d.evidence["key_id"] == rec.id
        # The key's holder is not locked out by failures someone else sent under its id; other keys work.
        assert w.admit(view(headers=[bearer(key)], client_ip="192.0.2.200"))[0] is None
        assert w.admit(view(headers=[bearer(bystander)], client_ip="192.0.2.200"))[0] is None
        w.clock.now = NOW + 120
        assert w.admit(view(headers=[bearer(guess)], client_ip="192.0.2.201"))[0] is not None
        assert deny(w.admit(view(headers=[bearer(guess)], client_ip="192.0.2.202"))[0], 401, "auth_invalid")

    def test_retry_after_is_a_whole_number_of_seconds_at_least_one(self) -> None:
        w = World(failures=1, block_for=2.5)
        shop = w.consumer("shop", ["orders:read"])
        _, key = w.key(shop)
        deny(w.admit(view(headers=[("X-API-Key", "nope")]))[0], 401, "auth_invalid")
        d = deny(w.admit(view(headers=[bearer(key)]))[0], 429, "auth_locked_out")
        assert header(d, "retry-after") == "3"
        w.clock.now = NOW + 2.4
        d = deny(w.admit(view(headers=[bearer(key)]))[0], 429, "auth_locked_out")
        assert header(d, "retry-after") == "1"
