"""Slow and abusive clients (DDoS): timeouts, connection and in-flight caps, over raw sockets.

Timeouts are configured small (0.5 s) so the effects are observable quickly; every wait below is for an
observable effect with a bounded deadline. The only deliberate pauses are the attack's own pacing (a
slowloris client trickling bytes), which is what is under test.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import GatewayThread, config_text, load_text

from ._raw import RecordingUpstream, exchange, open_conn, read_responses, wait_closed, wait_until

DEFAULT_LIMITS = "limits: {max_body: 1MiB, max_header_bytes: 16KiB, max_headers: 100, max_url: 8KiB}"
FAST = "timeouts: {header: 0.5s, body: 0.5s, keepalive: 0.5s, shutdown: 1s}"
# Upstream read timeout: a request stuck by a bug ends in its own test instead of hanging teardown.
SERVICE = "    timeouts: {read: 3s}"


def _config(origin: RecordingUpstream, tmp: Path, *, timeouts: str, limits: str = "") -> str:
    text = config_text(origin.port, tmp / "bastion.db", extra=timeouts, service_extra=SERVICE)
    assert DEFAULT_LIMITS in text
    if limits:
        text = text.replace(DEFAULT_LIMITS, DEFAULT_LIMITS[:-1] + ", " + limits + "}")
    return text


@contextlib.contextmanager
def _gateway(origin: RecordingUpstream, tmp: Path, **kw: str) -> Iterator[GatewayThread]:
    with GatewayThread(load_text(_config(origin, tmp, **kw))) as gw:
        yield gw


@pytest.fixture(scope="module")
def origin() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def fast_gw(origin: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with _gateway(origin, tmp_path_factory.mktemp("slow-fast"), timeouts=FAST) as gw:
        yield gw


@contextlib.contextmanager
def _more_files(needed: int) -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE for a many-connection test, and put it back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        if target < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield
    finally:
        if target != soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _await_response(sock: socket.socket, timeout: float) -> tuple[bytes, bool, float]:
    """Read until the peer closes or ``timeout``; returns (bytes, closed, seconds until close/timeout)."""
    start = time.monotonic()
    closed, data = wait_closed(sock, timeout)
    return data, closed, time.monotonic() - start


# -- header timeout ----------------------------------------------------------------------------------------


def test_stalled_partial_head_gets_408_and_close(fast_gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    with open_conn(fast_gw.port) as sock:
        sock.sendall(b"GET /v1/orders HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ")
        sent = time.monotonic()
        out = read_responses(sock, 1, timeout=4.0)
        elapsed = time.monotonic() - sent
        closed = out.closed or wait_closed(sock, 2.0)[0]
    resp = out.first
    assert resp.status == 408, out.raw[:300]
    assert resp.code == "request_header_timeout"
    assert resp.header("connection") == "close"
    assert resp.header("cache-control") == "no-store"
    assert closed
    assert 0.4 <= elapsed <= 2.5, f"cut after {elapsed:.2f}s; header timeout is 0.5s"
    assert len(origin.requests) == before


def test_slowloris_trickle_is_cut_at_header_deadline_from_first_byte(
    fast_gw: GatewayThread, origin: RecordingUpstream
) -> None:
    """One byte every 50 ms keeps the connection 'active' forever; the deadline is for the whole head."""
    head = b"GET /v1/orders HTTP/1.1\r\nHost: gw.test\r\n" + b"X-Drip: " + b"d" * 400 + b"\r\n\r\n"
    before = len(origin.requests)
    got = b""
    closed = False
    with open_conn(fast_gw.port) as sock:
        first = time.monotonic()
        for i in range(len(head)):
            try:
                sock.sendall(head[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], 0.05)  # the attacker's own pacing
            if readable:
                break
            if time.monotonic() - first > 5.0:
                break
        cut_after = time.monotonic() - first
        if not closed:
            closed, got = wait_closed(sock, 3.0)
    assert cut_after < 2.0, f"a trickling client kept its head open for {cut_after:.2f}s (timeout 0.5s)"
    assert closed
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    assert b"request_header_timeout" in got
    assert len(origin.requests) == before


def test_silent_connection_is_closed_after_idle_timeout(fast_gw: GatewayThread) -> None:
    with open_conn(fast_gw.port) as sock:
        data, closed, elapsed = _await_response(sock, 4.0)
    assert closed, "a connection that never sends a byte must not be held open"
    assert elapsed <= 2.5
    assert data == b"", "nothing was asked, so nothing should be answered"


def test_idle_keepalive_connection_is_closed_after_keepalive_timeout(fast_gw: GatewayThread) -> None:
    with open_conn(fast_gw.port) as sock:
        sock.sendall(b"GET /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        out = read_responses(sock, 1, timeout=4.0)
        assert out.first.status == 200
        assert not out.closed
        data, closed, elapsed = _await_response(sock, 4.0)
    assert closed
    assert data == b""
    assert 0.3 <= elapsed <= 2.5, f"closed after {elapsed:.2f}s idle; keepalive timeout is 0.5s"


def test_keepalive_connection_is_reused_before_timeout(fast_gw: GatewayThread) -> None:
    """The idle timer restarts per request: two quick requests on one connection both succeed."""
    with open_conn(fast_gw.port) as sock:
        for n in (1, 2):
            sock.sendall(b"GET /v1/orders/%d HTTP/1.1\r\nHost: gw.test\r\n\r\n" % n)
            out = read_responses(sock, 1, timeout=4.0)
            assert out.first.status == 200
            assert out.first.json()["path"] == f"/v1/orders/{n}"


# -- body timeout ------------------------------------------------------------------------------------------


def test_stalled_body_gets_408_and_upstream_never_completes(
    fast_gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.completed)
    with open_conn(fast_gw.port) as sock:
        sock.sendall(b"POST /v1/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n" + b"p" * 10)
        sent = time.monotonic()
        out = read_responses(sock, 1, timeout=2.5)
        elapsed = time.monotonic() - sent
        closed = out.closed or wait_closed(sock, 2.0)[0]
    assert out.responses, f"no answer within 2.5s to a body stalled past the 0.5s body timeout: {out.raw!r}"
    resp = out.first
    assert resp.status == 408, out.raw[:300]
    assert resp.code == "request_body_timeout"
    assert elapsed <= 2.5
    assert closed
    assert len(origin.completed) == before


def test_stalled_chunked_body_gets_408(fast_gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.completed)
    with open_conn(fast_gw.port) as sock:
        sock.sendall(
            b"POST /v1/orders HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        )
        out = read_responses(sock, 1, timeout=2.5)
        closed = out.closed or wait_closed(sock, 2.0)[0]
    assert out.responses, f"no answer within 2.5s to a chunked body stalled past 0.5s: {out.raw!r}"
    assert out.first.status == 408, out.raw[:300]
    assert out.first.code == "request_body_timeout"
    assert closed
    assert len(origin.completed) == before


# -- many connections ---------------------------------------------------------------------------------------


def test_hundreds_of_slowloris_connections_do_not_starve_a_real_client(
    origin: RecordingUpstream, tmp_path: Path
) -> None:
    crowd = 300
    timeouts = "timeouts: {header: 5s, body: 5s, keepalive: 5s, shutdown: 1s}"
    with _more_files(4 * crowd + 256), _gateway(origin, tmp_path, timeouts=timeouts) as gw:
        socks: list[socket.socket] = []
        try:
            for _ in range(crowd):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
                socks.append(s)
                s.sendall(b"GET /v1/orders HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ")
            start = time.monotonic()
            out = exchange(gw.port, b"GET /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n", close_wait=0.0)
            took = time.monotonic() - start
            assert out.first.status == 200
            assert out.first.json()["path"] == "/v1/orders/1"
            assert took < 2.0, f"a legitimate request took {took:.2f}s next to {crowd} slowloris connections"
            # The crowd is still there (the header timeout is 5 s): the gateway did not win by dropping it.
            still_open = sum(1 for s in socks if not select.select([s], [], [], 0)[0])
            assert still_open == crowd
        finally:
            for s in socks:
                s.close()


def test_connections_above_max_connections_get_503_with_retry_after(
    origin: RecordingUpstream, tmp_path: Path
) -> None:
    timeouts = "timeouts: {header: 5s, body: 5s, keepalive: 5s, shutdown: 1s}"
    with _gateway(origin, tmp_path, timeouts=timeouts, limits="max_connections: 5") as gw:
        held: list[socket.socket] = []
        try:
            for n in range(5):
                s = open_conn(gw.port)
                held.append(s)
                # A full request proves the gateway accepted (and counts) this connection.
                s.sendall(b"GET /v1/orders/%d HTTP/1.1\r\nHost: gw.test\r\n\r\n" % n)
                assert read_responses(s, 1, timeout=4.0).first.status == 200
            out = exchange(gw.port, b"GET /v1/orders/9 HTTP/1.1\r\nHost: gw.test\r\n\r\n", close_wait=2.0)
            resp = out.first
            assert resp.status == 503, out.raw[:300]
            assert resp.code == "too_many_connections"
            assert resp.header("retry-after") is not None and resp.header("retry-after").isdigit()
            assert resp.header("cache-control") == "no-store"
            assert out.closed
            # Capacity comes back as soon as a held connection goes away.
            held.pop().close()

            def served() -> bool:
                got = exchange(gw.port, b"GET /v1/orders/8 HTTP/1.1\r\nHost: gw.test\r\n\r\n", close_wait=0.0)
                return bool(got.responses) and got.first.status == 200

            assert wait_until(served, timeout=5.0, interval=0.05)
        finally:
            for s in held:
                s.close()


def test_requests_above_max_in_flight_get_503_overloaded(origin: RecordingUpstream, tmp_path: Path) -> None:
    timeouts = "timeouts: {header: 5s, body: 5s, keepalive: 5s, shutdown: 3s}"
    with _gateway(origin, tmp_path, timeouts=timeouts, limits="max_in_flight: 2") as gw:
        slow = [open_conn(gw.port, timeout=10), open_conn(gw.port, timeout=10)]
        try:
            before = len(origin.requests)
            for s in slow:
                s.sendall(b"GET /slow/1.5 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            in_flight = wait_until(lambda: len(origin.requests) - before >= 2, timeout=5.0)
            assert in_flight, "the two slow requests never reached the upstream"
            out = exchange(gw.port, b"GET /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n", close_wait=0.0)
            resp = out.first
            assert resp.status == 503, out.raw[:300]
            assert resp.code == "overloaded"
            assert resp.header("retry-after") is not None and resp.header("retry-after").isdigit()
            assert resp.header("cache-control") == "no-store"
            assert len(origin.requests) - before == 2, "the overloaded request reached the upstream"
            # The two in flight finish normally, and then there is room again.
            for s in slow:
                assert read_responses(s, 1, timeout=6.0).first.status == 200
            again = exchange(gw.port, b"GET /v1/orders/2 HTTP/1.1\r\nHost: gw.test\r\n\r\n", close_wait=0.0)
            assert again.first.status == 200
        finally:
            for s in slow:
                s.close()
