"""``bastion consumers | keys | clients`` through click's CliRunner against a config file with a SQLite
store: the JSON shapes, the key shown once, the errors (one line, no traceback), the events with the
``cli:<user>`` actor, the store holding no key or secret, and a running gateway picking CLI changes up
within ``identity.refresh_interval``.

The user name in the actor comes from ``LOGNAME`` (``getpass.getuser`` reads it first), set per
invocation so no test depends on who runs pytest.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from joserfc.jwk import ECKey

from bastion.adapters.cli import main
from bastion.core.identity import parse_api_key
from bastion.identity.credentials import Peppers

from ..support import EchoUpstream, GatewayThread, config_text, load_text, request

PEPPER = "test-pepper-0123456789abcdef"  # a test fixture, not a secret
USER = "alice"
ACTOR = f"cli:{USER}"
ENV: dict[str, str | None] = {
    "BASTION_PEPPER": PEPPER,
    "BASTION_CONFIG": None,
    "LOGNAME": USER,
    "USER": USER,
}
DAY = 86400.0

ROUTES = """
      - path: /x/{id}
        methods: [GET]
        auth: [api_key]
        scopes: [orders:read]
"""
IDENTITY = """
identity:
  pepper: ${env:BASTION_PEPPER}
  rotation_grace: 2h
  refresh_interval: 100ms
  lockout: {failures: 1000, within: 5m, block_for: 5m}
"""
NO_PEPPER_ROUTES = """
      - path: /x/{id}
        methods: [GET]
        auth: none
"""


def cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={**ENV, **(env or {})}, catch_exceptions=False)


def ok(cfg: Path, *args: str) -> Any:
    """Run a command with ``--json``; it must succeed; return the parsed output."""
    result = cli(*args, "-c", str(cfg), "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return json.loads(result.stdout)


def fails(cfg: Path, *args: str, code: int = 1) -> str:
    """Run a command that must fail with ``code``: stderr, no traceback, nothing on stdout."""
    result = cli(*args, "-c", str(cfg))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    return result.stderr


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bastion: ")
    return lines[0]


def write_config(directory: Path, upstream_port: int, *, routes: str = ROUTES, extra: str = IDENTITY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "bastion.yaml"
    cfg.write_text(
        config_text(upstream_port, directory / "bastion.db", routes=routes, extra=extra, admin=False),
        encoding="utf-8",
    )
    return cfg


def events_of(cfg: Path, prefix: str) -> list[dict[str, Any]]:
    result = cli("events", "-c", str(cfg), "--json", "--type", prefix, "--limit", "1000")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def dump_database(db: Path) -> str:
    """Every value of every table, as one string."""
    out: list[str] = []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"consumers", "api_keys", "oauth_clients", "events"} <= set(tables)
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # table names come from sqlite_master
                out.extend(v.hex() if isinstance(v, bytes) else str(v) for v in row)
    return "\n".join(out)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)  # a poll interval, not a way to make time pass


def public_jwks() -> dict[str, Any]:
    key = ECKey.generate_key("P-256", parameters={"kid": "client-1"})
    return {"keys": [key.as_dict(private=False)]}


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory, upstream: EchoUpstream) -> Path:
    """A config shared by the module, with a consumer ``shop`` holding orders:read and orders:write."""
    path = write_config(tmp_path_factory.mktemp("identity-cli"), upstream.port)
    ok(path, "consumers", "create", "shop", "--scope", "orders:write", "--scope", "orders:read")
    return path


@pytest.fixture
def fresh(tmp_path: Path, upstream: EchoUpstream) -> Path:
    """A config with an empty store, for tests that count events or scan every table."""
    return write_config(tmp_path, upstream.port)


# -- help ---------------------------------------------------------------------------------------------

GROUPS = {
    "consumers": ["create", "list", "show", "disable", "enable"],
    "keys": ["create", "list", "show", "revoke", "rotate"],
    "clients": ["create", "list", "revoke"],
}
LEAVES = [(group, name) for group, names in GROUPS.items() for name in names]


class TestHelp:
    def test_groups_are_listed_at_the_top(self) -> None:
        result = cli("--help")
        assert result.exit_code == 0
        for group in GROUPS:
            assert f"  {group}" in result.stdout

    @pytest.mark.parametrize("group", sorted(GROUPS))
    def test_group_help_lists_its_commands(self, group: str) -> None:
        result = cli(group, "--help")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage:")
        for name in GROUPS[group]:
            assert f"  {name}" in result.stdout, (group, name)

    @pytest.mark.parametrize(("group", "name"), LEAVES, ids=[f"{g}-{n}" for g, n in LEAVES])
    def test_command_help(self, group: str, name: str) -> None:
        result = cli(group, name, "--help")
        assert result.exit_code == 0, result.output
        first = result.stdout.splitlines()[0]
        assert first.startswith("Usage:") and f"{group} {name}" in first
        assert "-c, --config" in result.stdout
        assert "--json" in result.stdout


# -- consumers ----------------------------------------------------------------------------------------


class TestConsumers:
    def test_create_json(self, cfg: Path) -> None:
        doc = ok(
            cfg,
            "consumers",
            "create",
            "acme",
            "--scope",
            "b:w",
            "--scope",
            "a:r",
            "--allow-ip",
            "10.1.0.0/16",
            "--allow-ip",
            "192.0.2.7",
        )
        assert doc["name"] == "acme"
        assert doc["status"] == "active"
        assert doc["scopes"] == ["a:r", "b:w"]
        assert doc["ip_allow"] == ["10.1.0.0/16", "192.0.2.7/32"]
        assert doc["created_by"] == ACTOR
        assert ok(cfg, "consumers", "show", "acme")["id"] == doc["id"]

    def test_create_text(self, cfg: Path) -> None:
        result = cli("consumers", "create", "textual", "--scope", "a:r", "-c", str(cfg))
        assert result.exit_code == 0, result.output
        assert "created consumer textual" in result.stdout
        assert "a:r" in result.stdout

    def test_duplicate_is_refused(self, cfg: Path) -> None:
        line = one_line(fails(cfg, "consumers", "create", "shop", "--scope", "a:r"))
        assert "shop" in line and "already exists" in line

    @pytest.mark.parametrize("cidr", ["10.0.0.1/8", "not-an-ip", "300.1.1.1"])
    def test_bad_allow_ip(self, cfg: Path, cidr: str) -> None:
        line = one_line(fails(cfg, "consumers", "create", "badnet", "--allow-ip", cidr))
        assert cidr in line
        assert not any(c["name"] == "badnet" for c in ok(cfg, "consumers", "list"))

    @pytest.mark.parametrize("name", ["has space", ".leading-dot", "x" * 65, "semi;colon"])
    def test_bad_name(self, cfg: Path, name: str) -> None:
        one_line(fails(cfg, "consumers", "create", name))

    def test_bad_scope(self, cfg: Path) -> None:
        one_line(fails(cfg, "consumers", "create", "badscope", "--scope", "has space"))

    def test_list(self, cfg: Path) -> None:
        names = [c["name"] for c in ok(cfg, "consumers", "list")]
        assert "shop" in names
        assert names == sorted(names)
        result = cli("consumers", "list", "-c", str(cfg))
        assert result.exit_code == 0
        assert "shop" in result.stdout and "orders:read" in result.stdout

    def test_show_includes_keys(self, cfg: Path) -> None:
        ok(cfg, "consumers", "create", "shown", "--scope", "a:r")
        created = ok(cfg, "keys", "create", "--consumer", "shown")
        doc = ok(cfg, "consumers", "show", "shown")
        assert [k["id"] for k in doc["keys"]] == [created["id"]]
        assert created["key"] not in json.dumps(doc)
        result = cli("consumers", "show", "shown", "-c", str(cfg))
        assert result.exit_code == 0
        assert "shown (active)" in result.stdout and created["id"] in result.stdout
        assert created["key"] not in result.stdout

    def test_change_output_is_the_stored_record(self, cfg: Path) -> None:
        ok(cfg, "consumers", "create", "recorded", "--scope", "a:r")
        for command in ("disable", "enable"):
            changed = ok(cfg, "consumers", command, "recorded")
            shown = ok(cfg, "consumers", "show", "recorded")
            del shown["keys"]
            assert changed == shown, command

    def test_disable_and_enable(self, cfg: Path) -> None:
        ok(cfg, "consumers", "create", "toggle", "--scope", "a:r")
        assert ok(cfg, "consumers", "disable", "toggle")["status"] == "disabled"
        assert ok(cfg, "consumers", "show", "toggle")["status"] == "disabled"
        result = cli("consumers", "enable", "toggle", "-c", str(cfg))
        assert result.exit_code == 0
        assert "enabled consumer toggle" in result.stdout
        assert ok(cfg, "consumers", "show", "toggle")["status"] == "active"


# -- keys ---------------------------------------------------------------------------------------------


class TestKeys:
    def test_create_json_shape_and_record(self, cfg: Path) -> None:
        before = time.time()
        doc = ok(
            cfg,
            "keys",
            "create",
            "--consumer",
            "shop",
            "--scope",
            "orders:read",
            "--ttl",
            "30d",
            "--allow-ip",
            "127.0.0.0/8",
            "--permission",
            "GET /x/*",
            "--name",
            "ci",
        )
        after = time.time()
        assert set(doc) == {"id", "key", "expires_at"}
        assert parse_api_key(doc["key"]) == doc["id"]
        assert before + 30 * DAY <= doc["expires_at"] <= after + 30 * DAY
        record = ok(cfg, "keys", "show", doc["id"])
        assert record["consumer"] == "shop"
        assert record["scopes"] == ["orders:read"]
        assert record["permissions"] == ["GET /x/*"]
        assert record["ip_allow"] == ["127.0.0.0/8"]
        assert record["name"] == "ci"
        assert record["created_by"] == ACTOR
        assert record["expires_at"] == doc["expires_at"]
        assert record["revoked_at"] is None and record["rotated_to"] is None

    def test_defaults_are_the_consumers_scopes_and_the_max_ttl(self, cfg: Path) -> None:
        before = time.time()
        doc = ok(cfg, "keys", "create", "--consumer", "shop")
        assert before + 90 * DAY <= doc["expires_at"] <= time.time() + 90 * DAY
        assert ok(cfg, "keys", "show", doc["id"])["scopes"] == ["orders:read", "orders:write"]

    def test_every_key_is_new(self, cfg: Path) -> None:
        a = ok(cfg, "keys", "create", "--consumer", "shop")
        b = ok(cfg, "keys", "create", "--consumer", "shop")
        assert a["id"] != b["id"]
        assert a["key"].split("_")[2] != b["key"].split("_")[2]

    def test_text_mode_shows_the_key_once_with_a_warning(self, cfg: Path) -> None:
        result = cli("keys", "create", "--consumer", "shop", "-c", str(cfg))
        assert result.exit_code == 0, result.output
        [key] = [word for word in result.stdout.split() if word.startswith("bst_")]
        key_id = parse_api_key(key)
        assert key_id is not None
        assert result.stdout.count(key) == 1
        assert "only time" in result.stdout
        assert key_id in result.stdout.replace(key, "")

    def test_list_never_shows_keys_or_digests(self, cfg: Path) -> None:
        created = [ok(cfg, "keys", "create", "--consumer", "shop") for _ in range(2)]
        peppers = Peppers(PEPPER)
        for args in (("keys", "list"), ("keys", "list", "--consumer", "shop")):
            rows = ok(cfg, *args)
            text = json.dumps(rows)
            assert {c["id"] for c in created} <= {r["id"] for r in rows}
            assert "digest" not in text
            for c in created:
                assert c["key"] not in text
                assert c["key"].split("_")[2] not in text
                assert peppers.key_digest(c["key"]).hex() not in text
            table = cli(*args, "-c", str(cfg))
            assert table.exit_code == 0
            for c in created:
                assert c["key"] not in table.stdout
                assert c["key"].split("_")[2][:20] not in table.stdout

    def test_list_for_one_consumer(self, cfg: Path) -> None:
        ok(cfg, "consumers", "create", "lister", "--scope", "a:r")
        mine = ok(cfg, "keys", "create", "--consumer", "lister")
        rows = ok(cfg, "keys", "list", "--consumer", "lister")
        assert [r["id"] for r in rows] == [mine["id"]]
        assert rows[0]["consumer"] == "lister"

    def test_revoke(self, cfg: Path) -> None:
        doc = ok(cfg, "keys", "create", "--consumer", "shop")
        out = ok(cfg, "keys", "revoke", doc["id"])
        assert out["id"] == doc["id"]
        assert out["revoked_at"] is not None
        assert out["revoked_by"] == ACTOR
        assert ok(cfg, "keys", "show", doc["id"])["revoked_at"] == out["revoked_at"]
        again = ok(cfg, "keys", "revoke", doc["id"])  # idempotent: the first revocation stands
        assert again["revoked_at"] == out["revoked_at"]
        text = cli("keys", "revoke", doc["id"], "-c", str(cfg))
        assert text.exit_code == 0 and doc["id"] in text.stdout

    def test_rotate_with_grace(self, cfg: Path) -> None:
        old = ok(
            cfg,
            "keys",
            "create",
            "--consumer",
            "shop",
            "--scope",
            "orders:read",
            "--permission",
            "GET /x/*",
            "--allow-ip",
            "127.0.0.1",
        )
        before = time.time()
        new = ok(cfg, "keys", "rotate", old["id"], "--grace", "1h")
        after = time.time()
        assert set(new) == {"id", "key", "expires_at"}
        assert parse_api_key(new["key"]) == new["id"] != old["id"]
        assert before + 90 * DAY <= new["expires_at"] <= after + 90 * DAY
        old_record = ok(cfg, "keys", "show", old["id"])
        assert old_record["rotated_to"] == new["id"]
        assert before + 3600 <= old_record["expires_at"] <= after + 3600
        assert old_record["revoked_at"] is None
        new_record = ok(cfg, "keys", "show", new["id"])
        assert new_record["rotated_from"] == old["id"]
        for field in ("consumer", "scopes", "permissions", "ip_allow"):
            assert new_record[field] == old_record[field], field

    def test_rotate_grace_defaults_to_the_config(self, cfg: Path) -> None:
        old = ok(cfg, "keys", "create", "--consumer", "shop")
        before = time.time()
        ok(cfg, "keys", "rotate", old["id"])
        expires = ok(cfg, "keys", "show", old["id"])["expires_at"]
        assert before + 2 * 3600 <= expires <= time.time() + 2 * 3600  # identity.rotation_grace: 2h

    def test_rotate_text_mode_shows_the_new_key_once(self, cfg: Path) -> None:
        old = ok(cfg, "keys", "create", "--consumer", "shop")
        result = cli("keys", "rotate", old["id"], "-c", str(cfg))
        assert result.exit_code == 0, result.output
        [key] = [word for word in result.stdout.split() if word.startswith("bst_")]
        assert parse_api_key(key) == ok(cfg, "keys", "show", old["id"])["rotated_to"]
        assert result.stdout.count(key) == 1 and "only time" in result.stdout

    def test_rotate_twice_or_after_revocation_is_refused(self, cfg: Path) -> None:
        old = ok(cfg, "keys", "create", "--consumer", "shop")
        ok(cfg, "keys", "rotate", old["id"], "--grace", "1h")
        assert "already rotated" in one_line(fails(cfg, "keys", "rotate", old["id"]))
        revoked = ok(cfg, "keys", "create", "--consumer", "shop")
        ok(cfg, "keys", "revoke", revoked["id"])
        assert "revoked" in one_line(fails(cfg, "keys", "rotate", revoked["id"]))

    def test_scope_beyond_the_consumers_is_refused(self, cfg: Path) -> None:
        count = len(ok(cfg, "keys", "list"))
        line = one_line(
            fails(
                cfg, "keys", "create", "--consumer", "shop", "--scope", "orders:read", "--scope", "admin:all"
            )
        )
        assert "admin:all" in line
        assert "orders:read" not in line
        assert len(ok(cfg, "keys", "list")) == count

    def test_ttl_beyond_the_maximum(self, cfg: Path) -> None:
        line = one_line(fails(cfg, "keys", "create", "--consumer", "shop", "--ttl", "1000d"))
        assert "max_key_ttl" in line

    @pytest.mark.parametrize("ttl", ["banana", "30 days", "-1d"])
    def test_ttl_that_is_not_a_duration_is_a_usage_error(self, cfg: Path, ttl: str) -> None:
        stderr = fails(cfg, "keys", "create", "--consumer", "shop", "--ttl", ttl, code=2)
        assert "--ttl" in stderr

    def test_grace_that_is_not_a_duration_is_a_usage_error(self, cfg: Path) -> None:
        old = ok(cfg, "keys", "create", "--consumer", "shop")
        assert "--grace" in fails(cfg, "keys", "rotate", old["id"], "--grace", "soon", code=2)
        assert ok(cfg, "keys", "show", old["id"])["rotated_to"] is None

    @pytest.mark.parametrize("permission", ["GET", "FETCH /x", "GET x/y", ""])
    def test_bad_permission(self, cfg: Path, permission: str) -> None:
        one_line(fails(cfg, "keys", "create", "--consumer", "shop", "--permission", permission))

    def test_bad_allow_ip(self, cfg: Path) -> None:
        line = one_line(fails(cfg, "keys", "create", "--consumer", "shop", "--allow-ip", "10.0.0.1/8"))
        assert "10.0.0.1/8" in line

    def test_consumer_option_is_required(self, cfg: Path) -> None:
        assert "--consumer" in fails(cfg, "keys", "create", code=2)


class TestUnknownNames:
    @pytest.mark.parametrize(
        "args",
        [
            ("consumers", "show", "nobody"),
            ("consumers", "disable", "nobody"),
            ("consumers", "enable", "nobody"),
            ("keys", "create", "--consumer", "nobody"),
            ("keys", "list", "--consumer", "nobody"),
            ("keys", "show", "AAAAAAAAAAAA"),
            ("keys", "revoke", "AAAAAAAAAAAA"),
            ("keys", "rotate", "AAAAAAAAAAAA"),
            ("clients", "create", "--consumer", "nobody"),
            ("clients", "list", "--consumer", "nobody"),
            ("clients", "revoke", "bcl_nothing"),
        ],
        ids=lambda a: "-".join(a[:2]),
    )
    def test_one_readable_line(self, cfg: Path, args: tuple[str, ...]) -> None:
        line = one_line(fails(cfg, *args))
        assert "no such" in line.lower()


class TestPepper:
    def test_keys_and_clients_need_a_pepper(self, tmp_path: Path, upstream: EchoUpstream) -> None:
        cfg = write_config(tmp_path, upstream.port, routes=NO_PEPPER_ROUTES, extra="")
        ok(cfg, "consumers", "create", "shop", "--scope", "a:r")  # consumers need no pepper
        for args in (("keys", "create", "--consumer", "shop"), ("clients", "create", "--consumer", "shop")):
            assert "identity.pepper must be configured" in one_line(fails(cfg, *args))
        assert ok(cfg, "keys", "list") == []
        assert ok(cfg, "clients", "list") == []

    def test_api_key_routes_without_a_pepper_are_a_config_error(
        self, tmp_path: Path, upstream: EchoUpstream
    ) -> None:
        cfg = write_config(tmp_path, upstream.port, extra="")
        stderr = fails(cfg, "keys", "create", "--consumer", "shop")
        assert "identity.pepper is required" in stderr
        assert "Traceback" not in stderr

    def test_pepper_from_a_missing_variable(self, cfg: Path) -> None:
        result = cli("keys", "list", "-c", str(cfg), env={"BASTION_PEPPER": None})
        assert result.exit_code == 1
        assert "BASTION_PEPPER" in result.stderr
        assert "Traceback" not in result.output


# -- OAuth clients ------------------------------------------------------------------------------------


class TestClients:
    def test_create_json(self, cfg: Path) -> None:
        doc = ok(cfg, "clients", "create", "--consumer", "shop", "--scope", "orders:read")
        assert set(doc) == {"client_id", "client_secret"}
        assert doc["client_id"].startswith("bcl_")
        assert doc["client_secret"].startswith("bcs_") and len(doc["client_secret"]) >= 40
        [row] = [c for c in ok(cfg, "clients", "list") if c["client_id"] == doc["client_id"]]
        assert row["consumer"] == "shop"
        assert row["scopes"] == ["orders:read"]
        assert row["auth_method"] == "client_secret_basic"
        assert row["created_by"] == ACTOR

    def test_create_text_shows_the_secret_once(self, cfg: Path) -> None:
        result = cli("clients", "create", "--consumer", "shop", "-c", str(cfg))
        assert result.exit_code == 0, result.output
        [secret] = [w for w in result.stdout.split() if w.startswith("bcs_")]
        assert result.stdout.count(secret) == 1
        assert "only time" in result.stdout

    def test_create_with_jwks(self, cfg: Path, tmp_path: Path) -> None:
        jwks = tmp_path / "client.jwks.json"
        jwks.write_text(json.dumps(public_jwks()), encoding="utf-8")
        doc = ok(cfg, "clients", "create", "--consumer", "shop", "--jwks", str(jwks))
        assert doc["client_secret"] is None
        [row] = [c for c in ok(cfg, "clients", "list") if c["client_id"] == doc["client_id"]]
        assert row["auth_method"] == "private_key_jwt"
        text = cli("clients", "create", "--consumer", "shop", "--jwks", str(jwks), "-c", str(cfg))
        assert text.exit_code == 0
        assert "private_key_jwt" in text.stdout and "bcs_" not in text.stdout

    def test_jwks_with_a_private_key_is_refused(self, cfg: Path, tmp_path: Path) -> None:
        private = tmp_path / "private.json"
        key = ECKey.generate_key("P-256")
        private.write_text(json.dumps({"keys": [key.as_dict(private=True)]}), encoding="utf-8")
        assert "public keys only" in one_line(
            fails(cfg, "clients", "create", "--consumer", "shop", "--jwks", str(private))
        )

    def test_jwks_that_is_not_json_is_a_usage_error(self, cfg: Path, tmp_path: Path) -> None:
        bad = tmp_path / "bad.json"
        bad.write_text("{not json", encoding="utf-8")
        assert "--jwks" in fails(cfg, "clients", "create", "--consumer", "shop", "--jwks", str(bad), code=2)
        missing = tmp_path / "missing.json"
        fails(cfg, "clients", "create", "--consumer", "shop", "--jwks", str(missing), code=2)

    def test_scope_beyond_the_consumers_is_refused(self, cfg: Path) -> None:
        line = one_line(fails(cfg, "clients", "create", "--consumer", "shop", "--scope", "root:all"))
        assert "root:all" in line

    def test_list_never_shows_secrets(self, cfg: Path) -> None:
        doc = ok(cfg, "clients", "create", "--consumer", "shop")
        rows = ok(cfg, "clients", "list", "--consumer", "shop")
        text = json.dumps(rows)
        assert doc["client_id"] in text
        assert doc["client_secret"] not in text
        assert "digest" not in text and "secret" not in text.replace("client_secret_basic", "")
        assert Peppers(PEPPER).client_secret_digest(doc["client_secret"]).hex() not in text
        table = cli("clients", "list", "-c", str(cfg))
        assert table.exit_code == 0
        assert doc["client_id"] in table.stdout and doc["client_secret"] not in table.stdout

    def test_revoke(self, cfg: Path) -> None:
        doc = ok(cfg, "clients", "create", "--consumer", "shop")
        out = ok(cfg, "clients", "revoke", doc["client_id"])
        assert out["client_id"] == doc["client_id"]
        assert out["revoked_at"] is not None and out["revoked_by"] == ACTOR
        [row] = [c for c in ok(cfg, "clients", "list") if c["client_id"] == doc["client_id"]]
        assert row["revoked_at"] == out["revoked_at"]
        text = cli("clients", "revoke", doc["client_id"], "-c", str(cfg))
        assert text.exit_code == 0 and doc["client_id"] in text.stdout


# -- events and the store -------------------------------------------------------------------------------


class TestAudit:
    def test_every_change_is_an_event_with_the_cli_actor(self, fresh: Path) -> None:
        ok(fresh, "consumers", "create", "audited", "--scope", "a:r")
        ok(fresh, "consumers", "disable", "audited")
        ok(fresh, "consumers", "enable", "audited")
        key = ok(fresh, "keys", "create", "--consumer", "audited")
        new = ok(fresh, "keys", "rotate", key["id"], "--grace", "1h")
        ok(fresh, "keys", "revoke", new["id"])
        client = ok(fresh, "clients", "create", "--consumer", "audited")
        ok(fresh, "clients", "revoke", client["client_id"])
        # Reads are not changes: they leave no event.
        ok(fresh, "consumers", "list")
        ok(fresh, "keys", "list")
        ok(fresh, "clients", "list")

        consumers = events_of(fresh, "consumer.")
        assert sorted(e["type"] for e in consumers) == [
            "consumer.created",
            "consumer.disabled",
            "consumer.enabled",
        ]
        keys = {e["type"]: e for e in events_of(fresh, "api_key.")}
        assert set(keys) == {"api_key.created", "api_key.rotated", "api_key.revoked"}
        assert keys["api_key.created"]["data"]["key_id"] == key["id"]
        assert keys["api_key.rotated"]["data"]["key_id"] == key["id"]
        assert keys["api_key.rotated"]["data"]["new_key_id"] == new["id"]
        assert keys["api_key.revoked"]["data"]["key_id"] == new["id"]
        clients = events_of(fresh, "client.")
        assert sorted(e["type"] for e in clients) == ["client.created", "client.revoked"]
        for event in [*consumers, *keys.values(), *clients]:
            assert event["actor"] == ACTOR, event
        everything = json.dumps(events_of(fresh, ""))
        assert key["key"] not in everything and new["key"] not in everything
        assert client["client_secret"] not in everything

    def test_failed_commands_leave_no_change_event(self, fresh: Path) -> None:
        ok(fresh, "consumers", "create", "quiet", "--scope", "a:r")
        fails(fresh, "keys", "create", "--consumer", "quiet", "--scope", "b:w")
        fails(fresh, "keys", "create", "--consumer", "quiet", "--ttl", "1000d")
        fails(fresh, "keys", "revoke", "AAAAAAAAAAAA")
        assert events_of(fresh, "api_key.") == []

    def test_the_store_never_holds_a_key_or_a_client_secret(self, fresh: Path) -> None:
        ok(fresh, "consumers", "create", "vault", "--scope", "a:r", "--scope", "b:w")
        keys = [ok(fresh, "keys", "create", "--consumer", "vault") for _ in range(3)]
        keys.append(ok(fresh, "keys", "rotate", keys[0]["id"], "--grace", "1h"))
        text_mode = cli("keys", "create", "--consumer", "vault", "-c", str(fresh))
        keys.extend({"key": w} for w in text_mode.stdout.split() if w.startswith("bst_"))
        secrets = [ok(fresh, "clients", "create", "--consumer", "vault")["client_secret"] for _ in range(2)]
        assert len(keys) == 5 and len(secrets) == 2
        dump = dump_database(fresh.parent / "bastion.db")
        peppers = Peppers(PEPPER)
        for k in keys:
            secret_part = k["key"].split("_")[2]
            assert k["key"] not in dump
            assert secret_part not in dump and secret_part[:24] not in dump
            assert peppers.key_digest(k["key"]).hex() in dump  # what is stored: the keyed digest
        for s in secrets:
            assert s not in dump and s[4:28] not in dump
            assert peppers.client_secret_digest(s).hex() in dump
        assert PEPPER not in dump


# -- a running gateway picks CLI changes up ----------------------------------------------------------------


class TestRunningGateway:
    def test_cli_changes_reach_a_running_gateway(self, fresh: Path, upstream: EchoUpstream) -> None:
        loaded = load_text(fresh.read_text(encoding="utf-8"), env={"BASTION_PEPPER": PEPPER})
        with GatewayThread(loaded) as gw:

            def status(key: str) -> int:
                return request(gw.port, "GET", "/x/1", headers={"X-API-Key": key})[0]

            ok(fresh, "consumers", "create", "live", "--scope", "orders:read")
            key = ok(fresh, "keys", "create", "--consumer", "live")["key"]
            wait_for(lambda: status(key) == 200, what="the new key to work")
            _, _, headers = upstream.requests[-1]
            forwarded = {k.lower(): v for k, v in headers}
            assert forwarded["x-bastion-consumer"] == "live"
            assert "x-api-key" not in forwarded

            # Rotation: the new key works, and the old one during the grace period.
            rotated = ok(fresh, "keys", "rotate", parse_api_key(key) or "", "--grace", "1h")["key"]
            wait_for(lambda: status(rotated) == 200, what="the rotated key to work")
            assert status(key) == 200

            # Disabling the consumer stops its keys; enabling brings them back.
            ok(fresh, "consumers", "disable", "live")
            wait_for(lambda: status(rotated) == 401, what="the disabled consumer's key to fail")
            ok(fresh, "consumers", "enable", "live")
            wait_for(lambda: status(rotated) == 200, what="the re-enabled consumer's key to work")

            # Revocation.
            ok(fresh, "keys", "revoke", parse_api_key(rotated) or "")
            wait_for(lambda: status(rotated) == 401, what="the revoked key to fail")
            assert status(key) == 200  # the other key is untouched
