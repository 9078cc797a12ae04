"""A local stand-in for api.twilio.com, on loopback, for the egress tests.

It records every request it receives, requires HTTP Basic with the account's API key (401 otherwise,
like Twilio's error 20003) and, when given a public key, a valid ``Twilio-Client-Validation`` token:
the signature checked with PyJWT and ``rqh`` recomputed with the Twilio SDK's own canonicaliser
(``twilio.jwt.validation.ClientValidationJwt``) — implementations independent of Bastion's.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt as pyjwt
from twilio.http.validation_client import ValidationPayload
from twilio.jwt.validation import ClientValidationJwt

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
API_KEY_SID = "SK" + "fedcba9876543210" * 2
API_KEY_SECRET = "provider-secret-" + "x" * 16  # a test fixture: the credential the application never holds
CREDENTIAL_SID = "CR" + "00112233445566778899aabbccddeeff"


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    pkcv: str = ""  # "valid", "missing" or why it is not valid

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class _State:
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rqh(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> str:
    payload = ValidationPayload(
        method=method,
        path=path,
        query_string=query,
        all_headers=headers,
        signed_headers=["authorization", "host"],
        body=body.decode() if body else "",
    )
    claims = ClientValidationJwt(
        ACCOUNT_SID, API_KEY_SID, CREDENTIAL_SID, "unused", payload
    )._generate_payload()
    return str(claims["rqh"])


class _Handler(BaseHTTPRequestHandler):
    server: FakeTwilio
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return None

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        got = Received(self.command, parts.path, parts.query, headers, body)
        got.pkcv = self.server.check_pkcv(got)
        with self.server.state.lock:
            self.server.state.received.append(got)
        expected = "Basic " + base64.b64encode(f"{API_KEY_SID}:{API_KEY_SECRET}".encode()).decode()
        if headers.get("authorization") != expected:
            return self._send(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if self.server.public_key is not None and got.pkcv != "valid":
            return self._send(403, {"code": 70156, "message": got.pkcv, "status": 403})
        if parts.path.endswith("/Messages.json") and self.command == "POST":
            form = got.form()
            sid = "SM" + secrets.token_hex(16)
            return self._send(
                201,
                {
                    "sid": sid,
                    "account_sid": ACCOUNT_SID,
                    "to": form.get("To"),
                    "from": form.get("From"),
                    "body": form.get("Body"),
                    "status": "queued",
                },
            )
        if parts.path.endswith("/Calls.json"):
            return self._send(201, {"sid": "CA" + secrets.token_hex(16), "status": "queued"})
        if "/Messages/" in parts.path and self.command == "GET":
            sid = parts.path.rsplit("/", 1)[1].removesuffix(".json")
            return self._send(200, {"sid": sid, "account_sid": ACCOUNT_SID, "status": "delivered"})
        return self._send(404, {"code": 20404, "message": "not found", "status": 404})

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle


class FakeTwilio(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, public_key_pem: bytes | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = _State()
        self.public_key = public_key_pem
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def received(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.received)

    def check_pkcv(self, got: Received) -> str:
        token = got.headers.get("twilio-client-validation")
        if token is None:
            return "missing"
        if self.public_key is None:
            return "unchecked"
        try:
            header = pyjwt.get_unverified_header(token)
            claims = pyjwt.decode(token, self.public_key, algorithms=["RS256", "PS256"])
        except pyjwt.PyJWTError as exc:
            return f"bad token: {type(exc).__name__}"
        if header.get("cty") != "twilio-pkrv;v=1" or header.get("kid") != CREDENTIAL_SID:
            return "bad header"
        if claims.get("iss") != API_KEY_SID or claims.get("sub") != ACCOUNT_SID:
            return "bad iss/sub"
        if claims.get("hrh") != "authorization;host":
            return "bad hrh"
        if claims.get("rqh") != _rqh(got.method, got.path, got.query, got.headers, got.body):
            return "rqh mismatch"
        return "valid"

    def __enter__(self) -> FakeTwilio:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
