"""Generic HMAC webhooks (P19): signed, timestamped, never replayed.

Presets for the common layouts:

=================== ==================================== ============================== ===============
preset              signature header                     signed content                 replay key
=================== ==================================== ============================== ===============
standard_webhooks   ``webhook-signature: v1,<b64> …``    ``{id}.{timestamp}.{body}``    ``webhook-id``
stripe              ``Stripe-Signature: t=…,v1=<hex>…``  ``{t}.{body}``                 ``t`` + body
github              ``X-Hub-Signature-256: sha256=<hex>`` ``{body}``                    the body
custom              configured                           ``[id.][timestamp.]body``      id, else the rest
=================== ==================================== ============================== ===============

Several signatures in one header and several configured secrets both pass if any pair matches (secret
rotation on either side). A timestamp outside ``tolerance`` is stale. A message that verified is
remembered until its timestamp leaves the window (through the replay-cache port); seeing it again is
``webhook.replayed``. GitHub signs no timestamp: its deliveries can only be refused as replays while
they are remembered (``tolerance``), a limit of that scheme, documented in docs/webhooks.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..core.decision import Context, Deny, Verdict
from ..core.ports import ReplayCache, StateUnavailable
from ..core.request import BodyReadError, RequestView
from ..core.webhook_signing import standard_webhooks_secret
from .refusals import remember, signature_invalid, state_unavailable, webhook_replayed

__all__ = ["PRESETS", "HmacScheme", "HmacWebhook", "custom_scheme", "standard_webhooks_secret"]

_DIGESTS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_ID = re.compile(r"[\x21-\x7e]{1,256}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
MAX_SIGNATURES = 8


@dataclass(frozen=True, slots=True)
class HmacScheme:
    """How one sender lays out its signature. ``parse`` turns the signature header's value into
    ``(signatures, timestamp from the header or None)``; signatures are raw bytes (decoded)."""

    name: str
    signature_header: str
    timestamp_header: str | None
    id_header: str | None
    digest: str
    parse: Callable[[str], tuple[list[bytes], str | None]]
    timestamped: bool  # the sender signs a timestamp (tolerance applies)


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _hex(value: str) -> bytes | None:
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _standard(value: str) -> tuple[list[bytes], str | None]:
    sigs = []
    for part in value.split():
        version, _, sig = part.partition(",")
        if version == "v1":
            raw = _b64(sig)
            if raw is not None:
                sigs.append(raw)
    return sigs, None


def _stripe(value: str) -> tuple[list[bytes], str | None]:
    sigs = []
    timestamp = None
    for part in value.split(","):
        name, _, val = part.strip().partition("=")
        if name == "t":
            timestamp = val
        elif name == "v1":
            raw = _hex(val)
            if raw is not None:
                sigs.append(raw)
    return sigs, timestamp


def _github(value: str) -> tuple[list[bytes], str | None]:
    prefix, _, sig = value.strip().partition("=")
    if prefix != "sha256":
        return [], None
    raw = _hex(sig)
    return ([raw] if raw is not None else []), None


PRESETS: dict[str, HmacScheme] = {
    "standard_webhooks": HmacScheme(
        "standard_webhooks", "webhook-signature", "webhook-timestamp", "webhook-id", "sha256", _standard, True
    ),
    "stripe": HmacScheme("stripe", "stripe-signature", None, None, "sha256", _stripe, True),
    "github": HmacScheme("github", "x-hub-signature-256", None, None, "sha256", _github, False),
}


def custom_scheme(
    *,
    signature_header: str,
    timestamp_header: str | None,
    id_header: str | None,
    algorithm: str,
    encoding: str,
    prefix: str,
) -> HmacScheme:
    """A sender with its own header names: the header holds ``prefix + signature`` (hex or base64),
    several separated by spaces or commas."""
    decode = _hex if encoding == "hex" else _b64

    def parse(value: str) -> tuple[list[bytes], str | None]:
        sigs = []
        for part in re.split(r"[\s,]+", value.strip()):
            if prefix and not part.startswith(prefix):
                continue
            raw = decode(part[len(prefix) :])
            if raw is not None:
                sigs.append(raw)
        return sigs, None

    return HmacScheme(
        "custom",
        signature_header.lower(),
        timestamp_header.lower() if timestamp_header else None,
        id_header.lower() if id_header else None,
        algorithm,
        parse,
        timestamp_header is not None,
    )


class HmacWebhook:
    name = "hmac_signature"

    def __init__(
        self,
        scheme: HmacScheme,
        secrets: Iterable[bytes],
        *,
        tolerance: float,
        replay: ReplayCache,
        clock: Callable[[], float],
        namespace: str,
    ) -> None:
        self.scheme = scheme
        self.secrets = tuple(secrets)
        if not self.secrets:
            raise ValueError("hmac_signature needs at least one secret")
        self.tolerance = tolerance
        self.replay = replay
        self.clock = clock
        self.namespace = namespace  # the route: an id is one-time per route
        self.digest = _DIGESTS[scheme.digest]

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        scheme = self.scheme
        headers = req.headers
        value = headers.get(scheme.signature_header)
        if value is None or not value.strip():
            return _refuse(scheme, "signature_missing")
        signatures, timestamp = scheme.parse(value)
        if not signatures:
            return _refuse(scheme, "signature_malformed")
        if len(signatures) > MAX_SIGNATURES:
            return _refuse(scheme, "signature_malformed")
        if scheme.timestamp_header is not None:
            timestamp = headers.get(scheme.timestamp_header)
        message_id = None
        if scheme.id_header is not None:
            message_id = headers.get(scheme.id_header)
            if message_id is None or not _ID.fullmatch(message_id):
                return _refuse(scheme, "id_missing" if message_id is None else "id_malformed")
        now = self.clock()
        if scheme.timestamped:
            if timestamp is None or not _TIMESTAMP.fullmatch(timestamp.strip()):
                return _refuse(scheme, "timestamp_missing" if timestamp is None else "timestamp_malformed")
            timestamp = timestamp.strip()
            skew = now - int(timestamp)
            if abs(skew) > self.tolerance:
                return _refuse(scheme, "timestamp_stale", skew=int(skew))
        try:
            body = await req.body.read()
        except BodyReadError as exc:
            return Deny(exc.status, exc.code, "The request body could not be read.")

        prefix = b""
        if message_id is not None:
            prefix += message_id.encode("ascii") + b"."
        if scheme.timestamped and timestamp is not None:
            prefix += timestamp.encode("ascii") + b"."
        matched = False
        for secret in self.secrets:
            mac = hmac.new(secret, prefix, self.digest)
            mac.update(body)
            expected = mac.digest()
            for sig in signatures:
                matched |= hmac.compare_digest(expected, sig)
        if not matched:
            return _refuse(scheme, "signature_mismatch")

        if message_id is not None:
            once = "id:" + message_id
        else:
            # No id: the message itself (timestamp and body) is the one-time value — not the signature that
            # matched, which a replay could swap for another valid one during a secret rotation.
            once = "msg:" + hashlib.sha256(prefix + body).hexdigest()
        expires_at = int(timestamp) + self.tolerance if scheme.timestamped and timestamp else now
        expires_at = max(expires_at, now) + (0.0 if scheme.timestamped else self.tolerance)
        try:
            first = await remember(self.replay, f"hmac|{self.namespace}|{once}", expires_at + 1.0, now, ctx)
        except StateUnavailable:
            return state_unavailable("replay_cache", scheme=scheme.name)
        if not first:
            return webhook_replayed(scheme=scheme.name, **({"id": message_id} if message_id else {}))
        ctx.notes["verified_by"] = "hmac_signature"
        return None


def _refuse(scheme: HmacScheme, cause: str, **evidence: object) -> Deny:
    return signature_invalid(scheme.name, cause, **evidence)
