"""Error responses as ``application/problem+json`` (RFC 9457).

Every gateway-made error carries a stable ``code`` (also the last part of ``type``) and never echoes
request data: the title comes from a fixed table, the detail from the check's safe text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

__all__ = ["PROBLEM_TYPE_PREFIX", "problem_body"]

PROBLEM_TYPE_PREFIX = "urn:bastion:problem:"


def problem_body(
    status: int,
    code: str,
    detail: str = "",
    request_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    doc: dict[str, object] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        doc["detail"] = detail
    if request_id:
        doc["request_id"] = request_id
    if extra:
        for key, value in extra.items():
            doc.setdefault(key, value)
    return json.dumps(doc, separators=(",", ":")).encode()
