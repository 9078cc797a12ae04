"""Where the alert detectors keep their aggregates: in this process (``memory://``) or in Redis, shared by
every gateway instance (``redis://``).

Theory of operation. A detector never keeps a count of its own: every windowed count, distinct set, set of
countries seen, traffic baseline and cooldown lives behind :class:`AlertState`, so two instances that each
see half of an attack add to the same aggregates and cross the threshold together, once.

Every operation takes the engine's ``now``. Windows, cooldowns and the expiry of a claim are decided by
that clock in both backends — a Redis key's own expiry (``PEXPIRE``) is only garbage collection, set a
little longer than the data lives — so a test drives either backend with a fake clock, and instances agree
as far as their clocks do (NTP: milliseconds; alerts work in seconds and minutes).

Each Redis operation is one round trip touching one key (a small Lua script where it must be atomic), so it
pipelines with everything else on Bastion's connection and never spans Redis Cluster slots.

When Redis cannot answer, :class:`FallbackAlertState` answers from memory in this process instead and
counts the failure: alerts keep working per instance (counts restart locally; a cooldown claimed only
locally can let each instance alert once) and requests never notice. See docs/alerts.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.ports import StateUnavailable
from ..state.redis import RedisState
from ..state.redis_wire import Script

__all__ = [
    "AlertState",
    "Baseline",
    "FallbackAlertState",
    "MemoryAlertState",
    "RedisAlertState",
    "Seen",
    "build_alert_state",
    "key_part",
]

log = logging.getLogger("bastion.alerts")

COUNT_SLOTS = 30  # a counting window is kept as this many sub-buckets (window / 30 granularity)
MAX_MEMBERS = 10_000  # members kept per distinct set / seen set; the oldest (memory) or a random one goes
SAMPLE = 20  # members of a seen set returned as evidence
_GC = 60.0  # seconds a Redis key outlives its data (garbage collection only)
ALERT_TIMEOUT = 1.0  # per Redis call; alerts are background work, not the request path's 50 ms budget


@dataclass(frozen=True, slots=True)
class Seen:
    """The answer of :meth:`AlertState.remember`."""

    new: bool  # the member was not in the set before
    known: int  # how many members the set held before this call
    sample: tuple[str, ...] = ()  # up to SAMPLE of those members (filled only when ``new``)


@dataclass(frozen=True, slots=True)
class Baseline:
    """A traffic baseline: an exponentially weighted mean of requests per interval."""

    value: float
    intervals: int  # intervals of history folded in (including idle ones)
    last: int  # the interval index (``floor(t / interval)``) folded in last

    def dump(self) -> str:
        return f"{self.value!r} {self.intervals} {self.last}"

    @classmethod
    def load(cls, raw: str | bytes | None) -> Baseline | None:
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            value, intervals, last = text.split()
            return cls(float(value), int(intervals), int(last))
        except ValueError:
            return None  # not ours (or corrupted): start again rather than fail forever


class AlertState(Protocol):
    """The operations the detectors need. Keys are relative (``cs:<rule>:ip:<ip>``); a backend namespaces
    them. Every method may raise :class:`StateUnavailable`."""

    async def add_distinct(self, key: str, member: str, now: float, window: float) -> int:
        """Record ``member`` as seen at ``now``; the number of distinct members seen in the last ``window``
        seconds (a member counts once, at its latest time; at most MAX_MEMBERS are kept)."""
        ...

    async def count(self, key: str, now: float, window: float, n: int = 1) -> int:
        """Add ``n`` at ``now``; the total over the last ``window`` seconds, rounded out to the window's
        sub-bucket (``window / COUNT_SLOTS``): the oldest events may count up to one sub-bucket longer."""
        ...

    async def add(self, key: str, n: int, now: float, ttl: float) -> int:
        """A plain counter: add ``n`` (0 reads it) and keep it ``ttl`` seconds; the new value."""
        ...

    async def remember(self, key: str, member: str, now: float, ttl: float) -> Seen:
        """Add ``member`` to a long-lived set (kept ``ttl`` seconds after its last change)."""
        ...

    async def claim(self, key: str, now: float, ttl: float) -> bool:
        """True for exactly one caller until ``now + ttl`` (the cooldown and once-per-interval claims)."""
        ...

    async def baseline(self, key: str, now: float) -> Baseline | None: ...

    async def set_baseline(self, key: str, baseline: Baseline, now: float, ttl: float) -> None: ...

    async def aclose(self) -> None: ...


def key_part(text: str) -> str:
    """A key segment from a value an attacker may choose (a path template, a presented key id): long or
    unprintable values are replaced by a digest, so keys stay short and printable."""
    if len(text) <= 160 and text.isprintable():
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


_LONG_LIVED = 86400.0  # entries kept at least this long live in their own store (MemoryAlertState)


def _slots(now: float, window: float) -> tuple[int, int]:
    """The sub-bucket ``now`` falls in, and the oldest sub-bucket still inside the window."""
    width = window / COUNT_SLOTS
    return math.floor(now / width), math.floor((now - window) / width)


# -- memory ----------------------------------------------------------------------------------------------


class MemoryAlertState:
    """In-process aggregates (one instance; the embedded default). Bounded: at most ``max_keys`` keys (the
    least recently used goes first) and MAX_MEMBERS members per set."""

    def __init__(self, max_keys: int = 100_000, max_members: int = MAX_MEMBERS) -> None:
        self.max_keys = max_keys
        self.max_members = max_members
        # key -> [expires_at, value]. Two stores: what lives a day or more (the sources seen per key,
        # baselines) apart from the short-lived counters and claims, so a flood of the latter (an attacker's
        # made-up key ids) can never push a key's history out.
        self._short: OrderedDict[str, list[Any]] = OrderedDict()
        self._long: OrderedDict[str, list[Any]] = OrderedDict()
        self.evicted = 0

    def _get(self, key: str, now: float) -> Any:
        for data in (self._short, self._long):
            item = data.get(key)
            if item is None:
                continue
            if item[0] <= now:
                del data[key]
                return None
            data.move_to_end(key)
            return item[1]
        return None

    def _put(self, key: str, value: Any, expires_at: float, now: float = 0.0) -> None:
        data = self._long if expires_at - now >= _LONG_LIVED else self._short
        other = self._short if data is self._long else self._long
        other.pop(key, None)
        if key in data:
            data.move_to_end(key)
        elif len(data) >= self.max_keys:
            # Expired entries go first (they gather at the least recently used end); then the least
            # recently used live one.
            while data and next(iter(data.values()))[0] <= now:
                data.popitem(last=False)
            if len(data) >= self.max_keys:
                data.popitem(last=False)
                self.evicted += 1
        data[key] = [expires_at, value]

    async def add_distinct(self, key: str, member: str, now: float, window: float) -> int:
        # member -> latest time, oldest first (times arrive nearly in order): trimming pops from the front,
        # so a burst costs O(1) per event, not a scan of the set
        members: OrderedDict[str, float] | None = self._get(key, now)
        if members is None:
            members = OrderedDict()
        newest = next(reversed(members.values()), -math.inf)  # members are kept in time order
        if members.get(member, -math.inf) < now:
            members[member] = now
            # in time order: a late caller's member goes to the old end, where trimming starts
            members.move_to_end(member, last=now >= newest)
        cutoff = now - window
        while members and next(iter(members.values())) <= cutoff:
            members.popitem(last=False)
        while len(members) > self.max_members:
            members.popitem(last=False)
        self._put(key, members, now + window + _GC, now)
        if newest <= now:
            return len(members)
        return sum(1 for t in members.values() if t <= now)  # a lagging caller: only what it could see

    async def count(self, key: str, now: float, window: float, n: int = 1) -> int:
        slots: dict[int, int] | None = self._get(key, now)
        if slots is None:
            slots = {}
        slot, oldest = _slots(now, window)
        slots[slot] = slots.get(slot, 0) + n
        for s in [s for s in slots if s < oldest]:
            del slots[s]
        self._put(key, slots, now + window + _GC, now)
        return sum(v for s, v in slots.items() if s <= slot)  # a lagging caller counts only up to its now

    async def add(self, key: str, n: int, now: float, ttl: float) -> int:
        value: int = self._get(key, now) or 0
        if n:
            value += n
            self._put(key, value, now + ttl, now)
        return value

    async def remember(self, key: str, member: str, now: float, ttl: float) -> Seen:
        members: dict[str, None] | None = self._get(key, now)
        if members is None:
            members = {}
        known = len(members)
        new = member not in members
        sample: tuple[str, ...] = ()
        if new:
            sample = tuple(list(members)[-SAMPLE:])
            if known >= self.max_members:
                del members[next(iter(members))]
            members[member] = None
        self._put(key, members, now + ttl, now)
        return Seen(new, known, sample)

    async def claim(self, key: str, now: float, ttl: float) -> bool:
        if self._get(key, now) is not None:
            return False
        self._put(key, True, now + ttl, now)
        return True

    async def baseline(self, key: str, now: float) -> Baseline | None:
        value: Baseline | None = self._get(key, now)
        return value

    async def set_baseline(self, key: str, baseline: Baseline, now: float, ttl: float) -> None:
        self._put(key, baseline, now + ttl, now)

    async def aclose(self) -> None:
        self._short.clear()
        self._long.clear()


# -- redis -----------------------------------------------------------------------------------------------

# KEYS[1]: the distinct set (ZSET member -> latest time). ARGV: now, member, cutoff (drop times <= it),
# cap, expiry in ms.
_ADD_DISTINCT = Script("""
local now = tonumber(ARGV[1])
local old = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not old or tonumber(old) < now then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
local cap = tonumber(ARGV[4])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
-- a caller behind the others counts only up to its own now
return redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[3], ARGV[1])
""")

# KEYS[1]: a HASH of sub-bucket -> count. ARGV: this sub-bucket, n, the oldest sub-bucket kept, expiry ms.
_COUNT = Script("""
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
local oldest = tonumber(ARGV[3])
local current = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #all, 2 do
  local slot = tonumber(all[i])
  if slot < oldest then
    redis.call('HDEL', KEYS[1], all[i])
  elseif slot <= current then  -- a caller behind the others counts only up to its own now
    total = total + tonumber(all[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return total
""")

# KEYS[1]: a plain counter. ARGV: n (0 reads), expiry ms.
_ADD = Script("""
if ARGV[1] == '0' then
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v
""")

# KEYS[1]: a SET. ARGV: member, cap, sample size, expiry ms. Returns {new, known, sample...}.
_REMEMBER = Script("""
local known = redis.call('SCARD', KEYS[1])
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {0, known}
end
local reply = {1, known}
if known > 0 then
  local sample = redis.call('SRANDMEMBER', KEYS[1], tonumber(ARGV[3]))
  for i = 1, #sample do reply[#reply + 1] = sample[i] end
end
if known >= tonumber(ARGV[2]) then
  redis.call('SPOP', KEYS[1])
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return reply
""")

# KEYS[1]: the claim, holding the time it ends. ARGV: now, until, expiry ms.
_CLAIM = Script("""
local held = redis.call('GET', KEYS[1])
if held and tonumber(held) > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
""")


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisAlertState:
    """The aggregates in Redis, under ``<prefix>:alert:…``, through Bastion's pipelined connection."""

    def __init__(self, state: RedisState, prefix: str, *, owned: bool = False) -> None:
        self.state = state
        self.prefix = f"{prefix}:alert:"
        self.owned = owned  # close the connection with this object (it was opened for the alerts)

    async def add_distinct(self, key: str, member: str, now: float, window: float) -> int:
        args = [repr(now), member, repr(now - window), MAX_MEMBERS, _ms(window + _GC)]
        return _int(await self.state.run(_ADD_DISTINCT, [self.prefix + key], args))

    async def count(self, key: str, now: float, window: float, n: int = 1) -> int:
        slot, oldest = _slots(now, window)
        args = [slot, n, oldest, _ms(window + _GC)]
        return _int(await self.state.run(_COUNT, [self.prefix + key], args))

    async def add(self, key: str, n: int, now: float, ttl: float) -> int:
        return _int(await self.state.run(_ADD, [self.prefix + key], [int(n), _ms(ttl)]))

    async def remember(self, key: str, member: str, now: float, ttl: float) -> Seen:
        reply = await self.state.run(_REMEMBER, [self.prefix + key], [member, MAX_MEMBERS, SAMPLE, _ms(ttl)])
        try:
            new, known, *sample = reply
            return Seen(bool(new), int(known), tuple(s.decode() for s in sample))
        except (TypeError, ValueError, AttributeError, UnicodeDecodeError):
            raise StateUnavailable("redis: unexpected reply") from None

    async def claim(self, key: str, now: float, ttl: float) -> bool:
        args = [repr(now), repr(now + ttl), _ms(ttl + _GC)]
        return bool(_int(await self.state.run(_CLAIM, [self.prefix + key], args)))

    async def baseline(self, key: str, now: float) -> Baseline | None:
        return Baseline.load(await self.state.execute("GET", self.prefix + key))

    async def set_baseline(self, key: str, baseline: Baseline, now: float, ttl: float) -> None:
        await self.state.execute("SET", self.prefix + key, baseline.dump(), "PX", _ms(ttl))

    async def aclose(self) -> None:
        if self.owned:
            await self.state.aclose()


def _int(reply: Any) -> int:
    if isinstance(reply, int):
        return reply
    raise StateUnavailable("redis: unexpected reply")


# -- fallback --------------------------------------------------------------------------------------------


class FallbackAlertState:
    """Redis first; when it cannot answer (down, slow, circuit open), this process's memory. Failures are
    counted and logged at most once a minute; the engine never sees an exception from here."""

    _OPS = ("add_distinct", "count", "add", "remember", "claim", "baseline", "set_baseline")

    def __init__(
        self, primary: AlertState, local: MemoryAlertState | None = None, *, log_every: float = 60.0
    ) -> None:
        self.primary = primary
        self.local = local or MemoryAlertState()
        self.failures = 0
        self.log_every = log_every
        self._logged_at = -math.inf
        self._logged_failures = 0

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._logged_at >= self.log_every:
            log.warning(
                "alert state unavailable (%s); counting in this process meanwhile (%d failures since the "
                "last message)",
                exc,
                self.failures - self._logged_failures,
            )
            self._logged_at = now
            self._logged_failures = self.failures

    async def _call(self, op: str, *args: Any) -> Any:
        try:
            return await getattr(self.primary, op)(*args)
        except StateUnavailable as exc:
            self._failed(exc)
        return await getattr(self.local, op)(*args)

    async def add_distinct(self, key: str, member: str, now: float, window: float) -> int:
        result: int = await self._call("add_distinct", key, member, now, window)
        return result

    async def count(self, key: str, now: float, window: float, n: int = 1) -> int:
        result: int = await self._call("count", key, now, window, n)
        return result

    async def add(self, key: str, n: int, now: float, ttl: float) -> int:
        result: int = await self._call("add", key, n, now, ttl)
        return result

    async def remember(self, key: str, member: str, now: float, ttl: float) -> Seen:
        result: Seen = await self._call("remember", key, member, now, ttl)
        return result

    async def claim(self, key: str, now: float, ttl: float) -> bool:
        result: bool = await self._call("claim", key, now, ttl)
        return result

    async def baseline(self, key: str, now: float) -> Baseline | None:
        result: Baseline | None = await self._call("baseline", key, now)
        return result

    async def set_baseline(self, key: str, baseline: Baseline, now: float, ttl: float) -> None:
        await self._call("set_baseline", key, baseline, now, ttl)

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.local.aclose()


def build_alert_state(state_url: str, redis_state: RedisState | None, prefix: str) -> AlertState:
    """The alerts' state for ``storage.state``: ``memory://`` → this process only; ``redis://`` → shared,
    with this process's memory as the fallback while Redis cannot answer.

    The alerts get **their own connection** to the gateway's Redis (``redis_state``'s URL, or
    ``state_url``), with its own circuit breaker and a timeout of ALERT_TIMEOUT: a burst of alert work
    must never queue in front of a request's rate-limit call on the request path's pipelined connection,
    and an alert call that times out must not close that connection or open its breaker."""
    if state_url.startswith(("redis://", "rediss://")):
        url = redis_state.url if redis_state is not None else state_url
        own = RedisState(url, timeout=ALERT_TIMEOUT, prefix=prefix)
        return FallbackAlertState(RedisAlertState(own, prefix, owned=True))
    if state_url.startswith("memory://"):
        return MemoryAlertState()
    raise ValueError("alerts need storage.state memory:// or redis://")
