"""The ``bastion.yaml`` schema (docs/configuration.md is its reference; keep both in step).

Every model forbids unknown keys and is frozen: settings are read at load, compiled, and never
consulted per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..core.ratelimit import Limit, LimitParseError, parse_limit, parse_quota
from ..core.urls import parse_redis_url, require_secure_url
from ..core.webhook_signing import standard_webhooks_secret
from .openapi import OpenApiDocument, load_openapi, template_shape
from .units import parse_duration, parse_size

__all__ = [
    "APP_UPSTREAM",
    "AdminSettings",
    "AdminSsoSettings",
    "ConsumersDefaults",
    "CorsSettings",
    "EventSettings",
    "GatewayConfig",
    "HmacSettings",
    "IdentitySettings",
    "JwtIssuerSettings",
    "Limits",
    "Listen",
    "LockoutSettings",
    "OAuth2Settings",
    "RouteSettings",
    "Secret",
    "ServiceSettings",
    "StorageSettings",
    "Timeouts",
    "TlsSettings",
    "TwilioSettings",
    "UpstreamTimeouts",
]


class Secret:
    """A secret value from the config. Its repr and str never show it; call :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


def _secret(value: object) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty secret, e.g. ${env:NAME} or ${file:/path}")
    return Secret(value)


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        try:
            return ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def _listen(value: object) -> Listen:
    if isinstance(value, Listen):
        return value
    if not isinstance(value, str):
        raise ValueError("expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.\-]+):(\d{1,5})", value.strip())
    if not m:
        raise ValueError("expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return Listen(host, port)


def _cidr(value: object) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise ValueError("expected an IP address or CIDR such as 10.0.0.0/8")
    try:
        return ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError("CIDR has host bits set; write the network address, e.g. 10.0.0.0/8") from None
        raise ValueError("expected an IP address or CIDR such as 10.0.0.0/8") from None


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
SecretStr = Annotated[Secret, BeforeValidator(_secret), PlainSerializer(lambda _s: "***", return_type=str)]
ListenAddr = Annotated[Listen, BeforeValidator(_listen)]
Cidr = Annotated[IPv4Network | IPv6Network, BeforeValidator(_cidr)]
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# services[].upstream: app — requests go to the application BastionMiddleware wraps, not over the network.
APP_UPSTREAM = "app"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class JsonLimitSettings(_Model):
    """Hard limits on every JSON request body Bastion parses (OpenAPI validation, inspection)."""

    max_depth: int = Field(32, ge=1, le=512)
    max_keys: int = Field(10_000, ge=1, le=10_000_000)
    max_array_length: int = Field(10_000, ge=1, le=10_000_000)
    max_string_length: int = Field(100_000, ge=1, le=100 * 1024 * 1024)
    max_number_length: int = Field(64, ge=1, le=4300)


class Limits(_Model):
    json_: JsonLimitSettings = Field(default_factory=JsonLimitSettings, alias="json")
    max_body: Size = 1024**2
    max_header_bytes: Size = 16 * 1024
    max_headers: int = Field(100, ge=1, le=1000)
    max_url: Size = 8 * 1024
    max_connections: int = Field(10_000, ge=1)
    max_in_flight: int = Field(1_000, ge=1)

    @field_validator("max_header_bytes")
    @classmethod
    def _headers_floor(cls, v: int) -> int:
        if v < 1024:
            raise ValueError("max_header_bytes below 1KiB would reject ordinary requests")
        return v

    @field_validator("max_url")
    @classmethod
    def _url_floor(cls, v: int) -> int:
        if v < 64:
            raise ValueError("max_url below 64 bytes would reject ordinary requests")
        return v


class Timeouts(_Model):
    header: Duration = 10.0  # whole request head, from its first byte (slowloris)
    body: Duration = 30.0  # longest gap between two reads of a request body
    keepalive: Duration = 60.0  # idle keep-alive connection
    shutdown: Duration = 30.0  # grace period for in-flight requests on stop

    @field_validator("header", "body", "keepalive")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be greater than zero")
        return v


class TlsSettings(_Model):
    cert_file: Path
    key_file: Path
    min_version: Literal["1.2", "1.3"] = "1.2"
    hsts_max_age: Duration = 31_536_000.0
    hsts_include_subdomains: bool = False


class _SmtpSettings(_Model):
    """What sending email needs (the alert email channel and passwordless admin sign-in): one set of keys
    and one set of rules."""

    # smtp://host:port (STARTTLS required unless the host is loopback) or smtps://host:port (implicit TLS)
    smtp: str
    sender: str = Field("bastion@localhost", alias="from", pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")
    username: str | None = None
    password: SecretStr | None = None
    timeout: Duration = 10.0

    # What a URL with credentials in it is told (the two sections have always worded it differently).
    _credentials_in_url: ClassVar[str] = (
        "put the SMTP credentials in username and password (a secret reference), not the URL"
    )

    @field_validator("smtp")
    @classmethod
    def _smtp(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError("expected smtp://host:port or smtps://host:port")
        if parts.username or parts.password:
            raise ValueError(cls._credentials_in_url)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("the smtp address has an invalid port") from None
        return v

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class AdminEmailSettings(_SmtpSettings):
    """SMTP for passwordless sign-in codes (the same rules as an alert email channel)."""

    _credentials_in_url: ClassVar[str] = (
        "put the SMTP credentials in username and password (a secret reference)"
    )


_SSO_CALLBACK = "/admin/v1/auth/oidc/callback"
# Asymmetric signatures only: an HS* ID token is MACed with the client secret (OpenID Connect Core §10.1),
# which Bastion does not accept, and "none" is never an algorithm.
_SSO_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 §3.3 scope-token
_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


class AdminSsoSettings(_Model):
    """Admin sign-in with an OpenID Connect provider (docs/admin-accounts.md#single-sign-on-oidc)."""

    issuer: str  # exactly the provider's "iss"; discovery at <issuer>/.well-known/openid-configuration
    client_id: str = Field(min_length=1, max_length=255)
    client_secret: SecretStr
    redirect_url: str  # the admin listener's external URL of /admin/v1/auth/oidc/callback
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    groups_claim: str = Field("groups", min_length=1, max_length=128)
    role_map: dict[str, Literal["viewer", "operator", "admin"]] = Field(default_factory=dict)
    default_role: Literal["none", "viewer"] = "none"  # none: a person in no mapped group is refused
    allowed_domains: list[str] = Field(default_factory=list)  # []: any domain (no email needed)
    trust_idp_mfa: bool = False  # true: an ID token whose amr says MFA completes the sign-in
    idp_mfa_amr: list[str] = Field(default_factory=lambda: ["mfa"], min_length=1)  # RFC 8176 values
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"], min_length=1)
    leeway: Duration = 60.0
    flow_timeout: Duration = 600.0  # the pre-session cookie (state, nonce, PKCE verifier) lives this long

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        require_secure_url(v, "the issuer")
        if urlsplit(v).query:
            raise ValueError("the issuer must not contain a query (OpenID Connect Discovery §2)")
        return v

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, v: str) -> str:
        require_secure_url(v, "redirect_url")
        parts = urlsplit(v)
        if parts.query or not parts.path.endswith(_SSO_CALLBACK):
            raise ValueError(f"redirect_url must end with {_SSO_CALLBACK} and have no query")
        return v

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError("scopes must include openid")
        bad = [s for s in v if not _SCOPE_TOKEN.fullmatch(s)]
        if bad or len(v) > 20:
            raise ValueError("scopes are 1-20 tokens of printable ASCII without spaces, quotes or \\")
        return v

    @field_validator("role_map")
    @classmethod
    def _role_map(cls, v: dict[str, str]) -> dict[str, str]:
        if any(not g or len(g) > 256 for g in v) or len(v) > 1000:
            raise ValueError("role_map has 1-1000 group names of 1-256 characters")
        return v

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = [d.strip().lower() for d in v]
        bad = [d for d in out if not _DOMAIN.fullmatch(d)]
        if bad:
            raise ValueError("allowed_domains are domain names such as example.com")
        return out

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in _SSO_ALGORITHMS]
        if bad:
            raise ValueError(f"ID token algorithms are chosen from {', '.join(_SSO_ALGORITHMS)}")
        return v

    @field_validator("idp_mfa_amr")
    @classmethod
    def _amr(cls, v: list[str]) -> list[str]:
        if any(not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", a) for a in v):
            raise ValueError("idp_mfa_amr lists amr values such as mfa, otp, hwk (RFC 8176)")
        return v

    @model_validator(mode="after")
    def _usable(self) -> AdminSsoSettings:
        if not self.role_map and self.default_role == "none":
            raise ValueError("role_map is empty and default_role is none: nobody could sign in")
        if not 0 <= self.leeway <= 300:
            raise ValueError("leeway is between 0 and 5m")
        if not 60 <= self.flow_timeout <= 3600:
            raise ValueError("flow_timeout is between 1m and 1h")
        return self


class AdminAccountSettings(_Model):
    """Admin accounts (docs/admin-accounts.md): sessions, MFA, lockout and passwordless codes."""

    require_mfa: bool = True
    min_password_length: int = Field(12, ge=8, le=128)
    session_idle: Duration = 1800.0
    session_max: Duration = 12 * 3600.0
    step_up_within: Duration = 600.0  # sensitive actions need a second factor at most this old
    cookie_secure: bool = True  # false only on a loopback admin listener (plain-HTTP tests, local use)
    lockout_failures: int = Field(5, ge=1, le=100)
    lockout_within: Duration = 900.0
    lockout_for: Duration = 900.0
    ip_attempts: int = Field(30, ge=1, le=10_000)  # sign-in attempts per client address per ip_window
    ip_window: Duration = 900.0
    code_digits: int = Field(8, ge=6, le=10)
    code_ttl: Duration = 600.0
    code_attempts: int = Field(5, ge=1, le=20)
    codes_per_address: int = Field(5, ge=1, le=100)  # codes sent per address per code_window
    codes_per_ip: int = Field(20, ge=1, le=10_000)
    code_window: Duration = 3600.0
    email: AdminEmailSettings | None = None  # none: no passwordless sign-in
    sso: AdminSsoSettings | None = None  # none: no sign-in with an OpenID Connect provider
    # The admin listener as people's browsers reach it (https://bastion-admin.example.com): sign-in links
    # in emails are built from it, never from a request's Host header. None: emails carry the code only.
    external_url: str | None = None
    magic_links: bool = True  # with email and external_url: the code's email also carries a sign-in link

    @field_validator(
        "session_idle",
        "session_max",
        "step_up_within",
        "lockout_within",
        "lockout_for",
        "ip_window",
        "code_ttl",
        "code_window",
    )
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be greater than zero")
        return v

    @field_validator("external_url")
    @classmethod
    def _external_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        require_secure_url(v, "external_url")
        parts = urlsplit(v)
        if parts.query or parts.path not in ("", "/"):
            raise ValueError("external_url is scheme://host[:port] only: the console is served at /console")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _order(self) -> AdminAccountSettings:
        if self.session_idle > self.session_max:
            raise ValueError("session_idle cannot exceed session_max")
        if self.code_ttl > 3600:
            raise ValueError("code_ttl is at most 1h: sign-in codes are short-lived")
        return self


class AdminSettings(_Model):
    listen: ListenAddr = Listen("127.0.0.1", 8081)
    token: SecretStr
    allow_ips: list[Cidr] = Field(default_factory=lambda: [ip_network("127.0.0.1/32"), ip_network("::1/128")])
    token_enabled: bool = True  # false: admin.token is refused (people sign in with admin accounts)
    accounts: AdminAccountSettings = Field(default_factory=AdminAccountSettings)

    @model_validator(mode="after")
    def _cookie(self) -> AdminSettings:
        if not self.accounts.cookie_secure and not self.listen.is_loopback:
            raise ValueError(
                "admin.accounts.cookie_secure: false is allowed only on a loopback admin listener"
            )
        return self


class StorageSettings(_Model):
    database: str = "sqlite:///bastion.db"
    state: str = "memory://"
    state_timeout: Duration = 0.05  # each call to a shared state backend (redis://)
    state_prefix: str = Field("bastion", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # Redis key namespace

    @field_validator("database")
    @classmethod
    def _database(cls, v: str) -> str:
        if v.startswith("sqlite:///") or v == "sqlite://":
            return v
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if v.startswith(prefix):
                parts = urlsplit(v)
                if not parts.hostname and "host=" not in parts.query:
                    raise ValueError("expected postgresql://user@host:port/database")
                try:
                    parts.port  # noqa: B018 - raises on a bad port
                except ValueError:
                    raise ValueError("the database URL has an invalid port") from None
                # SQLAlchemy's dialect for psycopg 3 (the driver Bastion installs).
                return "postgresql+psycopg://" + v[len(prefix) :]
        raise ValueError("expected sqlite:///path/to/bastion.db or postgresql://user@host:port/database")

    @field_validator("state")
    @classmethod
    def _state(cls, v: str) -> str:
        if v == "memory://":
            return v
        if v.startswith(("redis://", "rediss://")):
            parse_redis_url(v)  # ValueError says what is wrong, without the URL
            return v
        raise ValueError("expected memory:// or redis://host:port/db")

    @field_validator("state_timeout")
    @classmethod
    def _state_timeout(cls, v: float) -> float:
        if not 0.001 <= v <= 5:
            raise ValueError("state_timeout must be between 1ms and 5s")
        return v


Severity = Literal["debug", "info", "notice", "warning", "error", "critical"]
_TYPE_PREFIX = r"^[a-z_]+(\.[a-z_]*)?$"


class _SinkBase(_Model):
    """What every export sink shares: which events it takes and how much it may hold."""

    name: str | None = Field(None, pattern=_NAME)  # default: the type and its position, e.g. ``webhook-2``
    types: list[Annotated[str, Field(pattern=_TYPE_PREFIX)]] = Field(
        default_factory=list
    )  # prefixes; [] = all
    min_severity: Severity = "debug"
    queue_size: int = Field(10_000, ge=10, le=1_000_000)
    # Events the sink could not deliver wait here (JSON lines) and are sent first when it answers again.
    # Default: ``bastion-sink-<name>.unsent.jsonl`` beside the SQLite database (or in the working directory).
    dead_letter: Path | None = None


class JsonlSinkSettings(_SinkBase):
    type: Literal["jsonl"]
    path: Path
    rotate: Size = 100 * 1024 * 1024
    keep: int = Field(5, ge=1, le=1000)  # rotated files kept: events.jsonl.1 … events.jsonl.<keep>

    @field_validator("rotate")
    @classmethod
    def _rotate(cls, v: int) -> int:
        if v < 4096:
            raise ValueError("rotate must be at least 4KiB")
        return v


class SyslogSinkSettings(_SinkBase):
    type: Literal["syslog"]
    address: str  # udp://host:port or tcp://host:port (RFC 5424; TCP uses octet counting, RFC 6587)
    facility: Literal[
        "user",
        "daemon",
        "auth",
        "authpriv",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ] = "local0"
    app_name: str = Field("bastion", pattern=r"^[!-~]{1,48}$")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError("expected udp://host:port or tcp://host:port")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the syslog address has an invalid port") from None
        if port is None:
            raise ValueError("the syslog address needs a port, e.g. udp://127.0.0.1:514")
        return v


class _SignedWebhook(_Model):
    """What a signed outgoing webhook needs (the webhook sink and the webhook alert channel)."""

    url: str
    secret: SecretStr  # signs each message: Standard Webhooks (webhook-id, -timestamp, -signature)
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return require_secure_url(v, "url")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: Secret) -> Secret:
        standard_webhooks_secret(v.reveal())  # a whsec_ secret must decode (ValueError says so)
        return v


class WebhookSinkSettings(_SinkBase, _SignedWebhook):
    type: Literal["webhook"]
    batch_size: int = Field(100, ge=1, le=10_000)
    flush_interval: Duration = 1.0


EventSink = Annotated[
    JsonlSinkSettings | SyslogSinkSettings | WebhookSinkSettings, Field(discriminator="type")
]


class EventSettings(_Model):
    queue_size: int = Field(10_000, ge=10)
    batch_size: int = Field(500, ge=1)
    flush_interval: Duration = 0.2
    retention: Duration = 90 * 86400.0  # events older than this are purged (P11: keep, but not forever)
    purge_interval: Duration = 3600.0
    sinks: list[EventSink] = Field(default_factory=list)
    # Keys the hash chain (HMAC-SHA-256 instead of SHA-256): without the key, an edit cannot be hidden by
    # recomputing the chain.
    chain_key: SecretStr | None = None

    @field_validator("chain_key")
    @classmethod
    def _chain_key(cls, v: Secret | None) -> Secret | None:
        if v is not None and len(v.reveal().encode()) < 16:
            raise ValueError("chain_key must be at least 16 bytes (e.g. openssl rand -base64 32)")
        return v

    @field_validator("retention")
    @classmethod
    def _retention(cls, v: float) -> float:
        if v < 3600:
            raise ValueError("retention must be at least 1h")
        return v

    @field_validator("purge_interval")
    @classmethod
    def _purge_interval(cls, v: float) -> float:
        if not 60 <= v <= 86400:
            raise ValueError("purge_interval must be between 1m and 1d")
        return v

    @field_validator("sinks")
    @classmethod
    def _sink_names(cls, v: list[Any]) -> list[Any]:
        named = []
        for i, sink in enumerate(v):
            name = sink.name or f"{sink.type}-{i + 1}"
            if name in named:
                raise ValueError(f"sink names must be unique; {name!r} is used twice")
            named.append(name)
            if sink.name is None:
                object.__setattr__(sink, "name", name)
        return v


class CorsSettings(_Model):
    allow_origins: list[str] = Field(min_length=1)
    allow_methods: list[Method] = Field(default_factory=list)  # empty: the route's methods
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: Duration = 600.0

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for origin in v:
            if origin == "*":
                out.append(origin)
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
                raise ValueError(f"origin {origin!r} must be scheme://host[:port] (or '*')")
            out.append(origin.lower())
        return out

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _header_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name != "*" and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a header name")
        return [n.lower() for n in v]

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and ("*" in self.allow_origins or "*" in self.allow_headers):
            raise ValueError("'*' cannot be used with allow_credentials: true; list the origins and headers")
        return self


_AUTH_METHOD = re.compile(
    r"^(api_key|oauth2|twilio_signature|hmac_signature|pkcv|jwt:[a-z0-9][a-z0-9_-]{0,62})$"
)
# Methods that authenticate a message's sender, not a consumer: each stands alone on a route.
SIGNATURE_METHODS = ("twilio_signature", "hmac_signature", "pkcv")
_METHOD_LIST = "api_key, oauth2, jwt:<issuer name>, twilio_signature, hmac_signature or pkcv"
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}\Z")


def _auth(value: object) -> str | list[str]:
    """``none`` (explicit: a route is never open by omission) or a list of methods, any of which may
    authenticate. One clear message for every wrong shape."""
    if value == "none" or value == ["none"]:
        return "none"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ValueError(f"expected 'none' or a list of methods: {_METHOD_LIST}")
    if not value:
        raise ValueError("list at least one method (api_key, oauth2, jwt:<issuer>…), or write auth: none")
    for m in value:
        if m == "none":
            raise ValueError("'none' cannot be combined with other methods")
        if not _AUTH_METHOD.match(m):
            raise ValueError(f"unknown auth method {m!r}; expected 'none', {_METHOD_LIST}")
    if len(set(value)) != len(value):
        raise ValueError("an auth method is listed twice")
    alone = [m for m in value if m in SIGNATURE_METHODS]
    if alone and len(value) > 1:
        hint = (
            " (to require PKCV in addition to a key or token, write require_pkcv: true)"
            if "pkcv" in alone
            else ""
        )
        raise ValueError(f"{alone[0]} cannot be combined with other methods{hint}")
    return list(value)


def _public_url(value: str, what: str) -> str:
    """An absolute http(s) URL as a sender calls it: no query, fragment or user info."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{what} must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http:// or https:// URL")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{what} cannot carry a query or fragment (the request's own query is appended)")
    if "@" in parts.netloc:
        raise ValueError(f"{what} must not contain user info")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{what} has an invalid port") from None
    return value


class TwilioSettings(_Model):
    # The account's Auth Tokens: the primary, and the secondary during a rotation.
    auth_tokens: list[SecretStr] = Field(min_length=1, max_length=4)
    # SharedKey id -> secret, for webhooks Twilio signs with a SharedKey (HMAC_SHA256).
    shared_keys: dict[str, SecretStr] = Field(default_factory=dict)
    public_url: str | None = None
    # Twilio signs no timestamp: the same signed message seen again within this window is refused as a
    # replay. 0 turns that off (explicitly).
    replay_window: Duration = 300.0

    @field_validator("replay_window")
    @classmethod
    def _window(cls, v: float) -> float:
        if v != 0 and not 10 <= v <= 86400:
            raise ValueError("replay_window must be 0 (off) or between 10s and 24h")
        return v

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _public_url(v, "public_url")

    @field_validator("shared_keys")
    @classmethod
    def _keys(cls, v: dict[str, Secret]) -> dict[str, Secret]:
        for key in v:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", key):
                raise ValueError(f"{key[:40]!r} is not a SharedKey id")
        return v


_HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"


class HmacSettings(_Model):
    secrets: list[SecretStr] = Field(min_length=1, max_length=8)
    preset: Literal["standard_webhooks", "github", "stripe", "custom"] = "standard_webhooks"
    tolerance: Duration = 300.0
    # preset: custom only
    signature_header: str | None = None
    timestamp_header: str | None = None
    id_header: str | None = None
    algorithm: Literal["sha256", "sha512"] | None = None
    encoding: Literal["hex", "base64"] | None = None
    signature_prefix: str | None = None

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if not 10 <= v <= 3600:
            raise ValueError("tolerance must be between 10s and 1h")
        return v

    @field_validator("signature_header", "timestamp_header", "id_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(_HEADER_NAME, v):
            raise ValueError(f"{v[:40]!r} is not a header name")
        return v

    @field_validator("signature_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 32 or not v.isprintable() or any(c.isspace() or c == "," for c in v)):
            raise ValueError("signature_prefix: up to 32 printable characters, no spaces or commas")
        return v

    @model_validator(mode="after")
    def _layout(self) -> HmacSettings:
        custom = (
            "signature_header",
            "timestamp_header",
            "id_header",
            "algorithm",
            "encoding",
            "signature_prefix",
        )
        if self.preset == "custom":
            if self.signature_header is None:
                raise ValueError("preset: custom needs signature_header")
        else:
            given = [name for name in custom if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{given[0]} is only for preset: custom ({self.preset} fixes its own layout)"
                )
        if self.preset == "standard_webhooks":
            for secret in self.secrets:
                value = secret.reveal()
                if value.startswith("whsec_"):
                    import base64
                    import binascii

                    try:
                        if not base64.b64decode(value[6:], validate=True):
                            raise ValueError
                    except (binascii.Error, ValueError):
                        raise ValueError("a whsec_ secret must be followed by base64") from None
        return self


def _rate_limits(value: object) -> list[Limit]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("expected a list of rates such as [10/second, 1000/hour]")
    if len(value) > 8:
        raise ValueError("at most 8 rates per route")
    out = []
    for item in value:
        if isinstance(item, Limit):
            out.append(item)
            continue
        try:
            out.append(parse_limit(item))
        except LimitParseError as exc:
            raise ValueError(str(exc)) from None
    if len({limit.period for limit in out}) != len(out):
        raise ValueError("two rates with the same period: keep the smaller one")
    return out


def _quota(value: object) -> Limit | None:
    if value is None or isinstance(value, Limit):
        return value
    try:
        return parse_quota(value)
    except LimitParseError as exc:
        raise ValueError(str(exc)) from None


class ConsumersDefaults(_Model):
    quota: Annotated[Limit | None, PlainValidator(_quota)] = None  # e.g. 100000/month, per consumer


class RouteSettings(_Model):
    path: str
    methods: list[Method] = Field(min_length=1)
    auth: Annotated[str | list[str], PlainValidator(_auth)]
    scopes: list[str] = Field(default_factory=list)
    api_key_in_query: bool = False
    forward_credentials: bool = False
    max_body: Size | None = None
    ip_allow: list[Cidr] = Field(default_factory=list)
    ip_deny: list[Cidr] = Field(default_factory=list)
    cors: CorsSettings | None = None
    trailing_slash: Literal["exact", "either"] = "exact"
    twilio: TwilioSettings | None = None
    hmac: HmacSettings | None = None
    require_pkcv: bool = False
    rate_limit: Annotated[list[Limit], PlainValidator(_rate_limits)] = Field(default_factory=list)
    rate_limit_by: str | None = None  # consumer | key | ip | route | header:<name>
    on_state_failure: Literal["local", "closed", "open"] = "local"
    # OpenAPI (the service's openapi:): strip query parameters and headers the operation does not declare
    forward_unknown: bool = True
    reject_unknown_fields: bool = False  # every object in the body schema: additionalProperties false
    inspect: InspectMode | None = None  # block | monitor | off; default: the service's, then inspection's
    response_fields: ResponseFields | None = None
    # Twilio status callbacks for messages sent through this egress route: delivery outcomes feed its SMS
    # pumping detector (low completion). The route must authenticate the sender (twilio_signature).
    delivery_reports: str | None = Field(None, pattern=_NAME)

    @field_validator("rate_limit_by")
    @classmethod
    def _by(cls, v: str | None) -> str | None:
        if v is None or v in ("consumer", "key", "ip", "route"):
            return v
        if v.startswith("header:") and re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", v[7:]):
            return v
        raise ValueError("expected consumer, key, ip, route or header:<name>")

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("methods are listed twice")
        return v

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        for scope in v:
            if not _SCOPE.match(scope):
                raise ValueError(
                    f"{scope!r} is not a scope (1-128 printable characters, no spaces or quotes)"
                )
        return v

    @model_validator(mode="after")
    def _auth_consistency(self) -> RouteSettings:
        if self.auth == "none":
            if self.scopes:
                raise ValueError("scopes need authentication: this route has auth: none")
            if self.api_key_in_query:
                raise ValueError("api_key_in_query needs auth: [api_key]")
        elif self.api_key_in_query and "api_key" not in self.auth:
            raise ValueError("api_key_in_query needs api_key among the route's auth methods")
        methods = self.auth_methods
        if ("twilio_signature" in methods) != (self.twilio is not None):
            raise ValueError(
                "auth: [twilio_signature] needs a twilio: section (auth_tokens), and twilio: needs that auth"
            )
        if ("hmac_signature" in methods) != (self.hmac is not None):
            raise ValueError(
                "auth: [hmac_signature] needs an hmac: section (secrets), and hmac: needs that auth"
            )
        if self.scopes and methods and methods[0] in ("twilio_signature", "hmac_signature"):
            raise ValueError(f"scopes need a consumer; {methods[0]} authenticates a sender, not a consumer")
        if self.require_pkcv and (not methods or methods[0] in SIGNATURE_METHODS):
            raise ValueError(
                "require_pkcv: true adds PKCV to a consumer credential: use it with auth api_key, oauth2 or "
                "jwt:<issuer> (or write auth: [pkcv] for PKCV alone)"
            )
        consumer_auth = bool(methods) and methods[0] not in ("twilio_signature", "hmac_signature")
        if self.rate_limit_by in ("consumer", "key") and not consumer_auth:
            raise ValueError(
                f"rate_limit_by: {self.rate_limit_by} needs a route that authenticates consumers "
                "(api_key, oauth2, jwt:<issuer> or pkcv); use ip, route or header:<name>"
            )
        if self.rate_limit_by is not None and not self.rate_limit:
            raise ValueError("rate_limit_by needs rate_limit (e.g. rate_limit: [10/second])")
        if self.delivery_reports is not None and methods not in (("twilio_signature",), ("hmac_signature",)):
            raise ValueError(
                "delivery_reports needs reports signed by the provider (auth: [twilio_signature]): anyone "
                "else could report failures and block any number range"
            )
        if self.twilio is not None and self.twilio.public_url is not None and "{" in self.path:
            raise ValueError(
                "twilio.public_url is one fixed URL; a route with path parameters needs public_base_url"
            )
        return self

    @property
    def auth_methods(self) -> tuple[str, ...]:
        return () if self.auth == "none" else tuple(self.auth)

    @property
    def authenticates_consumers(self) -> bool:
        methods = self.auth_methods
        return bool(methods) and methods[0] not in ("twilio_signature", "hmac_signature")

    @property
    def limit_by(self) -> str:
        """Who a rate limit counts: as configured, else the consumer on authenticated routes, else the IP."""
        return self.rate_limit_by or ("consumer" if self.authenticates_consumers else "ip")


InspectMode = Literal["block", "monitor", "off"]


class ResponseFields(_Model):
    """Fields removed from (``deny``) or kept in (``allow``) JSON responses, at any depth: a name matches
    that key anywhere; ``a.b`` a path from the top; ``*.token`` the key ``token`` one level under anything."""

    deny: list[str] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=list)
    max_body: Size = 10 * 1024**2  # a JSON response larger than this is refused (502), never sent unfiltered

    @field_validator("deny", "allow")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not re.fullmatch(r"(\*|[A-Za-z0-9_$@-]+)(\.(\*|[A-Za-z0-9_$@-]+))*", pattern):
                raise ValueError(f"{pattern!r} is not a field pattern (name, a.b, *.name)")
        return v

    @model_validator(mode="after")
    def _one(self) -> ResponseFields:
        if bool(self.deny) == bool(self.allow):
            raise ValueError("give either deny: [...] or allow: [...]")
        return self


class UpstreamTimeouts(_Model):
    connect: Duration = 5.0
    read: Duration = 60.0  # waiting for response headers, and between response body reads


class ServiceSettings(_Model):
    name: str = Field(pattern=_NAME)
    upstream: str
    openapi: OpenApiDocument | None = None  # a file path in YAML; read and checked when the config loads
    validation: Literal["strict", "monitor", "off"] | None = Field(None, alias="validate")
    route_defaults: dict[str, Any] | None = None  # for routes: from_openapi
    inspect: InspectMode | None = None
    routes: list[RouteSettings] = Field(min_length=1)
    ip_allow: list[Cidr] = Field(default_factory=list)
    ip_deny: list[Cidr] = Field(default_factory=list)
    preserve_host: bool = False
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    max_idle_connections: int = Field(1024, ge=0, le=100_000)
    tls_verify: bool = True
    ca_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _openapi(cls, data: Any, info: ValidationInfo) -> Any:
        """Read the service's OpenAPI document; generate its routes or check that the listed ones agree."""
        if not isinstance(data, dict):
            return data
        routes, ref = data.get("routes"), data.get("openapi")
        if ref is None:
            if routes == "from_openapi":
                raise _cross("routes: from_openapi needs openapi: <file>", "routes")
            for key in ("route_defaults", "validate"):
                if key in data:
                    raise _cross(f"{key} needs openapi: <file> on this service", key)
            return data
        if isinstance(ref, OpenApiDocument):
            return data
        if not isinstance(ref, str) or not ref:
            raise _cross("openapi must be the path of an OpenAPI 3.0 or 3.1 document", "openapi")
        base = Path((info.context or {}).get("base_dir") or Path.cwd())
        file = Path(ref) if Path(ref).is_absolute() else base / ref
        try:
            doc = load_openapi(file)
        except ValueError as exc:
            raise _cross(str(exc), "openapi") from None
        data = {**data, "openapi": doc}
        if routes == "from_openapi":
            data["routes"] = _generated_routes(doc, data.get("route_defaults"))
        elif "route_defaults" in data:
            raise _cross("route_defaults is for routes: from_openapi", "route_defaults")
        elif isinstance(routes, list):
            _agree(doc, routes)
        return data

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        if v == APP_UPSTREAM:
            return v  # the wrapped application (BastionMiddleware); the proxy refuses it
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "expected an http:// or https:// URL, e.g. http://127.0.0.1:9000 (or app: the application "
                "BastionMiddleware wraps)"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("the upstream URL cannot carry a query, fragment or credentials")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("the upstream URL has an invalid port") from None
        return v.rstrip("/")


def _generated_routes(doc: OpenApiDocument, defaults: Any) -> list[dict[str, Any]]:
    if not isinstance(defaults, dict) or "auth" not in defaults:
        raise _cross(
            "routes generated from the OpenAPI document need route_defaults with auth "
            "(e.g. route_defaults: {auth: [api_key]})",
            "route_defaults" if isinstance(defaults, dict) else "routes",
        )
    for key in ("path", "methods"):
        if key in defaults:
            raise _cross(
                f"route_defaults cannot set {key}: it comes from the OpenAPI document", "route_defaults"
            )
    if not doc.operations:
        raise _cross("the OpenAPI document has no operations to make routes of", "openapi")
    routes = []
    for op in doc.operations:
        route = {**defaults, "path": op.path, "methods": [op.method]}
        if op.scopes and "scopes" not in defaults and defaults.get("auth") != "none":
            route["scopes"] = list(op.scopes)  # the operation's OAuth2 scopes
        routes.append(route)
    try:  # a bad default is reported once, at route_defaults, not once per generated route
        RouteSettings.model_validate(routes[0])
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise _cross(f"{field}: {first['msg']}" if field else first["msg"], "route_defaults") from None
    return routes


def _agree(doc: OpenApiDocument, routes: list[Any]) -> None:
    """Listed routes and the document's operations must be the same set: no route the document does not
    describe (it could not be validated), no operation without a route (it would be unreachable)."""
    listed: set[tuple[str, str]] = set()
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        path, methods = route.get("path"), route.get("methods")
        if not isinstance(path, str) or not isinstance(methods, list):
            continue  # the route's own fields report it
        for method in methods:
            if not isinstance(method, str):
                continue
            op = doc.find(method.upper(), path)
            if op is None:
                same = [o.path for o in doc.operations if template_shape(o.path) == template_shape(path)]
                hint = f" (the document writes it {same[0]})" if same and same[0] != path else ""
                raise _cross(
                    f"the route {method.upper()} {path} is not an operation of the OpenAPI document{hint}",
                    "routes",
                    index,
                    "path",
                )
            listed.add((op.method, op.path))
    missing = [f"{o.method} {o.path}" for o in doc.operations if (o.method, o.path) not in listed]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise _cross(
            f"the OpenAPI document has operations no route lists: {', '.join(missing[:3])}{more} "
            "(list them, or write routes: from_openapi)",
            "routes",
        )


class LockoutSettings(_Model):
    failures: int = Field(10, ge=1, le=10_000)
    within: Duration = 300.0
    block_for: Duration = 300.0


class IdentitySettings(_Model):
    pepper: SecretStr | None = None
    max_key_ttl: Duration = 90 * 86400.0
    rotation_grace: Duration = 24 * 3600.0
    api_key_header: str = "X-API-Key"
    lockout: LockoutSettings = Field(default_factory=LockoutSettings)
    refresh_interval: Duration = 1.0
    # The store unreachable: identities keep working from memory this long after it last answered, then
    # authentication fails closed (503) until it answers again. Revocations already received still apply.
    max_staleness: Duration = 300.0

    @field_validator("pepper")
    @classmethod
    def _pepper(cls, v: Secret | None) -> Secret | None:
        if v is not None and len(v.reveal().encode("utf-8")) < 16:
            raise ValueError("the pepper must be at least 16 bytes (make one: openssl rand -base64 32)")
        return v

    @field_validator("api_key_header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not re.fullmatch(r"[!#$%&'*+.^`|~0-9A-Za-z-]+", v):
            raise ValueError(f"{v!r} is not a header name")
        if v.lower() in ("authorization", "host", "cookie", "content-type", "content-length"):
            raise ValueError(f"{v} cannot carry API keys")
        return v

    @field_validator("max_key_ttl", "refresh_interval", "rotation_grace", "max_staleness")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be greater than zero")
        return v


class OAuth2Settings(_Model):
    issuer: str
    audience: str | None = None  # the ``aud`` of issued tokens; default: the issuer
    token_ttl: Duration = 900.0
    signing_key_rotation: Duration = 30 * 86400.0
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    token_path: str = "/oauth/token"  # noqa: S105 - a path, not a password
    introspection_path: str = "/oauth/introspect"
    revocation_path: str = "/oauth/revoke"
    jwks_path: str = "/.well-known/jwks.json"
    metadata_path: str = "/.well-known/oauth-authorization-server"
    max_body: Size = 16 * 1024

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        require_secure_url(v, "oauth2.issuer")
        if urlsplit(v).query:
            raise ValueError("oauth2.issuer cannot have a query")
        return v.rstrip("/")

    @field_validator("token_ttl")
    @classmethod
    def _ttl(cls, v: float) -> float:
        if not 60 <= v <= 86400:
            raise ValueError("token_ttl must be between 1m and 24h (short-lived tokens)")
        return v

    @field_validator("signing_key_rotation")
    @classmethod
    def _rotation(cls, v: float) -> float:
        if v < 3600:
            raise ValueError("signing_key_rotation must be at least 1h")
        return v

    @field_validator("token_path", "introspection_path", "revocation_path", "jwks_path", "metadata_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", v):
            raise ValueError("expected an absolute path such as /oauth/token")
        return v


JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


class JwtIssuerSettings(_Model):
    name: str = Field(pattern=_NAME)
    issuer: str
    # Required: without an audience, a token the provider minted for any other API would be accepted.
    # ``audience: null`` opts out explicitly (and ``bastion check`` warns).
    audience: str | None = Field(...)
    jwks_url: str
    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: ["RS256"], min_length=1)
    consumer_claim: str = "sub"
    leeway: Duration = 60.0
    max_token_bytes: Size = 8192

    @field_validator("jwks_url")
    @classmethod
    def _jwks(cls, v: str) -> str:
        return require_secure_url(v, "jwks_url")

    @field_validator("leeway")
    @classmethod
    def _leeway(cls, v: float) -> float:
        if not 0 <= v <= 300:
            raise ValueError("leeway must be between 0s and 5m")
        return v


class InspectionSettings(_Model):
    """Injection and XSS inspection of client data: the default for routes that do not say (``inspect:``
    on a route or a service), and how hard to look."""

    default: InspectMode = "off"
    paranoia: int = Field(1, ge=1, le=4)
    # A value longer than this cannot be inspected at a bounded cost: on an inspected route it is refused
    # (block) or flagged (monitor), never passed unread.
    max_value: Size = 64 * 1024

    @field_validator("max_value")
    @classmethod
    def _max_value(cls, v: int) -> int:
        if not 4096 <= v <= 16 * 1024 * 1024:
            raise ValueError("max_value must be between 4KiB and 16MiB")
        return v


# Headers that tell an attacker what runs behind the gateway; removed from every upstream response.
DEFAULT_HIDDEN_HEADERS = (
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
    "x-version",
    "x-generator",
    "x-drupal-cache",
    "x-backend-server",
)


class ResponseSettings(_Model):
    """What leaves the gateway (P7): upstream 5xx bodies replaced by a generic problem+json (stack traces
    and SQL errors stay inside), and identifying headers removed."""

    replace_upstream_errors: bool = True
    hide_headers: list[str] = Field(default_factory=lambda: list(DEFAULT_HIDDEN_HEADERS))

    @field_validator("hide_headers")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a header name")
        return [n.lower() for n in v]


class InventorySettings(_Model):
    """The API inventory (P2): requests that match no route are recorded by templated path."""

    observe: bool = True
    max_observed: int = Field(10_000, ge=1, le=1_000_000)  # distinct undeclared endpoints kept
    unused_after: Duration = 30 * 86400.0  # a declared route with no traffic this long is reported unused


class WebhookChannelSettings(_SignedWebhook):
    name: str = Field(pattern=_NAME)
    type: Literal["webhook"]


class EmailChannelSettings(_SmtpSettings):
    name: str = Field(pattern=_NAME)
    type: Literal["email"]
    to: list[Annotated[str, Field(pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")]] = Field(min_length=1)


AlertChannel = Annotated[WebhookChannelSettings | EmailChannelSettings, Field(discriminator="type")]

Builtin = Literal[
    "credential_stuffing",
    "traffic_spike",
    "new_source_country",
    "undeclared_endpoint",
    "key_used_after_rotation",
    "admin_outside_policy",
    "sms_pumping",
]
GroupBy = Literal["source_ip", "actor", "route", "resource", "reason", "type", "consumer", "key_id"]


class AlertCondition(_Model):
    """A counting rule: ``count`` events of ``type`` (a prefix) within ``within``, per ``group_by``."""

    type: str = Field(pattern=_TYPE_PREFIX)
    count: int = Field(ge=1, le=1_000_000)
    within: Duration
    group_by: GroupBy | None = None
    severity: Severity | None = None  # count only events at least this severe

    @field_validator("within")
    @classmethod
    def _within(cls, v: float) -> float:
        if not 1 <= v <= 7 * 86400:
            raise ValueError("within must be between 1s and 7d")
        return v


# The parameters each built-in detector takes, with their defaults (docs/alerts.md).
BUILTIN_PARAMETERS: dict[str, dict[str, Any]] = {
    "credential_stuffing": {"distinct": 10, "within": 300.0, "ips": 10},
    "traffic_spike": {"factor": 5.0, "min_rate": 60, "interval": 60.0, "half_life": 1800.0, "warmup": 5},
    "new_source_country": {"on": "country"},
    "undeclared_endpoint": {},
    "key_used_after_rotation": {},
    "admin_outside_policy": {"hours": None, "timezone": "UTC", "allow_ips": []},
    "sms_pumping": {},
}


class AlertRuleSettings(_Model):
    name: str = Field(pattern=_NAME)
    builtin: Builtin | None = None
    when: AlertCondition | None = None
    channels: list[str] = Field(default_factory=list)  # names from alerts.channels; [] = only the event
    cooldown: Duration = 900.0  # one alert per rule and group within this window (dedup, across instances)
    severity: Severity = "warning"
    # Parameters of built-in detectors (each takes only its own; see BUILTIN_PARAMETERS)
    distinct: int | None = Field(None, ge=2, le=100_000)
    within: Duration | None = None
    ips: int | None = Field(None, ge=2, le=100_000)
    factor: float | None = Field(None, gt=1, le=1000)
    min_rate: int | None = Field(None, ge=1)
    interval: Duration | None = None
    half_life: Duration | None = None
    warmup: int | None = Field(None, ge=1, le=1000)
    on: Literal["country", "ip"] | None = None
    hours: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")
    timezone: str | None = None
    allow_ips: list[Cidr] | None = None

    @model_validator(mode="after")
    def _shape(self) -> AlertRuleSettings:
        if (self.builtin is None) == (self.when is None):
            raise ValueError("a rule has either builtin: or when:, not both and not neither")
        allowed = set(BUILTIN_PARAMETERS.get(self.builtin or "", {}))
        for param in (
            "distinct",
            "within",
            "ips",
            "factor",
            "min_rate",
            "interval",
            "half_life",
            "warmup",
            "on",
            "hours",
            "timezone",
            "allow_ips",
        ):
            if getattr(self, param) is not None and param not in allowed:
                owner = f"the {self.builtin} detector" if self.builtin else "a when: rule"
                raise ValueError(f"{param} is not a parameter of {owner}")
        if self.timezone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if self.builtin == "admin_outside_policy" and self.hours is None and not self.allow_ips:
            raise ValueError("admin_outside_policy needs hours: (e.g. 08:00-19:00) or allow_ips:, or both")
        for field_name, low, high in (
            ("within", 1, 86400),
            ("interval", 10, 3600),
            ("half_life", 60, 7 * 86400),
        ):
            value = getattr(self, field_name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"{field_name} is out of range")
        return self

    def parameter(self, name: str) -> Any:
        """The rule's value for a detector parameter, or the detector's default."""
        value = getattr(self, name)
        return BUILTIN_PARAMETERS[self.builtin or ""][name] if value is None else value


class AlertSettings(_Model):
    channels: list[AlertChannel] = Field(default_factory=list)
    rules: list[AlertRuleSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> AlertSettings:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError("alert channel names must be unique")
        rules = [r.name for r in self.rules]
        if len(set(rules)) != len(rules):
            raise ValueError("alert rule names must be unique")
        for rule in self.rules:
            for channel in rule.channels:
                if channel not in names:
                    raise ValueError(
                        f"rule {rule.name} names channel {channel!r}, which alerts.channels does not declare"
                    )
        return self


def _cross(message: str, *at: str | int) -> PydanticCustomError:
    """An error of a rule that spans the config, located at ``at`` (the loader reports that key's line)."""
    return PydanticCustomError("config_cross_check", message, {"at": at})


from .egress import EgressSettings  # noqa: E402 - the egress section uses the value types above


class GatewayConfig(_Model):
    listen: ListenAddr = Listen("127.0.0.1", 8080)
    trusted_proxies: list[Cidr] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    tls: TlsSettings | None = None
    admin: AdminSettings | None = None
    storage: StorageSettings = Field(default_factory=StorageSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    underscore_headers: Literal["drop", "reject", "allow"] = "drop"
    method_override_headers: Literal["strip", "reject"] = "strip"
    response_headers: dict[str, str] = Field(default_factory=dict)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    oauth2: OAuth2Settings | None = None
    jwt_issuers: list[JwtIssuerSettings] = Field(default_factory=list)
    # The gateway's URL as senders of signed webhooks call it (behind a TLS proxy or a path prefix).
    public_base_url: str | None = None
    consumers_defaults: ConsumersDefaults = Field(default_factory=ConsumersDefaults)
    inspection: InspectionSettings = Field(default_factory=InspectionSettings)
    responses: ResponseSettings = Field(default_factory=ResponseSettings)
    inventory: InventorySettings = Field(default_factory=InventorySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    services: list[ServiceSettings] = Field(default_factory=list)  # at least one service or egress route
    egress: list[EgressSettings] = Field(default_factory=list)

    @field_validator("public_base_url")
    @classmethod
    def _public_base(cls, v: str | None) -> str | None:
        return None if v is None else _public_url(v, "public_base_url").rstrip("/")

    @field_validator("response_headers")
    @classmethod
    def _response_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a header name")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"the value of {name} contains a line break")
        return v

    @field_validator("services")
    @classmethod
    def _unique_names(cls, v: list[ServiceSettings]) -> list[ServiceSettings]:
        seen: set[str] = set()
        for i, svc in enumerate(v):
            if svc.name in seen:
                # A custom error type so the loader can point at the repeated service's name.
                raise PydanticCustomError(
                    "duplicate_service",
                    "service names must be unique; '{name}' is used twice",
                    {"name": svc.name, "index": i},
                )
            seen.add(svc.name)
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        if (
            self.admin is not None
            and (self.admin.listen.host, self.admin.listen.port)
            == (
                self.listen.host,
                self.listen.port,
            )
            and self.listen.port != 0
        ):
            raise ValueError("admin.listen must differ from listen: the admin API has its own listener")
        if not self.services and not self.egress:
            raise _cross("declare at least one service (services:) or egress route (egress:)", "services")
        self._check_egress()
        issuers = [i.name for i in self.jwt_issuers]
        if len(set(issuers)) != len(issuers):
            raise _cross("jwt_issuers names must be unique", "jwt_issuers")
        uses_keys: tuple[str | int, ...] | None = None
        # Every place that authenticates callers — service routes and egress routes — by the same rules.
        authenticating = [
            (("egress", e_index, "auth"), f"the egress route {egress.name}", egress.auth_methods)
            for e_index, egress in enumerate(self.egress)
        ] + [
            (("services", s_index, "routes", r_index, "auth"), f"the route {route.path}", route.auth_methods)
            for s_index, svc in enumerate(self.services)
            for r_index, route in enumerate(svc.routes)
        ]
        for at, what, methods in authenticating:
            for method in methods:
                if method == "api_key":
                    uses_keys = uses_keys or at
                elif method == "oauth2" and self.oauth2 is None:
                    raise _cross(f"{what} uses oauth2 but there is no oauth2: section", *at)
                elif method.startswith("jwt:") and method[4:] not in issuers:
                    raise _cross(
                        f"{what} uses {method} but no jwt_issuers entry is named {method[4:]!r}", *at
                    )
        if (uses_keys or self.oauth2 is not None) and self.identity.pepper is None:
            raise _cross(
                "identity.pepper is required when a route uses api_key or oauth2 is configured "
                "(e.g. identity: {pepper: ${env:BASTION_PEPPER}})",
                *(uses_keys or ("oauth2",)),
            )
        if self.oauth2 is not None:
            paths = {r.path for svc in self.services for r in svc.routes}
            o = self.oauth2
            for p in (o.token_path, o.introspection_path, o.revocation_path, o.jwks_path, o.metadata_path):
                if p in paths:
                    raise _cross(f"oauth2 endpoint path {p} is also a route path", "oauth2")
        return self

    def _check_egress(self) -> None:
        """Egress names and path prefixes are unique, no prefix hides (or is hidden by) a route, and
        delivery_reports name an egress route that checks destinations."""
        with_geo = {e.name for e in self.egress if e.geo is not None and e.sms_pumping.enabled}
        for s_index, svc in enumerate(self.services):
            for r_index, route in enumerate(svc.routes):
                if route.delivery_reports is not None and route.delivery_reports not in with_geo:
                    raise _cross(
                        f"delivery_reports: {route.delivery_reports} names no egress route with geo: and "
                        "sms_pumping enabled",
                        "services",
                        s_index,
                        "routes",
                        r_index,
                        "delivery_reports",
                    )
        names: set[str] = set()
        prefixes: list[tuple[str, int]] = []
        for index, egress in enumerate(self.egress):
            if egress.name in names:
                raise _cross(
                    f"egress names must be unique; {egress.name!r} is used twice", "egress", index, "name"
                )
            names.add(egress.name)
            for other, other_index in prefixes:
                a, b = egress.listen_path + "/", other + "/"
                if a.startswith(b) or b.startswith(a):
                    raise _cross(
                        f"listen_path {egress.listen_path} overlaps that of egress[{other_index}] ({other})",
                        "egress",
                        index,
                        "listen_path",
                    )
            prefixes.append((egress.listen_path, index))
            for s_index, svc in enumerate(self.services):
                for r_index, route in enumerate(svc.routes):
                    path = route.path
                    if path == egress.listen_path or path.startswith(egress.listen_path + "/"):
                        raise _cross(
                            f"the route {path} is inside the egress route {egress.name}'s listen_path",
                            "services",
                            s_index,
                            "routes",
                            r_index,
                            "path",
                        )

    def model_post_init(self, __context: Any) -> None:
        return None
