"""Geographic permissions for destination numbers (P16), per egress route.

Every value of the configured fields (Twilio's ``To``) is parsed (:mod:`.egress_payload`); a destination
passes only when it parses, is a valid number, its country is allowed (``allow_countries``, when given)
and not denied, it starts with no denied prefix, and its type (premium rate, shared cost …) is not denied.
Anything else is refused with 403 and the event ``egress.geo_blocked`` naming the country. The parsed
destinations are kept for the caps and the SMS pumping detector that run next.

Only requests that can send — ``POST``, ``PUT`` and ``PATCH`` — are judged: a ``GET`` that lists messages
filtered by ``To`` reads, it does not send (the operation rules decide whether it may happen at all).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.decision import Context, Deny, Verdict
from ..core.request import RequestView
from .egress_payload import Destination, NumberRefused, destinations, parse_destination, payload
from .json_body import JsonLimits

__all__ = ["DESTINATIONS", "GeoPermissions"]

DESTINATIONS = "egress_destinations"  # ctx.notes key: the request's parsed destinations
_MAX_DESTINATIONS = 100
_SENDING = frozenset({"POST", "PUT", "PATCH"})


def _refused(cause: str, detail: str, **evidence: object) -> Deny:
    return Deny(
        403,
        "egress_geo_blocked",
        detail,
        evidence={"cause": cause, **evidence},
        event="egress.geo_blocked",
    )


class GeoPermissions:
    name = "geo"

    def __init__(
        self,
        fields: Iterable[str],
        *,
        allow_countries: Iterable[str] | None,
        deny_countries: Iterable[str] = (),
        deny_prefixes: Iterable[str] = (),
        deny_types: Iterable[str] = (),
        default_region: str | None = None,
        require_valid: bool = True,
        json_limits: JsonLimits,
    ) -> None:
        self.fields = tuple(fields)
        self.allow = frozenset(allow_countries) if allow_countries is not None else None
        self.deny = frozenset(deny_countries)
        self.prefixes = tuple(sorted(deny_prefixes, key=len, reverse=True))
        self.types = frozenset(deny_types)
        self.default_region = default_region
        self.require_valid = require_valid
        self.json_limits = json_limits

    def judge(self, value: str) -> Destination | Deny:
        try:
            dest = parse_destination(value, self.default_region, self.require_valid)
        except NumberRefused as exc:
            return _refused(exc.cause, "The destination is not a number this route can send to.")
        where = {"country": dest.country, "calling_code": dest.calling_code, "number_type": dest.type}
        if dest.country is None and self.allow is not None:
            return _refused("country_not_allowed", "Sending to this destination is not allowed.", **where)
        if dest.country is not None and (
            dest.country in self.deny or (self.allow is not None and dest.country not in self.allow)
        ):
            return _refused("country_not_allowed", "Sending to this country is not allowed.", **where)
        for prefix in self.prefixes:
            if dest.e164.startswith(prefix):
                return _refused(
                    "prefix_denied", "Sending to this number range is not allowed.", prefix=prefix, **where
                )
        if dest.type in self.types:
            return _refused("number_type_denied", "Sending to this type of number is not allowed.", **where)
        return dest

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        if req.method not in _SENDING:
            return None
        body = await payload(req, ctx, self.json_limits)
        if isinstance(body, Deny):
            return body
        values = destinations(body, self.fields)
        if len(values) > _MAX_DESTINATIONS:
            return _refused("too_many_destinations", "Too many destinations in one request.")
        found: list[Destination] = []
        for value in values:
            verdict = self.judge(value)
            if isinstance(verdict, Deny):
                return verdict
            found.append(verdict)
        ctx.notes[DESTINATIONS] = found
        return None
