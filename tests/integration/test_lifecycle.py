"""``bastion serve`` as a real process: graceful shutdown, events flushed on the way out, start-up
errors that say where the config is wrong, and ``--workers`` sharing one port.

Events are read straight from the SQLite file with the stdlib ``sqlite3`` module, as an operator
would, after (or while) the process runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import EchoUpstream, config_text, request

from ._dataplane import GatewayProcess, RawClient, free_port, get, listen_on, wait_until

# A long flush interval: whatever is in the database after SIGTERM was written by the shutdown flush.
LAZY_EVENTS = "events: {flush_interval: 60s, batch_size: 1000}"


def events(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
    conn.close()
    for row in rows:
        row["data"] = json.loads(row["data"])
    return rows


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        # A connect racing the listener's close can be reset rather than refused: not accepted either way.
        return True


@pytest.fixture
def upstream_for_process() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


def write_config(tmp_path: Path, upstream_port: int, port: int, **kwargs: Any) -> tuple[Path, Path]:
    db = tmp_path / "bastion.db"
    cfg = tmp_path / "bastion.yaml"
    cfg.write_text(listen_on(config_text(upstream_port, db, **kwargs), port))
    return cfg, db


class _Call(threading.Thread):
    """An HTTP request on a thread, so the test can act while it is in flight."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.result: tuple[int, dict[str, str], bytes] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = request(self.port, "GET", self.path, timeout=30)
        except BaseException as exc:
            self.error = exc


# -- graceful shutdown ----------------------------------------------------------------------------------


class TestGracefulShutdown:
    def test_sigterm_drains_the_in_flight_request_and_flushes_events(
        self, upstream_for_process: EchoUpstream, tmp_path: Path
    ) -> None:
        upstream = upstream_for_process
        port = free_port()
        cfg, db = write_config(tmp_path, upstream.port, port, admin=False, extra=LAZY_EVENTS)
        with GatewayProcess(cfg, port) as gw:
            # Deny events, emitted just before SIGTERM: still queued (the writer waits 60 s).
            s404, h404, _ = request(port, "GET", "/no/such/route")
            s405, h405, _ = request(port, "DELETE", "/v1/orders/1")
            assert (s404, s405) == (404, 405)
            assert events(db) == [], "events were written before shutdown; the flush is not what we test"

            # An idle keep-alive connection, and a request that will still be running at SIGTERM.
            idle = RawClient(port)
            try:
                idle.send(get("/v1/orders/1"))
                assert idle.read_response().status == 200
                slow = _Call(port, "/slow/1.5")
                slow.start()
                wait_until(
                    lambda: any(r[1] == "/slow/1.5" for r in upstream.requests),
                    10,
                    "the slow request to reach the upstream",
                )

                sent_at = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

                # The listener closes at once: new connections are refused while the request drains.
                wait_until(lambda: refused(port), 5, "new connections to be refused")
                assert gw.proc.poll() is None  # type: ignore[union-attr]
                assert slow.is_alive(), "the in-flight request finished before the listener closed"
                # Idle connections are closed rather than kept until the end.
                assert idle.peer_closed_within(5)
            finally:
                idle.close()

            code = gw.wait_exit(20)
            elapsed = time.monotonic() - sent_at
            slow.join(10)

        assert code == 0, gw.stderr.decode(errors="replace")
        assert elapsed < 10
        assert slow.error is None, slow.error
        assert slow.result is not None
        status, headers, body = slow.result
        assert status == 200
        assert headers.get("connection") == "close"
        assert json.loads(body)["path"] == "/slow/1.5"

        rows = events(db)
        types = [r["type"] for r in rows]
        assert "gateway.started" in types
        assert "gateway.stopped" in types
        assert types.index("gateway.stopped") > types.index("gateway.started")
        denied = {r["request_id"]: r for r in rows if r["type"] == "request.denied"}
        assert denied[h404["x-request-id"]]["reason"] == "route_not_found"
        assert denied[h404["x-request-id"]]["path"] == "/no/such/route"
        assert denied[h405["x-request-id"]]["reason"] == "method_not_allowed"
        assert denied[h405["x-request-id"]]["method"] == "DELETE"

    def test_shutdown_grace_period_bounds_a_request_that_never_ends(
        self, upstream_for_process: EchoUpstream, tmp_path: Path
    ) -> None:
        upstream = upstream_for_process
        port = free_port()
        extra = "timeouts: {shutdown: 0.5s}"
        cfg, _ = write_config(tmp_path, upstream.port, port, admin=False, extra=extra)
        with GatewayProcess(cfg, port) as gw:
            slow = _Call(port, "/slow/6")
            slow.start()
            wait_until(
                lambda: any(r[1] == "/slow/6" for r in upstream.requests),
                10,
                "the slow request to reach the upstream",
            )
            sent_at = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            code = gw.wait_exit(20)
            elapsed = time.monotonic() - sent_at
            slow.join(10)
        assert code == 0, gw.stderr.decode(errors="replace")
        # Well before the upstream would have answered: the grace period, not the request, decides.
        assert elapsed < 5, f"exit took {elapsed:.1f}s with a 0.5s shutdown grace period"
        assert slow.result is None
        assert isinstance(slow.error, ConnectionError | OSError)


# -- start-up errors ------------------------------------------------------------------------------------


def _serve_expecting_failure(cfg: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", "serve", "-c", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class TestStartupErrors:
    def test_a_typo_key_names_file_line_and_field(self, tmp_path: Path) -> None:
        routes = """
      - path: /v1/orders
        methods: [GET]
        auth: none
        max_bodee: 1KiB
"""
        text = config_text(9, tmp_path / "bastion.db", routes=routes, admin=False)
        cfg = tmp_path / "bastion.yaml"
        cfg.write_text(text)
        line = next(i for i, ln in enumerate(text.splitlines(), 1) if "max_bodee" in ln)
        proc = _serve_expecting_failure(cfg, dict(os.environ))
        assert proc.returncode == 1
        assert f"{cfg}:{line}" in proc.stderr
        assert "services[0].routes[0].max_bodee" in proc.stderr
        assert "unknown key" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "bastion.db").exists()  # nothing was started

    def test_a_missing_env_reference_names_the_variable(self, tmp_path: Path) -> None:
        text = config_text(9, tmp_path / "bastion.db")  # admin.token: ${env:BASTION_ADMIN_TOKEN}
        cfg = tmp_path / "bastion.yaml"
        cfg.write_text(text)
        line = next(i for i, ln in enumerate(text.splitlines(), 1) if "${env:BASTION_ADMIN_TOKEN}" in ln)
        env = {k: v for k, v in os.environ.items() if k != "BASTION_ADMIN_TOKEN"}
        proc = _serve_expecting_failure(cfg, env)
        assert proc.returncode == 1
        assert "BASTION_ADMIN_TOKEN" in proc.stderr
        assert "not set" in proc.stderr
        assert f"{cfg}:{line}" in proc.stderr
        assert "admin.token" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_a_port_in_use_is_a_readable_error(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            cfg, _ = write_config(tmp_path, 9, port, admin=False)
            proc = _serve_expecting_failure(cfg, dict(os.environ))
        assert proc.returncode == 1
        assert "bastion: cannot start" in proc.stderr
        assert "Traceback" not in proc.stderr


# -- several workers ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                out.extend(int(p) for p in fh.read().split())
        except FileNotFoundError:
            continue
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def _established_inodes(port: int) -> set[str]:
    """Inodes of established TCP sockets whose local port is ``port`` (the gateway's side)."""
    inodes = set()
    with open("/proc/net/tcp", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                inodes.add(inode)
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:[") : -1])
    return out


def _requests_metric(admin_port: int) -> float:
    from tests.support import ADMIN_TOKEN

    status, _, body = request(
        admin_port, "GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert status == 200, body
    line = next(ln for ln in body.decode().splitlines() if ln.startswith("bastion_requests_total "))
    return float(line.split()[1])


class TestWorkers:
    def test_two_workers_share_the_port_and_stop_cleanly(
        self, upstream_for_process: EchoUpstream, tmp_path: Path
    ) -> None:
        upstream = upstream_for_process
        port, admin_port = free_port(), free_port()
        cfg, db = write_config(tmp_path, upstream.port, port)  # with the admin listener (parent process)
        cfg.write_text(
            cfg.read_text().replace(
                "admin:\n  listen: 127.0.0.1:0", f"admin:\n  listen: 127.0.0.1:{admin_port}"
            )
        )
        with GatewayProcess(cfg, port, args=("--workers", "2")) as gw:
            wait_until(
                lambda: len([c for c in _children(gw.pid) if "spawn_main" in _cmdline(c)]) == 2,
                20,
                "two worker processes",
            )
            workers = [c for c in _children(gw.pid) if "spawn_main" in _cmdline(c)]
            # Both workers must be listening before we can expect both to get connections.
            wait_until(
                lambda: (
                    sum(1 for r in events(db) if r["type"] == "gateway.started") >= 2
                    if db.exists()
                    else False
                ),
                20,
                "both workers to report gateway.started",
            )
            clients = [RawClient(port) for _ in range(16)]
            try:
                for i, c in enumerate(clients):
                    c.send(get(f"/v1/orders/w{i}"))
                for i, c in enumerate(clients):
                    resp = c.read_response()
                    assert resp.status == 200
                    assert json.loads(resp.body)["path"] == f"/v1/orders/w{i}"
                # Each kept-alive connection belongs to one worker: both must hold some.
                established = _established_inodes(port)
                held = {w: len(_socket_inodes(w) & established) for w in workers}
                assert sum(held.values()) == 16, held
                assert all(n >= 1 for n in held.values()), f"one worker served nothing: {held}"
                # /metrics on the parent's admin listener adds up both workers' counters.
                wait_until(lambda: _requests_metric(admin_port) >= 16, 10, "/metrics to count both workers")
            finally:
                for c in clients:
                    c.close()
            code = gw.terminate(30)
        assert code == 0, gw.stderr.decode(errors="replace")
        assert "a worker exited" not in gw.stderr.decode(errors="replace")
        for w in workers:
            assert not os.path.exists(f"/proc/{w}"), f"worker {w} outlived the parent"
        rows = events(db)
        started = {r["data"]["pid"] for r in rows if r["type"] == "gateway.started"}
        stopped = {r["data"]["pid"] for r in rows if r["type"] == "gateway.stopped"}
        assert set(workers) <= started
        assert set(workers) <= stopped  # each worker flushed its own events on the way out


class TestWorkersWithoutAdmin:
    def test_the_parent_purges_old_events_without_an_admin_listener(
        self, upstream_for_process: EchoUpstream, tmp_path: Path
    ) -> None:
        from bastion.events.writer import EventWriter, new_event
        from bastion.store.database import open_database

        port = free_port()
        cfg, db = write_config(
            tmp_path, upstream_for_process.port, port, admin=False, extra="events:\n  retention: 2d\n"
        )
        engine = open_database(f"sqlite:///{db}")
        writer = EventWriter(engine, flush_interval=60.0)
        for i in range(3):
            writer.emit(new_event("request.denied", now=time.time() - 5 * 86400 + i))
        writer.close()
        engine.dispose()
        with GatewayProcess(cfg, port, args=("--workers", "2")) as gw:
            wait_until(
                lambda: any(r["type"] == "events.purged" for r in events(db)), 20, "the parent's purge"
            )
            code = gw.terminate(30)
        assert code == 0, gw.stderr.decode(errors="replace")
        [purged] = [r for r in events(db) if r["type"] == "events.purged"]
        assert purged["data"]["count"] == 3


class TestSigkill:
    def test_sigkill_loses_at_most_the_last_flush_interval_of_events(
        self, upstream_for_process: EchoUpstream, tmp_path: Path
    ) -> None:
        """The writer flushes every ``events.flush_interval`` (default 200 ms): a gateway killed with SIGKILL
        loses at most the events of that last interval (plus a write in progress). Requests are answered
        over ~1.5 s, then the process is killed; every event of a request answered more than the interval
        (with room for one database write on a slow machine) before the kill is in the database."""
        port = free_port()
        cfg, db = write_config(tmp_path, upstream_for_process.port, port, admin=False)
        answered: list[tuple[float, str]] = []
        with GatewayProcess(cfg, port) as gw:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                status, headers, _ = request(port, "GET", "/no/such/route")
                assert status == 404
                answered.append((time.monotonic(), headers["x-request-id"]))
            killed_at = time.monotonic()
            gw.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            gw.wait_exit(10)
        stored = {e["request_id"] for e in events(db) if e["type"] == "request.denied"}
        bound = 0.2 + 0.4  # flush_interval, and one batch write on a slow machine
        old = [rid for at, rid in answered if at < killed_at - bound]
        assert len(old) > 10, "too few requests to say anything"
        missing = [rid for rid in old if rid not in stored]
        assert missing == [], f"{len(missing)} events older than {bound}s before SIGKILL were lost"
