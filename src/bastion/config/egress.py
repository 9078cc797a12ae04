"""The ``egress:`` section: routes for calls the application makes *to* a third-party API (P13, P15-P18).

docs/egress.md explains each setting; docs/configuration.md lists them. Imported by ``models`` (the
shared value types come from there); kept apart because it is a section of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import phonenumbers
from pydantic import Field, PlainValidator, field_validator, model_validator

from ..core.ratelimit import Limit, LimitParseError, parse_limit
from ..core.urls import require_secure_url
from .models import (
    _NAME,
    Cidr,
    Duration,
    Method,
    SecretStr,
    Size,
    UpstreamTimeouts,
    _auth,
    _Model,
)

__all__ = [
    "NUMBER_TYPES",
    "CapSettings",
    "EgressCredentials",
    "EgressSettings",
    "GeoSettings",
    "OperationRule",
    "PkcvSigningSettings",
    "PumpingSettings",
]

# phonenumbers' number types, by the names the config uses.
NumberType = Literal[
    "premium_rate",
    "shared_cost",
    "toll_free",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
    "fixed_line_or_mobile",
    "unknown",
]
NUMBER_TYPES: tuple[str, ...] = get_args(NumberType)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
# Headers a caller may never set towards the provider (Bastion writes them, or they are framing).
_RESERVED_HEADERS = frozenset(
    {"host", "authorization", "content-length", "transfer-encoding", "connection", "twilio-client-validation"}
)


def _country(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{str(value)[:8]!r} is not an ISO 3166-1 alpha-2 country code (e.g. US, GB)")
    return value.upper()


Country = Annotated[str, PlainValidator(_country)]


def _cap_limit(value: object) -> Limit:
    if isinstance(value, Limit):
        return value
    try:
        return parse_limit(value)
    except LimitParseError as exc:
        raise ValueError(str(exc)) from None


class OperationRule(_Model):
    """One provider operation: ``METHOD /path/{placeholders}``, relative to the egress target."""

    method: Method | Literal["*"]
    path: str

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or "?" in v or "#" in v or "//" in v:
            raise ValueError("expected a path template such as /2010-04-01/Accounts/{account}/Messages.json")
        return v


class BasicCredential(_Model):
    # The account's API key SID (SK…) or account SID: an identifier, not a secret.
    username: str = Field(min_length=1, max_length=256, pattern=r"^[^:\x00-\x1f\x7f]+$")
    password: SecretStr


class HeaderCredential(_Model):
    name: str
    value: SecretStr

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HEADER_NAME.match(v) or v.lower() in _RESERVED_HEADERS - {"authorization"}:
            raise ValueError("expected a header name such as X-Api-Key")
        return v.lower()


class EgressCredentials(_Model):
    """What Bastion sends the provider; exactly one kind. The caller never sees or sends it."""

    basic: BasicCredential | None = None
    bearer: SecretStr | None = None
    header: HeaderCredential | None = None

    @model_validator(mode="after")
    def _one(self) -> EgressCredentials:
        if sum(x is not None for x in (self.basic, self.bearer, self.header)) != 1:
            raise ValueError(
                "give exactly one of basic: {username, password}, bearer: or header: {name, value}"
            )
        return self


class GeoSettings(_Model):
    """Destination numbers (P16): parsed with phonenumbers, refused by country, prefix and number type."""

    fields: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-\[\]]{1,128}$")]] = Field(min_length=1)
    allow_countries: list[Country] | None = None  # None: every country not denied
    deny_countries: list[Country] = Field(default_factory=list)
    deny_prefixes: list[Annotated[str, Field(pattern=r"^\+[0-9]{1,15}$")]] = Field(default_factory=list)
    # Premium-rate and shared-cost numbers are the classic toll-fraud targets: refused unless listed off.
    deny_types: list[NumberType] = Field(default_factory=lambda: ["premium_rate", "shared_cost"])
    default_region: Country | None = None  # for national forms ("020 7946 0000"); None: E.164 only
    require_valid: bool = True  # a number phonenumbers does not know as assigned is refused

    @model_validator(mode="after")
    def _consistent(self) -> GeoSettings:
        if self.allow_countries is not None:
            if not self.allow_countries:
                raise ValueError("allow_countries is empty: list at least one country, or leave it out")
            both = set(self.allow_countries) & set(self.deny_countries)
            if both:
                raise ValueError(f"{sorted(both)[0]} is both allowed and denied")
        return self


class CapSettings(_Model):
    per: Literal["destination_country", "destination_prefix", "destination", "caller"]
    limit: Annotated[Limit, PlainValidator(_cap_limit)]
    prefix_length: int = Field(6, ge=2, le=15)  # digits of the E.164 number (with the country code)


class VolumeSettings(_Model):
    """Sudden volume to one country: this window's messages against the day's average window."""

    enabled: bool = True
    within: Duration = 600.0
    factor: float = Field(10.0, gt=1, le=1000)
    min_count: int = Field(100, ge=1, le=1_000_000)


class CompletionSettings(_Model):
    """Low completion: delivery reports (status callbacks routed through Bastion) for one prefix."""

    enabled: bool = True
    within: Duration = 3600.0
    min_reports: int = Field(20, ge=1, le=1_000_000)
    min_rate: float = Field(0.3, gt=0, lt=1)
    prefix_length: int = Field(6, ge=2, le=15)


class PumpingSettings(_Model):
    """SMS pumping (P17): numbers in one range, sudden volume, low completion → alert and cool-down."""

    enabled: bool = True
    auto_block: bool = True
    sequential: int = Field(10, ge=2, le=10_000)  # distinct numbers in one range within `within`
    within: Duration = 600.0
    range_digits: int = Field(3, ge=1, le=6)  # the trailing digits that vary inside a range
    block_for: Duration = 1800.0
    status: Literal[429, 403] = 429
    volume: VolumeSettings = Field(default_factory=VolumeSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)

    @field_validator("within", "block_for")
    @classmethod
    def _window(cls, v: float) -> float:
        if not 1 <= v <= 7 * 86400:
            raise ValueError("must be between 1s and 7d")
        return v


class PkcvSigningSettings(_Model):
    """Sign each outbound request with a Twilio-Client-Validation JWT (P18), the Java SDK's canonical form."""

    credential_id: str = Field(pattern=r"^CR[0-9a-f]{32}$")
    private_key: SecretStr  # PEM; RSA, 2048 bits or more, e = 65537
    algorithm: Literal["RS256", "PS256"] = "RS256"
    api_key_sid: str | None = None  # the token's iss; default: the basic credential's username
    account_sid: str | None = None  # the token's sub; default: the path's {account}, else the token's iss
    ttl: Duration = 300.0

    @field_validator("private_key")
    @classmethod
    def _key(cls, v: Any) -> Any:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(v.reveal().encode("utf-8"), password=None)
        except (ValueError, TypeError):
            raise ValueError("expected an unencrypted PEM RSA private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("PKCV needs an RSA private key")
        if key.key_size < 2048 or key.public_key().public_numbers().e != 65537:
            raise ValueError("PKCV keys are RSA with at least 2048 bits and exponent 65537")
        return v

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: float) -> float:
        if not 10 <= v <= 300:
            raise ValueError("must be between 10s and 300s (Twilio refuses tokens valid longer)")
        return v


class EgressSettings(_Model):
    name: str = Field(pattern=_NAME)
    listen_path: str
    target: str
    # consumer names, as bastion consumers create accepts them
    callers: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]] = Field(min_length=1)
    auth: Annotated[str | list[str], PlainValidator(_auth)] = Field(default_factory=lambda: ["api_key"])
    scopes: list[str] = Field(default_factory=list)
    credentials: EgressCredentials
    allow: list[OperationRule] = Field(default_factory=list)
    deny: list[OperationRule] = Field(default_factory=list)
    geo: GeoSettings | None = None
    caps: list[CapSettings] = Field(default_factory=list)
    sms_pumping: PumpingSettings = Field(default_factory=PumpingSettings)
    pkcv: PkcvSigningSettings | None = None
    block_private_urls: bool = True  # URL fields pointing at private/loopback/metadata addresses (SSRF)
    url_allow_hosts: list[str] | None = None  # when set, URL fields may only name these hosts
    forward_headers: list[str] = Field(default_factory=list)  # beyond the built-in short list
    ip_allow: list[Cidr] = Field(default_factory=list)
    max_body: Size | None = None
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    tls_verify: bool = True
    ca_file: Path | None = None
    proxy: str | None = None  # http://host:port: an HTTP CONNECT proxy towards the provider
    max_idle_connections: int = Field(64, ge=0, le=10_000)

    @field_validator("listen_path")
    @classmethod
    def _listen_path(cls, v: str) -> str:
        from ..core.paths import PathRejected, canonicalize_path

        if not v.startswith("/") or v == "/" or v.endswith("/") or "{" in v:
            raise ValueError("expected a path prefix such as /egress/twilio (no trailing slash)")
        try:
            if canonicalize_path(v) != v:
                raise ValueError("the path prefix must be canonical (no dot-segments, encodings or //)")
        except PathRejected as exc:
            raise ValueError(f"the path prefix is not allowed ({exc.code})") from None
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        # https only, except to a loopback address (a local fake provider in tests)
        require_secure_url(v, "target")
        parts = urlsplit(v)
        if parts.query or parts.fragment:
            raise ValueError("the target URL cannot carry a query or fragment")
        return v.rstrip("/")

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or not port or parts.path not in ("", "/"):
            raise ValueError("expected an HTTP CONNECT proxy as http://host:port")
        if parts.username or parts.password:
            raise ValueError("proxy credentials are not supported in the URL")
        return v

    @field_validator("forward_headers")
    @classmethod
    def _forward_headers(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            if not _HEADER_NAME.match(name) or name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name[:64]!r} cannot be forwarded (not a header name, or Bastion sets it)")
            out.append(name.lower())
        return out

    @field_validator("url_allow_hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for host in v:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.\-]{1,253}", host):
                raise ValueError(
                    f"{host[:64]!r} is not a host name (e.g. hooks.example.com or *.example.com)"
                )
        return [h.lower() for h in v]

    @model_validator(mode="after")
    def _consistent(self) -> EgressSettings:
        if self.auth == "none":
            raise ValueError("an egress route authenticates its callers: auth: none is not allowed")
        for method in self.auth:
            if method in ("twilio_signature", "hmac_signature"):
                raise ValueError(f"{method} authenticates a webhook sender, not a caller of an egress route")
        per_destination = [c.per for c in self.caps if c.per != "caller"]
        if per_destination and self.geo is None:
            raise ValueError(
                f"caps per {per_destination[0]} need geo: (the fields that hold destination numbers)"
            )
        if self.pkcv is not None and self.pkcv.api_key_sid is None and self.credentials.basic is None:
            raise ValueError("pkcv needs api_key_sid: when the credentials are not basic")
        return self

    @property
    def auth_methods(self) -> tuple[str, ...]:
        return tuple(self.auth)
