"""JSON request bodies: parsed once per request, within hard limits, before any schema sees them (P3).

Every check that needs a JSON body (OpenAPI validation, inspection) calls :func:`json_body`; the first
call reads and parses, later calls get the same value from the request's context. Parsing never happens
twice.

The parser is jiter (Rust, the pydantic project's: ~2 µs for a 470-byte order, where the standard
library's with a duplicate-key hook took ~7-13 µs); the limits are Bastion's:

* the text must be UTF-8 (no byte-order mark), and syntactically JSON: ``NaN``, ``Infinity`` and numbers
  that overflow to infinity are refused;
* **duplicate keys** are refused (parsers disagree on which one wins: a validator could check the first
  while the upstream uses the last), and so are **unpaired surrogate escapes** (``"\\ud800"``: kept by
  some parsers, replaced or refused by others; RFC 7493 forbids them);
* **depth** (nesting of objects and arrays), **total keys** in the document, **array length**, **string
  length** (values and keys, in characters) and **number length** (digits of an integer) are bounded —
  a JSON bomb is refused, not expanded. The checks cost nothing for a body that cannot break them: the
  text's brackets, commas and length bound what it can hold, and only a body that could break a limit
  is walked.

The body itself is already bounded by the route's ``max_body`` (413 before it is read).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from jiter import from_json as _from_json

from ..core.decision import LATER, UNPARSED, Context, Deny
from ..core.request import BodyReadError, RequestView

__all__ = [
    "JSON_INVALID",
    "JSON_LIMIT",
    "LATER",
    "JsonLimits",
    "JsonRejected",
    "json_body",
    "json_body_now",
    "parse_json",
]

JSON_INVALID = "json_invalid"
JSON_LIMIT = "json_limit_exceeded"
_FLOAT_DIGITS = 309  # a float with this many digits before its point (or exponent 1e309) is infinite


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_depth: int = 32
    max_keys: int = 10_000  # object members in the whole document
    max_array_length: int = 10_000  # items in one array
    max_string_length: int = 100_000  # characters in one string or key
    max_number_length: int = 64  # characters in one number literal
    # what parse_json looks for in the text's shape: a digit run that an integer longer than the limit,
    # or a float that overflows, must contain (derived; not a setting)
    number_run: bytes = field(init=False, repr=False, compare=False)
    # below this many bytes a text cannot break the string, array or key limits (derived; not a setting)
    walk_from: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "number_run", b"0" * min(self.max_number_length + 1, _FLOAT_DIGITS))
        object.__setattr__(
            self,
            "walk_from",
            min(self.max_string_length + 1, 2 * self.max_array_length, 4 * self.max_keys + 1),
        )


class JsonRejected(Exception):
    """The body is not acceptable JSON. ``reason`` is safe to show a client: it never quotes the body."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_json(raw: bytes, limits: JsonLimits) -> Any:
    try:  # jiter refuses a leading byte-order mark (_rejected says so)
        value = _from_json(raw, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as exc:
        if limits.max_depth > _JITER_DEPTH and "recursion limit" in str(exc):
            value = _parse_deep(raw, limits)  # a configured depth beyond jiter's own bound
        else:
            raise _rejected(raw, str(exc), limits) from None
    # What the text itself rules out needs no walk. With digits and "+" mapped to "0" and "E" to "e": an
    # integer longer than the limit needs a run of that many zeros, and a float that overflows to infinity
    # an exponent of three digits or more ("e000", or "e+000" as "e0000") or a run of 309 digits ("+"
    # elsewhere can only add zeros: a walk more, never one fewer). Nesting is at most the brackets the
    # text has, an array at most its commas + 1, a string or a key at most the text's length, the keys at
    # most its colons (and a text shorter than 2 bytes per item or 4 per key cannot hold too many). Only a
    # body that could break a limit is walked: the counting costs ~1 µs in C for an ordinary body, a walk
    # several.
    shape = raw.translate(_SHAPE)  # a table alone: a third of the time of a table and deletions
    # find, not `in`: `bytes in bytes` first tries the needle as an integer, a TypeError raised and cleared
    if shape.find(limits.number_run) >= 0 or shape.find(b"e000") >= 0:
        _check_numbers(value, limits)
    size = len(raw)
    if shape.count(b"[") > limits.max_depth or (  # "{" is mapped to "[": all the openings
        size >= limits.walk_from
        and (
            size > limits.max_string_length
            or (size >= 2 * limits.max_array_length and raw.count(b",") >= limits.max_array_length)
            or (size > 4 * limits.max_keys and raw.count(b":") > limits.max_keys)  # '"":0,' per key
        )
    ):
        _check_shape(value, limits)
    return value


_BOM = b"\xef\xbb\xbf"
_JITER_DEPTH = 200  # jiter refuses deeper nesting itself ("recursion limit exceeded")
_SHAPE = bytes.maketrans(b"123456789+E{", b"0000000000e[")


def _rejected(raw: bytes, message: str, limits: JsonLimits) -> JsonRejected:
    """jiter's refusal as Bastion's reason. jiter's message names a position (and could quote the text),
    so only the kind of fault is kept from it, never the message."""
    if raw.startswith(_BOM):
        return JsonRejected(JSON_INVALID, "The body starts with a byte-order mark.")
    if "duplicate key" in message:
        return JsonRejected(JSON_INVALID, "The body repeats a key in one object.")
    if "recursion limit" in message:
        return JsonRejected(JSON_LIMIT, f"The body is nested deeper than {limits.max_depth} levels.")
    if "number out of range" in message:  # an integer beyond 4300 digits: longer than any allowed limit
        return _long_number(limits.max_number_length)
    if "surrogate" in message or "hex escape" in message:
        # RFC 7493 (I-JSON): parsers disagree on an unpaired surrogate (kept, replaced, refused)
        return JsonRejected(JSON_INVALID, "The body has an unpaired surrogate escape (\\uD800-\\uDFFF).")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return JsonRejected(JSON_INVALID, "The body is not valid UTF-8.")
    if ("expected value" in message or "invalid number" in message) and (b"NaN" in raw or b"Infinity" in raw):
        return JsonRejected(JSON_INVALID, "The body is not valid JSON (NaN and Infinity are not JSON).")
    return JsonRejected(JSON_INVALID, "The body is not valid JSON.")


def _parse_deep(raw: bytes, limits: JsonLimits) -> Any:
    """The standard library's parser, for a configured ``max_depth`` beyond jiter's bound (rare, and
    slower): duplicate keys refused by a hook, the depth bounded by the interpreter's recursion limit."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(items)
        if len(value) != len(items):
            raise JsonRejected(JSON_INVALID, "The body repeats a key in one object.")
        return value

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=_constant)
    except UnicodeDecodeError:
        raise JsonRejected(JSON_INVALID, "The body is not valid UTF-8.") from None
    except RecursionError:
        raise JsonRejected(JSON_LIMIT, f"The body is nested deeper than {limits.max_depth} levels.") from None
    except ValueError:
        raise JsonRejected(JSON_INVALID, "The body is not valid JSON.") from None


def _constant(name: str) -> Any:
    raise JsonRejected(JSON_INVALID, "The body is not valid JSON (NaN and Infinity are not JSON).")


def _check_numbers(value: Any, limits: JsonLimits) -> None:
    """Integers longer than ``max_number_length`` digits, and numbers that overflow to infinity."""
    bound = 10**limits.max_number_length
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise JsonRejected(JSON_INVALID, "The body has a number out of range.")
        elif isinstance(node, int) and not isinstance(node, bool) and not -bound < node < bound:
            raise _long_number(limits.max_number_length)


def _long_number(limit: int) -> JsonRejected:
    return JsonRejected(JSON_LIMIT, f"The body has a number longer than {limit} characters.")


def _check_shape(value: Any, limits: JsonLimits) -> None:
    """Depth, total keys, array lengths and string lengths, without recursion (an iterative walk)."""
    max_string = limits.max_string_length
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if isinstance(node, dict):
            if depth > limits.max_depth:
                raise JsonRejected(JSON_LIMIT, f"The body is nested deeper than {limits.max_depth} levels.")
            keys += len(node)
            if keys > limits.max_keys:
                raise JsonRejected(JSON_LIMIT, f"The body has more than {limits.max_keys} keys.")
            for key, item in node.items():
                if len(key) > max_string:
                    raise JsonRejected(JSON_LIMIT, f"The body has a key longer than {max_string} characters.")
                if isinstance(item, str):
                    if len(item) > max_string:
                        raise _long_string(max_string)
                elif isinstance(item, (dict, list)):
                    push((item, depth + 1))
        elif isinstance(node, list):
            if depth > limits.max_depth:
                raise JsonRejected(JSON_LIMIT, f"The body is nested deeper than {limits.max_depth} levels.")
            if len(node) > limits.max_array_length:
                raise JsonRejected(
                    JSON_LIMIT, f"The body has an array longer than {limits.max_array_length} items."
                )
            for item in node:
                if isinstance(item, str):
                    if len(item) > max_string:
                        raise _long_string(max_string)
                elif isinstance(item, (dict, list)):
                    push((item, depth + 1))
        elif isinstance(node, str) and len(node) > max_string:
            raise _long_string(max_string)


def _long_string(limit: int) -> JsonRejected:
    return JsonRejected(JSON_LIMIT, f"The body has a string longer than {limit} characters.")


async def json_body(req: RequestView, ctx: Context, limits: JsonLimits) -> Any:
    """The request's JSON body, parsed once; a :class:`Deny` (400, or the body read's own status) when it
    cannot be read or is not acceptable JSON. The caller checked the media type."""
    result = json_body_now(req, ctx, limits)
    if result is LATER:
        try:
            raw = await req.body.read()
        except BodyReadError as exc:
            result = Deny(exc.status, exc.code, "The request body could not be read.")
        else:
            result = _parsed_or_deny(raw, limits)
        ctx.parsed_body = result
    return result


def json_body_now(req: RequestView, ctx: Context, limits: JsonLimits) -> Any:
    """:func:`json_body` without waiting: the same answer when the body has all arrived (or was parsed
    already), else :data:`LATER` — then await :func:`json_body`. Saves a check two coroutines a request."""
    result = ctx.parsed_body
    if result is UNPARSED:
        raw = req.body.arrived()
        if raw is None:
            return LATER
        result = ctx.parsed_body = _parsed_or_deny(raw, limits)
    return result


def _parsed_or_deny(raw: bytes, limits: JsonLimits) -> Any:
    try:
        return parse_json(raw, limits)
    except JsonRejected as exc:
        return Deny(400, exc.code, exc.reason, evidence={"reason": exc.reason})
