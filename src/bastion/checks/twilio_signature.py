"""Twilio webhook signatures (P19): ``X-Twilio-Signature``, byte-exact with Twilio's SDKs.

The signed string is the full URL Twilio requested (query as sent) followed, for form posts, by every
parameter name and value: names in code-point order, each name's values de-duplicated and sorted, no
separators. The signature is base64(HMAC-SHA1(auth token, that string)); when Twilio signs with a
SharedKey, ``X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=HMAC_SHA256`` says so and only the
hash changes. JSON webhooks are signed through the URL: it carries ``bodySHA256=<hex sha256(raw body)>``.

Twilio's own back end is inconsistent about default ports, so, like its SDKs, the URL is tried as
computed, without its port, and with the scheme's default port. Comparisons are constant-time.

The URL is the *public* one Twilio called, not what the gateway sees behind a TLS proxy: a route's
``public_url``, else ``public_base_url`` + the path as received, else the request's scheme and host
(``X-Forwarded-Proto``/``-Host`` believed from trusted proxies only, as everywhere in Bastion).

A body that is neither a form nor covered by ``bodySHA256`` is not signed by anything: refused.

Twilio signs no timestamp or nonce, so replays can only be caught by remembering: a signature seen again
within ``replay_window`` (default 5 minutes) is ``webhook.replayed`` (409). The record is dropped if the
upstream never answered, so a retry after an outage is delivered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import parse_qs, parse_qsl

from ..core.decision import Context, Deny, Verdict
from ..core.ports import ReplayCache, StateUnavailable
from ..core.request import BodyReadError, RequestView
from ..core.urls import split_authority
from .refusals import remember, signature_invalid, state_unavailable, webhook_replayed

__all__ = [
    "ALGORITHMS",
    "SETTINGS_HEADER",
    "SIGNATURE_HEADER",
    "TwilioSignature",
    "signature_settings",
    "twilio_signature",
    "url_candidates",
]

SIGNATURE_HEADER = "x-twilio-signature"
SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
_DEFAULT_PORT = {"https": "443", "http": "80"}
MAX_FORM_FIELDS = 1000


def twilio_signature(
    secret: bytes, url: str, params: Mapping[str, Sequence[str]] | None = None, algorithm: str = "HMAC_SHA1"
) -> str:
    """The signature Twilio sends for ``url`` and form ``params`` (name → values)."""
    data = [url]
    if params:
        for name in sorted(set(params)):
            for value in sorted(set(params[name])):
                data.append(name)
                data.append(value)
    mac = hmac.new(secret, "".join(data).encode("utf-8"), ALGORITHMS[algorithm])
    return base64.b64encode(mac.digest()).decode("ascii")


def url_candidates(url: str) -> list[str]:
    """The URL as given, without its port, and with the scheme's default port (Twilio's SDKs try the
    latter two; the first is what the sender most likely signed). Distinct, in that order."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return [url]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    host, port = split_authority(authority)
    out = [url]
    if port is not None:
        out.append(f"{scheme}://{host}{tail}")
    else:
        default = _DEFAULT_PORT.get(scheme.lower())
        if default is not None:
            out.append(f"{scheme}://{host}:{default}{tail}")
    return list(dict.fromkeys(out))


def signature_settings(value: str | None) -> tuple[str | None, str]:
    """``(key id, algorithm)`` from ``X-Twilio-Webhooks-Signature-Settings`` (absent: no key, HMAC_SHA1)."""
    key: str | None = None
    algorithm = "HMAC_SHA1"
    for part in (value or "").split(","):
        name, sep, val = part.partition("=")
        if not sep:
            continue
        name, val = name.strip(), val.strip()
        if name == "algorithm" and val:
            algorithm = val.upper()
        elif name == "key" and val:
            key = val
    return key, algorithm


def _is_form(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"


class TwilioSignature:
    """``auth: [twilio_signature]``. ``auth_tokens``: the account's tokens (primary, secondary during a
    rotation); ``shared_keys``: SharedKey id → secret, for webhooks signed with a SharedKey."""

    name = "twilio_signature"

    def __init__(
        self,
        auth_tokens: Iterable[bytes],
        shared_keys: Mapping[str, bytes] | None = None,
        *,
        public_url: str | None = None,
        public_base_url: str | None = None,
        replay: ReplayCache | None = None,
        replay_window: float = 0.0,
        clock: Callable[[], float] = time.time,
        namespace: str = "",
    ) -> None:
        self.auth_tokens = tuple(auth_tokens)
        if not self.auth_tokens:
            raise ValueError("twilio_signature needs at least one auth token")
        self.shared_keys = dict(shared_keys or {})
        self.public_url = public_url
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.replay = replay if replay_window > 0 else None
        self.replay_window = replay_window
        self.clock = clock
        self.namespace = namespace

    def signed_url(self, req: RequestView) -> str:
        if self.public_url is not None:
            url = self.public_url
        elif self.public_base_url is not None:
            url = self.public_base_url + req.raw_path
        else:
            url = f"{req.scheme}://{req.host}{req.raw_path}"
        return f"{url}?{req.query}" if req.query else url

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        headers = req.headers
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None or not signature.strip():
            return _refuse("signature_missing")
        signature = signature.strip()
        key_id, algorithm = signature_settings(headers.get(SETTINGS_HEADER))
        if algorithm not in ALGORITHMS:
            return _refuse("signature_algorithm_unsupported", algorithm=algorithm[:32])
        if key_id is not None:
            secret = self.shared_keys.get(key_id)
            if secret is None:
                return _refuse("signature_key_unknown", key=key_id[:64])
            secrets: tuple[bytes, ...] = (secret,)
        else:
            secrets = self.auth_tokens
        try:
            body = await req.body.read()
        except BodyReadError as exc:
            return Deny(exc.status, exc.code, "The request body could not be read.")

        params: dict[str, list[str]] = {}
        query_hash = parse_qs(req.query).get("bodySHA256") if "bodySHA256" in req.query else None
        if query_hash:
            # A JSON (or any raw) body is signed through the URL: the hash in the query must be its own.
            digest = hashlib.sha256(body).hexdigest()
            if not hmac.compare_digest(digest.encode(), query_hash[0].strip().encode("utf-8", "replace")):
                return _refuse("body_hash_mismatch")
        elif _is_form(headers.get("content-type")):
            try:
                pairs = parse_qsl(
                    body.decode("utf-8"),
                    keep_blank_values=True,
                    max_num_fields=MAX_FORM_FIELDS,
                    errors="strict",
                )
            except (UnicodeDecodeError, ValueError):
                return _refuse("body_malformed")
            for name, value in pairs:
                params.setdefault(name, []).append(value)
        elif body:
            return _refuse("body_unsigned")

        expected = signature.encode("utf-8", "replace")
        url = self.signed_url(req)
        matched = False
        for candidate in url_candidates(url):
            for secret in secrets:
                computed = twilio_signature(secret, candidate, params, algorithm).encode("ascii")
                matched |= hmac.compare_digest(computed, expected)
        if not matched:
            # The URL it was checked against (without the query, which may carry anything) helps an operator
            # spot a public_url / proxy mismatch, the usual cause.
            return _refuse("signature_mismatch", url=url.partition("?")[0][:512])
        if self.replay is not None:
            # Twilio signs no timestamp or id: the same signature (same URL and parameters) seen again within
            # the window is a replay. Twilio's SIDs make genuine repeats of one signed message rare.
            refused = await self._once(signature, ctx)
            if refused is not None:
                return refused
        ctx.notes["verified_by"] = "twilio_signature"
        return None

    async def _once(self, signature: str, ctx: Context) -> Deny | None:
        assert self.replay is not None
        now = self.clock()
        key = f"twilio|{self.namespace}|{signature}"
        try:
            first = await remember(self.replay, key, now + self.replay_window, now, ctx)
        except StateUnavailable:
            return state_unavailable("replay_cache", scheme="twilio")
        return None if first else webhook_replayed(scheme="twilio")


def _refuse(cause: str, **evidence: object) -> Deny:
    return signature_invalid("twilio", cause, **evidence)
