"""Helpers for the data-plane integration tests (test_proxy, test_streaming, test_lifecycle, test_tls).

* ``RawClient``: one client socket that reads *several* responses in order, parsed by llhttp
  (httptools), so keep-alive, pipelining and framing can be asserted on exact bytes.
* ``GatewayProcess``: ``python -m bastion serve -c FILE`` as a real subprocess on a fixed free port,
  so tests can signal it and read its own memory figures from ``/proc``.
* ``ScriptedUpstream``: an origin whose connection behaviour is chosen per test (close idle keep-alive
  connections, or drop the second request on a connection without answering) — the stale-pool cases
  the echo upstream cannot produce.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httptools

from tests.support import ADMIN_TOKEN

__all__ = [
    "GatewayProcess",
    "RawClient",
    "RawResponse",
    "ScriptedUpstream",
    "free_port",
    "get",
    "listen_on",
    "proc_status_kib",
    "wait_until",
]


def free_port() -> int:
    """A loopback port that was free a moment ago (for processes that need a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(interval)


def proc_status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` figure (VmRSS, VmHWM) from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


# -- a raw client that parses responses ---------------------------------------------------------------


@dataclass
class RawResponse:
    status: int = 0
    version: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    keep_alive: bool = True
    chunked_on_wire: bool = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]


class _ResponseParser:
    """Feeds bytes to llhttp and collects complete responses (interim 1xx responses included)."""

    def __init__(self) -> None:
        self.responses: list[RawResponse] = []
        self._cur: RawResponse | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.head_only = False

    def new_parser(self) -> None:
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def eof(self) -> None:
        # A close-delimited body ends at EOF (RFC 9112 §6.3 rule 8).
        cur = self._cur
        if cur is not None and not cur.complete and cur.status:
            cur.complete = True
            self.responses.append(cur)
            self._cur = None

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._cur = RawResponse()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._cur is not None
        self._cur.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._cur is not None
        self._cur.status = self._parser.get_status_code()
        self._cur.version = self._parser.get_http_version()
        self._cur.keep_alive = self._parser.should_keep_alive()
        self._cur.chunked_on_wire = any(
            n == "transfer-encoding" and "chunked" in v.lower() for n, v in self._cur.headers
        )

    def on_body(self, body: bytes) -> None:
        assert self._cur is not None
        self._cur.body += body

    def on_message_complete(self) -> None:
        assert self._cur is not None
        self._cur.complete = True
        self.responses.append(self._cur)
        self._cur = None


class RawClient:
    """One TCP connection to the gateway; send exact bytes, read parsed responses in order.

    ``head_responses`` tells the parser that the next response answers a HEAD (llhttp cannot know it
    has no body): ``read_head_response`` reads exactly one such response head.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self._parser = _ResponseParser()
        self.closed_by_peer = False
        self.extra = bytearray()  # bytes that arrived after the last response we were asked for

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_peer = True
        return data

    def read_responses(self, count: int) -> list[RawResponse]:
        """Read until ``count`` complete responses (1xx interim ones count) or fail on timeout/EOF."""
        deadline = time.monotonic() + self.timeout
        parser = self._parser
        while len(parser.responses) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(parser.responses)} of {count} responses arrived")
            data = self._recv()
            if not data:
                parser.eof()
                break
            parser.feed(data)
        got, parser.responses = parser.responses[:count], parser.responses[count:]
        if len(got) < count:
            raise AssertionError(f"connection closed after {len(got)} of {count} responses")
        return got

    def read_response(self) -> RawResponse:
        return self.read_responses(1)[0]

    def read_head_response(self) -> RawResponse:
        """One response to HEAD: its head only (plus whatever extra bytes came with it, kept in
        ``extra`` so a test can assert that no body followed)."""
        buf = bytearray()
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in buf:
            if time.monotonic() > deadline:
                raise AssertionError("no complete response head to HEAD")
            data = self._recv()
            if not data:
                raise AssertionError("connection closed before the HEAD response head")
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        resp = RawResponse(status=int(lines[0].split(b" ")[1]), version=lines[0][5:8].decode())
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            resp.headers.append((name.strip().lower(), value.strip()))
        resp.complete = True
        self.extra += rest
        return resp

    def read_until_close(self) -> bytes:
        """Everything until the peer closes (raises if it does not close within the timeout)."""
        out = bytearray(self.extra)
        self.extra.clear()
        deadline = time.monotonic() + self.timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError("the gateway did not close the connection")
            data = self._recv()
            if not data:
                return bytes(out)
            out += data

    def peer_closed_within(self, timeout: float) -> bool:
        """True when the gateway closes this connection (EOF) within ``timeout`` with nothing sent."""
        self.sock.settimeout(timeout)
        try:
            data = self._recv()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            raise AssertionError(f"unexpected bytes instead of a close: {data[:200]!r}")
        return True


def get(path: str, host: str = "gateway.test", extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")


# -- the gateway as a subprocess ----------------------------------------------------------------------


class GatewayProcess:
    """``python -m bastion serve -c FILE [args]``, waited for until it accepts connections.

    The config's ``listen`` must be ``127.0.0.1:{port}``. Stopping sends SIGTERM and waits; a process
    still alive after the bound is killed and the test fails.
    """

    def __init__(
        self,
        config: Path,
        port: int,
        *,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.port = port
        self.args = args
        self.env = {**os.environ, "BASTION_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None
        self._err: Any = None
        self.stderr = b""
        self.stdout = b""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> GatewayProcess:
        # Output goes to files, not pipes: a chatty process must never block on a full pipe.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _collect
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _collect
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bastion", "serve", "-c", str(self.config), "--log-level", "warning",
             *self.args],
            env=self.env,
            stdout=self._out,
            stderr=self._err,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                self._collect()
                raise AssertionError(
                    f"bastion serve exited with {self.proc.returncode} during start-up: "
                    f"{self.stderr.decode(errors='replace')}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError("bastion serve did not accept connections in time") from None
                time.sleep(0.05)
        return self

    def _collect(self) -> None:
        for attr, fh in (("stdout", self._out), ("stderr", self._err)):
            if fh is not None and not fh.closed:
                fh.seek(0)
                setattr(self, attr, fh.read())
                fh.close()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit status (killing and failing past ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float) -> int:
        """The exit status, once the process ends (killing it and failing past ``timeout``)."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"bastion serve did not exit within {timeout}s") from None
        self._collect()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._collect()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                if self.proc.poll() is None:
                    self.terminate()
            finally:
                self.kill()


def listen_on(config: str, port: int) -> str:
    """Turn a ``config_text`` (which listens on port 0) into one on a fixed port."""
    marker = "listen: 127.0.0.1:0\ntrusted_proxies"
    assert marker in config
    return config.replace(marker, f"listen: 127.0.0.1:{port}\ntrusted_proxies", 1)


# -- an upstream with scripted connection behaviour ----------------------------------------------------


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedUpstream

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.served_on_connection = 0

    def _handle(self) -> None:
        srv = self.server
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with srv.lock:
            srv.requests.append((self.command, self.path))
        self.served_on_connection += 1
        if self.path.startswith("/status/"):
            self._bodiless(int(self.path.rsplit("/", 1)[1]))
            return
        if srv.mode == "drop_second" and self.served_on_connection >= 2:
            # The request arrived on a kept-alive connection: close it without a byte of answer, as an
            # origin does when its idle timer fires just as a request comes in.
            with srv.lock:
                srv.dropped += 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if srv.mode == "close_idle":
            # Answered with keep-alive (no Connection: close), then the origin drops the idle connection.
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            with srv.lock:
                srv.idle_closed += 1

    def _bodiless(self, code: int) -> None:
        """A compliant 204 or 304 (RFC 9110 §15.3.5, §15.4.5): no body; a 304 may state the length
        the 200 would have had."""
        self.send_response(code)
        if code == 304:
            self.send_header("etag", '"v1"')
            self.send_header("content-length", "42")
        self.end_headers()

    do_GET = do_POST = do_HEAD = _handle


class ScriptedUpstream(ThreadingHTTPServer):
    """``mode``: ``plain`` (a keep-alive origin), ``close_idle`` (answer, then close the kept-alive
    connection) or ``drop_second`` (answer the first request of each connection; close on the second
    without answering). In every mode ``/status/204`` and ``/status/304`` answer without a body."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.mode = mode
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.connections = 0
        self.dropped = 0
        self.idle_closed = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn = super().get_request()
        with self.lock:
            self.connections += 1
        return conn

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
