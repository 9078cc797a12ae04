"""Passwordless sign-in: a one-time code emailed over SMTP (a real aiosmtpd server on loopback), single use,
short-lived, a few tries, limits per address and per client address, and the same answer for every address
(no account enumeration). Expiry and the send windows use an injected clock; the HTTP flow runs on the real
admin listener.

The same email carries a sign-in link: built from ``admin.accounts.external_url`` (never the Host header),
single use and spent together with the code, the code's expiry, and it signs in only when the page it
opens is posted (a GET alone, as a mail scanner makes, does nothing); guessed tokens are limited per client
address and are events.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, select

from bastion.adapters.admin import build_admin_app
from bastion.config.models import AdminAccountSettings, AdminEmailSettings
from bastion.core.forwarding import NetworkSet
from bastion.identity.admin_codes import LINK_PATH, AdminMailer, CodeLimited, SignInCodes
from bastion.identity.admins import AdminAccounts, AdminKeys, SignInFailed, new_id
from bastion.store.database import open_database
from bastion.store.schema import admin_sign_in_codes_table

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread
from .test_admin import wait_for
from .test_admin_accounts import FAST_HASHER, PEPPER, Events, FakeClock, admin_gateway, seed

P = "/admin/v1"
EXTERNAL = "https://bastion-admin.example.com"  # admin.accounts.external_url: what links are built from
LINK = re.compile(r"^\s+(https?://\S+/console/sign-in/link\?token=\S+)\s*$", re.M)


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

    def bodies_for(self, address: str) -> list[str]:
        with self.lock:
            found = [m for to, m in self.messages if to == [address]]
        return [m.get_payload(decode=True).decode() for m in found]

    def links_for(self, address: str) -> list[str | None]:
        """The sign-in link of each message to ``address`` (None for a message without one)."""
        out: list[str | None] = []
        for body in self.bodies_for(address):
            found = LINK.search(body)
            out.append(found.group(1) if found else None)
        return out


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


def wait_link(box: Mailbox, address: str, count: int = 1) -> str:
    wait_code(box, address, count)
    link = box.links_for(address)[count - 1]
    assert link is not None, box.bodies_for(address)[count - 1]
    return link


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def local(link: str) -> str:
    """The link's path and query: requested on the test's listener, whatever host the link names."""
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


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
    codes = SignInCodes(engine, accounts, settings, mailer, link_base=EXTERNAL, clock=clock)
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


class TestLinks:
    def test_the_email_carries_a_link_that_works_once_and_spends_the_code(
        self, setup: Any, smtp: Any
    ) -> None:
        codes, accounts, _, events, engine = setup
        _, box = smtp
        accounts.create("lia", "lia@example.com", "admin", actor="cli:root")
        codes.request("lia@example.com", source_ip="203.0.113.11")
        link = wait_link(box, "lia@example.com")
        code = wait_code(box, "lia@example.com")
        parts = urlsplit(link)
        assert (parts.scheme, parts.netloc, parts.path) == ("https", "bastion-admin.example.com", LINK_PATH)
        token = token_of(link)
        row_id, secret = token.split(".")
        assert len(row_id) == 26 and len(secret) == 43  # 43 base64url characters: 256 random bits
        assert codes.verify_link(token, source_ip="203.0.113.11")["name"] == "lia"
        with pytest.raises(SignInFailed) as again:
            codes.verify_link(token, source_ip="203.0.113.11")
        assert again.value.reason == "used_link"
        with pytest.raises(SignInFailed):  # one sign-in request: the code went with the link
            codes.verify("lia@example.com", code, source_ip="203.0.113.11")
        with engine.connect() as conn:
            stored = [dict(r) for r in conn.execute(select(admin_sign_in_codes_table)).mappings()]
        assert secret not in repr(stored) and code not in repr(stored)
        assert secret not in events.text() and code not in events.text()
        assert events.of("admin_auth.code_sent")[-1]["data"] == {"link": True}
        failed = [(f["reason"], f["data"]) for f in events.of("admin_auth.sign_in_failed")]
        assert failed == [("used_link", {"method": "email_link"}), ("no_code", {"method": "email_code"})]

    def test_a_code_used_first_spends_the_link(self, setup: Any, smtp: Any) -> None:
        codes, accounts, _, _, _ = setup
        _, box = smtp
        accounts.create("max", "max@example.com", "admin", actor="cli:root")
        codes.request("max@example.com", source_ip="203.0.113.12")
        link = wait_link(box, "max@example.com")
        assert codes.verify("max@example.com", wait_code(box, "max@example.com"), source_ip="203.0.113.12")
        with pytest.raises(SignInFailed) as exc:
            codes.verify_link(token_of(link), source_ip="203.0.113.12")
        assert exc.value.reason == "used_link"

    def test_the_link_expires_with_the_code(self, setup: Any, smtp: Any) -> None:
        codes, accounts, clock, _, _ = setup
        _, box = smtp
        accounts.create("ned", "ned@example.com", "admin", actor="cli:root")
        codes.request("ned@example.com", source_ip="203.0.113.13")
        link = wait_link(box, "ned@example.com")
        clock.now += 601  # code_ttl is 600
        with pytest.raises(SignInFailed) as exc:
            codes.verify_link(token_of(link), source_ip="203.0.113.13")
        assert exc.value.reason == "expired_link"

    def test_a_new_email_replaces_the_link(self, setup: Any, smtp: Any) -> None:
        codes, accounts, clock, _, _ = setup
        _, box = smtp
        accounts.create("ola", "ola@example.com", "admin", actor="cli:root")
        codes.request("ola@example.com", source_ip="203.0.113.14")
        first = wait_link(box, "ola@example.com")
        clock.now += 1
        codes.request("ola@example.com", source_ip="203.0.113.14")
        second = wait_link(box, "ola@example.com", 2)
        assert first != second
        with pytest.raises(SignInFailed):
            codes.verify_link(token_of(first), source_ip="203.0.113.14")
        assert codes.verify_link(token_of(second), source_ip="203.0.113.14")["name"] == "ola"

    def test_made_up_and_damaged_tokens_fail_and_a_few_kill_the_link(self, setup: Any, smtp: Any) -> None:
        codes, accounts, clock, events, _ = setup
        _, box = smtp
        accounts.create("pia", "pia@example.com", "admin", actor="cli:root")
        codes.request("pia@example.com", source_ip="203.0.113.15")
        token = token_of(wait_link(box, "pia@example.com"))
        row_id, secret = token.split(".")
        made_up = f"{new_id(clock.now)}.{secrets.token_urlsafe(32)}"
        for guess in ("", "x" * 70, made_up, f"{row_id}.{secret[:-1]}"):
            with pytest.raises(SignInFailed) as exc:
                codes.verify_link(guess, source_ip="203.0.113.15")
            assert exc.value.reason == "unknown_link"
        damaged = f"{row_id}.{secrets.token_urlsafe(32)}"
        for _ in range(3):  # code_attempts
            with pytest.raises(SignInFailed) as exc:
                codes.verify_link(damaged, source_ip="203.0.113.15")
            assert exc.value.reason == "bad_link"
        with pytest.raises(SignInFailed) as exc:  # the right token, too late
            codes.verify_link(token, source_ip="203.0.113.15")
        assert exc.value.reason == "used_link"
        assert secret not in events.text()

    def test_no_link_without_an_external_url(self, setup: Any, smtp: Any) -> None:
        codes, accounts, clock, _, engine = setup
        _, box = smtp
        plain = SignInCodes(engine, accounts, codes.settings, codes.mailer, clock=clock)
        accounts.create("quinn", "quinn@example.com", "admin", actor="cli:root")
        plain.request("quinn@example.com", source_ip="203.0.113.16")
        code = wait_code(box, "quinn@example.com")
        assert (
            box.links_for("quinn@example.com") == [None]
            and "http" not in box.bodies_for("quinn@example.com")[0]
        )
        assert plain.verify("quinn@example.com", code, source_ip="203.0.113.16")["name"] == "quinn"


# -- over HTTP --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[Controller, Mailbox]) -> Iterator[GatewayThread]:
    controller, _ = smtp
    with EchoUpstream() as up:
        gateway = admin_gateway(
            up, tmp_path_factory.mktemp("pwless") / "b.db", accounts_extra=email_block(controller.port)
        )
        with gateway:
            yield gateway


def email_block(port: int) -> str:
    return f"""    codes_per_address: 3
    external_url: {EXTERNAL}
    email:
      smtp: smtp://127.0.0.1:{port}
      from: bastion@example.com"""


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


# -- the sign-in link over HTTP ---------------------------------------------------------------------------

COOKIE = "bastion_admin"  # the session cookie (cookie_secure: false in these gateways)


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, html[:500]
    return found.group(1)


def events_of(gw: GatewayThread, **params: Any) -> list[dict[str, Any]]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gw.admin_port}",
        timeout=15,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as api:
        return list(api.get(f"{P}/events", params={"page_size": 1000, **params}).json()["events"])


def test_the_link_signs_in_only_when_its_page_is_posted(gw: GatewayThread, smtp: Any) -> None:
    _, box = smtp
    seed(gw, "linker", "operator", password=None)
    with client(gw) as c:
        # A forged Host header does not change where the link points.
        started = c.post(
            f"{P}/auth/email/start", json={"email": "linker@example.com"}, headers={"host": "evil.example"}
        )
        assert started.status_code == 202
        link = wait_link(box, "linker@example.com")
        assert link.startswith(f"{EXTERNAL}{LINK_PATH}?token=")
        assert "evil.example" not in box.bodies_for("linker@example.com")[0]
        # Opening it (twice, as a mail scanner and then the person) signs nobody in and spends nothing.
        for _ in range(2):
            page = c.get(local(link))
            assert page.status_code == 200 and "Sign in" in page.text
            assert (
                page.headers["cache-control"] == "no-store"
                and "script-src 'self'" in page.headers["content-security-policy"]
            )
            assert COOKIE not in c.cookies
        assert c.get("/console/overview").headers["location"] == "/console/sign-in"
        form = {"csrf_token": hidden(page.text, "csrf_token"), "token": hidden(page.text, "token")}
        assert form["token"] == token_of(link)
        # The button's post needs the double-submit cookie: another browser's post does nothing.
        with client(gw) as stranger:
            forged = stranger.post("/console/sign-in/link", data=form)
            assert forged.status_code == 403 and COOKIE not in stranger.cookies
        done = c.post("/console/sign-in/link", data=form)
        assert done.status_code == 303 and done.headers["location"] == "/console/enrol"  # require_mfa
        assert c.cookies.get(COOKIE)
        assert c.get("/console/enrol").status_code == 200
    with client(gw) as again:  # a second use, from anywhere
        page = again.get(local(link))
        reused = again.post(
            "/console/sign-in/link",
            data={"csrf_token": hidden(page.text, "csrf_token"), "token": token_of(link)},
        )
        assert reused.status_code == 401 and "expired or was already used" in reused.text
        assert COOKIE not in again.cookies

    def found() -> Any:
        passed = events_of(gw, type="admin_auth.first_factor_passed", actor="admin:linker")
        failed = [
            e
            for e in events_of(gw, type="admin_auth.sign_in_failed")
            if e["reason"] == "used_link" and e["data"] == {"method": "email_link"}
        ]
        return passed and failed and passed[0]["data"]["method"] == "email_link"

    wait_for(found, what="the link's events")
    assert token_of(link).split(".")[1] not in str(events_of(gw))


def test_a_link_without_a_token_or_with_a_bad_one_shows_no_button(gw: GatewayThread) -> None:
    with client(gw) as c:
        for path in (LINK_PATH, f"{LINK_PATH}?token=abc", f"{LINK_PATH}?token=%22%3E%3Cscript%3E"):
            page = c.get(path)
            assert page.status_code == 404 and "not valid" in page.text and 'name="token"' not in page.text


def test_an_expired_link_is_refused(gw: GatewayThread, smtp: Any) -> None:
    """The admin app in-process on the gateway's store and SMTP server, with a clock the test moves."""
    _, box = smtp
    assert gw.running is not None and gw.running.gateway is not None
    clock = FakeClock(time.time())
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    app: Any = build_admin_app(
        gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]), clock=clock
    )
    seed(gw, "late", "viewer", password=None)

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            started = await c.post(f"{P}/auth/email/start", json={"email": "late@example.com"})
            assert started.status_code == 202
            link = wait_link(box, "late@example.com")
            clock.now += 601  # code_ttl: 10 minutes
            page = await c.get(local(link))
            assert page.status_code == 200  # opening it checks nothing
            return await c.post(
                "/console/sign-in/link",
                data={"csrf_token": hidden(page.text, "csrf_token"), "token": token_of(link)},
            )

    try:
        late = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert late.status_code == 401 and COOKIE not in late.cookies
    wait_for(
        lambda: [e for e in events_of(gw, type="admin_auth.sign_in_failed") if e["reason"] == "expired_link"],
        what="the expired_link event",
    )


def test_guessing_link_tokens_is_limited_per_client_address(tmp_path: Path, smtp: Any) -> None:
    controller, _ = smtp
    with (
        EchoUpstream() as up,
        admin_gateway(
            up, tmp_path / "g.db", ip_attempts=3, accounts_extra=email_block(controller.port)
        ) as gw2,
        client(gw2) as c,
    ):
        csrf = hidden(c.get("/console/sign-in").text, "csrf_token")
        replies = [
            c.post(
                "/console/sign-in/link",
                data={"csrf_token": csrf, "token": f"{new_id(time.time())}.{secrets.token_urlsafe(32)}"},
            ).status_code
            for _ in range(4)
        ]
        assert replies == [401, 401, 401, 429]

        def found() -> Any:
            failed = [
                e for e in events_of(gw2, type="admin_auth.sign_in_failed") if e["reason"] == "unknown_link"
            ]
            limited = events_of(gw2, type="admin_auth.ip_limited")
            return len(failed) == 3 and limited and failed[0]["source_ip"] == "127.0.0.1"

        wait_for(found, what="the guesses' events")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://admin.example.com", "https://"),
        ("https://admin.example.com/console", "scheme://host[:port] only"),
        ("https://admin.example.com/?next=x", "scheme://host[:port] only"),
        ("https://user:pw@admin.example.com", "user info"),
        ("javascript:alert(1)", "https://"),
    ],
)
def test_external_url_must_be_a_secure_origin(url: str, message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        AdminAccountSettings(external_url=url)


def test_external_url_loses_its_trailing_slash_and_may_be_loopback_http() -> None:
    assert AdminAccountSettings(external_url="https://admin.example.com/").external_url == (
        "https://admin.example.com"
    )
    assert AdminAccountSettings(external_url="http://127.0.0.1:8081").external_url == "http://127.0.0.1:8081"
