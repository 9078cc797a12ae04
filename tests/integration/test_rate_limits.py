"""Rate limits through a real gateway, on the in-memory state and on a real Redis: exact limits, the
RateLimit-* headers, 429 with Retry-After, refusals recorded without flooding the event log, quotas per
consumer, and what ``on_state_failure`` does when Redis is unreachable or stops mid-load and comes back
(a private redis-server on its own port, so the shared one is never disturbed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.identity.manage import IdentityError

from ._identity import Stack, identity_stack, wait_for

ROUTES = """
      - path: /v1/limited/{id}
        methods: [GET]
        auth: none
        rate_limit: [3/minute]
      - path: /v1/keyed/{id}
        methods: [GET]
        auth: [api_key]
        rate_limit: [2/minute, 100/hour]
      - path: /v1/open/{id}
        methods: [GET]
        auth: none
        rate_limit: [1/minute]
        rate_limit_by: header:X-Tenant
"""
KEYED_ROUTE = """
      - path: /v1/keyed/{id}
        methods: [GET]
        auth: [api_key]
"""
EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own, to stop and restart under load."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (bash .ci/run installs the services)"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, what="redis-server to accept connections")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(params=["memory", "redis"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    state = "memory://" if request.param == "memory" else "redis://127.0.0.1:6379/0"
    with identity_stack(tmp_path, ROUTES, EXTRA, state=state) as s:
        yield s


def statuses(stack: Stack, path: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    return [stack.get(path, headers).status for _ in range(n)]


def test_exact_limit_headers_and_429(stack: Stack) -> None:
    path = f"/v1/limited/{time.monotonic_ns()}"  # the limit is per route and address: any id shares it
    replies = [stack.get(path) for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in replies[:3]] == ["2", "1", "0"]
    assert all(r.headers["ratelimit-limit"] == "3" for r in replies)
    assert 0 < int(replies[0].headers["ratelimit-reset"]) <= 60
    refused = replies[3]
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0"


def test_refusals_do_not_flood_the_event_log(stack: Stack) -> None:
    path = "/v1/limited/x"
    codes = statuses(stack, path, 3 + 20)
    assert codes.count(429) == 20
    first = stack.wait_event("rate_limit.exceeded")
    assert first["data"]["limit"] == "3/minute" and first["data"]["by"] == "ip"
    # One event for the first refusal; the other 19 are counted into the minute's summary (written when
    # the minute ends or the gateway stops), not recorded one by one.
    assert len(stack.events("rate_limit.exceeded")) == 1


def test_per_consumer_limits_and_two_limits(stack: Stack) -> None:
    admin = stack.admin()
    admin.create_consumer("shop", [], actor="test")
    admin.create_consumer("other", [], actor="test")
    _, key = admin.create_key("shop", actor="test")
    _, other = admin.create_key("other", actor="test")
    assert statuses(stack, "/v1/keyed/1", 3, {"X-API-Key": key}) == [200, 200, 429]
    # Another consumer has its own budget; the refused request consumed nothing of the hour's limit.
    assert statuses(stack, "/v1/keyed/1", 2, {"X-API-Key": other}) == [200, 200]
    reply = stack.get("/v1/keyed/2", {"X-API-Key": key})
    assert reply.status == 429 and reply.json()["code"] == "rate_limited"


def test_limit_by_header(stack: Stack) -> None:
    assert statuses(stack, "/v1/open/1", 2, {"X-Tenant": "a"}) == [200, 429]
    assert statuses(stack, "/v1/open/1", 1, {"X-Tenant": "b"}) == [200]


def test_quota_per_consumer(tmp_path: Path) -> None:
    with identity_stack(tmp_path, KEYED_ROUTE, EXTRA + "consumers_defaults: {quota: 2/day}\n") as s:
        admin = s.admin()
        admin.create_consumer("shop", [], actor="test")
        _, key = admin.create_key("shop", actor="test")
        replies = [s.get("/v1/keyed/1", {"X-API-Key": key}) for _ in range(3)]
        assert [r.status for r in replies] == [200, 200, 429]
        assert replies[2].json()["code"] == "rate_limited"
        event = s.wait_event("rate_limit.exceeded")
        assert event["data"]["limit"] == "2/day" and event["data"]["consumer"] == "shop"


# -- state failures ---------------------------------------------------------------------------------------

FAILING_ROUTES = """
      - path: /v1/local/{id}
        methods: [GET]
        auth: none
        rate_limit: [2/minute]
      - path: /v1/closed/{id}
        methods: [GET]
        auth: none
        rate_limit: [2/minute]
        on_state_failure: closed
      - path: /v1/open/{id}
        methods: [GET]
        auth: none
        rate_limit: [2/minute]
        on_state_failure: open
"""


def test_unreachable_redis_follows_on_state_failure(tmp_path: Path) -> None:
    state = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with identity_stack(tmp_path, FAILING_ROUTES, EXTRA, state=state) as s:
        started = time.monotonic()
        assert statuses(s, "/v1/local/1", 3) == [200, 200, 429]  # counted in this process instead
        closed = s.get("/v1/closed/1")
        assert closed.status == 503 and closed.json()["code"] == "state_unavailable"
        assert statuses(s, "/v1/open/1", 4) == [200] * 4
        assert time.monotonic() - started < 5  # no hangs: every call has a short timeout or the breaker

        def three() -> list[dict[str, Any]]:
            found = s.events("rate_limit.state_unavailable")
            return found if len(found) >= 3 else []

        modes = {e["data"]["on_state_failure"] for e in wait_for(three, what="the state-failure events")}
        assert modes == {"local", "closed", "open"}


def test_redis_stopping_mid_load_and_coming_back(tmp_path: Path) -> None:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        state = f"redis://127.0.0.1:{redis.port}/0"
        with identity_stack(tmp_path / "gw", FAILING_ROUTES, EXTRA, state=state) as s:
            assert statuses(s, "/v1/closed/1", 3) == [200, 200, 429]
            redis.stop()
            down = [s.get("/v1/closed/1") for _ in range(10)]
            assert all(r.status == 503 for r in down), [r.status for r in down]
            assert all(r.status != 500 for r in down)
            redis.start()  # a fresh, empty server: limiting resumes without a restart of the gateway

            def limiting_again() -> Any:
                replies = [s.get("/v1/closed/2").status for _ in range(3)]
                return replies == [200, 200, 429] or (replies.count(429) and 503 not in replies)

            wait_for(limiting_again, timeout=15, what="limiting to resume once Redis is back")
    finally:
        redis.stop()


def test_a_consumers_own_quota_replaces_the_default(tmp_path: Path) -> None:
    with identity_stack(tmp_path, KEYED_ROUTE, EXTRA + "consumers_defaults: {quota: 2/day}\n") as s:
        admin = s.admin()
        admin.create_consumer("shop", [], actor="test")
        vip = admin.create_consumer("vip", [], quota="4/day", actor="test")
        assert vip["quota"] == "4/day"
        _, shop_key = admin.create_key("shop", actor="test")
        _, vip_key = admin.create_key("vip", actor="test")
        assert statuses(s, "/v1/keyed/1", 3, {"X-API-Key": shop_key}) == [200, 200, 429]
        assert statuses(s, "/v1/keyed/1", 5, {"X-API-Key": vip_key}) == [200] * 4 + [429]
        # Raised at run time (takes effect with the snapshot reload): shop gets one more today.
        assert admin.set_consumer_quota("shop", "3/day", actor="test")["quota"] == "3/day"
        assert statuses(s, "/v1/keyed/1", 2, {"X-API-Key": shop_key}) == [200, 429]
        with pytest.raises(IdentityError) as info:
            admin.set_consumer_quota("shop", "lots", actor="test")
        assert info.value.code == "invalid_quota"
        assert admin.set_consumer_quota("shop", None, actor="test")["quota"] is None
