"""Standard Webhooks signing (https://www.standardwebhooks.com): how Bastion signs what it sends — export
batches (events/sinks.py) and alerts (alerts/channels.py) — the same scheme its ``hmac_signature`` check
verifies with the ``standard_webhooks`` preset, so a receiver can use Bastion itself to check them.

``webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["sign_standard_webhook", "standard_webhooks_secret"]


def standard_webhooks_secret(secret: str) -> bytes:
    """Standard Webhooks secrets are ``whsec_<base64>``; the key is the decoded bytes (any other secret
    is used as its UTF-8 bytes). ValueError if the base64 is broken (a config error, found at load)."""
    if secret.startswith("whsec_"):
        try:
            raw = base64.b64decode(secret[6:], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            raise ValueError("a whsec_ secret must be followed by base64")
        return raw
    return secret.encode("utf-8")


def sign_standard_webhook(key: bytes, message_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")
