"""Canonical request paths (RFC 3986 §2, §5.2.4, §6.2.2).

Gateway bypasses are nearly always a disagreement about what a path *is*: the gateway authorises one
string and the application serves another (CVE-2019-9901, CVE-2021-41773, CVE-2021-29492, CVE-2020-1957
and friends). Bastion computes one canonical string per request and uses it for routing, every policy,
the event log and the upstream request, so there is nothing left to disagree about.

The canonical form:

* duplicate slashes merged, dot-segments removed (RFC 3986 §5.2.4),
* percent-encoded *unreserved* characters decoded (§6.2.2.2), every other triplet upper-cased
  (§6.2.2.1) and kept encoded, so the result is always ASCII.

Anything ambiguous is rejected rather than "fixed", with a stable code each:

========================== =================================================================
code                       what it catches
========================== =================================================================
path_not_origin_form       the target does not start with ``/`` (absolute-form, ``*``, empty)
path_non_ascii             raw bytes >= 0x80 (RFC 9112 request targets are ASCII)
path_control_char          control characters or whitespace, raw or encoded (``%00``-``%20``,
                           ``%7F``) or Unicode whitespace/controls after decoding (``%C2%A0``)
path_invalid_char          raw characters that RFC 3986 does not allow in a path (``<>"{}|^`[]``)
path_backslash             ``\\`` raw or encoded (``%5C``): Windows and some frameworks treat it as ``/``
path_encoded_slash         ``%2F``: a slash the router and the application would disagree on
path_parameter             ``;`` (matrix parameters: ``/a/..;/admin``, CVE-2020-1957)
path_fragment              ``#`` in a request target
path_double_encoding       ``%25`` followed by two hex digits (``%252e``, CVE-2021-42013)
path_bad_percent_encoding  ``%`` not followed by two hex digits (``%u002e``, ``%2``, ``%zz``)
path_invalid_utf8          encoded bytes that are not strict UTF-8 (overlong ``%C0%AE``, surrogates)
path_unicode_dot_segment   a segment that NFKC-normalises to ``.`` or ``..`` (fullwidth dots)
path_unicode_separator     a segment whose NFKC form contains ``/`` or ``\\`` (fullwidth solidus)
========================== =================================================================

This module is pure: it takes a string and returns a string or raises :class:`PathRejected`.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["PathRejected", "canonicalize_path", "validate_query"]


class PathRejected(ValueError):
    """The request target is ambiguous or malformed; ``code`` is stable and documented."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar = unreserved / pct-encoded / sub-delims / ":" / "@"; plus "/" as separator.
# ";" is a sub-delim but is rejected separately (path parameters), "%" is handled by the decoder.
_ALLOWED_RAW = _UNRESERVED | frozenset("!$&'()*+,=:@/%")
_REJECTED_UNICODE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"})
_SEPARATORS = ("/", "\\")
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")


def _classify_raw(ch: str) -> str:
    o = ord(ch)
    if o >= 0x80:
        return "path_non_ascii"
    if o <= 0x20 or o == 0x7F:
        return "path_control_char"
    if ch == "\\":
        return "path_backslash"
    if ch == ";":
        return "path_parameter"
    if ch == "#":
        return "path_fragment"
    return "path_invalid_char"


def _decode_segment(segment: str) -> tuple[str, str]:
    """Normalise percent-encoding in one segment.

    Returns ``(canonical, decoded)``: the canonical ASCII form and the fully decoded text, the latter
    only used for the Unicode checks.
    """
    if "%" not in segment:
        return segment, segment
    out: list[str] = []
    decoded: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        ch = segment[i]
        if ch != "%":
            out.append(ch)
            decoded.append(ch)
            i += 1
            continue
        hi, lo = segment[i + 1 : i + 2], segment[i + 2 : i + 3]
        if not hi or not lo or hi not in _HEX or lo not in _HEX:
            raise PathRejected("path_bad_percent_encoding")
        value = int(hi + lo, 16)
        if value < 0x80:
            c = chr(value)
            if c in _UNRESERVED:
                out.append(c)
                decoded.append(c)
            elif value <= 0x20 or value == 0x7F:
                raise PathRejected("path_control_char")
            elif c == "/":
                raise PathRejected("path_encoded_slash")
            elif c == "\\":
                raise PathRejected("path_backslash")
            elif c == "%":
                out.append("%25")
                decoded.append("%")
            else:
                out.append("%" + (hi + lo).upper())
                decoded.append(c)
            i += 3
            continue
        # A run of encoded non-ASCII bytes must be strict UTF-8 (Python's decoder refuses overlong
        # forms and surrogates); it stays encoded in the canonical form.
        raw = bytearray()
        while i < n and segment[i] == "%":
            hi, lo = segment[i + 1 : i + 2], segment[i + 2 : i + 3]
            if not hi or not lo or hi not in _HEX or lo not in _HEX:
                raise PathRejected("path_bad_percent_encoding")
            value = int(hi + lo, 16)
            if value < 0x80:
                break
            raw.append(value)
            i += 3
        try:
            text = raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise PathRejected("path_invalid_utf8") from None
        for c in text:
            if unicodedata.category(c) in _REJECTED_UNICODE_CATEGORIES:
                raise PathRejected("path_control_char")
        out.append("".join(f"%{b:02X}" for b in raw))
        decoded.append(text)
    return "".join(out), "".join(decoded)


def canonicalize_path(raw: str) -> str:
    """Return the canonical form of a request path (no query), or raise :class:`PathRejected`.

    Cached for paths up to 256 characters: real traffic repeats paths and the function is pure; long
    paths are rare and would make a bounded cache hold megabytes.
    """
    if len(raw) <= 256:
        return _canonicalize_cached(raw)
    return _canonicalize(raw)


@lru_cache(maxsize=4096)
def _canonicalize_cached(raw: str) -> str:
    return _canonicalize(raw)


def _canonicalize(raw: str) -> str:
    if not raw.startswith("/"):
        if raw and (ord(raw[0]) >= 0x80):
            raise PathRejected("path_non_ascii")
        raise PathRejected("path_not_origin_form")
    for ch in raw:
        if ch not in _ALLOWED_RAW:
            raise PathRejected(_classify_raw(ch))

    segments: list[str] = []
    # Duplicate slashes merge: empty segments are dropped, except a final one (a trailing slash).
    parts = raw.split("/")
    last = len(parts) - 1
    for index, part in enumerate(parts[1:], start=1):
        if part == "" and index != last:
            continue
        canonical, decoded = _decode_segment(part)
        if "%25" in canonical and _DOUBLE_ENCODED.search(canonical):
            # "%25" then two hex digits, whether they were raw or decoded from "%32%65"
            raise PathRejected("path_double_encoding")
        if decoded not in (".", "..") and not decoded.isascii():
            normal = unicodedata.normalize("NFKC", decoded)
            if normal in (".", ".."):
                raise PathRejected("path_unicode_dot_segment")
            if any(sep in normal for sep in _SEPARATORS):
                raise PathRejected("path_unicode_separator")
        # RFC 3986 §5.2.4, applied to segments after unreserved decoding so "%2e%2E" is "..".
        if canonical == ".":
            if index == last:
                segments.append("")
            continue
        if canonical == "..":
            if segments:
                segments.pop()
            if index == last:
                segments.append("")
            continue
        segments.append(canonical)
    return "/" + "/".join(segments)


def validate_query(raw: str) -> None:
    """The query string is forwarded as sent, but it must be ASCII without controls or whitespace."""
    for ch in raw:
        o = ord(ch)
        if o <= 0x20 or o >= 0x7F:
            raise PathRejected("query_non_ascii" if o >= 0x80 else "query_control_char")
        if ch == "#":
            raise PathRejected("path_fragment")
