"""Public keys for PKCV: ``bastion credentials add|list|revoke`` and ``/admin/v1/credentials``. Only RSA keys
of 2048-8192 bits with e = 65537 are registered; a private key given by mistake is refused (and not
echoed); every change is an event; a revoked key stops authenticating at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion.identity.manage import IdentityAdmin, IdentityError
from bastion.store.database import open_database

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text
from .test_identity_admin import call, ok, problem
from .test_identity_cli import cli, fails, write_config
from .test_identity_cli import ok as cli_ok

PEPPER = "test-pepper-0123456789abcdef"  # a test fixture, not a secret


def rsa_key(bits: int = 2048, e: int = 65537) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=e, key_size=bits)


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


KEY = rsa_key()


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


@pytest.fixture
def cfg(tmp_path: Path, upstream: EchoUpstream) -> Path:
    path = write_config(tmp_path, upstream.port)
    cli_ok(path, "consumers", "create", "shop", "--scope", "orders:read")
    return path


def test_cli_add_list_revoke(cfg: Path, tmp_path: Path) -> None:
    pem = tmp_path / "shop.pub.pem"
    pem.write_bytes(public_pem(KEY))
    added = cli_ok(cfg, "credentials", "add", "--consumer", "shop", "--public-key", str(pem))
    assert added["id"].startswith("CR") and len(added["id"]) == 34
    assert added["consumer"] == "shop" and len(added["fingerprint"]) == 64
    listed = cli_ok(cfg, "credentials", "list", "--consumer", "shop")
    assert [c["id"] for c in listed] == [added["id"]]
    assert listed[0]["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    revoked = cli_ok(cfg, "credentials", "revoke", added["id"])
    assert revoked["revoked_at"] is not None and revoked["revoked_by"].startswith("cli:")
    text = cli("credentials", "list", "-c", str(cfg))
    assert text.exit_code == 0 and added["id"] in text.stdout
    # Events with the CLI actor.
    engine = open_database(
        load_text(cfg.read_text(), env={"BASTION_PEPPER": PEPPER}).settings.storage.database,
        migrate_schema=False,
    )
    try:
        from sqlalchemy import select

        from bastion.store.schema import events_table

        with engine.connect() as conn:
            types = [r.type for r in conn.execute(select(events_table.c.type).order_by(events_table.c.id))]
    finally:
        engine.dispose()
    assert "credential.created" in types and "credential.revoked" in types


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: public_pem(rsa_key(1024)), "2048"),
        (lambda: public_pem(rsa_key(2048, e=3)), "65537"),
        (
            lambda: KEY.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "private key",
        ),
        (lambda: public_pem(ec.generate_private_key(ec.SECP256R1())), "RSA"),
        (lambda: b"not a key", "PEM"),
        (lambda: b"x" * 20000, "too large"),
    ],
    ids=["1024-bits", "e=3", "private", "ec", "garbage", "huge"],
)
def test_cli_refuses_bad_keys(cfg: Path, tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "key.pem"
    data = content()
    path.write_bytes(data)
    err = fails(cfg, "credentials", "add", "--consumer", "shop", "--public-key", str(path))
    assert message in err
    assert "PRIVATE" not in err and "MII" not in err  # never echoes the file


def test_cli_unknown_consumer_and_missing_file(cfg: Path, tmp_path: Path) -> None:
    pem = tmp_path / "k.pem"
    pem.write_bytes(public_pem(KEY))
    assert "consumer" in fails(cfg, "credentials", "add", "--consumer", "nobody", "--public-key", str(pem))
    result = cli(
        "credentials",
        "add",
        "--consumer",
        "shop",
        "--public-key",
        str(tmp_path / "missing.pem"),
        "-c",
        str(cfg),
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "No such credential" in fails(cfg, "credentials", "revoke", "CR" + "0" * 32)


def test_identity_admin_accepts_der_and_normalises(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        admin = IdentityAdmin(engine, None, max_key_ttl=86400.0, emit=lambda *a, **k: None)
        admin.create_consumer("shop", ["a"], actor="test")
        der = KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out = admin.add_public_key("shop", der, actor="test")
        pkcs1 = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        again = admin.add_public_key("shop", pkcs1, actor="test")
        assert out["fingerprint"] == again["fingerprint"] and out["public_key"] == again["public_key"]
        with pytest.raises(IdentityError) as info:
            admin.add_public_key("shop", public_pem(KEY), name="n" * 200, actor="test")
        assert info.value.code == "invalid_request"
        assert admin.get_public_key(out["id"])["consumer"] == "shop"
    finally:
        engine.dispose()


# -- admin API ------------------------------------------------------------------------------------------

ROUTES = """
      - path: /v1/signed
        methods: [POST]
        auth: [pkcv]
"""
EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
"""


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    db = tmp_path_factory.mktemp("public-keys") / "bastion.db"
    loaded = load_text(
        config_text(upstream.port, db, routes=ROUTES, extra=EXTRA), env={"BASTION_PEPPER": PEPPER}
    )
    with GatewayThread(loaded) as gateway:
        yield gateway


def test_admin_api_credentials(gw: GatewayThread) -> None:
    ok(gw, "POST", "/admin/v1/consumers", {"name": "api-shop", "scopes": ["a"]}, 201)
    created = ok(
        gw,
        "POST",
        "/admin/v1/credentials",
        {"consumer": "api-shop", "public_key": public_pem(KEY).decode(), "name": "laptop"},
        201,
    )
    assert created["id"].startswith("CR") and created["name"] == "laptop"
    listed = ok(gw, "GET", "/admin/v1/credentials?consumer=api-shop")["credentials"]
    assert [c["id"] for c in listed] == [created["id"]]
    assert ok(gw, "GET", f"/admin/v1/credentials/{created['id']}")["fingerprint"] == created["fingerprint"]
    revoked = ok(gw, "POST", f"/admin/v1/credentials/{created['id']}/revoke")
    assert revoked["revoked_by"] == "admin:token"
    problem(call(gw, "GET", "/admin/v1/credentials/CR" + "f" * 32), 404)
    bad = problem(
        call(gw, "POST", "/admin/v1/credentials", {"consumer": "api-shop", "public_key": "nope"}),
        400,
        "invalid_public_key",
    )
    assert "nope" not in json.dumps(bad)
    problem(call(gw, "POST", "/admin/v1/credentials", {"consumer": "api-shop"}), 400)
    problem(call(gw, "GET", "/admin/v1/credentials", token="wrong-" + ADMIN_TOKEN), 401)
