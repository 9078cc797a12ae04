"""Two gateway instances with the same config on one PostgreSQL and one Redis: a limit of N/minute admits
exactly N across both under concurrent load, and a key revoked through one instance's admin API is refused
by the other within a second."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.adapters.cli import main
from bastion.identity.manage import IdentityAdmin
from bastion.store.database import open_database

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text, request
from ._identity import ENV

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
N = 60
ROUTES = f"""
      - path: /v1/orders/{{id}}
        methods: [GET]
        auth: [api_key]
        rate_limit: [{N}/minute]
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, GatewayThread, str]]:
    import psycopg

    name = "bastion_test_" + secrets.token_hex(5)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    prefix = "test-" + secrets.token_hex(6)
    tmp: Path = tmp_path_factory.mktemp("two")
    try:
        with EchoUpstream() as upstream:
            text = config_text(
                upstream.port,
                tmp / "unused.db",
                routes=ROUTES,
                extra="""
identity:
  pepper: ${env:BASTION_PEPPER}
  refresh_interval: 200ms
""",
            )
            text = text.replace(f"database: sqlite:///{tmp / 'unused.db'}", f"database: {url}")
            text = text.replace(
                "state: memory://", f"state: redis://127.0.0.1:6379/0\n  state_prefix: {prefix}"
            )
            cfg = tmp / "bastion.yaml"
            cfg.write_text(text)
            result = CliRunner().invoke(
                main, ["db", "upgrade", "-c", str(cfg)], env={**ENV, "BASTION_ADMIN_TOKEN": ADMIN_TOKEN}
            )
            assert result.exit_code == 0, result.output
            loaded = load_text(text, env=ENV)
            with GatewayThread(loaded) as a, GatewayThread(loaded) as b:
                yield a, b, url
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def admin_for(url: str) -> Iterator[IdentityAdmin]:
    """Identity changes straight to the shared store (as `bastion keys …` would make them)."""
    from bastion.identity.credentials import Peppers

    engine = open_database(url.replace("postgresql://", "postgresql+psycopg://"), migrate_schema=False)
    try:
        yield IdentityAdmin(
            engine, Peppers(ENV["BASTION_PEPPER"]), max_key_ttl=86400.0, emit=lambda *a, **k: None
        )
    finally:
        engine.dispose()


def test_a_shared_limit_admits_exactly_n_across_instances(
    pair: tuple[GatewayThread, GatewayThread, str],
) -> None:
    a, b, url = pair
    with admin_for(url) as admin:
        admin.create_consumer("shop", [], actor="test")
        _, key = admin.create_key("shop", actor="test")
    deadline = time.monotonic() + 5
    # Wait until both instances know the key (their snapshots reload within refresh_interval).
    for gw in (a, b):
        while request(gw.port, "GET", "/v1/orders/warm", headers={"X-API-Key": key})[0] == 401:
            assert time.monotonic() < deadline, "the key never reached an instance"
            threading.Event().wait(0.05)
    results: list[int] = []
    lock = threading.Lock()

    def load(port: int) -> None:
        for i in range(40):
            status = request(port, "GET", f"/v1/orders/{i}", headers={"X-API-Key": key})[0]
            with lock:
                results.append(status)

    threads = [threading.Thread(target=load, args=(gw.port,)) for gw in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) <= {200, 429}, set(results)
    # Two warm-up requests were admitted too: N in the minute, across both instances, exactly.
    assert results.count(200) == N - 2, results.count(200)


def test_a_revocation_reaches_the_other_instance_within_a_second(
    pair: tuple[GatewayThread, GatewayThread, str],
) -> None:
    a, b, url = pair
    with admin_for(url) as admin:
        admin.create_consumer("revoked-shop", [], actor="test")
        out, key = admin.create_key("revoked-shop", actor="test")
    deadline = time.monotonic() + 5
    while request(b.port, "GET", "/v1/orders/1", headers={"X-API-Key": key})[0] != 200:
        assert time.monotonic() < deadline
        threading.Event().wait(0.05)
    status, _, body = request(
        a.admin_port,
        "POST",
        f"/admin/v1/keys/{out['id']}/revoke",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status == 200, body
    revoked_at = time.monotonic()
    while request(b.port, "GET", "/v1/orders/2", headers={"X-API-Key": key})[0] != 401:
        assert time.monotonic() - revoked_at < 1.0, "instance b still accepted the revoked key after 1 s"
        threading.Event().wait(0.02)
