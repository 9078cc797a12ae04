"""Shared state on Redis (``storage.state: redis://…``): rate limits and quotas, and the replay cache.

Every rate-limit decision is **one round trip**: a Lua script trims, counts and — only when every limit
passes — records, atomically, with exactly the steps of :func:`bastion.core.ratelimit.decide` (a contract
test runs one suite against this and the in-memory backend). Keys are namespaced (``bastion:``) and carry a
Redis Cluster hash tag, so all keys of one request live in one slot.

Redis must never hang a request: each call has a short timeout (``timeout``, 50 ms by default), and a
circuit breaker stops calling for ``breaker_reset`` seconds after ``breaker_failures`` failures in a row.
A failure raises :class:`StateUnavailable`; the caller decides (a route's ``on_state_failure``). When Redis
answers again, the breaker closes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import hiredis

from ..core.ports import StateUnavailable
from ..core.ratelimit import Decision, Limit, window_of
from ..core.urls import parse_redis_url
from .redis_wire import Connection, Script, WireError, connect, pack

__all__ = [
    "Breaker",
    "RedisCounters",
    "RedisFailureLimiter",
    "RedisReplayCache",
    "RedisState",
    "RedisTallies",
]

T = TypeVar("T")

# KEYS[i]: limit i's key. ARGV: now ("" for the Redis server's clock: one clock for every gateway), member,
# then per limit: kind ("s" sliding | "c" calendar), N, and the
# period in seconds (sliding) or the window's end in epoch seconds (calendar).
_HIT = Script("""
local now = tonumber(ARGV[1])
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local member = ARGV[2]
local refused_i, refused_wait = 0, -1
local best_i, best_left, best_reset = 0, nil, 0
for i = 1, #KEYS do
  local kind, n, p = ARGV[3 * i], tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local used, frees
  if kind == 's' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - p)
    used = redis.call('ZCARD', KEYS[i])
    if used > 0 then
      frees = tonumber(redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2]) + p - now
    else
      frees = p
    end
  else
    used = tonumber(redis.call('GET', KEYS[i]) or '0')
    frees = p - now
  end
  if used >= n then
    if frees > refused_wait then refused_i, refused_wait = i, frees end
  else
    local left = n - used - 1
    if best_left == nil or left < best_left or (left == best_left and frees > best_reset) then
      best_i, best_left, best_reset = i, left, frees
    end
  end
end
if refused_i > 0 then
  return {0, refused_i, 0, tostring(refused_wait)}
end
for i = 1, #KEYS do
  local kind, p = ARGV[3 * i], tonumber(ARGV[3 * i + 2])
  if kind == 's' then
    redis.call('ZADD', KEYS[i], now, member)
    redis.call('PEXPIRE', KEYS[i], math.ceil(p * 1000) + 1000)
  else
    redis.call('INCR', KEYS[i])
    redis.call('EXPIREAT', KEYS[i], math.ceil(p) + 60)
  end
end
return {1, best_i, best_left, tostring(best_reset)}
""")


class Breaker:
    """Closed → (``failures`` in a row) → open for ``reset`` seconds → one trial call → closed or open."""

    def __init__(self, failures: int = 5, reset: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.reset = reset
        self.clock = clock
        self._count = 0
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return self._count >= self.failures and self.clock() < self._open_until

    def success(self) -> None:
        self._count = 0

    def failure(self) -> None:
        self._count += 1
        if self._count >= self.failures:
            self._open_until = self.clock() + self.reset


class RedisState:
    """One pipelined Redis connection per process (opened on first use, on the running loop, and again
    after it fails), with the timeout and the breaker every call goes through."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.05,
        breaker_failures: int = 5,
        breaker_reset: float = 2.0,
        prefix: str = "bastion",
    ) -> None:
        self.url = url
        self.target = parse_redis_url(url)
        self.timeout = timeout
        self.prefix = prefix
        self.breaker = Breaker(breaker_failures, breaker_reset)
        self._conn: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        self.failures = 0  # calls that failed or were skipped by the open breaker (for stats and tests)

    async def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:  # one connect for every caller waiting on it
            self._connecting = asyncio.ensure_future(connect(self.target, self.timeout))
        pending = self._connecting
        try:
            conn = await asyncio.shield(pending)
        finally:
            if self._connecting is pending and pending.done():
                self._connecting = None
        self._conn = conn
        return conn

    async def execute(self, *args: Any) -> Any:
        """One command; its reply, or ``StateUnavailable`` (an error reply is a failure too)."""
        return await self._guarded(self._round_trip(pack(args)))

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``EVALSHA``, and ``EVAL`` with the body only when the server does not have the script."""
        return await self._guarded(self._run(script, keys, args))

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        reply = await self._round_trip(pack(("EVALSHA", script.sha, len(keys), *keys, *args)))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._round_trip(pack(("EVAL", script.body, len(keys), *keys, *args)))
        return reply

    async def _round_trip(self, packed: bytes) -> Any:
        conn = await self._connection()
        return await conn.call(packed)

    async def _guarded(self, call: Awaitable[T]) -> T:
        if self.breaker.open:
            close = getattr(call, "close", None)
            if close is not None:
                close()  # the coroutine never runs: no "never awaited" warning
            self.failures += 1
            raise StateUnavailable("redis circuit open")
        try:
            result = await call
            if isinstance(result, hiredis.ReplyError):
                raise WireError("error reply")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any Redis, socket or timeout error: the caller decides what to do
            self.breaker.failure()
            self.failures += 1
            reason = str(exc) if isinstance(exc, WireError) else type(exc).__name__
            raise StateUnavailable(f"redis: {reason}") from None
        self.breaker.success()
        return result

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close("closed")


class RedisCounters:
    """Implements :class:`bastion.core.ports.Counters` on Redis (one Lua round trip per request)."""

    def __init__(self, state: RedisState, *, server_time: bool = True) -> None:
        self.state = state
        # The Redis server's clock decides windows, so instances with drifting clocks still agree; a test
        # passes server_time=False to drive the decision with its own clock, like the in-memory backend.
        self.server_time = server_time

    async def hit(self, keys: Sequence[str], limits: Sequence[Limit], now: float, member: str) -> Decision:
        state = self.state
        full: list[str] = []
        args: list[Any] = ["" if self.server_time else repr(now), member]
        for key, limit in zip(keys, limits, strict=True):
            if limit.calendar is None:
                full.append(f"{state.prefix}:rl:{key}")
                args += ["s", limit.requests, repr(limit.period)]
            else:
                window, end = window_of(limit, now)
                full.append(f"{state.prefix}:quota:{key}:{window}")
                args += ["c", limit.requests, repr(end)]
        reply = await state.run(_HIT, full, args)
        try:
            allowed, index, remaining, reset = reply
            limit = limits[int(index) - 1]
            wait = max(float(reset), 0.0)
        except (TypeError, ValueError, IndexError):  # not our script's answer: treat as Redis failing
            raise StateUnavailable("redis: unexpected reply") from None
        if int(allowed):
            return Decision(True, limit.requests, int(remaining), wait)
        return Decision(False, limit.requests, 0, wait, limit.text)


class RedisReplayCache:
    """Implements :class:`bastion.core.ports.ReplayCache`: ``SET NX`` with an expiry (milliseconds)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()

    async def first_seen(self, key: str, expires_at: float, now: float) -> bool:
        ttl = max(1, math.ceil((expires_at - now) * 1000))
        name = f"{self.state.prefix}:once:{key}"
        return await self.state.execute("SET", name, b"1", "NX", "PX", ttl) == b"OK"

    def forget(self, key: str) -> None:
        name = f"{self.state.prefix}:once:{key}"

        async def drop() -> None:
            with contextlib.suppress(StateUnavailable):  # best effort: else the record expires by itself
                await self.state.execute("DEL", name)

        with contextlib.suppress(RuntimeError):  # no loop (called outside a request): nothing to schedule
            self._tasks.add(task := asyncio.get_running_loop().create_task(drop()))
            task.add_done_callback(self._tasks.discard)


# KEYS: the subject's failure log, its block key, the "some block exists" key. ARGV: now, member, failures,
# within, block_for. Same rule as MemoryFailureLimiter: `failures` within `within` seconds block for
# `block_for`; the log is cleared when it blocks.
_FAILED = Script("""
local now, member = tonumber(ARGV[1]), ARGV[2]
local failures, within, block_for = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], now, member)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - within)
redis.call('PEXPIRE', KEYS[1], math.ceil(within * 1000) + 1000)
if redis.call('ZCARD', KEYS[1]) >= failures then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], tostring(now + block_for), 'PX', math.ceil(block_for * 1000))
  redis.call('SET', KEYS[3], '1', 'PX', math.ceil(block_for * 1000))
  return 1
end
return 0
""")


class RedisFailureLimiter:
    """Implements :class:`bastion.core.ports.FailureLimiter` on Redis: failures and blocks shared by every
    instance. A request never pays a Redis call while nothing is blocked anywhere: ``active`` is a local
    flag, refreshed from Redis at most once a second in the background (a block set by another instance is
    seen here within about a second). When Redis cannot answer, the in-process limiter counts instead."""

    def __init__(
        self,
        state: RedisState,
        failures: int,
        within: float,
        block_for: float,
        local: Any,
        *,
        poll_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.failures = failures
        self.within = within
        self.block_for = block_for
        self.local = local  # MemoryFailureLimiter: the fallback
        self.poll_every = poll_every
        self.clock = clock
        self._active_until = 0.0  # monotonic: some block exists (seen here or polled)
        self._polled_at = -1e9
        self._polling = False
        self._members = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, kind: str, subject: str) -> str:
        return f"{self.state.prefix}:lock:{kind}:{{{subject}}}"

    @property
    def active(self) -> bool:
        now = self.clock()
        if now - self._polled_at >= self.poll_every and not self._polling:
            self._polled_at = now
            with contextlib.suppress(RuntimeError):  # outside a loop: the local view only
                self._polling = True
                task = asyncio.get_running_loop().create_task(self._poll())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return now < self._active_until or self.local.active

    async def _poll(self) -> None:
        try:
            ttl = await self.state.execute("PTTL", f"{self.state.prefix}:lock:any")
            if isinstance(ttl, int) and ttl > 0:
                self._active_until = max(self._active_until, self.clock() + ttl / 1000)
        except StateUnavailable:
            pass
        finally:
            self._polling = False

    async def blocked_for(self, subject: str, now: float) -> float:
        try:
            raw = await self.state.execute("GET", self._key("block", subject))
        except StateUnavailable:
            return await self.local.blocked_for(subject, now)
        if raw is None:
            return await self.local.blocked_for(subject, now)
        try:
            return max(float(raw) - now, 0.0)
        except ValueError:
            return 0.0

    async def failed(self, subject: str, now: float) -> float:
        self._members += 1
        keys = [self._key("log", subject), self._key("block", subject), f"{self.state.prefix}:lock:any"]
        args = [
            repr(now),
            f"{id(self):x}:{self._members}",
            self.failures,
            repr(self.within),
            repr(self.block_for),
        ]
        try:
            blocked = await self.state.run(_FAILED, keys, args)
        except StateUnavailable:
            return await self.local.failed(subject, now)
        if blocked:
            self._active_until = self.clock() + self.block_for
            return self.block_for
        return 0.0

    def clear(self) -> None:
        self.local.clear()
        self._active_until = 0.0


# KEYS[1]: the tally (a sorted set, member -> last seen). ARGV: now, member, window, max members.
_DISTINCT = Script("""
local now, window, most = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n > most then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - most - 1)
  n = most
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return n
""")

# KEYS[1]: the block (its value: when it ends). ARGV: until, ttl in ms. A running block is never shortened.
_BLOCK = Script("""
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
""")


class RedisTallies:
    """Implements :class:`bastion.core.ports.Tallies` on Redis: one sorted set per tally, shared by every
    instance; a block is a key holding its end time, expiring with it."""

    def __init__(self, state: RedisState, max_members: int = 100_000) -> None:
        self.state = state
        self.max_members = max_members

    async def distinct(self, key: str, member: str, window: float, now: float) -> int:
        name = f"{self.state.prefix}:tally:{key}"
        return int(
            await self.state.run(_DISTINCT, [name], [repr(now), member, repr(window), self.max_members])
        )

    async def count(self, key: str, window: float, now: float) -> int:
        name = f"{self.state.prefix}:tally:{key}"
        return int(await self.state.execute("ZCOUNT", name, f"({now - window!r}", "+inf"))

    async def blocked_for(self, key: str, now: float) -> float:
        value = await self.state.execute("GET", f"{self.state.prefix}:block:{key}")
        if value is None:
            return 0.0
        return max(0.0, float(value) - now)

    async def block(self, key: str, seconds: float, now: float) -> None:
        until = now + seconds
        ttl = max(1, math.ceil(seconds * 1000))
        await self.state.run(_BLOCK, [f"{self.state.prefix}:block:{key}"], [repr(until), ttl])
