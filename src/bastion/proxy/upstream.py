"""Upstream connections and their pools (see the theory of operation in ``bastion.proxy``)."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import httptools

from ..runtime.gateway import UpstreamSpec

__all__ = [
    "Outbox",
    "Queued",
    "UpstreamClosed",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamNotSent",
    "UpstreamPool",
    "UpstreamTimeout",
]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
MAX_RESPONSE_HEADER_BYTES = 64 * 1024
MAX_RESPONSE_HEADERS = 200


class UpstreamError(Exception):
    """The upstream misbehaved or went away (→ 502)."""


class UpstreamClosed(UpstreamError):
    """The connection closed before a response byte arrived (safe to retry a bodiless request)."""


class UpstreamNotSent(UpstreamClosed):
    """The connection closed before any byte of the request was written: safe to send again, whatever
    the method."""


class UpstreamTimeout(UpstreamError):
    """Connect or read timeout (→ 504)."""


class UpstreamConnection(asyncio.Protocol):
    """One persistent HTTP/1.1 connection to an upstream; parses responses with llhttp."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.in_use = False  # between start() and release to the pool
        self.on_lost: Callable[[UpstreamConnection], None] | None = None
        # Fast path: the client connection waiting for this response, told by callback (no future).
        self.listener: Any = None
        self.fast: Any = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiting: asyncio.Future[None] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._parser_clean = True
        self._reset()

    def _reset(self) -> None:
        if not self._parser_clean:
            # After a HEAD response (body skipped by us, not by llhttp) the parser state is stale.
            self.parser = httptools.HttpResponseParser(self)
            self._parser_clean = True
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._head_waiter: asyncio.Future[None] | None = None
        self.head_done = False
        self.message_done = False
        self.keep_alive = False
        self.content_length: int | None = None
        self.nominated: frozenset[bytes] | None = None  # header names the upstream's Connection lists
        self.chunked = False
        self.no_body = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._read_paused = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._extra = False
        self.got_bytes = False
        self.unsent: bytes | None = None  # a request waiting in the Outbox: nothing of it was written yet

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.head_done and not self.message_done and self.content_length is None and not self.chunked:
            # close-delimited body (RFC 9112 §6.3 rule 8): EOF is the end of the message
            self.message_done = True
        elif not self.message_done and self._error is None:
            if self.unsent is not None:
                self._error = UpstreamNotSent("closed")
            elif not self.got_bytes:
                self._error = UpstreamClosed("closed")
            else:
                self._error = UpstreamError("closed mid-response")
        self.unsent = None
        self._wake_all()
        if self.listener is not None:
            if self.head_done and self.message_done:
                self._notify_ready()  # a close-delimited response just ended
            else:
                self._notify_failed(self._error or UpstreamError("closed"))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(UpstreamError("closed"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.in_use:
            # Bytes from an idle pooled connection answer no request of ours (a buggy or hostile
            # upstream: a 204 with a body, a late response). Never let them reach the next client.
            self.abort()
            return
        if self.message_done:
            # More bytes after the response ended (a body on a HEAD answer, a second response): the
            # framing can no longer be trusted, so this connection is never reused.
            self._poison()
            return
        if self.unsent is not None:
            # An "answer" to a request that has not been written yet answers nothing of ours.
            self.unsent = None
            self._fail(UpstreamError("bytes before the request was sent"))
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason = exc.__context__ if isinstance(exc.__context__, UpstreamError) else None
            self._fail(reason or UpstreamError("malformed response"))
            return
        if self.listener is not None and self.head_done:
            self._notify_ready()

    def _poison(self) -> None:
        self._extra = True
        self.keep_alive = False

    # -- llhttp callbacks ---------------------------------------------------------------------------
    # Once the response head is in, nothing the parser reports may change it: a second response in
    # the same packet must not rewrite status or headers, and chunked trailers never become headers.
    def on_message_begin(self) -> None:
        if self.head_done or self.message_done:
            self._poison()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_RESPONSE_HEADER_BYTES or len(self.headers) >= MAX_RESPONSE_HEADERS:
            raise UpstreamError("response head too large")
        if self.head_done or self._extra:
            return  # trailer fields (RFC 9110 §6.5.1: not merged into the header) or a second message
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._extra:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # Interim responses (100, 103) are not forwarded; 101 means the upstream switched
            # protocols, which Bastion does not proxy.
            if status == 101:
                raise UpstreamError("upstream switched protocols")
            self.headers = []
            self._header_bytes = 0
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"connection":
                tokens = frozenset(t.strip().lower() for t in value.split(b","))
                self.nominated = tokens | self.nominated if self.nominated else tokens
            elif lname == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    raise UpstreamError("bad content-length") from None
            elif lname == b"transfer-encoding":
                self.chunked = True
        self.head_done = True
        if self.no_body:
            self._parser_clean = False
        if status == 204 and self.content_length:
            # RFC 9110 §8.6: no Content-Length in a 204 (a 304 may state the representation's). A body
            # where none may be: whatever follows is not trustworthy framing, so never reuse this one.
            self.keep_alive = False
        if self.no_body or status in (204, 304):
            # A response to HEAD has no body whatever its headers say; llhttp cannot be told, so the
            # message ends here and the next response gets a fresh parser.
            self.message_done = True
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.message_done:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake(self._body_waiter)

    def on_message_complete(self) -> None:
        if self._extra:
            return
        if not self.head_done:  # an interim response ended
            return
        self.message_done = True
        self._wake(self._body_waiter)

    # -- used by the client side ----------------------------------------------------------------------
    def _wake(self, fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_all(self) -> None:
        self._wake(self._head_waiter)
        self._wake(self._body_waiter)

    def _fail(self, exc: BaseException) -> None:
        self._parser_clean = False
        self._error = exc
        self._wake_all()
        self._notify_failed(exc)
        self.abort()

    def start(self, no_body: bool) -> None:
        self._reset()
        self.no_body = no_body
        self.in_use = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.transport is None:
            raise UpstreamError("closed")
        self.transport.write(data)

    def send_queued(self) -> None:
        """Write the request the :class:`Outbox` held (if it is still this connection's to send)."""
        data, self.unsent = self.unsent, None
        if data is None:
            return  # failed, aborted or restarted meanwhile
        if self.closed or self.transport is None:
            self._fail(UpstreamNotSent("closed"))
            return
        try:
            self.transport.write(data)
        except Exception:  # the transport refused it: fail this request (502), never hang it
            self._fail(UpstreamError("write failed"))  # not UpstreamNotSent: part of it may have left

    def writelines(self, data: list[bytes]) -> None:
        if self.closed or self.transport is None:
            raise UpstreamError("closed")
        self.transport.writelines(data)

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamError("closed")
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    # One timer per connection, re-armed lazily: each wait moves ``_deadline`` and the timer, when it
    # fires early, simply re-arms itself. Cheaper than an ``asyncio.timeout`` object per wait.
    async def _wait(self, fut: asyncio.Future[None], timeout: float) -> None:
        self._deadline = self.loop.time() + timeout
        self._waiting = fut
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        try:
            await fut
        finally:
            self._waiting = None

    def listen(self, listener: Any, timeout: float) -> None:
        """Report the response to ``listener.fast_upstream_ready`` / ``fast_upstream_failed``."""
        self.listener = listener
        self._deadline = self.loop.time() + timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _notify_ready(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.fast_upstream_ready(self)

    def _notify_failed(self, exc: BaseException) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.fast_upstream_failed(self, exc)

    def interrupt(self, exc: BaseException) -> None:
        """Make the current wait (for the head or a body chunk) raise ``exc``."""
        fut = self._waiting
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _on_timer(self) -> None:
        self._timer = None
        fut = self._waiting
        waiting = (fut is not None and not fut.done()) or self.listener is not None
        if not waiting:
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        if fut is not None and not fut.done():
            fut.set_exception(UpstreamTimeout("read"))
        else:
            self._notify_failed(UpstreamTimeout("read"))

    async def read_head(self, timeout: float) -> None:
        while not self.head_done:
            if self._error is not None:
                raise self._error
            self._head_waiter = self.loop.create_future()
            await self._wait(self._head_waiter, timeout)
        if self._error is not None and not self.head_done:
            raise self._error

    async def read_chunk(self, timeout: float) -> bytes | None:
        """The next body chunk, or ``None`` at the end of the message."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._read_paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                return chunk
            if self.message_done:
                return None
            if self._error is not None:
                raise self._error
            self._body_waiter = self.loop.create_future()
            await self._wait(self._body_waiter, timeout)

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.message_done
            and self.keep_alive
            and self._error is None
            and not self._chunks
        )

    def abort(self) -> None:
        self.closed = True
        self.unsent = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()


class Outbox:
    """Requests for upstream connections (and small whole responses for clients), written together once
    this turn of the event loop is done.

    Writing to a loopback (or any nearby) origin that has gone idle costs the writer the origin's
    wake-up: the kernel runs the receive path and signals the other CPU (an inter-processor interrupt,
    a VM exit on a virtual machine) inside our ``send``. Written one by one, while Bastion works on the
    next request, each forwarded request finds the origin asleep again; written together at the end of
    the turn, one wake-up serves the whole batch. Measured with nginx as the origin (docs/performance.md):
    its sleeps per request fell from ~0.7 to ~0.08 and Bastion's throughput rose by ~25 %. A request waits
    at most for the rest of the turn it was decided in: nothing else is ever written ahead of it (the
    connection is its alone), and at low load the turn is this one request.
    """

    __slots__ = ("_loop", "_queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: list[Queued] = []

    def send(self, conn: UpstreamConnection, data: bytes) -> None:
        """``data`` (the whole request) for ``conn``, written at the end of this turn."""
        conn.unsent = data
        self.add(conn)

    def add(self, holder: Queued) -> None:
        """``holder.send_queued()`` at the end of this turn; the holder keeps what it will write."""
        if not self._queue:
            self._loop.call_soon(self._flush)
        self._queue.append(holder)

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        for holder in queue:
            try:
                holder.send_queued()
            except Exception as exc:  # one holder's fault must not strand the writes queued after it
                self._loop.call_exception_handler({"message": "a queued write failed", "exception": exc})


class Queued(Protocol):
    """What waits in an :class:`Outbox`: an upstream connection's request, a client connection's
    response. ``send_queued`` writes it if it is still owed (nothing, if the connection failed, closed or
    already sent it meanwhile)."""

    def send_queued(self) -> None: ...


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT; hands the connection over once it is 200."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.established: asyncio.Future[int] = loop.create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.size = 0

    def data_received(self, data: bytes) -> None:
        if self.established.done():
            return
        self.size += len(data)
        if self.size > MAX_RESPONSE_HEADER_BYTES:
            self.established.set_exception(UpstreamError("proxy answer too large"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            if not self.established.done():
                self.established.set_exception(UpstreamError("proxy answer malformed"))

    def on_headers_complete(self) -> None:
        if not self.established.done():
            self.established.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.established.done():
            self.established.set_exception(UpstreamError("proxy closed the connection"))


def _ssl_context(spec: UpstreamSpec) -> ssl.SSLContext | None:
    if spec.scheme != "https":
        return None
    ctx = ssl.create_default_context(cafile=spec.ca_file)
    if not spec.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class UpstreamPool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    def __init__(self, spec: UpstreamSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self._idle: list[UpstreamConnection] = []
        self._ssl = _ssl_context(spec)
        self.opened = 0  # connections opened since start (tests use it to prove reuse)
        self._open: set[UpstreamConnection] = set()  # every live connection, idle or in use

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection that is still open, or ``None`` (no await on the hot path)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect_fresh(self) -> UpstreamConnection:
        return await self._connect()

    async def _connect(self) -> UpstreamConnection:
        spec = self.spec
        try:
            async with asyncio.timeout(spec.connect_timeout):
                if spec.proxy is not None:
                    proto = await self._tunnel(spec.proxy)
                else:
                    _, proto = await self.loop.create_connection(
                        lambda: UpstreamConnection(self.loop),
                        spec.host,
                        spec.port,
                        ssl=self._ssl,
                        server_hostname=spec.host if self._ssl else None,
                    )
        except TimeoutError:
            raise UpstreamTimeout("connect") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"connect failed: {type(exc).__name__}") from None
        self.opened += 1
        self._open.add(proto)
        proto.on_lost = self._open.discard
        return proto

    async def _tunnel(self, proxy: tuple[str, int]) -> UpstreamConnection:
        """Through an HTTP CONNECT proxy (RFC 9110 §9.3.6): the tunnel, then TLS to the upstream inside it
        (verified against the upstream's name, never the proxy's)."""
        spec = self.spec
        tunnel = _Tunnel(self.loop)
        transport, _ = await self.loop.create_connection(lambda: tunnel, proxy[0], proxy[1])
        try:
            authority = f"[{spec.host}]:{spec.port}" if ":" in spec.host else f"{spec.host}:{spec.port}"
            transport.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii"))
            status = await tunnel.established
            if status != 200:
                raise UpstreamError(f"proxy refused the tunnel ({status})")
            conn = UpstreamConnection(self.loop)
            if self._ssl is not None:
                secure = await self.loop.start_tls(transport, conn, self._ssl, server_hostname=spec.host)
                if secure is None:
                    raise UpstreamError("TLS through the proxy failed")
                conn.connection_made(secure)
            else:
                transport.set_protocol(conn)
                conn.connection_made(transport)
            return conn
        except BaseException:
            transport.abort()
            raise

    def release(self, conn: UpstreamConnection) -> None:
        conn.in_use = False
        if conn.reusable and len(self._idle) < self.spec.max_idle:
            self._idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Abort every connection, in use or idle (shutdown, after the grace period)."""
        for conn in list(self._open) + self._idle:
            conn.abort()
        self._idle.clear()
        self._open.clear()
