"""Client connections and the listening server (see the theory of operation in ``bastion.proxy``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections import deque
from collections.abc import Coroutine
from http import HTTPStatus
from ipaddress import ip_address
from time import monotonic
from typing import Any

import httptools

from ..core.request import BodyReadError
from ..runtime.gateway import Forward, Gateway, Respond, UpstreamSpec
from ..runtime.responses import filter_json, is_encoded, json_kind
from .upstream import (
    Outbox,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamError,
    UpstreamNotSent,
    UpstreamPool,
    UpstreamTimeout,
)

__all__ = ["ClientConnection", "Exchange", "GatewayServer", "serve"]

log = logging.getLogger("bastion.proxy")

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_MAX_PIPELINED = 16
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_BACKLOG = 4096
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 * 1024 * 1024
_ACCEPT_BATCH = 512
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_COALESCE = 64 * 1024  # a read body up to this size goes out in one write with the request head
_METHODS_WITH_BODY_SEMANTICS = frozenset({"POST", "PUT", "PATCH"})


class _Reject(Exception):
    """Raised inside llhttp callbacks to stop parsing with a status and code."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


class BodyError(BodyReadError):
    pass


class ClientBody:
    """A request body as it arrives: a bounded queue the forwarder drains (the core ``Body`` port)."""

    __slots__ = (
        "_buffered",
        "_cached",
        "_chunks",
        "_waiter",
        "chunked",
        "complete",
        "conn",
        "declared_length",
        "error",
        "expect_continue",
        "framing_seen",
        "limit",
        "received",
    )

    def __init__(self, conn: ClientConnection, declared_length: int | None, chunked: bool) -> None:
        self.conn = conn
        self.declared_length = declared_length
        self.chunked = chunked
        self.limit: int | None = None
        self.received = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self.complete = not chunked and not declared_length
        self._waiter: asyncio.Future[None] | None = None
        self.error: BodyError | None = None
        self._cached: bytes | None = None
        self.expect_continue = False
        self.framing_seen = True

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.declared_length)

    # producer side (llhttp callbacks)
    def feed(self, data: bytes) -> None:
        self.expect_continue = False  # the client did not wait for "100 Continue"
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self.fail(BodyError(413, "body_too_large"))
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self.conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, err: BodyError) -> None:
        if self.error is None:
            self.error = err
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # consumer side
    async def next_chunk(self) -> bytes | None:
        while True:
            if self.error is not None:
                raise self.error
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < _LOW_WATER:
                    self.conn.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.expect_continue:
                self.expect_continue = False
                self.conn.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.conn.resume_reading()
            self.conn.arm_body_timer()
            self._waiter = self.conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self.conn.disarm_body_timer()

    def cap(self, limit: int) -> None:
        self.limit = limit
        if self.received > limit:
            self.fail(BodyError(413, "body_too_large"))

    async def read(self) -> bytes:
        """The whole body (bounded by the route's ``max_body``); later forwarding replays it."""
        data = self.arrived()
        if data is None:  # not all here yet (or failed: next_chunk raises why): wait for the rest
            parts = []
            while (chunk := await self.next_chunk()) is not None:
                parts.append(chunk)
            data = self._cached = b"".join(parts)
        return data

    @property
    def cached(self) -> bytes | None:
        return self._cached

    def arrived(self) -> bytes | None:
        return self._cached if self._cached is not None else self.take_arrived()

    def take_arrived(self) -> bytes | None:
        """The whole body when it has already arrived (a small body in the head's packets), taken at once
        and then replayable like a read one; None when some of it is still to come (then it streams)."""
        if not self.complete or self.chunked or self.error is not None or self._cached is not None:
            return None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._buffered > _HIGH_WATER:
            self.conn.resume_reading()
        self._buffered = 0
        self._cached = data
        return data


class _NoBody:
    """The body of a request that has none (no Content-Length, Transfer-Encoding or Expect): one
    shared, stateless instance, since that is most requests. Writes to it are ignored."""

    __slots__ = ()
    declared_length = 0
    chunked = False
    has_body = False
    complete = True
    limit = 1 << 62
    received = 0
    error = None
    cached = None
    framing_seen = False
    expect_continue = False

    def __setattr__(self, name: str, value: object) -> None:
        return None  # expect_continue/limit assignments have nothing to record here

    def feed(self, data: bytes) -> None:
        return None  # llhttp reports no body bytes for such a request

    def finish(self) -> None:
        return None

    def fail(self, err: BodyError) -> None:
        return None

    def cap(self, limit: int) -> None:
        return None

    async def next_chunk(self) -> bytes | None:
        return None

    async def read(self) -> bytes:
        return b""

    def arrived(self) -> bytes:
        return b""


NO_BODY = _NoBody()


class Exchange:
    __slots__ = (
        "body",
        "framing_error",
        "headers",
        "keep_alive",
        "method",
        "raw_target",
        "t0",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_target: str,
        version: str,
        headers: list[tuple[str, str]],
        keep_alive: bool,
        body: ClientBody,
        framing_error: tuple[int, str] | None,
    ) -> None:
        self.method = method
        self.raw_target = raw_target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body
        self.framing_error = framing_error
        self.upgrade = False
        self.t0 = monotonic()  # for the latency histogram (runtime/metrics.py)


# llhttp's reasons for the framing errors it catches itself, mapped to Bastion's documented codes.
_LLHTTP_REASONS = (
    ("can't be present with", "content_length_with_transfer_encoding"),
    ("Content-Length", "content_length_invalid"),
    ("Transfer-Encoding", "transfer_encoding_unsupported"),
)


def _llhttp_code(exc: Exception, data: bytes) -> str:
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        line = data.split(b"\n", 1)[0]
        return "path_non_ascii" if any(b >= 0x80 for b in line) else "path_invalid_char"
    message = str(exc)
    for needle, code in _LLHTTP_REASONS:
        if needle in message:
            return code
    return "malformed_request"


_FRAMING_NAMES = frozenset({"content-length", "transfer-encoding", "expect"})
# Field names as sent -> lower-cased text. Clients send the same few spellings, so one lookup replaces a
# decode and a lower() per field, and every later lookup by that name reuses one string (its hash is
# computed once). Bounded: names beyond the first _NAMES_MAX spellings are simply not remembered.
_NAMES: dict[bytes, str] = {}
_NAMES_MAX = 1024


def _framing(headers: list[tuple[str, str]]) -> tuple[int | None, bool, tuple[int, str] | None]:
    """(content_length, chunked, error) from the raw header list: strict RFC 9112 §6 framing."""
    cl_values = [v for n, v in headers if n == "content-length"]
    te_values = [v for n, v in headers if n == "transfer-encoding"]
    if cl_values and te_values:
        return None, False, (400, "content_length_with_transfer_encoding")
    if te_values:
        if len(te_values) != 1 or te_values[0].strip().lower() != "chunked":
            return None, False, (400, "transfer_encoding_unsupported")
        return None, True, None
    if cl_values:
        v = cl_values[0].strip()
        if len(cl_values) != 1 or not v.isdigit() or not v.isascii() or len(v) > 18:
            return None, False, (400, "content_length_invalid")
        return int(v), False, None
    return 0, False, None


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.gateway = server.gateway
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer = ip_address("0.0.0.0")
        self.parser = httptools.HttpRequestParser(self)
        self.exchanges: deque[Exchange] = deque()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.busy = False  # an exchange is being handled
        self.closing = False  # finish the current exchange, then close
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._current: Exchange | None = None
        self._fast_candidate: Exchange | None = None
        self._held: list[bytes] | None = None  # a response waiting in the outbox (write_later)
        self._fast_pending: Exchange | None = None
        self._parse_broken = False
        # request head being parsed
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._in_head = False
        limits = self.gateway.limits
        self._max_url = limits.max_url
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_head_raw = limits.max_url + limits.max_header_bytes + 8192
        self._head_raw = 0
        self._trailer_bytes = 0
        self._framing_seen = False
        # timer: one handle, re-armed lazily
        t = self.gateway.timeouts
        self._header_timeout = t.header
        self._body_timeout = t.body
        self._idle_timeout = t.keepalive
        self._phase = "idle"  # idle | head | body | busy
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._lingering = False
        self._linger_bytes = 0
        self.drain_on_close = False  # unread request bytes may remain: close gracefully (see _close)

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            with contextlib.suppress(ValueError):
                addr = ip_address(peer[0].split("%", 1)[0])
                # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; policy and events
                # speak of the IPv4 address.
                mapped = getattr(addr, "ipv4_mapped", None)
                self.peer = mapped or addr
        self.server.connections.add(self)
        if len(self.server.connections) > self.gateway.limits.max_connections:
            self.server.rejected_connections += 1
            resp = self.gateway.deny(
                503,
                "too_many_connections",
                detail="The gateway is busy; retry later.",
                source_ip=self.peer,
                headers=(("retry-after", "1"),),
                close=True,
            )
            self._write_respond(resp, "HTTP/1.1", keep_alive=False)
            self._close()
            return
        self._set_phase("idle")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cur = self._current
        if cur is not None:
            cur.body.fail(BodyError(400, "client_disconnected"))
        for ex in self.exchanges:
            ex.body.fail(BodyError(400, "client_disconnected"))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionError("client gone"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > _LINGER_BYTES:
                self._final_close()
            return
        if self._parse_broken or self.closed:
            return
        if self._phase == "idle":
            self._set_phase("head")
        head_in_progress = self._in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fast_candidate = self._fast_pending = None
            # "Upgrade"/CONNECT: Bastion proxies neither. The head is already queued; answer it as a
            # plain request and close, since llhttp stops parsing this connection here.
            self._parse_broken = True
            if self.exchanges:
                self.exchanges[-1].upgrade = True
                self.exchanges[-1].body.finish()
            self.pause_reading()
            self._start()
        except httptools.HttpParserError as exc:
            self._fast_candidate = self._fast_pending = None
            self._parse_broken = True
            reason = exc.__context__
            if isinstance(reason, _Reject):
                status, code = reason.status, reason.code
            else:
                status, code = 400, _llhttp_code(exc, data)
            self._on_parse_error(status, code)
            return
        if head_in_progress and self._in_head:
            # httptools buffers a header value until it is complete, so one endless header would grow
            # without bound before on_header sees it: bound the raw bytes of a head still in progress.
            self._head_raw += len(data)
            if self._head_raw > self._max_head_raw:
                self._parse_broken = True
                self._on_parse_error(431, "headers_too_large")
        if self._fast_pending is not None:
            ex, self._fast_pending = self._fast_pending, None
            self._serve_fast(ex)

    def _on_parse_error(self, status: int, code: str) -> None:
        self.pause_reading()
        cur = self._current
        if cur is not None and not cur.body.complete:
            cur.body.fail(BodyError(status, code))  # the forwarder answers (or aborts) and closes
            return
        for ex in self.exchanges:
            if not ex.body.complete:
                ex.body.fail(BodyError(status, code))
                return
        # Error in a new request head: answer it after whatever is in progress, then close.
        self.exchanges.append(self._error_exchange(status, code))
        self._start()

    def _error_exchange(self, status: int, code: str) -> Exchange:
        body = ClientBody(self, 0, False)
        return Exchange("GET", "/", "1.1", [], False, body, (status, code))

    # -- llhttp callbacks ---------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._head_bytes = 0
        self._framing_seen = False
        self._head_raw = 0
        self._trailer_bytes = 0
        self._in_head = True
        if self._phase == "idle":
            self._set_phase("head")

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_url:
            raise _Reject(414, "url_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # llhttp reports chunked trailer fields here too. They arrive after the head was judged,
            # so they are never forwarded (a late "Authorization" must not ride along); only counted.
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > self._max_head:
                raise _Reject(431, "headers_too_large")
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            raise _Reject(431, "headers_too_large")
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise _Reject(431, "too_many_headers")
        lname = _NAMES.get(name)
        if lname is None:
            lname = name.decode("latin-1").lower()
            if len(_NAMES) < _NAMES_MAX:
                _NAMES[name] = lname
        if lname in _FRAMING_NAMES:
            self._framing_seen = True
        headers.append((lname, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self.parser
        method = p.get_method().decode("ascii")
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            # llhttp also accepts HTTP/0.9 request lines and HTTP/2.0 in an HTTP/1 request line.
            raise _Reject(505, "http_version_unsupported")
        if self._framing_seen:
            length, chunked, error = _framing(self._headers)
        else:
            length, chunked, error = 0, False, None
        self._head_raw = 0
        body = ClientBody(self, length, chunked) if self._framing_seen else NO_BODY
        ex = Exchange(
            method, self._url.decode("latin-1"), version, self._headers, p.should_keep_alive(), body, error
        )
        self._headers = []  # the exchange owns that list now
        if len(self.exchanges) >= _MAX_PIPELINED:
            # pause_reading() only stops the next read; llhttp parses all of the current one, so a
            # single packet could queue thousands of requests. Refuse beyond the bound instead.
            raise _Reject(503, "too_many_pipelined_requests")
        self.exchanges.append(ex)
        if len(self.exchanges) >= _MAX_PIPELINED // 2:
            self.pause_reading()
        self._set_phase("busy")
        if (
            not self._framing_seen  # no body, no Expect
            and error is None
            and len(self.exchanges) == 1
            and not self.busy
            and self._task is None
            and not self.closing
        ):
            self._fast_candidate = ex  # served once the message is complete and parsing has returned
        else:
            self._start()

    def on_body(self, data: bytes) -> None:
        ex = self.exchanges[-1] if self.exchanges else self._current
        if ex is not None:
            ex.body.feed(data)

    def on_message_complete(self) -> None:
        ex = self.exchanges[-1] if self.exchanges else self._current
        if ex is not None:
            ex.body.finish()
            if ex is self._fast_candidate:
                self._fast_candidate = None
                self._fast_pending = ex

    # -- flow control and timers -----------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed and not self._parse_broken:
            self._read_paused = False
            self.transport.resume_reading()

    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        if phase == "busy":
            return
        if phase == "idle":
            timeout = self._idle_timeout
        elif phase == "head":
            timeout = self._header_timeout
        else:
            timeout = self._body_timeout
        self._deadline = self.loop.time() + timeout
        if self._timer is None or self._deadline < self._timer_at:
            # Later deadlines are picked up lazily when the timer fires; an earlier one (a 10 s header
            # deadline after a 60 s keep-alive one) needs the timer moved, or slowloris gets 60 s.
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def arm_body_timer(self) -> None:
        self._set_phase("body")

    def disarm_body_timer(self) -> None:
        if self._phase == "body":
            self._phase = "busy"

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or self._phase == "busy":
            return  # leaving "busy" arms the timer again (_set_phase)
        now = self.loop.time()
        if now < self._deadline:
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        if self._phase == "idle":
            self._close()
        elif self._phase == "head":
            self._parse_broken = True
            self.pause_reading()
            if self.busy or self.exchanges:
                self._close()  # a pipelined head stalled behind work: just drop the connection
                return
            resp = self.gateway.deny(
                408,
                "request_header_timeout",
                detail="The request head took too long.",
                source_ip=self.peer,
                close=True,
            )
            self._write_respond(resp, "HTTP/1.1", keep_alive=False)
            self._close()
        elif self._phase == "body":
            cur = self._current
            if cur is not None:
                cur.body.fail(BodyError(408, "request_body_timeout"))
            self._phase = "busy"

    # -- writing ----------------------------------------------------------------------------------------
    def write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            if self._held is not None:
                self.send_queued()  # what waits in the outbox goes first
            self.transport.write(data)

    def write_later(self, data: bytes) -> None:
        """A whole response, written at the end of this event-loop turn with the turn's other writes (see
        :class:`~bastion.proxy.upstream.Outbox`: the client's wake-up is paid once per batch, not once per
        response). Anything written to this connection before then goes after it."""
        if self.transport is None or self.closed:
            return
        if self._held is None:
            self._held = [data]
            self.server.outbox.add(self)
        else:
            self._held.append(data)

    def send_queued(self) -> None:
        held, self._held = self._held, None
        if held and self.transport is not None and not self.closed:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionError("client gone")
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(self._body_timeout):
                    await self._drain_waiter
            except TimeoutError:
                raise ConnectionError("client stopped reading") from None

    def _write_respond(self, resp: Respond, version: str, keep_alive: bool) -> None:
        lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, _REASONS.get(resp.status, b"Unknown"))]
        has_length = False
        for name, value in resp.headers:
            if name == "content-length":
                has_length = True
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not has_length:
            lines.append(b"content-length: %d\r\n" % len(resp.body))
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        elif version == "1.0":
            lines.append(b"connection: keep-alive\r\n")  # HTTP/1.0 closes unless told otherwise
        lines.append(b"\r\n")
        lines.append(resp.body)
        self.write_raw(b"".join(lines))

    def _close(self) -> None:
        if self.transport is None or self.closed or self._lingering:
            return  # a lingering close ends on its own timer (or its byte bound), not sooner
        if self._held is not None:
            self.send_queued()  # what is owed is written before the connection ends
        if self.drain_on_close and self.transport.can_write_eof():
            # The client may still be sending a body we refused to read. Closing now would make the
            # kernel answer its next bytes with a reset, which can destroy our error response before
            # the client reads it. Half-close, discard what still arrives (bounded), then close.
            self._lingering = True
            self._parse_broken = True
            self.transport.write_eof()
            self._read_paused = True  # force the resume below
            self.resume_reading_for_linger()
            self.loop.call_later(_LINGER_SECONDS, self._final_close)
            return
        self._final_close()

    def resume_reading_for_linger(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.resume_reading()
            self._read_paused = False

    def _final_close(self) -> None:
        if self._held is not None:
            self.send_queued()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # -- running exchanges ------------------------------------------------------------------------------
    # Exchanges run one at a time, in order. A bodiless request that finds the connection idle takes
    # the fast path (``_serve_fast``): it is decided and forwarded from the parser callback, and its
    # response relayed from the upstream's callback, with no task and no future. Everything else (bodies,
    # pipelined backlogs, checks that wait, responses that stream) runs in a task started on demand.
    def _start(self) -> None:
        if self._task is None and not self.busy and self.exchanges and not self.closed:
            self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.exchanges and not self.closed and not self.busy:
                ex = self.exchanges.popleft()
                if len(self.exchanges) < _MAX_PIPELINED // 2:
                    self.resume_reading()
                self._current = ex
                self.busy = True
                keep = await self._handle(ex)
                self.gateway.metrics.observe(monotonic() - ex.t0)
                self.busy = False
                self._current = None
                if not keep or self.closing:
                    self._close()
                    break
            self._settle()
        except Exception:
            log.exception("connection handler failed")
            self._close()
        finally:
            self._task = None
            self.server.on_connection_idle(self)

    def _settle(self) -> None:
        """Nothing is running: arm the right timer, or close a connection that is done."""
        if self.closed or self.busy or self.exchanges:
            return
        if self.closing or self._parse_broken:
            self._close()
        elif self._in_head:
            self._set_phase("head")
        else:
            self._set_phase("idle")

    def _exchange_done(self, keep: bool) -> None:
        ex = self._current
        if ex is not None:
            self.gateway.metrics.observe(monotonic() - ex.t0)
        self.busy = False
        self._current = None
        if not keep or self.closing:
            self._close()
        elif self.exchanges:
            self._start()
        else:
            self._settle()
        self.server.on_connection_idle(self)

    def _side(self, work: Coroutine[Any, Any, bool]) -> None:
        """Finish a fast-path exchange that turned out to need waiting, in a task."""
        self._task = self.loop.create_task(self._side_run(work))

    async def _side_run(self, work: Coroutine[Any, Any, bool]) -> None:
        keep = False
        try:
            keep = await work
        except Exception:
            log.exception("connection handler failed")
        finally:
            self.gateway.in_flight -= 1
            self._task = None
        self._exchange_done(keep)

    def _serve_fast(self, ex: Exchange) -> None:
        gw = self.gateway
        if (
            self.closed
            or self.busy
            or self._task is not None
            or not self.exchanges
            or self.exchanges[0] is not ex
        ):
            self._start()
            return
        if gw.in_flight >= gw.limits.max_in_flight:
            self._start()  # the slow path answers 503
            return
        self.exchanges.popleft()
        self._current = ex
        self.busy = True
        gw.in_flight += 1
        raw_path, _, query = ex.raw_target.partition("?")
        coro = gw.admit(ex.method, raw_path, query, ex.headers, self.peer, ex.body)
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            decision = stop.value
        except Exception:
            log.exception("admission failed")
            self._internal_error(ex)
            gw.in_flight -= 1
            self._exchange_done(False)
            return
        else:
            # A check waited on something (a store, a counter): let a task drive the rest.
            self._side(self._finish_admission(coro, yielded, ex))
            return
        if isinstance(decision, Respond):
            keep = self._respond(decision, ex)
            gw.in_flight -= 1
            self._exchange_done(keep)
            return
        pool = self.server.pool_for(decision.upstream)
        conn = pool.take_idle()
        if conn is None:
            self._side(self._forward(decision, ex))
            return
        conn.start(ex.method == "HEAD")
        conn.fast = (decision, ex, pool)
        conn.listen(self, decision.upstream.read_timeout)
        self.server.outbox.send(conn, self._upstream_head(decision, ex))  # written at the end of this turn
        self.server.fast_forwards += 1

    async def _finish_admission(self, coro: Coroutine[Any, Any, Any], yielded: Any, ex: Exchange) -> bool:
        try:
            decision = await _drive(coro, yielded)
        except Exception:
            log.exception("admission failed")
            self._internal_error(ex)
            return False
        if isinstance(decision, Respond):
            return self._respond(decision, ex)
        return await self._forward(decision, ex)

    def fast_upstream_ready(self, conn: UpstreamConnection) -> None:
        """The upstream answered a fast-path request (called from its protocol callback)."""
        fwd, ex, pool = conn.fast
        conn.fast = None
        if conn.status >= 500 and fwd.ctx.undo is not None:
            self.gateway.upstream_failed(fwd.ctx)  # not taken: the sender's retry is not a replay
        if self._rewrites(fwd, conn):
            self._side(self._answer(fwd, ex, conn, pool, None))
            return
        if conn.message_done and len(conn._chunks) <= 1:
            head, chunked_out, keep, _bodyless = self._response_head(fwd, ex, conn)
            if not chunked_out:
                first = conn._chunks.popleft() if conn._chunks else b""
                conn._buffered = 0
                self.write_later(head + first)
                pool.release(conn)
                self.gateway.in_flight -= 1
                self._exchange_done(keep)
                return
        self._side(self._relay_response(fwd, ex, conn, pool, None))

    def fast_upstream_failed(self, conn: UpstreamConnection, exc: BaseException) -> None:
        fwd, ex, _pool = conn.fast
        conn.fast = None
        conn.abort()
        if (
            isinstance(exc, UpstreamClosed)
            and conn.reused
            and not self.closed
            and (ex.method in _IDEMPOTENT or isinstance(exc, UpstreamNotSent))
        ):
            self._side(self._forward(fwd, ex))  # the pooled connection had gone stale: one retry
            return
        if isinstance(exc, UpstreamTimeout):
            keep = self._upstream_failed(fwd, ex, 504, "upstream_timeout", "read")
        elif isinstance(exc, UpstreamClosed):
            keep = self._upstream_failed(fwd, ex, 502, "upstream_unavailable", "closed")
        else:
            keep = self._upstream_failed(fwd, ex, 502, "upstream_unavailable", str(exc))
        self.gateway.in_flight -= 1
        self._exchange_done(keep)

    async def _handle(self, ex: Exchange) -> bool:
        """Serve one exchange; returns whether the connection may be kept alive."""
        gw = self.gateway
        head = ex.method == "HEAD"
        if ex.framing_error is not None:
            status, code = ex.framing_error
            resp = gw.deny(
                status,
                code,
                detail="The request is malformed.",
                method=ex.method,
                path=_path_only(ex.raw_target),
                source_ip=self.peer,
                close=True,
            )
            self._write_respond(resp, ex.version, keep_alive=False)
            return False
        raw_path, _, query = ex.raw_target.partition("?")
        expect = next((v for n, v in ex.headers if n == "expect"), None) if ex.body.framing_seen else None
        if expect is not None:
            if expect.strip().lower() != "100-continue" or ex.version == "1.0":
                resp = gw.deny(
                    417,
                    "expectation_unsupported",
                    detail="Only Expect: 100-continue is supported.",
                    method=ex.method,
                    path=_path_only(raw_path),
                    source_ip=self.peer,
                    close=True,
                )
                self._write_respond(resp, ex.version, keep_alive=False)
                return False
            ex.body.expect_continue = ex.body.has_body
        if gw.in_flight >= gw.limits.max_in_flight:
            resp = gw.deny(
                503,
                "overloaded",
                detail="The gateway is busy; retry later.",
                method=ex.method,
                path=_path_only(raw_path),
                source_ip=self.peer,
                headers=(("retry-after", "1"),),
                head=head,
            )
            return self._respond(resp, ex)
        gw.in_flight += 1
        try:
            try:
                decision = await gw.admit(ex.method, raw_path, query, ex.headers, self.peer, ex.body)
            except BodyError:
                raise
            except Exception:
                log.exception("admission failed")
                self._internal_error(ex)
                return False
            if isinstance(decision, Respond):
                return self._respond(decision, ex)
            return await self._forward(decision, ex)
        finally:
            gw.in_flight -= 1

    def _internal_error(self, ex: Exchange) -> None:
        """A bug, not the client's fault: answer 500 rather than drop the connection silently."""
        resp = self.gateway.deny(
            500,
            "internal_error",
            detail="The gateway failed to handle the request.",
            method=ex.method,
            path=_path_only(ex.raw_target),
            source_ip=self.peer,
            severity="error",
            close=True,
        )
        self.drain_on_close = not ex.body.complete
        self._write_respond(resp, ex.version, keep_alive=False)

    def _respond(self, resp: Respond, ex: Exchange) -> bool:
        # A body we did not read would be parsed as the next request: close instead (unless it
        # already arrived in full and can simply be discarded).
        keep = ex.keep_alive and not resp.close and not ex.upgrade and not self.closing
        if ex.body.has_body and not ex.body.complete:
            keep = False
            self.drain_on_close = True
        self._write_respond(resp, ex.version, keep)
        return keep

    async def _forward(self, fwd: Forward, ex: Exchange) -> bool:
        req = fwd.req
        body = ex.body
        body.cap(req.route.max_body)
        pool = self.server.pool_for(fwd.upstream)
        no_body = ex.method == "HEAD"
        head_bytes = self._upstream_head(fwd, ex)
        outbox = self.server.outbox
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = (pool.take_idle() if attempt == 1 else None) or await pool.connect_fresh()
            except UpstreamTimeout:
                return self._upstream_failed(fwd, ex, 504, "upstream_timeout", "connect")
            except UpstreamError as exc:
                # The cause (refused, a certificate that does not verify, a proxy's 407) goes to the event.
                return self._upstream_failed(fwd, ex, 502, "upstream_unavailable", "connect", cause=str(exc))
            conn.start(no_body)
            pump: asyncio.Task[None] | None = None
            try:
                cached = body.cached
                if cached is None and body.has_body:
                    cached = body.take_arrived()
                if cached is not None and len(cached) <= _COALESCE:
                    # A body the checks read (validation, signatures): one send with the head, not two,
                    # at the end of this turn with the other requests forwarded in it (see Outbox).
                    outbox.send(conn, head_bytes + cached)
                elif cached is not None:
                    conn.write(head_bytes)
                    self._write_cached_body(conn, body)
                elif body.has_body:
                    conn.write(head_bytes)
                    pump = self.loop.create_task(self._pump(conn, body))
                else:
                    outbox.send(conn, head_bytes)
                await conn.read_head(fwd.upstream.read_timeout)
            except UpstreamClosed as exc:
                if pump is not None:
                    pump.cancel()
                conn.abort()
                # RFC 9110 §9.2.2: only idempotent requests may be replayed automatically; the upstream
                # may have acted on a POST before its connection dropped.
                retryable = (
                    conn.reused
                    and attempt == 1
                    and (ex.method in _IDEMPOTENT or isinstance(exc, UpstreamNotSent))
                    and (not body.has_body or body.cached is not None)
                )
                if retryable:
                    continue
                return self._upstream_failed(fwd, ex, 502, "upstream_unavailable", "closed")
            except UpstreamTimeout:
                if pump is not None:
                    pump.cancel()
                conn.abort()
                return self._upstream_failed(fwd, ex, 504, "upstream_timeout", "read")
            except UpstreamError as exc:
                if pump is not None:
                    pump.cancel()
                conn.abort()
                return self._upstream_failed(fwd, ex, 502, "upstream_unavailable", str(exc))
            except BodyError as err:
                conn.abort()
                return self._body_failed(fwd, ex, err, pump)
            break
        # The response head is in; a failed body pump (client too slow, too large) still decides.
        if pump is not None and pump.done() and pump.exception() is not None:
            err = pump.exception()
            conn.abort()
            if isinstance(err, BodyError):
                return self._body_failed(fwd, ex, err, None)
            return self._upstream_failed(fwd, ex, 502, "upstream_unavailable", "write")
        if conn.status >= 500 and fwd.ctx.undo is not None:
            self.gateway.upstream_failed(fwd.ctx)  # not taken: the sender's retry is not a replay
        return await self._answer(fwd, ex, conn, pool, pump)

    def _rewrites(self, fwd: Forward, conn: UpstreamConnection) -> bool:
        """Whether the gateway writes this response itself (an upstream error, a filtered body)."""
        return (conn.status >= 500 and self.gateway.replace_upstream_errors) or (
            fwd.req.route.options.get("response_fields") is not None
        )

    async def _answer(
        self,
        fwd: Forward,
        ex: Exchange,
        conn: UpstreamConnection,
        pool: UpstreamPool,
        pump: asyncio.Task[None] | None,
    ) -> bool:
        if conn.status >= 500 and self.gateway.replace_upstream_errors:
            return await self._replace_upstream_error(fwd, ex, conn, pool, pump)
        fields = fwd.req.route.options.get("response_fields")
        if fields is not None and ex.method == "HEAD":
            # the upstream's length is the unfiltered body's: not the client's business
            return await self._relay_response(fwd, ex, conn, pool, pump, omit_length=True)
        if fields is not None and conn.status not in (204, 304):
            kind = _json_kind(conn)
            if kind == "json" or conn.status == 206:
                # a 206 is a slice of something: it cannot be filtered (nor can a multipart/byteranges)
                return await self._filter_response(fields, fwd, ex, conn, pool, pump)
            if kind == "ambiguous":  # several Content-Types: a client may believe the JSON one
                return await self._filter_response(fields, fwd, ex, conn, pool, pump)
        return await self._relay_response(fwd, ex, conn, pool, pump)

    async def _read_whole(self, fwd: Forward, conn: UpstreamConnection, limit: int) -> bytes | None:
        """The upstream's whole response body, or None when it is larger than ``limit`` or fails."""
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await conn.read_chunk(fwd.upstream.read_timeout)
                if chunk is None:
                    return b"".join(parts)
                size += len(chunk)
                if size > limit:
                    return None
                parts.append(chunk)
        except UpstreamError:
            return None

    def _settle_upstream(
        self,
        ex: Exchange,
        conn: UpstreamConnection,
        pool: UpstreamPool,
        pump: asyncio.Task[None] | None,
        clean: bool,
    ) -> None:
        """After a response the gateway wrote itself: reuse the upstream connection only when both sides
        of the exchange finished cleanly."""
        if not clean or (pump is not None and (not pump.done() or pump.exception() is not None)):
            if pump is not None and not pump.done():
                pump.cancel()
            conn.abort()
        else:
            pool.release(conn)

    async def _replace_upstream_error(
        self,
        fwd: Forward,
        ex: Exchange,
        conn: UpstreamConnection,
        pool: UpstreamPool,
        pump: asyncio.Task[None] | None,
    ) -> bool:
        """responses.replace_upstream_errors: an upstream 5xx keeps its status, loses its body (a stack
        trace, an SQL error) and its headers but Retry-After; the client gets a generic problem+json."""
        body = await self._read_whole(fwd, conn, _ERROR_BODY_LIMIT)
        self._settle_upstream(ex, conn, pool, pump, clean=body is not None)
        status = conn.status
        headers = [
            (n.decode("latin-1").lower(), v.decode("latin-1"))
            for n, v in conn.headers
            if n.lower() == b"retry-after"
        ]
        return self._refuse(
            fwd,
            ex,
            status,
            "upstream_error",
            "The upstream service failed to handle the request.",
            {"service": fwd.upstream.name, "upstream_status": status},
            headers=[*headers, *fwd.ctx.response_headers],
            event="upstream.error",
        )

    async def _filter_response(
        self,
        fields: Any,
        fwd: Forward,
        ex: Exchange,
        conn: UpstreamConnection,
        pool: UpstreamPool,
        pump: asyncio.Task[None] | None,
    ) -> bool:
        """response_fields: the JSON response is read whole (bounded), filtered and sent with its new
        length. Anything that cannot be filtered is refused (502), never sent as it came."""
        limit, apply = fields
        raw = await self._read_whole(fwd, conn, limit)
        self._settle_upstream(ex, conn, pool, pump, clean=raw is not None)
        out, reason = filter_json(
            raw, apply, status=conn.status, kind=_json_kind(conn), encoded=is_encoded(conn.headers)
        )
        if out is None:
            return self._refuse(
                fwd,
                ex,
                502,
                "response_unfilterable",
                "The upstream's response could not be checked before sending it.",
                {"service": fwd.upstream.name, "stage": reason},
            )
        head, _, keep, _ = self._response_head(fwd, ex, conn, length=len(out))
        self.write_raw(head + out)
        if ex.body.has_body and not ex.body.complete:
            keep = False
            self.drain_on_close = True
        return keep

    def _upstream_head(self, fwd: Forward, ex: Exchange) -> bytes:
        parts = [f"{ex.method} {fwd.target} HTTP/1.1\r\n"]
        for name, value in fwd.headers:
            parts.append(f"{name}: {value}\r\n")
        if fwd.identity is not None:
            parts.append(fwd.identity.lines)  # rendered once, with the principal
        body = ex.body
        if body.cached is not None:
            parts.append(f"content-length: {len(body.cached)}\r\n")
        elif body.chunked:
            parts.append("transfer-encoding: chunked\r\n")
        elif body.declared_length:
            parts.append(f"content-length: {body.declared_length}\r\n")
        elif ex.method in _METHODS_WITH_BODY_SEMANTICS:
            parts.append("content-length: 0\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    def _write_cached_body(self, conn: UpstreamConnection, body: ClientBody) -> None:
        if body.cached:
            conn.write(body.cached)

    async def _pump(self, conn: UpstreamConnection, body: ClientBody) -> None:
        try:
            await self._pump_body(conn, body)
        except BodyError as err:
            # The request side failed (too large, stalled, malformed): stop waiting for a response.
            conn.interrupt(err)
            raise

    async def _pump_body(self, conn: UpstreamConnection, body: ClientBody) -> None:
        chunked = body.chunked
        while (chunk := await body.next_chunk()) is not None:
            if not chunk:
                continue
            if chunked:
                conn.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
            else:
                conn.write(chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")

    def _body_failed(
        self, fwd: Forward, ex: Exchange, err: BodyError, pump: asyncio.Task[None] | None
    ) -> bool:
        if pump is not None:
            pump.cancel()
        if self.closed:
            return False
        self.drain_on_close = not ex.body.complete
        detail = {
            "body_too_large": "The request body is larger than this endpoint accepts.",
            "request_body_timeout": "The request body took too long.",
        }.get(err.code, "The request body is malformed.")
        resp = self.gateway.deny(
            err.status,
            err.code,
            detail=detail,
            method=ex.method,
            path=fwd.req.path,
            source_ip=fwd.req.client_ip,
            request_id=fwd.req.request_id,
            route=fwd.req.route,
            close=True,
        )
        self._write_respond(resp, ex.version, keep_alive=False)
        return False

    def _upstream_failed(
        self, fwd: Forward, ex: Exchange, status: int, code: str, why: str, cause: str | None = None
    ) -> bool:
        if fwd.ctx.undo is not None:
            self.gateway.upstream_failed(fwd.ctx)  # no answer: the sender's retry is not a replay
        detail = (
            "The upstream service did not answer in time."
            if status == 504
            else "The upstream service is unavailable."
        )
        evidence = {"service": fwd.upstream.name, "stage": why}
        if cause:
            evidence["cause"] = cause[:200]
        return self._refuse(fwd, ex, status, code, detail, evidence)

    def _refuse(
        self,
        fwd: Forward,
        ex: Exchange,
        status: int,
        code: str,
        detail: str,
        evidence: dict[str, Any],
        *,
        headers: list[tuple[str, str]] | None = None,
        event: str = "request.denied",
    ) -> bool:
        """Answer a forwarded request with the gateway's own problem+json (severity error: the upstream
        side failed), recorded with the request's fields."""
        req = fwd.req
        resp = self.gateway.deny(
            status,
            code,
            detail=detail,
            method=ex.method,
            path=req.path,
            source_ip=req.client_ip,
            request_id=req.request_id,
            route=req.route,
            headers=headers or (),
            evidence=evidence,
            severity="error",
            head=ex.method == "HEAD",
            event=event,
        )
        return self._respond(resp, ex)

    def _response_head(
        self,
        fwd: Forward,
        ex: Exchange,
        conn: UpstreamConnection,
        length: int | None = None,
        omit_length: bool = False,
    ) -> tuple[bytes, bool, bool, bool]:
        """The response head for the client: (bytes, re-chunked?, keep-alive?, bodyless?). ``length``:
        the gateway rewrote the body (response_fields), and this is its size."""
        status = conn.status
        skip = self.server.response_skip
        nominated = conn.nominated
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        for name, value in conn.headers:
            lname = name.lower()
            if lname in skip or (nominated and lname in nominated):
                continue
            lines.append(name + b": " + value + b"\r\n")
        lines.append(self.server.security_block)
        for name, value in fwd.ctx.response_headers:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(f"x-request-id: {fwd.req.request_id}\r\n".encode("latin-1"))
        bodyless = ex.method == "HEAD" or status in (204, 304)
        # An upstream that answers before the client's body has all arrived (it did not want it): the
        # rest of the body cannot be told from the next request, so the connection ends after this
        # response — said in the head, so the client does not send its next request into a closed socket.
        body_done = ex.body.complete or not ex.body.has_body
        keep = ex.keep_alive and not ex.upgrade and not self.closing and body_done
        chunked_out = False
        if length is not None:
            lines.append(b"content-length: %d\r\n" % length)
        elif omit_length and bodyless:
            pass
        elif conn.content_length is not None and status not in (204, 304):
            lines.append(b"content-length: %d\r\n" % conn.content_length)
        elif not bodyless:
            if ex.version == "1.1":
                lines.append(b"transfer-encoding: chunked\r\n")
                chunked_out = True
            else:
                keep = False  # HTTP/1.0: the end of the connection ends the body
        if not keep:
            lines.append(b"connection: close\r\n")
        elif ex.version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines), chunked_out, keep, bodyless

    async def _relay_response(
        self,
        fwd: Forward,
        ex: Exchange,
        conn: UpstreamConnection,
        pool: UpstreamPool,
        pump: asyncio.Task[None] | None,
        omit_length: bool = False,
    ) -> bool:
        gw = self.gateway
        ex.body.expect_continue = False  # never a "100 Continue" inside a response already under way
        head, chunked_out, keep, bodyless = self._response_head(fwd, ex, conn, omit_length=omit_length)
        # Small responses usually arrive whole: send head and body in one write.
        if conn.message_done and not chunked_out and len(conn._chunks) <= 1:
            first = conn._chunks.popleft() if conn._chunks else b""
            self.write_later(head + first)
            conn._buffered = 0
        else:
            self.write_raw(head)
            clean = False
            try:
                while not self.closed:  # a client that left gets nothing more pulled from the upstream
                    chunk = await conn.read_chunk(fwd.upstream.read_timeout)
                    if chunk is None:
                        clean = True
                        break
                    if bodyless or not chunk:
                        continue
                    if chunked_out:
                        self.write_raw(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    else:
                        self.write_raw(chunk)
                    if self._write_paused:
                        await self.drain()
            except UpstreamError:
                # Headers are out: all we can do is cut the connection so the client sees the truncation.
                gw.emit(
                    "upstream.response_truncated",
                    severity="error",
                    request_id=fwd.req.request_id,
                    route=fwd.req.route.id,
                    method=ex.method,
                    path=fwd.req.path,
                    source_ip=str(fwd.req.client_ip),
                    data={"service": fwd.upstream.name},
                )
            except (ConnectionError, BodyError):
                pass  # the client went away or its request body failed mid-response
            finally:
                if not clean:
                    # Any exit but the end of the message: neither connection can be trusted again.
                    conn.abort()
                    if pump is not None:
                        pump.cancel()
            if not clean:
                return False
            if chunked_out:
                self.write_raw(b"0\r\n\r\n")
        if ex.body.has_body and not ex.body.complete:
            # The rest of the client's body may still be on its way: the close must not answer it
            # with a reset, which can destroy the response before the client has read it.
            keep = False
            self.drain_on_close = True
        # The request side must be finished too before anything is reused.
        if pump is not None:
            if not pump.done():
                # The upstream answered before reading the whole body; neither side can be reused.
                pump.cancel()
                conn.abort()
                return False
            if pump.exception() is not None:
                conn.abort()
                return False
        pool.release(conn)
        return keep


_HOP_BY_HOP_B = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


_ERROR_BODY_LIMIT = 1024 * 1024  # an upstream 5xx body read (and dropped) to reuse the connection


def _json_kind(conn: UpstreamConnection) -> str:
    return json_kind([value for name, value in conn.headers if name.lower() == b"content-type"])


async def _drive(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Finish a coroutine whose first step ran synchronously and suspended on ``yielded``: what a
    Task would have done had it started the coroutine."""
    while True:
        if yielded is None:
            await asyncio.sleep(0)  # a bare yield
        else:
            # The first step ran outside a Task, so the inner ``await fut`` left the future marked as
            # "blocking"; a Task clears that mark before it waits, and so must we, or awaiting it here
            # raises at once and the coroutine resumes with the future still pending.
            if getattr(yielded, "_asyncio_future_blocking", False):
                yielded._asyncio_future_blocking = False
            try:
                await yielded
            except asyncio.CancelledError:
                if not yielded.done():
                    coro.close()
                    raise
            except BaseException:  # noqa: S110 - the coroutine sees the outcome when it resumes
                pass
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _path_only(target: str) -> str:
    return target.partition("?")[0][:512]


class GatewayServer:
    """The listening socket(s), the connections and the upstream pools of one process."""

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway = gateway
        self.loop = loop
        self.connections: set[ClientConnection] = set()
        self.pools: dict[UpstreamSpec, UpstreamPool] = {}
        self.rejected_connections = 0
        self.fast_forwards = 0  # requests forwarded on the callback fast path (tests and /status)
        self.outbox = Outbox(loop)  # whole upstream requests, written together at the end of each turn
        self._listener: socket.socket | None = None
        self._ssl: ssl.SSLContext | None = None
        self._handshakes = 0
        self._max_connections = gateway.limits.max_connections
        # Response-side work done once: headers never relayed, and the security headers as bytes.
        self.response_skip = (
            _HOP_BY_HOP_B | {b"content-length"} | {n.encode("latin-1") for n in gateway.strip_response}
        )
        self.security_block = b"".join(
            f"{name}: {value}\r\n".encode("latin-1") for name, value in gateway.security_headers
        )
        self._idle_event = asyncio.Event()
        self._draining = False

    def pool_for(self, spec: UpstreamSpec) -> UpstreamPool:
        pool = self.pools.get(spec)
        if pool is None:
            pool = self.pools[spec] = UpstreamPool(spec, self.loop)
        return pool

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.gateway.settings.tls
        if tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def start(
        self, host: str | None = None, port: int | None = None, *, reuse_port: bool = False
    ) -> None:
        """Bind and listen. Bastion accepts connections itself (see ``_on_acceptable``)."""
        listen = self.gateway.settings.listen
        host = host if host is not None else listen.host
        port = port if port is not None else listen.port
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._ssl = self.ssl_context()
        self.loop.add_reader(sock.fileno(), self._on_acceptable)

    def _on_acceptable(self) -> None:
        """Accept every pending connection now, up to a batch.

        uvloop's own server accepts roughly one connection per loop iteration while the loop is busy
        with traffic; a burst of new clients then waited seconds in the kernel's accept queue
        (measured: 1,000 simultaneous connections, p99 2.1 s to accept under load, against 27 ms
        with this loop).
        """
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: stop for this round, try again next time
                log.warning("accept failed: %s", exc.strerror or exc)
                return
            if self._ssl is not None and len(self.connections) + self._handshakes >= self._max_connections:
                sock.close()  # a TLS client cannot be told 503 before its handshake: refuse it
                self.rejected_connections += 1
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.loop.create_task(self._attach(sock))

    async def _attach(self, sock: socket.socket) -> None:
        if self._ssl is None:
            try:
                await self.loop.connect_accepted_socket(lambda: ClientConnection(self), sock)
            except (OSError, ConnectionError) as exc:
                log.debug("connection not established: %s", type(exc).__name__)
                sock.close()
            return
        # TLS: the handshake is bounded like a request head, and counted against max_connections.
        self._handshakes += 1
        try:
            await self.loop.connect_accepted_socket(
                lambda: ClientConnection(self),
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self.gateway.timeouts.header,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            # A client that vanished or failed (or stalled) its TLS handshake: nothing to answer.
            log.debug("connection not established: %s", type(exc).__name__)
            sock.close()
        finally:
            self._handshakes -= 1

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def on_connection_idle(self, conn: ClientConnection) -> None:
        # Only shutdown waits for this; checking every connection per request would be O(n).
        if self._draining and (not self.connections or all(not c.busy for c in self.connections)):
            self._idle_event.set()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (with ``Connection: close``), then close."""
        timeout = self.gateway.timeouts.shutdown if timeout is None else timeout
        self._draining = True
        self._stop_listening()
        for conn in list(self.connections):
            conn.closing = True
            if not conn.busy and not conn.exchanges:
                conn._close()
        deadline = self.loop.time() + timeout
        while any(c.busy or c.exchanges for c in self.connections) and self.loop.time() < deadline:
            self._idle_event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.05, max(0.0, deadline - self.loop.time()))):
                    await self._idle_event.wait()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for pool in self.pools.values():
            pool.close()

    def _stop_listening(self) -> None:
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None


async def serve(
    gateway: Gateway,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Future[GatewayServer] | None = None,
    reuse_port: bool = False,
    port: int | None = None,
) -> None:
    """Run the gateway until ``stop`` is set (or SIGTERM/SIGINT), then drain and return."""
    loop = asyncio.get_running_loop()
    server = GatewayServer(gateway, loop)
    await server.start(port=port, reuse_port=reuse_port)
    stop = stop or asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None and not ready.done():
        ready.set_result(server)
    await stop.wait()
    await server.shutdown()
