"""Monitoring wired into a real gateway: /metrics on the admin listener, events reaching an export sink,
the retention purge, ``bastion events --follow`` and the Monitor API's new filters.

Waits poll an observable effect with a deadline; nothing sleeps to make time pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bastion.events.writer import EventWriter, new_event
from bastion.store.database import open_database
from bastion.store.schema import events_table

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text, request
from .test_admin import admin, events_url


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the client sorts labels by name
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else r"(?:\{\})?") + r" (\S+)"
    m = re.search("^" + pattern + "$", text, re.M)
    return float(m.group(1)) if m else 0.0


class TestMetrics:
    def test_counters_histogram_and_denies(self, gateway: GatewayThread) -> None:
        for i in range(5):
            assert request(gateway.port, "GET", f"/v1/orders/{i}")[0] == 200
        for _ in range(3):
            assert request(gateway.port, "GET", "/nowhere")[0] == 404
        status, headers, body = admin(gateway, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert metric(text, "bastion_requests_total") == 8
        assert metric(text, "bastion_request_duration_seconds_count") == 8
        assert metric(text, "bastion_request_duration_seconds_bucket", le="+Inf") == 8
        assert metric(text, "bastion_denied_requests_total", status="404", code="route_not_found") == 3
        routes = [line for line in text.splitlines() if line.startswith("bastion_route_requests_total{")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in routes) == 5
        assert "bastion_event_queue_depth" in text and "bastion_events_written_total" in text

    def test_metrics_need_the_admin_token_and_are_not_admin_actions(self, gateway: GatewayThread) -> None:
        assert admin(gateway, "/metrics", token=None)[0] == 401
        assert admin(gateway, "/metrics", token="wrong" * 8)[0] == 401
        for _ in range(3):
            assert admin(gateway, "/metrics")[0] == 200
        assert admin(gateway, "/admin/v1/status")[0] == 200  # an admin action, recorded

        def paths() -> list[str]:
            _, _, body = admin(gateway, events_url(type="admin.action", page_size=100))
            found = [e["path"] for e in body["events"]]
            return found if "/admin/v1/status" in found else []

        assert "/metrics" not in wait_for(paths, what="the admin action on /admin/v1/status")


class TestFilters:
    def test_actor_resource_and_min_severity(self, gateway: GatewayThread) -> None:
        writer = gateway.running.writer  # type: ignore[union-attr]
        now = time.time()
        for actor, resource, severity in (
            ("consumer:shop/key:k1", "api_key:k1", "notice"),
            ("consumer:shop/key:k2", "api_key:k2", "warning"),
            ("consumer:shopping/key:k3", "api_key:k3", "error"),
            ("admin:token", "consumer:shop", "critical"),
        ):
            writer.emit(new_event("test.filter", now=now, actor=actor, resource=resource, severity=severity))
        writer.flush()

        def ids(**params: Any) -> list[str]:
            status, _, body = admin(gateway, events_url(type="test.", **params))
            assert status == 200, body
            return sorted(e["actor"] for e in body["events"])

        # consumer:shop matches its keys, not consumer:shopping
        assert ids(actor="consumer:shop") == ["consumer:shop/key:k1", "consumer:shop/key:k2"]
        assert ids(actor="consumer:shop/key:k2") == ["consumer:shop/key:k2"]
        assert ids(resource="consumer:shop") == ["admin:token"]
        assert ids(min_severity="error") == ["admin:token", "consumer:shopping/key:k3"]
        status, _, body = admin(gateway, events_url(min_severity="loud"))
        assert status == 400 and "min_severity" in body["detail"]
        _, _, body = admin(gateway, events_url(type="test.", resource="api_key:k1"))
        [event] = body["events"]
        assert event["resource"] == "api_key:k1" and "hash" not in event and "chain" not in event


def sink_config(upstream: EchoUpstream, tmp_path: Path, extra: str) -> GatewayThread:
    return GatewayThread(load_text(config_text(upstream.port, tmp_path / "bastion.db", extra=extra)))


class TestWiring:
    def test_denials_reach_a_jsonl_sink(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        out = tmp_path / "events.jsonl"
        extra = f"events:\n  sinks:\n    - {{type: jsonl, path: {out}, types: [request.]}}\n"
        with sink_config(upstream, tmp_path, extra) as gw:
            _, headers, _ = request(gw.port, "GET", "/nowhere")
            rid = headers["x-request-id"]

            def found() -> list[dict[str, Any]]:
                if not out.exists():
                    return []
                docs = [json.loads(line) for line in out.read_text().splitlines() if line]
                return [d for d in docs if d.get("request_id") == rid]

            [doc] = wait_for(found, what="the denial in the sink's file")
            assert doc["type"] == "request.denied" and doc["reason"] == "route_not_found"
            _, _, body = admin(gw, "/admin/v1/status")
            assert body["sinks"]["jsonl-1"]["delivered"] >= 1
        docs = [json.loads(line) for line in out.read_text().splitlines() if line]
        assert all(d["type"].startswith("request.") for d in docs)  # gateway.started etc. filtered out

    def test_the_gateway_purges_old_events_and_the_chain_still_verifies(
        self, upstream: EchoUpstream, tmp_path: Path
    ) -> None:
        from bastion.events.chain import verify

        db = tmp_path / "bastion.db"
        engine = open_database(f"sqlite:///{db}")
        writer = EventWriter(engine, flush_interval=60.0)
        now = time.time()
        for i in range(5):
            writer.emit(new_event("request.denied", now=now - 3 * 86400 + i, reason="ip_denied"))
        writer.emit(new_event("request.denied", now=now - 60, reason="ip_denied"))
        writer.close()
        with sink_config(upstream, tmp_path, "events:\n  retention: 2d\n"):

            def purged() -> list[Any]:
                with engine.connect() as conn:
                    return conn.execute(
                        select(events_table.c.data).where(events_table.c.type == "events.purged")
                    ).all()

            [(data,)] = wait_for(purged, what="the purge at start-up")
            assert json.loads(data)["count"] == 5
        result = verify(engine)
        assert result.ok, result.problems
        engine.dispose()


class TestFollow:
    def test_follow_prints_new_events_once(self, tmp_path: Path) -> None:
        db = tmp_path / "bastion.db"
        cfg = tmp_path / "bastion.yaml"
        cfg.write_text(config_text(9, db), encoding="utf-8")
        engine = open_database(f"sqlite:///{db}")
        writer = EventWriter(engine, flush_interval=60.0)
        writer.emit(new_event("request.denied", reason="old_news"))
        writer.flush()
        env = {**os.environ, "BASTION_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONUNBUFFERED": "1"}
        env.pop("BASTION_CONFIG", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bastion",
                "events",
                "-c",
                str(cfg),
                "--follow",
                "--json",
                "--type",
                "auth.",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            # It says when it has read the log once: what comes after is news.
            ready = proc.stderr.readline()  # type: ignore[union-attr]
            assert b"following" in ready, ready
            lines: list[dict[str, Any]] = []
            sent = []
            for i in range(3):
                event = new_event("auth.failed", reason="auth_invalid", source_ip=f"198.51.100.{i}")
                sent.append(event.id)
                writer.emit(event)
                writer.emit(new_event("request.denied", reason="not_followed"))
                writer.flush()
            os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
            buf = b""

            def read() -> bool:
                nonlocal buf
                chunk = proc.stdout.read() or b""  # type: ignore[union-attr]
                buf += chunk
                lines[:] = [json.loads(x) for x in buf.decode().splitlines() if x.strip()]
                return len(lines) >= 3

            wait_for(read, timeout=20, what="three followed events")
            assert [e["id"] for e in lines] == sent
            assert all(e["type"] == "auth.failed" for e in lines)
        finally:
            proc.terminate()
            proc.communicate(timeout=10)  # reaps it and closes its pipes
            writer.close()
            engine.dispose()


@pytest.fixture
def gateway(upstream: EchoUpstream, tmp_path: Path) -> Any:
    with GatewayThread(load_text(config_text(upstream.port, tmp_path / "bastion.db"))) as gw:
        yield gw


class TestAlertsThroughTheGateway:
    def test_credential_stuffing_through_real_requests_fires_once_and_is_delivered(
        self, tmp_path: Path
    ) -> None:
        """Ten made-up keys from one address: the gateway's auth.failed events reach the alert engine, which
        fires one alert.fired (stored with its evidence) and posts it, signed, to the webhook channel."""
        from bastion.core.webhook_signing import sign_standard_webhook, standard_webhooks_secret

        from ._identity import identity_stack, random_key
        from .test_alerts import Receiver

        routes = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: [api_key]
"""
        with Receiver() as receiver:
            extra = f"""
identity:
  pepper: ${{env:BASTION_PEPPER}}
  lockout: {{failures: 10000, within: 5m, block_for: 5m}}
alerts:
  channels:
    - {{name: secops, type: webhook, url: "{receiver.url}", secret: ${{env:ALERT_SECRET}}}}
  rules:
    - {{name: stuffing, builtin: credential_stuffing, channels: [secops]}}
"""
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            with identity_stack(tmp_path, routes, extra, env={"ALERT_SECRET": secret}) as stack:
                for _ in range(12):
                    status, _, _ = request(
                        stack.gw.port, "GET", "/v1/orders/1", headers={"X-API-Key": random_key()}
                    )
                    assert status == 401
                assert receiver.got.wait(15), "the alert was not delivered"

                def fired() -> list[Any]:
                    with stack.engine.connect() as conn:
                        return conn.execute(
                            select(events_table.c.data, events_table.c.resource).where(
                                events_table.c.type == "alert.fired"
                            )
                        ).all()

                [(data, resource)] = wait_for(fired, what="the alert.fired event")
            doc = json.loads(data)
            assert resource == "alert:stuffing"
            assert doc["rule"] == "stuffing" and doc["detector"] == "credential_stuffing"
            assert doc["group"] in ("ip:127.0.0.1", "net:127.0.0.0/24")
            assert doc["evidence"]["distinct_identities"] >= 10 and len(doc["evidence"]["samples"]) >= 1
            [(headers, body)] = receiver.received  # once: the two later failures are inside the cooldown
            alert = json.loads(body)["alert"]
            assert alert["type"] == "alert.fired" and alert["resource"] == "alert:stuffing"
            key = standard_webhooks_secret(secret)
            expected = sign_standard_webhook(key, headers["webhook-id"], headers["webhook-timestamp"], body)
            assert headers["webhook-signature"] == expected


def test_follow_pages_through_a_flood(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """More new events than one page between two polls: every one is printed, once."""
    from bastion.adapters.cli_events import _follow
    from bastion.events.query import EventFilter

    engine = open_database(f"sqlite:///{tmp_path / 'f.db'}")
    writer = EventWriter(engine, flush_interval=60.0)
    writer.emit(new_event("auth.failed", reason="history"))
    writer.flush()
    sent: list[str] = []

    def flood() -> None:
        for i in range(25):
            event = new_event("auth.failed", reason="flood", source_ip=f"198.51.100.{i}")
            sent.append(event.id)
            writer.emit(event)
        writer.flush()

    _follow(engine, EventFilter(type="auth."), True, poll=0, page=10, polls=2, on_ready=flood)
    printed = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert printed == sent
    writer.close()
    engine.dispose()
