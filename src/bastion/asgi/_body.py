"""The request body over ASGI ``receive``: the core ``Body`` port, pulled lazily and bounded.

Nothing is read until a check (a signature, validation) or the application asks. Every chunk is counted
against the route's ``max_body`` as it arrives; a gap longer than ``timeouts.body`` between two chunks is
a stalled client. A check that reads the whole body caches it, and the application then gets the cached
bytes: the body is read from the client once, whoever reads it first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..core.request import BodyReadError

__all__ = ["ReceiveBody"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class ReceiveBody:
    __slots__ = (
        "_cached",
        "_receive",
        "complete",
        "declared_length",
        "error",
        "limit",
        "received",
        "timeout",
    )

    def __init__(self, receive: Receive, declared_length: int | None, has_body: bool, timeout: float) -> None:
        self._receive = receive
        self.declared_length = declared_length
        self.complete = not has_body
        self.timeout = timeout
        self.limit: int | None = None
        self.received = 0
        self.error: BodyReadError | None = None
        self._cached: bytes | None = None

    @property
    def cached(self) -> bytes | None:
        return self._cached

    def cap(self, limit: int) -> None:
        self.limit = limit

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end; raises :class:`BodyReadError`."""
        if self.error is not None:
            raise self.error
        while not self.complete:
            try:
                async with asyncio.timeout(self.timeout):
                    message = await self._receive()
            except TimeoutError:
                raise self._fail(408, "request_body_timeout") from None
            kind = message["type"]
            if kind == "http.disconnect":
                raise self._fail(400, "client_disconnected")
            if kind != "http.request":
                continue
            if not message.get("more_body", False):
                self.complete = True
            chunk = message.get("body", b"")
            if chunk:
                self.received += len(chunk)
                if self.limit is not None and self.received > self.limit:
                    raise self._fail(413, "body_too_large")
                return bytes(chunk)
        return None

    async def read(self) -> bytes:
        """The whole body (bounded by the route's ``max_body``); the application later gets these bytes."""
        if self._cached is None:
            parts = []
            while (chunk := await self.next_chunk()) is not None:
                parts.append(chunk)
            self._cached = b"".join(parts)
        return self._cached

    def arrived(self) -> bytes | None:
        return self._cached  # the body is pulled through ``receive``: only a read one is here

    def _fail(self, status: int, code: str) -> BodyReadError:
        self.complete = True
        self.error = BodyReadError(status, code)
        return self.error
