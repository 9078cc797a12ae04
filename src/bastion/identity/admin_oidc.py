"""Admin sign-in with an OpenID Connect provider (P12): the authorization code flow with PKCE, for people,
the provider's groups mapped to Bastion roles.

Specs: OpenID Connect Core 1.0 (§3.1 the authorization code flow, §3.1.3.7 ID token validation, §5.7 ``iss``
and ``sub`` as the only stable identifier, §15.5.2 the nonce), OpenID Connect Discovery 1.0 (§4, and §4.3:
the document's ``issuer`` must be the configured one), RFC 7636 (PKCE, ``S256``), RFC 6749 §10.12 (``state``
against CSRF), RFC 9700 §2.1.1 (PKCE for confidential clients too), RFC 9207 (the ``iss`` response
parameter), RFC 8176 (``amr`` values).

Theory of operation
-------------------
1. ``start``: a new :class:`Flow` — ``state``, ``nonce`` and a PKCE ``verifier``, each 256+ random bits — is
   sealed (Fernet, a key derived from ``identity.pepper`` for this purpose only) into a short-lived
   *pre-session* cookie, and the browser is sent to the provider's authorization endpoint with the state,
   the nonce and the S256 challenge. Nothing is stored server-side, and nothing in the cookie is readable.
2. ``callback``: the cookie is opened (its age checked against ``flow_timeout`` with the injected clock),
   the ``state`` parameter must equal the sealed one, and the state is then recorded in the gateway's replay
   cache so the same flow can never complete twice (shared across instances on Redis). The code is redeemed
   at the token endpoint with the client secret and the verifier (the provider checks the verifier: a code
   stolen on its way back is useless without the cookie). The ID token is verified by ``identity.jwt`` —
   an asymmetric algorithm from the allow-list only (never ``none``, never HS*: the key's family must match
   the algorithm), a key from the provider's JWKS (cached, refetched on an unknown ``kid``, rate-limited),
   ``iss`` exactly, ``aud`` containing the client id, ``exp``/``nbf``/``iat`` with ``leeway`` — and then here:
   the ``nonce`` (bound to this browser's cookie), ``azp`` when there are several audiences, a ``sub``.
3. The claims become an :class:`SsoIdentity`; an email is used only when ``email_verified`` says so. Groups
   map to the highest role listed in ``role_map`` (or ``default_role``; ``none`` refuses). The account is the
   one linked to ``(iss, sub)`` or, the first time, created just in time with that role; its role follows
   the groups at every sign-in. A disabled or locked account stays refused.

Every failure is a :class:`SsoFailed` with a stable ``cause`` for the event log; no token, code, state,
nonce, verifier or client secret is ever logged, stored or echoed.

The link between an account and its provider identity is kept in the account's ``created_by``
(``oidc:<sha256 of iss and sub>``): accounts are found by it, and an account created any other way is never
taken over by an SSO sign-in with the same address (``account_conflict``).
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Engine, select

from ..core.urls import require_secure_url
from ..store.schema import admin_accounts_table
from .admins import NAME, RESERVED_NAMES, AdminAccounts, normalize_email, role_rank
from .jwks import JwksCache, JwksError, check_jwks_url
from .jwt import JwtPolicy, JwtRejected, token_header, verify_jwt
from .manage import IdentityError

__all__ = [
    "CAUSES",
    "Flow",
    "FlowSeal",
    "OidcProvider",
    "SsoAccounts",
    "SsoFailed",
    "SsoIdentity",
    "identity_link",
    "map_role",
    "read_identity",
    "replay_key",
    "safe_error",
    "sign_in_stage",
    "state_matches",
]

#: Every cause a :class:`SsoFailed` can carry (docs/admin-accounts.md#sso-failure-causes).
CAUSES = frozenset(
    {
        "no_flow",
        "flow_invalid",
        "flow_expired",
        "state_mismatch",
        "state_reused",
        "state_unavailable",
        "idp_error",
        "issuer_mismatch",
        "no_code",
        "token_rejected",
        "id_token_invalid",
        "nonce_mismatch",
        "azp_mismatch",
        "email_missing",
        "email_not_verified",
        "email_domain_not_allowed",
        "no_role",
        "account_conflict",
        "disabled",
        "locked",
        "discovery_failed",
        "jwks_unavailable",
        "token_endpoint_unavailable",
    }
)

MAX_DOCUMENT = 256 * 1024  # discovery, JWKS and token responses
MAX_COOKIE = 1024
MAX_GROUPS = 1000
_SAFE_ERROR = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SsoSettings(Protocol):
    """``admin.accounts.sso`` (config.models.AdminSsoSettings; identity/ does not import config/)."""

    issuer: str
    client_id: str
    client_secret: Any  # a config Secret: .reveal() gives the value
    redirect_url: str
    scopes: list[str]
    groups_claim: str
    allowed_domains: list[str]
    trust_idp_mfa: bool
    idp_mfa_amr: list[str]
    algorithms: list[str]
    leeway: float
    flow_timeout: float

    @property
    def role_map(self) -> Mapping[str, str]: ...  # read-only: a mapping to Literal roles fits

    @property
    def default_role(self) -> str: ...


class SsoFailed(Exception):
    """A step of an SSO sign-in failed. ``cause`` (one of :data:`CAUSES`) and ``data`` are for the event log
    only; the client is told nothing more. ``provider``: the provider could not be used (unreachable, or it
    answered something unusable), which the client sees as 502 rather than a failed sign-in."""

    def __init__(
        self,
        cause: str,
        *,
        data: Mapping[str, Any] | None = None,
        provider: bool = False,
        actor: str | None = None,
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.data = dict(data or {})
        self.provider = provider
        self.actor = actor


def safe_error(value: object) -> str | None:
    """A provider-supplied error code, if it looks like one (never free text into the event log)."""
    return value if isinstance(value, str) and _SAFE_ERROR.fullmatch(value) else None


# -- the pre-session: state, nonce and PKCE verifier, sealed into a cookie --------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    state: str
    nonce: str
    verifier: str  # RFC 7636 §4.1: 43-128 characters of [A-Za-z0-9-._~]; 64 here (384 bits)
    started_at: float


class FlowSeal:
    """Seals a :class:`Flow` into the pre-session cookie and opens it again (Fernet: AES-CBC + HMAC, with the
    time it was sealed; the key is derived from the pepper for this purpose only)."""

    def __init__(self, pepper: str, ttl: float) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"bastion/admin-oidc-flow/v1"
        ).derive(pepper.encode("utf-8"))
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self.ttl = ttl

    def new(self, now: float) -> tuple[Flow, str]:
        flow = Flow(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            started_at=now,
        )
        doc = {"s": flow.state, "n": flow.nonce, "v": flow.verifier}
        sealed = self._fernet.encrypt_at_time(json.dumps(doc).encode(), int(now)).decode("ascii")
        return flow, sealed

    def open(self, sealed: str | None, now: float) -> Flow:
        """The flow in the cookie, or :class:`SsoFailed` (``no_flow``, ``flow_invalid``, ``flow_expired``)."""
        if not sealed:
            raise SsoFailed("no_flow")
        if len(sealed) > MAX_COOKIE or not sealed.isascii():
            raise SsoFailed("flow_invalid")
        token = sealed.encode("ascii")
        try:
            sealed_at = self._fernet.extract_timestamp(token)  # checks the MAC first
        except InvalidToken:
            raise SsoFailed("flow_invalid") from None
        if sealed_at > now + 60:  # sealed in the future: not by this clock
            raise SsoFailed("flow_invalid")
        if now - sealed_at > self.ttl:
            raise SsoFailed("flow_expired", data={"age": int(now - sealed_at)})
        try:
            doc = json.loads(self._fernet.decrypt(token))
            return Flow(state=doc["s"], nonce=doc["n"], verifier=doc["v"], started_at=float(sealed_at))
        except (InvalidToken, ValueError, KeyError, TypeError):
            raise SsoFailed("flow_invalid") from None


def state_matches(flow: Flow, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(flow.state.encode(), presented.encode())


def replay_key(flow: Flow) -> str:
    """The replay-cache key that makes a flow single use (a digest: the state itself is never stored)."""
    return "admin-oidc:" + sha256(flow.state.encode()).hexdigest()


# -- the provider: discovery, JWKS, the token endpoint, the ID token ------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    client_auth: str  # client_secret_basic | client_secret_post
    iss_parameter: bool  # RFC 9207: the provider adds "iss" to its authorization responses


class _FetchError(Exception):
    pass


class OidcProvider:
    """One provider, as ``admin.accounts.sso`` names it. Discovery is cached for ``discovery_ttl`` (a failed
    refresh keeps the last good document) and refetched at most once per ``min_refresh``; the JWKS is a
    :class:`~bastion.identity.jwks.JwksCache` (bounded, refetched on an unknown ``kid``, rate-limited). Every
    request goes out with httpx from the admin plane — never on the gateway's request path — with no
    redirects followed, no proxy or credentials from the environment, a timeout and a size limit."""

    def __init__(
        self,
        settings: SsoSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        discovery_ttl: float = 3600.0,
        min_refresh: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.transport = transport
        self.discovery_ttl = discovery_ttl
        self.min_refresh = min_refresh
        self.timeout = timeout
        self.policy = JwtPolicy(
            issuer=settings.issuer,
            audience=settings.client_id,
            algorithms=tuple(settings.algorithms),
            leeway=settings.leeway,
            max_token_bytes=16 * 1024,
            required_claims=("exp", "iat", "sub"),
        )
        self._meta: ProviderMetadata | None = None
        self._meta_at = -math.inf
        self._attempted_at = -math.inf
        self._jwks: JwksCache | None = None
        self.last_error: str | None = None  # why the last discovery failed, for the event log

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _send(
        self, method: str, url: str, *, data: Mapping[str, str] | None = None, auth: httpx.Auth | None = None
    ) -> tuple[int, bytes]:
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        async with (
            httpx.AsyncClient(
                follow_redirects=False, timeout=self.timeout, trust_env=False, transport=self.transport
            ) as client,
            client.stream(method, url, data=data, auth=auth, headers=headers) as response,
        ):
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise _FetchError("compressed response")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_DOCUMENT:
                    raise _FetchError(f"response over {MAX_DOCUMENT} bytes")
            return response.status_code, bytes(body)

    async def _get_document(self, url: str) -> bytes:
        status, body = await self._send("GET", url)
        if status != 200:
            raise _FetchError(f"HTTP {status}")
        return body

    # -- discovery -----------------------------------------------------------------------------------
    async def metadata(self) -> ProviderMetadata:
        """The provider's configuration (OpenID Connect Discovery §4), or ``SsoFailed("discovery_failed")``
        when none was ever fetched."""
        now = self.monotonic()
        if self._meta is not None and now - self._meta_at < self.discovery_ttl:
            return self._meta
        if now - self._attempted_at >= self.min_refresh:
            self._attempted_at = now
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                meta = self._parse(await self._get_document(url))
            except Exception as exc:  # whatever went wrong, the last good document stays in service
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            else:
                if self._meta is None or meta.jwks_uri != self._meta.jwks_uri:
                    self._jwks = JwksCache(
                        meta.jwks_uri, clock=self.monotonic, fetch=self._get_document, timeout=self.timeout
                    )
                self._meta, self._meta_at, self.last_error = meta, self.monotonic(), None
        if self._meta is None:
            raise SsoFailed(
                "discovery_failed", provider=True, data={"error": self.last_error or "refetch rate-limited"}
            )
        return self._meta

    def _parse(self, body: bytes) -> ProviderMetadata:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("issuer") != self.settings.issuer:  # Discovery §4.3
            raise ValueError("the document's issuer is not the configured issuer")
        urls = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            urls[name] = require_secure_url(doc.get(name), name)
        check_jwks_url(urls["jwks_uri"])
        response_types = doc.get("response_types_supported")
        if isinstance(response_types, list) and "code" not in response_types:
            raise ValueError("the provider does not offer the authorization code flow")
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ValueError("the provider does not offer PKCE with S256")
        auth_methods = doc.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        if not isinstance(auth_methods, list):
            auth_methods = ["client_secret_basic"]
        if "client_secret_basic" in auth_methods:
            client_auth = "client_secret_basic"
        elif "client_secret_post" in auth_methods:
            client_auth = "client_secret_post"
        else:
            raise ValueError("the token endpoint takes neither client_secret_basic nor client_secret_post")
        return ProviderMetadata(
            issuer=doc["issuer"],
            authorization_endpoint=urls["authorization_endpoint"],
            token_endpoint=urls["token_endpoint"],
            jwks_uri=urls["jwks_uri"],
            client_auth=client_auth,
            iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True,
        )

    # -- the authorization request (OpenID Connect Core §3.1.2.1, RFC 7636 §4.3) ---------------------
    def authorization_url(self, meta: ProviderMetadata, flow: Flow) -> str:
        s = self.settings
        params = {
            "response_type": "code",
            "client_id": s.client_id,
            "redirect_uri": s.redirect_url,
            "scope": " ".join(s.scopes),
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": create_s256_code_challenge(flow.verifier),
            "code_challenge_method": "S256",
        }
        parts = urlsplit(meta.authorization_endpoint)
        kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
        return urlunsplit(parts._replace(query=urlencode([*kept, *params.items()])))

    # -- the token request (OpenID Connect Core §3.1.3.1; RFC 6749 §2.3.1, §4.1.3) -------------------
    async def exchange(self, meta: ProviderMetadata, code: str, verifier: str) -> str:
        """Redeem ``code`` with the client secret and the PKCE verifier; the ID token."""
        s = self.settings
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": s.redirect_url,
            "code_verifier": verifier,
        }
        auth: httpx.Auth | None = None
        if meta.client_auth == "client_secret_basic":
            # RFC 6749 §2.3.1: the id and secret are form-encoded before Basic encoding.
            auth = httpx.BasicAuth(quote(s.client_id, safe=""), quote(s.client_secret.reveal(), safe=""))
        else:
            form.update(client_id=s.client_id, client_secret=s.client_secret.reveal())
        try:
            status, body = await self._send("POST", meta.token_endpoint, data=form, auth=auth)
        except Exception as exc:
            raise SsoFailed(
                "token_endpoint_unavailable", provider=True, data={"error": type(exc).__name__}
            ) from None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise SsoFailed("token_endpoint_unavailable", provider=True, data={"status": status})
        if status != 200:
            data = {"status": status, "error": safe_error(doc.get("error"))}
            if 400 <= status < 500:
                raise SsoFailed("token_rejected", data=data)  # e.g. invalid_grant: a bad code or verifier
            raise SsoFailed("token_endpoint_unavailable", provider=True, data=data)
        id_token = doc.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise SsoFailed("token_rejected", data={"status": status, "error": "no_id_token"})
        return id_token

    # -- the ID token (OpenID Connect Core §3.1.3.7) --------------------------------------------------
    async def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The verified claims of ``id_token``, issued for this flow's ``nonce``."""
        if self._jwks is None:
            await self.metadata()
        assert self._jwks is not None
        try:
            header = token_header(id_token, self.policy)
            keys = await self._jwks.key_set(header.get("kid"))
            claims = verify_jwt(id_token, keys, self.policy, self.clock())
        except JwtRejected as exc:
            raise SsoFailed("id_token_invalid", data={"jwt": exc.code}) from None
        except JwksError:
            error = self._jwks.last_error
            raise SsoFailed("jwks_unavailable", provider=True, data={"error": error}) from None
        presented = claims.get("nonce")
        if not isinstance(presented, str) or not hmac.compare_digest(presented.encode(), nonce.encode()):
            raise SsoFailed("nonce_mismatch")  # §3.1.3.7 step 11: replayed or injected
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.settings.client_id:
            raise SsoFailed("azp_mismatch")  # §3.1.3.7 steps 4-5
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= 255:
            raise SsoFailed("id_token_invalid", data={"jwt": "jwt_missing_claim"})
        return claims


# -- from claims to an identity and a role ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SsoIdentity:
    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    groups: tuple[str, ...]
    idp_mfa: bool  # trust_idp_mfa is on and the amr says a second factor was used
    auth_time: float | None

    @property
    def link(self) -> str:
        return identity_link(self.issuer, self.subject)


def identity_link(issuer: str, subject: str) -> str:
    """How an account names its provider identity: ``iss`` and ``sub`` together are the only stable
    identifier (OpenID Connect Core §5.7); an address can move from one person to another."""
    return "oidc:" + sha256(f"{issuer}\n{subject}".encode()).hexdigest()


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(g for g in value[:MAX_GROUPS] if isinstance(g, str) and 0 < len(g) <= 256)


def read_identity(claims: Mapping[str, Any], settings: SsoSettings) -> SsoIdentity:
    """The person the verified claims describe. An email counts only when the provider says it verified
    it (``email_verified``); with ``allowed_domains`` a verified email in one of them is required."""
    email = claims.get("email")
    verified = claims.get("email_verified") in (True, "true")  # some providers send the string
    address = normalize_email(email) if isinstance(email, str) and 0 < len(email) <= 254 else None
    if settings.allowed_domains:
        if address is None:
            raise SsoFailed("email_missing")
        if not verified:
            raise SsoFailed("email_not_verified")
        if address.rpartition("@")[2] not in settings.allowed_domains:
            raise SsoFailed("email_domain_not_allowed", data={"domain": address.rpartition("@")[2][:253]})
    amr = claims.get("amr")
    methods = [m for m in amr if isinstance(m, str)] if isinstance(amr, list) else []
    auth_time = claims.get("auth_time")
    if isinstance(auth_time, bool) or not isinstance(auth_time, int | float) or not math.isfinite(auth_time):
        auth_time = None  # OpenID Connect Core §2: a JSON number; anything else is no auth_time
    return SsoIdentity(
        issuer=str(claims["iss"]),
        subject=str(claims["sub"]),
        email=address,
        email_verified=address is not None and verified,
        groups=_groups(claims.get(settings.groups_claim)),
        idp_mfa=settings.trust_idp_mfa and any(m in settings.idp_mfa_amr for m in methods),
        auth_time=float(auth_time) if auth_time is not None else None,
    )


def map_role(
    groups: Sequence[str], role_map: Mapping[str, str], default_role: str
) -> tuple[str | None, list[str]]:
    """The highest role any of ``groups`` maps to (else ``default_role``; ``none`` is None), and the groups
    that mapped."""
    matched = sorted({g for g in groups if g in role_map})
    if matched:
        return max((role_map[g] for g in matched), key=role_rank), matched
    return (None if default_role == "none" else default_role), []


def sign_in_stage(
    identity: SsoIdentity, *, has_totp: bool, require_mfa: bool, now: float
) -> tuple[str, float | None]:
    """The session stage an SSO sign-in reaches, and its ``mfa_at``. The provider's MFA completes the sign-in
    only when ``trust_idp_mfa`` is on and its ``amr`` says so; ``mfa_at`` is then the provider's
    ``auth_time`` (when the person actually authenticated), or None — sensitive actions then need a TOTP
    step-up. Otherwise SSO is the first factor, exactly like a password."""
    if identity.idp_mfa:
        at = identity.auth_time
        return "full", (min(at, now) if at is not None else None)
    return ("mfa" if has_totp else ("enrol" if require_mfa else "full")), None


# -- accounts ----------------------------------------------------------------------------------------------


class SsoAccounts:
    """Finds the account of a provider identity, creates it just in time, keeps its role in step with the
    groups. Runs in a worker thread (database calls)."""

    def __init__(
        self, engine: Engine, accounts: AdminAccounts, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.accounts = accounts
        self.clock = clock

    def _linked(self, link: str) -> Mapping[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(admin_accounts_table).where(admin_accounts_table.c.created_by == link)
            ).first()
        return row._mapping if row is not None else None

    def resolve(self, identity: SsoIdentity, role: str | None) -> tuple[Mapping[str, Any], bool, str | None]:
        """``(account, created, previous role if it changed)``, or :class:`SsoFailed`."""
        link = identity.link
        row = self._linked(link)
        if row is not None:
            actor = f"admin:{row['name']}"
            if row["status"] != "active":
                raise SsoFailed("disabled", actor=actor)
            if row["locked_until"] is not None and row["locked_until"] > self.clock():
                raise SsoFailed("locked", actor=actor)
            if role is None:
                raise SsoFailed("no_role", actor=actor)
            if row["role"] == role:
                return row, False, None
            self.accounts.set_role(row["name"], role, actor=link)
            return {**row, "role": role}, False, row["role"]
        if role is None:
            raise SsoFailed("no_role")
        return self._create(identity, role), True, None

    def _create(self, identity: SsoIdentity, role: str) -> Mapping[str, Any]:
        if identity.email is None:
            raise SsoFailed("email_missing")  # a new account needs an address...
        if not identity.email_verified:
            raise SsoFailed("email_not_verified")  # ...that the provider verified
        with self.engine.connect() as conn:
            clash = self.accounts.by_email(conn, identity.email)
            taken = {r.name.lower() for r in conn.execute(select(admin_accounts_table.c.name)).all()}
        if clash is not None:
            # Never take over an account made another way (with a password, say) because the provider
            # vouches for the same address.
            raise SsoFailed("account_conflict", actor=f"admin:{clash['name']}")
        name = _free_name(identity, taken)
        try:
            self.accounts.create(name, identity.email, role, actor=identity.link)
        except IdentityError as exc:
            again = self._linked(identity.link)  # a concurrent first sign-in of the same person won
            if again is not None:
                return again
            raise SsoFailed("account_conflict", data={"error": exc.code}) from None
        row = self._linked(identity.link)
        assert row is not None
        return row


def _free_name(identity: SsoIdentity, taken: set[str]) -> str:
    """The account name: the address itself when it is a valid name, else its local part, with a few
    characters of the link when either is taken."""
    assert identity.email is not None
    local = re.sub(r"[^A-Za-z0-9._@-]", "-", identity.email.partition("@")[0])[:48].strip("-._@") or "sso"
    base = identity.email if NAME.fullmatch(identity.email) else local
    tag = identity.link[len("oidc:") : len("oidc:") + 8]
    for name in (base, local, f"{local}-{tag}"):
        if NAME.fullmatch(name) and name.lower() not in RESERVED_NAMES and name.lower() not in taken:
            return name
    raise SsoFailed("account_conflict")
