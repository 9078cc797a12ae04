"""The state backends a gateway runs on, from ``storage.state``: in memory (the embedded default, per
process) or Redis (shared by every instance). Built once at load; closed with the gateway."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.models import StorageSettings
from ..core.ports import Counters, ReplayCache, Tallies
from ..state.memory import MemoryCounters, MemoryReplayCache, MemoryTallies
from ..state.redis import RedisCounters, RedisReplayCache, RedisState, RedisTallies

__all__ = ["StateRuntime"]


class StateRuntime:
    def __init__(self, storage: StorageSettings, emit: Callable[..., None]) -> None:
        from ..checks.rate_limit import RefusalLog

        self.url = storage.state
        self.redis: RedisState | None = None
        self.counters: Counters
        self.replay: ReplayCache
        self.tallies: Tallies  # egress detectors (SMS pumping); created for every gateway, used by few
        if storage.state.startswith(("redis://", "rediss://")):
            self.redis = RedisState(storage.state, timeout=storage.state_timeout, prefix=storage.state_prefix)
            self.counters = RedisCounters(self.redis)
            self.replay = RedisReplayCache(self.redis)
            self.tallies = RedisTallies(self.redis)
        else:
            self.counters = MemoryCounters()
            self.replay = MemoryReplayCache()
            self.tallies = MemoryTallies()
        # on_state_failure: local — counts in this process when Redis cannot answer (a shadow count kept
        # while it can). In memory the counters are already this process's: no second count.
        self.fallback: Counters = MemoryCounters() if self.redis is not None else self.counters
        self.refusals = RefusalLog(emit)

    @property
    def shared(self) -> bool:
        """Whether every instance (and worker) sees the same counters and replay records."""
        return self.redis is not None

    async def aclose(self) -> None:
        self.refusals.flush()
        if self.redis is not None:
            await self.redis.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis" if self.redis is not None else "memory",
            "failures": self.redis.failures if self.redis is not None else 0,
            "breaker_open": self.redis.breaker.open if self.redis is not None else False,
        }
