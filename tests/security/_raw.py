"""Raw-socket helpers for the attack tests: exact bytes in, parsed responses (and the close) out.

The attack tests must see what a client sees on the wire, not what a forgiving HTTP client library
makes of it, so everything here speaks bytes. Responses are parsed with a deliberately small, strict
reader: Content-Length or chunked framing only (the gateway never sends anything else to HTTP/1.1).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import EchoUpstream, GatewayThread, _Handler, config_text, load_text

__all__ = [
    "HOP_BY_HOP_RESPONSE",
    "Outcome",
    "RawResponse",
    "RecordingUpstream",
    "exchange",
    "gateway_with",
    "open_conn",
    "parse_responses",
    "read_responses",
    "wait_closed",
    "wait_until",
]


class _RecordingHandler(_Handler):
    """The echo handler, plus a record of every request whose body arrived *complete*."""

    server: RecordingUpstream

    def _read_body(self) -> tuple[int, str]:
        length, sha = super()._read_body()
        self.server.completed.append((self.command, self.path, length, sha))
        return length, sha


    def _handle(self) -> None:
        if self.path.startswith("/hop-headers"):
            # An upstream that sends every hop-by-hop response field, plus one it nominates itself.
            self.server.requests.append((self.command, self.path, list(self.headers.items())))
            body = b'{"ok": true}'
            self.send_response(200)
            for name, value in HOP_BY_HOP_RESPONSE:
                self.send_header(name, value)
            self.send_header("x-powered-by", "pytest")
            self.send_header("x-end-to-end", "kept")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        super()._handle()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


# Hop-by-hop response fields a compliant proxy must not relay (RFC 9110 §7.6.1), as /hop-headers sends them.
HOP_BY_HOP_RESPONSE = (
    ("connection", "keep-alive, X-Nominated-Private"),
    ("keep-alive", "timeout=5, max=100"),
    ("proxy-connection", "keep-alive"),
    ("proxy-authenticate", "Basic realm=upstream"),
    ("trailer", "X-Checksum"),
    ("upgrade", "h2c"),
    ("te", "trailers"),
    ("x-nominated-private", "internal"),
)


class RecordingUpstream(EchoUpstream):
    """``EchoUpstream`` that also tells a request head it saw from a request it received in full.

    ``requests`` is appended when a head arrives (the gateway streams bodies, so a head can reach the
    upstream before the body turns out bad); ``completed`` only when the whole body was read, so "the
    upstream never saw a complete request" is ``completed`` staying unchanged. A handler that dies on a
    truncated body is counted in ``errors`` instead of printing a traceback.
    """

    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _RecordingHandler
        self.completed: list[tuple[str, str, int, str]] = []
        self.errors = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors += 1


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def has(self, name: str) -> bool:
        return self.header(name) is not None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        """The problem+json ``code`` (None when the body is not a problem document)."""
        if not (self.header("content-type") or "").startswith("application/problem+json"):
            return None
        return self.json().get("code")


@dataclass
class Outcome:
    """Everything the gateway sent on one connection, and whether it closed the connection."""

    responses: list[RawResponse]
    closed: bool
    raw: bytes = b""
    leftover: bytes = field(default=b"")

    @property
    def first(self) -> RawResponse:
        assert self.responses, f"no response at all; raw bytes: {self.raw[:300]!r}"
        return self.responses[0]


class Incomplete(Exception):
    """The buffer does not (yet) hold a whole response."""


def _parse_one(buf: bytes, *, head_only: bool = False) -> tuple[RawResponse, bytes]:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete
    head, rest = buf[:end], buf[end + 4 :]
    lines = head.split(b"\r\n")
    proto, _, tail = lines[0].partition(b" ")
    assert proto in (b"HTTP/1.1", b"HTTP/1.0"), f"not an HTTP/1 status line: {lines[0]!r}"
    code_s, _, reason = tail.partition(b" ")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        assert sep, f"malformed response header line {line!r}"
        headers.append((name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()))
    status = int(code_s)
    resp = RawResponse(status, reason.decode("latin-1"), headers, b"", head)
    if head_only or status in (204, 304) or 100 <= status < 200:
        return resp, rest
    te = resp.header("transfer-encoding")
    cl = resp.header("content-length")
    if te is not None:
        assert te.lower() == "chunked", te
        body = bytearray()
        while True:
            line_end = rest.find(b"\r\n")
            if line_end < 0:
                raise Incomplete
            size = int(rest[:line_end].split(b";")[0], 16)
            if len(rest) < line_end + 2 + size + 2:
                raise Incomplete
            body += rest[line_end + 2 : line_end + 2 + size]
            rest = rest[line_end + 2 + size + 2 :]
            if size == 0:
                break
        resp.body = bytes(body)
        return resp, rest
    if cl is not None:
        n = int(cl)
        if len(rest) < n:
            raise Incomplete
        resp.body = rest[:n]
        return resp, rest[n:]
    # close-delimited: everything that is left
    resp.body = rest
    return resp, b""


def parse_responses(raw: bytes, *, head_methods: int = 0) -> tuple[list[RawResponse], bytes]:
    """Split ``raw`` into complete responses; returns them and the unparsed remainder.

    ``head_methods``: how many of the leading responses answer HEAD (no body despite Content-Length).
    """
    out: list[RawResponse] = []
    buf = raw
    while buf:
        try:
            resp, buf = _parse_one(buf, head_only=len(out) < head_methods)
        except Incomplete:
            break
        if 100 <= resp.status < 200:
            continue  # 100 Continue is not a final response
        out.append(resp)
    return out, buf


def open_conn(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_responses(
    sock: socket.socket, count: int, *, timeout: float = 5.0, head_methods: int = 0
) -> Outcome:
    """Read until ``count`` complete responses arrived, or the peer closed, or ``timeout``."""
    buf = b""
    deadline = time.monotonic() + timeout
    closed = False
    while time.monotonic() < deadline:
        resps, _ = parse_responses(buf, head_methods=head_methods)
        if len(resps) >= count:
            break
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            part = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not part:
            closed = True
            break
        buf += part
    resps, rest = parse_responses(buf, head_methods=head_methods)
    return Outcome(resps, closed, buf, rest)


def wait_closed(sock: socket.socket, timeout: float = 3.0) -> tuple[bool, bytes]:
    """Whether the peer closes within ``timeout`` (True) and any bytes it still sent first."""
    deadline = time.monotonic() + timeout
    got = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            part = sock.recv(65536)
        except TimeoutError:
            return False, got
        except ConnectionResetError:
            return True, got
        if not part:
            return True, got
        got += part
    return False, got


def exchange(port: int, data: bytes, *, expect: int = 1, timeout: float = 5.0, close_wait: float = 2.0,
             head_methods: int = 0) -> Outcome:
    """Send ``data`` on a fresh connection; collect ``expect`` responses, then see if the gateway closes.

    After the expected responses the connection is watched for ``close_wait`` more seconds: anything
    sent in that time (say, the answer to a smuggled request) is parsed too, and ``closed`` says whether
    the gateway hung up.
    """
    with open_conn(port, timeout) as sock:
        sock.sendall(data)
        out = read_responses(sock, expect, timeout=timeout, head_methods=head_methods)
        if not out.closed:
            closed, more = wait_closed(sock, close_wait)
            if more:
                resps, rest = parse_responses(out.leftover + more)
                out.responses.extend(resps)
                out.leftover = rest
                out.raw += more
            out.closed = closed
        return out


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout``; a bounded wait for an observable effect."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@contextlib.contextmanager
def gateway_with(upstream: EchoUpstream, tmp_path: Path, **config: Any) -> Iterator[GatewayThread]:
    """A real gateway in front of ``upstream`` with a custom config (see ``tests.support.config_text``)."""
    loaded = load_text(config_text(upstream.port, tmp_path / "bastion.db", **config))
    with GatewayThread(loaded) as gw:
        yield gw
