"""Upload origin for the large-body rows: reads each request body, throws it away, answers 200.

nginx's `return` may answer before it has read a large body, which turns a 100 MiB upload into a race
between the proxy's send and the origin's response. This origin answers only once the whole body has
arrived and says how many bytes it got (`{"received": N}`), so the harness can check that every byte went
through the proxy. httptools handles Content-Length and chunked framing alike, so a proxy that re-frames a
streamed body is measured fairly. Usage: python sink_origin.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools


class SinkProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.received = 0
        self.expect_continue = False
        self._header_name = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond(400, b'{"error":"bad request"}', keep_alive=False)

    # httptools callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.received = 0
        self.expect_continue = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        # A proxy that forwards `Expect: 100-continue` would otherwise stall until its own timeout.
        if self.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        self._respond(200, b'{"received":%d}' % self.received, keep_alive=self.parser.should_keep_alive())

    def _respond(self, status: int, payload: bytes, *, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = b"OK" if status == 200 else b"Bad Request"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
            status, reason, len(payload))
        if not keep_alive:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + payload)
        if not keep_alive:
            self.transport.close()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # the sink is never the bottleneck; plain asyncio is fine without uvloop
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
