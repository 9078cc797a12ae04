"""One suite, every Counters backend: the in-memory one and Redis (the real server on 127.0.0.1:6379) give
the same answers for the same sequence of hits, driven by an injected clock. The reference is
:func:`bastion.core.ratelimit.decide`; these tests pin its behaviour: exact sliding windows (never more than N
in any window), all limits must pass, refused hits consume nothing, calendar quotas."""

from __future__ import annotations

import asyncio
import calendar
import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.ports import Counters
from bastion.core.ratelimit import Decision, Limit, parse_limit, parse_quota
from bastion.state.memory import MemoryCounters
from bastion.state.redis import RedisCounters, RedisState

REDIS_URL = "redis://127.0.0.1:6379/0"


def _noon_utc_days_ahead(days: int) -> float:
    day = datetime.now(UTC).date() + timedelta(days=days)
    return float(calendar.timegm((day.year, day.month, day.day, 12, 0, 0)))


# Every time below is T0 plus a fixed offset, so the arithmetic is the same on every run; T0 itself lies
# ahead of the wall clock because Redis expires a quota's key at the end of its window by its own clock
# (EXPIREAT): with a fixed date, a window that has ended in real time is dropped as soon as it is written.
T0 = _noon_utc_days_ahead(2)
MEMBERS = itertools.count()


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


class Backend:
    def __init__(self, make: Callable[[], Counters], close: Callable[[], None] = lambda: None) -> None:
        self.loop = asyncio.new_event_loop()
        self.make = make
        self.counters = make()
        self._close = close

    def hit(self, keys: list[str], limits: list[Limit], now: float) -> Decision:
        return self.loop.run_until_complete(self.counters.hit(keys, limits, now, f"m{next(MEMBERS)}"))

    def close(self) -> None:
        self._close()
        self.loop.close()


def memory_backend() -> Backend:
    return Backend(MemoryCounters)


def redis_backend() -> Backend:
    prefix = "bastion-test-" + secrets.token_hex(6)
    state = RedisState(REDIS_URL, timeout=1.0, prefix=prefix)
    backend = Backend(lambda: RedisCounters(state, server_time=False))

    def close() -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()
        backend.loop.run_until_complete(state.aclose())

    backend._close = close
    return backend


BACKENDS = {"memory": memory_backend, "redis": redis_backend}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "redis" and not _redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (bash .ci/run starts it)")
    b = BACKENDS[request.param]()
    yield b
    b.close()


TEN_PER_SECOND = parse_limit("10/second")
THREE_PER_10S = parse_limit("3/10s")


def test_exact_sliding_window_has_no_boundary_burst(backend: Backend) -> None:
    limits = [THREE_PER_10S]
    # Three at t=9.5 (the end of a "fixed" window), then nothing passes until 10 s after each.
    assert [backend.hit(["k"], limits, T0 + 9.5).allowed for _ in range(3)] == [True] * 3
    refused = backend.hit(["k"], limits, T0 + 10.5)
    assert not refused.allowed and refused.remaining == 0 and refused.exceeded == "3/10s"
    assert refused.reset == pytest.approx(9.0)
    assert not backend.hit(["k"], limits, T0 + 19.4).allowed
    assert backend.hit(["k"], limits, T0 + 19.5).allowed  # the first of the three has left the window


def test_remaining_and_reset(backend: Backend) -> None:
    d = backend.hit(["k"], [TEN_PER_SECOND], T0)
    assert (d.allowed, d.limit, d.remaining) == (True, 10, 9) and d.reset == pytest.approx(1.0)
    d = backend.hit(["k"], [TEN_PER_SECOND], T0 + 0.25)
    assert d.remaining == 8 and d.reset == pytest.approx(0.75)  # the first hit frees its slot at T0+1


def test_every_limit_must_pass_and_refusals_consume_nothing(backend: Backend) -> None:
    limits = [parse_limit("2/second"), parse_limit("3/minute")]
    keys = ["a:s", "a:m"]
    assert backend.hit(keys, limits, T0).allowed
    assert backend.hit(keys, limits, T0 + 0.1).allowed
    third = backend.hit(keys, limits, T0 + 0.2)
    assert not third.allowed and third.exceeded == "2/second"
    # The refused hit was not recorded under the minute limit: one more passes after the second frees.
    d = backend.hit(keys, limits, T0 + 1.05)
    assert d.allowed and d.limit == 3 and d.remaining == 0  # the minute limit is now the binding one
    refused = backend.hit(keys, limits, T0 + 2.5)
    assert not refused.allowed and refused.exceeded == "3/minute" and refused.reset == pytest.approx(57.5)


def test_keys_are_independent(backend: Backend) -> None:
    limits = [parse_limit("1/minute")]
    assert backend.hit(["one"], limits, T0).allowed
    assert not backend.hit(["one"], limits, T0 + 1).allowed
    assert backend.hit(["two"], limits, T0 + 1).allowed


def test_calendar_quota(backend: Backend) -> None:
    quota = parse_quota("2/month")
    year, month = time.gmtime(T0)[:2]  # the end of T0's month, ahead of the wall clock (see T0)
    end_of_month = float(calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0)))
    assert backend.hit(["q"], [quota], end_of_month - 100).allowed
    d = backend.hit(["q"], [quota], end_of_month - 50)
    assert d.allowed and d.remaining == 0 and d.reset == pytest.approx(50.0)
    refused = backend.hit(["q"], [quota], end_of_month - 10)
    assert not refused.allowed and refused.exceeded == "2/month" and refused.reset == pytest.approx(10.0)
    assert backend.hit(["q"], [quota], end_of_month + 1).allowed  # a new month


def test_quota_with_rates(backend: Backend) -> None:
    limits = [parse_limit("5/second"), parse_quota("3/day")]
    keys = ["c:r", "c:q"]
    assert all(backend.hit(keys, limits, T0 + i).allowed for i in range(3))
    refused = backend.hit(keys, limits, T0 + 10)
    assert not refused.allowed and refused.exceeded == "3/day"


OPS = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.floats(min_value=0.0, max_value=3.0)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_memory_and_redis_agree_on_any_sequence(ops: list[tuple[str, float]]) -> None:
    if not _redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379")
    limits = [parse_limit("3/second"), parse_limit("5/10s")]
    memory, redis_b = memory_backend(), redis_backend()
    try:
        now = T0
        for subject, gap in ops:
            now += round(gap, 3)
            keys = [f"{subject}:1", f"{subject}:2"]
            a = memory.hit(keys, limits, now)
            b = redis_b.hit(keys, limits, now)
            assert (a.allowed, a.limit, a.remaining, a.exceeded) == (
                b.allowed,
                b.limit,
                b.remaining,
                b.exceeded,
            )
            assert a.reset == pytest.approx(b.reset, abs=1e-6)
    finally:
        memory.close()
        redis_b.close()


def test_never_more_than_n_in_any_window(backend: Backend) -> None:
    limit = parse_limit("4/second")
    admitted: list[float] = []
    now = T0
    for i in range(200):
        now += 0.05 + (i % 7) * 0.013
        if backend.hit(["w"], [limit], now).allowed:
            admitted.append(now)
    for i, t in enumerate(admitted):
        assert sum(1 for u in admitted[i:] if u < t + 1.0) <= 4
    assert len(admitted) >= 4 * int((now - T0) // 1.0) - 4  # and it does admit at the rate
