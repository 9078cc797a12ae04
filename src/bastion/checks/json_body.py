"""JSON request bodies: parsed once per request, within hard limits, before any schema sees them (P3).

Every check that needs a JSON body (OpenAPI validation, inspection) calls :func:`json_body`; the first
call reads and parses, later calls get the same value from the request's context. Parsing never happens
twice.

The parser is the standard library's (C) ``json``; the limits are Bastion's:

* the text must be UTF-8 (no byte-order mark), and syntactically JSON: ``NaN``, ``Infinity`` and numbers
  that overflow to infinity are refused;
* **duplicate keys** are refused (parsers disagree on which one wins: a validator could check the first
  while the upstream uses the last);
* **depth** (nesting of objects and arrays), **total keys** in the document, **array length**, **string
  length** (values and keys, in characters) and **number length** (digits of an integer) are bounded —
  a JSON bomb is refused, not expanded. The checks cost nothing for a body that cannot break them: the
  text's brackets, commas and length bound what it can hold, and only a body that could break a limit
  is walked.

The body itself is already bounded by the route's ``max_body`` (413 before it is read).
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

from ..core.decision import Context, Deny
from ..core.request import BodyReadError, RequestView

__all__ = ["JSON_INVALID", "JSON_LIMIT", "JsonLimits", "JsonRejected", "json_body", "parse_json"]

JSON_INVALID = "json_invalid"
JSON_LIMIT = "json_limit_exceeded"
_DIGITS = b"0123456789"
_PARSED = "json_body"  # ctx.notes key: the parsed value (or the Deny it earned)


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_depth: int = 32
    max_keys: int = 10_000  # object members in the whole document
    max_array_length: int = 10_000  # items in one array
    max_string_length: int = 100_000  # characters in one string or key
    max_number_length: int = 64  # characters in one number literal


class JsonRejected(Exception):
    """The body is not acceptable JSON. ``reason`` is safe to show a client: it never quotes the body."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_json(raw: bytes, limits: JsonLimits) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonRejected(JSON_INVALID, "The body is not valid UTF-8.") from None
    if text.startswith("\ufeff"):
        raise JsonRejected(JSON_INVALID, "The body starts with a byte-order mark.")
    state = _state
    state.count[:] = (0, limits.max_keys)
    try:  # the hooks cost a call per object and per float; integers and strings stay in C
        value = state.decoder.decode(text)
    except json.JSONDecodeError:
        raise JsonRejected(JSON_INVALID, "The body is not valid JSON.") from None
    except RecursionError:
        raise JsonRejected(JSON_LIMIT, f"The body is nested deeper than {limits.max_depth} levels.") from None
    except ValueError:  # an integer longer than Python converts (4300 digits)
        raise _long_number(limits.max_number_length) from None
    # An integer longer than the limit needs that many digits: most bodies have fewer in all (counted in
    # C, ~0.3 µs, where the regex scan costs ~6 µs).
    if len(raw) - len(raw.translate(None, _DIGITS)) > limits.max_number_length and (
        _number_run(limits.max_number_length).search(text) is not None
    ):
        _check_numbers(value, limits)  # an integer longer than the limit
    # What the text itself rules out needs no walk: nesting is at most the brackets it has, an array
    # at most its commas + 1, a string at most the text. Only a body that could break a limit is walked.
    if (
        text.count("[") + text.count("{") > limits.max_depth
        or text.count(",") >= limits.max_array_length
        or len(text) > limits.max_string_length
    ):
        _check_shape(value, limits)
    return value


class _DecoderState(threading.local):
    """A decoder per thread, built once (``json.loads`` with hooks builds one per call: ~3 µs), and the
    key count of the parse in progress in ``count`` (a parse never starts another on the same thread)."""

    def __init__(self) -> None:
        count = self.count = [0, 0]  # keys so far, the limit: a list, so the hook reads no attribute

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = count[0] = count[0] + len(items)
            if keys > count[1]:
                raise JsonRejected(JSON_LIMIT, f"The body has more than {count[1]} keys.")
            value = dict(items)
            if len(value) != len(items):
                raise JsonRejected(JSON_INVALID, "The body repeats a key in one object.")
            return value

        self.decoder = json.JSONDecoder(
            object_pairs_hook=pairs, parse_float=_finite_float, parse_constant=_constant
        )


def _constant(name: str) -> Any:
    raise JsonRejected(JSON_INVALID, "The body is not valid JSON (NaN and Infinity are not JSON).")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRejected(JSON_INVALID, "The body has a number out of range.")
    return value


@functools.lru_cache(maxsize=8)
def _number_run(limit: int) -> re.Pattern[str]:
    """A run of digits longer than the limit: what an integer that breaks it must contain. Most bodies
    have none, and then the integers need no walk (runs inside strings match too: a needless walk, never
    a miss)."""
    return re.compile(rf"[0-9]{{{limit + 1},}}")


def _check_numbers(value: Any, limits: JsonLimits) -> None:
    """Integers longer than ``max_number_length`` digits."""
    bound = 10**limits.max_number_length
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, int) and not isinstance(node, bool) and not -bound < node < bound:
            raise _long_number(limits.max_number_length)


def _long_number(limit: int) -> JsonRejected:
    return JsonRejected(JSON_LIMIT, f"The body has a number longer than {limit} characters.")


def _check_shape(value: Any, limits: JsonLimits) -> None:
    """Depth, array lengths and string lengths, without recursion (an iterative walk)."""
    max_string = limits.max_string_length
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if isinstance(node, dict):
            if depth > limits.max_depth:
                raise JsonRejected(JSON_LIMIT, f"The body is nested deeper than {limits.max_depth} levels.")
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
    cached = ctx.notes.get(_PARSED, _MISSING)
    if cached is not _MISSING:
        return cached
    try:
        raw = await req.body.read()
        result: Any = parse_json(raw, limits)
    except BodyReadError as exc:
        result = Deny(exc.status, exc.code, "The request body could not be read.")
    except JsonRejected as exc:
        result = Deny(400, exc.code, exc.reason, evidence={"reason": exc.reason})
    ctx.notes[_PARSED] = result
    return result


_MISSING = object()


_state = _DecoderState()
