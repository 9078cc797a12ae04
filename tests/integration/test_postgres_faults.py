"""PostgreSQL going away mid-load and coming back, two ways: a private PostgreSQL server the test stops
(``pg_ctl stop -m immediate``) and starts again, and the shared server reached through a TCP forwarder the
test cuts (the network, not the server, fails). Either way requests keep authenticating from memory, no
request answers 500 or hangs, every event of the outage is spooled and written once the database answers
again — none lost, none twice."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bastion.adapters.cli import main
from bastion.store.schema import events_table

from ._identity import Stack, identity_stack, wait_for
from ._pgserver import PrivatePostgres
from ._tcpproxy import TcpProxy

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ROUTES = """
      - path: /v1/orders/{id}
        methods: [GET]
        auth: [api_key]
"""
EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
  refresh_interval: 200ms
  lockout: {failures: 10000, within: 5m, block_for: 5m}
"""


class _Outage(Protocol):
    def cut(self) -> None: ...
    def restore(self) -> None: ...


class _ServerStop:
    """The private server itself stops and starts again."""

    def __init__(self, server: PrivatePostgres) -> None:
        self.server = server

    def cut(self) -> None:
        self.server.stop()

    def restore(self) -> None:
        self.server.start()
        self.server.wait_accepting()


def _upgrade(tmp_path: Path, url: str) -> None:
    cfg = tmp_path / "db.yaml"
    cfg.write_text(
        f"storage: {{database: '{url}'}}\nservices:\n  - name: s\n    upstream: http://127.0.0.1:9\n"
        "    routes:\n      - {path: /x, methods: [GET], auth: none}\n"
    )
    assert CliRunner().invoke(main, ["db", "upgrade", "-c", str(cfg)]).exit_code == 0


@pytest.fixture(params=["server-stopped", "network-cut"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, _Outage]]:
    import psycopg

    if request.param == "server-stopped":
        server = PrivatePostgres()
        try:
            server.start()
            _upgrade(tmp_path, server.url)
            with identity_stack(tmp_path / "gw", ROUTES, EXTRA, database=server.url) as s:
                yield s, _ServerStop(server)
        finally:
            server.close()
        return
    name = "bastion_test_" + secrets.token_hex(5)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    proxy = TcpProxy(5432)
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"
    try:
        _upgrade(tmp_path, url)
        with identity_stack(tmp_path / "gw", ROUTES, EXTRA, database=url) as s:
            yield s, proxy
    finally:
        proxy.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_requests_and_events_survive_a_database_outage(outage: tuple[Stack, _Outage]) -> None:
    stack, proxy = outage
    admin = stack.admin()
    admin.create_consumer("shop", [], actor="test")
    _, key = admin.create_key("shop", actor="test")
    assert stack.get("/v1/orders/0", {"X-API-Key": key}).status == 200

    statuses: list[int] = []
    denied_ids: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ok = stack.get(f"/v1/orders/{i}", {"X-API-Key": key})
            bad = stack.get(f"/v1/orders/{i}", {"X-API-Key": "bst_wrong"})
            statuses.extend([ok.status, bad.status])
            denied_ids.append(bad.headers["x-request-id"])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        threading.Event().wait(0.3)
        proxy.cut()  # PostgreSQL unreachable, mid-load
        wait_for(
            lambda: stack.identity.sync is not None and stack.identity.sync.failures > 0,
            what="a failed refresh",
        )
        threading.Event().wait(1.0)  # the outage lasts a while: load keeps running against the gateway
        proxy.restore()
        threading.Event().wait(0.3)
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert 500 not in statuses and set(statuses) <= {200, 401}, set(statuses)
    assert statuses.count(200) == statuses.count(401)  # the key worked from memory throughout
    writer = stack.gw.running.writer  # type: ignore[union-attr]
    assert writer is not None and writer.dead_lettered > 0, "the outage spooled no events"

    def all_written() -> bool:
        with stack.engine.connect() as conn:
            stored = {
                r.request_id
                for r in conn.execute(
                    select(events_table.c.request_id).where(events_table.c.type == "auth.failed")
                )
            }
        return set(denied_ids) <= stored

    wait_for(all_written, timeout=20, what="every auth.failed event of the outage")
    with stack.engine.connect() as conn:
        total = conn.execute(
            select(func.count()).select_from(events_table).where(events_table.c.type == "auth.failed")
        ).scalar_one()
        distinct = conn.execute(
            select(func.count(func.distinct(events_table.c.id))).where(events_table.c.type == "auth.failed")
        ).scalar_one()
    assert total == distinct == len(denied_ids)  # none lost, none twice
