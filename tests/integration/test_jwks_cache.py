"""The JWKS cache: caching, refresh on rotation, rate-limited and single-flight refetches, resilience.

Most tests inject the fetch function and a fake clock (time only moves when a test says so); the last
ones serve the JWKS from a real HTTP server on 127.0.0.1 to drive the default httpx fetch.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey
from joserfc.util import int_to_base64

from bastion.identity.jwks import JwksCache, JwksError, check_jwks_url
from bastion.identity.jwt import JwtPolicy, sign_jwt, verify_jwt

URL = "https://idp.example.com/.well-known/jwks.json"
K1 = ECKey.generate_key("P-256", parameters={"kid": "k1"})
K2 = ECKey.generate_key("P-256", parameters={"kid": "k2"})


def jwks(*keys: Any) -> bytes:
    return json.dumps(
        {"keys": [k if isinstance(k, dict) else k.as_dict(private=False) for k in keys]}
    ).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """Counts fetches and serves ``body`` (or raises ``error``); ``gate`` holds every fetch until set."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.error: Exception | None = None
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, url: str) -> bytes:
        assert url == URL
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.body


def make(body: bytes, **options: Any) -> tuple[JwksCache, Fetcher, Clock]:
    fetcher, clock = Fetcher(body), Clock()
    return JwksCache(URL, clock=clock, fetch=fetcher, **options), fetcher, clock


def kids(keys: KeySet) -> set[str | None]:
    return {key.kid for key in keys}


# --- caching and refresh --------------------------------------------------------------------------------


def test_the_set_is_cached_within_ttl_and_refetched_after() -> None:
    async def scenario() -> None:
        cache, fetcher, clock = make(jwks(K1), ttl=300)
        assert kids(await cache.key_set("k1")) == {"k1"}
        clock.now += 299
        await cache.key_set("k1")
        await cache.key_set(None)
        assert fetcher.calls == 1
        clock.now += 1
        await cache.key_set("k1")
        assert fetcher.calls == 2

    asyncio.run(scenario())


def test_an_unknown_kid_triggers_a_refetch_once_the_interval_has_passed() -> None:
    async def scenario() -> None:
        cache, fetcher, clock = make(jwks(K1), min_refresh_interval=30)
        await cache.key_set("k1")
        fetcher.body = jwks(K1, K2)  # the issuer rotates
        clock.now += 10
        assert kids(await cache.key_set("k2")) == {"k1"}  # too soon: serve what we have
        assert fetcher.calls == 1
        clock.now += 20
        assert kids(await cache.key_set("k2")) == {"k1", "k2"}
        assert fetcher.calls == 2
        assert kids(await cache.key_set("k2")) == {"k1", "k2"}
        assert fetcher.calls == 2

    asyncio.run(scenario())


def test_a_flood_of_random_kids_does_not_hammer_the_issuer() -> None:
    async def scenario() -> None:
        cache, fetcher, clock = make(jwks(K1), min_refresh_interval=30, ttl=300)
        rng = random.Random(7)
        for _ in range(2000):  # 2000 requests over 100 seconds, each naming a kid nobody has
            await cache.key_set(f"random-{rng.getrandbits(64):x}")
            clock.now += 0.05
        # one fetch at t=0, then one per 30 s: t=30, 60, 90
        assert fetcher.calls == 4

    asyncio.run(scenario())


def test_concurrent_callers_share_one_fetch() -> None:
    async def scenario() -> None:
        cache, fetcher, _ = make(jwks(K1, K2))
        fetcher.gate = asyncio.Event()
        callers = [asyncio.create_task(cache.key_set(kid)) for kid in ["k1", "k2", None, "zzz"] * 25]
        await asyncio.sleep(0)  # let every caller reach the fetch (no time passes: this only yields)
        fetcher.gate.set()
        results = await asyncio.gather(*callers)
        assert fetcher.calls == 1
        assert all(result is results[0] for result in results)

    asyncio.run(scenario())


def test_a_caller_that_gives_up_does_not_cancel_the_shared_fetch() -> None:
    async def scenario() -> None:
        cache, fetcher, _ = make(jwks(K1))
        fetcher.gate = asyncio.Event()
        impatient = asyncio.create_task(cache.key_set("k1"))
        patient = asyncio.create_task(cache.key_set("k1"))
        await asyncio.sleep(0)
        impatient.cancel()
        fetcher.gate.set()
        assert kids(await patient) == {"k1"}
        assert fetcher.calls == 1
        with pytest.raises(asyncio.CancelledError):
            await impatient

    asyncio.run(scenario())


# --- failures ------------------------------------------------------------------------------------------


def test_the_last_good_set_is_kept_when_a_refetch_fails() -> None:
    async def scenario() -> None:
        cache, fetcher, clock = make(jwks(K1), ttl=300)
        first = await cache.key_set("k1")
        fetcher.error = OSError("connection refused")
        clock.now += 301
        assert await cache.key_set("k1") is first
        assert cache.last_error == "OSError: connection refused"
        for bad in (b"<html>oops</html>", b'{"keys": "no"}', b"[]", jwks({"kty": "oct", "k": "c2VjcmV0"})):
            fetcher.error, fetcher.body = None, bad
            clock.now += 301
            assert await cache.key_set("k1") is first
            assert cache.last_error is not None
        fetcher.body = jwks(K2)
        clock.now += 301
        assert kids(await cache.key_set("k2")) == {"k2"}
        assert cache.last_error is None
        assert fetcher.calls == 7

    asyncio.run(scenario())


def test_no_good_set_ever_raises_and_the_retry_is_rate_limited() -> None:
    async def scenario() -> None:
        cache, fetcher, clock = make(jwks(K1), min_refresh_interval=30)
        fetcher.error = OSError("down")
        with pytest.raises(JwksError, match="down"):
            await cache.key_set("k1")
        clock.now += 29
        with pytest.raises(JwksError):
            await cache.key_set("k1")
        assert fetcher.calls == 1
        fetcher.error = None
        clock.now += 1
        assert kids(await cache.key_set("k1")) == {"k1"}
        assert fetcher.calls == 2

    asyncio.run(scenario())


def test_a_hung_fetch_times_out() -> None:
    async def scenario() -> None:
        cache, fetcher, _ = make(jwks(K1), timeout=0.01)
        fetcher.gate = asyncio.Event()  # never set: the issuer never answers
        with pytest.raises(JwksError, match="TimeoutError"):
            await cache.key_set("k1")

    asyncio.run(scenario())


def test_an_oversized_response_is_a_failed_fetch() -> None:
    async def scenario() -> None:
        body = jwks(K1)
        cache, _, _ = make(body + b" " * 1000, max_bytes=len(body) + 999)
        with pytest.raises(JwksError, match="bytes"):
            await cache.key_set("k1")
        cache, _, _ = make(body + b" " * 999, max_bytes=len(body) + 999)
        assert kids(await cache.key_set("k1")) == {"k1"}

    asyncio.run(scenario())


def test_too_many_keys_is_a_failed_fetch() -> None:
    async def scenario() -> None:
        many = [ECKey.generate_key("P-256", parameters={"kid": f"k{i}"}) for i in range(6)]
        cache, _, _ = make(jwks(*many), max_keys=5)
        with pytest.raises(JwksError, match="6 keys"):
            await cache.key_set("k1")

    asyncio.run(scenario())


def test_only_public_signing_keys_are_kept() -> None:
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    small = {"kty": "RSA", "kid": "rsa-1024", "n": int_to_base64(numbers.n), "e": int_to_base64(numbers.e)}
    entries = [
        K1.as_dict(private=False),
        {**K2.as_dict(private=True), "kid": "ec-private"},
        {**RSAKey.generate_key(2048).as_dict(private=True), "kid": "rsa-private"},
        {**OctKey.generate_key(256).as_dict(), "kid": "oct"},
        {**ECKey.generate_key("P-256").as_dict(private=False), "kid": "enc", "use": "enc"},
        {**ECKey.generate_key("P-256").as_dict(private=False), "kid": "wrap", "key_ops": ["wrapKey"]},
        {**OKPKey.generate_key("X25519").as_dict(private=False), "kid": "x25519"},
        small,
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "PQC", "kid": "future"},
        "not a key",
        {**OKPKey.generate_key("Ed25519").as_dict(private=False), "kid": "ed", "use": "sig"},
    ]

    async def scenario() -> None:
        cache, _, _ = make(json.dumps({"keys": entries}).encode())
        keys = await cache.key_set("k1")
        assert kids(keys) == {"k1", "ed"}
        assert not any(key.is_private for key in keys)

    asyncio.run(scenario())


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)
MEMBERS = st.sampled_from(["kty", "kid", "use", "key_ops", "alg", "crv", "n", "e", "x", "y", "d", "k"])
ENTRY = st.dictionaries(
    MEMBERS, JSONISH | st.sampled_from(["RSA", "EC", "OKP", "oct", "P-256", "Ed25519", "sig"])
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(JSONISH, st.fixed_dictionaries({"keys": st.lists(ENTRY | JSONISH, max_size=5)})))
def test_any_json_document_is_either_a_key_set_or_a_failed_fetch(document: Any) -> None:
    async def scenario() -> None:
        cache, _, _ = make(json.dumps(document).encode())
        try:
            keys = await cache.key_set(None)
        except JwksError:
            # a parse failure, not a bug (TypeError, KeyError...) that the cache's safety net swallowed
            assert cache.last_error is not None and cache.last_error.startswith("JwksError")
        else:
            assert keys and not any(key.is_private for key in keys)

    asyncio.run(scenario())


def test_a_set_of_only_private_or_secret_keys_is_a_failed_fetch() -> None:
    async def scenario() -> None:
        cache, _, _ = make(jwks(K1.as_dict(private=True), OctKey.generate_key(256).as_dict()))
        with pytest.raises(JwksError, match="no usable"):
            await cache.key_set(None)

    asyncio.run(scenario())


def test_a_rotated_key_verifies_tokens_end_to_end() -> None:
    policy = JwtPolicy(issuer="https://idp.example.com/", audience=None, algorithms=("ES256",))
    claims = {"iss": policy.issuer, "exp": 2_000_000_000, "sub": "u1"}

    async def scenario() -> None:
        cache, fetcher, clock = make(jwks(K1))
        await cache.key_set(None)
        fetcher.body = jwks(K1, K2)
        clock.now += 60
        token = sign_jwt(claims, K2, "ES256", "k2")
        keys = await cache.key_set("k2")
        assert verify_jwt(token, keys, policy, now=1_900_000_000)["sub"] == "u1"

    asyncio.run(scenario())


def test_aclose_cancels_a_running_fetch() -> None:
    async def scenario() -> None:
        cache, fetcher, _ = make(jwks(K1))
        fetcher.gate = asyncio.Event()
        waiter = asyncio.create_task(cache.key_set("k1"))
        await asyncio.sleep(0)
        await cache.aclose()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(scenario())


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "HTTPS://idp.example.com:8443/keys?v=2",
        "http://127.0.0.1:8080/jwks",
        "http://127.8.9.10/jwks",
        "http://[::1]:9000/jwks",
        "http://localhost/jwks",
        "http://LOCALHOST:3000/jwks",
    ],
)
def test_acceptable_jwks_urls(url: str) -> None:
    assert check_jwks_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/jwks", "https"),
        ("http://10.0.0.1/jwks", "https"),
        ("http://localhost.example.com/jwks", "https"),
        ("http://127.0.0.1.nip.io/jwks", "https"),
        ("ftp://idp.example.com/jwks", "https"),
        ("file:///etc/passwd", "https"),
        ("//idp.example.com/jwks", "https"),
        ("idp.example.com/jwks", "https"),
        ("https://user:pass@idp.example.com/jwks", "user info"),
        ("https://idp.example.com@evil.example/jwks", "user info"),
        ("https://idp.example.com/jwks#frag", "fragment"),
        ("https:///jwks", "no host"),
        ("https://idp.example.com:99999/jwks", "invalid port"),
        ("https://idp.example.com/jw ks", "whitespace"),
        ("", "non-empty"),
    ],
)
def test_unacceptable_jwks_urls(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_jwks_url(url)


def test_the_cache_checks_its_url_and_limits() -> None:
    with pytest.raises(ValueError, match="https"):
        JwksCache("http://idp.example.com/jwks")
    with pytest.raises(ValueError, match="ttl"):
        JwksCache(URL, ttl=0)


# --- the default fetch, against a real HTTP server on loopback -------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, tuple[int, list[tuple[str, str]], bytes]]
    hits: list[str]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        status, headers, body = self.server.routes.get(self.path, (404, [], b"not found"))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()  # HTTP/1.0 and no content-length unless a route sets one: body ends at close
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.routes, srv.hits = {}, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def base(srv: Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_the_default_fetch_reads_a_jwks_over_http(server: Server) -> None:
    body = jwks(K1, K2)
    server.routes["/jwks"] = (
        200,
        [("content-type", "application/json"), ("content-length", str(len(body)))],
        body,
    )

    async def scenario() -> None:
        cache = JwksCache(base(server) + "/jwks")
        try:
            assert kids(await cache.key_set("k2")) == {"k1", "k2"}
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    assert server.hits == ["/jwks"]


@pytest.mark.parametrize(
    ("route", "error"),
    [
        ((302, [("location", "/jwks")], b""), "HTTP 302"),
        ((500, [], b"boom"), "HTTP 500"),
        ((200, [("content-length", "999999")], b"{}"), "declares"),
        ((200, [], b" " * 5000), "exceeds"),  # no content-length: the stream is cut off at the limit
        ((200, [("content-encoding", "gzip")], b"\x1f\x8b"), "compressed"),
    ],
)
def test_the_default_fetch_refuses_bad_responses(server: Server, route: Any, error: str) -> None:
    server.routes["/bad"] = route
    server.routes["/jwks"] = (200, [], jwks(K1))

    async def scenario() -> None:
        cache = JwksCache(base(server) + "/bad", max_bytes=4096)
        try:
            with pytest.raises(JwksError, match=error):
                await cache.key_set("k1")
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    assert server.hits == ["/bad"]  # a redirect is never followed


def test_the_default_fetch_keeps_the_last_good_set_when_the_server_fails(server: Server) -> None:
    server.routes["/jwks"] = (200, [], jwks(K1))
    clock = Clock()

    async def scenario() -> None:
        cache = JwksCache(base(server) + "/jwks", clock=clock)
        try:
            first = await cache.key_set("k1")
            server.routes["/jwks"] = (503, [], b"")
            clock.now += 301
            assert await cache.key_set("k1") is first
            assert cache.last_error == "JwksError: JWKS URL answered HTTP 503"
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    assert len(server.hits) == 2
