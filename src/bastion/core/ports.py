"""Ports: the small protocols through which policy reaches time and state.

Declared here, implemented in ``state/``, ``identity/``, ``store/`` and ``events/``, injected by
``runtime/``. The rate-limit issue adds ``Counters.hit`` beside these.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from .events import Event
from .identity import ClientRecord, ConsumerRecord, KeyRecord, Principal, PublicKeyRecord
from .ratelimit import Decision, Limit

__all__ = [
    "ClientValidator",
    "Clock",
    "Counters",
    "EventSink",
    "FailureLimiter",
    "Freshness",
    "IdentityIndex",
    "ReplayCache",
    "StateUnavailable",
    "Tallies",
    "TokenVerifier",
]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, for timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (for durations and timeouts)."""
        ...


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Queue an event. Never blocks and never raises: overflow is counted and reported."""
        ...


class IdentityIndex(Protocol):
    """Consumers, keys and clients as an in-memory snapshot: a lookup never waits for the database."""

    # The current key records by public id: the per-request lookup, one dict access. Read-only; a
    # reload replaces the mapping wholesale, so read the attribute each time rather than keep it.
    keys: Mapping[str, KeyRecord]

    def key(self, key_id: str) -> KeyRecord | None: ...

    def consumer(self, consumer_id: str) -> ConsumerRecord | None: ...

    def consumer_named(self, name: str) -> ConsumerRecord | None: ...

    def client(self, client_id: str) -> ClientRecord | None: ...

    def token_revoked(self, jti: str) -> bool: ...

    def public_key(self, credential_id: str) -> PublicKeyRecord | None: ...

    # Where a successful use is noted (``last_used[key_id] = now``, for ``last_used_at``): the store
    # takes what was noted in batches, never per request. The same mapping for the index's life
    # (emptied in place, never replaced), so callers may keep it: the per-request path does.
    last_used: MutableMapping[str, float]


class Freshness(Protocol):
    """How long in-memory identity data may still be trusted: the store last confirmed it, plus
    ``identity.max_staleness``. Past ``fresh_until`` (the checks' clock) authentication fails closed."""

    @property
    def fresh_until(self) -> float: ...


class TokenVerifier(Protocol):
    """Turns a bearer token into a principal (Bastion's own OAuth2 tokens, or an external issuer's JWTs).
    Raises :class:`bastion.core.identity.AuthFailure`; ``claims_like`` is a cheap shape test that says
    whether the token is for this verifier at all."""

    name: str

    def claims_like(self, token: str) -> bool: ...

    async def verify(self, token: str, now: float) -> Principal: ...

    def recall(self, token: str, now: float) -> Principal | None:
        """The principal of a token this verifier has verified before and that is still good (unexpired,
        unrevoked, its consumer active), without awaiting; None when it cannot say (then ``verify``)."""
        ...


class ClientValidator(Protocol):
    """Verifies a PKCV token (``Twilio-Client-Validation``): its signature with a consumer's registered
    public key and its claims. Returns the principal and the claims the check compares with the request
    (``hrh``, ``rqh``, ``exp``); raises :class:`bastion.core.identity.AuthFailure`."""

    def verify(self, token: str, now: float) -> tuple[Principal, Any]: ...


class FailureLimiter(Protocol):
    """Counts failed authentications per subject (``ip:…``, ``key:…``) and blocks a subject for a while
    after too many (brute force, credential stuffing)."""

    @property
    def active(self) -> bool:
        """False when no subject is blocked at all: the common path then skips the lookups."""
        ...

    async def blocked_for(self, subject: str, now: float) -> float:
        """Seconds the subject stays blocked (0 when it is not)."""
        ...

    async def failed(self, subject: str, now: float) -> float:
        """Record a failure; the block (seconds) it triggered, or 0."""
        ...


class Counters(Protocol):
    """Rate limits and quotas (:mod:`bastion.core.ratelimit`): one atomic call per request for all of a
    route's limits. ``keys[i]`` names limit i's counter (a quota's key gets its calendar window appended by
    the backend); ``member`` is unique per request. Raises :class:`StateUnavailable`."""

    async def hit(
        self, keys: Sequence[str], limits: Sequence[Limit], now: float, member: str
    ) -> Decision: ...


class StateUnavailable(Exception):
    """A state backend cannot answer (full, unreachable). Security checks treat it as a refusal."""


class ReplayCache(Protocol):
    """Remembers one-time values (webhook ids, signed-request hashes) until they expire."""

    async def first_seen(self, key: str, expires_at: float, now: float) -> bool:
        """Record ``key`` until ``expires_at``; True the first time, False if it is already recorded.
        Raises :class:`StateUnavailable` when it cannot remember (the caller refuses the request)."""
        ...

    def forget(self, key: str) -> None:
        """Drop ``key`` (best effort, never raises): the message it recorded never reached the application
        (the upstream did not answer), so the sender's retry must not be refused as a replay."""
        ...


class Tallies(Protocol):
    """Windowed distinct counts and timed blocks, for detectors that act on patterns in traffic (SMS
    pumping: numbers seen in one range, messages to one country, delivery outcomes). Raises
    :class:`StateUnavailable` when it cannot answer."""

    async def distinct(self, key: str, member: str, window: float, now: float) -> int:
        """Record ``member`` under ``key`` at ``now``; how many distinct members were seen in the last
        ``window`` seconds, this one included."""
        ...

    async def count(self, key: str, window: float, now: float) -> int:
        """How many distinct members were seen under ``key`` in the last ``window`` seconds (records none)."""
        ...

    async def blocked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` stays blocked (0 when it is not)."""
        ...

    async def block(self, key: str, seconds: float, now: float) -> None:
        """Block ``key`` for ``seconds`` from ``now`` (extends, never shortens, a running block)."""
        ...
