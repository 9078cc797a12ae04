"""Identities as values: API key format, key digests, principals, scopes and key permissions.

Pure: no storage and no clock. The stores (``bastion.identity``) load records into an in-memory index
that implements :class:`bastion.core.ports.IdentityIndex`; the checks read that index per request.

API key format (like GitHub's token format, so scanners can recognise a key with no false positives)::

    bst_<public id: 12 base62>_<secret: 33 base62><checksum: 6 base62>

The secret has 33 * log2(62) ≈ 196 bits of entropy. The checksum is CRC-32 of everything before it,
in base62: it is not a security measure (anyone can compute it) but lets ``bastion scan`` and
secret scanners tell a real key from random text, and lets the gateway refuse typos cheaply. The
server stores only the public id and ``HMAC-SHA-256(pepper, full key)``.
"""

from __future__ import annotations

import hmac
import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from .forwarding import NetworkSet

__all__ = [
    "BASE62",
    "ID_LENGTH",
    "KEY_PATTERN",
    "SECRET_LENGTH",
    "UNCLAIMED",
    "AuthFailure",
    "ClientRecord",
    "ConsumerRecord",
    "IdentityHeaders",
    "KeyRecord",
    "Permission",
    "Principal",
    "PublicKeyRecord",
    "ScopeError",
    "api_key_digest",
    "check_scope_subset",
    "checksum_ok",
    "format_api_key",
    "identity_headers",
    "key_id_of",
    "key_principal",
    "parse_api_key",
    "parse_permission",
    "parse_scopes",
    "public_key_principal",
    "valid_scope",
]

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "bst_"
ID_LENGTH = 12
SECRET_LENGTH = 33
CHECKSUM_LENGTH = 6
# For scanners too: the exact shape, anchored on word boundaries.
KEY_PATTERN = re.compile(r"\bbst_[0-9A-Za-z]{12}_[0-9A-Za-z]{39}\b")
_KEY = re.compile(r"bst_([0-9A-Za-z]{12})_([0-9A-Za-z]{33})([0-9A-Za-z]{6})")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 §3.3 scope-token
_UNSAFE_IN_FIELD = re.compile(r"[\r\n\x00]")  # what would end or split an HTTP header field


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(BASE62[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def format_api_key(public_id: str, secret: str) -> str:
    body = f"{PREFIX}{public_id}_{secret}"
    return body + _checksum(body)


def key_id_of(text: str) -> str | None:
    """The public id of a key-shaped string (format only; see :func:`checksum_ok`)."""
    if len(text) != 56:
        return None
    m = _KEY.fullmatch(text)
    return m.group(1) if m is not None else None


def checksum_ok(text: str) -> bool:
    return hmac.compare_digest(_checksum(text[:-CHECKSUM_LENGTH]), text[-CHECKSUM_LENGTH:])


def parse_api_key(text: str) -> str | None:
    """The public id of a well-formed key with a valid checksum, else None (no secret is returned:
    callers digest the whole key)."""
    key_id = key_id_of(text)
    if key_id is None or not checksum_ok(text):
        return None
    return key_id


def api_key_digest(pepper: bytes, key: str) -> bytes:
    """Keyed digest stored instead of the key (HMAC-SHA-256 with the server pepper)."""
    return hmac.digest(pepper, key.encode("ascii"), "sha256")


# -- scopes ---------------------------------------------------------------------------------------


class ScopeError(ValueError):
    pass


def valid_scope(scope: str) -> bool:
    return _SCOPE.fullmatch(scope) is not None


def parse_scopes(values: Iterable[str] | str) -> frozenset[str]:
    """Scopes from a space-separated string (OAuth) or a list; each must be an RFC 6749 scope-token."""
    items = values.split() if isinstance(values, str) else list(values)
    bad = [s for s in items if not valid_scope(s)]
    if bad:
        raise ScopeError("invalid scope: scopes are 1-128 printable characters without spaces, quotes or \\")
    return frozenset(items)


def check_scope_subset(
    asked: Iterable[str], allowed: frozenset[str], owner: str = "consumer"
) -> frozenset[str]:
    """Least privilege: a key or client never holds a scope its owner does not have."""
    wanted = frozenset(asked)
    extra = wanted - allowed
    if extra:
        raise ScopeError(f"scopes not allowed for this {owner}: {', '.join(sorted(extra))}")
    return wanted


# -- key permissions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Permission:
    """``METHOD /path`` a key may call. ``*`` as method means any; in the path a ``*`` or ``{name}``
    segment matches one segment, and a final ``**`` matches the rest (one or more segments)."""

    method: str
    segments: tuple[str, ...]
    rest: bool
    text: str

    def allows(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method != method and not (method == "HEAD" and self.method == "GET"):
            return False
        parts = path.strip("/").split("/") if path != "/" else []
        n = len(self.segments)
        if self.rest:
            if len(parts) <= n:
                return False
        elif len(parts) != n:
            return False
        return all(want in ("*", got) for want, got in zip(self.segments, parts, strict=False))


_METHODS = {"*", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def parse_permission(text: str) -> Permission:
    method, sep, path = text.strip().partition(" ")
    path = path.strip()
    method = method.upper()
    if not sep or method not in _METHODS or not path.startswith("/"):
        raise ValueError(f"permission {text!r} must look like 'GET /v1/orders/*' (METHOD and absolute path)")
    raw = path.strip("/").split("/") if path != "/" else []
    rest = bool(raw) and raw[-1] == "**"
    if rest:
        raw = raw[:-1]
    segments = []
    for seg in raw:
        if seg == "**" or not seg:
            raise ValueError(f"permission {text!r}: '**' is allowed only at the end, and segments not empty")
        segments.append("*" if seg == "*" or (seg.startswith("{") and seg.endswith("}")) else seg)
    return Permission(method, tuple(segments), rest, f"{method} {path}")


# -- records and principals -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as an authentication check found out. ``scopes`` are the effective scopes: for
    keys and Bastion's own tokens, already narrowed to what the consumer (and client) hold; for an
    external issuer's token, what the issuer granted (the issuer is the authority for its subjects).

    Built once and shared by every request of the same credential (prebuilt with the snapshot for keys,
    remembered with the token otherwise): frozen, and read per request through its slots."""

    consumer: str  # the consumer's name (or a token's subject for an external issuer)
    scopes: frozenset[str]
    method: str  # "api_key" | "oauth2" | "jwt:<issuer name>"
    consumer_id: str | None = None
    key_id: str | None = None
    client_id: str | None = None
    ip_allow: tuple[NetworkSet, ...] = ()
    permissions: tuple[Permission, ...] = ()
    upstream_headers: IdentityHeaders | None = None  # identity_headers(), when prebuilt
    credential_id: str | None = None  # PKCV: the public key (``CR…``) that signed the request


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    id: str
    name: str
    active: bool
    scopes: frozenset[str]
    ip_allow: NetworkSet | None = None
    quota: object | None = None  # a ratelimit.Limit: this consumer's own quota (None: the default)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str  # the public id
    consumer_id: str
    digest: bytes
    scopes: frozenset[str]
    permissions: tuple[Permission, ...] = ()
    ip_allow: NetworkSet | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    rotated_to: str | None = None  # set during a rotation's grace period
    principal: Principal | None = None  # prebuilt at snapshot load: the same for every request
    # Until when the key is simply good: prebuilt principal, not revoked, not in a rotation's grace
    # period, unexpired. -inf when any of that fails (the full judgement then says why). Derived.
    good_until: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        simple = self.principal is not None and self.revoked_at is None and self.rotated_to is None
        until = (math.inf if self.expires_at is None else self.expires_at) if simple else -math.inf
        object.__setattr__(self, "good_until", until)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    consumer_id: str
    scopes: frozenset[str]
    secret_digest: bytes | None  # client_secret_basic / client_secret_post
    jwks: object | None = None  # private_key_jwt (RFC 7523): the client's public keys
    active: bool = True


@dataclass(frozen=True, slots=True)
class PublicKeyRecord:
    """A consumer's registered RSA public key for PKCV; ``key`` is the verification key object."""

    id: str
    consumer_id: str
    key: object
    principal: Principal | None = None  # prebuilt at load; None when the consumer is disabled


UNCLAIMED = "token_unclaimed"  # a verifier's "not one of mine": the next verifier may try


class AuthFailure(Exception):
    """An authentication attempt that failed. ``code`` goes to the event log only: every failure looks
    the same to the client (unknown id, wrong secret and bad checksum are indistinguishable)."""

    def __init__(self, code: str, key_id: str | None = None, **evidence: object) -> None:
        super().__init__(code)
        self.code = code
        self.key_id = key_id
        self.evidence = evidence


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """The header fields that tell the upstream who called: ``pairs`` as (name, value), and ``lines``,
    the same fields as HTTP/1.1 header lines (``name: value\\r\\n`` each), rendered once with the
    principal instead of per request. The values are a consumer's name, a checked token subject and
    scope names, none of which can hold CR, LF or NUL (see :func:`identity_headers`)."""

    pairs: tuple[tuple[str, str], ...]
    lines: str


def identity_headers(consumer: str, scopes: frozenset[str]) -> IdentityHeaders:
    """What the upstream learns of an authenticated caller: ``X-Bastion-Consumer`` and the effective
    scopes, sorted and space-separated, in ``X-Bastion-Scopes``. Raises ``ValueError`` for a value that
    holds CR, LF or NUL. The builders of principals pass only validated names, subjects and scopes;
    this is the last line, so a field is never split whatever reaches it. (It stays out of
    :class:`Principal` itself: a principal is a value that other layers, such as rate-limit keys, take
    with any text.)"""
    pairs = (("x-bastion-consumer", consumer), ("x-bastion-scopes", " ".join(sorted(scopes))))
    for _, value in pairs:
        if _UNSAFE_IN_FIELD.search(value):
            raise ValueError("an identity header value cannot hold CR, LF or NUL")
    return IdentityHeaders(pairs, "".join(f"{name}: {value}\r\n" for name, value in pairs))


def key_principal(rec: KeyRecord, consumer: ConsumerRecord) -> Principal:
    """What a key authenticates as: its scopes narrowed to its consumer's, both address lists."""
    scopes = rec.scopes & consumer.scopes
    return Principal(
        consumer=consumer.name,
        scopes=scopes,
        method="api_key",
        consumer_id=consumer.id,
        key_id=rec.id,
        ip_allow=tuple(n for n in (consumer.ip_allow, rec.ip_allow) if n),
        permissions=rec.permissions,
        upstream_headers=identity_headers(consumer.name, scopes),
    )


def public_key_principal(rec: PublicKeyRecord, consumer: ConsumerRecord) -> Principal:
    """What a PKCV-signed request authenticates as: the key's consumer, with the consumer's scopes."""
    return Principal(
        consumer=consumer.name,
        scopes=consumer.scopes,
        method="pkcv",
        consumer_id=consumer.id,
        ip_allow=(consumer.ip_allow,) if consumer.ip_allow else (),
        upstream_headers=identity_headers(consumer.name, consumer.scopes),
        credential_id=rec.id,
    )
