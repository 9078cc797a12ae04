"""Bastion's OAuth 2.0 authorisation server: client credentials only (P5, P13).

- Token endpoint — RFC 6749 §4.4 (client credentials grant), §2.3.1 and §5 (client authentication,
  responses and errors); ``private_key_jwt`` client authentication per RFC 7523 §2.2 / §3.
- Access tokens are JWTs per RFC 9068 (``typ: at+jwt``; ``iss``, ``exp``, ``aud``, ``sub``,
  ``client_id``, ``iat``, ``jti``, ``scope``), signed with the rotating key of :mod:`.signing`.
- Introspection — RFC 7662; revocation — RFC 7009; JWKS — RFC 7517; metadata — RFC 8414.

Each endpoint is a check (same interface as every policy) that answers the request itself. Client
authentication failures are counted by the same failure limiter as API keys (per source address and
per client id), and every failure looks the same to the caller (``invalid_client``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from joserfc import jws
from joserfc.errors import JoseError

from ..core.decision import Answer, Context, Verdict
from ..core.forwarding import ip_text
from ..core.identity import AuthFailure, ClientRecord, ConsumerRecord
from ..core.ports import FailureLimiter, IdentityIndex, ReplayCache, StateUnavailable
from ..core.request import BodyReadError, RequestView
from .credentials import Peppers
from .jwt import JwtPolicy, JwtRejected, sign_jwt, verify_jwt
from .signing import SigningKeys
from .tokens import LocalTokenVerifier, scopes_from_claims

__all__ = ["OAuthServer"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS256", "PS256", "ES256", "EdDSA")
INTROSPECT_SCOPE = "bastion:introspect"
_JSON = (("content-type", "application/json"), ("cache-control", "no-store"), ("pragma", "no-cache"))
_EMPTY = (("cache-control", "no-store"), ("pragma", "no-cache"))


class _OAuthError(Exception):
    """RFC 6749 §5.2 error response."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        cause: str = "",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status
        self.cause = cause or error
        self.headers = headers
        self.client_id: str | None = None


def _locked(wait: float) -> _OAuthError:
    seconds = max(1, int(wait + 0.999))
    return _OAuthError(
        "invalid_client",
        "too many failed authentication attempts; retry later",
        429,
        "auth_locked_out",
        (("retry-after", str(seconds)),),
    )


def _json(status: int, payload: dict[str, Any], extra: tuple[tuple[str, str], ...] = ()) -> Answer:
    return Answer(status, (*_JSON, *extra), json.dumps(payload, separators=(",", ":")).encode())


class OAuthServer:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        token_ttl: float,
        paths: dict[str, str],
        signing: SigningKeys,
        verifier: LocalTokenVerifier,
        index: IdentityIndex,
        peppers: Peppers,
        limiter: FailureLimiter,
        clock: Callable[[], float],
        emit: Callable[..., None],
        revoke: Callable[[str, float, float], None],
        replay: ReplayCache,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.token_ttl = token_ttl
        self.paths = paths
        self.token_url = issuer + paths["token"]
        self.signing = signing
        self.verifier = verifier
        self.index = index
        self.peppers = peppers
        self.limiter = limiter
        self.clock = clock
        self.emit = emit
        self.revoke_token = revoke
        self.replay = replay  # RFC 7523 §3 jti records: the state backend's (shared on Redis)
        self.metadata = json.dumps(
            {
                "issuer": issuer,
                "token_endpoint": self.token_url,
                "jwks_uri": issuer + paths["jwks"],
                "introspection_endpoint": issuer + paths["introspection"],
                "revocation_endpoint": issuer + paths["revocation"],
                "grant_types_supported": ["client_credentials"],
                "response_types_supported": [],  # RFC 8414 §2: required; no authorization endpoint
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "private_key_jwt",
                ],
                "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
                "introspection_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "private_key_jwt",
                ],
                "revocation_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "private_key_jwt",
                ],
            },
            separators=(",", ":"),
        ).encode()

    # -- the checks (one per endpoint) -------------------------------------------------------------
    def endpoints(self) -> dict[str, tuple[tuple[str, ...], Any]]:
        """path -> (methods, check)."""
        return {
            self.paths["token"]: (("POST",), _Endpoint("oauth_token", self._token)),
            self.paths["introspection"]: (("POST",), _Endpoint("oauth_introspection", self._introspect)),
            self.paths["revocation"]: (("POST",), _Endpoint("oauth_revocation", self._revoke)),
            self.paths["jwks"]: (("GET", "HEAD"), _Endpoint("oauth_jwks", self._jwks)),
            self.paths["metadata"]: (("GET", "HEAD"), _Endpoint("oauth_metadata", self._metadata)),
        }

    async def _jwks(self, req: RequestView, ctx: Context) -> Verdict:
        return Answer(
            200,
            (("content-type", "application/json"), ("cache-control", "public, max-age=300")),
            self.signing.jwks_body,
        )

    async def _metadata(self, req: RequestView, ctx: Context) -> Verdict:
        return Answer(
            200,
            (("content-type", "application/json"), ("cache-control", "public, max-age=3600")),
            self.metadata,
        )

    async def _token(self, req: RequestView, ctx: Context) -> Verdict:
        try:
            form = await _form(req)
            client, consumer = await self._authenticate_client(req, form)
            grant = form.get("grant_type")
            if grant is None:
                raise _OAuthError("invalid_request", "grant_type is required")
            if grant != "client_credentials":
                raise _OAuthError("unsupported_grant_type", "only client_credentials is supported")
            allowed = client.scopes & consumer.scopes
            if "scope" in form:
                asked = frozenset(form["scope"].split())
                if not asked or not asked <= allowed:
                    raise _OAuthError("invalid_scope", "the requested scope exceeds what the client may hold")
                scopes = asked
            else:
                scopes = allowed
        except _OAuthError as err:
            return self._error(req, err)
        now = self.clock()
        kid, key = self.signing.current()
        claims = {
            "iss": self.issuer,
            "sub": client.client_id,
            "aud": self.audience,
            "client_id": client.client_id,
            "iat": int(now),
            "exp": int(now + self.token_ttl),
            "jti": secrets.token_urlsafe(18),
            "scope": " ".join(sorted(scopes)),
        }
        token = sign_jwt(claims, key, self.signing.alg, kid)
        self.emit(
            "oauth.token_issued",
            severity="info",
            request_id=req.request_id,
            route=req.route.id,
            method=req.method,
            path=req.path,
            source_ip=ip_text(req.client_ip),
            actor=f"client:{client.client_id}",
            data={
                "client_id": client.client_id,
                "consumer": consumer.name,
                "scopes": sorted(scopes),
                "jti": claims["jti"],
                "expires_at": claims["exp"],
            },
        )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self.token_ttl),
        }
        if claims["scope"]:
            body["scope"] = claims["scope"]
        return _json(200, body)

    async def _token_request(self, req: RequestView) -> tuple[ClientRecord, ConsumerRecord, str]:
        """What introspection and revocation share: a form, an authenticated client, a ``token``."""
        form = await _form(req)
        caller, consumer = await self._authenticate_client(req, form)
        token = form.get("token")
        if not token:
            raise _OAuthError("invalid_request", "token is required")
        return caller, consumer, token

    async def _introspect(self, req: RequestView, ctx: Context) -> Verdict:
        try:
            caller, caller_consumer, token = await self._token_request(req)
        except _OAuthError as err:
            return self._error(req, err)
        now = self.clock()
        try:
            claims = self.verifier.decode(token, now)
            principal = await self.verifier.verify(token, now)
        except AuthFailure:
            return _json(200, {"active": False})
        owner = self.index.client(claims["client_id"])
        same_owner = owner is not None and owner.consumer_id == caller.consumer_id
        if not same_owner and INTROSPECT_SCOPE not in (caller.scopes & caller_consumer.scopes):
            return _json(200, {"active": False})  # RFC 7662 §2.2: no information to this caller
        return _json(
            200,
            {
                "active": True,
                "scope": " ".join(sorted(principal.scopes & scopes_from_claims(claims))),
                "client_id": claims["client_id"],
                "username": principal.consumer,
                "token_type": "Bearer",
                "exp": claims["exp"],
                "iat": claims["iat"],
                "sub": claims["sub"],
                "aud": claims["aud"],
                "iss": claims["iss"],
                "jti": claims["jti"],
            },
        )

    async def _revoke(self, req: RequestView, ctx: Context) -> Verdict:
        try:
            caller, _consumer, token = await self._token_request(req)
        except _OAuthError as err:
            return self._error(req, err)
        now = self.clock()
        try:
            claims = self.verifier.decode(token, now)
        except AuthFailure:
            return Answer(200, _EMPTY)  # RFC 7009 §2.2: an invalid token is not an error
        if claims["client_id"] != caller.client_id:
            # RFC 7009 §2.1: only the client the token was issued to may revoke it.
            return self._error(
                req, _OAuthError("unauthorized_client", "the token was not issued to this client", 400)
            )
        if not self.index.token_revoked(claims["jti"]):
            self.revoke_token(claims["jti"], float(claims["exp"]), now)
            self.emit(
                "oauth.token_revoked",
                severity="notice",
                request_id=req.request_id,
                route=req.route.id,
                method=req.method,
                path=req.path,
                source_ip=ip_text(req.client_ip),
                actor=f"client:{caller.client_id}",
                data={"client_id": caller.client_id, "jti": claims["jti"]},
            )
        return Answer(200, _EMPTY)

    # -- client authentication ---------------------------------------------------------------------
    async def _authenticate_client(
        self, req: RequestView, form: dict[str, str]
    ) -> tuple[ClientRecord, ConsumerRecord]:
        now = self.clock()
        source = "ip:" + ip_text(req.client_ip)
        wait = await self.limiter.blocked_for(source, now)
        if wait:
            raise _locked(wait)
        basic = _basic(req)
        methods = [
            m
            for m, present in (
                ("basic", basic is not None),
                ("post", "client_secret" in form),
                ("jwt", "client_assertion" in form or "client_assertion_type" in form),
            )
            if present
        ]
        if len(methods) > 1:
            raise _OAuthError("invalid_request", "use exactly one client authentication method")
        client_id: str | None = None
        try:
            if not methods:
                raise AuthFailure("client_credentials_missing")
            if methods[0] == "basic":
                assert basic is not None
                client_id, secret = basic
                if "client_id" in form and form["client_id"] != client_id:
                    raise _OAuthError("invalid_request", "client_id differs from the authenticated client")
                client = self._secret_client(client_id, secret)
            elif methods[0] == "post":
                client_id = form.get("client_id")
                if not client_id:
                    raise AuthFailure("client_id_missing")
                client = self._secret_client(client_id, form["client_secret"])
            else:
                client_id, client, jti, until = self._assertion_client(form, now)
                await self._first_use(client.client_id, jti, until, now)
            consumer = self.index.consumer(client.consumer_id)
            if consumer is None or not consumer.active:
                raise AuthFailure("consumer_disabled", client.client_id)
            return client, consumer
        except AuthFailure as failure:
            if client_id and len(client_id) <= 64:
                # A blocked client id refuses guesses; the client with its real secret still gets in.
                wait = await self.limiter.blocked_for("client:" + client_id, now)
                if wait:
                    await self.limiter.failed(source, now)
                    raise _locked(wait) from None
            blocked = await self.limiter.failed(source, now)
            trigger = "source_ip"
            if client_id and len(client_id) <= 64:
                blocked_client = await self.limiter.failed("client:" + client_id, now)
                if blocked_client and not blocked:
                    blocked, trigger = blocked_client, "client_id"
            if blocked:
                self.emit(
                    "auth.locked_out",
                    severity="warning",
                    request_id=req.request_id,
                    route=req.route.id,
                    method=req.method,
                    path=req.path,
                    source_ip=ip_text(req.client_ip),
                    data={
                        "subject": "oauth_client",
                        "trigger": trigger,
                        "client_id": client_id if client_id and len(client_id) <= 64 else None,
                        "cause": failure.code,
                        "block_for": blocked,
                    },
                )
            err = _OAuthError("invalid_client", "client authentication failed", 401, failure.code)
            # The client id it presented (what credential stuffing against clients is counted by), if sane.
            sane = bool(client_id) and len(client_id) <= 64 and client_id.isprintable()
            err.client_id = client_id if sane else None
            raise err from None

    def _secret_client(self, client_id: str, secret: str) -> ClientRecord:
        client = self.index.client(client_id)
        presented = self.peppers.client_secret_digest(secret)
        if client is None or client.secret_digest is None:
            raise AuthFailure("client_unknown")
        if not hmac.compare_digest(presented, client.secret_digest):
            raise AuthFailure("client_secret_mismatch", client_id)
        return client

    def _assertion_client(
        self, form: dict[str, str], now: float
    ) -> tuple[str | None, ClientRecord, str, float]:
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            raise AuthFailure("client_assertion_invalid")
        assertion = form["client_assertion"]
        try:
            unverified = json.loads(jws.extract_compact(assertion.encode("ascii")).payload)
        except (JoseError, ValueError, UnicodeError, TypeError, RecursionError):
            raise AuthFailure("client_assertion_invalid") from None
        client_id = unverified.get("iss") if isinstance(unverified, dict) else None
        if not isinstance(client_id, str):
            raise AuthFailure("client_assertion_invalid")
        client = self.index.client(client_id)
        if client is None or client.jwks is None:
            raise AuthFailure("client_unknown")
        if "client_id" in form and form["client_id"] != client_id:
            raise AuthFailure("client_assertion_invalid", client_id)
        claims: dict[str, Any] | None = None
        for audience in (self.token_url, self.issuer):
            policy = JwtPolicy(
                issuer=client_id,
                audience=audience,
                algorithms=ASSERTION_ALGS,
                leeway=30.0,
                max_token_bytes=8192,
                max_lifetime=600.0,
                required_claims=("exp", "sub", "jti"),
            )
            try:
                claims = verify_jwt(assertion, client.jwks, policy, now)  # type: ignore[arg-type]
                break
            except JwtRejected as exc:
                if exc.code != "jwt_audience_invalid":
                    raise AuthFailure("client_" + exc.code, client_id) from None
        if claims is None:
            raise AuthFailure("client_jwt_audience_invalid", client_id)
        if claims.get("sub") != client_id:
            raise AuthFailure("client_assertion_invalid", client_id)
        return client_id, client, str(claims["jti"]), float(claims["exp"]) + 60

    async def _first_use(self, client_id: str, jti: str, until: float, now: float) -> None:
        """RFC 7523 §3: an assertion's ``jti`` is used once (the replay-cache port: shared on Redis)."""
        try:
            first = await self.replay.first_seen(f"oauth-jti|{client_id}|{jti}", until, now)
        except StateUnavailable:
            raise AuthFailure("client_assertion_replay_unchecked", client_id) from None
        if not first:
            raise AuthFailure("client_assertion_replayed", client_id)

    def _error(self, req: RequestView, err: _OAuthError) -> Answer:
        self.emit(
            "auth.failed" if err.error == "invalid_client" else "oauth.request_rejected",
            severity="warning",
            request_id=req.request_id,
            route=req.route.id,
            method=req.method,
            path=req.path,
            source_ip=ip_text(req.client_ip),
            reason=err.error,
            data={"cause": err.cause, "status": err.status}
            | ({"client_id": err.client_id} if err.client_id else {}),
        )
        extra: tuple[tuple[str, str], ...] = err.headers
        if err.status == 401:
            extra = (*extra, ("www-authenticate", 'Basic realm="bastion-oauth"'))
        return _json(err.status, {"error": err.error, "error_description": err.description}, extra)


class _Endpoint:
    def __init__(self, name: str, handler: Callable[[RequestView, Context], Any]) -> None:
        self.name = name
        self.handler = handler

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        return await self.handler(req, ctx)  # type: ignore[no-any-return]


async def _form(req: RequestView) -> dict[str, str]:
    """The form body (RFC 6749 §3.2: form-encoded; a parameter sent twice is an error)."""
    ctype = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise _OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        raw = await req.body.read()
    except BodyReadError:
        raise _OAuthError("invalid_request", "the request body is too large or incomplete", 400) from None
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=32
        )
    except (UnicodeDecodeError, ValueError):
        raise _OAuthError("invalid_request", "the body is not a valid form") from None
    form: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise _OAuthError("invalid_request", f"parameter {name} is repeated")
        seen.add(name)
        if value:  # RFC 6749 §3.2: parameters sent without a value are treated as omitted
            form[name] = value
    return form


def _basic(req: RequestView) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: HTTP Basic with form-urlencoded id and secret."""
    auth = req.headers.get("authorization")
    if auth is None:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text (UnicodeDecodeError is one too)
        raise _OAuthError("invalid_client", "client authentication failed", 401, "basic_malformed") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise _OAuthError("invalid_client", "client authentication failed", 401, "basic_malformed")
    return unquote(user), unquote(password)
