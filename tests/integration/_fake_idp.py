"""A local OpenID Connect provider on loopback, for the admin SSO tests.

It serves what a real provider serves — the discovery document, a JWKS, an authorization endpoint that
sends the browser back with a code (the person is "already signed in" as :attr:`FakeIdp.user`), a token
endpoint — and checks what a real one checks, independently of Bastion's code: the registered redirect
URI, ``response_type=code``, the ``openid`` scope, a PKCE ``S256`` challenge (RFC 7636 §4.6, recomputed
here with hashlib), the client secret (HTTP Basic, RFC 6749 §2.3.1), single-use codes bound to their
redirect URI. ID tokens are signed with joserfc.

Tests bend it through a few knobs: :attr:`claims` (merged into the next ID tokens), :attr:`header`,
:attr:`sign_with` (another key), :attr:`raw_id_token` (a token made by the test), :attr:`deny` (the person
refuses), :attr:`send_iss` (RFC 9207). Everything it saw is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import Key, RSAKey

CLIENT_ID = "bastion-admin"
CLIENT_SECRET = "sso-client-secret-" + "s" * 20  # a test fixture, not a secret


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier))), without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


@dataclass
class Issued:
    code: str
    client_id: str
    redirect_uri: str
    challenge: str
    method: str
    nonce: str | None
    scope: str
    user: dict[str, Any]


@dataclass
class TokenRequest:
    form: dict[str, str]
    client_auth: str  # basic | post | none
    client_ok: bool
    pkce_ok: bool | None  # None: no code to check it against
    answered: int = 0


@dataclass
class _Records:
    authorize: list[dict[str, str]] = field(default_factory=list)
    token: list[TokenRequest] = field(default_factory=list)
    id_tokens: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    jwks_fetches: int = 0
    discovery_fetches: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeIdp

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        idp = self.server
        if parts.path == "/.well-known/openid-configuration":
            with idp.lock:
                idp.records.discovery_fetches += 1
            self._json(200, idp.discovery())
        elif parts.path == "/jwks":
            with idp.lock:
                idp.records.jwks_fetches += 1
                keys = [k.as_dict(private=False) for k in idp.published]
            self._json(200, {"keys": keys})
        elif parts.path == "/authorize":
            self._authorize(dict(parse_qsl(parts.query, keep_blank_values=True)))
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/token":
            self._json(404, {"error": "not_found"})
            return
        length = int(self.headers.get("content-length") or 0)
        form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
        self._token(form)

    # -- the authorization endpoint --------------------------------------------------------------------
    def _authorize(self, q: dict[str, str]) -> None:
        idp = self.server
        with idp.lock:
            idp.records.authorize.append(q)
        problems = []
        if q.get("client_id") != CLIENT_ID:
            problems.append("client_id")
        if q.get("redirect_uri") not in idp.redirect_uris:
            problems.append("redirect_uri")  # never redirect to an unregistered URI
        if q.get("response_type") != "code":
            problems.append("response_type")
        if "openid" not in q.get("scope", "").split():
            problems.append("scope")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            problems.append("pkce")
        if problems:
            self._json(400, {"error": "invalid_request", "problems": problems})
            return
        back: dict[str, str] = {}
        if idp.deny:
            back["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(24)
            with idp.lock:
                idp.issued[code] = Issued(
                    code=code,
                    client_id=q["client_id"],
                    redirect_uri=q["redirect_uri"],
                    challenge=q["code_challenge"],
                    method=q["code_challenge_method"],
                    nonce=q.get("nonce"),
                    scope=q["scope"],
                    user=dict(idp.user),
                )
                idp.records.codes.append(code)
            back["code"] = code
        if "state" in q:
            back["state"] = q["state"]
        if idp.send_iss is not None:
            back["iss"] = idp.send_iss
        self.send_response(302)
        self.send_header("location", f"{q['redirect_uri']}?{urlencode(back)}")
        self.send_header("content-length", "0")
        self.end_headers()

    # -- the token endpoint ----------------------------------------------------------------------------
    def _client(self, form: dict[str, str]) -> tuple[str, bool]:
        header = self.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:]).decode()
            except ValueError:
                return "basic", False
            user, _, password = raw.partition(":")
            return "basic", (unquote(user), unquote(password)) == (CLIENT_ID, self.server.client_secret)
        if "client_secret" in form:
            return "post", (form.get("client_id"), form["client_secret"]) == (
                CLIENT_ID,
                self.server.client_secret,
            )
        return "none", False

    def _token(self, form: dict[str, str]) -> None:
        idp = self.server
        method, client_ok = self._client(form)
        record = TokenRequest(form=form, client_auth=method, client_ok=client_ok, pkce_ok=None)
        with idp.lock:
            idp.records.token.append(record)
            issued = idp.issued.get(form.get("code", ""))
            fresh = issued is not None and issued.code not in idp.spent
            if issued is not None and client_ok:
                idp.spent.add(issued.code)  # a code is redeemed once, whatever happens next
        if issued is not None:
            verifier = form.get("code_verifier", "")
            record.pkce_ok = 43 <= len(verifier) <= 128 and s256(verifier) == issued.challenge
        status, doc = self._answer(form, client_ok, issued if fresh else None, record.pkce_ok)
        record.answered = status
        self._json(status, doc)

    def _answer(
        self, form: dict[str, str], client_ok: bool, issued: Issued | None, pkce_ok: bool | None
    ) -> tuple[int, dict[str, Any]]:
        idp = self.server
        if idp.token_status is not None:
            return idp.token_status, {"error": "server_error"}
        if not client_ok:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "authorization_code" or issued is None:
            return 400, {"error": "invalid_grant"}
        if form.get("redirect_uri") != issued.redirect_uri or not pkce_ok:
            return 400, {"error": "invalid_grant"}
        id_token = idp.id_token(issued)
        with idp.lock:
            idp.records.id_tokens.append(id_token)
        return 200, {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        }

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("cache-control", "no-store")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeIdp(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.clock = clock
        self.lock = threading.Lock()
        self.key = new_key("k1")
        self.published: list[Key] = [self.key]  # what /jwks serves
        self.redirect_uris: set[str] = set()
        self.client_secret = CLIENT_SECRET  # what the provider expects (a test may change it)
        self.user: dict[str, Any] = {}
        self.claims: dict[str, Any] = {}  # merged into every ID token (None values remove a claim)
        self.header: dict[str, Any] = {}
        self.sign_with: Key | None = None
        self.raw_id_token: Callable[[dict[str, Any]], str] | None = None
        self.deny = False
        self.send_iss: str | None = None
        self.token_status: int | None = None  # answer every token request with this status
        self.discovery_extra: dict[str, Any] = {}
        self.issued: dict[str, Issued] = {}
        self.spent: set[str] = set()
        self.records = _Records()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            **self.discovery_extra,
        }

    def id_token(self, issued: Issued) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": issued.client_id,
            "iat": now,
            "exp": now + 300,
            "auth_time": now - 5,
            **({"nonce": issued.nonce} if issued.nonce is not None else {}),
            **issued.user,
        }
        for name, value in self.claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if self.raw_id_token is not None:
            return self.raw_id_token(claims)
        key = self.sign_with or self.key
        header = {"alg": "RS256", "kid": key.kid, **self.header}
        return jwt.encode(header, claims, key)

    def __enter__(self) -> FakeIdp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)
