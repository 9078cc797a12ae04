"""Ports: the small protocols through which policy reaches time and state.

Declared here, implemented in ``state/``, ``store/`` and ``events/``, injected by ``runtime/``. Later
issues add ``KeyStore.find``, ``Counters.hit`` and ``ReplayCache.first_seen`` beside these.
"""

from __future__ import annotations

from typing import Protocol

from .events import Event

__all__ = ["Clock", "EventSink"]


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
