"""Attacks on admin sign-in and sessions: CSRF (cross-site requests, login CSRF, another session's token),
session fixation, half-finished sign-ins, stolen or tampered cookies, password guessing (lockout, the
per-address limit), account enumeration, TOTP replay, recovery-code reuse, stale MFA on sensitive actions,
privilege escalation. The real admin listener on loopback; time-dependent cases run the same admin app
in-process with an injected clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest

from bastion.adapters.admin import build_admin_app
from bastion.core.forwarding import NetworkSet
from bastion.store.database import open_database

from ..integration.test_admin_accounts import (
    ADMIN_BLOCK,
    PASSWORD,
    PEPPER,
    Admin,
    FakeClock,
    admin_gateway,
    seed,
    signed_in,
)
from ..integration.test_admin_roles import Browser, hidden_csrf
from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text

P = "/admin/v1"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with EchoUpstream() as up:
        gateway = admin_gateway(up, tmp_path_factory.mktemp("attacks") / "b.db", lockout=3)
        with gateway:
            yield gateway


def anonymous(gw: GatewayThread) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15)


# -- CSRF ------------------------------------------------------------------------------------------------


class TestCsrf:
    def test_state_change_without_the_token_is_refused(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "csrf-a", "admin")
        try:
            reply = admin.call("POST", f"{P}/consumers", {"name": "csrf-victim"}, csrf=False)
            assert reply.status_code == 403 and reply.json()["code"] == "admin_csrf_failed"
            assert admin.call("GET", f"{P}/consumers/csrf-victim").status_code == 404  # nothing happened
            assert admin.call("GET", f"{P}/consumers", csrf=False).status_code == 200  # reads need none
        finally:
            admin.close()

    def test_another_sessions_token_is_refused(self, gw: GatewayThread) -> None:
        mallory, alice = signed_in(gw, "csrf-m", "admin"), signed_in(gw, "csrf-v", "admin")
        try:
            reply = alice.call(
                "POST",
                f"{P}/consumers",
                {"name": "csrf-x"},
                csrf=False,
                headers={"x-csrf-token": mallory.csrf or ""},
            )
            assert reply.status_code == 403 and reply.json()["code"] == "admin_csrf_failed"
        finally:
            mallory.close()
            alice.close()

    @pytest.mark.parametrize(
        "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
    )
    def test_login_csrf_a_cross_site_form_cannot_sign_in(self, gw: GatewayThread, content_type: str) -> None:
        seed(gw, f"form-{content_type.split('/')[1][:4]}", "viewer")
        with anonymous(gw) as c:
            reply = c.post(
                f"{P}/auth/login",
                content=b'{"email": "x@example.com", "password": "y"}',
                headers={"content-type": content_type},
            )
        assert reply.status_code == 415 and "set-cookie" not in reply.headers


# -- sessions ----------------------------------------------------------------------------------------------


class TestSessions:
    def test_fixation_a_planted_cookie_is_never_adopted(self, gw: GatewayThread) -> None:
        seed(gw, "fixed", "viewer")
        planted = "bas_" + "A" * 43
        admin = Admin(gw)
        try:
            admin.client.cookies.set("bastion_admin", planted, domain="127.0.0.1")
            first = admin.login("fixed@example.com")
            assert first.status_code == 200
            issued = first.cookies.get("bastion_admin")
            assert issued is not None and issued != planted
            with anonymous(gw) as attacker:
                attacker.cookies.set("bastion_admin", planted)
                assert attacker.get(f"{P}/auth/session").status_code == 401
        finally:
            admin.close()

    def test_the_pre_mfa_id_dies_when_mfa_completes(self, gw: GatewayThread) -> None:
        seed(gw, "rotating", "viewer")
        admin = Admin(gw)
        try:
            admin.login("rotating@example.com")
            before = admin.client.cookies.get("bastion_admin")
            admin.enrol()
            after = admin.client.cookies.get("bastion_admin")
            assert before != after
            with anonymous(gw) as thief:
                thief.cookies.set("bastion_admin", before or "")
                assert thief.get(f"{P}/auth/session").status_code == 401
        finally:
            admin.close()

    def test_a_half_finished_sign_in_reaches_nothing(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "half", "admin")
        admin.call("POST", f"{P}/auth/logout")
        try:
            again = admin.login("half@example.com")
            assert again.json()["stage"] == "mfa"
            for method, path in (("GET", f"{P}/keys"), ("GET", f"{P}/admins"), ("POST", f"{P}/auth/step-up")):
                reply = admin.call(method, path, {} if method == "POST" else None)
                assert reply.status_code == 401 and reply.json()["code"] == "admin_mfa_required", path
            assert admin.call("GET", f"{P}/auth/session").json()["stage"] == "mfa"
        finally:
            admin.close()

    def test_enrolment_is_required_before_anything_else(self, gw: GatewayThread) -> None:
        seed(gw, "no-mfa-yet", "admin")
        admin = Admin(gw)
        try:
            assert admin.login("no-mfa-yet@example.com").json()["stage"] == "enrol"
            assert admin.call("GET", f"{P}/status").json()["code"] == "admin_mfa_required"
        finally:
            admin.close()

    def test_cookie_after_logout_and_tampered_cookies_are_refused(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "leaver", "viewer")
        cookie = admin.client.cookies.get("bastion_admin") or ""
        assert admin.call("POST", f"{P}/auth/logout").status_code == 200
        admin.close()
        with anonymous(gw) as c:
            for value in (cookie, cookie[:-1] + ("A" if cookie[-1] != "A" else "B"), cookie + "x", ""):
                c.cookies.set("bastion_admin", value)
                assert c.get(f"{P}/status").status_code == 401

    def test_disabling_an_account_ends_its_session_at_once(self, gw: GatewayThread) -> None:
        victim = signed_in(gw, "to-disable", "operator")
        boss = signed_in(gw, "boss", "admin")
        try:
            assert victim.call("GET", f"{P}/consumers").status_code == 200
            assert boss.call("POST", f"{P}/admins/to-disable/disable").status_code == 200
            assert victim.call("GET", f"{P}/consumers").status_code == 401
        finally:
            victim.close()
            boss.close()

    def test_a_wrong_bearer_token_does_not_fall_back_to_the_cookie(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "both", "admin")
        try:
            reply = admin.call("GET", f"{P}/status", headers={"authorization": "Bearer wrong"})
            assert reply.status_code == 401
        finally:
            admin.close()

    def test_secure_cookie_attributes(self, tmp_path: Path) -> None:
        """The default (cookie_secure: true): __Host- prefix, Secure, HttpOnly, SameSite=Strict, Path=/."""
        block = ADMIN_BLOCK.replace("    cookie_secure: false\n", "").format(
            token_enabled="true", lockout=5, ip_attempts=100, accounts_extra=""
        )
        with EchoUpstream() as up:
            loaded = load_text(
                config_text(up.port, tmp_path / "t.db", extra=block, admin=False),
                env={"BASTION_PEPPER": PEPPER},
            )
            with GatewayThread(loaded) as gateway:
                seed(gateway, "securecookie", "viewer")
                with anonymous(gateway) as c:
                    reply = c.post(
                        f"{P}/auth/login", json={"email": "securecookie@example.com", "password": PASSWORD}
                    )
                cookie = reply.headers["set-cookie"]
        assert cookie.startswith("__Host-bastion_admin=bas_")
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= attributes
        assert not any(a.startswith("domain") for a in attributes)


# -- guessing and enumeration --------------------------------------------------------------------------------


class TestGuessing:
    def test_unknown_account_and_wrong_password_look_the_same(self, gw: GatewayThread) -> None:
        seed(gw, "enum", "viewer")
        with anonymous(gw) as c:
            wrong = c.post(f"{P}/auth/login", json={"email": "enum@example.com", "password": "not it at all"})
            unknown = c.post(
                f"{P}/auth/login", json={"email": "nobody@example.com", "password": "not it at all"}
            )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()

    def test_lockout_refuses_the_right_password_with_the_same_answer(self, gw: GatewayThread) -> None:
        seed(gw, "guessed", "admin")
        with anonymous(gw) as c:
            answers = [
                c.post(
                    f"{P}/auth/login", json={"email": "guessed@example.com", "password": f"guess number {i}"}
                )
                for i in range(3)
            ]
            right = c.post(f"{P}/auth/login", json={"email": "guessed@example.com", "password": PASSWORD})
        assert {a.status_code for a in answers} == {401}
        assert right.status_code == 401 and right.json() == answers[0].json()
        assert "set-cookie" not in right.headers

    def test_per_address_attempt_limit(self, tmp_path: Path) -> None:
        with (
            EchoUpstream() as up,
            admin_gateway(up, tmp_path / "ip.db", ip_attempts=3) as gateway,
            anonymous(gateway) as c,
        ):
            codes = [
                c.post(
                    f"{P}/auth/login", json={"email": f"spray{i}@example.com", "password": "x" * 12}
                ).status_code
                for i in range(4)
            ]
        assert codes == [401, 401, 401, 429]


# -- second factors ------------------------------------------------------------------------------------------


class TestSecondFactor:
    def test_a_totp_code_cannot_be_replayed(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "replay", "admin")
        try:
            code = admin.next_code()
            assert admin.call("POST", f"{P}/auth/step-up", {"code": code}).status_code == 200
            again = admin.call("POST", f"{P}/auth/step-up", {"code": code})
            assert again.status_code == 401 and again.json()["code"] == "admin_mfa_failed"
        finally:
            admin.close()

    def test_a_recovery_code_works_once(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "recover", "admin")
        try:
            code = admin.recovery_codes[0]
            assert admin.call("POST", f"{P}/auth/step-up", {"recovery_code": code}).status_code == 200
            assert admin.call("POST", f"{P}/auth/step-up", {"recovery_code": code}).status_code == 401
        finally:
            admin.close()

    def test_mfa_guessing_locks_the_account_and_ends_the_session(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "mfa-guess", "admin")
        admin.call("POST", f"{P}/auth/logout")
        try:
            assert admin.login("mfa-guess@example.com").json()["stage"] == "mfa"
            for _ in range(3):
                admin.call("POST", f"{P}/auth/mfa", {"recovery_code": "aaaaa-aaaaa"})
            assert admin.call("GET", f"{P}/auth/session").status_code == 401
            assert admin.login("mfa-guess@example.com").status_code == 401  # locked
        finally:
            admin.close()


# -- privilege ----------------------------------------------------------------------------------------------


class TestPrivilege:
    def test_no_self_promotion(self, gw: GatewayThread) -> None:
        viewer, admin = signed_in(gw, "climber", "viewer"), signed_in(gw, "self-admin", "admin")
        try:
            up = viewer.call("PUT", f"{P}/admins/climber/role", {"role": "admin"})
            assert up.status_code == 403 and up.json()["code"] == "admin_forbidden"
            down = admin.call("PUT", f"{P}/admins/self-admin/role", {"role": "viewer"})
            assert down.status_code == 409 and down.json()["code"] == "cannot_change_self"
        finally:
            viewer.close()
            admin.close()

    def test_generated_password_is_shown_once_with_no_store(self, gw: GatewayThread) -> None:
        admin = signed_in(gw, "creator", "admin")
        try:
            made = admin.call(
                "POST", f"{P}/admins", {"name": "newbie", "email": "newbie@example.com", "role": "viewer"}
            )
            assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
            password = made.json()["password"]
            assert password and password not in admin.call("GET", f"{P}/admins/newbie").text
        finally:
            admin.close()


# -- time: step-up and idle timeout, with an injected clock ------------------------------------------------


def test_step_up_and_idle_timeout_with_an_injected_clock(gw: GatewayThread) -> None:
    """The same admin app in-process, on the gateway's store, with a clock the test moves."""
    assert gw.running is not None and gw.running.gateway is not None
    clock = FakeClock(time.time())
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    app: Any = build_admin_app(
        gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]), clock=clock
    )
    seed(gw, "stale", "admin")
    accounts = app.plane.accounts

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            signed = await c.post(
                f"{P}/auth/login", json={"email": "stale@example.com", "password": PASSWORD}
            )
            assert signed.json()["stage"] == "enrol"
            begun = (
                await c.post(f"{P}/auth/mfa/totp", headers={"x-csrf-token": signed.json()["csrf_token"]})
            ).json()
            totp = pyotp.TOTP(parse_qs(urlsplit(begun["otpauth_uri"]).query)["secret"][0])
            done = await c.post(
                f"{P}/auth/mfa/totp/confirm",
                json={"code": totp.at(clock.now)},
                headers={"x-csrf-token": signed.json()["csrf_token"]},
            )
            csrf = {"x-csrf-token": done.json()["csrf_token"]}
            body = {"name": "made-fresh", "email": "made-fresh@example.com", "role": "viewer"}
            assert (await c.post(f"{P}/admins", json=body, headers=csrf)).status_code == 201
            clock.now += 601  # past step_up_within (default 10 minutes)
            body2 = {"name": "made-stale", "email": "made-stale@example.com", "role": "viewer"}
            stale = await c.post(f"{P}/admins", json=body2, headers=csrf)
            assert stale.status_code == 403 and stale.json()["code"] == "admin_step_up_required"
            assert (await c.get(f"{P}/consumers")).status_code == 200  # not sensitive: fine
            clock.now += 30
            up = await c.post(f"{P}/auth/step-up", json={"code": totp.at(clock.now)}, headers=csrf)
            assert up.status_code == 200
            assert (await c.post(f"{P}/admins", json=body2, headers=csrf)).status_code == 201
            clock.now += 1801  # idle past session_idle (default 30 minutes)
            assert (await c.get(f"{P}/consumers")).status_code == 401

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
    assert accounts is not None


# -- the web console ---------------------------------------------------------------------------------------


class TestConsole:
    def test_every_page_has_a_strict_csp_and_no_script(self, gw: GatewayThread) -> None:
        seed(gw, "csp", "operator")
        browser = Browser(gw)
        try:
            pages = [browser.client.get("/console/sign-in")]
            pages.append(browser.sign_in("csp@example.com"))
            pages.append(browser.client.get("/console/enrol"))
            pages.append(browser.client.get("/console/keys"))  # a redirect carries the headers too
            for reply in pages:
                csp = reply.headers["content-security-policy"]
                assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
                assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
                # scripts only as static files from the console itself (the copy button), never inline
                assert "script-src 'self';" in csp and csp.count("script-src") == 1
                assert reply.headers["cache-control"] == "no-store"
                assert reply.headers["x-frame-options"] == "DENY"
                assert "<script" not in reply.text.lower() and " on" + "click" not in reply.text.lower()
        finally:
            browser.close()

    def test_values_from_the_store_are_escaped(self, gw: GatewayThread) -> None:
        token = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        payload = '<script>alert(1)</script><img src=x onerror="alert(2)">'
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15, headers=token) as api:
            api.post(f"{P}/consumers", json={"name": "xss-shop", "scopes": []})
            assert api.post(f"{P}/keys", json={"consumer": "xss-shop", "name": payload}).status_code == 201
        viewer = signed_in(gw, "xss-viewer", "viewer")
        viewer.call("POST", f"{P}/auth/logout")
        browser = Browser(gw)
        try:
            browser.sign_in("xss-viewer@example.com")
            mfa = browser.client.get("/console/mfa")
            browser.form("/console/mfa", {"csrf_token": hidden_csrf(mfa.text), "code": viewer.next_code()})
            page = browser.client.get("/console/keys")
            assert page.status_code == 200
            assert payload not in page.text and "<script>" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        finally:
            browser.close()
            viewer.close()

    def test_cross_site_form_sign_in_is_refused(self, gw: GatewayThread) -> None:
        seed(gw, "form-victim", "admin")
        with anonymous(gw) as c:  # no pre-sign-in cookie: a form posted from another site
            reply = c.post(
                "/console/sign-in",
                data={"csrf_token": "guessed", "email": "form-victim@example.com", "password": PASSWORD},
            )
        assert reply.status_code == 403 and "set-cookie" not in {k.lower() for k in reply.headers}

    def test_revoke_form_without_the_session_token_does_nothing(self, gw: GatewayThread) -> None:
        token = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15, headers=token) as api:
            api.post(f"{P}/consumers", json={"name": "csrf-shop", "scopes": []})
            key = api.post(f"{P}/keys", json={"consumer": "csrf-shop"}).json()
        operator = signed_in(gw, "csrf-operator", "operator")
        try:
            for fields in ({}, {"csrf_token": "x" * 43}):
                reply = operator.client.post(f"/console/keys/{key['id']}/revoke", data=fields)
                assert reply.status_code == 403
            # the API's X-CSRF-Token header does not stand in for the form's field
            reply = operator.client.post(
                f"/console/keys/{key['id']}/revoke", data={}, headers={"x-csrf-token": operator.csrf or ""}
            )
            assert reply.status_code == 403
            with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15, headers=token) as api:
                assert api.get(f"{P}/keys/{key['id']}").json()["revoked_at"] is None
        finally:
            operator.close()


def test_the_allow_list_covers_sign_in_and_the_console(gw: GatewayThread) -> None:
    """The same app, reached from an address outside admin.allow_ips: every sign-in route and page is 403."""
    assert gw.running is not None and gw.running.gateway is not None
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    app: Any = build_admin_app(gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]))

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            return [
                (
                    await c.post(f"{P}/auth/login", json={"email": "a@example.com", "password": "x"})
                ).status_code,
                (await c.post(f"{P}/auth/email/start", json={"email": "a@example.com"})).status_code,
                (await c.get("/console/sign-in")).status_code,
                (await c.get(f"{P}/health")).status_code,
            ]

    try:
        assert asyncio.run(scenario()) == [403, 403, 403, 403]
    finally:
        engine.dispose()


def test_the_allow_list_covers_every_console_route(gw: GatewayThread) -> None:
    """Every console page, form, static file and redirect, from an address outside admin.allow_ips: 403
    before anything else, with or without a session."""
    import re

    from bastion.adapters.console import CONSOLE_POLICIES

    assert gw.running is not None and gw.running.gateway is not None
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    app: Any = build_admin_app(gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]))
    admin = signed_in(gw, "outside-in", "admin")
    cookie = admin.client.cookies.get("bastion_admin") or ""
    admin.close()

    async def scenario() -> list[tuple[str, str, int, str]]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            c.cookies.set("bastion_admin", cookie)
            for method, path in CONSOLE_POLICIES:
                url = re.sub(r"\{[^}]+\}", "x", path)
                reply = await c.request(method, url, data={"csrf_token": "x"} if method == "POST" else None)
                out.append((method, path, reply.status_code, reply.json().get("code", "")))
        return out

    try:
        answers = asyncio.run(scenario())
    finally:
        engine.dispose()
    refused = [a for a in answers if a[2] == 403 and a[3] == "admin_ip_denied"]
    assert answers and refused == answers, answers
