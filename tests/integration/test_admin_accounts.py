"""Admin accounts in a real store (SQLite and PostgreSQL): creation and roles, argon2id passwords and their
strength, lockout, TOTP enrolment (URI, QR code, first code, recovery codes), replay of TOTP codes,
single-use recovery codes, sessions with idle and absolute limits, and what the store holds (digests and
ciphertext, never a secret). Time is injected; nothing sleeps.

The helpers at the bottom (a gateway with admin accounts, a signed-in HTTP client) are shared by the other
admin-account test modules.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select

from bastion.config.models import AdminAccountSettings
from bastion.identity.admin_passwords import PasswordTooWeak, check_password_strength
from bastion.identity.admin_sessions import AdminSessions
from bastion.identity.admins import AdminAccounts, AdminKeys, SignInFailed
from bastion.identity.manage import IdentityError
from bastion.store.database import migrate, open_database
from bastion.store.schema import admin_accounts_table, admin_recovery_codes_table, admin_sessions_table

from ..support import EchoUpstream, GatewayThread, config_text, load_text

PEPPER = "admin-accounts-pepper-0123456789"  # a test fixture, not a secret
PASSWORD = "tulip gravel ocean lamp"  # passes the strength check; a test fixture
T0 = 1_800_000_000.0
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)  # still argon2id


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, **fields: Any) -> None:
        self.items.append((event_type, fields))

    def types(self) -> list[str]:
        return [t for t, _ in self.items]

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [f for t, f in self.items if t == event_type]

    def text(self) -> str:
        return json.dumps(self.items, default=str)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = open_database(f"sqlite:///{tmp_path / 'admins.db'}")
        yield eng
        eng.dispose()
        return
    import psycopg

    name = "bastion_admins_" + secrets.token_hex(5)
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432: {exc}")
    eng = open_database(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", migrate_schema=False)
    migrate(eng)  # every migration, 0007 included, applies on PostgreSQL
    try:
        yield eng
    finally:
        eng.dispose()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> Events:
    return Events()


SETTINGS = AdminAccountSettings(lockout_failures=3, lockout_within=600, lockout_for=900)


@pytest.fixture
def accounts(engine: Engine, clock: FakeClock, events: Events) -> AdminAccounts:
    return AdminAccounts(engine, AdminKeys(PEPPER), SETTINGS, emit=events, clock=clock, hasher=FAST_HASHER)


@pytest.fixture
def sessions(engine: Engine, clock: FakeClock, events: Events) -> AdminSessions:
    return AdminSessions(engine, AdminKeys(PEPPER), SETTINGS, emit=events, clock=clock)


def row(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(
            conn.execute(select(admin_accounts_table).where(admin_accounts_table.c.name == name))
            .mappings()
            .one()
        )


def enrol(accounts: AdminAccounts, admin_id: str) -> tuple[pyotp.TOTP, list[str]]:
    """Enrol TOTP the way a person does: read the URI, type the current code."""
    enrolment = accounts.begin_totp(admin_id)
    secret = parse_qs(urlsplit(enrolment.otpauth_uri).query)["secret"][0]
    totp = pyotp.TOTP(secret)
    codes = accounts.confirm_totp(admin_id, totp.at(accounts.clock()), actor="admin:x", source_ip=None)
    return totp, codes


# -- passwords ------------------------------------------------------------------------------------------


class TestPasswordStrength:
    @pytest.mark.parametrize(
        "password",
        [
            "short",
            "password1234",
            "P@ssw0rd2024!",
            "MyPassword2024!",
            "qwertyuiop123",
            "aaaaaaaaaaaaaaaa",
            "ab12ab12ab12ab12",
            "1234567890abc",
            "Welcome2026!!",
        ],
    )
    def test_weak_passwords_are_refused(self, password: str) -> None:
        with pytest.raises(PasswordTooWeak) as exc:
            check_password_strength(password)
        assert password not in str(exc.value)  # the message never echoes it

    def test_the_account_name_and_address_are_refused(self) -> None:
        with pytest.raises(PasswordTooWeak, match="name or address"):
            check_password_strength("alice-fjord-quartz", user_inputs=("alice", "alice@example.com"))

    @pytest.mark.parametrize("password", [PASSWORD, "Zk3!vq9#Lm2p", secrets.token_urlsafe(18)])
    def test_strong_passwords_pass(self, password: str) -> None:
        check_password_strength(password, user_inputs=("alice", "alice@example.com"))


# -- accounts -------------------------------------------------------------------------------------------


class TestAccounts:
    def test_create_stores_an_argon2id_hash_and_shows_no_secret(
        self, accounts: AdminAccounts, engine: Engine, events: Events
    ) -> None:
        record, generated = accounts.create(
            "alice", "Alice@Example.com", "operator", password=PASSWORD, actor="cli:root"
        )
        assert generated is None
        assert record["email"] == "alice@example.com" and record["role"] == "operator"
        assert record["password"] is True and record["mfa"] is False
        assert not {"password_hash", "totp_secret"} & set(record)
        stored = row(engine, "alice")
        assert stored["password_hash"].startswith("$argon2id$")
        assert PASSWORD not in json.dumps(stored, default=str)
        assert events.of("admin_account.created")[0]["actor"] == "cli:root"
        assert PASSWORD not in events.text()

    def test_generated_password_is_returned_once_and_works(self, accounts: AdminAccounts) -> None:
        _, generated = accounts.create("gen", "gen@example.com", "viewer", generate=True, actor="cli:root")
        assert generated is not None and len(generated) >= 20
        assert accounts.sign_in_password("gen@example.com", generated, source_ip="127.0.0.1")["name"] == "gen"
        assert accounts.get("gen")["password"] is True

    @pytest.mark.parametrize(
        ("name", "email", "role", "code"),
        [
            ("bad name", "a@example.com", "viewer", "invalid_name"),
            ("token", "a@example.com", "viewer", "invalid_name"),
            ("ok", "not-an-address", "viewer", "invalid_email"),
            ("ok", "a@example.com", "root", "invalid_role"),
        ],
    )
    def test_invalid_accounts(
        self, accounts: AdminAccounts, name: str, email: str, role: str, code: str
    ) -> None:
        with pytest.raises(IdentityError) as exc:
            accounts.create(name, email, role, actor="cli:root")
        assert exc.value.code == code

    def test_weak_password_is_a_400(self, accounts: AdminAccounts) -> None:
        with pytest.raises(IdentityError) as exc:
            accounts.create("bob", "bob@example.com", "viewer", password="password1234", actor="cli:root")
        assert (exc.value.status, exc.value.code) == (400, "weak_password")

    def test_duplicates_conflict(self, accounts: AdminAccounts) -> None:
        accounts.create("carol", "carol@example.com", "viewer", actor="cli:root")
        for name, email in (("carol", "other@example.com"), ("other", "CAROL@example.com")):
            with pytest.raises(IdentityError) as exc:
                accounts.create(name, email, "viewer", actor="cli:root")
            assert exc.value.code == "conflict"

    def test_role_and_status_changes_are_events(self, accounts: AdminAccounts, events: Events) -> None:
        accounts.create("dave", "dave@example.com", "viewer", actor="cli:root")
        assert accounts.set_role("dave", "admin", actor="admin:alice")["role"] == "admin"
        assert accounts.set_active("dave", False, actor="admin:alice")["status"] == "disabled"
        assert events.types()[-2:] == ["admin_account.role_changed", "admin_account.disabled"]
        assert events.of("admin_account.role_changed")[0]["actor"] == "admin:alice"


# -- signing in -----------------------------------------------------------------------------------------


class TestPasswordSignIn:
    def test_right_password(self, accounts: AdminAccounts) -> None:
        accounts.create("erin", "erin@example.com", "viewer", password=PASSWORD, actor="cli:root")
        assert (
            accounts.sign_in_password(" ERIN@example.com ", PASSWORD, source_ip="127.0.0.1")["name"] == "erin"
        )

    @pytest.mark.parametrize(
        ("email", "password", "reason"),
        [
            ("erin@example.com", "wrong password here", "bad_password"),
            ("nobody@example.com", PASSWORD, "unknown_account"),
        ],
    )
    def test_failures_look_alike(
        self, accounts: AdminAccounts, events: Events, email: str, password: str, reason: str
    ) -> None:
        accounts.create("erin", "erin@example.com", "viewer", password=PASSWORD, actor="cli:root")
        with pytest.raises(SignInFailed) as exc:
            accounts.sign_in_password(email, password, source_ip="127.0.0.1")
        assert exc.value.reason == reason
        assert events.of("admin_auth.sign_in_failed")[-1]["reason"] == reason
        assert password not in events.text()

    def test_a_passwordless_account_refuses_every_password(self, accounts: AdminAccounts) -> None:
        accounts.create("pl", "pl@example.com", "viewer", actor="cli:root")
        with pytest.raises(SignInFailed) as exc:
            accounts.sign_in_password("pl@example.com", "", source_ip=None)
        assert exc.value.reason == "no_password"

    def test_disabled_account_refuses_the_right_password(self, accounts: AdminAccounts) -> None:
        accounts.create("fay", "fay@example.com", "viewer", password=PASSWORD, actor="cli:root")
        accounts.set_active("fay", False, actor="cli:root")
        with pytest.raises(SignInFailed) as exc:
            accounts.sign_in_password("fay@example.com", PASSWORD, source_ip=None)
        assert exc.value.reason == "disabled"

    def test_lockout_after_the_limit_then_unlocks(
        self, accounts: AdminAccounts, clock: FakeClock, events: Events, engine: Engine
    ) -> None:
        accounts.create("gus", "gus@example.com", "admin", password=PASSWORD, actor="cli:root")
        for _ in range(SETTINGS.lockout_failures):
            with pytest.raises(SignInFailed):
                accounts.sign_in_password("gus@example.com", "not the password!", source_ip="198.51.100.7")
        locked = events.of("admin_auth.locked")
        assert len(locked) == 1 and locked[0]["actor"] == "admin:gus" and locked[0]["severity"] == "error"
        assert row(engine, "gus")["locked_until"] == T0 + SETTINGS.lockout_for
        with pytest.raises(SignInFailed) as exc:  # the right password, while locked
            accounts.sign_in_password("gus@example.com", PASSWORD, source_ip="198.51.100.7")
        assert exc.value.reason == "locked"
        clock.now += SETTINGS.lockout_for + 1
        assert accounts.sign_in_password("gus@example.com", PASSWORD, source_ip=None)["name"] == "gus"

    def test_failures_outside_the_window_do_not_add_up(
        self, accounts: AdminAccounts, clock: FakeClock
    ) -> None:
        accounts.create("hal", "hal@example.com", "viewer", password=PASSWORD, actor="cli:root")
        for _ in range(SETTINGS.lockout_failures * 2):
            with pytest.raises(SignInFailed) as exc:
                accounts.sign_in_password("hal@example.com", "not the password!", source_ip=None)
            assert exc.value.reason == "bad_password"  # never locked
            clock.now += SETTINGS.lockout_within / (SETTINGS.lockout_failures - 1) + 1

    def test_enabling_unlocks(self, accounts: AdminAccounts) -> None:
        accounts.create("ivy", "ivy@example.com", "viewer", password=PASSWORD, actor="cli:root")
        for _ in range(SETTINGS.lockout_failures):
            with pytest.raises(SignInFailed):
                accounts.sign_in_password("ivy@example.com", "not the password!", source_ip=None)
        accounts.set_active("ivy", True, actor="admin:root")
        assert accounts.sign_in_password("ivy@example.com", PASSWORD, source_ip=None)["name"] == "ivy"

    def test_changing_the_password_needs_the_current_one(self, accounts: AdminAccounts) -> None:
        record, _ = accounts.create("jo", "jo@example.com", "viewer", password=PASSWORD, actor="cli:root")
        with pytest.raises(SignInFailed):
            accounts.set_password(
                record["id"], "fjord quartz mellow tide", actor="admin:jo", current="wrong one!!"
            )
        accounts.set_password(record["id"], "fjord quartz mellow tide", actor="admin:jo", current=PASSWORD)
        assert accounts.sign_in_password("jo@example.com", "fjord quartz mellow tide", source_ip=None)


# -- TOTP -------------------------------------------------------------------------------------------------


class TestTotp:
    def test_enrolment_returns_uri_and_qr_and_needs_a_first_code(
        self, accounts: AdminAccounts, engine: Engine, events: Events
    ) -> None:
        record, _ = accounts.create("kim", "kim@example.com", "admin", password=PASSWORD, actor="cli:root")
        enrolment = accounts.begin_totp(record["id"])
        assert enrolment.otpauth_uri.startswith("otpauth://totp/Bastion:kim%40example.com?")
        assert enrolment.qr_svg.startswith("<svg") and "</svg>" in enrolment.qr_svg
        secret = parse_qs(urlsplit(enrolment.otpauth_uri).query)["secret"][0]
        stored = row(engine, "kim")
        assert stored["totp_secret"] is None and stored["totp_pending"] is not None
        assert secret not in json.dumps(stored, default=str)  # encrypted at rest
        with pytest.raises(SignInFailed):
            accounts.confirm_totp(
                record["id"],
                "000000" if pyotp.TOTP(secret).at(T0) != "000000" else "111111",
                actor="admin:kim",
                source_ip=None,
            )
        codes = accounts.confirm_totp(
            record["id"], pyotp.TOTP(secret).at(T0), actor="admin:kim", source_ip=None
        )
        assert len(codes) == 10 and len(set(codes)) == 10
        assert accounts.get("kim")["mfa"] is True
        assert "admin_account.mfa_enrolled" in events.types()
        dumped = events.text()
        assert secret not in dumped and not any(code in dumped for code in codes)
        with engine.connect() as conn:
            digests = [r.digest for r in conn.execute(select(admin_recovery_codes_table)).all()]
        assert len(digests) == 10 and not set(codes) & set(digests)

    def test_a_code_works_once_within_its_window(self, accounts: AdminAccounts, clock: FakeClock) -> None:
        record, _ = accounts.create("lee", "lee@example.com", "admin", password=PASSWORD, actor="cli:root")
        totp, _ = enrol(accounts, record["id"])
        clock.now += 30
        code = totp.at(clock.now)
        assert accounts.verify_second_factor(record["id"], code=code, source_ip=None) == "totp"
        with pytest.raises(SignInFailed):  # the same code again, still inside its window
            accounts.verify_second_factor(record["id"], code=code, source_ip=None)
        clock.now += 30
        with pytest.raises(SignInFailed):  # the previous step's code, though within drift tolerance
            accounts.verify_second_factor(record["id"], code=code, source_ip=None)
        assert accounts.verify_second_factor(record["id"], code=totp.at(clock.now), source_ip=None) == "totp"

    def test_the_enrolment_code_cannot_be_replayed(self, accounts: AdminAccounts, clock: FakeClock) -> None:
        record, _ = accounts.create("max", "max@example.com", "admin", password=PASSWORD, actor="cli:root")
        totp, _ = enrol(accounts, record["id"])
        with pytest.raises(SignInFailed):
            accounts.verify_second_factor(record["id"], code=totp.at(clock.now), source_ip=None)

    def test_recovery_codes_work_once(self, accounts: AdminAccounts, events: Events) -> None:
        record, _ = accounts.create("ned", "ned@example.com", "admin", password=PASSWORD, actor="cli:root")
        _, codes = enrol(accounts, record["id"])
        typed = codes[0].upper().replace("-", " ")  # typed from paper, differently
        assert (
            accounts.verify_second_factor(record["id"], recovery_code=typed, source_ip=None)
            == "recovery_code"
        )
        with pytest.raises(SignInFailed):
            accounts.verify_second_factor(record["id"], recovery_code=codes[0], source_ip=None)
        assert events.of("admin_account.recovery_code_used")[0]["data"] == {"left": 9}

    def test_another_accounts_recovery_code_does_not_work(self, accounts: AdminAccounts) -> None:
        a, _ = accounts.create("oli", "oli@example.com", "admin", password=PASSWORD, actor="cli:root")
        b, _ = accounts.create("pam", "pam@example.com", "admin", password=PASSWORD, actor="cli:root")
        _, codes_a = enrol(accounts, a["id"])
        enrol(accounts, b["id"])
        with pytest.raises(SignInFailed):
            accounts.verify_second_factor(b["id"], recovery_code=codes_a[0], source_ip=None)

    def test_wrong_codes_count_towards_lockout(self, accounts: AdminAccounts, events: Events) -> None:
        record, _ = accounts.create("quin", "quin@example.com", "admin", password=PASSWORD, actor="cli:root")
        enrol(accounts, record["id"])
        for _ in range(SETTINGS.lockout_failures):
            with pytest.raises(SignInFailed):
                accounts.verify_second_factor(record["id"], recovery_code="aaaaa-bbbbb", source_ip=None)
        assert len(events.of("admin_auth.locked")) == 1

    def test_reset_mfa_removes_the_factor_and_sessions(
        self, accounts: AdminAccounts, sessions: AdminSessions, engine: Engine
    ) -> None:
        record, _ = accounts.create("rae", "rae@example.com", "admin", password=PASSWORD, actor="cli:root")
        enrol(accounts, record["id"])
        sid = sessions.create(record["id"], "full", source_ip=None, mfa_at=T0)
        accounts.reset_mfa("rae", actor="cli:root")
        assert accounts.get("rae")["mfa"] is False
        assert sessions.lookup(sid) is None
        with engine.connect() as conn:
            assert conn.execute(select(admin_recovery_codes_table)).all() == []

    def test_a_second_enrolment_is_refused_while_enrolled(self, accounts: AdminAccounts) -> None:
        record, _ = accounts.create("sam", "sam@example.com", "admin", password=PASSWORD, actor="cli:root")
        enrol(accounts, record["id"])
        with pytest.raises(IdentityError) as exc:
            accounts.begin_totp(record["id"])
        assert exc.value.code == "mfa_already_enrolled"


# -- sessions -------------------------------------------------------------------------------------------


class TestSessions:
    def test_only_a_digest_is_stored(
        self, accounts: AdminAccounts, sessions: AdminSessions, engine: Engine
    ) -> None:
        record, _ = accounts.create("tia", "tia@example.com", "viewer", actor="cli:root")
        sid = sessions.create(record["id"], "full", source_ip="127.0.0.1")
        with engine.connect() as conn:
            stored = conn.execute(select(admin_sessions_table)).mappings().one()
        assert sid not in json.dumps(dict(stored), default=str)
        found = sessions.lookup(sid)
        assert found is not None and found.name == "tia" and found.role == "viewer"

    def test_idle_timeout(
        self, accounts: AdminAccounts, sessions: AdminSessions, clock: FakeClock, events: Events
    ) -> None:
        record, _ = accounts.create("uma", "uma@example.com", "viewer", actor="cli:root")
        sid = sessions.create(record["id"], "full", source_ip=None)
        clock.now += SETTINGS.session_idle - 1
        assert sessions.lookup(sid) is not None  # a request restarts the idle clock
        clock.now += SETTINGS.session_idle - 1
        assert sessions.lookup(sid) is not None
        clock.now += SETTINGS.session_idle + 1
        assert sessions.lookup(sid) is None
        assert events.of("admin_auth.session_expired")[0]["reason"] == "idle"

    def test_absolute_timeout_even_when_active(
        self, accounts: AdminAccounts, sessions: AdminSessions, clock: FakeClock
    ) -> None:
        record, _ = accounts.create("val", "val@example.com", "viewer", actor="cli:root")
        sid = sessions.create(record["id"], "full", source_ip=None)
        while clock.now + SETTINGS.session_idle / 2 < T0 + SETTINGS.session_max:
            clock.now += SETTINGS.session_idle / 2
            assert sessions.lookup(sid) is not None
        clock.now = T0 + SETTINGS.session_max
        assert sessions.lookup(sid) is None

    def test_advancing_issues_a_new_id_and_keeps_the_absolute_limit(
        self, accounts: AdminAccounts, sessions: AdminSessions, clock: FakeClock
    ) -> None:
        record, _ = accounts.create("wes", "wes@example.com", "viewer", actor="cli:root")
        old = sessions.create(record["id"], "mfa", source_ip=None)
        clock.now += 60
        found = sessions.lookup(old)
        assert found is not None
        new = sessions.advance(found, "full", mfa_at=clock.now, source_ip=None)
        assert new != old and sessions.lookup(old) is None
        advanced = sessions.lookup(new)
        assert (
            advanced is not None
            and advanced.stage == "full"
            and advanced.expires_at == T0 + SETTINGS.session_max
        )
        assert sessions.csrf_token(new) != sessions.csrf_token(old)

    def test_role_changes_apply_to_live_sessions_and_disabling_ends_them(
        self, accounts: AdminAccounts, sessions: AdminSessions
    ) -> None:
        record, _ = accounts.create("xia", "xia@example.com", "admin", actor="cli:root")
        sid = sessions.create(record["id"], "full", source_ip=None)
        accounts.set_role("xia", "viewer", actor="cli:root")
        found = sessions.lookup(sid)
        assert found is not None and found.role == "viewer"
        accounts.set_active("xia", False, actor="cli:root")
        assert sessions.lookup(sid) is None

    @pytest.mark.parametrize("bogus", ["", "bas_", "bas_" + "A" * 43, "x" * 5000, "bas_\x00"])
    def test_bogus_ids_find_nothing(self, sessions: AdminSessions, bogus: str) -> None:
        assert sessions.lookup(bogus) is None


def test_sqlite_file_holds_no_secret(tmp_path: Path) -> None:
    """Everything the accounts do, then every byte of the database file searched for the secrets."""
    db = tmp_path / "admins.db"
    eng = open_database(f"sqlite:///{db}")
    clock = FakeClock()
    accounts = AdminAccounts(eng, AdminKeys(PEPPER), SETTINGS, clock=clock, hasher=FAST_HASHER)
    sessions = AdminSessions(eng, AdminKeys(PEPPER), SETTINGS, clock=clock)
    record, generated = accounts.create("yan", "yan@example.com", "admin", generate=True, actor="cli:root")
    enrolment = accounts.begin_totp(record["id"])
    secret = parse_qs(urlsplit(enrolment.otpauth_uri).query)["secret"][0]
    codes = accounts.confirm_totp(record["id"], pyotp.TOTP(secret).at(T0), actor="admin:yan", source_ip=None)
    sid = sessions.create(record["id"], "full", source_ip=None)
    eng.dispose()
    conn = sqlite3.connect(db)
    try:
        dumped = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert generated is not None
    for value in (generated, secret, sid, *codes, *(c.replace("-", "") for c in codes)):
        assert value not in dumped
    assert re.search(r"\$argon2id\$", dumped)


# -- shared helpers for the HTTP tests ------------------------------------------------------------------

ADMIN_BLOCK = """
admin:
  listen: 127.0.0.1:0
  token: ${{env:BASTION_ADMIN_TOKEN}}
  allow_ips: [127.0.0.1/32, ::1/128]
  token_enabled: {token_enabled}
  accounts:
    cookie_secure: false
    lockout_failures: {lockout}
    ip_attempts: {ip_attempts}
{accounts_extra}
identity:
  pepper: ${{env:BASTION_PEPPER}}
"""


def admin_gateway(
    upstream: EchoUpstream,
    db: Path,
    *,
    token_enabled: bool = True,
    lockout: int = 5,
    ip_attempts: int = 1000,
    accounts_extra: str = "",
) -> GatewayThread:
    extra = ADMIN_BLOCK.format(
        token_enabled=str(token_enabled).lower(),
        lockout=lockout,
        ip_attempts=ip_attempts,
        accounts_extra=accounts_extra,
    )
    loaded = load_text(
        config_text(upstream.port, db, extra=extra, admin=False), env={"BASTION_PEPPER": PEPPER}
    )
    return GatewayThread(loaded)


def seed(gw: GatewayThread, name: str, role: str, *, password: str | None = PASSWORD) -> dict[str, Any]:
    """An account straight in the gateway's store (as ``bastion admins add`` would make it)."""
    eng = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    try:
        accounts = AdminAccounts(eng, AdminKeys(PEPPER), gw.loaded.settings.admin.accounts)  # type: ignore[union-attr]
        record, _ = accounts.create(name, f"{name}@example.com", role, password=password, actor="cli:test")
        return record
    finally:
        eng.dispose()


class Admin:
    """An HTTP client signed in (or signing in) as one admin account, with its cookie and CSRF token."""

    def __init__(self, gw: GatewayThread) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15)
        self.csrf: str | None = None
        self.totp: pyotp.TOTP | None = None
        self.recovery_codes: list[str] = []
        self._last_step = -1

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        csrf: bool = True,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        hdrs = dict(headers or {})
        if csrf and self.csrf is not None:
            hdrs["x-csrf-token"] = self.csrf
        return self.client.request(method, path, json=body, headers=hdrs)

    def _remember(self, response: httpx.Response) -> httpx.Response:
        if response.status_code == 200 and "csrf_token" in response.json():
            self.csrf = response.json()["csrf_token"]
        return response

    def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        return self._remember(
            self.call("POST", "/admin/v1/auth/login", {"email": email, "password": password})
        )

    def next_code(self) -> str:
        """A TOTP code of a time step not used yet, within the drift window the server accepts (the
        previous, current and next step), so one test can use up to three codes without waiting."""
        import time

        assert self.totp is not None
        now = time.time()
        current = self.totp.timecode(now)  # type: ignore[arg-type]
        earliest = current - 1 if now % self.totp.interval < self.totp.interval - 2 else current
        step = max(earliest, self._last_step + 1)
        if step > current + 1:
            raise AssertionError("no unused TOTP step within the drift window")
        self._last_step = step
        return self.totp.at(step * self.totp.interval)

    def enrol(self) -> httpx.Response:
        begun = self.call("POST", "/admin/v1/auth/mfa/totp")
        assert begun.status_code == 200, begun.text
        secret = parse_qs(urlsplit(begun.json()["otpauth_uri"]).query)["secret"][0]
        self.totp = pyotp.TOTP(secret)
        confirmed = self._remember(
            self.call("POST", "/admin/v1/auth/mfa/totp/confirm", {"code": self.next_code()})
        )
        assert confirmed.status_code == 200, confirmed.text
        self.recovery_codes = confirmed.json()["recovery_codes"]
        return confirmed

    def mfa(self, code: str | None = None) -> httpx.Response:
        return self._remember(self.call("POST", "/admin/v1/auth/mfa", {"code": code or self.next_code()}))


def signed_in(gw: GatewayThread, name: str, role: str) -> Admin:
    """A new account of ``role``, signed in with password and TOTP (enrolled at first sign-in)."""
    seed(gw, name, role)
    admin = Admin(gw)
    first = admin.login(f"{name}@example.com")
    assert first.status_code == 200 and first.json()["stage"] == "enrol", first.text
    assert admin.enrol().json()["stage"] == "full"
    return admin


# -- the CLI ----------------------------------------------------------------------------------------------


class TestCli:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        path = tmp_path / "bastion.yaml"
        path.write_text(
            f"storage: {{database: 'sqlite:///{tmp_path / 'cli.db'}'}}\n"
            f"identity: {{pepper: '{PEPPER}'}}\n"
            "services:\n  - name: s\n    upstream: http://127.0.0.1:9\n"
            "    routes:\n      - {path: /x, methods: [GET], auth: none}\n"
        )
        return path

    def run(self, *args: str, stdin: str | None = None) -> Any:
        from click.testing import CliRunner

        from bastion.adapters.cli import main

        return CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)

    def test_add_prints_the_generated_password_once(self, config: Path) -> None:
        added = self.run(
            "admins",
            "add",
            "root",
            "--email",
            "root@example.com",
            "--role",
            "admin",
            "-c",
            str(config),
            "--json",
        )
        assert added.exit_code == 0, added.output
        out = json.loads(added.stdout)
        password = out["password"]
        assert out["admin"]["role"] == "admin" and password
        listed = self.run("admins", "list", "-c", str(config), "--json")
        assert password not in listed.stdout and json.loads(listed.stdout)[0]["name"] == "root"
        shown = self.run("admins", "list", "-c", str(config))
        assert "root@example.com" in shown.stdout and password not in shown.stdout
        eng = open_database(f"sqlite:///{config.parent / 'cli.db'}")
        try:
            accounts = AdminAccounts(eng, AdminKeys(PEPPER), AdminAccountSettings())
            assert accounts.sign_in_password("root@example.com", password, source_ip=None)["name"] == "root"
        finally:
            eng.dispose()

    def test_password_from_stdin_is_checked_and_never_printed(self, config: Path) -> None:
        weak = self.run(
            "admins",
            "add",
            "w",
            "--email",
            "w@example.com",
            "--role",
            "viewer",
            "--password-stdin",
            "-c",
            str(config),
            stdin="password1234\n",
        )
        assert weak.exit_code == 1 and "common" in weak.stderr and "password1234" not in weak.output
        good = self.run(
            "admins",
            "add",
            "g",
            "--email",
            "g@example.com",
            "--role",
            "viewer",
            "--password-stdin",
            "-c",
            str(config),
            stdin=PASSWORD + "\n",
        )
        assert good.exit_code == 0 and PASSWORD not in good.output and "password:" not in good.stdout

    def test_passwordless_disable_enable_and_reset_mfa(self, config: Path) -> None:
        assert (
            self.run(
                "admins",
                "add",
                "p",
                "--email",
                "p@example.com",
                "--role",
                "operator",
                "--passwordless",
                "-c",
                str(config),
            ).exit_code
            == 0
        )
        disabled = self.run("admins", "disable", "p", "-c", str(config), "--json")
        assert json.loads(disabled.stdout)["status"] == "disabled"
        assert "active" in self.run("admins", "enable", "p", "-c", str(config)).stdout
        reset = self.run("admins", "reset-mfa", "p", "-c", str(config))
        assert reset.exit_code == 0 and "MFA not enrolled" in reset.stdout
        missing = self.run("admins", "disable", "nobody", "-c", str(config))
        assert missing.exit_code == 1 and "No such admin account" in missing.stderr

    def test_needs_a_pepper(self, tmp_path: Path) -> None:
        path = tmp_path / "nopepper.yaml"
        path.write_text(
            f"storage: {{database: 'sqlite:///{tmp_path / 'x.db'}'}}\n"
            "services:\n  - name: s\n    upstream: http://127.0.0.1:9\n"
            "    routes:\n      - {path: /x, methods: [GET], auth: none}\n"
        )
        result = self.run("admins", "list", "-c", str(path))
        assert result.exit_code == 1 and "identity.pepper" in result.stderr


# -- configuration --------------------------------------------------------------------------------------


class TestConfig:
    def test_defaults(self) -> None:
        from bastion.config.models import AdminSettings

        admin = AdminSettings(token="x" * 32)
        assert admin.token_enabled is True
        a = admin.accounts
        assert (a.require_mfa, a.cookie_secure, a.session_idle, a.session_max) == (
            True,
            True,
            1800.0,
            43200.0,
        )
        assert (a.lockout_failures, a.code_digits, a.code_ttl, a.email) == (5, 8, 600.0, None)

    @pytest.mark.parametrize(
        ("block", "message"),
        [
            ("listen: 0.0.0.0:8081\n  accounts: {cookie_secure: false}", "only on a loopback"),
            ("accounts: {session_idle: 2h, session_max: 1h}", "session_idle cannot exceed"),
            ("accounts: {code_digits: 4}", "greater than or equal to 6"),
            ("accounts: {code_ttl: 2h}", "at most 1h"),
            ("accounts: {email: {smtp: 'http://mail'}}", "smtp://host:port"),
            ("accounts: {email: {smtp: 'smtp://u:p@mail:25'}}", "username and password"),
            ("accounts: {unknown_key: 1}", "unknown_key"),
        ],
    )
    def test_mistakes_are_named(self, tmp_path: Path, block: str, message: str) -> None:
        from bastion.config.errors import ConfigError

        text = config_text(
            1, tmp_path / "c.db", admin=False, extra=f"admin:\n  token: '{'t' * 32}'\n  {block}\n"
        )
        with pytest.raises(ConfigError) as exc:
            load_text(text)
        assert message in str(exc.value.issues)
