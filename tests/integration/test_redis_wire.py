"""Bastion's pipelined Redis connection (``bastion.state.redis_wire``) against the real server on
127.0.0.1:6379: many callers share one connection and each gets its own reply, the handshake selects the
database and a refused one runs nothing, a flushed script is sent again, and a stream out of step is never
trusted."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis

from bastion.core.ports import StateUnavailable
from bastion.core.ratelimit import parse_limit
from bastion.core.urls import parse_redis_url
from bastion.state.redis import RedisCounters, RedisReplayCache, RedisState
from bastion.state.redis_wire import pack

REDIS = "redis://127.0.0.1:6379"
T0 = 1_800_000_000.0


@pytest.fixture
def prefix() -> str:
    return "bastion-wire-" + secrets.token_hex(5)


@pytest.fixture(autouse=True)
def _cleanup(prefix: str):
    yield
    for db in (0, 3):
        client = redis.Redis.from_url(f"{REDIS}/{db}")
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()


def test_pack_is_resp_bulk_strings() -> None:
    assert pack(("SET", "k", b"\x00\r\n", 5)) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\x00\r\n\r\n$1\r\n5\r\n"
    )
    assert pack(("GET", "ключ")) == b"*2\r\n$3\r\nGET\r\n$8\r\n" + "ключ".encode() + b"\r\n"


def test_concurrent_callers_share_one_connection_and_each_gets_its_own_answer(prefix: str) -> None:
    async def scenario() -> None:
        state = RedisState(f"{REDIS}/0", timeout=2.0, prefix=prefix)
        counters = RedisCounters(state, server_time=False)
        limit = [parse_limit("100/minute")]
        try:
            await state.execute("PING")
            conn = state._conn
            # 150 hits on one key and 50 on keys of their own, all in flight at once
            results = await asyncio.gather(
                *(counters.hit(["shared"], limit, T0, f"m{i}") for i in range(150)),
                *(counters.hit([f"own{i}"], limit, T0, f"o{i}") for i in range(50)),
            )
            assert state._conn is conn and not conn.closed  # one connection, still in step
            shared, own = results[:150], results[150:]
            assert sum(d.allowed for d in shared) == 100
            assert sorted(d.remaining for d in shared if d.allowed) == list(range(100))
            assert all(d.allowed and d.remaining == 99 for d in own)
            assert await state.execute("ECHO", "still in step") == b"still in step"
        finally:
            await state.aclose()

    asyncio.run(scenario())


def test_the_url_database_is_selected_before_any_command(prefix: str) -> None:
    async def scenario() -> None:
        state = RedisState(f"{REDIS}/3", timeout=2.0, prefix=prefix)
        try:
            assert await RedisReplayCache(state).first_seen("x", T0 + 60, T0)
        finally:
            await state.aclose()

    asyncio.run(scenario())
    assert redis.Redis.from_url(f"{REDIS}/3").exists(f"{prefix}:once:x")
    assert not redis.Redis.from_url(f"{REDIS}/0").exists(f"{prefix}:once:x")


def test_a_refused_handshake_runs_no_command(prefix: str) -> None:
    async def scenario() -> None:
        # This server has no password: AUTH is refused, so the command behind it must not run.
        state = RedisState("redis://:wrong-password@127.0.0.1:6379/0", timeout=2.0, prefix=prefix)
        try:
            with pytest.raises(StateUnavailable) as caught:
                await RedisReplayCache(state).first_seen("x", T0 + 60, T0)
            assert "wrong-password" not in str(caught.value)
        finally:
            await state.aclose()

    asyncio.run(scenario())
    assert not redis.Redis.from_url(f"{REDIS}/0").exists(f"{prefix}:once:x")


def test_a_flushed_script_is_sent_again(prefix: str) -> None:
    async def scenario() -> None:
        state = RedisState(f"{REDIS}/0", timeout=2.0, prefix=prefix)
        counters = RedisCounters(state, server_time=False)
        limit = [parse_limit("2/minute")]
        try:
            assert (await counters.hit(["k"], limit, T0, "a")).allowed
            assert await state.execute("SCRIPT", "FLUSH") == b"OK"
            second = await counters.hit(["k"], limit, T0, "b")
            assert second.allowed and second.remaining == 0
            assert not (await counters.hit(["k"], limit, T0, "c")).allowed
        finally:
            await state.aclose()

    asyncio.run(scenario())


def test_an_error_reply_is_a_failure_and_the_connection_stays_in_step(prefix: str) -> None:
    async def scenario() -> None:
        state = RedisState(f"{REDIS}/0", timeout=2.0, prefix=prefix)
        try:
            with pytest.raises(StateUnavailable, match="error reply"):
                await state.execute("NO-SUCH-COMMAND")
            assert await state.execute("ECHO", "next") == b"next"
        finally:
            await state.aclose()

    asyncio.run(scenario())


def test_a_reply_nobody_asked_for_closes_the_connection(prefix: str) -> None:
    async def scenario() -> None:
        state = RedisState(f"{REDIS}/0", timeout=2.0, prefix=prefix)
        try:
            await state.execute("PING")
            conn = state._conn
            assert conn is not None
            conn.data_received(b"+OK\r\n")  # as if the server had answered twice
            assert conn.closed
            assert await state.execute("ECHO", "fresh") == b"fresh"  # a new connection
            assert state._conn is not conn
        finally:
            await state.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:6379/0?socket_timeout=1", "unknown option 'socket_timeout'"),
        ("redis://h:6379/0?ssl_cert_reqs=none", "need rediss://"),
        ("rediss://h:6379/0?ssl_cert_reqs=maybe", "'required' or 'none'"),
        ("redis://h:6379/abc", "database number"),
        ("redis://h:99999/0", "invalid port"),
        ("http://h:6379/0", "expected redis://"),
    ],
)
def test_redis_urls_are_checked_without_echoing_them(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_redis_url(url.replace("//h", "//user:s3cret@h"))
    assert "s3cret" not in str(caught.value)


def test_redis_url_parts() -> None:
    target = parse_redis_url("rediss://bob:p%40ss@cache.internal:6380/2?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    assert (target.host, target.port, target.db, target.username, target.password) == (
        "cache.internal",
        6380,
        2,
        "bob",
        "p@ss",
    )
    assert target.tls and not target.verify and target.ca_file == "/ca.pem"
    plain = parse_redis_url("redis://127.0.0.1")
    assert (plain.port, plain.db, plain.password, plain.tls) == (6379, 0, None, False)
