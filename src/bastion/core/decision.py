"""Decisions are values: a check says no with a :class:`Deny`, answers by itself with an
:class:`Answer`, or says nothing (``None``) and the request goes on. Only adapters write bytes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .identity import Principal

__all__ = ["EMPTY", "LATER", "UNPARSED", "Answer", "Context", "Deny", "Verdict"]


class _Unparsed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNPARSED"


UNPARSED: Any = _Unparsed()  # Context.parsed_body before any check parsed the body


class _Later:
    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


# What a check's decide_now returns when it cannot decide without waiting: the chain then awaits the
# check's decide_later (or the check itself). See bastion.core.chain.
LATER: Any = _Later()

EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Deny:
    """The only way a check says no.

    ``code`` is stable snake_case and documented in docs/errors.md; ``detail`` is safe to show a
    client; ``evidence`` goes to the event log only and must already be redacted; ``extra`` adds members
    to the problem+json body (the validation ``errors`` list), written from the config, never the request.
    """

    status: int
    code: str
    detail: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    severity: str = "warning"
    event: str = "request.denied"  # the event type recorded (``auth.failed`` for failed credentials)
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)  # problem+json members, already safe


@dataclass(frozen=True, slots=True)
class Answer:
    """The gateway answers the request itself and nothing is forwarded (a CORS preflight)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


Verdict = Deny | Answer | None


@dataclass(slots=True)
class Context:
    """What checks learn about one request, passed along the chain. Nothing global.

    ``response_headers`` are added to whatever response the client gets (allowed or denied).
    ``undo`` holds what to revert if the upstream never answers (see :meth:`on_upstream_failure`).
    ``principal`` is filled by authentication checks. ``notices`` are events a check wants recorded
    even when the request goes on (``api_key.used_after_rotation``): ``(type, data)`` pairs the gateway
    emits with the request's details. ``parsed_body`` is the JSON body once a check has parsed it (or
    the refusal it earned), so every other check gets the same value; :data:`UNPARSED` until then.
    """

    request_id: str
    principal: Principal | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    notices: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    parsed_body: Any = UNPARSED
    # Run when the upstream never answered (502/504 from the gateway): a check that recorded a one-time
    # value (a webhook id) undoes it, so the sender's retry is not refused as a replay. None: nothing to undo.
    undo: list[Callable[[], None]] | None = None

    def on_upstream_failure(self, action: Callable[[], None]) -> None:
        if self.undo is None:
            self.undo = []
        self.undo.append(action)
