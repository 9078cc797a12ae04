"""Shared helpers for the identity tests that run through a real gateway: the authentication gateway
tests, the OAuth2 server tests and the credential-stuffing run.

A :class:`Stack` is an echo upstream, a gateway on loopback and a connection to its store. Identity
changes go through ``stack.admin()`` (an :class:`IdentityAdmin` wired to reload the gateway's snapshot
before it returns), so a change is in force on the very next request. Events are read from the store;
the writer flushes in batches, so readers poll with a deadline (:func:`wait_for`), never sleep.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

from sqlalchemy import Engine, select

from bastion.core.identity import BASE62, ID_LENGTH, SECRET_LENGTH, format_api_key
from bastion.identity.manage import IdentityAdmin
from bastion.runtime.identity import IdentityRuntime
from bastion.store.database import open_database
from bastion.store.schema import events_table

from ..support import EchoUpstream, GatewayThread, config_text, load_text, request

PEPPER = "test-pepper-0123456789abcdef"  # a test fixture, not a secret
ENV = {"BASTION_PEPPER": PEPPER}
FORM = "application/x-www-form-urlencoded"
# Headers that differ between two otherwise identical responses.
VARYING_HEADERS = frozenset({"x-request-id", "date"})


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def upstream_headers(self) -> dict[str, list[str]]:
        """What the echo upstream received (its response body reports the request it saw)."""
        seen: dict[str, list[str]] = {}
        for name, value in self.json()["headers"]:
            seen.setdefault(name, []).append(value)
        return seen

    def upstream_target(self) -> str:
        return str(self.json()["path"])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)  # a poll interval, not a way to make time pass


@dataclass
class Stack:
    gw: GatewayThread
    upstream: EchoUpstream
    engine: Engine

    @property
    def port(self) -> int:
        return self.gw.port

    @property
    def identity(self) -> IdentityRuntime:
        assert self.gw.running is not None and self.gw.running.gateway is not None
        identity = self.gw.running.gateway.identity
        assert identity is not None
        return identity

    def admin(self, clock: Callable[[], float] | None = None) -> IdentityAdmin:
        """Identity management wired to this gateway; ``clock`` backdates or postdates the changes."""
        adm = self.identity.admin()
        if clock is not None:
            adm.clock = clock
        return adm

    def clear_lockout(self) -> None:
        """Forget failure counts (on the gateway's loop thread, where the limiter lives)."""
        self.gw.call(self.identity.limiter.clear)

    def call(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        return Reply(*request(self.port, method, path, headers=headers, body=body))

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.call("GET", path, headers)

    def post_form(
        self,
        path: str,
        fields: Sequence[tuple[str, str]] | Mapping[str, str] | str,
        headers: Mapping[str, str] | None = None,
        content_type: str = FORM,
    ) -> Reply:
        body = fields if isinstance(fields, str) else urlencode(fields)
        return self.call("POST", path, {"Content-Type": content_type, **(headers or {})}, body.encode())

    # -- events -------------------------------------------------------------------------------------
    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        query = select(events_table).order_by(events_table.c.id)
        if type_ is not None:
            query = query.where(events_table.c.type == type_)
        with self.engine.connect() as conn:
            found = conn.execute(query).mappings().all()
        return [{**r, "data": json.loads(r["data"])} for r in found]

    def wait_event(
        self, type_: str, predicate: Callable[[dict[str, Any]], bool] = lambda e: True
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events(type_) if predicate(e)), None)

        return wait_for(find, what=f"a {type_} event")

    def event_for(self, type_: str, reply: Reply) -> dict[str, Any]:
        """The ``type_`` event of the request that got ``reply`` (matched by request id)."""
        request_id = reply.headers["x-request-id"]
        return self.wait_event(type_, lambda e: e["request_id"] == request_id)

    def all_events_text(self) -> str:
        """Every stored event, every column, as one string: for "this secret is nowhere" checks."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(events_table)).all()
        return "\n".join(repr(tuple(r)) for r in rows)


@contextmanager
def identity_stack(
    tmp: Path,
    routes: str,
    extra: str,
    *,
    trusted_proxies: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    state: str = "memory://",
    database: str | None = None,
) -> Iterator[Stack]:
    tmp.mkdir(parents=True, exist_ok=True)
    with EchoUpstream() as upstream:
        text = config_text(upstream.port, tmp / "bastion.db", routes=routes, extra=extra)
        if database is not None:
            text = text.replace(f"database: sqlite:///{tmp / 'bastion.db'}", f"database: {database}")
        if state != "memory://" and "state_prefix" not in state:  # a namespace of its own on the shared Redis
            state += f"\n  state_prefix: test-{secrets.token_hex(6)}"
        text = text.replace("state: memory://", f"state: {state}")
        if trusted_proxies:
            text = text.replace("trusted_proxies: []", f"trusted_proxies: [{', '.join(trusted_proxies)}]")
        loaded = load_text(text, env={**ENV, **(env or {})})
        with GatewayThread(loaded) as gw:
            engine = open_database(loaded.settings.storage.database, migrate_schema=False)
            try:
                yield Stack(gw, upstream, engine)
            finally:
                engine.dispose()


# -- credentials --------------------------------------------------------------------------------------


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def random_key(public_id: str | None = None) -> str:
    """A well-formed key (valid checksum) that Bastion never issued, or a wrong secret for ``public_id``."""
    return format_api_key(public_id or random_base62(ID_LENGTH), random_base62(SECRET_LENGTH))


def key_id(key: str) -> str:
    return key[4 : 4 + ID_LENGTH]


def key_secret(key: str) -> str:
    return key[5 + ID_LENGTH : 5 + ID_LENGTH + SECRET_LENGTH]


def bad_checksum(key: str) -> str:
    last = key[-1]
    return key[:-1] + ("A" if last != "A" else "B")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, for looking at a token Bastion issued (not for trusting it)."""
    head, payload, _sig = token.split(".")

    def decode(part: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    return decode(head), decode(payload)


# -- a JWKS endpoint for an external issuer -----------------------------------------------------------


class _JwksHandler(BaseHTTPRequestHandler):
    server: JwksServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.fetches += 1
        if self.path != "/jwks.json":
            self.send_error(404)
            return
        body = json.dumps(self.server.document).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class JwksServer(ThreadingHTTPServer):
    """An identity provider's JWKS on 127.0.0.1: serves ``document`` at ``/jwks.json``."""

    daemon_threads = True

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        self.document = document
        self.fetches = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
