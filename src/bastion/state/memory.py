"""In-process state: the embedded default (one process, nothing shared).

Bounded: an attacker who varies the subject (source addresses, key ids) evicts the oldest entries rather
than growing memory without limit.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque

from ..core.ports import StateUnavailable

__all__ = ["MemoryFailureLimiter", "MemoryReplayCache"]


class MemoryFailureLimiter:
    """Sliding-window failure counts: ``failures`` within ``within`` seconds block a subject for
    ``block_for`` seconds. Implements :class:`bastion.core.ports.FailureLimiter`."""

    def __init__(self, failures: int, within: float, block_for: float, max_subjects: int = 100_000) -> None:
        self.failures = failures
        self.within = within
        self.block_for = block_for
        self.max_subjects = max_subjects
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return bool(self._blocked)

    async def blocked_for(self, subject: str, now: float) -> float:
        if not self._blocked:
            return 0.0
        until = self._blocked.get(subject)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[subject]
            return 0.0
        return until - now

    async def failed(self, subject: str, now: float) -> float:
        times = self._seen.get(subject)
        if times is None:
            if len(self._seen) >= self.max_subjects:
                self._seen.popitem(last=False)
            times = self._seen[subject] = deque(maxlen=self.failures)
        else:
            self._seen.move_to_end(subject)
        times.append(now)
        if len(times) >= self.failures and now - times[0] < self.within:
            times.clear()
            if len(self._blocked) >= self.max_subjects:
                self._blocked.pop(next(iter(self._blocked)))
            self._blocked[subject] = now + self.block_for
            return self.block_for
        return 0.0

    def clear(self) -> None:
        self._seen.clear()
        self._blocked.clear()


class MemoryReplayCache:
    """One-time values until they expire. Implements :class:`bastion.core.ports.ReplayCache`.

    Only values that passed a signature check are recorded, so filling it takes valid signatures. When
    ``max_entries`` unexpired values are held it refuses (:class:`StateUnavailable`) rather than forget
    one: forgetting would let that value be replayed.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._until: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._until)

    async def first_seen(self, key: str, expires_at: float, now: float) -> bool:
        until = self._until
        heap = self._expiry
        while heap and heap[0][0] <= now:
            at, old = heapq.heappop(heap)
            if until.get(old) == at:
                del until[old]
        seen = until.get(key)
        if seen is not None and seen > now:
            return False
        if len(until) >= self.max_entries:
            raise StateUnavailable("replay cache full")
        until[key] = expires_at
        heapq.heappush(heap, (expires_at, key))
        return True

    def forget(self, key: str) -> None:
        self._until.pop(
            key, None
        )  # its heap entry is skipped when it comes up (the times differ or it's gone)
