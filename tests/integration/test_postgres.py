"""The store on a real PostgreSQL (127.0.0.1:5432; ``bash .ci/run`` starts it): every migration applies,
and a gateway on it authenticates, revokes, issues OAuth2 tokens, registers PKCV keys, applies per-consumer
quotas and writes and pages its events — the same behaviour as on SQLite. Each module gets a database of
its own, dropped afterwards."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, select

from bastion.adapters.cli import main
from bastion.config.models import StorageSettings
from bastion.store.database import SchemaError, open_database
from bastion.store.schema import events_table

from ._identity import FORM, Stack, identity_stack, wait_for

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    import psycopg

    name = "bastion_test_" + secrets.token_hex(5)
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432 (bash .ci/run starts it): {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


ROUTES = """
      - path: /v1/orders/{id}
        methods: [GET]
        auth: [api_key, oauth2]
        scopes: [orders:read]
"""
EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
  refresh_interval: 100ms
oauth2:
  issuer: http://127.0.0.1:9
consumers_defaults: {quota: 1000/day}
"""


@pytest.fixture(scope="module")
def stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("pg")
    # PostgreSQL is upgraded deliberately, never by a starting gateway: `bastion db upgrade` first.
    cfg = tmp / "db.yaml"
    cfg.write_text(f"storage: {{database: '{pg_url}'}}\n" + MINIMAL_SERVICES)
    result = CliRunner().invoke(main, ["db", "upgrade", "-c", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with identity_stack(tmp, ROUTES, EXTRA, database=pg_url) as s:
        yield s


MINIMAL_SERVICES = """\
services:
  - name: s
    upstream: http://127.0.0.1:9
    routes:
      - {path: /x, methods: [GET], auth: none}
"""


def test_a_gateway_refuses_a_schema_it_does_not_know(tmp_path: Path) -> None:
    import psycopg

    name = "bastion_test_" + secrets.token_hex(5)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = StorageSettings(database=f"postgresql://postgres@127.0.0.1:5432/{name}").database
    cfg = tmp_path / "db.yaml"
    cfg.write_text(f"storage: {{database: '{url}'}}\n" + MINIMAL_SERVICES)
    try:
        with pytest.raises(SchemaError, match="bastion db upgrade"):
            open_database(url)  # empty: serve refuses and says what to run
        status = CliRunner().invoke(main, ["db", "status", "-c", str(cfg), "--json"], catch_exceptions=False)
        assert status.exit_code == 0 and json.loads(status.stdout)["current"] is None
        upgraded = CliRunner().invoke(main, ["db", "upgrade", "-c", str(cfg)], catch_exceptions=False)
        assert upgraded.exit_code == 0 and "->" in upgraded.stdout
        open_database(url).dispose()  # at head: fine
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={name}", autocommit=True) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
        with pytest.raises(SchemaError, match="does not know"):
            open_database(url)
        refused = CliRunner().invoke(main, ["db", "upgrade", "-c", str(cfg)], catch_exceptions=False)
        assert refused.exit_code == 1 and "newer than this Bastion" in refused.stderr
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_url_forms_and_every_table(pg_url: str, stack: Stack) -> None:
    assert StorageSettings(database=pg_url).database.startswith("postgresql+psycopg://")
    assert StorageSettings(database=pg_url.replace("postgresql://", "postgres://")).database.startswith(
        "postgresql+psycopg://"
    )
    engine = open_database(StorageSettings(database=pg_url).database, migrate_schema=False)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {
        "events",
        "consumers",
        "api_keys",
        "oauth_clients",
        "public_keys",
        "signing_keys",
        "revoked_tokens",
        "identity_state",
        "alembic_version",
    } <= tables


def test_keys_revocation_and_events(stack: Stack) -> None:
    admin = stack.admin()
    admin.create_consumer("shop", ["orders:read"], actor="test")
    _, key = admin.create_key("shop", actor="test")
    ok = stack.get("/v1/orders/1", {"X-API-Key": key})
    assert ok.status == 200 and ok.upstream_headers()["x-bastion-consumer"] == ["shop"]
    assert ok.headers["ratelimit-limit"] == "1000"  # the default quota, counted per consumer
    admin.revoke_key(key[4:16], actor="test")
    refused = stack.get("/v1/orders/1", {"X-API-Key": key})
    assert refused.status == 401
    event = stack.event_for("auth.failed", refused)
    assert event["data"]["cause"] == "api_key_revoked"
    with stack.engine.connect() as conn:
        types = {r.type for r in conn.execute(select(events_table.c.type))}
    assert {"consumer.created", "api_key.created", "api_key.revoked", "auth.failed"} <= types


def test_oauth_tokens_and_public_keys(stack: Stack, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    admin = stack.admin()
    admin.create_consumer("svc", ["orders:read"], actor="test")
    client, secret = admin.create_client("svc", actor="test")
    assert secret is not None
    reply = stack.call(
        "POST",
        "/oauth/token",
        {"Content-Type": FORM},
        urlencode(
            {"grant_type": "client_credentials", "client_id": client["client_id"], "client_secret": secret}
        ).encode(),
    )
    assert reply.status == 200, reply.body
    token = reply.json()["access_token"]
    assert stack.get("/v1/orders/2", {"Authorization": f"Bearer {token}"}).status == 200
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    added = admin.add_public_key("svc", pem, actor="test")
    assert [c["id"] for c in admin.list_public_keys("svc")] == [added["id"]]
    wait_for(lambda: stack.identity.snapshot.public_key(added["id"]) is not None, what="the key to load")


def test_quota_override_on_postgres(stack: Stack) -> None:
    admin = stack.admin()
    admin.create_consumer("tiny", ["orders:read"], quota="2/day", actor="test")
    _, key = admin.create_key("tiny", actor="test")
    codes = [stack.get("/v1/orders/3", {"X-API-Key": key}).status for _ in range(3)]
    assert codes == [200, 200, 429]


def test_events_page_through_the_admin_api(stack: Stack) -> None:
    import json

    from ..support import ADMIN_TOKEN, request

    admin = stack.admin()
    for i in range(3):
        admin.create_consumer(f"paged-{i}", [], actor="test")
    wait_for(lambda: len(stack.events("consumer.created")) >= 3, what="the events to be written")
    seen: list[str] = []
    target = "/admin/v1/events?type=consumer.&page_size=2"
    while True:
        status, _, body = request(
            stack.gw.admin_port, "GET", target, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert status == 200, body
        doc = json.loads(body)
        seen.extend(e["id"] for e in doc["events"])
        if not doc["next_page_token"]:
            break
        target = "/admin/v1/events?" + urlencode(
            {"type": "consumer.", "page_size": 2, "page_token": doc["next_page_token"]}
        )
    assert len(seen) == len(set(seen)) >= 3
