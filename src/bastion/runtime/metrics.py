"""Prometheus metrics: Bastion's own counters, rendered in the exposition format at ``/metrics``.

The request path only increments plain integers (a latency bucket, a deny counter); nothing there
allocates a label set or takes a lock. At scrape time the admin listener turns a *snapshot* of those
counters, plus gauges read from the process (queues, in-flight requests, sinks), into metric families
and lets ``prometheus_client`` write the text format.

With ``--workers N`` the data plane runs in other processes: each worker writes its snapshot to a JSON
file in a directory the parent made (every second, atomically renamed), and the parent's ``/metrics``
adds them up. The counters of a worker that has exited are kept (``WorkerMetrics.retired``), so the
sums never go down.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["BUCKETS", "Metrics", "MetricsFile", "WorkerMetrics", "merge", "render", "snapshot_of"]

# Seconds. Gateway latencies: from the request head to the end of the response.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The counters the request path updates (one instance per process)."""

    __slots__ = ("counts", "denies", "latency_sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last is +Inf
        self.latency_sum = 0.0
        self.denies: dict[tuple[int, str], int] = {}

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def denied(self, status: int, code: str) -> None:
        key = (status, code)
        self.denies[key] = self.denies.get(key, 0) + 1


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add snapshots up: numbers are summed, dictionaries merged key by key, lists element by element."""
    out: dict[str, Any] = {}
    for snap in snapshots:
        _add(out, snap)
    return out


def _add(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, bool):
            into[key] = into.get(key, False) or value
        elif isinstance(value, int | float):
            into[key] = into.get(key, 0) + value
        elif isinstance(value, Mapping):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            mine = into.setdefault(key, [0] * len(value))
            for i, v in enumerate(value[: len(mine)]):
                mine[i] += v


class MetricsFile:
    """A worker's snapshot, written to ``directory`` every ``interval`` seconds by a daemon thread."""

    def __init__(self, directory: str, snapshot: Callable[[], dict[str, Any]], interval: float = 1.0) -> None:
        self.path = os.path.join(directory, f"bastion-metrics-{os.getpid()}.json")
        self._snapshot = snapshot
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bastion-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def write(self) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self._snapshot(), fh, separators=(",", ":"))
            os.replace(tmp, self.path)
        except (OSError, ValueError, RuntimeError):  # a full disk or a dict changing size: next time
            pass

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.write()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class WorkerMetrics:
    """The workers' snapshots, read at scrape time by the supervising process. A worker that has exited
    leaves its counters behind (folded into ``retired``), so the sums never go down; its gauges go."""

    _GAUGES = ("in_flight", "connections")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.retired: dict[str, Any] = {}

    def snapshots(self) -> list[dict[str, Any]]:
        out = [self.retired]
        for path in glob.glob(os.path.join(self.directory, "bastion-metrics-*.json")):
            pid = path.rsplit("-", 1)[-1].removesuffix(".json")
            try:
                with open(path, encoding="utf-8") as fh:
                    snap = json.load(fh)
            except (OSError, ValueError):
                continue
            if pid.isdigit() and not _alive(int(pid)):
                _add(self.retired, _counters_only(snap))
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            out.append(snap)
        return out


def _counters_only(snap: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in snap.items() if k not in WorkerMetrics._GAUGES}
    if isinstance(out.get("events"), dict):
        out["events"] = {k: v for k, v in out["events"].items() if k != "queued"}
    if isinstance(out.get("sinks"), dict):
        out["sinks"] = {n: {k: v for k, v in st.items() if k != "queued"} for n, st in out["sinks"].items()}
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def snapshot_of(metrics: Metrics) -> dict[str, Any]:
    return {
        "requests": sum(metrics.counts),
        "latency": {"buckets": list(metrics.counts), "sum": metrics.latency_sum},
        "denies": {f"{status} {code}": n for (status, code), n in list(metrics.denies.items())},
    }


def render(snap: Mapping[str, Any]) -> bytes:
    """The exposition format (text 0.0.4) of a merged snapshot."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    class _Collector:
        def collect(self) -> Iterable[Any]:
            yield CounterMetricFamily(
                "bastion_requests", "Requests the data plane received", value=snap.get("requests", 0)
            )
            denies = CounterMetricFamily(
                "bastion_denied_requests",
                "Requests the gateway refused, by status and code",
                labels=["status", "code"],
            )
            for key, n in sorted(snap.get("denies", {}).items()):
                status, _, code = key.partition(" ")
                denies.add_metric([status, code], n)
            yield denies
            lat = snap.get("latency", {})
            counts = lat.get("buckets") or [0] * (len(BUCKETS) + 1)
            cumulative, acc = [], 0
            for bound, n in zip([*map(str, BUCKETS), "+Inf"], counts, strict=False):
                acc += n
                cumulative.append((bound, acc))
            yield HistogramMetricFamily(
                "bastion_request_duration_seconds",
                "From the request head to the end of the response",
                buckets=cumulative,
                sum_value=lat.get("sum", 0.0),
            )
            routes = CounterMetricFamily(
                "bastion_route_requests", "Requests matched to each route", labels=["route"]
            )
            for route, n in sorted(snap.get("routes", {}).items()):
                routes.add_metric([route], n)
            yield routes
            yield GaugeMetricFamily(
                "bastion_in_flight_requests", "Requests being served", value=snap.get("in_flight", 0)
            )
            yield GaugeMetricFamily(
                "bastion_open_connections", "Client connections open", value=snap.get("connections", 0)
            )
            ev = snap.get("events", {})
            yield GaugeMetricFamily(
                "bastion_event_queue_depth", "Events waiting for the writer", value=ev.get("queued", 0)
            )
            for name, helptext in (
                ("written", "Events written to the database"),
                ("dropped", "Events dropped because the queue was full"),
                ("write_failures", "Failed event batch writes (spooled)"),
                ("dead_lettered", "Events spooled while the database was unavailable"),
            ):
                yield CounterMetricFamily(f"bastion_events_{name}", helptext, value=ev.get(name, 0))
            sinks = snap.get("sinks", {})
            for field, kind, helptext in (
                ("queued", GaugeMetricFamily, "Events waiting in an export sink's queue"),
                ("delivered", CounterMetricFamily, "Events an export sink delivered"),
                ("failures", CounterMetricFamily, "Failed deliveries of an export sink"),
                ("dead_lettered", CounterMetricFamily, "Events an export sink put in its dead-letter file"),
                ("dropped", CounterMetricFamily, "Events an export sink dropped (queue full)"),
            ):
                family = kind(f"bastion_sink_{field}", helptext, labels=["sink"])
                for name, stats in sorted(sinks.items()):
                    family.add_metric([name], stats.get(field, 0))
                yield family
            alerts = snap.get("alerts", {})
            for field, helptext in (
                ("fired", "Alerts fired"),
                ("dropped", "Events the alert engine could not take (queue full)"),
                ("deliveries_failed", "Alert deliveries that failed"),
            ):
                yield CounterMetricFamily(f"bastion_alerts_{field}", helptext, value=alerts.get(field, 0))
            yield CounterMetricFamily(
                "bastion_state_failures",
                "Calls to the shared state (Redis) that failed",
                value=snap.get("state_failures", 0),
            )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    return generate_latest(registry)
