"""What Bastion does to a response before the client sees it (P7), shared by every face: the proxy reads
an upstream's response, the middleware the wrapped application's; both decide here.

``response_fields`` (a route option) filters a JSON response body through :class:`core.fields.FieldFilter`.
Only a body Bastion can read as a whole, as JSON, is filtered; anything else on such a route is refused
(502 ``response_unfilterable``) rather than sent as it came — the filter exists because the body may hold
what the client must not see.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["filter_json", "is_encoded", "json_kind"]


def json_kind(content_types: Sequence[bytes]) -> str:
    """``json`` (one JSON Content-Type), ``ambiguous`` (more than one Content-Type), or ``other``."""
    if len(content_types) > 1:
        return "ambiguous"
    if content_types:
        mime = content_types[0].split(b";", 1)[0].strip().lower()
        if mime == b"application/json" or mime.endswith(b"+json"):
            return "json"
    return "other"


def is_encoded(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a Content-Encoding other than identity applies (a compressed body cannot be filtered)."""
    return any(
        n.lower() == b"content-encoding" and v.strip().lower() not in (b"", b"identity") for n, v in headers
    )


def filter_json(
    raw: bytes | None, apply: Callable[[Any], Any], *, status: int, kind: str, encoded: bool
) -> tuple[bytes | None, str]:
    """``(filtered body, "")``, or ``(None, reason)`` when the response cannot be filtered. ``raw`` is
    None when the body was too large to read (or its reading failed)."""
    reason = "too_large" if raw is None else "encoded" if encoded else "not_json"
    if status == 206:
        return None, "partial"  # a slice of something (or multipart/byteranges): not a JSON document
    if kind == "ambiguous":
        return None, "ambiguous_type"  # several Content-Types: a client may believe the JSON one
    if raw is None or encoded:
        return None, reason
    try:  # JSON is UTF-8 (RFC 8259), without NaN or Infinity; anything else is not filtered
        value = json.loads(raw.decode("utf-8"), parse_constant=_not_json)
        return json.dumps(apply(value), separators=(",", ":"), ensure_ascii=False).encode(), ""
    except (ValueError, RecursionError):
        return None, reason


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
