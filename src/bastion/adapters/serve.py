"""Run a gateway process: database, event writer, data plane, admin listener — and stop them in order.

``run_process`` is what ``bastion serve`` (and the tests) run in one process. With ``--workers N`` the
parent process runs the admin API and supervises N data-plane processes that share the port
(``SO_REUSEPORT``), each with its own event writer on the shared database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from ..config.loader import LoadedConfig
from ..core.forwarding import NetworkSet
from ..events.writer import EventWriter
from ..inventory.recorder import InventoryRecorder
from ..proxy.server import GatewayServer, serve
from ..runtime.gateway import Gateway, build_gateway, check_upstreams
from ..runtime.metrics import MetricsFile, WorkerMetrics, merge, render
from ..runtime.monitoring import Monitoring
from ..store.database import open_database
from .admin import build_admin_app

__all__ = ["Running", "run", "run_process"]

log = logging.getLogger("bastion")


class _AdminServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The gateway owns SIGTERM/SIGINT and stops the admin server itself, in order.
        yield


class Running:
    """Handles of a running process, for tests and the demo."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.admin_port: int | None = None
        self.gateway: Gateway | None = None
        self.writer: EventWriter | None = None
        self.monitoring: Monitoring | None = None
        self.server: Any = None


def _stats(gateway: Gateway, monitoring: Monitoring, running: Running | None) -> dict[str, Any]:
    """Counters of this process for ``GET /admin/v1/status`` (the data plane's, once it is listening)."""
    writer = monitoring.writer
    out: dict[str, Any] = {
        "in_flight": gateway.in_flight,
        "events": {
            "queued": len(writer._queue),
            "written": writer.written,
            "dropped": writer.dropped,
            "write_failures": writer.failures,
            "dead_lettered": writer.dead_lettered,
        },
    }
    if monitoring.sinks is not None:
        out["sinks"] = monitoring.sinks.stats()
    if monitoring.alerts is not None:
        out["alerts"] = dict(monitoring.alerts.stats)
    if gateway.identity is not None:
        out["identity"] = gateway.identity.stats()
    server = running.server if running is not None else None
    if server is not None:
        out["connections"] = {
            "open": len(server.connections),
            "rejected": server.rejected_connections,
            "fast_path_forwards": server.fast_forwards,
        }
        out["upstream_connections_opened"] = {p.spec.name: p.opened for p in server.pools.values()}
    return out


def _metrics(
    gateway: Gateway, monitoring: Monitoring, running: Running | None, workers_dir: str | None
) -> Callable[[], bytes]:
    """``/metrics``: this process's counters, plus each data-plane worker's last snapshot."""

    workers = WorkerMetrics(workers_dir) if workers_dir is not None else None

    def scrape() -> bytes:
        own = monitoring.snapshot(gateway, running.server if running is not None else None)
        if workers is None:
            return render(own)
        # The parent serves no traffic: its gateway's route counts and in-flight are always zero.
        return render(merge([own, *workers.snapshots()]))

    return scrape


async def _start_admin(
    loaded: LoadedConfig,
    gateway: Gateway,
    engine: Any,
    monitoring: Monitoring,
    port: int | None = None,
    running: Running | None = None,
    workers_dir: str | None = None,
) -> _AdminServer:
    admin = loaded.settings.admin
    assert admin is not None
    app = build_admin_app(
        gateway,
        engine,
        admin.token.reveal(),
        NetworkSet(admin.allow_ips),
        stats=lambda: _stats(gateway, monitoring, running),
        metrics=_metrics(gateway, monitoring, running, workers_dir),
    )
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=admin.listen.host,
        port=admin.listen.port if port is None else port,
        proxy_headers=False,  # the admin allow-list checks the TCP peer, never X-Forwarded-For
        server_header=False,
        date_header=False,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    server = _AdminServer(config)

    async def _serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn logs a bind error and exits; a SystemExit would stop our loop
            raise OSError(
                f"the admin listener could not start on {admin.listen} (is the port in use?)"
            ) from None

    task = asyncio.get_running_loop().create_task(_serve())
    while not server.started:
        if task.done():
            task.result()  # raises the OSError
            raise RuntimeError("admin listener stopped during start-up")
        await asyncio.sleep(0.01)
    server._bastion_task = task  # type: ignore[attr-defined]
    return server


async def run_process(
    loaded: LoadedConfig,
    *,
    with_admin: bool = True,
    reuse_port: bool = False,
    migrate: bool = True,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Running], None] | None = None,
    port: int | None = None,
    admin_port: int | None = None,
    metrics_dir: str | None = None,
    freeze_heap: bool = False,
) -> None:
    """``freeze_heap`` (``bastion serve``, not an embedding test): once everything is loaded, the
    startup heap (~100,000 objects: config, compiled checks, libraries) leaves the garbage collector's
    view, so a full collection walks only what requests create (~50 ms → well under 1 ms here), the
    pause every request in flight would otherwise wait out."""
    settings = loaded.settings
    check_upstreams(loaded, middleware=False)  # upstream: app is for BastionMiddleware
    engine = open_database(settings.storage.database, migrate_schema=migrate)
    monitoring = Monitoring(loaded, engine)
    monitoring.start()
    writer = monitoring.writer
    running = Running()
    admin_server: _AdminServer | None = None
    recorder: InventoryRecorder | None = None
    snapshots: MetricsFile | None = None
    try:
        gateway = build_gateway(loaded, monitoring, engine=engine)
        gateway.metrics = monitoring.metrics
        assert gateway.identity is not None
        gateway.identity.start()  # the identity snapshot is loaded before the first request
        if gateway.observer is not None:
            recorder = InventoryRecorder(engine, gateway.observer, gateway.route_hits, gateway.emit)
            recorder.start()
        # A data-plane worker leaves the purge to the parent (one purge job per host).
        await monitoring.attach(gateway, purge=metrics_dir is None)
        running.gateway, running.writer, running.monitoring = gateway, writer, monitoring
        if with_admin and settings.admin is not None:
            admin_server = await _start_admin(loaded, gateway, engine, monitoring, admin_port, running)
            running.admin_port = admin_server.servers[0].sockets[0].getsockname()[1]
        stop = stop or asyncio.Event()
        ready: asyncio.Future[GatewayServer] = asyncio.get_running_loop().create_future()
        serving = asyncio.get_running_loop().create_task(
            serve(gateway, stop=stop, ready=ready, reuse_port=reuse_port, port=port)
        )
        await asyncio.wait([serving, ready], return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()
        running.server = ready.result()
        running.port = running.server.port
        if freeze_heap:
            gc.collect()
            gc.freeze()
        if metrics_dir is not None:
            server = running.server
            snapshots = MetricsFile(metrics_dir, lambda: monitoring.snapshot(gateway, server))
            snapshots.start()
        gateway.emit(
            "gateway.started",
            severity="info",
            actor="system",
            data={"listen": f"{settings.listen.host}:{running.port}", "pid": os.getpid()},
        )
        log.info("bastion listening on %s://%s:%s", gateway.scheme, settings.listen.host, running.port)
        if on_ready is not None:
            on_ready(running)
        await serving
        gateway.emit("gateway.stopped", severity="info", actor="system", data={"pid": os.getpid()})
    finally:
        if snapshots is not None:
            snapshots.close()
        if admin_server is not None:
            admin_server.should_exit = True
            with contextlib.suppress(Exception):
                await admin_server._bastion_task  # type: ignore[attr-defined]
        await monitoring.aclose()  # the alert engine's last alerts, before the sinks and writer close
        if running.gateway is not None and running.gateway.identity is not None:
            running.gateway.identity.close()
            await running.gateway.identity.aclose()
        if running.gateway is not None and running.gateway.state is not None:
            await running.gateway.state.aclose()  # rate-limit summaries are written before the writer closes
        if recorder is not None:
            recorder.close()  # its last observations and events, before the writer closes
        monitoring.close()
        engine.dispose()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()


def _worker_main(loaded: LoadedConfig, metrics_dir: str) -> None:
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(
        run_process(
            loaded,
            with_admin=False,
            reuse_port=True,
            migrate=False,
            metrics_dir=metrics_dir,
            freeze_heap=True,
        )
    )


def _raise_fd_limit(wanted: int) -> None:
    """Each client connection may hold an upstream connection too: make room for both (as nginx's
    ``worker_rlimit_nofile``), up to the hard limit the system allows."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted // 2:  # not even one descriptor per connection
        log.warning("open-file limit is %d; limits.max_connections may not be reachable", soft)


def run(loaded: LoadedConfig, workers: int = 1) -> None:
    """Entry point of ``bastion serve``: blocks until SIGTERM/SIGINT, then drains and returns."""
    _raise_fd_limit(2 * loaded.settings.limits.max_connections + 256)
    if workers <= 1:
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(run_process(loaded, freeze_heap=True))
        finally:
            loop.close()
        return
    # Parent: migrate once, run the admin API, supervise the data-plane workers.
    open_database(loaded.settings.storage.database).dispose()
    ctx = multiprocessing.get_context("spawn")
    metrics_dir = tempfile.mkdtemp(prefix="bastion-metrics-")
    procs = [
        ctx.Process(target=_worker_main, args=(loaded, metrics_dir), name=f"bastion-worker-{i}")
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    stop = threading.Event()

    def _forward(signum: int, _frame: Any) -> None:
        stop.set()
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    # The parent runs the purge and the admin API (when configured), and its alert engine sees the admin
    # API's events (the workers' engines see the data plane's; on redis:// they count together).
    loop = _new_loop()
    asyncio.set_event_loop(loop)

    async def _parent() -> None:
        engine = open_database(loaded.settings.storage.database, migrate_schema=False)
        monitoring = Monitoring(loaded, engine)
        monitoring.start()
        gateway: Gateway | None = None
        server: _AdminServer | None = None
        try:
            gateway = build_gateway(loaded, monitoring, engine=engine)
            gateway.metrics = monitoring.metrics
            assert gateway.identity is not None
            if loaded.settings.admin is not None:
                gateway.identity.start()
            await monitoring.attach(gateway, purge=True)
            if loaded.settings.admin is not None:
                server = await _start_admin(loaded, gateway, engine, monitoring, workers_dir=metrics_dir)
            # Poll: the stop flag is set by a signal handler and the workers are other processes.
            while not stop.is_set() and any(p.is_alive() for p in procs):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        finally:
            if server is not None:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await server._bastion_task  # type: ignore[attr-defined]
            await monitoring.aclose()
            if gateway is not None and gateway.identity is not None:
                gateway.identity.close()
            if gateway is not None and gateway.state is not None:
                await gateway.state.aclose()
            monitoring.close()
            engine.dispose()

    try:
        loop.run_until_complete(_parent())
    finally:
        loop.close()
    for p in procs:
        p.join()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [p.exitcode for p in procs]
    if any(codes):
        print(f"bastion: a worker exited with {codes}", file=sys.stderr)
