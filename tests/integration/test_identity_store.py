"""Identities in a real store: :class:`IdentityAdmin` (consumers, keys, clients), the snapshot and its
sync (:mod:`bastion.identity.index`), token-signing keys (:mod:`bastion.identity.signing`) and the
Alembic migrations, on a SQLite file in ``tmp_path``.

Time is injected (a :class:`FakeClock` shared by the admin, the sync and the signing keys); events are
collected by a list-backed ``emit``. PostgreSQL is not covered here: the environment has no PostgreSQL
driver (psycopg / psycopg2) and the config layer accepts only ``sqlite:///`` for now.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.fernet import InvalidToken
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import Engine, event, select

from bastion.checks.api_key import ApiKeyAuth
from bastion.core.headers import Headers
from bastion.core.identity import KEY_PATTERN, AuthFailure, api_key_digest, parse_api_key
from bastion.core.request import RequestView
from bastion.core.router import Route
from bastion.identity.credentials import Peppers
from bastion.identity.index import RECENTLY_ENDED, IdentitySnapshot, IdentitySync, check_pepper, load_snapshot
from bastion.identity.manage import IdentityAdmin, IdentityError
from bastion.identity.signing import PepperMismatch, SigningKeys
from bastion.store.database import open_database
from bastion.store.schema import (
    api_keys_table,
    identity_state_table,
    metadata,
    oauth_clients_table,
    revoked_tokens_table,
    signing_keys_table,
)

PEPPER = "integration-pepper-0123456789abcdef"
PEPPERS = Peppers(PEPPER)
T0 = 1_750_000_000.0
DAY = 86400.0
ACTOR = "alice@example.com"


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Events:
    """A list-backed ``emit``: ``(type, actor, data)`` per call."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event_type: str, **kwargs: Any) -> None:
        self.items.append((event_type, kwargs["actor"], kwargs["data"]))

    def types(self) -> list[str]:
        return [t for t, _, _ in self.items]

    def last(self) -> tuple[str, str, dict[str, Any]]:
        return self.items[-1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "identity.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    eng = open_database(f"sqlite:///{db_path}")
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def admin(engine: Engine, clock: FakeClock, events: Events) -> IdentityAdmin:
    return IdentityAdmin(engine, PEPPERS, max_key_ttl=90 * DAY, emit=events, clock=clock)


def revision(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(identity_state_table.c.revision).where(identity_state_table.c.id == 1)
            ).scalar_one()
        )


def dump(db_path: Path) -> str:
    """Every row of every table, as SQL text (sqlite3's ``iterdump``)."""
    conn = sqlite3.connect(db_path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def key_row(engine: Engine, key_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(api_keys_table).where(api_keys_table.c.id == key_id)).mappings().one()
    return dict(row)


def error(exc: pytest.ExceptionInfo[IdentityError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


def request_view() -> RequestView:
    ip = ip_address("203.0.113.5")
    return RequestView(
        method="GET",
        path="/v1/orders/1",
        query="",
        headers=Headers([("host", "api.example")]),
        client_ip=ip,
        peer_ip=ip,
        scheme="https",
        host="api.example",
        route=Route(id="r", service="s", template="/v1/orders/{id}", methods=frozenset({"GET"})),
        params={},
        body=None,  # type: ignore[arg-type]  # authentication never reads the body
        request_id="req-1",
        raw_path="/v1/orders/1",
    )


def authenticate(engine: Engine, key: str, now: float) -> Any:
    """Authenticate ``key`` against a snapshot freshly loaded from the store, as a gateway would."""
    snapshot = IdentitySnapshot()
    snapshot.replace(load_snapshot(engine, now))
    return ApiKeyAuth(snapshot, PEPPERS.key_digest).authenticate(key, request_view(), now, [])


# -- consumers ----------------------------------------------------------------------------------------


class TestConsumers:
    def test_create(self, admin: IdentityAdmin, engine: Engine, events: Events) -> None:
        before = revision(engine)
        out = admin.create_consumer(
            "shop", ["orders:write", "orders:read"], ip_allow=["10.0.0.0/8"], metadata={"t": 1}, actor=ACTOR
        )
        assert out["name"] == "shop"
        assert out["status"] == "active"
        assert out["scopes"] == ["orders:read", "orders:write"]
        assert out["ip_allow"] == ["10.0.0.0/8"]
        assert out["metadata"] == {"t": 1}
        assert out["created_at"] == T0 and out["created_by"] == ACTOR
        assert revision(engine) == before + 1
        assert events.items == [
            (
                "consumer.created",
                ACTOR,
                {"resource": "consumer:shop", "scopes": ["orders:read", "orders:write"]},
            )
        ]
        assert admin.get_consumer("shop") == out
        assert admin.get_consumer(out["id"]) == out
        snap = load_snapshot(engine, T0)
        rec = snap.by_name["shop"]
        assert rec.active and rec.scopes == {"orders:read", "orders:write"}
        assert ip_address("10.1.1.1") in rec.ip_allow  # type: ignore[operator]

    def test_duplicate_name_is_a_conflict(self, admin: IdentityAdmin, engine: Engine, events: Events) -> None:
        admin.create_consumer("shop", actor=ACTOR)
        before = revision(engine)
        with pytest.raises(IdentityError) as exc:
            admin.create_consumer("shop", ["x"], actor=ACTOR)
        assert error(exc) == (409, "conflict")
        assert revision(engine) == before
        assert events.types() == ["consumer.created"]
        assert len(admin.list_consumers()) == 1

    @pytest.mark.parametrize("name", ["", "with space", "-leading", ".dot", "a" * 65, "semi;colon", "é"])
    def test_invalid_name(self, admin: IdentityAdmin, engine: Engine, name: str) -> None:
        with pytest.raises(IdentityError) as exc:
            admin.create_consumer(name, actor=ACTOR)
        assert error(exc) == (400, "invalid_name")
        assert admin.list_consumers() == []
        assert revision(engine) == 0

    def test_invalid_scopes_addresses_and_metadata(self, admin: IdentityAdmin) -> None:
        for kwargs, code in (
            ({"scopes": ["has space"]}, "invalid_scope"),
            ({"scopes": ['qu"ote']}, "invalid_scope"),
            ({"ip_allow": ["10.0.0.1/8"]}, "invalid_ip_allow"),  # host bits set
            ({"ip_allow": ["not-an-ip"]}, "invalid_ip_allow"),
            ({"metadata": {"x": "y" * 5000}}, "invalid_metadata"),
        ):
            with pytest.raises(IdentityError) as exc:
                admin.create_consumer("shop", actor=ACTOR, **kwargs)  # type: ignore[arg-type]
            assert error(exc) == (400, code)
        assert admin.list_consumers() == []

    def test_disable_and_enable(self, admin: IdentityAdmin, engine: Engine, events: Events) -> None:
        admin.create_consumer("shop", ["orders:read"], actor=ACTOR)
        _, key = admin.create_key("shop", actor=ACTOR)
        assert authenticate(engine, key, T0).consumer == "shop"

        before = revision(engine)
        out = admin.set_consumer_active("shop", False, actor="bob")
        assert out["status"] == "disabled"
        assert revision(engine) == before + 1
        assert events.last() == ("consumer.disabled", "bob", {"resource": "consumer:shop"})
        assert not load_snapshot(engine, T0).by_name["shop"].active
        with pytest.raises(AuthFailure) as failure:
            authenticate(engine, key, T0)
        assert failure.value.code == "consumer_disabled"

        admin.set_consumer_active("shop", True, actor="bob")
        assert revision(engine) == before + 2
        assert events.last() == ("consumer.enabled", "bob", {"resource": "consumer:shop"})
        assert load_snapshot(engine, T0).by_name["shop"].active
        assert authenticate(engine, key, T0).consumer == "shop"

    def test_unknown_consumer_is_not_found(self, admin: IdentityAdmin) -> None:
        for call in (
            lambda: admin.get_consumer("nobody"),
            lambda: admin.set_consumer_active("nobody", False, actor=ACTOR),
            lambda: admin.create_key("nobody", actor=ACTOR),
            lambda: admin.create_client("nobody", actor=ACTOR),
        ):
            with pytest.raises(IdentityError) as exc:
                call()
            assert error(exc) == (404, "not_found")

    def test_consumer_losing_a_scope_takes_it_from_existing_keys(
        self, admin: IdentityAdmin, engine: Engine, events: Events
    ) -> None:
        admin.create_consumer("shop", ["orders:read", "orders:write"], actor=ACTOR)
        _, key = admin.create_key("shop", actor=ACTOR)
        assert authenticate(engine, key, T0).scopes == {"orders:read", "orders:write"}
        before = revision(engine)
        admin.update_consumer_scopes("shop", ["orders:read"], actor=ACTOR)
        assert revision(engine) == before + 1
        assert events.last()[0] == "consumer.updated"
        principal = authenticate(engine, key, T0)
        assert principal.scopes == {"orders:read"}
        # The key's own record keeps what it was granted; the consumer's narrowing is what applies.
        assert admin.list_keys("shop")[0]["scopes"] == ["orders:read", "orders:write"]


# -- API keys -----------------------------------------------------------------------------------------


class TestKeys:
    @pytest.fixture(autouse=True)
    def _shop(self, admin: IdentityAdmin) -> None:
        admin.create_consumer("shop", ["orders:read", "orders:write"], actor=ACTOR)

    def test_create_returns_the_key_once_and_stores_only_its_digest(
        self, admin: IdentityAdmin, engine: Engine, events: Events, db_path: Path
    ) -> None:
        before = revision(engine)
        out, key = admin.create_key("shop", ["orders:read"], actor=ACTOR)
        assert KEY_PATTERN.fullmatch(key)
        assert parse_api_key(key) == out["id"]
        assert out["scopes"] == ["orders:read"]
        assert out["consumer"] == "shop"
        assert out["created_by"] == ACTOR
        assert "key" not in out and "digest" not in out
        assert revision(engine) == before + 1

        text = dump(db_path)
        secret = key[17:50]
        assert out["id"] in text  # the public id is stored (it is the lookup key) ...
        assert key not in text  # ... the key is not,
        assert secret not in text  # nor its secret part,
        assert key.encode().hex() not in text.lower()  # not even hex-encoded.
        stored = key_row(engine, out["id"])["digest"]
        assert stored == PEPPERS.key_digest(key).hex() == api_key_digest(PEPPERS.keys, key).hex()
        assert stored != api_key_digest(PEPPER.encode(), key).hex()  # keyed with the derived key
        assert len(stored) == 64

        # Nor do the events or any listing ever carry it.
        assert key not in repr(events.items) and secret not in repr(events.items)
        assert key not in repr(admin.list_keys()) and key not in repr(admin.get_key(out["id"]))
        assert events.last() == (
            "api_key.created",
            ACTOR,
            {
                "resource": f"api_key:{out['id']}",
                "key_id": out["id"],
                "consumer": "shop",
                "scopes": ["orders:read"],
                "expires_at": T0 + 90 * DAY,
            },
        )
        assert authenticate(engine, key, T0).key_id == out["id"]

    def test_scopes_default_to_the_consumers(self, admin: IdentityAdmin) -> None:
        out, _ = admin.create_key("shop", actor=ACTOR)
        assert out["scopes"] == ["orders:read", "orders:write"]

    def test_scopes_beyond_the_consumers_are_refused(
        self, admin: IdentityAdmin, engine: Engine, events: Events
    ) -> None:
        before = revision(engine)
        with pytest.raises(IdentityError) as exc:
            admin.create_key("shop", ["orders:read", "admin"], actor=ACTOR)
        assert error(exc) == (400, "invalid_scope")
        assert "admin" in exc.value.message
        with pytest.raises(IdentityError) as exc:
            admin.create_key("shop", ["bad scope"], actor=ACTOR)
        assert error(exc) == (400, "invalid_scope")
        assert admin.list_keys() == []
        assert revision(engine) == before
        assert events.types() == ["consumer.created"]

    def test_ttl(self, admin: IdentityAdmin, clock: FakeClock) -> None:
        out, _ = admin.create_key("shop", actor=ACTOR)
        assert out["expires_at"] == T0 + 90 * DAY
        out, _ = admin.create_key("shop", ttl=30 * DAY, actor=ACTOR)
        assert out["expires_at"] == T0 + 30 * DAY
        out, _ = admin.create_key("shop", ttl=90 * DAY, actor=ACTOR)
        assert out["expires_at"] == T0 + 90 * DAY
        for ttl in (90 * DAY + 1, 0, -5):
            with pytest.raises(IdentityError) as exc:
                admin.create_key("shop", ttl=ttl, actor=ACTOR)
            assert error(exc) == (400, "invalid_ttl")
        assert len(admin.list_keys()) == 3

    def test_max_key_ttl_is_configurable(self, engine: Engine, clock: FakeClock) -> None:
        short = IdentityAdmin(engine, PEPPERS, max_key_ttl=7 * DAY, clock=clock)
        out, _ = short.create_key("shop", actor=ACTOR)
        assert out["expires_at"] == T0 + 7 * DAY
        with pytest.raises(IdentityError) as exc:
            short.create_key("shop", ttl=8 * DAY, actor=ACTOR)
        assert error(exc) == (400, "invalid_ttl")

    def test_an_expired_key_fails_as_expired_then_leaves_the_snapshot(
        self, admin: IdentityAdmin, engine: Engine
    ) -> None:
        out, key = admin.create_key("shop", ttl=3600, actor=ACTOR)
        assert out["id"] in load_snapshot(engine, T0 + 3599).keys
        assert authenticate(engine, key, T0 + 3599).key_id == out["id"]
        # Kept for a while, so that using the real (expired) key is named as such in the event log …
        with pytest.raises(AuthFailure) as failure:
            authenticate(engine, key, T0 + 3600)
        assert failure.value.code == "api_key_expired"
        # … then dropped: memory does not grow with every key that ever existed.
        assert out["id"] not in load_snapshot(engine, T0 + 3600 + RECENTLY_ENDED).keys

    def test_permissions_and_addresses_are_validated_and_stored(
        self, admin: IdentityAdmin, engine: Engine
    ) -> None:
        out, key = admin.create_key(
            "shop", permissions=["get /v1/orders/{id}"], ip_allow=["192.0.2.0/24"], actor=ACTOR
        )
        assert out["permissions"] == ["GET /v1/orders/{id}"]
        assert out["ip_allow"] == ["192.0.2.0/24"]
        principal = authenticate(engine, key, T0)
        assert principal.permissions[0].allows("GET", "/v1/orders/1")
        assert ip_address("192.0.2.9") in principal.ip_allow[0]
        with pytest.raises(IdentityError) as exc:
            admin.create_key("shop", permissions=["FETCH /x"], actor=ACTOR)
        assert error(exc) == (400, "invalid_permission")
        with pytest.raises(IdentityError) as exc:
            admin.create_key("shop", ip_allow=["300.1.1.1"], actor=ACTOR)
        assert error(exc) == (400, "invalid_ip_allow")

    def test_without_a_pepper_no_key_can_be_made(self, engine: Engine) -> None:
        with pytest.raises(IdentityError) as exc:
            IdentityAdmin(engine, None).create_key("shop", actor=ACTOR)
        assert error(exc) == (409, "pepper_missing")

    def test_revoke_is_immediate_and_idempotent(
        self, admin: IdentityAdmin, engine: Engine, events: Events, clock: FakeClock
    ) -> None:
        out, key = admin.create_key("shop", actor=ACTOR)
        kept, other = admin.create_key("shop", actor=ACTOR)
        clock.now = T0 + 50
        before = revision(engine)
        revoked = admin.revoke_key(out["id"], actor="bob")
        assert revoked["revoked_at"] == T0 + 50 and revoked["revoked_by"] == "bob"
        assert revision(engine) == before + 1
        assert events.last() == (
            "api_key.revoked",
            "bob",
            {"resource": f"api_key:{out['id']}", "key_id": out["id"], "consumer": "shop"},
        )
        assert load_snapshot(engine, T0 + 50).keys[out["id"]].revoked_at == T0 + 50
        with pytest.raises(AuthFailure) as failure:
            authenticate(engine, key, T0 + 50)
        assert failure.value.code == "api_key_revoked"  # the real key of a revoked record: named
        assert out["id"] not in load_snapshot(engine, T0 + 50 + RECENTLY_ENDED).keys
        assert authenticate(engine, other, T0 + 50).consumer == "shop"

        clock.now = T0 + 99
        again = admin.revoke_key(out["id"], actor="carol")
        assert again["revoked_at"] == T0 + 50 and again["revoked_by"] == "bob"
        assert revision(engine) == before + 1
        assert events.types().count("api_key.revoked") == 1
        assert [k["id"] for k in admin.list_keys(include_revoked=False)] == [kept["id"]]
        assert len(admin.list_keys()) == 2
        with pytest.raises(IdentityError) as exc:
            admin.revoke_key("NOSUCHKEY123", actor=ACTOR)
        assert error(exc) == (404, "not_found")

    def test_rotate(self, admin: IdentityAdmin, engine: Engine, events: Events, clock: FakeClock) -> None:
        old, old_key = admin.create_key(
            "shop", ["orders:read"], permissions=["GET /v1/orders/*"], ip_allow=["10.0.0.0/8"], actor=ACTOR
        )
        clock.now = T0 + DAY
        before = revision(engine)
        new, new_key = admin.rotate_key(old["id"], grace=3600, actor="bob")
        assert new_key != old_key and KEY_PATTERN.fullmatch(new_key)
        assert parse_api_key(new_key) == new["id"]
        assert new["rotated_from"] == old["id"]
        assert new["scopes"] == ["orders:read"]
        assert new["permissions"] == ["GET /v1/orders/*"]
        assert new["ip_allow"] == ["10.0.0.0/8"]
        assert new["expires_at"] == T0 + DAY + 90 * DAY
        assert revision(engine) > before

        row = key_row(engine, old["id"])
        assert row["rotated_to"] == new["id"]
        assert row["expires_at"] == T0 + DAY + 3600
        assert row["revoked_at"] is None
        etype, actor, data = events.last()
        assert (etype, actor) == ("api_key.rotated", "bob")
        assert data["key_id"] == old["id"] and data["new_key_id"] == new["id"]
        assert data["grace_until"] == T0 + DAY + 3600
        assert new_key not in repr(events.items)

        # Both work during the grace period; the old one is flagged as rotated.
        snap = load_snapshot(engine, T0 + DAY + 10)
        assert snap.keys[old["id"]].rotated_to == new["id"]
        assert authenticate(engine, new_key, T0 + DAY + 10).key_id == new["id"]
        assert authenticate(engine, old_key, T0 + DAY + 10).key_id == old["id"]
        # After it, only the new one.
        with pytest.raises(AuthFailure) as failure:
            authenticate(engine, old_key, T0 + DAY + 3600)
        assert failure.value.code == "api_key_expired"
        assert authenticate(engine, new_key, T0 + DAY + 3600).key_id == new["id"]

    def test_grace_never_extends_the_original_expiry(self, admin: IdentityAdmin, engine: Engine) -> None:
        old, _ = admin.create_key("shop", ttl=3600, actor=ACTOR)
        admin.rotate_key(old["id"], grace=DAY, actor=ACTOR)
        assert key_row(engine, old["id"])["expires_at"] == T0 + 3600

    def test_default_grace_is_a_day(self, admin: IdentityAdmin, engine: Engine) -> None:
        old, _ = admin.create_key("shop", actor=ACTOR)
        admin.rotate_key(old["id"], actor=ACTOR)
        assert key_row(engine, old["id"])["expires_at"] == T0 + DAY

    def test_rotating_twice_or_rotating_a_dead_key_is_a_conflict(
        self, admin: IdentityAdmin, engine: Engine, clock: FakeClock
    ) -> None:
        old, _ = admin.create_key("shop", actor=ACTOR)
        new, _ = admin.rotate_key(old["id"], actor=ACTOR)
        before = revision(engine)
        with pytest.raises(IdentityError) as exc:
            admin.rotate_key(old["id"], actor=ACTOR)
        assert error(exc) == (409, "already_rotated")

        revoked, _ = admin.create_key("shop", actor=ACTOR)
        admin.revoke_key(revoked["id"], actor=ACTOR)
        with pytest.raises(IdentityError) as exc:
            admin.rotate_key(revoked["id"], actor=ACTOR)
        assert error(exc) == (409, "key_inactive")

        short, _ = admin.create_key("shop", ttl=60, actor=ACTOR)
        clock.now = T0 + 60
        with pytest.raises(IdentityError) as exc:
            admin.rotate_key(short["id"], actor=ACTOR)
        assert error(exc) == (409, "key_inactive")

        with pytest.raises(IdentityError) as exc:
            admin.rotate_key(old["id"], grace=-1, actor=ACTOR)
        assert error(exc) == (400, "invalid_grace")
        # Failed rotations created nothing: old, its successor, the revoked key and the short-lived one.
        assert len(admin.list_keys()) == 4
        assert revision(engine) == before + 3  # the two creations and the revocation
        # The new key itself can be rotated.
        admin.rotate_key(new["id"], actor=ACTOR)

    def test_rotated_key_keeps_only_scopes_the_consumer_still_holds(
        self, admin: IdentityAdmin, engine: Engine
    ) -> None:
        old, _ = admin.create_key("shop", ["orders:read", "orders:write"], actor=ACTOR)
        admin.update_consumer_scopes("shop", ["orders:read"], actor=ACTOR)
        new, new_key = admin.rotate_key(old["id"], actor=ACTOR)
        assert new["scopes"] == ["orders:read"]
        assert authenticate(engine, new_key, T0).scopes == {"orders:read"}


# -- OAuth clients ------------------------------------------------------------------------------------


def public_jwks() -> dict[str, Any]:
    key = ECKey.generate_key("P-256", private=True)
    return {"keys": [{**key.as_dict(private=False), "kid": "client-1"}]}


class TestClients:
    @pytest.fixture(autouse=True)
    def _shop(self, admin: IdentityAdmin) -> None:
        admin.create_consumer("shop", ["orders:read", "orders:write"], actor=ACTOR)

    def test_create_with_secret(
        self, admin: IdentityAdmin, engine: Engine, events: Events, db_path: Path
    ) -> None:
        before = revision(engine)
        out, secret = admin.create_client("shop", ["orders:read"], actor=ACTOR)
        assert secret is not None and len(secret) >= 43
        assert out["auth_method"] == "client_secret_basic"
        assert out["scopes"] == ["orders:read"]
        assert revision(engine) == before + 1
        text = dump(db_path)
        assert out["client_id"] in text
        assert secret not in text and secret[4:] not in text
        with engine.connect() as conn:
            row = (
                conn.execute(
                    select(oauth_clients_table).where(oauth_clients_table.c.client_id == out["client_id"])
                )
                .mappings()
                .one()
            )
        assert row["secret_digest"] == PEPPERS.client_secret_digest(secret).hex()
        assert row["secret_digest"] != PEPPERS.key_digest(secret).hex()
        assert row["jwks"] is None
        etype, actor, data = events.last()
        assert (etype, actor) == ("client.created", ACTOR)
        assert data["client_id"] == out["client_id"] and data["auth_method"] == "client_secret_basic"
        assert secret not in repr(events.items)
        client = load_snapshot(engine, T0).clients[out["client_id"]]
        assert client.secret_digest == PEPPERS.client_secret_digest(secret)
        assert client.scopes == {"orders:read"}

    def test_create_with_jwks(self, admin: IdentityAdmin, engine: Engine, events: Events) -> None:
        out, secret = admin.create_client("shop", jwks=public_jwks(), actor=ACTOR)
        assert secret is None
        assert out["auth_method"] == "private_key_jwt"
        assert out["scopes"] == ["orders:read", "orders:write"]
        assert events.last()[2]["auth_method"] == "private_key_jwt"
        client = load_snapshot(engine, T0).clients[out["client_id"]]
        assert client.secret_digest is None
        assert client.jwks is not None

    @pytest.mark.parametrize(
        "jwks",
        [
            pytest.param(
                {"keys": [ECKey.generate_key("P-256", private=True).as_dict(private=True)]}, id="ec-d"
            ),
            pytest.param(
                {"keys": [RSAKey.generate_key(2048, private=True).as_dict(private=True)]}, id="rsa-d"
            ),
            pytest.param({"keys": [OctKey.generate_key(256).as_dict()]}, id="oct-k"),
            pytest.param({"keys": []}, id="empty"),
            pytest.param({"nokeys": 1}, id="not-a-set"),
            pytest.param({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}, id="garbage"),
        ],
    )
    def test_bad_jwks_is_refused(self, admin: IdentityAdmin, engine: Engine, jwks: dict[str, Any]) -> None:
        before = revision(engine)
        with pytest.raises(IdentityError) as exc:
            admin.create_client("shop", jwks=jwks, actor=ACTOR)
        assert error(exc) == (400, "invalid_jwks")
        assert admin.list_clients() == []
        assert revision(engine) == before

    def test_scopes_beyond_the_consumers_are_refused(self, admin: IdentityAdmin) -> None:
        with pytest.raises(IdentityError) as exc:
            admin.create_client("shop", ["orders:read", "admin"], actor=ACTOR)
        assert error(exc) == (400, "invalid_scope")
        assert admin.list_clients() == []

    def test_revoke(self, admin: IdentityAdmin, engine: Engine, events: Events, clock: FakeClock) -> None:
        out, _ = admin.create_client("shop", actor=ACTOR)
        clock.now = T0 + 5
        before = revision(engine)
        revoked = admin.revoke_client(out["client_id"], actor="bob")
        assert revoked["revoked_at"] == T0 + 5 and revoked["revoked_by"] == "bob"
        assert revision(engine) == before + 1
        assert events.last() == (
            "client.revoked",
            "bob",
            {"resource": f"client:{out['client_id']}", "client_id": out["client_id"]},
        )
        assert out["client_id"] not in load_snapshot(engine, T0 + 5).clients
        again = admin.revoke_client(out["client_id"], actor="carol")
        assert again["revoked_by"] == "bob"
        assert revision(engine) == before + 1
        with pytest.raises(IdentityError) as exc:
            admin.revoke_client("bcl_nosuch", actor=ACTOR)
        assert error(exc) == (404, "not_found")


# -- every change: a revision bump and an event with its actor ----------------------------------------


def test_every_change_bumps_the_revision_and_is_an_event_with_its_actor(
    admin: IdentityAdmin, engine: Engine, events: Events
) -> None:
    def changes(call: Any) -> tuple[int, list[tuple[str, str]]]:
        rev, seen = revision(engine), len(events.items)
        call()
        return revision(engine) - rev, [(t, a) for t, a, _ in events.items[seen:]]

    assert changes(lambda: admin.create_consumer("shop", ["a"], actor="u1")) == (
        1,
        [("consumer.created", "u1")],
    )
    key_id: list[str] = []
    assert changes(lambda: key_id.append(admin.create_key("shop", actor="u2")[0]["id"])) == (
        1,
        [("api_key.created", "u2")],
    )
    bumps, seen = changes(lambda: admin.rotate_key(key_id[0], actor="u3"))
    assert bumps >= 1 and seen == [("api_key.rotated", "u3")]
    assert changes(lambda: admin.revoke_key(key_id[0], actor="u4")) == (1, [("api_key.revoked", "u4")])
    client: list[str] = []
    assert changes(lambda: client.append(admin.create_client("shop", actor="u5")[0]["client_id"])) == (
        1,
        [("client.created", "u5")],
    )
    assert changes(lambda: admin.revoke_client(client[0], actor="u6")) == (1, [("client.revoked", "u6")])
    assert changes(lambda: admin.update_consumer_scopes("shop", ["a", "b"], actor="u7")) == (
        1,
        [("consumer.updated", "u7")],
    )
    assert changes(lambda: admin.set_consumer_active("shop", False, actor="u8")) == (
        1,
        [("consumer.disabled", "u8")],
    )
    assert changes(lambda: admin.set_consumer_active("shop", True, actor="u9")) == (
        1,
        [("consumer.enabled", "u9")],
    )
    # Reads change nothing.
    assert changes(lambda: (admin.list_consumers(), admin.list_keys(), admin.list_clients())) == (0, [])
    assert all(data["resource"] for _, _, data in events.items)


def test_on_change_is_called_after_each_change(engine: Engine, clock: FakeClock) -> None:
    calls: list[int] = []
    adm = IdentityAdmin(engine, PEPPERS, on_change=lambda: calls.append(revision(engine)), clock=clock)
    adm.create_consumer("shop", actor=ACTOR)
    out, _ = adm.create_key("shop", actor=ACTOR)
    adm.revoke_key(out["id"], actor=ACTOR)
    assert calls == [1, 2, 3]  # after the commit: the callback sees the new revision


# -- the snapshot and its sync ------------------------------------------------------------------------


class StatementCounter:
    """Every SQL statement the engine executes (``executemany`` counts once)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[tuple[str, bool]] = []

    def _listen(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        self.statements.append((statement, many))

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._listen)

    def updates(self) -> list[tuple[str, bool]]:
        return [(s, m) for s, m in self.statements if s.lstrip().upper().startswith("UPDATE")]


class TestSync:
    def test_load_reloads_only_when_the_revision_moved(
        self, admin: IdentityAdmin, engine: Engine, clock: FakeClock
    ) -> None:
        snapshot = IdentitySnapshot()
        reloaded: list[int] = []
        sync = IdentitySync(
            engine, snapshot, clock=clock, on_reload=lambda: reloaded.append(snapshot.revision)
        )
        sync.load()
        assert sync.reloads == 1 and snapshot.revision == 0
        sync.load()
        sync.load()
        assert sync.reloads == 1
        admin.create_consumer("shop", ["orders:read"], actor=ACTOR)
        _, key = admin.create_key("shop", actor=ACTOR)
        assert snapshot.consumer_named("shop") is None  # not yet: nothing told the sync
        sync.load()
        assert sync.reloads == 2 and snapshot.revision == 2
        assert snapshot.consumer_named("shop") is not None
        assert snapshot.key(parse_api_key(key) or "") is not None
        assert reloaded == [0, 2]
        with StatementCounter(engine) as counter:
            sync.load()
        assert sync.reloads == 2
        assert len(counter.statements) == 1  # only the revision was read

    def test_every_confirmation_moves_fresh_until(self, engine: Engine, clock: FakeClock) -> None:
        # The checks fail closed once now > fresh_until: it must be "never" before the store has spoken
        # (no store), and the last confirmation plus max_staleness after, moved by every load.
        snapshot = IdentitySnapshot(max_staleness=300.0)
        assert snapshot.fresh_until == float("inf")
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        assert snapshot.fresh_until == T0 + 300.0
        clock.now = T0 + 250.0
        sync.load()  # nothing changed in the store: still a confirmation
        assert snapshot.fresh_until == T0 + 550.0
        snapshot.confirmed_at = None
        assert snapshot.fresh_until == float("inf")

    def test_changed_reloads_at_once(self, engine: Engine, clock: FakeClock) -> None:
        snapshot = IdentitySnapshot()
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        adm = IdentityAdmin(engine, PEPPERS, on_change=sync.changed, clock=clock)
        adm.create_consumer("shop", actor=ACTOR)
        assert snapshot.consumer_named("shop") is not None
        assert snapshot.revision == revision(engine)

    def test_last_used_is_written_in_one_batch(
        self, admin: IdentityAdmin, engine: Engine, clock: FakeClock
    ) -> None:
        admin.create_consumer("shop", ["orders:read"], actor=ACTOR)
        a, _ = admin.create_key("shop", actor=ACTOR)
        b, _ = admin.create_key("shop", actor=ACTOR)
        snapshot = IdentitySnapshot()
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        with StatementCounter(engine) as counter:
            for i in range(50):
                snapshot.last_used[a["id"]] = T0 + i
            snapshot.last_used[b["id"]] = T0 + 7
            assert counter.statements == []  # no write per use
            sync.flush()
            updates = counter.updates()
        assert len(updates) == 1 and updates[0][1]  # one executemany for both keys
        assert key_row(engine, a["id"])["last_used_at"] == T0 + 49
        assert key_row(engine, b["id"])["last_used_at"] == T0 + 7
        assert admin.get_key(a["id"])["last_used_at"] == T0 + 49
        # Nothing pending: a flush touches nothing.
        with StatementCounter(engine) as counter:
            sync.flush()
        assert counter.statements == []

    def test_a_use_noted_after_a_flush_is_written_by_the_next(
        self, admin: IdentityAdmin, engine: Engine, clock: FakeClock
    ) -> None:
        """last_used is a dict the checks keep a reference to: taking the uses must empty that dict,
        never put another in its place (uses noted afterwards would go nowhere)."""
        admin.create_consumer("shop", ["orders:read"], actor=ACTOR)
        a, _ = admin.create_key("shop", actor=ACTOR)
        snapshot = IdentitySnapshot()
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        noted = snapshot.last_used  # as ApiKeyAuth holds it
        noted[a["id"]] = T0 + 1
        sync.flush()
        assert key_row(engine, a["id"])["last_used_at"] == T0 + 1
        noted[a["id"]] = T0 + 60
        sync.flush()
        assert key_row(engine, a["id"])["last_used_at"] == T0 + 60
        assert snapshot.take_used() == {}

    def test_pending_token_revocations_survive_a_reload_and_are_written_by_flush(
        self, admin: IdentityAdmin, engine: Engine, clock: FakeClock
    ) -> None:
        snapshot = IdentitySnapshot()
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        snapshot.revoke_token("jti-1", T0 + 900, T0)
        assert snapshot.token_revoked("jti-1")
        admin.create_consumer("shop", actor=ACTOR)  # moves the revision: the next load reloads
        sync.load()
        assert sync.reloads == 2
        assert snapshot.token_revoked("jti-1")  # not yet written, still revoked here
        with engine.connect() as conn:
            assert conn.execute(select(revoked_tokens_table)).all() == []

        before = revision(engine)
        clock.now = T0 + 10
        sync.flush()
        assert snapshot.pending_revocations == []
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(select(revoked_tokens_table)).mappings()]
        assert rows == [{"jti": "jti-1", "expires_at": T0 + 900, "revoked_at": T0}]
        assert revision(engine) == before + 1  # other gateways learn about it
        sync.load()
        assert snapshot.token_revoked("jti-1")  # now from the store
        # Another process sees it too; once the token has expired the revocation is dropped.
        assert "jti-1" in load_snapshot(engine, T0 + 899).revoked
        assert "jti-1" not in load_snapshot(engine, T0 + 900).revoked

    def test_a_failed_flush_keeps_pending_revocations(self, engine: Engine, clock: FakeClock) -> None:
        """The store being away must not un-revoke a token: what could not be written stays pending,
        stays effective across reloads, and is written by the next flush that succeeds."""
        snapshot = IdentitySnapshot()
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        snapshot.revoke_token("jti-3", T0 + 900, T0)

        def refuse(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            if "revoked_tokens" in statement:
                raise RuntimeError("store unavailable")

        event.listen(engine, "before_cursor_execute", refuse)
        try:
            with pytest.raises(Exception, match="store unavailable"):
                sync.flush()
        finally:
            event.remove(engine, "before_cursor_execute", refuse)
        assert [p[0] for p in snapshot.pending_revocations] == ["jti-3"]
        IdentityAdmin(engine, PEPPERS, clock=clock).create_consumer("shop", actor=ACTOR)
        sync.load()
        assert snapshot.token_revoked("jti-3")
        sync.flush()
        assert "jti-3" in load_snapshot(engine, T0).revoked

    def test_revoking_the_same_token_twice_writes_one_row(self, engine: Engine, clock: FakeClock) -> None:
        snapshot = IdentitySnapshot()
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        snapshot.revoke_token("jti-2", T0 + 900, T0)
        sync.flush()
        snapshot.revoke_token("jti-2", T0 + 900, T0 + 1)
        sync.flush()
        with engine.connect() as conn:
            assert len(conn.execute(select(revoked_tokens_table)).all()) == 1

    def test_expired_revocations_are_purged_by_flush(self, engine: Engine, clock: FakeClock) -> None:
        snapshot = IdentitySnapshot()
        sync = IdentitySync(engine, snapshot, clock=clock)
        sync.load()
        snapshot.revoke_token("old", T0 + 10, T0)
        sync.flush()
        clock.now = T0 + 20
        snapshot.revoke_token("new", T0 + 900, T0 + 20)
        sync.flush()
        with engine.connect() as conn:
            assert set(conn.execute(select(revoked_tokens_table.c.jti)).scalars()) == {"new"}


# -- token-signing keys -------------------------------------------------------------------------------

ROTATION = 30 * DAY
TOKEN_TTL = 900.0


def signing_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(signing_keys_table).order_by(signing_keys_table.c.created_at)).mappings()
        return [dict(r) for r in rows]


def jwks_kids(keys: SigningKeys) -> list[str]:
    return sorted(k["kid"] for k in json.loads(keys.jwks_body)["keys"])


class TestSigningKeys:
    def make(
        self, engine: Engine, clock: FakeClock, pepper: Peppers = PEPPERS, alg: str = "ES256"
    ) -> SigningKeys:
        return SigningKeys(engine, pepper, alg=alg, rotation=ROTATION, token_ttl=TOKEN_TTL, clock=clock)

    def test_first_refresh_creates_one_encrypted_key(
        self, engine: Engine, clock: FakeClock, db_path: Path
    ) -> None:
        keys = self.make(engine, clock)
        with pytest.raises(RuntimeError):
            keys.current()
        keys.refresh()
        rows = signing_rows(engine)
        assert len(rows) == 1
        kid, key = keys.current()
        assert rows[0]["kid"] == kid and rows[0]["alg"] == "ES256" and rows[0]["created_at"] == T0
        private = key.as_dict(private=True)
        text = dump(db_path)
        assert "PRIVATE KEY" not in text
        assert private["d"] not in text
        assert private["d"] not in rows[0]["private_key"]
        public = json.loads(rows[0]["public_jwk"])
        assert "d" not in public and public["kid"] == kid and public["alg"] == "ES256"
        assert jwks_kids(keys) == [kid]
        assert all("d" not in k for k in json.loads(keys.jwks_body)["keys"])
        # The stored private key decrypts (with this pepper) to the same key.
        pem = PEPPERS.fernet.decrypt(rows[0]["private_key"].encode())
        assert ECKey.import_key(pem).as_dict(private=True)["d"] == private["d"]

        # Refreshing again within the rotation period creates nothing.
        clock.now = T0 + ROTATION - 1
        keys.refresh()
        assert len(signing_rows(engine)) == 1
        assert keys.current()[0] == kid

    def test_rotation_publishes_old_and_new_then_drops_the_old(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        keys = self.make(engine, clock)
        keys.refresh()
        old_kid = keys.current()[0]
        clock.now = T0 + ROTATION
        keys.refresh()
        rows = signing_rows(engine)
        assert len(rows) == 2
        new_kid = keys.current()[0]
        assert new_kid != old_kid and rows[1]["kid"] == new_kid
        assert jwks_kids(keys) == sorted([old_kid, new_kid])
        assert {k.kid for k in keys.verify_keys.keys} == {old_kid, new_kid}
        # Tokens the old key signed just before the rotation are valid for TOKEN_TTL more: still published.
        clock.now = T0 + ROTATION + TOKEN_TTL
        keys.refresh()
        assert jwks_kids(keys) == sorted([old_kid, new_kid])
        # Well after that it is gone, while the new key signs on.
        clock.now = T0 + ROTATION + TOKEN_TTL + 3600
        keys.refresh()
        assert jwks_kids(keys) == [new_kid]
        assert keys.current()[0] == new_kid
        assert len(signing_rows(engine)) == 2

    def test_another_process_picks_up_the_new_key(self, engine: Engine, clock: FakeClock) -> None:
        first = self.make(engine, clock)
        first.refresh()
        second = self.make(engine, clock)
        second.refresh()
        assert second.current()[0] == first.current()[0]
        assert len(signing_rows(engine)) == 1

    def test_a_different_pepper_cannot_decrypt(self, engine: Engine, clock: FakeClock) -> None:
        self.make(engine, clock).refresh()
        other = Peppers("a-different-pepper-0123456789abcdef")
        with pytest.raises(InvalidToken):
            other.fernet.decrypt(signing_rows(engine)[0]["private_key"].encode())
        with pytest.raises(PepperMismatch, match=r"identity\.pepper"):
            self.make(engine, clock, pepper=other).refresh()

    def test_the_pepper_check_tells_a_changed_pepper(self, engine: Engine) -> None:
        first = Peppers("the-first-pepper-0123456789abcdef")
        assert check_pepper(engine, first.check_value)  # recorded
        assert check_pepper(engine, first.check_value)  # and matched
        assert not check_pepper(engine, Peppers("a-different-pepper-0123456789abcdef").check_value)

    def test_eddsa(self, engine: Engine, clock: FakeClock) -> None:
        keys = self.make(engine, clock, alg="EdDSA")
        keys.refresh()
        published = json.loads(keys.jwks_body)["keys"]
        assert [(k["kty"], k["crv"], k["alg"]) for k in published] == [("OKP", "Ed25519", "EdDSA")]
        assert "d" not in published[0]


# -- the migrations -----------------------------------------------------------------------------------


def test_migrations_produce_exactly_the_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrating_twice_is_harmless(db_path: Path, engine: Engine, admin: IdentityAdmin) -> None:
    admin.create_consumer("shop", actor=ACTOR)
    again = open_database(f"sqlite:///{db_path}")
    try:
        assert revision(again) == 1
        assert [c["name"] for c in IdentityAdmin(again, PEPPERS).list_consumers()] == ["shop"]
    finally:
        again.dispose()
