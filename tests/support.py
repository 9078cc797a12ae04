"""Test support: a real upstream, a real gateway in a background thread, raw-socket clients.

Everything listens on 127.0.0.1 with port 0 (the OS picks), so tests run in parallel safely and never
leave loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bastion.adapters.serve import Running, _new_loop, run_process
from bastion.config.loader import LoadedConfig, load_config_text

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # a test fixture, not a secret


# -- the upstream ---------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes; don't let Nagle delay the body
    server: EchoUpstream

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        total = 0
        te = self.headers.get("transfer-encoding", "")
        if te.lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    part = self.rfile.read(min(left, 1 << 16))
                    if not part:
                        raise ConnectionError("short chunk")
                    digest.update(part)
                    total += len(part)
                    left -= len(part)
                self.rfile.readline()
        else:
            left = int(self.headers.get("content-length") or 0)
            while left:
                part = self.rfile.read(min(left, 1 << 16))
                if not part:
                    raise ConnectionError("short body")
                digest.update(part)
                total += len(part)
                left -= len(part)
        return total, digest.hexdigest()

    def _handle(self) -> None:
        srv = self.server
        srv.requests.append((self.command, self.path, list(self.headers.items())))
        path = self.path.split("?", 1)[0]
        if path.startswith("/slow/"):
            time.sleep(float(path.rsplit("/", 1)[1]))
        if path == "/close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if path.startswith("/download/"):
            size = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(size))
            self.send_header("server", "echo-upstream/9.9")
            self.end_headers()
            block = b"x" * 65536
            sent = 0
            while sent < size and self.command != "HEAD":
                n = min(len(block), size - sent)
                self.wfile.write(block[:n])
                sent += n
            return
        if path.startswith("/stream/"):
            size = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < size:
                n = min(16384, size - sent)
                self.wfile.write(b"%x\r\n" % n + b"y" * n + b"\r\n")
                sent += n
            self.wfile.write(b"0\r\n\r\n")
            return
        if path.startswith("/fixture/"):
            # Exactly the status, headers and body a test put in ``server.fixtures`` (no Server/Date
            # added). With transfer-encoding among the headers the body goes out in 7-byte chunks;
            # otherwise a content-length is added unless the test gave one.
            self._read_body()
            status, headers, body = srv.fixtures.get(
                path, (404, [("content-type", "application/json")], b'{"fixture": "missing"}')
            )
            chunked = any(n.lower() == "transfer-encoding" for n, _ in headers)
            self.send_response_only(status)
            for name, value in headers:
                self.send_header(name, value)
            if not chunked and not any(n.lower() == "content-length" for n, _ in headers):
                self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD" or status in (204, 304):
                return
            if chunked:
                for start in range(0, len(body), 7):
                    part = body[start : start + 7]
                    self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(body)
            return
        length, sha = self._read_body()
        status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        doc = {
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body_bytes": length,
            "body_sha256": sha,
        }
        body = json.dumps(doc).encode() if status not in (204, 304) else b""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("server", "echo-upstream/9.9")
        self.send_header("x-powered-by", "pytest")
        self.send_header("connection", "keep-alive, x-upstream-private")
        self.send_header("x-upstream-private", "hop-by-hop by nomination")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):  # RFC 9110 §15.3.5, §15.4.5: no body
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class EchoUpstream(ThreadingHTTPServer):
    """A real HTTP/1.1 origin on loopback that reports what it received."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.connections = 0
        # /fixture/NAME → (status, headers, body), served verbatim by _Handler._handle
        self.fixtures: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn = super().get_request()
        self.connections += 1
        return conn

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> EchoUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


# -- configs -----------------------------------------------------------------------------------------

# The three routes of examples/quickstart.yaml, indented for a service's ``routes:`` list.
QUICKSTART_ROUTES = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: none
      - path: /v1/orders
        methods: [GET, POST]
        auth: none
        max_body: 16KiB
        ip_allow: [127.0.0.0/8]
      - path: /public/{rest:path}
        methods: [GET]
        auth: none
        ip_deny: [10.0.0.0/8]
"""

def config_text(upstream_port: int, db: Path, *, extra: str = "", routes: str | None = None,
                service_extra: str = "", admin: bool = True) -> str:
    """A config like examples/quickstart.yaml on port 0, pointed at ``upstream_port``."""
    routes = routes if routes is not None else QUICKSTART_ROUTES + """
      - path: /upload
        methods: [POST, PUT]
        auth: none
        max_body: 300MiB
      - path: /download/{size}
        methods: [GET]
        auth: none
      - path: /stream/{size}
        methods: [GET]
        auth: none
      - path: /slow/{secs}
        methods: [GET]
        auth: none
      - path: /close
        methods: [GET]
        auth: none
      - path: /status/{code}
        methods: [GET, POST]
        auth: none
"""
    admin_block = """
admin:
  listen: 127.0.0.1:0
  token: ${env:BASTION_ADMIN_TOKEN}
  allow_ips: [127.0.0.1/32, ::1/128]
""" if admin else ""
    return f"""
listen: 127.0.0.1:0
trusted_proxies: []
limits: {{max_body: 1MiB, max_header_bytes: 16KiB, max_headers: 100, max_url: 8KiB}}
{admin_block}
storage:
  database: sqlite:///{db}
  state: memory://
{extra}
services:
  - name: orders
    upstream: http://127.0.0.1:{upstream_port}
{service_extra}
    routes:
{routes}
"""


def load_text(text: str, env: Mapping[str, str] | None = None) -> LoadedConfig:
    return load_config_text(text, source="test.yaml", env={"BASTION_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})})


# -- the gateway in a thread ----------------------------------------------------------------------------

class GatewayThread:
    """Runs ``run_process`` (the same code as ``bastion serve``) on its own event loop thread."""

    def __init__(self, loaded: LoadedConfig, *, freeze_heap: bool = False) -> None:
        self.loaded = loaded
        self.freeze_heap = freeze_heap
        self.running: Running | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        loop = self._loop = _new_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()

            def ready(running: Running) -> None:
                self.running = running
                self._ready.set()

            await run_process(self.loaded, stop=self._stop, on_ready=ready, freeze_heap=self.freeze_heap)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    def start(self) -> GatewayThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("gateway did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 15) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("gateway did not stop")

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the gateway's loop thread and return its result."""
        assert self._loop is not None
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:
                box["error"] = exc
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        if "error" in box:
            raise box["error"]
        return box.get("value")

    @property
    def port(self) -> int:
        assert self.running is not None and self.running.port is not None
        return self.running.port

    @property
    def admin_port(self) -> int:
        assert self.running is not None and self.running.admin_port is not None
        return self.running.admin_port

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- clients ------------------------------------------------------------------------------------------

def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send exact bytes, return everything the gateway sends back until it closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                part = sock.recv(65536)
            except TimeoutError:
                break
            if not part:
                break
            chunks.append(part)
            if not read_until_close:
                break
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    line = raw.split(b"\r\n", 1)[0]
    return int(line.split(b" ")[1]) if line.startswith(b"HTTP/1.") else 0


def request(port: int, method: str, path: str, *, headers: Mapping[str, str] | None = None,
            body: bytes | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


# -- a scratch database on the real PostgreSQL ------------------------------------------------------------

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextlib.contextmanager
def scratch_postgres(prefix: str = "bastion_test") -> Iterator[Any]:
    """An engine on a new database of the local PostgreSQL, migrated to this Bastion's schema; dropped
    afterwards. Fails (never skips) when PostgreSQL is not running."""
    import secrets

    import psycopg
    import pytest

    from bastion.store.database import migrate, open_database

    name = f"{prefix}_{secrets.token_hex(5)}"
    try:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432 (bash .ci/run starts it): {exc}")
    engine = open_database(f"postgresql://postgres@127.0.0.1:5432/{name}", migrate_schema=False)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
