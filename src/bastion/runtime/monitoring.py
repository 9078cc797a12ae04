"""Where events go once made, for one process: the database writer, the export sinks and the alert
engine — plus the retention purge and the metrics snapshot.

``Monitoring.emit`` is the gateway's event sink. It hands each event to the writer's queue, each sink's
queue and the alert engine's queue; every one of them is a bounded append, so an event costs the
request path a few microseconds whatever happens downstream. Built before the gateway (which needs the
sink), attached to it after (the alert engine needs the gateway's shared state), started, and closed in
the reverse order: alerts, then sinks and writer, so the last events reach them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from ..config.loader import LoadedConfig
from ..core.events import Event
from ..events.writer import EventWriter
from .metrics import Metrics, snapshot_of

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["Monitoring"]

log = logging.getLogger("bastion.monitoring")

# The alert detectors that need every authenticated request, not only events.
_USE_DETECTORS = frozenset({"traffic_spike", "new_source_country"})


class Monitoring:
    def __init__(
        self,
        loaded: LoadedConfig,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        alerts: bool = True,
    ) -> None:
        settings = loaded.settings
        ev = settings.events
        self.engine = engine
        self.clock = clock
        self.retention = ev.retention
        self.purge_interval = ev.purge_interval
        self.chain_key = None if ev.chain_key is None else ev.chain_key.reveal().encode()
        self.writer = EventWriter(
            engine,
            queue_size=ev.queue_size,
            batch_size=ev.batch_size,
            flush_interval=ev.flush_interval,
            chain_key=self.chain_key,
        )
        self.metrics = Metrics()
        self.sinks: Any = None
        if ev.sinks:
            from ..events.sinks import SinkSet

            self.sinks = SinkSet(ev.sinks, base_dir=_base_dir(engine), clock=clock)
        self._alert_settings = settings.alerts if alerts and settings.alerts.rules else None
        self.alerts: Any = None
        self._targets: tuple[Callable[[Event], None], ...] = tuple(
            t for t in (self.writer.emit, self.sinks.emit if self.sinks else None) if t is not None
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.purged = 0

    # -- the EventSink port ------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        for target in self._targets:
            try:
                target(event)
            except Exception:  # one broken consumer must not starve the others, nor the request
                log.exception("an event consumer failed")

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.writer.start()
        if self.sinks is not None:
            self.sinks.start()

    async def attach(self, gateway: Gateway, *, purge: bool) -> None:
        """Start the alert engine on the gateway's state, and (in one process per host) the purge job."""
        if self._alert_settings is not None:
            from ..alerts import AlertEngine, build_alert_state

            storage = gateway.settings.storage
            self.alerts = AlertEngine(
                self._alert_settings,
                state=build_alert_state(storage.state, None, storage.state_prefix),  # its own connection
                emit=self.emit,
                clock=self.clock,
            )
            self._targets = (*self._targets, self.alerts.observe)
            if any(r.builtin in _USE_DETECTORS for r in self._alert_settings.rules):
                gateway.on_use = self.alerts.observe_use
            self._tasks.append(asyncio.get_running_loop().create_task(self.alerts.run()))
        if purge:
            self._tasks.append(asyncio.get_running_loop().create_task(self._purge_loop()))

    async def _purge_loop(self) -> None:
        from ..events.chain import purge

        while True:
            try:
                done = await asyncio.to_thread(
                    purge, self.engine, self.clock() - self.retention, key=self.chain_key, now=self.clock
                )
                self.purged += done.count
                if done.count:
                    log.info("purged %d event(s) older than the retention", done.count)
                if done.suspect:
                    log.error(
                        "the event log's hash chain does not verify for %d chain(s); their rows were kept: "
                        "run `bastion events verify`",
                        len(done.suspect),
                    )
                if done.event is not None and self.sinks is not None:
                    self.sinks.emit(done.event)  # written by the purge itself; the sinks get a copy
            except Exception as exc:  # the database is down: try again next interval
                log.error("event purge failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.purge_interval)

    async def aclose(self) -> None:
        # The alert engine first: it takes its last step and waits for deliveries, and its run task then
        # ends by itself (cancelling it mid-step would lose the events it had taken).
        if self.alerts is not None:
            with contextlib.suppress(Exception):
                await self.alerts.aclose()
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()

    def close(self) -> None:
        """After :meth:`aclose`: the sinks and the writer take what is queued, then stop."""
        if self.sinks is not None:
            self.sinks.close()
        self.writer.close()

    # -- metrics -----------------------------------------------------------------------------------
    def snapshot(self, gateway: Gateway | None, server: Any = None) -> dict[str, Any]:
        w = self.writer
        snap: dict[str, Any] = snapshot_of(self.metrics)
        snap["events"] = {
            "queued": len(w._queue),
            "written": w.written,
            "dropped": w.dropped,
            "write_failures": w.failures,
            "dead_lettered": w.dead_lettered,
        }
        if self.sinks is not None:
            snap["sinks"] = self.sinks.stats()
        if self.alerts is not None:
            stats = dict(getattr(self.alerts, "stats", {}) or {})
            snap["alerts"] = {k: v for k, v in stats.items() if isinstance(v, int | float)}
        if gateway is not None:
            snap["in_flight"] = gateway.in_flight
            snap["routes"] = dict(gateway.route_hits)
            if gateway.state is not None and gateway.state.redis is not None:
                snap["state_failures"] = gateway.state.redis.failures
        if server is not None:
            snap["connections"] = len(server.connections)
        return snap


def _base_dir(engine: Engine) -> str:
    """Beside the SQLite database, or the working directory (as the event spool)."""
    db = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    return os.path.dirname(os.path.abspath(db)) if db and db != ":memory:" else os.getcwd()
