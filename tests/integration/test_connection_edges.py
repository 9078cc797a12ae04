"""Regression tests for data-plane edge cases found in review: timer deadlines, clients that leave
mid-response, pipelining bounds, idempotent retries, lingering close, a hostile upstream."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import EchoUpstream, GatewayThread, config_text, load_text, raw_exchange, status_of

from ._dataplane import ScriptedUpstream, wait_until


@contextmanager
def serving(upstream_port: int, tmp_path: Path, **kwargs: str) -> Iterator[GatewayThread]:
    loaded = load_text(config_text(upstream_port, tmp_path / "bastion.db", **kwargs))
    with GatewayThread(loaded) as gw:
        yield gw


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        try:
            part = sock.recv(65536)
        except TimeoutError:
            continue
        if not part:
            break
        data += part
    return data


class TestTimerDeadlines:
    def test_header_timeout_shorter_than_keepalive_is_honoured(
        self, upstream: EchoUpstream, tmp_path: Path
    ) -> None:
        """The keep-alive timer (long) is pending when a head starts; the header deadline (short) must
        move it, or a slowloris client gets the keep-alive time."""
        extra = "timeouts: {header: 0.5s, body: 0.5s, keepalive: 8s}"
        with serving(upstream.port, tmp_path, extra=extra) as gw:
            for kept_alive in (False, True):
                with socket.create_connection(("127.0.0.1", gw.port), timeout=0.2) as sock:
                    if kept_alive:
                        sock.sendall(b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n")
                        wait_until(lambda: upstream.requests, 5, "the first request")
                        time.sleep(0.05)  # let the response arrive; it is read below with the 408
                    started = time.monotonic()
                    sock.sendall(b"GET /v1/orders/2 HTTP/1.1\r\nHo")
                    data = read_until_closed(sock, started + 5)
                    elapsed = time.monotonic() - started
                assert b" 408 " in data and b"request_header_timeout" in data
                assert elapsed < 3.0, f"408 after {elapsed:.1f}s; the header timeout is 0.5s"

    def test_body_timeout_shorter_than_keepalive_is_honoured(
        self, upstream: EchoUpstream, tmp_path: Path
    ) -> None:
        extra = "timeouts: {header: 5s, body: 0.5s, keepalive: 8s}"
        with (
            serving(upstream.port, tmp_path, extra=extra) as gw,
            socket.create_connection(("127.0.0.1", gw.port), timeout=0.2) as sock,
        ):
            started = time.monotonic()
            sock.sendall(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            data = read_until_closed(sock, started + 6)
            elapsed = time.monotonic() - started
        assert b" 408 " in data and b"request_body_timeout" in data
        assert elapsed < 4.0, f"408 after {elapsed:.1f}s; the body timeout is 0.5s"


class TestClientLeavesMidResponse:
    @pytest.mark.parametrize("path", ["/download/209715200", "/stream/209715200"])
    def test_the_upstream_transfer_stops(self, upstream: EchoUpstream, tmp_path: Path, path: str) -> None:
        """A client that hangs up after 1 KB must not make the gateway keep pulling 200 MB from the
        upstream, nor leave the upstream connection open and in use."""
        with serving(upstream.port, tmp_path) as gw:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                got = sock.recv(1024)
                assert got.startswith(b"HTTP/1.1 200")
            server = gw.running.server  # type: ignore[union-attr]

            def upstream_connections_released() -> bool:
                return all(not c.in_use for pool in server.pools.values() for c in pool._open)

            wait_until(upstream_connections_released, 10, "the upstream connection to be aborted")
            # and the gateway still serves
            assert (
                status_of(
                    raw_exchange(
                        gw.port, b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                )
                == 200
            )


class TestPipeliningBound:
    def test_a_single_packet_cannot_queue_unbounded_requests(
        self, upstream: EchoUpstream, tmp_path: Path
    ) -> None:
        with serving(upstream.port, tmp_path) as gw:
            burst = (
                b"GET /slow/0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
                + b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n" * 200
            )
            data = raw_exchange(gw.port, burst, timeout=15)
        responses = data.count(b"HTTP/1.1 ")
        assert 1 < responses <= 20, responses  # the bounded queue is answered, then the refusal
        assert b"too_many_pipelined_requests" in data
        assert len(upstream.requests) < 20


class TestRetries:
    def test_a_post_is_never_replayed_on_a_stale_connection(self, tmp_path: Path) -> None:
        """RFC 9110 §9.2.2: the origin may have acted on a non-idempotent request before the connection
        dropped, so the gateway answers 502 instead of sending it again."""
        with ScriptedUpstream("drop_second") as origin, serving(origin.port, tmp_path) as gw:
            conn_data = raw_exchange(
                gw.port,
                b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                timeout=10,
            )
            statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", conn_data)]
            assert statuses == [200, 502]
            posts = [r for r in origin.requests if r[0] == "POST"]
            assert len(posts) == 1, origin.requests

    def test_a_get_is_retried_once(self, tmp_path: Path) -> None:
        with ScriptedUpstream("drop_second") as origin, serving(origin.port, tmp_path) as gw:
            data = raw_exchange(
                gw.port,
                b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /v1/orders/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                timeout=10,
            )
        assert data.count(b"HTTP/1.1 200") == 2
        assert [r[1] for r in origin.requests].count("/v1/orders/2") == 2  # dropped once, then retried


class TestLingeringClose:
    def test_an_early_413_reaches_a_client_still_sending(
        self, upstream: EchoUpstream, tmp_path: Path
    ) -> None:
        """The gateway refuses a 4 MB body from its Content-Length; the client is still sending. A plain
        close would make the kernel reset the connection and destroy the 413 before it is read."""
        with (
            serving(upstream.port, tmp_path) as gw,
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock,
        ):
            body = b"x" * (4 * 1024 * 1024)
            sock.sendall(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            sender = threading.Thread(target=lambda: _send_quietly(sock, body), daemon=True)
            sender.start()
            data = read_until_closed(sock, time.monotonic() + 10)
            sender.join(10)
        assert status_of(data) == 413 and b"body_too_large" in data


    def test_a_body_refused_mid_stream_is_taken_in_after_the_413(
        self, upstream: EchoUpstream, tmp_path: Path
    ) -> None:
        """The limit is crossed by a chunk, while the exchange runs in its task: the gateway answers
        413 and ends its side, but still takes in (and discards) what the client goes on sending."""
        with (
            serving(upstream.port, tmp_path) as gw,
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock,
        ):
            sock.sendall(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            sock.sendall(b"%x\r\n%s\r\n" % (20_000, b"x" * 20_000))  # over the route's 16 KiB
            data = read_until_closed(sock, time.monotonic() + 10)
            assert status_of(data) == 413 and b"body_too_large" in data
            assert_lingers(sock, b"%x\r\n%s\r\n" % (1000, b"y" * 1000))


def assert_lingers(sock: socket.socket, more: bytes) -> None:
    """The gateway has ended its side (the client read to end of stream), yet must not answer what
    the client still sends with a reset: a reset can destroy a response the client has not read.
    Against a closed socket the first send draws the reset and the second one fails on it."""
    half = len(more) // 2
    sock.sendall(more[:half])
    sock.sendall(more[half:])
    assert read_until_closed(sock, time.monotonic() + 10) == b""


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the gateway stops reading eventually; that is the point
        sock.sendall(data)


class _HostileUpstream:
    """A raw socket origin that answers every request with fixed bytes (one connection at a time)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while conn.recv(65536):
                    conn.sendall(self.answer)
            except OSError:
                return

    def __enter__(self) -> _HostileUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


class TestHostileUpstream:
    def test_a_second_response_in_the_same_packet_is_not_relayed(self, tmp_path: Path) -> None:
        answer = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Evil: 1\r\n\r\nevil!"
        )
        with _HostileUpstream(answer) as origin, serving(origin.port, tmp_path) as gw:
            data = raw_exchange(
                gw.port,
                b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /v1/orders/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                timeout=10,
            )
            assert b"x-evil" not in data.lower()
            assert b"evil!" not in data
            assert data.count(b"HTTP/1.1 200") == 2
            _head, _, rest = data.partition(b"\r\n\r\n")
            assert rest.startswith(b"hi")
            # the poisoned connection was not reused for the second request
            assert origin.connections == 2

    def test_chunked_trailers_never_become_response_headers(self, tmp_path: Path) -> None:
        answer = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nSet-Cookie: session=evil\r\n\r\n"
        )
        with _HostileUpstream(answer) as origin, serving(origin.port, tmp_path) as gw:
            data = raw_exchange(
                gw.port, b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=10
            )
        assert status_of(data) == 200
        assert b"set-cookie" not in data.lower()


def test_problem_json_is_valid_for_pipelined_refusal(upstream: EchoUpstream, tmp_path: Path) -> None:
    """The refusal is a normal problem+json response with its documented code."""
    with serving(upstream.port, tmp_path) as gw:
        burst = b"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n" * 100
        data = raw_exchange(gw.port, burst, timeout=15)
    last = data.rsplit(b"HTTP/1.1 ", 1)[1]
    body = last.split(b"\r\n\r\n", 1)[1]
    doc = json.loads(body)
    assert doc["status"] == 503 and doc["code"] == "too_many_pipelined_requests"


class TestUpstreamAnswersBeforeTheBody:
    def test_the_client_is_told_the_connection_ends(self, tmp_path: Path) -> None:
        """The upstream answers on the head alone (a fixed reply that never reads the body) while the
        client's body is still to come: what follows cannot be told from a next request, so the
        connection ends after the response — and the response says so, or the client would send its
        next request into a closed socket."""
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        with (
            _HostileUpstream(answer) as origin,
            serving(origin.port, tmp_path) as gw,
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock,
        ):
            sock.sendall(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            data = b""
            deadline = time.monotonic() + 10
            while b"\r\n\r\nok" not in data and time.monotonic() < deadline:
                data += sock.recv(65536)
            head = data.partition(b"\r\n\r\n")[0].lower()
            assert status_of(data) == 200 and b"connection: close" in head
            assert data.endswith(b"\r\n\r\nok")
            # The gateway has finished sending (end of stream) — but it must still take in the rest
            # of the body rather than answer it with a reset: a reset can destroy a response the
            # client has not read yet (here it is read first, so the reset shows as an error).
            assert_lingers(sock, b"0123456789")  # the rest of the body, too late

    def test_a_body_that_arrived_with_the_head_keeps_the_connection(
        self, upstream: EchoUpstream, tmp_path: Path
    ) -> None:
        with serving(upstream.port, tmp_path) as gw:
            data = raw_exchange(
                gw.port,
                b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                b"GET /v1/orders/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                timeout=10,
            )
        assert data.count(b"HTTP/1.1 200") == 2
        assert b"connection: close" not in data.lower().partition(b"\r\n\r\n")[0]
