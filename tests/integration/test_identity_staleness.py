"""The identity store unreachable: requests keep authenticating from the in-memory snapshot for
``identity.max_staleness`` after the store last answered (revocations already received still apply), then
authentication fails closed with 503 ``identity_unavailable`` until the store answers again. Driven through
``Gateway.admit`` with an injected clock; the store is "unreachable" by losing the table it is polled on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
from sqlalchemy import text

from bastion.config import load_config_text
from bastion.proxy.server import NO_BODY
from bastion.runtime.gateway import Forward, Gateway, Respond, build_gateway
from bastion.store.database import open_database

PEPPER = "staleness-pepper-0123456789abcdef"  # a test fixture, not a secret


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Gateway, Clock, str, str]]:
    text_ = f"""
storage: {{database: "sqlite:///{tmp_path / "b.db"}"}}
identity: {{pepper: "{PEPPER}", max_staleness: 5m}}
services:
  - name: s
    upstream: http://127.0.0.1:9
    routes:
      - {{path: /v1/x, methods: [GET], auth: [api_key]}}
"""
    loaded = load_config_text(text_, source="t.yaml")
    engine = open_database(loaded.settings.storage.database)
    clock = Clock()
    gateway = build_gateway(loaded, engine=engine, clock=clock)
    identity = gateway.identity
    assert identity is not None
    identity.start()
    admin = identity.admin()
    admin.clock = clock
    admin.create_consumer("shop", [], actor="test")
    _, key = admin.create_key("shop", actor="test")
    _, revoked = admin.create_key("shop", actor="test")
    admin.revoke_key(revoked[4:16], actor="test")
    try:
        yield gateway, clock, key, revoked
    finally:
        identity.close()
        engine.dispose()


def call(gateway: Gateway, key: str) -> Forward | Respond:
    headers = [("host", "gw"), ("x-api-key", key)]
    return asyncio.run(gateway.admit("GET", "/v1/x", "", headers, ip_address("127.0.0.1"), NO_BODY))


def test_snapshot_serves_until_max_staleness_then_fails_closed(
    setup: tuple[Gateway, Clock, str, str],
) -> None:
    gateway, clock, key, revoked = setup
    identity = gateway.identity
    assert identity is not None and identity.sync is not None
    assert isinstance(call(gateway, key), Forward)
    with identity.engine.begin() as conn:  # type: ignore[union-attr]
        conn.execute(text("ALTER TABLE identity_state RENAME TO identity_state_away"))
    with pytest.raises(Exception):  # noqa: B017 - the store is away: a refresh fails
        identity.sync.load()
    clock.now += 299  # within max_staleness: keys keep working from memory, revocations still apply
    assert isinstance(call(gateway, key), Forward)
    refused = call(gateway, revoked)
    assert isinstance(refused, Respond) and refused.status == 401
    clock.now += 2  # past it: fail closed
    unavailable = call(gateway, key)
    assert isinstance(unavailable, Respond) and (unavailable.status, unavailable.code) == (
        503,
        "identity_unavailable",
    )
    with identity.engine.begin() as conn:  # type: ignore[union-attr]
        conn.execute(text("ALTER TABLE identity_state_away RENAME TO identity_state"))
    identity.sync.load()  # the store answers again
    assert isinstance(call(gateway, key), Forward)
