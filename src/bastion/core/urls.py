"""The one rule for URLs Bastion trusts for keys and identities (an OAuth2 issuer, an external issuer's
JWKS): ``https://``, or plain ``http://`` only to ``localhost`` or a loopback address (development and
tests). Checked at config load and again by whatever fetches from the URL, with the same words."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "OPENAPI_METHODS",
    "REDIS_URL_OPTIONS",
    "RedisTarget",
    "is_loopback_host",
    "openapi_base_path",
    "parse_redis_url",
    "require_secure_url",
    "split_authority",
]


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure_url(url: object, what: str) -> str:
    """``url`` unchanged if it is fit to trust, else ``ValueError`` saying why (never echoing it)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what} must be a non-empty string")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"{what} must not contain whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError(f"{what} must use https:// (not {parts.scheme or 'a relative URL'})")
    if "@" in parts.netloc:
        raise ValueError(f"{what} must not contain user info (user:password@)")
    if "#" in url:
        raise ValueError(f"{what} must not contain a fragment (#...)")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError:
        raise ValueError(f"{what} has an invalid port") from None
    if scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(
            f"{what} must use https://; http:// is allowed only to localhost or a loopback address"
        )
    return url


def split_authority(authority: str) -> tuple[str, str | None]:
    """``host[:port]`` → ``(host, port or None)``; an IPv6 literal keeps its brackets."""
    if authority.startswith("["):
        end = authority.find("]")
        if end >= 0:
            rest = authority[end + 1 :]
            return authority[: end + 1], rest[1:] if rest.startswith(":") else None
        return authority, None
    host, sep, port = authority.rpartition(":")
    if not sep:
        return authority, None
    return host, port


@dataclass(frozen=True)
class RedisTarget:
    """Where ``storage.state: redis://…`` points, parsed once at config load."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool
    verify: bool  # verify the server's certificate (rediss:// only); ?ssl_cert_reqs=none turns it off
    ca_file: str | None  # ?ssl_ca_certs=/path: a CA bundle for the server's certificate


REDIS_URL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs")


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://[user:password@]host[:port][/db][?options]`` (``rediss://`` for TLS), or ``ValueError``
    saying what is wrong, never echoing the URL (it may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("expected redis://host:port/db")
    if not parts.hostname:
        raise ValueError("expected redis://host:port/db")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the redis URL has an invalid port") from None
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit() and len(path) <= 2):
        raise ValueError("the redis URL's path is a database number, e.g. redis://host:6379/0")
    try:
        options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise ValueError("the redis URL has an invalid option") from None
    unknown = sorted(set(options) - set(REDIS_URL_OPTIONS))
    if unknown:
        raise ValueError(
            f"the redis URL has an unknown option {unknown[0]!r} (known: {', '.join(REDIS_URL_OPTIONS)})"
        )
    tls = parts.scheme == "rediss"
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in ("required", "none"):
        raise ValueError("the redis URL's ssl_cert_reqs must be 'required' or 'none'")
    if options and not tls:
        raise ValueError("the redis URL's ssl_* options need rediss://")
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
        verify=reqs == "required",
        ca_file=options.get("ssl_ca_certs") or None,
    )


# The operations of an OpenAPI path item, in the document's own (lower-case) spelling.
OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def openapi_base_path(spec: object) -> str:
    """The path of an OpenAPI document's first server URL (``https://api.example.com/shop`` → ``/shop``;
    none → ``""``): its paths are relative to it. ``ValueError`` for a URL with ``{variables}``."""
    servers = spec.get("servers") if isinstance(spec, dict) else None
    first = servers[0] if isinstance(servers, list) and servers else None
    url = first.get("url", "") if isinstance(first, dict) else ""
    url = url if isinstance(url, str) else ""
    if "://" in url:
        url = "/" + url.split("://", 1)[1].partition("/")[2]
    path = url.split("?", 1)[0].rstrip("/")
    if "{" in path:
        raise ValueError("OpenAPI server URLs with variables are not supported; give servers: [{url: /base}]")
    return path if path.startswith("/") or not path else "/" + path
