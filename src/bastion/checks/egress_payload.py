"""What an outbound request carries, read once for the egress policies (geo permissions, URL fields, caps,
SMS pumping): the fields of a form or JSON body and of the query string, and the destination numbers in
them, parsed with ``phonenumbers``.

A body the gateway cannot read is not forwarded: a non-empty body that is neither
``application/x-www-form-urlencoded`` nor JSON is refused (415) — a field hidden in a multipart body would
otherwise reach the provider unchecked — and so is a compressed body (``Content-Encoding`` other than
``identity``: the provider would decompress fields Bastion never judged) or a repeated ``Content-Type``
(the provider might read another one than Bastion did). Field names match case-insensitively (the
provider may not care about case; a refusal must not depend on it), query fields count like body fields,
and a repeated field has every value checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from ..core.decision import Context, Deny
from ..core.request import BodyReadError, RequestView
from .json_body import JsonLimits, JsonRejected, parse_json

__all__ = ["Destination", "NumberRefused", "Payload", "parse_destination", "payload"]

_NOTE = "egress_payload"
_CHANNELS = ("whatsapp:", "rcs:")  # channel addresses that wrap a phone number (Twilio's To)
_TYPE_NAMES = {
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.UNKNOWN: "unknown",
}


@dataclass(frozen=True, slots=True)
class Payload:
    """The fields of one request: ``form`` (query and form body, names lower-cased) and ``json``."""

    form: tuple[tuple[str, str], ...]
    json: Any = None

    def values(self, field: str) -> list[str]:
        """Every value of ``field`` (a form name, or a dotted JSON path), as text."""
        wanted = field.lower()
        out = [v for k, v in self.form if k == wanted]
        if self.json is not None:
            out.extend(str(v) for v in _json_path(self.json, wanted.split(".")) if _scalar(v))
        return out

    def strings(self) -> Iterator[str]:
        """Every string value, anywhere (for URL fields)."""
        for _, value in self.form:
            yield value
        if self.json is not None:
            yield from _json_strings(self.json)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _json_path(value: Any, parts: list[str]) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _json_path(item, parts)
        return
    if not parts:
        yield value
        return
    if isinstance(value, dict):
        head, rest = parts[0], parts[1:]
        for key, item in value.items():
            if isinstance(key, str) and key.lower() == head:
                yield from _json_path(item, rest)


def _json_strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _form(text: str) -> list[tuple[str, str]]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _Unreadable("egress_body_invalid", "The form fields are not valid UTF-8.") from None
    return [(k.lower(), v) for k, v in pairs]


class _Unreadable(Exception):
    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


async def payload(req: RequestView, ctx: Context, limits: JsonLimits) -> Payload | Deny:
    """The request's fields, read and parsed once per request (cached in the context)."""
    cached = ctx.notes.get(_NOTE)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    result: Payload | Deny
    try:
        result = await _read(req, limits)
    except BodyReadError as exc:
        result = Deny(exc.status, exc.code, "The request body could not be read.")
    except _Unreadable as exc:
        result = Deny(exc.status, exc.code, exc.detail, evidence={"reason": exc.code})
    ctx.notes[_NOTE] = result
    return result


async def _read(req: RequestView, limits: JsonLimits) -> Payload:
    form = _form(req.query) if req.query else []
    headers = req.headers
    if headers.repeated("content-type"):
        raise _Unreadable("egress_body_invalid", "The request has more than one Content-Type.")
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity" or headers.repeated("content-encoding"):
        # The provider would decompress what Bastion cannot read: fields it never judged.
        raise _Unreadable(
            "egress_body_unsupported", "Egress request bodies must not be compressed.", status=415
        )
    raw = await req.body.read()
    doc: Any = None
    if raw:
        media = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media == "application/x-www-form-urlencoded":
            try:
                form.extend(_form(raw.decode("utf-8")))
            except UnicodeDecodeError:
                raise _Unreadable("egress_body_invalid", "The form body is not valid UTF-8.") from None
        elif media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
            try:
                doc = parse_json(raw, limits)
            except JsonRejected as exc:
                raise _Unreadable(exc.code, exc.reason) from None
        else:
            raise _Unreadable(
                "egress_body_unsupported",
                "Egress request bodies must be application/x-www-form-urlencoded or JSON.",
                status=415,
            )
    return Payload(tuple(form), doc)


class NumberRefused(Exception):
    """A destination that cannot be judged (``cause``: ``number_unparseable`` or ``number_invalid``)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Destination:
    e164: str  # "+447700900123"
    country: str | None  # ISO 3166-1 alpha-2; None for non-geographic numbers (+800, +882, +883 …)
    calling_code: int
    type: str  # one of config.egress.NUMBER_TYPES

    def prefix(self, digits: int) -> str:
        """The first ``digits`` digits, with the "+"."""
        return self.e164[: digits + 1]


def parse_destination(value: str, default_region: str | None, require_valid: bool) -> Destination:
    """A destination number in E.164 or (with ``default_region``) national form. Raises NumberRefused."""
    text = value.strip()
    lowered = text.lower()
    for channel in _CHANNELS:
        if lowered.startswith(channel):
            text = text[len(channel) :].strip()
            break
    if not text or len(text) > 64 or any(c.isalpha() for c in text):
        # "client:alice", "sip:…", vanity letters: nothing a country can be read from
        raise NumberRefused("number_unparseable")
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except NumberParseException:
        raise NumberRefused("number_unparseable") from None
    if not phonenumbers.is_possible_number(number):
        raise NumberRefused("number_invalid")
    if require_valid and not phonenumbers.is_valid_number(number):
        raise NumberRefused("number_invalid")
    region = phonenumbers.region_code_for_number(number)
    country = region if region and len(region) == 2 and region != "ZZ" else None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    kind = _TYPE_NAMES.get(phonenumbers.number_type(number), "unknown")
    return Destination(e164, country, number.country_code, kind)


def destinations(body: Payload, fields: Iterable[str]) -> list[str]:
    """The raw values of the destination fields."""
    out: list[str] = []
    for field in fields:
        out.extend(body.values(field))
    return out
