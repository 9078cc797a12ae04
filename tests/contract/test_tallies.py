"""One suite, every Tallies backend: the in-memory one and Redis (the real server on 127.0.0.1:6379, under a
key prefix of its own) give the same answers for the same calls, driven by an injected ``now``.

What it pins (:class:`bastion.core.ports.Tallies`): distinct members within a sliding window (a member seen
again counts once and is refreshed; one seen exactly ``window`` seconds ago is out), ``count`` never
records, a tally keeps at most ``max_members`` (the least recently seen dropped first), blocks count down
with ``now``, expire, and are extended but never shortened. Memory refuses (fails closed) rather than drop
an unexpired block; Redis that cannot answer raises :class:`StateUnavailable`.
"""

from __future__ import annotations

import asyncio
import calendar
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.ports import StateUnavailable, Tallies
from bastion.state.memory import MemoryTallies
from bastion.state.redis import RedisState, RedisTallies

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = float(calendar.timegm((2026, 11, 28, 12, 0, 0)))
T = TypeVar("T")


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


class Backend:
    """A Tallies on a loop of its own, called synchronously."""

    def __init__(self, make: Callable[[], Tallies], close: Callable[[], None] = lambda: None) -> None:
        self.loop = asyncio.new_event_loop()
        self.tallies = make()
        self._close = close

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def distinct(self, key: str, member: str, window: float, now: float) -> int:
        return self.run(self.tallies.distinct(key, member, window, now))

    def count(self, key: str, window: float, now: float) -> int:
        return self.run(self.tallies.count(key, window, now))

    def blocked_for(self, key: str, now: float) -> float:
        return self.run(self.tallies.blocked_for(key, now))

    def block(self, key: str, seconds: float, now: float) -> None:
        self.run(self.tallies.block(key, seconds, now))

    def close(self) -> None:
        self._close()
        self.loop.close()


def memory_backend(max_members: int = 100_000) -> Backend:
    return Backend(lambda: MemoryTallies(max_members=max_members))


def redis_backend(max_members: int = 100_000) -> Backend:
    prefix = "bastion-test-" + secrets.token_hex(6)
    state = RedisState(REDIS_URL, timeout=1.0, prefix=prefix)
    backend = Backend(lambda: RedisTallies(state, max_members=max_members))

    def close() -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()
        backend.run(state.aclose())

    backend._close = close
    return backend


BACKENDS: dict[str, Callable[..., Backend]] = {"memory": memory_backend, "redis": redis_backend}


def _require(name: str) -> None:
    if name == "redis" and not _redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (bash .ci/run starts it)")


@pytest.fixture(params=list(BACKENDS))
def make_backend(request: pytest.FixtureRequest) -> Iterator[Callable[..., Backend]]:
    """Builds backends of the parametrized kind (with any max_members); closes them all afterwards."""
    _require(request.param)
    made: list[Backend] = []

    def make(**kwargs: Any) -> Backend:
        b = BACKENDS[request.param](**kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def backend(make_backend: Callable[..., Backend]) -> Backend:
    return make_backend()


# -- distinct counts ------------------------------------------------------------------------------------


def test_distinct_counts_each_member_once_and_includes_the_new_one(backend: Backend) -> None:
    assert backend.distinct("k", "a", 10, T0) == 1  # the new member counts
    assert backend.distinct("k", "b", 10, T0 + 1) == 2
    assert backend.distinct("k", "a", 10, T0 + 2) == 2  # seen again: still one
    assert backend.distinct("k", "a", 10, T0 + 2) == 2  # even at the very same instant
    assert backend.distinct("k", "c", 10, T0 + 3) == 3


def test_members_leave_the_window(backend: Backend) -> None:
    assert backend.distinct("k", "a", 10, T0) == 1
    assert backend.distinct("k", "b", 10, T0 + 4) == 2
    # At T0+10, "a" (seen at T0) is exactly one window old: out (the window is (now - window, now]).
    assert backend.distinct("k", "c", 10, T0 + 10) == 2
    assert backend.distinct("k", "d", 10, T0 + 14.5) == 2  # "b" has left too: c and d
    assert backend.distinct("k", "e", 10, T0 + 100) == 1  # everything before has expired


def test_seeing_a_member_again_refreshes_it(backend: Backend) -> None:
    backend.distinct("k", "a", 10, T0)
    backend.distinct("k", "a", 10, T0 + 8)  # last seen at T0+8 now
    assert backend.distinct("k", "b", 10, T0 + 15) == 2  # "a" is still inside (T0+5, T0+15]
    assert backend.distinct("k", "c", 10, T0 + 18) == 2  # and leaves at T0+18: b and c


def test_keys_are_independent(backend: Backend) -> None:
    assert backend.distinct("one", "a", 10, T0) == 1
    assert backend.distinct("one", "b", 10, T0) == 2
    assert backend.distinct("two", "a", 10, T0) == 1
    assert backend.count("two", 10, T0) == 1
    assert backend.count("three", 10, T0) == 0


# -- count ----------------------------------------------------------------------------------------------


def test_count_records_nothing(backend: Backend) -> None:
    assert backend.count("k", 10, T0) == 0
    assert backend.count("k", 10, T0) == 0  # asking did not create a member
    backend.distinct("k", "a", 10, T0)
    backend.distinct("k", "b", 10, T0 + 2)
    assert backend.count("k", 10, T0 + 3) == 2
    assert backend.count("k", 10, T0 + 3) == 2
    assert backend.distinct("k", "c", 10, T0 + 4) == 3  # the counts added no member


def test_count_follows_the_window(backend: Backend) -> None:
    backend.distinct("k", "a", 60, T0)
    backend.distinct("k", "b", 60, T0 + 5)
    backend.distinct("k", "c", 60, T0 + 9)
    assert backend.count("k", 60, T0 + 10) == 3
    assert backend.count("k", 5.5, T0 + 10) == 2  # b and c
    assert backend.count("k", 5, T0 + 10) == 1  # (T0+5, T0+10]: "b" at exactly T0+5 is out
    assert backend.count("k", 0.5, T0 + 10) == 0
    assert backend.count("k", 10, T0 + 10) == 2  # "a" at exactly T0 is out
    assert backend.count("k", 60, T0 + 64) == 2  # later: "a" has left
    assert backend.count("k", 60, T0 + 66) == 1  # then "b": only "c" is left


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_clock_step_back_does_not_count_expired_members(kind: str) -> None:
    _require(kind)
    b = BACKENDS[kind]()
    try:
        assert b.distinct("k", "a", 10, T0 + 10) == 1
        assert b.distinct("k", "b", 10, T0 + 5) == 2  # the wall clock stepped back 5 s
        # At T0+16 the window is (T0+6, T0+16]: "b" (T0+5) is out, "a" (T0+10) and "c" are in.
        assert b.count("k", 10, T0 + 16) == 1
        assert b.distinct("k", "c", 10, T0 + 16) == 2
    finally:
        b.close()


# -- bounded members ------------------------------------------------------------------------------------


def test_at_most_max_members_the_oldest_dropped(make_backend: Callable[..., Backend]) -> None:
    b = make_backend(max_members=3)
    assert [b.distinct("k", m, 100, T0 + i) for i, m in enumerate("abcd")] == [1, 2, 3, 3]
    # Kept: b, c, d (seen at T0+1..3). Had the newest been dropped instead, (T0+0.5, T0+3] would hold 2.
    assert b.count("k", 2.5, T0 + 3) == 3
    assert b.count("k", 100, T0 + 3) == 3
    assert b.distinct("k", "a", 100, T0 + 4) == 3  # "a" is new again (it was dropped): b goes


def test_the_least_recently_seen_is_dropped_not_the_first_seen(make_backend: Callable[..., Backend]) -> None:
    b = make_backend(max_members=3)
    b.distinct("k", "a", 100, T0)
    b.distinct("k", "b", 100, T0 + 1)
    b.distinct("k", "c", 100, T0 + 2)
    b.distinct("k", "a", 100, T0 + 3)  # "a" refreshed: "b" is now the least recently seen
    assert b.distinct("k", "d", 100, T0 + 4) == 3
    assert b.count("k", 1.5, T0 + 4) == 2  # a (T0+3) and d (T0+4)
    assert b.count("k", 2.5, T0 + 4) == 3  # c (T0+2) too: so "b" was the one dropped


# -- blocks ---------------------------------------------------------------------------------------------


def test_a_block_counts_down_and_expires(backend: Backend) -> None:
    assert backend.blocked_for("k", T0) == 0
    backend.block("k", 60, T0)
    assert backend.blocked_for("k", T0) == pytest.approx(60)
    assert backend.blocked_for("k", T0 + 10) == pytest.approx(50)
    assert backend.blocked_for("k", T0 + 59.5) == pytest.approx(0.5)
    assert backend.blocked_for("k", T0 + 60) == 0
    assert backend.blocked_for("k", T0 + 600) == 0
    assert backend.blocked_for("other", T0 + 10) == 0  # keys are independent


def test_a_shorter_block_never_shortens_a_longer_one(backend: Backend) -> None:
    backend.block("k", 60, T0)
    backend.block("k", 10, T0 + 20)  # would end at T0+30: the running block ends at T0+60
    assert backend.blocked_for("k", T0 + 20) == pytest.approx(40)
    backend.block("k", 0.5, T0 + 59)
    assert backend.blocked_for("k", T0 + 59.5) == pytest.approx(0.5)
    assert backend.blocked_for("k", T0 + 60) == 0


def test_a_longer_block_extends_a_running_one(backend: Backend) -> None:
    backend.block("k", 60, T0)
    backend.block("k", 100, T0 + 20)
    assert backend.blocked_for("k", T0 + 20) == pytest.approx(100)
    assert backend.blocked_for("k", T0 + 119) == pytest.approx(1)
    assert backend.blocked_for("k", T0 + 120) == 0


def test_a_key_can_be_blocked_again_after_its_block_ended(backend: Backend) -> None:
    backend.block("k", 10, T0)
    assert backend.blocked_for("k", T0 + 11) == 0
    backend.block("k", 5, T0 + 20)
    assert backend.blocked_for("k", T0 + 21) == pytest.approx(4)


# -- memory: never drops a block to make room -------------------------------------------------------------


def test_memory_refuses_a_new_block_when_full_of_unexpired_ones() -> None:
    b = Backend(lambda: MemoryTallies(max_blocks=2))
    try:
        b.block("a", 60, T0)
        b.block("b", 60, T0)
        with pytest.raises(StateUnavailable):
            b.block("c", 60, T0 + 1)
        # Nothing was dropped to make room, and the refused one was not recorded.
        assert b.blocked_for("a", T0 + 1) == pytest.approx(59)
        assert b.blocked_for("b", T0 + 1) == pytest.approx(59)
        assert b.blocked_for("c", T0 + 1) == 0
        # A running block can still be extended: it takes no new room.
        b.block("a", 120, T0 + 1)
        assert b.blocked_for("a", T0 + 1) == pytest.approx(120)
        # Once a block has expired its room is reused.
        b.block("c", 30, T0 + 61)  # "b" ended at T0+60
        assert b.blocked_for("c", T0 + 61) == pytest.approx(30)
        assert b.blocked_for("a", T0 + 61) == pytest.approx(60)
        with pytest.raises(StateUnavailable):
            b.block("d", 30, T0 + 62)  # a and c are running again: full
    finally:
        b.close()


def test_memory_bounds_the_number_of_tallies() -> None:
    b = Backend(lambda: MemoryTallies(max_keys=2))
    try:
        b.distinct("one", "a", 100, T0)
        b.distinct("two", "a", 100, T0 + 1)
        b.distinct("one", "b", 100, T0 + 2)  # "one" used most recently: "two" is the least
        b.distinct("three", "a", 100, T0 + 3)
        assert b.count("one", 100, T0 + 3) == 2
        assert b.count("two", 100, T0 + 3) == 0
        assert b.count("three", 100, T0 + 3) == 1
    finally:
        b.close()


# -- Redis that cannot answer -----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the socket is: nothing listens there


def test_redis_unreachable_raises_state_unavailable() -> None:
    state = RedisState(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.5, prefix="bastion-test-nowhere")
    b = Backend(lambda: RedisTallies(state))
    try:
        calls: list[Callable[[], object]] = [
            lambda: b.distinct("k", "a", 10, T0),
            lambda: b.count("k", 10, T0),
            lambda: b.blocked_for("k", T0),
            lambda: b.block("k", 10, T0),
        ]
        for call in calls * 2:  # and again once the breaker has opened
            with pytest.raises(StateUnavailable):
                call()
        assert state.failures == 8
    finally:
        b.run(state.aclose())
        b.close()


# -- the two backends agree ---------------------------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["distinct", "count"]),
        st.sampled_from(["x", "y"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.floats(min_value=0.0, max_value=4.0),
    ),
    min_size=1,
    max_size=50,
)


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_memory_and_redis_agree_on_any_sequence(ops: list[tuple[str, str, str, float]]) -> None:
    _require("redis")
    memory, redis_b = memory_backend(max_members=3), redis_backend(max_members=3)
    try:
        now = T0
        for op, key, member, gap in ops:
            now += round(gap, 3)
            if op == "distinct":
                got = (memory.distinct(key, member, 6, now), redis_b.distinct(key, member, 6, now))
            else:
                got = (memory.count(key, 6, now), redis_b.count(key, 6, now))
            assert got[0] == got[1], (op, key, member, now - T0)
    finally:
        memory.close()
        redis_b.close()
