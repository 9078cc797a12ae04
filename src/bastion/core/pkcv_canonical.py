"""The canonical request of Twilio's Public Key Client Validation (P18), as its SDKs compute it.

``rqh`` in a ``Twilio-Client-Validation`` token is the SHA-256 of this string. Twilio's SDKs disagree
on details, so the verifier (``checks/pkcv.py``) accepts both forms below and the egress signer
(``egress/signing.py``) emits the Java one, the reference Twilio's documentation links.
Pure: strings in, strings out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from urllib.parse import quote, unquote

from .headers import Headers
from .urls import split_authority

__all__ = ["canonical_java", "canonical_python", "request_hash"]

_UNRESERVED_AND_SLASH = "/-._~"


def _header_lines(headers: Headers, signed: Sequence[str], strip_default_port: bool) -> list[str]:
    lines = []
    for name in signed:
        values = headers.getall(name) if name in headers else None
        if not values:
            continue
        if strip_default_port and name == "host":
            values = [_host_without_default_port(v) for v in values]
        lines.append(f"{name}:{','.join(sorted(values))}")
    return lines


def _host_without_default_port(value: str) -> str:
    host, port = split_authority(value)
    return host if port in ("443", "80") else value


def _assemble(
    method: str, path: str, query: str, lines: list[str], signed: Sequence[str], body: bytes
) -> str:
    parts = [method, path, query]
    if lines:
        parts.append("\n".join(lines))
    parts.append("")
    parts.append(";".join(signed))
    parts.append(hashlib.sha256(body).hexdigest() if body else "")
    return "\n".join(parts)


def canonical_python(
    method: str, path: str, query: str, headers: Headers, signed: Sequence[str], body: bytes
) -> str:
    """twilio-python's canonical request."""
    sorted_query = "&".join(sorted(query.split("&")))
    return _assemble(method, path, sorted_query, _header_lines(headers, signed, False), signed, body)


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if seg == ".":
            if i == len(segments) - 1:
                out.append("")
            continue
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if i == len(segments) - 1:
                out.append("")
            continue
        out.append(seg)
    return "/".join(out)


def canonical_java(
    method: str, path: str, query: str, headers: Headers, signed: Sequence[str], body: bytes
) -> str:
    """twilio-java's canonical request (RequestCanonicalizer)."""
    if not path:
        java_path = "/"
    else:
        decoded = unquote(_remove_dot_segments(path), errors="strict")
        java_path = quote(decoded, safe=_UNRESERVED_AND_SLASH)
    replaced = query.replace("+", "%20").replace("*", "%2A").replace("%7E", "~")
    java_query = "&".join(sorted(replaced.split("&")))
    return _assemble(method, java_path, java_query, _header_lines(headers, signed, True), signed, body)


def request_hash(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
