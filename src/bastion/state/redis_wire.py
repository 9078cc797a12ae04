"""One pipelined connection to Redis, built for the request path.

A general client (redis-py's asyncio client) costs a few hundred microseconds of CPU per command here: a
pool checkout, a stream reader, a task for its timeout. A rate-limited request pays one command, so that
cost is the request's cost. This connection does what the request path needs and nothing else:

* **Pipelined.** Every caller writes its command to the one connection and waits on a future; the replies
  come back in order (Redis answers one connection's commands in order), so the n-th reply belongs to the
  n-th waiting future. Commands issued in the same event-loop iteration leave in one ``write``.
* **Parsed by hiredis** (Redis's own reply parser, in C): no RESP parsing of our own.
* **Bounded.** A call that is not answered within ``timeout`` fails; the connection it was on is then
  closed (every other caller on it fails too), because a late reply must never be read as the answer to
  a later command. The next call opens a new connection. Connecting is bounded by the same timeout.

It speaks RESP2, with ``AUTH`` and ``SELECT`` answered before the connection takes a command, and TLS for
``rediss://``.
Errors (a Redis error reply, a closed or stuck connection, a reply that does not parse) are raised as
:class:`WireError`; :class:`bastion.state.redis.RedisState` turns them into ``StateUnavailable``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any

import hiredis

from ..core.urls import RedisTarget

__all__ = ["Connection", "Script", "WireError", "connect", "pack"]


class WireError(Exception):
    """The command got no usable answer. The message names the reason, never a key or a value."""


class Script:
    """A Lua script, called by its SHA-1 (``EVALSHA``) and sent in full only when the server lacks it."""

    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body, usedforsecurity=False).hexdigest().encode()


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = hiredis.Reader()
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._flushing = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.close("reply does not parse")
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.close("unexpected reply")
                return
            future = pending.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection closed")

    # -- commands --------------------------------------------------------------------------------------
    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (a hiredis ``ReplyError`` for an error)."""
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.closed:
            future.set_exception(WireError("connection closed"))
            return future
        self._pending.append(future)
        self._out.append(packed)
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)
        return future

    async def call(self, packed: bytes) -> Any:
        """Send and wait at most ``timeout``; a timeout closes the connection (see the module docstring)."""
        future = self.send(packed)
        timer = self.loop.call_later(self.timeout, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            future.set_exception(TimeoutError())
            self.close("timeout")

    def _flush(self) -> None:
        self._flushing = False
        if self._out and not self.closed and self.transport is not None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self.transport.write(data)

    def close(self, reason: str) -> None:
        self._fail(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, reason: str) -> None:
        self.closed = True
        self._out.clear()
        pending, self._pending = self._pending, deque()
        for future in pending:
            if not future.done():
                future.set_exception(WireError(reason))


async def connect(target: RedisTarget, timeout: float) -> Connection:
    """Open a connection and run the handshake (``AUTH``, ``SELECT``); bounded by ``timeout`` per step."""
    loop = asyncio.get_running_loop()
    context = None
    if target.tls:
        context = ssl.create_default_context(cafile=target.ca_file)
        if not target.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    _, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: Connection(loop, timeout),
            target.host,
            target.port,
            ssl=context,
            server_hostname=target.host if context else None,
        ),
        timeout,
    )
    handshake: list[tuple[Any, ...]] = []
    if target.password is not None:
        handshake.append(
            ("AUTH", target.username, target.password) if target.username else ("AUTH", target.password)
        )
    if target.db:
        handshake.append(("SELECT", target.db))
    try:
        for command in handshake:  # awaited: no command may run before the right user and database
            if isinstance(await conn.call(pack(command)), hiredis.ReplyError):
                raise WireError("handshake refused")
    except BaseException:
        conn.close("handshake failed")
        raise
    return conn
