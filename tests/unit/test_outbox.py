"""The Outbox: requests for upstream connections are written together at the end of an event-loop turn.

What must hold while a request waits there: it is written whole, once, in the order it was queued, and
only if its connection is still open and still carrying it. A connection that closes meanwhile says the
request was never sent (so any method may be retried); bytes that arrive before the request was written
answer nothing and are never relayed; a connection restarted for another request drops the old one.

The upstream side here is a recording transport: what is under test is our protocol object, not a socket.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bastion.proxy.upstream import Outbox, UpstreamConnection, UpstreamError, UpstreamNotSent


class _Transport:
    """Records writes; ``abort`` reports the loss the way a real transport does (on the next turn)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: UpstreamConnection) -> None:
        self.loop = loop
        self.conn = conn
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.aborted, "written after abort"
        self.written.append(bytes(data))

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            self.loop.call_soon(self.conn.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Listener:
    def __init__(self) -> None:
        self.ready: list[UpstreamConnection] = []
        self.failed: list[BaseException] = []

    def fast_upstream_ready(self, conn: UpstreamConnection) -> None:
        self.ready.append(conn)

    def fast_upstream_failed(self, conn: UpstreamConnection, exc: BaseException) -> None:
        self.failed.append(exc)


def _connection(loop: asyncio.AbstractEventLoop) -> tuple[UpstreamConnection, _Transport, _Listener]:
    conn = UpstreamConnection(loop)
    transport = _Transport(loop, conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.start(no_body=False)
    listener = _Listener()
    conn.listen(listener, 30.0)
    return conn, transport, listener


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def _on_a_loop(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., None]:
    """Run ``test(loop, outbox, **params)`` on a fresh event loop with its own Outbox."""

    def run(**params: Any) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            await test(loop, Outbox(loop), **params)

        asyncio.run(main())

    signature = inspect.signature(test)  # pytest sees the test's own parameters, less the two given here
    run.__signature__ = signature.replace(parameters=list(signature.parameters.values())[2:])  # type: ignore[attr-defined]
    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


@_on_a_loop
async def test_requests_are_written_together_at_the_end_of_the_turn_in_order(
    loop: asyncio.AbstractEventLoop, outbox: Outbox
) -> None:
    first, t1, _ = _connection(loop)
    second, t2, _ = _connection(loop)
    outbox.send(first, b"GET /1 HTTP/1.1\r\n\r\n")
    outbox.send(second, b"GET /2 HTTP/1.1\r\n\r\n")
    assert t1.written == [] and t2.written == []  # nothing leaves during the turn
    await _next_turn()
    assert t1.written == [b"GET /1 HTTP/1.1\r\n\r\n"]
    assert t2.written == [b"GET /2 HTTP/1.1\r\n\r\n"]
    await _next_turn()
    assert len(t1.written) == 1 and len(t2.written) == 1  # once each


@_on_a_loop
async def test_a_connection_that_closes_while_its_request_waits_reports_it_never_sent(
    loop: asyncio.AbstractEventLoop, outbox: Outbox
) -> None:
    conn, transport, listener = _connection(loop)
    transport.abort()  # the origin's close is noticed after the connection was taken from the pool
    outbox.send(conn, b"POST /pay HTTP/1.1\r\n\r\n")
    await _next_turn()
    assert transport.written == []
    assert len(listener.failed) == 1
    assert isinstance(listener.failed[0], UpstreamNotSent)  # safe to send again, whatever the method


@_on_a_loop
async def test_a_connection_closed_by_us_before_the_flush_is_not_written(
    loop: asyncio.AbstractEventLoop, outbox: Outbox
) -> None:
    conn, transport, _ = _connection(loop)
    outbox.send(conn, b"GET /1 HTTP/1.1\r\n\r\n")
    conn.abort()
    await _next_turn()
    assert transport.written == []


@_on_a_loop
async def test_bytes_before_the_request_was_written_answer_nothing(
    loop: asyncio.AbstractEventLoop, outbox: Outbox
) -> None:
    conn, transport, listener = _connection(loop)
    outbox.send(conn, b"GET /1 HTTP/1.1\r\n\r\n")
    conn.data_received(RESPONSE)  # a hostile or confused origin, ahead of the request
    assert listener.ready == []  # never relayed as the answer
    assert len(listener.failed) == 1 and isinstance(listener.failed[0], UpstreamError)
    assert not isinstance(listener.failed[0], UpstreamNotSent)
    await _next_turn()
    assert transport.written == []  # and the request is not sent on that connection afterwards
    assert conn.closed


@_on_a_loop
async def test_a_connection_restarted_for_another_request_drops_the_old_one(
    loop: asyncio.AbstractEventLoop, outbox: Outbox
) -> None:
    conn, transport, _ = _connection(loop)
    outbox.send(conn, b"GET /old HTTP/1.1\r\n\r\n")
    conn.start(no_body=False)
    outbox.send(conn, b"GET /new HTTP/1.1\r\n\r\n")
    await _next_turn()
    assert transport.written == [b"GET /new HTTP/1.1\r\n\r\n"]


@_on_a_loop
async def test_the_answer_after_the_request_is_relayed(
    loop: asyncio.AbstractEventLoop, outbox: Outbox
) -> None:
    conn, _transport, listener = _connection(loop)
    outbox.send(conn, b"GET /1 HTTP/1.1\r\n\r\n")
    await _next_turn()
    conn.data_received(RESPONSE)
    assert listener.ready == [conn] and listener.failed == []
    assert conn.status == 200


@pytest.mark.parametrize("queued", [True, False])
@_on_a_loop
async def test_a_loss_says_not_sent_only_while_the_request_waits(
    loop: asyncio.AbstractEventLoop, outbox: Outbox, queued: bool
) -> None:
    conn, _transport, listener = _connection(loop)
    outbox.send(conn, b"GET /1 HTTP/1.1\r\n\r\n")
    if not queued:
        await _next_turn()  # written: a loss now may come after the origin acted on it
    conn.connection_lost(None)
    assert len(listener.failed) == 1
    assert isinstance(listener.failed[0], UpstreamNotSent) is queued


class _Faulty:
    def send_queued(self) -> None:
        raise RuntimeError("a holder's bug")


@_on_a_loop
async def test_a_failing_write_neither_strands_the_others_nor_hangs_its_own_request(
    loop: asyncio.AbstractEventLoop, outbox: Outbox
) -> None:
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    refusing, refusing_transport, listener = _connection(loop)

    def refuse(data: bytes) -> None:
        raise RuntimeError("transport refused the write")

    refusing_transport.write = refuse  # type: ignore[method-assign]
    after, after_transport, _ = _connection(loop)
    outbox.add(_Faulty())
    outbox.send(refusing, b"POST /pay HTTP/1.1\r\n\r\n")
    outbox.send(after, b"GET /1 HTTP/1.1\r\n\r\n")
    await _next_turn()
    assert after_transport.written == [b"GET /1 HTTP/1.1\r\n\r\n"]  # written despite the two before it
    assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)  # the bug is seen
    # The refused request fails at once (a 502, not a read timeout), and is not called "never sent":
    # a POST must not be sent twice on a guess.
    assert len(listener.failed) == 1 and isinstance(listener.failed[0], UpstreamError)
    assert not isinstance(listener.failed[0], UpstreamNotSent)
    assert refusing.closed
