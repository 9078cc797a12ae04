"""Which parts of a request carry client data, as ``(location, value)`` pairs.

One function, :func:`request_values`, used by the gateway check and by the metrics script, so the
numbers we publish are measured on exactly what the gateway inspects.

Locations are stable strings (they appear in events):

==========================  ==========================================================================
location                    value
==========================  ==========================================================================
``path``                    the whole path, percent-decoded once
``path[i]``                 the i-th path segment (0-based, after the leading ``/``), decoded once
``query.<name>``            a query value (``parse_qsl``: ``+`` is a space, decoded once)
``query.<name>:key``        the query parameter's name itself
``header.<name>``           a header value, as received (names lower-cased)
``cookie.<name>``           a cookie value, percent-decoded once; ``cookie.<name>:key`` for its name
``form.<name>``             an ``application/x-www-form-urlencoded`` or ``multipart/form-data`` field
``form.<name>:key``         the field's name; ``form.<name>:filename`` a multipart file name
``body.<path>``             a JSON string, e.g. ``body.items[3].qty``; ``body.<path>:key`` an object key
``xml.<tag>``               XML text content; ``xml.<tag>@<attr>`` an attribute value
``body``                    the raw text of any other (textual) body, or of unparseable JSON
==========================  ==========================================================================

Headers: every field is inspected except the protocol headers in :data:`SKIPPED_HEADERS` (framing,
negotiation, caching, credentials and browser client hints) whose values are set by user agents,
not typed by users, and whose syntax would only produce noise. ``Cookie`` is split into pairs and
``Referer`` is decoded once like a URL.

Bodies with a binary media type (images, audio, video, archives, ``application/octet-stream``,
protobuf, gRPC) are not inspected. Numbers, booleans and ``null`` in JSON are never yielded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl, unquote

__all__ = ["SKIPPED_HEADERS", "request_values"]

SKIPPED_HEADERS: frozenset[str] = frozenset(
    {
        # framing and connection management
        "host", "content-length", "content-type", "content-encoding", "transfer-encoding",
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect",
        # content negotiation: lists of tokens with q-values
        "accept", "accept-encoding", "accept-language", "accept-charset", "accept-ranges",
        # caching and conditional requests
        "cache-control", "pragma", "if-match", "if-none-match", "if-modified-since",
        "if-unmodified-since", "if-range", "range", "date",
        # credentials: verified by their own checks, never copied into findings
        "authorization", "proxy-authorization",
        # browser fetch metadata and client hints: fixed vocabularies, quoted lists
        "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user", "sec-ch-ua",
        "sec-ch-ua-mobile", "sec-ch-ua-platform", "sec-ch-ua-platform-version", "sec-ch-ua-arch",
        "sec-ch-ua-model", "sec-ch-ua-full-version-list", "sec-ch-ua-bitness", "sec-gpc",
        "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
        "sec-websocket-protocol", "dnt", "upgrade-insecure-requests", "priority",
    }
)  # fmt: skip

_BINARY_TYPES = (
    "image/", "audio/", "video/", "font/", "application/octet-stream", "application/pdf",
    "application/zip", "application/gzip", "application/x-tar", "application/x-protobuf",
    "application/protobuf", "application/grpc", "application/vnd.google.protobuf",
    "application/x-msgpack", "application/cbor",
)  # fmt: skip

# The part of the XML grammar we need: attributes inside start tags, and character data between tags.
# Each alternative stops at the next "<", so a hostile document costs linear time.
_XML_TAG = re.compile(r"<!DOCTYPE[^<>]*\[|<[?!/][^<>]*>|<([A-Za-z_][\w:.\-]*)([^<>]*)>", re.I)
_XML_ATTR = re.compile(r"([A-Za-z_][\w:.\-]*)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_XML_ENTITY = re.compile(r"&(?:#\d{1,7}|#x[0-9A-Fa-f]{1,6}|lt|gt|amp|quot|apos);")
_XML_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&apos;": "'"}

_MAX_JSON_DEPTH = 64


def request_values(
    method: str,
    raw_target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    content_type: str | None,
    *,
    json_value: object = None,
) -> Iterator[tuple[str, str]]:
    """Yield every ``(location, value)`` of a request that carries client data.

    ``raw_target`` is the request target as received (origin form, percent-encoded). ``json_value``
    is an already parsed JSON body, when the caller has one; otherwise a JSON body is parsed here
    and, if that fails, inspected as raw text. ``method`` is accepted for symmetry with the request
    line and for future per-method rules; no value depends on it today.
    """
    del method
    target = raw_target.split("#", 1)[0]
    path, _, query = target.partition("?")
    yield from _path_values(path)
    if query:
        yield from _pairs("query", parse_qsl(query, keep_blank_values=True))
    yield from _header_values(headers)
    if body or json_value is not None:
        yield from _body_values(body, content_type, json_value)


def _path_values(path: str) -> Iterator[tuple[str, str]]:
    if path in ("", "/"):
        return
    yield "path", unquote(path, errors="replace")
    for i, segment in enumerate(path.lstrip("/").split("/")):
        if segment:
            yield f"path[{i}]", unquote(segment, errors="replace")


def _pairs(prefix: str, pairs: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for name, value in pairs:
        yield f"{prefix}.{name}:key", name
        if value:
            yield f"{prefix}.{name}", value


def _header_values(headers: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in SKIPPED_HEADERS or not value:
            continue
        if name == "cookie":
            yield from _cookie_values(value)
        elif name == "referer":
            yield "header.referer", unquote(value, errors="replace")
        else:
            yield f"header.{name}", value


def _cookie_values(header: str) -> Iterator[tuple[str, str]]:
    # RFC 6265 §4.2.1: "name=value" pairs separated by "; ". Decoding once mirrors what most
    # frameworks hand to the application.
    for pair in header.split(";"):
        name, sep, value = pair.strip().partition("=")
        if not sep:
            if name:
                yield "cookie", unquote(name, errors="replace")
            continue
        yield f"cookie.{name}:key", unquote(name, errors="replace")
        if value:
            yield f"cookie.{name}", unquote(value, errors="replace")


def _body_values(body: bytes, content_type: str | None, json_value: object) -> Iterator[tuple[str, str]]:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith(_BINARY_TYPES):
        return
    if json_value is not None:
        yield from _json_values(json_value)
        return
    text = body.decode("utf-8", errors="replace")
    if media == "application/x-www-form-urlencoded":
        yield from _pairs("form", parse_qsl(text, keep_blank_values=True))
    elif media == "application/json" or media.endswith("+json"):
        try:
            parsed = json.loads(text)
        except ValueError:
            yield "body", text
        else:
            yield from _json_values(parsed)
    elif media == "multipart/form-data" and content_type is not None:
        yield from _multipart_values(body, content_type)
    elif media in ("application/xml", "text/xml") or media.endswith("+xml"):
        yield from _xml_values(text)
    else:
        yield "body", text


def _json_values(root: object) -> Iterator[tuple[str, str]]:
    # Iterative, depth-bounded walk: the gateway bounds JSON size and depth before parsing; this is
    # the second fence for callers that did not.
    stack: list[tuple[str, object, int]] = [("body", root, 0)]
    while stack:
        where, node, depth = stack.pop()
        if isinstance(node, str):
            if node:
                yield where, node
        elif depth >= _MAX_JSON_DEPTH:
            continue
        elif isinstance(node, dict):
            items = list(node.items())
            for key, child in reversed(items):
                key = str(key)
                stack.append((f"{where}.{key}", child, depth + 1))
                stack.append((f"{where}.{key}:key", key, depth + 1))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((f"{where}[{i}]", node[i], depth + 1))


def _multipart_values(body: bytes, content_type: str) -> Iterator[tuple[str, str]]:
    # The stdlib MIME parser with the HTTP policy: it never raises on malformed input (defects are
    # recorded instead) and needs no temporary files. Parts with a binary type are not inspected.
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        yield "body", body.decode("utf-8", errors="replace")
        return
    for part in message.iter_parts() if hasattr(message, "iter_parts") else ():
        yield from _multipart_part(part)


_RAW_FILENAME = re.compile(r'(?:^|;)\s*filename\s*=\s*"([^"\r\n]*)"', re.I)


def _raw_header(part: Message, name: str) -> str:
    """The header's value as received (``raw_items`` holds the unparsed source under any policy)."""
    for key, value in part.raw_items():
        if key.lower() == name:
            return str(value)
    return ""


def _multipart_part(part: Message) -> Iterator[tuple[str, str]]:
    name = part.get_param("name", header="content-disposition")
    name = name if isinstance(name, str) else ""
    yield f"form.{name}:key", name
    filename = part.get_filename()
    if filename:
        yield f"form.{name}:filename", filename
    # Browsers do not escape "\" in a multipart file name (the HTML standard percent-encodes only
    # '"', CR and LF there), but the MIME parser reads it as a quoted-pair and drops it:
    # filename="..\x.php" would reach us as "..x.php". Inspect the name as it was sent, too.
    raw = _RAW_FILENAME.search(_raw_header(part, "content-disposition"))
    if raw is not None and raw.group(1) != filename:
        yield f"form.{name}:filename", raw.group(1)
    if part.get_content_type().startswith(_BINARY_TYPES):
        return
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes) and payload:
        yield f"form.{name}", payload.decode("utf-8", errors="replace")


def _xml_unescape(text: str) -> str:
    if "&" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        entity = match.group(0)
        if entity in _XML_ENTITIES:
            return _XML_ENTITIES[entity]
        number = entity[2:-1]
        code = int(number[1:], 16) if number[:1] in "xX" else int(number)
        return chr(code) if code <= 0x10FFFF else entity

    return _XML_ENTITY.sub(one, text)


def _xml_values(text: str) -> Iterator[tuple[str, str]]:
    # Not a full XML parser on purpose: no entity expansion, no DTDs, linear time. It yields what an
    # application would read from the document: attribute values and character data, entities
    # decoded. Declarations (``<!DOCTYPE``, ``<!ENTITY``) are yielded whole: there the markup itself
    # is the payload (external entities).
    tag = "xml"
    end = 0
    for match in _XML_TAG.finditer(text):
        between = text[end : match.start()].strip()
        if between:
            yield f"xml.{tag}", _xml_unescape(between)
        end = match.end()
        if match.group(0).startswith("<!") and not match.group(0).startswith("<!--"):
            yield "xml.!declaration", match.group(0)
        elif match.group(1) is not None:
            tag = match.group(1)
            for attr in _XML_ATTR.finditer(match.group(2)):
                value = attr.group(2) if attr.group(2) is not None else attr.group(3)
                if value:
                    yield f"xml.{tag}@{attr.group(1)}", _xml_unescape(value)
    rest = text[end:].strip()
    if rest and end:
        yield f"xml.{tag}", _xml_unescape(rest)
