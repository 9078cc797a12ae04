"""Bodies stream through the gateway in both directions without being buffered, with flat memory.

The gateway runs as its own process (``python -m bastion serve``) so that its peak resident memory
(``VmHWM`` in /proc/PID/status) is the gateway's alone and not the test runner's. Every transfer here
is 200 MB; the gateway's peak may grow by far less than that over its baseline after start-up.

Backpressure is proved with an origin that counts the bytes it managed to send: while a client reads
slowly, the origin's sends must stall (the gateway stopped reading from it) long before the body is
through, and the gateway's memory stays flat meanwhile.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support import EchoUpstream, config_text

from ._dataplane import GatewayProcess, free_port, listen_on, proc_status_kib

SIZE = 200 * 1024 * 1024  # 209715200
BLOCK = os.urandom(1024 * 1024)
MAX_GROWTH_KIB = 60 * 1024  # far less than the 200 MB body


class CountingOrigin(ThreadingHTTPServer):
    """Serves ``/big/N`` (N bytes, Content-Length) and counts how many bytes the kernel accepted."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CountingHandler)
        self.sent = 0
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> CountingOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _CountingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingOrigin

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        size = int(self.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(size))
        self.end_headers()
        block = b"z" * 65536
        left = size
        try:
            while left:
                n = min(len(block), left)
                self.connection.sendall(block[:n])  # blocks when the gateway stops reading
                self.server.sent += n
                left -= n
        except OSError:
            self.close_connection = True
        self.server.finished.set()


class Streaming:
    """The running pieces shared by the tests of this module."""

    def __init__(self, gateway: GatewayProcess, upstream: EchoUpstream, origin: CountingOrigin) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.origin = origin
        self.baseline_hwm = 0

    @property
    def port(self) -> int:
        return self.gateway.port

    def hwm(self) -> int:
        return proc_status_kib(self.gateway.pid, "VmHWM")

    def rss(self) -> int:
        return proc_status_kib(self.gateway.pid, "VmRSS")

    def assert_flat_memory(self) -> None:
        growth = self.hwm() - self.baseline_hwm
        assert growth < MAX_GROWTH_KIB, (
            f"the gateway's peak RSS grew by {growth} KiB over its baseline {self.baseline_hwm} KiB"
        )


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streaming]:
    tmp = tmp_path_factory.mktemp("streaming")
    with EchoUpstream() as upstream, CountingOrigin() as origin:
        port = free_port()
        text = listen_on(config_text(upstream.port, tmp / "bastion.db", admin=False), port)
        text += f"""
  - name: counted
    upstream: http://127.0.0.1:{origin.port}
    routes:
      - path: /big/{{size}}
        methods: [GET]
        auth: none
"""
        cfg = tmp / "bastion.yaml"
        cfg.write_text(text)
        with GatewayProcess(cfg, port) as gw:
            env = Streaming(gw, upstream, origin)
            # Warm up every path once (imports, pools, buffers) so the baseline is the steady state.
            for path in ("/download/100000", "/stream/100000"):
                _download(port, path)
            _upload(port, 100_000, chunked=True)
            _upload(port, 100_000, chunked=False)
            env.baseline_hwm = env.hwm()
            yield env


def _body(total: int) -> Iterator[bytes]:
    """``total`` bytes generated on the fly, 1 MiB at a time."""
    sent = 0
    while sent < total:
        n = min(len(BLOCK), total - sent)
        yield BLOCK[:n] if n < len(BLOCK) else BLOCK
        sent += n


def _digest(total: int) -> str:
    h = hashlib.sha256()
    for part in _body(total):
        h.update(part)
    return h.hexdigest()


def _upload(port: int, total: int, *, chunked: bool) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"content-type": "application/octet-stream"}
        if not chunked:
            headers["content-length"] = str(total)
        # Without Content-Length, http.client sends an iterable body with Transfer-Encoding: chunked.
        conn.request("POST", "/upload", body=_body(total), headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _download(port: int, path: str) -> tuple[int, dict[str, str], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        total = 0
        while part := resp.read(1 << 20):
            total += len(part)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, total
    finally:
        conn.close()


@pytest.mark.slow
class TestUploads:
    def test_chunked_upload_streams_through(self, streaming: Streaming) -> None:
        status, doc = _upload(streaming.port, SIZE, chunked=True)
        assert status == 200
        assert doc["body_bytes"] == SIZE
        assert doc["body_sha256"] == _digest(SIZE)
        assert ["transfer-encoding", "chunked"] in doc["headers"]
        streaming.assert_flat_memory()

    def test_content_length_upload_streams_through(self, streaming: Streaming) -> None:
        status, doc = _upload(streaming.port, SIZE, chunked=False)
        assert status == 200
        assert doc["body_bytes"] == SIZE
        assert doc["body_sha256"] == _digest(SIZE)
        assert ["content-length", str(SIZE)] in doc["headers"]
        streaming.assert_flat_memory()


@pytest.mark.slow
class TestDownloads:
    def test_length_delimited_download_streams_through(self, streaming: Streaming) -> None:
        status, headers, total = _download(streaming.port, f"/download/{SIZE}")
        assert status == 200
        assert headers["content-length"] == str(SIZE)
        assert total == SIZE
        streaming.assert_flat_memory()

    def test_chunked_download_streams_through(self, streaming: Streaming) -> None:
        status, headers, total = _download(streaming.port, f"/stream/{SIZE}")
        assert status == 200
        assert headers.get("transfer-encoding") == "chunked"
        assert total == SIZE
        streaming.assert_flat_memory()


@pytest.mark.slow
class TestBackpressure:
    def test_a_slow_reader_stalls_the_origin_instead_of_filling_the_gateway(
        self, streaming: Streaming
    ) -> None:
        origin = streaming.origin
        origin.sent = 0
        origin.finished.clear()
        rss_before = streaming.rss()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect: no autotuning
            sock.settimeout(30)
            sock.connect(("127.0.0.1", streaming.port))
            sock.sendall(f"GET /big/{SIZE} HTTP/1.1\r\nHost: gateway.test\r\n\r\n".encode())
            received = bytearray()
            while b"\r\n\r\n" not in received or len(received) < 1024 * 1024:
                part = sock.recv(65536)
                assert part, "the gateway closed the download"
                received += part
            head, _, first = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            read = len(first)

            # The client now stops reading. Wait until the origin's sends stall: no progress for a
            # while, bounded. Without backpressure the gateway would pull all 200 MB into memory.
            stalled_at = _wait_for_stall(lambda: origin.sent, quiet=0.5, timeout=20)
            assert not origin.finished.is_set()
            assert stalled_at < 64 * 1024 * 1024, f"the origin got {stalled_at} bytes out to a stalled reader"
            growth = streaming.rss() - rss_before
            assert growth < 30 * 1024, f"the gateway's RSS grew by {growth} KiB; the client read {read} B"

            # Now read the rest: everything arrives, and the origin finishes.
            while read < SIZE:
                part = sock.recv(1 << 20)
                assert part, f"the download ended after {read} of {SIZE} bytes"
                read += len(part)
        assert read == SIZE
        assert origin.finished.wait(10)
        assert origin.sent == SIZE
        streaming.assert_flat_memory()


def _wait_for_stall(value: Any, *, quiet: float, timeout: float) -> int:
    """Poll ``value()`` until it has not changed for ``quiet`` seconds; return it (fail after timeout)."""
    deadline = time.monotonic() + timeout
    last = value()
    since = time.monotonic()
    while True:
        time.sleep(0.05)
        now = time.monotonic()
        current = value()
        if current != last:
            last, since = current, now
        elif now - since >= quiet:
            return int(current)
        if now > deadline:
            raise AssertionError(f"the origin never stalled (sent {current} bytes)")
