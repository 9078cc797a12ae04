"""Injection and XSS inspection of client data (P4): ``inspect: block | monitor | off`` on a route (or its
service, or ``inspection.default``).

Every value a client controls — path segments, query and form fields, JSON strings (and keys), cookies,
``User-Agent``, ``Referer``, custom ``X-`` headers — is scanned by the detection engine
(:mod:`bastion.checks.inspection`: SQL injection, XSS, OS command injection, path traversal). ``block``
answers 403 ``attack_detected`` and forwards nothing; ``monitor`` lets the request through and records a
``request.flagged`` event. Either way the event says which family and rule matched and where; the
client's answer never quotes the request.

A JSON body is parsed once, with the JSON limits, and shared with OpenAPI validation (whichever runs
first parses it). Bodies of other textual types are read (bounded by the route's ``max_body``) and
scanned; binary bodies (images, ``application/octet-stream``) are not.

A long value is scanned whole, in overlapping windows of the engine's scan length; a value longer than
``inspection.max_value`` cannot be inspected within a bounded cost and fails closed: it is a finding
(``inspection.too_long``), refused by ``block`` — padding a payload past the scan window is not a way
through.
"""

from __future__ import annotations

from typing import Any, Literal

from ..core.decision import Context, Deny, Verdict
from ..core.request import BodyReadError, RequestView
from .inspection import DEFAULT_MAX_LENGTH, Finding, Inspector, request_values
from .json_body import JsonLimits, json_body

__all__ = ["ATTACK_DETECTED", "InspectCheck"]

ATTACK_DETECTED = "attack_detected"
_WINDOW = DEFAULT_MAX_LENGTH  # what the engine scans of one value
_OVERLAP = 512
_TOO_LONG = Finding("size", "inspection.too_long", 1, "")
# Locations whose values may be credentials or session state: the event names the location and the rule,
# never an excerpt of the value.
_SENSITIVE = (
    "cookie",
    "header.cookie",
    "header.authorization",
    "header.x-api-key",
    "header.proxy-authorization",
)


def _textual(content_type: str | None) -> tuple[bool, bool]:
    """(inspect the body?, is it JSON?)"""
    if content_type is None:
        return True, False
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        return True, True
    textual = (
        mime in ("application/x-www-form-urlencoded", "multipart/form-data", "application/xml")
        or mime.startswith("text/")
        or mime.endswith("+xml")
        or mime == "application/graphql"
    )
    return textual, False


class InspectCheck:
    name = "inspect"

    def __init__(
        self,
        inspector: Inspector,
        *,
        mode: Literal["block", "monitor"],
        json_limits: JsonLimits,
        max_value: int = 64 * 1024,
    ) -> None:
        self.inspector = inspector
        self.mode = mode
        self.json_limits = json_limits
        self.max_value = max_value

    def _scan(self, value: str) -> Finding | None:
        if len(value) <= _WINDOW:
            return self.inspector.scan(value)
        if len(value) > self.max_value:
            return _TOO_LONG
        step = _WINDOW - _OVERLAP  # a match shorter than the overlap is inside one window
        for start in range(0, len(value) - _OVERLAP, step):
            found = self.inspector.scan(value[start : start + _WINDOW])
            if found is not None:
                return found
        return None

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        body = b""
        json_value: Any = None
        content_type = req.headers.get("content-type")
        if req.body.declared_length != 0:
            scan_body, is_json = _textual(content_type)
            if is_json:
                parsed = await json_body(req, ctx, self.json_limits)
                if isinstance(parsed, Deny):
                    return parsed
                json_value = parsed
            elif scan_body:
                try:
                    body = await req.body.read()
                except BodyReadError as exc:
                    return Deny(exc.status, exc.code, "The request body could not be read.")
        target = req.raw_path + ("?" + req.query if req.query else "")
        scan = self._scan
        for location, value in request_values(
            req.method, target, list(req.headers.items()), body, content_type, json_value=json_value
        ):
            finding = scan(value)
            if finding is None:
                continue
            evidence: dict[str, Any] = {
                "family": finding.family,
                "rule": finding.rule,
                "paranoia": finding.paranoia,
                "location": location[:128],
            }
            if not location.lower().startswith(_SENSITIVE):
                evidence["excerpt"] = finding.excerpt[:80]
            if self.mode == "block":
                return Deny(
                    403,
                    ATTACK_DETECTED,
                    "The request was refused: it looks like an injection attack.",
                    evidence=evidence,
                )
            ctx.notices.append(("request.flagged", evidence))
            return None
        return None
