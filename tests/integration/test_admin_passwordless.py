"""Passwordless sign-in: a one-time code emailed over SMTP (a real aiosmtpd server on loopback), single use,
short-lived, a few tries, limits per address and per client address, and the same answer for every address
(no account enumeration). Expiry and the send windows use an injected clock; the HTTP flow runs on the real
admin listener.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, select

from bastion.config.models import AdminAccountSettings, AdminEmailSettings
from bastion.identity.admin_codes import AdminMailer, CodeLimited, SignInCodes
from bastion.identity.admins import AdminAccounts, AdminKeys, SignInFailed
from bastion.store.database import open_database
from bastion.store.schema import admin_sign_in_codes_table

from ..support import EchoUpstream, GatewayThread
from .test_admin import wait_for
from .test_admin_accounts import FAST_HASHER, PEPPER, Events, FakeClock, admin_gateway, seed

P = "/admin/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def codes_for(self, address: str) -> list[str]:
        with self.lock:
            found = [m for to, m in self.messages if to == [address]]
        bodies = [m.get_payload(decode=True).decode() for m in found]
        return [re.findall(r"^\s+(\d{6,10})\s*$", body, re.M)[0] for body in bodies]


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Controller, Mailbox]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, box
    finally:
        controller.stop()


def wait_code(box: Mailbox, address: str, count: int = 1) -> str:
    return wait_for(lambda: (box.codes_for(address) + [None] * count)[count - 1], what=f"mail to {address}")


# -- the services, with an injected clock ---------------------------------------------------------------


@pytest.fixture
def setup(
    tmp_path: Path, smtp: tuple[Controller, Mailbox]
) -> Iterator[tuple[SignInCodes, AdminAccounts, FakeClock, Events, Engine]]:
    controller, _ = smtp
    engine = open_database(f"sqlite:///{tmp_path / 'codes.db'}")
    clock, events = FakeClock(), Events()
    settings = AdminAccountSettings(
        code_digits=8,
        code_ttl=600,
        code_attempts=3,
        codes_per_address=3,
        codes_per_ip=5,
        code_window=3600,
        email=AdminEmailSettings(
            smtp=f"smtp://127.0.0.1:{controller.port}", **{"from": "bastion@example.com"}
        ),
    )
    accounts = AdminAccounts(
        engine, AdminKeys(PEPPER), settings, emit=events, clock=clock, hasher=FAST_HASHER
    )
    assert settings.email is not None
    mailer = AdminMailer(settings.email)
    codes = SignInCodes(engine, accounts, settings, mailer, clock=clock)
    yield codes, accounts, clock, events, engine
    mailer.close()
    engine.dispose()


class TestCodes:
    def test_a_code_arrives_by_mail_and_works_once(self, setup: Any, smtp: Any) -> None:
        codes, accounts, _, events, engine = setup
        _, box = smtp
        accounts.create("ana", "ana@example.com", "admin", actor="cli:root")
        codes.request("Ana@Example.com", source_ip="203.0.113.1")
        code = wait_code(box, "ana@example.com")
        assert len(code) == 8
        assert codes.verify("ana@example.com", code, source_ip="203.0.113.1")["name"] == "ana"
        with pytest.raises(SignInFailed):
            codes.verify("ana@example.com", code, source_ip="203.0.113.1")
        with engine.connect() as conn:
            stored = [dict(r) for r in conn.execute(select(admin_sign_in_codes_table)).mappings()]
        assert code not in repr(stored) and "ana@example.com" not in repr(stored)
        assert code not in events.text()
        assert "admin_auth.code_sent" in events.types()

    def test_the_code_expires(self, setup: Any, smtp: Any) -> None:
        codes, accounts, clock, _, _ = setup
        _, box = smtp
        accounts.create("ben", "ben@example.com", "admin", actor="cli:root")
        codes.request("ben@example.com", source_ip="203.0.113.2")
        code = wait_code(box, "ben@example.com")
        clock.now += 601
        with pytest.raises(SignInFailed) as exc:
            codes.verify("ben@example.com", code, source_ip="203.0.113.2")
        assert exc.value.reason == "no_code"

    def test_a_few_wrong_tries_kill_the_code(self, setup: Any, smtp: Any) -> None:
        codes, accounts, _, _, _ = setup
        _, box = smtp
        accounts.create("cat", "cat@example.com", "admin", actor="cli:root")
        codes.request("cat@example.com", source_ip="203.0.113.3")
        code = wait_code(box, "cat@example.com")
        wrong = str((int(code) + 1) % 10**8).zfill(8)
        for _ in range(3):
            with pytest.raises(SignInFailed):
                codes.verify("cat@example.com", wrong, source_ip="203.0.113.3")
        with pytest.raises(SignInFailed):  # the right code, too late
            codes.verify("cat@example.com", code, source_ip="203.0.113.3")

    def test_a_new_code_replaces_the_old_one(self, setup: Any, smtp: Any) -> None:
        codes, accounts, clock, _, _ = setup
        _, box = smtp
        accounts.create("dan", "dan@example.com", "admin", actor="cli:root")
        codes.request("dan@example.com", source_ip="203.0.113.4")
        first = wait_code(box, "dan@example.com")
        clock.now += 1
        codes.request("dan@example.com", source_ip="203.0.113.4")
        second = wait_code(box, "dan@example.com", 2)
        if first != second:
            with pytest.raises(SignInFailed):
                codes.verify("dan@example.com", first, source_ip="203.0.113.4")
        assert codes.verify("dan@example.com", second, source_ip="203.0.113.4")["name"] == "dan"

    def test_unknown_and_disabled_addresses_get_no_mail_and_no_error(self, setup: Any, smtp: Any) -> None:
        codes, accounts, _, events, _ = setup
        _, box = smtp
        accounts.create("eve", "eve@example.com", "admin", actor="cli:root")
        accounts.set_active("eve", False, actor="cli:root")
        assert codes.request("nobody@example.com", source_ip="203.0.113.5") is None
        assert codes.request("eve@example.com", source_ip="203.0.113.5") is None
        reasons = [f["reason"] for f in events.of("admin_auth.code_not_sent")]
        assert reasons == ["unknown_account", "disabled"]
        assert "nobody@example.com" not in events.text()
        codes.accounts.set_active("eve", True, actor="cli:root")
        assert box.codes_for("nobody@example.com") == [] and box.codes_for("eve@example.com") == []
        for guess in ("00000000", "12345678"):
            with pytest.raises(SignInFailed):
                codes.verify("nobody@example.com", guess, source_ip="203.0.113.5")

    def test_per_address_limit_is_the_same_for_known_and_unknown(self, setup: Any) -> None:
        codes, accounts, clock, _, _ = setup
        accounts.create("fox", "fox@example.com", "admin", actor="cli:root")
        for address, ip_base in (("fox@example.com", 10), ("ghost@example.com", 20)):
            for i in range(3):
                codes.request(address, source_ip=f"198.51.100.{ip_base + i}")
            with pytest.raises(CodeLimited) as exc:
                codes.request(address, source_ip=f"198.51.100.{ip_base + 9}")
            assert 0 < exc.value.retry_after <= 3601
        clock.now += 3601
        codes.request("fox@example.com", source_ip="198.51.100.99")  # a new window

    def test_per_ip_limit(self, setup: Any) -> None:
        codes, _, _, events, _ = setup
        for i in range(5):
            codes.request(f"probe{i}@example.com", source_ip="192.0.2.77")
        with pytest.raises(CodeLimited):
            codes.request("probe9@example.com", source_ip="192.0.2.77")
        assert events.of("admin_auth.code_limited")[-1]["data"] == {"per": "ip"}


# -- over HTTP --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[Controller, Mailbox]) -> Iterator[GatewayThread]:
    controller, _ = smtp
    email = f"""    codes_per_address: 3
    email:
      smtp: smtp://127.0.0.1:{controller.port}
      from: bastion@example.com"""
    with EchoUpstream() as up:
        gateway = admin_gateway(up, tmp_path_factory.mktemp("pwless") / "b.db", accounts_extra=email)
        with gateway:
            yield gateway


def client(gw: GatewayThread) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15)


def test_sign_in_with_an_emailed_code(gw: GatewayThread, smtp: Any) -> None:
    _, box = smtp
    seed(gw, "mailer", "operator", password=None)
    with client(gw) as c:
        started = c.post(f"{P}/auth/email/start", json={"email": "mailer@example.com"})
        assert started.status_code == 202 and started.headers["cache-control"] == "no-store"
        code = wait_code(box, "mailer@example.com")
        reply = c.post(f"{P}/auth/email/verify", json={"email": "mailer@example.com", "code": code})
        assert reply.status_code == 200, reply.text
        assert reply.json()["stage"] == "enrol"  # require_mfa: TOTP next
        again = c.post(f"{P}/auth/email/verify", json={"email": "mailer@example.com", "code": code})
        assert again.status_code == 401 and again.json()["code"] == "admin_sign_in_failed"


def test_known_and_unknown_addresses_get_the_same_answer(gw: GatewayThread, smtp: Any) -> None:
    _, box = smtp
    seed(gw, "known", "viewer", password=None)
    with client(gw) as c:
        known = c.post(f"{P}/auth/email/start", json={"email": "known@example.com"})
        unknown = c.post(f"{P}/auth/email/start", json={"email": "unknown@example.com"})
    assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    drop = {"date", "content-length"}
    assert {k: v for k, v in known.headers.items() if k not in drop} == {
        k: v for k, v in unknown.headers.items() if k not in drop
    }
    wait_code(box, "known@example.com")
    assert box.codes_for("unknown@example.com") == []


def test_send_limit_answers_429_for_any_address(gw: GatewayThread) -> None:
    with client(gw) as c:
        for address in ("limited@example.com", "nobody-limited@example.com"):
            replies = [c.post(f"{P}/auth/email/start", json={"email": address}).status_code for _ in range(4)]
            assert replies == [202, 202, 202, 429]
        limited = c.post(f"{P}/auth/email/start", json={"email": "limited@example.com"})
        assert int(limited.headers["retry-after"]) > 0 and limited.json()["code"] == "admin_rate_limited"


def test_passwordless_needs_email_configured(tmp_path: Path) -> None:
    with EchoUpstream() as up, admin_gateway(up, tmp_path / "n.db") as gateway, client(gateway) as c:
        reply = c.post(f"{P}/auth/email/start", json={"email": "a@example.com"})
        assert reply.status_code == 409 and reply.json()["code"] == "passwordless_unavailable"
