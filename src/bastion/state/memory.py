"""In-process state: the embedded default (one process, nothing shared).

Bounded: an attacker who varies the subject (source addresses, key ids) evicts the oldest entries rather
than growing memory without limit.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Sequence

from ..core.ports import StateUnavailable
from ..core.ratelimit import Decision, Limit, decide, window_of

__all__ = ["MemoryCounters", "MemoryFailureLimiter", "MemoryReplayCache", "MemoryTallies"]


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
        # Whether any subject is blocked: kept current with _blocked (a plain attribute, read on every
        # authenticated request).
        self.active = False

    async def blocked_for(self, subject: str, now: float) -> float:
        if not self._blocked:
            return 0.0
        until = self._blocked.get(subject)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[subject]
            self.active = bool(self._blocked)
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
            self.active = True
            return self.block_for
        return 0.0

    def clear(self) -> None:
        self._seen.clear()
        self._blocked.clear()
        self.active = False


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


class MemoryCounters:
    """Rate limits and quotas in this process. Implements :class:`bastion.core.ports.Counters` with
    :func:`bastion.core.ratelimit.decide`. Bounded: at most ``max_keys`` counters, least recently used
    evicted first (an attacker varying the subject evicts old subjects, never grows memory)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._logs: OrderedDict[str, deque[float]] = OrderedDict()
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key|window -> (window end, n)

    async def hit(self, keys: Sequence[str], limits: Sequence[Limit], now: float, member: str) -> Decision:
        logs: list[Sequence[float]] = []
        counts: list[int] = []
        windows: list[str] = []
        for key, limit in zip(keys, limits, strict=True):
            if limit.calendar is None:
                log = self._logs.get(key)
                if log is not None:
                    edge = now - limit.period
                    while log and log[0] <= edge:
                        log.popleft()
                    self._logs.move_to_end(key)
                logs.append(log if log else ())  # the deque itself: decide() reads len and [0] only
                counts.append(0)
                windows.append("")
            else:
                window, end = window_of(limit, now)
                slot = f"{key}|{window}"
                entry = self._counts.get(slot)
                counts.append(entry[1] if entry is not None else 0)
                logs.append(())
                windows.append(slot)
        decision, record = decide(limits, logs, counts, now)
        if record:
            for key, limit, slot in zip(keys, limits, windows, strict=True):
                if limit.calendar is None:
                    log = self._logs.get(key)
                    if log is None:
                        log = self._logs[key] = deque()
                        self._evict(self._logs)
                    log.append(now)
                else:
                    end = window_of(limit, now)[1]
                    entry = self._counts.get(slot)
                    self._counts[slot] = (end, (entry[1] if entry else 0) + 1)
                    self._counts.move_to_end(slot)
                    self._evict(self._counts)
        return decision

    def _evict(self, table: OrderedDict) -> None:  # type: ignore[type-arg]
        while len(table) > self.max_keys:
            table.popitem(last=False)


class MemoryTallies:
    """Windowed distinct counts and blocks in this process. Implements :class:`bastion.core.ports.Tallies`.

    Bounded: at most ``max_keys`` tallies (least recently used dropped first) of at most ``max_members``
    members each (oldest dropped first). Blocks are never dropped to make room: when ``max_blocks``
    unexpired blocks are held, it refuses (:class:`StateUnavailable`) and the caller fails closed.
    """

    def __init__(
        self, max_keys: int = 100_000, max_members: int = 100_000, max_blocks: int = 100_000
    ) -> None:
        self.max_keys = max_keys
        self.max_members = max_members
        self.max_blocks = max_blocks
        self._tallies: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self._blocks: dict[str, float] = {}

    async def distinct(self, key: str, member: str, window: float, now: float) -> int:
        tallies = self._tallies
        seen = tallies.get(key)
        if seen is None:
            if len(tallies) >= self.max_keys:
                tallies.popitem(last=False)
            seen = tallies[key] = OrderedDict()
        else:
            tallies.move_to_end(key)
        seen.pop(member, None)
        if seen and next(reversed(seen.values())) > now:
            # The clock stepped back: put this member in its place, so the oldest stay at the front.
            ordered = sorted([*seen.items(), (member, now)], key=lambda item: item[1])
            seen.clear()
            seen.update(ordered)
        else:
            seen[member] = now  # newest last: the oldest are at the front
        horizon = now - window
        while seen:
            first = next(iter(seen.values()))
            if first > horizon and len(seen) <= self.max_members:
                break
            seen.popitem(last=False)
        return len(seen)

    async def count(self, key: str, window: float, now: float) -> int:
        seen = self._tallies.get(key)
        if not seen:
            return 0
        horizon = now - window
        return sum(1 for at in seen.values() if at > horizon)

    async def blocked_for(self, key: str, now: float) -> float:
        until = self._blocks.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocks[key]
            return 0.0
        return until - now

    async def block(self, key: str, seconds: float, now: float) -> None:
        blocks = self._blocks
        if key not in blocks and len(blocks) >= self.max_blocks:
            for old in [k for k, until in blocks.items() if until <= now]:
                del blocks[old]
            if len(blocks) >= self.max_blocks:
                raise StateUnavailable("block list full")
        blocks[key] = max(blocks.get(key, 0.0), now + seconds)
