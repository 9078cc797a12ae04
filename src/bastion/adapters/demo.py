"""``bastion demo``: a bundled demo upstream plus the gateway running examples/quickstart.yaml on the
embedded defaults, with requests to try — allowed ones and denied ones."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from ..config.loader import load_config_text

__all__ = ["DemoUpstream", "run_demo"]


class DemoUpstream(asyncio.Protocol):
    """A tiny HTTP/1.1 origin: answers every request with JSON describing what it received, so you can
    see what the gateway forwarded (canonical path, X-Forwarded-*, X-Request-Id, no hop-by-hop)."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._headers: list[tuple[str, str]] = []
        self._url = b""
        self._body = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport:
                self.transport.close()

    def on_message_begin(self) -> None:
        self._headers, self._url, self._body = [], b"", 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += len(body)

    def on_message_complete(self) -> None:
        shown = {
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
            "host",
            "x-bastion-consumer",
            "x-bastion-scopes",
        }
        auth = next((v for k, v in self._headers if k == "authorization"), None)
        doc = {
            "service": "demo-orders",
            "method": self.parser.get_method().decode(),
            "path": self._url.decode("latin-1"),
            "body_bytes": self._body,
            "headers": {k: v for k, v in self._headers if k in shown},
        }
        if auth is not None:  # what a provider behind an egress route receives (shortened)
            doc["authorization"] = auth[:14] + "…"
        body = json.dumps(doc, indent=2).encode() + b"\n"
        head = (
            f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "server: demo-origin/1.0\r\n\r\n"
        ).encode()
        if self.transport:
            self.transport.write(head + body)


def _quickstart_text() -> str:
    return resources.files("bastion.demo").joinpath("quickstart.yaml").read_text(encoding="utf-8")


def run_demo(*, port: int, admin_port: int, upstream_port: int, duration: float = 0.0) -> None:
    from .serve import Running, _new_loop, run_process

    workdir = Path(tempfile.mkdtemp(prefix="bastion-demo-"))
    token = os.environ.get("BASTION_ADMIN_TOKEN") or secrets.token_urlsafe(32)
    # A pepper for this demo's throwaway database only; a real deployment keeps its own in a secret store.
    twilio_token = secrets.token_hex(16)  # a demo "Twilio Auth Token" to sign a webhook with
    env = {
        **os.environ,
        "BASTION_ADMIN_TOKEN": token,
        "BASTION_PEPPER": secrets.token_urlsafe(32),
        "DEMO_TWILIO_TOKEN": twilio_token,
        "DEMO_PROVIDER_SECRET": secrets.token_urlsafe(24),  # the "provider" credential only Bastion holds
    }
    text = (
        _quickstart_text()
        .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        .replace("127.0.0.1:8081", f"127.0.0.1:{admin_port}")
        .replace("127.0.0.1:9000", f"127.0.0.1:{upstream_port}")
        .replace("sqlite:///bastion.db", f"sqlite:///{workdir / 'bastion.db'}")
        .replace("\nservices:\n", f"\n{_DEMO_IDENTITY}services:\n")
    ) + _DEMO_ROUTE + _DEMO_EGRESS.replace("127.0.0.1:9000", f"127.0.0.1:{upstream_port}")
    config_file = workdir / "bastion.yaml"
    config_file.write_text(text, encoding="utf-8")
    loaded = load_config_text(text, source=str(config_file), env=env)

    loop = _new_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        upstream = await loop.create_server(DemoUpstream, "127.0.0.1", upstream_port)
        stop = asyncio.Event()

        def ready(running: Running) -> None:
            assert running.gateway is not None and running.gateway.identity is not None
            admin = running.gateway.identity.admin()
            admin.create_consumer("demo-app", ["account:read"], actor="system:demo")
            _, key = admin.create_key("demo-app", ttl=86400.0, name="demo", actor="system:demo")
            print(_instructions(port, admin_port, token, config_file, key, twilio_token), flush=True)
            if duration:
                loop.call_later(duration, stop.set)

        try:
            await run_process(loaded, stop=stop, on_ready=ready)
        finally:
            upstream.close()

    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:  # pragma: no cover - interactive
        pass
    finally:
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)


_DEMO_IDENTITY = """identity:
  pepper: ${env:BASTION_PEPPER}
"""
_DEMO_ROUTE = """      - path: /v1/account
        methods: [GET]
        auth: [api_key]
        scopes: [account:read]
      - path: /hooks/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          auth_tokens: [${env:DEMO_TWILIO_TOKEN}]
"""
# The demo origin stands in for an SMS provider too: the egress route injects the provider credential.
_DEMO_EGRESS = """egress:
  - name: sms
    listen_path: /egress/sms
    target: http://127.0.0.1:9000
    callers: [demo-app]
    credentials:
      basic: {username: ACdemo, password: ${env:DEMO_PROVIDER_SECRET}}
    allow:
      - {method: POST, path: "/2010-04-01/Accounts/{account}/Messages.json"}
    deny:
      - {method: POST, path: "/2010-04-01/Accounts/{account}/Calls.json"}
    geo: {fields: [To], allow_countries: [US, CA, GB]}
"""
_DEMO_WEBHOOK_BODY = "From=%2B15551234567&Body=hello"
_DEMO_SMS = "/egress/sms/2010-04-01/Accounts/ACdemo"


def _altered(key: str) -> str:
    """The key with its last character changed: a wrong key to try."""
    return key[:-1] + ("x" if key[-1] != "x" else "y")


def _instructions(
    port: int, admin_port: int, token: str, config_file: Path, key: str, twilio_token: str
) -> str:
    from urllib.parse import parse_qs

    from ..checks.twilio_signature import twilio_signature

    g = f"http://127.0.0.1:{port}"
    signature = twilio_signature(twilio_token.encode(), f"{g}/hooks/sms", parse_qs(_DEMO_WEBHOOK_BODY))
    form = f"-H 'Content-Type: application/x-www-form-urlencoded' -H 'X-Twilio-Signature: {signature}'"
    return f"""
Bastion demo is running.
  gateway  {g}   (config: {config_file})
  admin    http://127.0.0.1:{admin_port}/admin/v1   token: {token}
  upstream a demo origin on 127.0.0.1, reached only through the gateway

Allowed:
  curl -i {g}/v1/orders/42
  curl -i {g}/v1/orders
  curl -i -X POST -H 'content-type: application/json' -d '{{"item":"book"}}' {g}/v1/orders
  curl -i {g}/public/docs/readme.txt
  curl -i -H 'X-API-Key: {key}' {g}/v1/account
        # an API key of consumer demo-app (scope account:read); the origin sees X-Bastion-Consumer
  curl -i {form} \\
       -d '{_DEMO_WEBHOOK_BODY}' {g}/hooks/sms
        # a Twilio webhook, signed as Twilio signs it (the demo's auth token: {twilio_token})
  curl -i -u 'demo-app:{key}' -d To=+14155552671 -d Body=hi {g}{_DEMO_SMS}/Messages.json
        # egress: your Bastion key in, the provider's credential out (see "authorization")

Denied (each one is an event):
  curl -i {g}/v1/account                                        # 401 auth_required
  curl -i -H 'X-API-Key: {_altered(key)}' {g}/v1/account   # 401 auth_invalid
  curl -i {form} \\
       -d '{_DEMO_WEBHOOK_BODY.replace("hello", "HELLO")}' {g}/hooks/sms
        # 403 webhook_signature_invalid: the same signature, a tampered body
  curl -i -u 'demo-app:{key}' -d To=+33612345678 -d Body=hi {g}{_DEMO_SMS}/Messages.json
        # 403 egress_geo_blocked: France is not an allowed destination
  curl -i -u 'demo-app:{key}' -d To=+14155552671 {g}{_DEMO_SMS}/Calls.json
        # 403 egress_operation_denied: only sending messages is allowed
  curl -i "{g}/v1/orders?q=1%27%20OR%20%271%27%3D%271"        # 403 attack_detected (inspect: block)
  curl -i -X DELETE {g}/v1/orders/42                           # 405 method_not_allowed
  curl -i {g}/admin                                             # 404 route_not_found (deny by default)
  curl -i --path-as-is '{g}/public/..%2f..%2fetc/passwd'        # 400 path_encoded_slash
  curl -i --path-as-is '{g}/public/%252e%252e/secret'           # 400 path_double_encoding
  curl -i --path-as-is '{g}/v1/orders/42;jsessionid=x'          # 400 path_parameter
  head -c 20000 /dev/zero | curl -i -X POST --data-binary @- {g}/v1/orders   # 413 body_too_large
  curl -i -H 'Content-Length: 5' -H 'Transfer-Encoding: chunked' -d x {g}/v1/orders  # 400 (smuggling shape)

Ignored, not believed (the client is not a trusted proxy):
  curl -s -H 'X-Forwarded-For: 10.9.9.9' {g}/public/x          # forwarded as your real address

Manage keys through the admin API (or `bastion keys --help` with your own config):
  curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:{admin_port}/admin/v1/keys
  curl -s -H 'Authorization: Bearer {token}' -H 'content-type: application/json' \\
       -d '{{"consumer": "demo-app", "ttl": "1h"}}' http://127.0.0.1:{admin_port}/admin/v1/keys

The event log:
  curl -s -H 'Authorization: Bearer {token}' 'http://127.0.0.1:{admin_port}/admin/v1/events?type=request.'
  BASTION_ADMIN_TOKEN={token} bastion events -c {config_file} --since 10m
  BASTION_ADMIN_TOKEN={token} bastion events -c {config_file} --follow    # live
  BASTION_ADMIN_TOKEN={token} bastion events verify -c {config_file}      # the hash chains

Metrics (Prometheus) and a report:
  curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:{admin_port}/metrics | grep ^bastion_denied
  BASTION_ADMIN_TOKEN={token} bastion report -c {config_file} --since 1h --format md

Press Ctrl-C to stop.
"""
