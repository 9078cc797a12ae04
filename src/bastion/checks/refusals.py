"""What several checks say the same way: the state backend not answering, a message seen before, a bad
webhook signature, the identity store out of reach — one definition each, so codes, headers and wording
cannot drift apart between policies (docs/errors.md lists them once)."""

from __future__ import annotations

from typing import Any

from ..core.decision import Context, Deny
from ..core.ports import ReplayCache

__all__ = ["IDENTITY_UNAVAILABLE", "remember", "signature_invalid", "state_unavailable", "webhook_replayed"]

IDENTITY_UNAVAILABLE = Deny(
    503,
    "identity_unavailable",
    "Authentication is unavailable right now; retry later.",
    headers=(("retry-after", "5"),),
    evidence={"cause": "identity_store_unreachable"},
    severity="error",
)


def state_unavailable(state: str, *, event: str = "request.denied", **evidence: Any) -> Deny:
    """503: a security check could not reach its state (fail closed)."""
    return Deny(
        503,
        "state_unavailable",
        "The gateway cannot check this request right now.",
        headers=(("retry-after", "1"),),
        evidence={**evidence, "state": state},
        severity="error",
        event=event,
    )


def webhook_replayed(**evidence: Any) -> Deny:
    return Deny(
        409,
        "webhook_replayed",
        "This message was already delivered.",
        evidence=evidence,
        event="webhook.replayed",
    )


def signature_invalid(scheme: str, cause: str, **evidence: Any) -> Deny:
    return Deny(
        403,
        "webhook_signature_invalid",
        "The request signature is not valid.",
        evidence={"scheme": scheme, "cause": cause, **evidence},
        event="webhook.signature_invalid",
    )


async def remember(replay: ReplayCache, key: str, until: float, now: float, ctx: Context) -> bool:
    """Record a one-time value: True the first time, False for a replay. The record is dropped again if
    the upstream never answers (so the sender's retry is not a replay). Raises StateUnavailable."""
    if not await replay.first_seen(key, until, now):
        return False
    ctx.on_upstream_failure(lambda: replay.forget(key))
    return True
