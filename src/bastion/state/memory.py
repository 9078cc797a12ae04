"""In-process state: the embedded default (one process, nothing shared).

Bounded: an attacker who varies the subject (source addresses, key ids) evicts the oldest entries rather
than growing memory without limit.
"""

from __future__ import annotations

from collections import OrderedDict, deque

__all__ = ["MemoryFailureLimiter"]


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
