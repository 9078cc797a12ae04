"""The counters behind /metrics: the histogram, the sums across workers, and the exposition format."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bastion.runtime.metrics import BUCKETS, Metrics, WorkerMetrics, merge, render, snapshot_of


def sample(text: str, line_start: str) -> float:
    return float(next(ln for ln in text.splitlines() if ln.startswith(line_start + " ")).rsplit(" ", 1)[1])


def test_histogram_buckets_and_denies() -> None:
    m = Metrics()
    for seconds in (0.0005, 0.002, 0.002, 0.7, 45.0):
        m.observe(seconds)
    m.denied(404, "route_not_found")
    m.denied(404, "route_not_found")
    m.denied(401, "auth_invalid")
    snap = snapshot_of(m)
    assert snap["requests"] == 5 and len(snap["latency"]["buckets"]) == len(BUCKETS) + 1
    text = render(snap).decode()
    assert sample(text, 'bastion_request_duration_seconds_bucket{le="0.001"}') == 1
    assert sample(text, 'bastion_request_duration_seconds_bucket{le="0.0025"}') == 3
    assert sample(text, 'bastion_request_duration_seconds_bucket{le="1.0"}') == 4
    assert sample(text, 'bastion_request_duration_seconds_bucket{le="+Inf"}') == 5
    assert sample(text, 'bastion_denied_requests_total{code="route_not_found",status="404"}') == 2
    assert sample(text, "bastion_requests_total") == 5


def test_merge_adds_numbers_dicts_and_lists() -> None:
    a = {
        "requests": 2,
        "latency": {"buckets": [1, 1], "sum": 0.5},
        "denies": {"404 x": 1},
        "sinks": {"s": {"delivered": 3}},
    }
    b = {"requests": 3, "latency": {"buckets": [0, 3], "sum": 1.0}, "denies": {"404 x": 2, "401 y": 1}}
    assert merge([a, b]) == {
        "requests": 5,
        "latency": {"buckets": [1, 4], "sum": 1.5},
        "denies": {"404 x": 3, "401 y": 1},
        "sinks": {"s": {"delivered": 3}},
    }


def test_an_exited_workers_counters_are_kept_and_its_gauges_dropped(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    live = {"requests": 5, "in_flight": 2, "events": {"written": 1, "queued": 4}}
    dead = {"requests": 7, "in_flight": 3, "connections": 9, "events": {"written": 2, "queued": 6}}
    (tmp_path / f"bastion-metrics-{os.getpid()}.json").write_text(json.dumps(live))
    (tmp_path / f"bastion-metrics-{dead_pid}.json").write_text(json.dumps(dead))
    workers = WorkerMetrics(str(tmp_path))
    total = merge(workers.snapshots())
    assert total["requests"] == 12 and total["in_flight"] == 2 and "connections" not in total
    assert total["events"] == {"written": 3, "queued": 4}
    assert not (tmp_path / f"bastion-metrics-{dead_pid}.json").exists()
    assert merge(workers.snapshots())["requests"] == 12  # the sums never go down
