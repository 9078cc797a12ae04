"""The one rule for URLs Bastion trusts for keys and identities (an OAuth2 issuer, an external issuer's
JWKS): ``https://``, or plain ``http://`` only to ``localhost`` or a loopback address (development and
tests). Checked at config load and again by whatever fetches from the URL, with the same words."""

from __future__ import annotations

from ipaddress import ip_address
from urllib.parse import urlsplit

__all__ = ["is_loopback_host", "require_secure_url", "split_authority"]


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
