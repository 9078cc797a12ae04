"""A running engine inside an application process: the database, the event writer and sinks, the alert
engine, the identity snapshot, the state backends and the inventory recorder — started and stopped in
the order ``bastion serve`` uses (adapters/serve.py), by the ASGI lifespan."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from ..config.loader import LoadedConfig
from ..core.forwarding import HOP_BY_HOP, NetworkSet
from ..inventory.recorder import InventoryRecorder
from ..runtime.gateway import Gateway, build_gateway
from ..runtime.metrics import render
from ..runtime.monitoring import Monitoring
from ..store.database import open_database

__all__ = ["EngineRuntime"]


class EngineRuntime:
    def __init__(self, loaded: LoadedConfig, clock: Callable[[], float]) -> None:
        self.loaded = loaded
        self.clock = clock
        self.engine: Engine | None = None
        self.monitoring: Monitoring | None = None
        self.gateway: Gateway | None = None
        self.recorder: InventoryRecorder | None = None
        # Response-side work done once (as the proxy's GatewayServer does): the names never passed on from
        # the application's response, and the headers Bastion adds to every response, as bytes.
        self.response_skip: frozenset[bytes] = frozenset()
        self.security_headers: tuple[tuple[bytes, bytes], ...] = ()

    def start(self) -> Gateway:
        """Open and start everything; on failure, close what was opened and raise."""
        settings = self.loaded.settings
        try:
            self.engine = open_database(settings.storage.database)
            self.monitoring = Monitoring(self.loaded, self.engine, clock=self.clock)
            self.monitoring.start()
            gateway = build_gateway(self.loaded, self.monitoring, engine=self.engine, clock=self.clock)
            gateway.metrics = self.monitoring.metrics
            self.gateway = gateway
            assert gateway.identity is not None
            gateway.identity.start()  # the identity snapshot is loaded before the first request
            if gateway.observer is not None:
                self.recorder = InventoryRecorder(
                    self.engine, gateway.observer, gateway.route_hits, gateway.emit
                )
                self.recorder.start()
        except BaseException:
            self._close_sync()
            raise
        own = {name.encode("latin-1") for name, _ in gateway.security_headers}
        self.response_skip = frozenset(
            {n.encode("latin-1") for n in (*HOP_BY_HOP, *gateway.strip_response)} | own | {b"x-request-id"}
        )
        self.security_headers = tuple(
            (n.encode("latin-1"), v.encode("latin-1")) for n, v in gateway.security_headers
        )
        return gateway

    def admin_app(self) -> Any:
        """The admin API (``/admin/v1``) on this engine, for ``BastionMiddleware(admin=True)``: the same
        application as the admin listener's, behind the same guard (``admin.allow_ips``, ``admin.token``)."""
        from ..adapters.admin import build_admin_app

        admin = self.loaded.settings.admin
        gateway, monitoring = self.gateway, self.monitoring
        assert (
            admin is not None and gateway is not None and monitoring is not None and self.engine is not None
        )

        def stats() -> dict[str, Any]:
            writer = monitoring.writer
            out: dict[str, Any] = {
                "face": "middleware",
                "in_flight": gateway.in_flight,
                "events": {
                    "queued": len(writer._queue),
                    "written": writer.written,
                    "dropped": writer.dropped,
                },
            }
            if gateway.identity is not None:
                out["identity"] = gateway.identity.stats()
            return out

        return build_admin_app(
            gateway,
            self.engine,
            admin.token.reveal(),
            NetworkSet(admin.allow_ips),
            stats=stats,
            metrics=lambda: render(monitoring.snapshot(gateway)),
        )

    async def attach(self) -> None:
        """After :meth:`start`, on the application's event loop: the alert engine and the purge job."""
        assert self.monitoring is not None and self.gateway is not None
        await self.monitoring.attach(self.gateway, purge=True)
        self.gateway.emit(
            "gateway.started",
            severity="info",
            actor="system",
            data={"face": "middleware", "pid": os.getpid()},
        )

    async def stop(self) -> None:
        gateway, monitoring = self.gateway, self.monitoring
        if gateway is not None:
            gateway.emit("gateway.stopped", severity="info", actor="system", data={"pid": os.getpid()})
        if monitoring is not None:
            await monitoring.aclose()  # the alert engine's last alerts, before the sinks and writer close
        if gateway is not None and gateway.identity is not None:
            gateway.identity.close()
            await gateway.identity.aclose()
        if gateway is not None and gateway.state is not None:
            await gateway.state.aclose()  # rate-limit summaries are written before the writer closes
        self._close_sync()

    def _close_sync(self) -> None:
        if self.recorder is not None:
            self.recorder.close()  # its last observations and events, before the writer closes
            self.recorder = None
        if self.gateway is not None and self.gateway.identity is not None:
            self.gateway.identity.close()
        if self.monitoring is not None:
            with contextlib.suppress(Exception):
                self.monitoring.close()
            self.monitoring = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
