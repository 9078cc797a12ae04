"""The web console over the real admin listener: every page for each role with the right controls, the
actions (consumers, keys, clients, admin accounts) and their refusals (no CSRF token, another session's
token, a lower role, a stale second factor), the security headers on every page, the Monitor API filters
on the events page, and hostile values stored everywhere a page shows one, rendered inert.

HTML is checked with a parser, not with substrings: a page must contain only the elements and attributes
its templates write, every URL must stay on the console (start with ``/``), and the hostile values must
come back as text. The browser tests (tests/browser/) look at the same pages in headless Chromium.

The helpers at the top (a gateway with an API-key route, signed-in console sessions, the hostile values
and the HTML checks) are shared with tests/browser/.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyotp
import pytest
from aiosmtpd.controller import Controller

from bastion.adapters import audit as posture
from bastion.adapters.admin import build_admin_app
from bastion.adapters.console import CONSOLE_POLICIES, STEP_UP
from bastion.config.loader import LoadedConfig
from bastion.core.forwarding import NetworkSet
from bastion.store.database import open_database
from bastion.store.schema import inventory_observed_table

from ..support import (
    ADMIN_TOKEN,
    QUICKSTART_ROUTES,
    EchoUpstream,
    GatewayThread,
    config_text,
    load_text,
)
from .test_admin import wait_for
from .test_admin_accounts import ADMIN_BLOCK, PASSWORD, PEPPER, Admin, FakeClock, seed, signed_in
from .test_admin_passwordless import (
    EXTERNAL,
    Mailbox,
    email_block,
    free_port,
    local,
    token_of,
    wait_code,
    wait_link,
)

P = "/admin/v1"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
ROUTES = (
    QUICKSTART_ROUTES
    + """
      - path: /v1/secure
        methods: [GET]
        auth: [api_key]
"""
)
ROLES = ("viewer", "operator", "admin")

# Hostile values: the three of the issue, and variants that would leave a trace a browser test can read
# (a global, the document title) if they ever ran.
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
JS_URL = "javascript:alert(1)"
SCRIPT_TRACE = "<script>window.__xss=1;document.title='pwned'</script>"
IMG_TRACE = '"><img src=x onerror="window.__xss=2;document.title=\'pwned\'">'
JS_URL_TRACE = "javascript:window.__xss=3;document.title='pwned'"
SVG_TRACE = "'><svg onload=window.__xss=4>"
PAYLOADS = (SCRIPT, IMG, JS_URL, SCRIPT_TRACE, IMG_TRACE, JS_URL_TRACE, SVG_TRACE)


# -- helpers ---------------------------------------------------------------------------------------------


def console_gateway(
    upstream: EchoUpstream, db: Path, *, ip_attempts: int = 1000, accounts_extra: str = ""
) -> GatewayThread:
    """A gateway with admin accounts and one API-key route (``GET /v1/secure``)."""
    extra = ADMIN_BLOCK.format(
        token_enabled="true", lockout=5, ip_attempts=ip_attempts, accounts_extra=accounts_extra
    )
    text = config_text(upstream.port, db, extra=extra, admin=False, routes=ROUTES)
    return GatewayThread(load_text(text, env={"BASTION_PEPPER": PEPPER}))


def api(gw: GatewayThread) -> httpx.Client:
    """The admin API with the bearer token (test setup and checks)."""
    return httpx.Client(
        base_url=f"http://127.0.0.1:{gw.admin_port}",
        timeout=15,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )


def hidden_csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert found, html[:500]
    return found.group(1)


class Page:
    """A signed-in console session (an admin account's cookie) used like a browser: GET pages, post forms
    with the CSRF field taken from the page."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.client = admin.client

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(path, params=params or None)

    def post(
        self, path: str, fields: dict[str, str] | None = None, *, csrf: str | None = None
    ) -> httpx.Response:
        """A form post; the CSRF field is this session's unless ``csrf`` says otherwise ('' for none)."""
        data = dict(fields or {})
        token = self.admin.csrf if csrf is None else csrf
        if token:
            data["csrf_token"] = token
        return self.client.post(path, data=data)

    def close(self) -> None:
        self.admin.close()


def console_session(gw: GatewayThread, name: str, role: str) -> Page:
    return Page(signed_in(gw, name, role))


class Dom(HTMLParser):
    """Every element (tag, attributes) and the text of a page, as a browser's parser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.elements if t == tag]

    def post_actions(self) -> set[str]:
        return {a.get("action") or "" for a in self.all("form") if (a.get("method") or "").lower() == "post"}


# What the console's templates (and the SVG charts) write; anything else was injected.
TAGS = {
    "html", "head", "meta", "title", "link", "script", "body", "header", "h1", "h2", "h3", "nav", "a", "span",
    "form", "input", "button", "main", "p", "div", "table", "thead", "tbody", "tr", "th", "td", "code", "pre",
    "select", "option", "label", "textarea", "details", "summary", "ul", "li", "strong", "section", "br",
    "svg", "g", "rect", "text", "line",
}  # fmt: skip
ATTRIBUTES = {
    "lang", "charset", "name", "content", "rel", "href", "src", "defer", "class", "id", "method", "action",
    "type", "value", "required", "maxlength", "placeholder", "for", "selected", "hidden", "role", "open",
    "autocomplete", "inputmode", "xmlns", "width", "height", "viewbox", "x", "y", "x1", "y1", "x2", "y2",
    "fill", "stroke", "stroke-width", "text-anchor", "font-family", "font-size",
}  # fmt: skip
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "data", "poster", "background"}
SCRIPT_ELEMENT = {"src": "/console/static/console.js", "defer": None}


def assert_inert(html: str) -> Dom:
    """Only the console's own elements and attributes, no event handler, no URL off the console, no script
    but the console's static file."""
    dom = Dom(html)
    for tag, attrs in dom.elements:
        assert tag in TAGS, f"unexpected element <{tag} {attrs}>"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"event handler {name}={value!r} on <{tag}>"
            assert name in ATTRIBUTES or name.startswith(("aria-", "data-")), f"unexpected {name} on <{tag}>"
            if name in URL_ATTRIBUTES:
                assert value is not None and value.startswith("/") and not value.startswith("//"), value
        if tag == "script":
            assert attrs == SCRIPT_ELEMENT, attrs
    return dom


def assert_headers(reply: httpx.Response) -> None:
    assert reply.headers["content-security-policy"] == CSP, reply.request.url
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"


def emit(gw: GatewayThread, type_: str, **fields: Any) -> None:
    """An event through the gateway's own writer (hash chain and all), as the gateway would record it."""
    assert gw.running is not None and gw.running.gateway is not None
    gw.running.gateway.emit(type_, **fields)


def events_of(gw: GatewayThread, **params: Any) -> list[dict[str, Any]]:
    with api(gw) as client:
        return list(client.get(f"{P}/events", params={"page_size": 1000, **params}).json()["events"])


def store_hostile(gw: GatewayThread) -> dict[str, Any]:
    """Hostile values in every kind of record a page shows: consumer metadata, key names, event fields and
    data (paths, user agents, reasons, actors, resources, alert rules and summaries), observed endpoints."""
    made: dict[str, Any] = {"keys": []}
    with api(gw) as client:
        meta = {f"p{i}": p for i, p in enumerate(PAYLOADS)} | {"link": JS_URL_TRACE, SCRIPT: IMG}
        reply = client.post(f"{P}/consumers", json={"name": "xss-shop", "scopes": ["a:b"], "metadata": meta})
        assert reply.status_code in (201, 409), reply.text
        for payload in PAYLOADS:
            key = client.post(f"{P}/keys", json={"consumer": "xss-shop", "name": payload})
            assert key.status_code == 201, key.text
            made["keys"].append(key.json()["id"])
        client.post(f"{P}/clients", json={"consumer": "xss-shop"})
    for i, payload in enumerate(PAYLOADS):
        common = {"source_ip": "203.0.113.66", "method": "GET"}
        emit(
            gw,
            "request.denied",
            severity="warning",
            path="/" + payload,
            reason=payload[:64],
            actor="consumer:" + payload,
            resource="api_key:" + payload,
            route=payload,
            request_id=payload,
            data={"status": 403, "user_agent": payload, "excerpt": payload, SCRIPT: payload},
            **common,
        )
        emit(
            gw,
            "request.flagged",
            severity="warning",
            path="/search",
            reason="attack_detected",
            data={
                "family": "xss",
                "location": "header.user-agent",
                "excerpt": payload,
                "user_agent": payload,
            },
            **common,
        )
        emit(
            gw,
            "alert.fired",
            severity="warning",
            actor="system",
            resource="alert:" + payload,
            reason=payload[:64],
            data={
                "rule": payload,
                "summary": payload,
                "group": {"source_ip": payload},
                "channels": [payload],
            },
        )
        emit(gw, "auth.failed", severity="warning", reason="auth_invalid", data={"cause": payload}, **common)
        made.setdefault("paths", []).append(f"/xss{i}/" + payload)
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    try:
        with engine.begin() as db:
            now = time.time()
            for path in made["paths"]:
                db.execute(
                    inventory_observed_table.insert().values(
                        method="GET", template=path, count=3, first_seen=now - 60, last_seen=now
                    )
                )
    finally:
        engine.dispose()
    wait_for(lambda: len(events_of(gw, type="alert.fired", actor="system")) >= len(PAYLOADS), what="events")
    return made


def hostile_pages(made: dict[str, Any], event_id: str) -> list[str]:
    """Every page that shows one of the hostile values (and the events page reflecting them in its filter
    inputs)."""
    return [
        "/console/overview",
        "/console/overview?range=7d",
        "/console/events",
        "/console/events?" + urlencode({k: IMG for k in ("type", "actor", "resource", "source_ip", "since")}),
        f"/console/events/{event_id}",
        "/console/alerts",
        "/console/consumers",
        "/console/keys",
        "/console/keys?consumer=xss-shop",
        "/console/clients",
        "/console/inventory",
        "/console/posture",
        "/console/admins",
    ]  # fmt: skip


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with EchoUpstream() as up:
        gateway = console_gateway(up, tmp_path_factory.mktemp("console") / "bastion.db")
        with gateway:
            with api(gateway) as client:
                client.post(
                    f"{P}/consumers", json={"name": "shop", "scopes": ["orders:read", "orders:write"]}
                )
                client.post(f"{P}/keys", json={"consumer": "shop", "name": "seeded"})
                client.post(f"{P}/clients", json={"consumer": "shop"})
            yield gateway


@pytest.fixture(scope="module")
def sessions(gw: GatewayThread) -> Iterator[dict[str, Page]]:
    made = {role: console_session(gw, f"con-{role}", role) for role in ROLES}
    yield made
    for page in made.values():
        page.close()


# -- pages and roles -------------------------------------------------------------------------------------

PAGES = [
    "/console/overview",
    "/console/overview?range=7d",
    "/console/overview?range=30d",
    "/console/events",
    "/console/events?type=admin&page_size=25",
    "/console/alerts",
    "/console/alerts?since=30d",
    "/console/consumers",
    "/console/keys",
    "/console/keys?consumer=shop",
    "/console/clients",
    "/console/inventory",
    "/console/posture",
    "/console/step-up?back=keys",
]
OPERATOR_FORMS = {"/console/consumers", "/console/keys", "/console/clients"}


@pytest.mark.parametrize("role", ROLES)
def test_every_page_renders_for_each_role_with_the_right_controls(
    gw: GatewayThread, sessions: dict[str, Page], role: str
) -> None:
    page = sessions[role]
    for path in [*PAGES, "/console/admins"]:
        reply = page.get(path)
        if path == "/console/admins" and role != "admin":
            assert reply.status_code == 403 and reply.json()["code"] == "admin_forbidden"
            continue
        assert reply.status_code == 200, (path, reply.text[:300])
        assert_headers(reply)
        dom = assert_inert(reply.text)
        assert f"con-{role} ({role})" in dom.text
        nav = {a.get("href") for a in dom.all("a")}
        assert {"/console/overview", "/console/events", "/console/keys", "/console/posture"} <= nav
        assert ("/console/admins" in nav) == (role == "admin"), path
        actions = dom.post_actions() - {"/console/sign-out", "/console/step-up"}
        buttons = {(b.get("type"), b.get("class")) for b in dom.all("button")}
        if role == "viewer":
            assert actions == set(), (path, actions)
            assert buttons <= {("submit", "quiet"), ("submit", None)}, (path, buttons)  # sign out, filter
        if role in ("operator", "admin") and path.split("?")[0] in OPERATOR_FORMS:
            assert path.split("?")[0] in actions, (path, actions)
        assert not any(a.startswith("/console/admins") for a in actions) or path == "/console/admins"
    if role == "viewer":
        keys = page.get("/console/keys").text
        assert "Revoke" not in keys and "Rotate" not in keys and "New key" not in keys
    if role != "viewer":
        keys = Dom(page.get("/console/keys").text)
        assert any(a.endswith("/revoke") for a in keys.post_actions())
        assert any(a.endswith("/rotate") for a in keys.post_actions())


def test_admin_page_controls(sessions: dict[str, Page]) -> None:
    dom = assert_inert(sessions["admin"].get("/console/admins").text)
    actions = dom.post_actions()
    assert "/console/admins" in actions
    assert (
        "/console/admins/con-viewer/disable" in actions and "/console/admins/con-viewer/reset-mfa" in actions
    )
    assert "/console/admins/con-admin/disable" not in actions  # not one's own account
    assert "/console/admins/con-admin/role" not in actions


def test_every_console_route_sends_the_security_headers(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    """Pages, redirects, refusals of forms and the not-found pages: the CSP everywhere the console answers."""
    page = sessions["operator"]
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15) as anonymous:
        for (method, path), _policy in CONSOLE_POLICIES.items():
            url = re.sub(r"\{[^}]+\}", "nonexistent", path)
            for client in (anonymous, page.client):
                reply = client.request(method, url, data={"x": "1"} if method == "POST" else None)
                if reply.headers.get("content-type", "").startswith("application/problem+json"):
                    assert reply.status_code == 403 and client is page.client  # admins-only, for an operator
                    continue
                assert_headers(reply)


def test_the_sign_in_page_offers_sso_only_when_configured(gw: GatewayThread) -> None:
    from types import SimpleNamespace

    from fastapi import FastAPI

    from bastion.adapters.admin_auth import AdminPlane
    from bastion.adapters.console import add_console_routes
    from bastion.config.models import AdminAccountSettings

    async def sign_in_page(settings: Any) -> str:
        app = FastAPI()
        add_console_routes(app, AdminPlane(None, None, None, settings), None)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            return (await c.get("/console/sign-in")).text

    plain = AdminAccountSettings()
    with_sso = SimpleNamespace(**{**dict(plain), "sso": {"issuer": "https://idp.example"}})
    assert "/admin/v1/auth/oidc/start" not in asyncio.run(sign_in_page(plain))
    page = asyncio.run(sign_in_page(with_sso))
    link = [a for a in Dom(page).all("a") if a.get("id") == "sso"]
    assert link == [{"id": "sso", "href": "/admin/v1/auth/oidc/start"}]
    assert "Sign in with SSO" in page


# -- actions ---------------------------------------------------------------------------------------------


def test_consumers_create_scopes_disable_enable(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    op = sessions["operator"]
    made = op.post(
        "/console/consumers",
        {
            "name": "acme",
            "scopes": "orders:read, orders:write",
            "ip_allow": "203.0.113.0/24",
            "metadata": '{"team": "payments"}',
            "quota": "1000/day",
        },
    )
    assert made.status_code == 303 and made.headers["location"] == "/console/consumers"
    listed = op.get("/console/consumers")
    assert "Consumer acme created." in listed.text
    with api(gw) as client:
        record = client.get(f"{P}/consumers/acme").json()
    assert record["scopes"] == ["orders:read", "orders:write"] and record["metadata"] == {"team": "payments"}
    assert record["created_by"] == "admin:con-operator" and record["quota"] == "1000/day"
    assert op.post("/console/consumers/acme/scopes", {"scopes": "orders:read"}).status_code == 303
    assert op.post("/console/consumers/acme/disable").status_code == 303  # MFA checked at sign-in: fresh
    with api(gw) as client:
        record = client.get(f"{P}/consumers/acme").json()
    assert record["scopes"] == ["orders:read"] and record["status"] == "disabled"
    assert op.post("/console/consumers/acme/enable").status_code == 303
    with api(gw) as client:
        assert client.get(f"{P}/consumers/acme").json()["status"] == "active"
    # mistakes come back with the form filled in and the reason
    bad = op.post("/console/consumers", {"name": "acme", "metadata": "[1, 2]"})
    assert bad.status_code == 400 and "metadata must be a JSON object" in bad.text
    dup = op.post("/console/consumers", {"name": "acme"})
    assert dup.status_code == 409 and "already exists" in dup.text
    assert 'value="acme"' in dup.text


def test_a_key_is_shown_once_rotated_and_revoked(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    op = sessions["operator"]
    made = op.post(
        "/console/keys",
        {
            "consumer": "shop",
            "name": "from-console",
            "scopes": "orders:read",
            "ttl": "30d",
            "permissions": "",
        },
    )
    assert made.status_code == 303 and made.headers["location"] == "/console/keys"
    assert "bst_" not in made.text
    shown = op.get("/console/keys")
    dom = assert_inert(shown.text)
    secret = [c for c in re.findall(r'<code id="secret-value">([^<]+)</code>', shown.text)]
    assert len(secret) == 1 and secret[0].startswith("bst_")
    key = secret[0]
    assert {"id": "copy-secret", "type": "button", "class": "small secondary", "data-copy": "secret-value",
            "hidden": None} in dom.all("button")  # fmt: skip
    assert dom.all("script") == [SCRIPT_ELEMENT]  # the copy button's static file, only here
    # the key works at the gateway, and is never shown again: not on reload, not in another session
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=15) as client:
        assert client.get("/v1/secure", headers={"x-api-key": key}).status_code == 200
    again = op.get("/console/keys")
    assert key not in again.text and "secret-value" not in again.text and "<script" not in again.text
    for other in ("viewer", "admin"):
        assert key not in sessions[other].get("/console/keys").text
    key_id = key.split("_")[1]
    with api(gw) as client:
        record = client.get(f"{P}/keys/{key_id}").json()
    assert record["name"] == "from-console" and record["created_by"] == "admin:con-operator"
    # rotate: a new key, shown once; the old one is marked rotated
    rotated = op.post(f"/console/keys/{key_id}/rotate", {"grace": "1h"})
    assert rotated.status_code == 303
    page = op.get("/console/keys").text
    new = re.findall(r'<code id="secret-value">([^<]+)</code>', page)
    assert len(new) == 1 and new[0] != key and f"replacing {key_id}" in page
    with api(gw) as client:
        assert client.get(f"{P}/keys/{key_id}").json()["rotated_to"] == new[0].split("_")[1]
    # revoke both
    for kid in (key_id, new[0].split("_")[1]):
        assert op.post(f"/console/keys/{kid}/revoke").status_code == 303
        assert f"Key {kid} revoked." in op.get("/console/keys").text
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=15) as client:
        assert client.get("/v1/secure", headers={"x-api-key": new[0]}).status_code == 401
    bad = op.post("/console/keys", {"consumer": "shop", "scopes": "admin:all"})
    assert bad.status_code == 400 and "not allowed for this consumer" in bad.text


def test_an_oauth_client_secret_is_shown_once_and_the_client_revoked(
    gw: GatewayThread, sessions: dict[str, Page]
) -> None:
    op = sessions["operator"]
    assert op.post("/console/clients", {"consumer": "shop", "scopes": "orders:read"}).status_code == 303
    page = op.get("/console/clients").text
    secret = re.findall(r'<code id="secret-value">([^<]+)</code>', page)
    assert len(secret) == 1 and secret[0].startswith("bcs_")
    client_id = re.search(r"Client (bcl_\w+) for consumer shop", page).group(1)  # type: ignore[union-attr]
    assert secret[0] not in op.get("/console/clients").text
    assert op.post(f"/console/clients/{client_id}/revoke").status_code == 303
    with api(gw) as client:
        record = next(c for c in client.get(f"{P}/clients").json()["clients"] if c["client_id"] == client_id)
    assert record["revoked_by"] == "admin:con-operator"


def test_admin_accounts_add_disable_enable_role_reset_mfa(
    gw: GatewayThread, sessions: dict[str, Page]
) -> None:
    boss = sessions["admin"]
    made = boss.post(
        "/console/admins", {"name": "newcomer", "email": "newcomer@example.com", "role": "viewer"}
    )
    assert made.status_code == 303
    page = boss.get("/console/admins").text
    password = re.findall(r'<code id="secret-value">([^<]+)</code>', page)
    assert len(password) == 1 and len(password[0]) >= 16
    assert password[0] not in boss.get("/console/admins").text
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15) as c:
        login = c.post(f"{P}/auth/login", json={"email": "newcomer@example.com", "password": password[0]})
        assert login.status_code == 200 and login.json()["stage"] == "enrol"
    target = signed_in(gw, "managed", "operator")
    try:
        assert boss.post("/console/admins/managed/role", {"role": "viewer"}).status_code == 303
        assert boss.post("/console/admins/managed/reset-mfa").status_code == 303
        assert target.call("GET", f"{P}/consumers").status_code == 401  # its sessions ended
        assert boss.post("/console/admins/managed/disable").status_code == 303
        with api(gw) as client:
            record = client.get(f"{P}/admins/managed").json()
        assert (record["role"], record["status"], record["mfa"]) == ("viewer", "disabled", False)
        assert boss.post("/console/admins/managed/enable").status_code == 303
        with api(gw) as client:
            assert client.get(f"{P}/admins/managed").json()["status"] == "active"
    finally:
        target.close()
    own = boss.post("/console/admins/con-admin/disable")
    assert own.status_code == 303
    assert "cannot disable their own account" in boss.get("/console/admins").text
    with api(gw) as client:
        assert client.get(f"{P}/admins/con-admin").json()["status"] == "active"
    weak = boss.post("/console/admins", {"name": "bad name", "email": "x@example.com", "role": "viewer"})
    assert weak.status_code == 400 and 'value="bad name"' in weak.text
    passwordless = boss.post(
        "/console/admins",
        {"name": "nopw", "email": "nopw@example.com", "role": "viewer", "passwordless": "1"},
    )
    assert passwordless.status_code == 303
    assert "signs in with emailed codes" in boss.get("/console/admins").text


# -- refusals --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def targets(gw: GatewayThread) -> dict[str, str]:
    """Objects the refusal tests aim at; each must be unchanged afterwards."""
    seed(gw, "csrf-target", "viewer")
    with api(gw) as client:
        client.post(f"{P}/consumers", json={"name": "csrf-target", "scopes": ["a:b"]})
        key = client.post(f"{P}/keys", json={"consumer": "csrf-target"}).json()
        oauth = client.post(f"{P}/clients", json={"consumer": "csrf-target"}).json()
    return {"name": "csrf-target", "key_id": key["id"], "client_id": oauth["client_id"]}


def state(gw: GatewayThread, t: dict[str, str]) -> Any:
    with api(gw) as client:
        consumer = client.get(f"{P}/consumers/{t['name']}").json()
        key = client.get(f"{P}/keys/{t['key_id']}").json()
        oauth = [c for c in client.get(f"{P}/clients").json()["clients"] if c["client_id"] == t["client_id"]]
        admin = client.get(f"{P}/admins/{t['name']}").json()
        return (
            consumer["status"],
            consumer["scopes"],
            key["revoked_at"],
            key["rotated_to"],
            oauth[0]["revoked_at"],
            admin["status"],
            admin["role"],
            admin["mfa"],
            len(client.get(f"{P}/consumers").json()["consumers"]),
            len(client.get(f"{P}/admins").json()["admins"]),
        )


FORM_ROUTES = sorted(
    (path, policy.level)
    for (method, path), policy in CONSOLE_POLICIES.items()
    if method == "POST" and policy.level in ROLES
)
FIELDS = {
    "/console/consumers": {"name": "forged"},
    "/console/consumers/{name}/scopes": {"scopes": ""},
    "/console/keys": {"consumer": "csrf-target"},
    "/console/clients": {"consumer": "csrf-target"},
    "/console/admins": {"name": "forged", "email": "forged@example.com", "role": "admin"},
    "/console/admins/{name}/role": {"role": "admin"},
    "/console/step-up": {"code": "000000", "back": "keys"},
}


def _url(path: str, t: dict[str, str]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: t[m.group(1)], path)


@pytest.mark.parametrize(("path", "level"), FORM_ROUTES)
def test_forms_without_this_sessions_csrf_token_change_nothing(
    gw: GatewayThread, sessions: dict[str, Page], targets: dict[str, str], path: str, level: str
) -> None:
    boss, other = sessions["admin"], sessions["viewer"]
    before = state(gw, targets)
    fields = FIELDS.get(path, {})
    for token in ("", "x" * 43, other.admin.csrf or ""):  # none, made up, another session's
        reply = boss.post(_url(path, targets), fields, csrf=token)
        assert reply.status_code == 403, (path, reply.status_code, reply.text[:200])
        assert "The form expired" in reply.text
        assert_headers(reply)
    # nor does the API's header stand in for the form's field
    reply = boss.client.post(
        _url(path, targets), data=fields, headers={"x-csrf-token": boss.admin.csrf or ""}
    )
    assert reply.status_code == 403
    assert state(gw, targets) == before


@pytest.mark.parametrize(("path", "level"), [(p, lv) for p, lv in FORM_ROUTES if lv != "viewer"])
def test_a_lower_role_is_refused_even_with_a_valid_token(
    gw: GatewayThread, sessions: dict[str, Page], targets: dict[str, str], path: str, level: str
) -> None:
    before = state(gw, targets)
    lower = ["viewer"] if level == "operator" else ["viewer", "operator"]
    for role in lower:
        reply = sessions[role].post(_url(path, targets), FIELDS.get(path, {}))
        assert reply.status_code == 403 and reply.json()["code"] == "admin_forbidden", (role, path)
    assert state(gw, targets) == before


def test_anonymous_form_posts_go_to_sign_in(gw: GatewayThread, targets: dict[str, str]) -> None:
    before = state(gw, targets)
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15) as anonymous:
        for path, _ in FORM_ROUTES:
            reply = anonymous.post(_url(path, targets), data=FIELDS.get(path, {}))
            assert reply.status_code == 303 and reply.headers["location"] == "/console/sign-in"
    assert state(gw, targets) == before


def test_sensitive_actions_need_a_fresh_second_factor(gw: GatewayThread) -> None:
    """The same admin app in-process on the gateway's store, with a clock the test moves: past
    step_up_within every step-up route shows the step-up page and does nothing; a code makes it work."""
    assert gw.running is not None and gw.running.gateway is not None
    clock = FakeClock(time.time())
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    app: Any = build_admin_app(
        gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]), clock=clock
    )
    seed(gw, "stepper", "admin")
    seed(gw, "stepped-on", "viewer")
    with api(gw) as client:
        client.post(f"{P}/consumers", json={"name": "step-shop", "scopes": []})
        step_key = client.post(f"{P}/keys", json={"consumer": "step-shop"}).json()

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            signed = await c.post(
                f"{P}/auth/login", json={"email": "stepper@example.com", "password": PASSWORD}
            )
            csrf = {"x-csrf-token": signed.json()["csrf_token"]}
            begun = (await c.post(f"{P}/auth/mfa/totp", headers=csrf)).json()
            totp = pyotp.TOTP(parse_qs(urlsplit(begun["otpauth_uri"]).query)["secret"][0])
            done = await c.post(f"{P}/auth/mfa/totp/confirm", json={"code": totp.at(clock.now)}, headers=csrf)
            token = done.json()["csrf_token"]
            clock.now += 601  # past step_up_within (10 minutes)
            stale = {
                ("POST", "/console/consumers/{name}/disable"): ("/console/consumers/step-shop/disable", {}),
                ("POST", "/console/consumers/{name}/keys/revoke-all"): (
                    "/console/consumers/step-shop/keys/revoke-all",
                    {},
                ),
                ("GET", "/console/events/export"): ("/console/events/export", {}),
                ("POST", "/console/admins"): (
                    "/console/admins",
                    {"name": "stale-made", "email": "stale-made@example.com", "role": "viewer"},
                ),
                ("POST", "/console/admins/{name}/disable"): ("/console/admins/stepped-on/disable", {}),
                ("POST", "/console/admins/{name}/enable"): ("/console/admins/stepped-on/enable", {}),
                ("POST", "/console/admins/{name}/role"): (
                    "/console/admins/stepped-on/role",
                    {"role": "admin"},
                ),
                ("POST", "/console/admins/{name}/reset-mfa"): ("/console/admins/stepped-on/reset-mfa", {}),
            }
            assert set(stale) == STEP_UP
            for (method, _), (url, fields) in stale.items():
                if method == "GET":
                    reply = await c.get(url)
                else:
                    reply = await c.post(url, data={**fields, "csrf_token": token})
                assert reply.status_code == 403 and "Confirm it is you" in reply.text, url
                assert reply.headers["content-security-policy"] == CSP
            with api(gw) as client:  # the stale attempts did nothing
                assert client.get(f"{P}/keys/{step_key['id']}").json()["revoked_at"] is None
            # not sensitive: still fine
            assert (
                await c.post("/console/consumers/step-shop/enable", data={"csrf_token": token})
            ).status_code == 303
            wrong = await c.post(
                "/console/step-up", data={"csrf_token": token, "code": "000000", "back": "consumers"}
            )
            assert wrong.status_code == 401 and "not valid" in wrong.text
            clock.now += 30
            ok = await c.post(
                "/console/step-up",
                data={"csrf_token": token, "code": totp.at(clock.now), "back": "consumers"},
            )
            assert ok.status_code == 303 and ok.headers["location"] == "/console/consumers"
            url, fields = stale[("POST", "/console/consumers/{name}/keys/revoke-all")]
            assert (await c.post(url, data={"csrf_token": token})).status_code == 303
            url, fields = stale[("POST", "/console/consumers/{name}/disable")]
            assert (await c.post(url, data={"csrf_token": token})).status_code == 303
            url, fields = stale[("POST", "/console/admins")]
            assert (await c.post(url, data={**fields, "csrf_token": token})).status_code == 303
            exported = await c.get("/console/events/export", params={"actor": "admin:stepper"})
            assert exported.status_code == 200 and exported.headers["content-type"].startswith(
                "application/x-ndjson"
            )

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
    with api(gw) as client:
        assert client.get(f"{P}/consumers/step-shop").json()["status"] == "disabled"
        assert client.get(f"{P}/admins/stale-made").status_code == 200
        assert client.get(f"{P}/keys/{step_key['id']}").json()["revoked_by"] == "admin:stepper"
        stepped_on = client.get(f"{P}/admins/stepped-on").json()
    assert (stepped_on["status"], stepped_on["role"]) == (
        "active",
        "viewer",
    )  # the stale attempts did nothing

    def refusals() -> int:
        events = events_of(gw, type="admin.forbidden", actor="admin:stepper")
        return len([e for e in events if e["reason"] == "admin_step_up_required"])

    wait_for(lambda: refusals() >= len(STEP_UP), what="the step-up refusals")
    assert refusals() == len(STEP_UP)


# -- monitoring pages ------------------------------------------------------------------------------------


def test_events_page_filters_and_pages_like_the_monitor_api(
    gw: GatewayThread, sessions: dict[str, Page]
) -> None:
    now = time.time()
    for i in range(3):
        emit(
            gw,
            "request.denied",
            severity="warning",
            actor=f"consumer:filter-a/key:k{i}",
            resource="api_key:filter-k",
            source_ip="198.51.100.7",
            method="GET",
            path=f"/filter/{i}",
            reason="auth_required",
        )
    emit(gw, "auth.failed", severity="error", source_ip="198.51.100.8", reason="auth_invalid", path="/f")
    emit(
        gw, "consumer.created", now=now - 7200, severity="notice", actor="cli:filter", resource="consumer:ff"
    )
    wait_for(lambda: len(events_of(gw, source_ip="198.51.100.7")) == 3, what="the filter events")
    page = sessions["viewer"]

    def ids(**params: str) -> list[str]:
        reply = page.get("/console/events", **params)
        assert reply.status_code == 200, reply.text[:300]
        return re.findall(r'href="/console/events/([0-9A-HJKMNP-TV-Z]{26})"', reply.text)

    def api_ids(**params: str) -> list[str]:
        return [e["id"] for e in events_of(gw, **params)]

    checks: list[dict[str, str]] = [
        {"actor": "consumer:filter-a"},
        {"resource": "api_key:filter-k"},
        {"source_ip": "198.51.100.8"},
        {"type": "auth.", "source_ip": "198.51.100.8"},
        {"severity": "error", "source_ip": "198.51.100.8"},
        {"min_severity": "warning", "source_ip": "198.51.100.7"},
        {"actor": "cli:filter", "since": "3h", "until": "1h"},
        {"actor": "cli:filter", "since": "1h"},
    ]
    for params in checks:
        assert ids(**params) == api_ids(**params), params
    assert len(ids(actor="consumer:filter-a")) == 3
    assert len(ids(actor="cli:filter", since="3h", until="1h")) == 1
    assert ids(actor="cli:filter", since="1h") == []
    # the filter values stay in the form
    form = Dom(page.get("/console/events", actor="consumer:filter-a", severity="warning").text)
    values = {i.get("name"): i.get("value") for i in form.all("input")}
    assert values["actor"] == "consumer:filter-a"
    assert {"value": "warning", "selected": None} in form.all("option")
    # paging: one at a time, following the "Older events" link, the same order as the API
    seen, url = [], "/console/events?actor=consumer%3Afilter-a&page_size=1"
    while url:
        reply = page.get(url)
        seen += re.findall(r'href="/console/events/([0-9A-HJKMNP-TV-Z]{26})"', reply.text)
        nxt = [a.get("href") for a in Dom(reply.text).all("a") if a.get("id") == "next-page"]
        url = (nxt[0] or "") if nxt else ""
    assert seen == api_ids(actor="consumer:filter-a")
    # a bad filter says why, with a 400
    bad = page.get("/console/events", since="yesterday")
    assert bad.status_code == 400 and "The filter is not valid" in bad.text
    bad = page.get("/console/events", severity="loud")
    assert bad.status_code == 400
    # one event
    one = page.get(f"/console/events/{seen[0]}")
    assert one.status_code == 200 and "auth_required" in one.text and "/filter/" in one.text
    assert page.get("/console/events/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404


def test_overview_counts_and_charts(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    emit(gw, "alert.fired", severity="warning", actor="system", resource="alert:overview-rule",
         data={"rule": "overview-rule", "summary": "spike in 401s"})  # fmt: skip
    wait_for(lambda: events_of(gw, resource="alert:overview-rule"), what="the alert")
    reply = sessions["viewer"].get("/console/overview")
    dom = assert_inert(reply.text)
    bars = [r for r in dom.all("rect") if (r.get("class") or "").startswith("bar series-")]
    assert len(bars) == 24 * 3  # per hour, three series
    assert "overview-rule" in dom.text and "spike in 401s" in dom.text
    tile = r'<div class="value">(?:<a [^>]*>)?(\d+)(?:</a>)?</div><div class="label">([^<]+)<'
    tiles = {label: int(value) for value, label in re.findall(tile, reply.text)}
    assert tiles["alerts fired"] >= 1 and tiles["events (last 24 hours)"] >= tiles["requests denied"] >= 0
    week = sessions["viewer"].get("/console/overview?range=7d")
    assert (
        len([r for r in Dom(week.text).all("rect") if (r.get("class") or "").startswith("bar series-")]) == 21
    )


def test_alerts_page_lists_alert_fired_events(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    emit(gw, "alert.fired", severity="critical", actor="system", resource="alert:alerts-page-rule",
         data={"rule": "alerts-page-rule", "summary": "credential stuffing from 198.51.100.9",
               "group": {"source_ip": "198.51.100.9"}, "channels": ["ops-webhook"]})  # fmt: skip
    wait_for(lambda: events_of(gw, resource="alert:alerts-page-rule"), what="the alert")
    dom = assert_inert(sessions["viewer"].get("/console/alerts").text)
    assert "alerts-page-rule" in dom.text and "credential stuffing from 198.51.100.9" in dom.text
    assert "source_ip=198.51.100.9" in dom.text and "ops-webhook" in dom.text
    assert any((r.get("class") or "") == "bar" for r in dom.all("rect"))  # the chart by rule


def test_inventory_page(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    try:
        with engine.begin() as db:
            db.execute(
                inventory_observed_table.insert().values(
                    method="DELETE",
                    template="/v1/legacy/{id}",
                    count=7,
                    first_seen=time.time(),
                    last_seen=time.time(),
                )
            )
    finally:
        engine.dispose()
    with api(gw) as client:
        expected = client.get(f"{P}/inventory").json()
    dom = assert_inert(sessions["viewer"].get("/console/inventory").text)
    assert "/v1/legacy/{id}" in dom.text and "/v1/secure" in dom.text
    for e in expected["declared"]:
        assert e["path"] in dom.text
    tiles = re.findall(r'<div class="value">(\d+)</div>', sessions["viewer"].get("/console/inventory").text)
    assert [int(t) for t in tiles] == [len(expected[k]) for k in ("declared", "undeclared", "unused")]


def test_posture_page_is_the_audit_of_the_running_config(gw: GatewayThread) -> None:
    """A fresh admin app (the page caches its report for a few seconds), then ``bastion audit``'s own
    functions on the same config and store: the same score and findings."""
    assert gw.running is not None and gw.running.gateway is not None
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    app: Any = build_admin_app(gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet(["127.0.0.0/8"]))

    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://admin", headers=headers) as c:
            return await c.get("/console/posture")

    try:
        reply = asyncio.run(fetch())
    finally:
        engine.dispose()
    assert reply.status_code == 200
    assert_headers(reply)
    dom = assert_inert(reply.text)
    loaded = gw.loaded
    store, detail = posture.read_store(loaded)
    report = posture.audit(LoadedConfig(loaded.settings, loaded.source, lines=loaded.lines), store, detail)
    score = re.search(r'<div class="score" id="score">(\d+)</div>', reply.text)
    assert score is not None and int(score.group(1)) == report.score
    for pid, title in posture.PRACTICES.items():
        assert f"{pid} {title}" in dom.text
    for r in report.results:
        if r.status in ("fail", "warn"):
            assert r.rule.id in dom.text and r.findings[0].message in dom.text


# -- hostile values --------------------------------------------------------------------------------------


def test_hostile_values_render_as_inert_text(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    made = store_hostile(gw)
    event_id = events_of(gw, type="request.denied", source_ip="203.0.113.66")[0]["id"]
    page = sessions["admin"]
    shown: set[str] = set()
    for url in hostile_pages(made, event_id):
        reply = page.get(url)
        assert reply.status_code in (200, 400), (url, reply.status_code)
        assert_headers(reply)
        dom = assert_inert(reply.text)
        assert not dom.all("img") and not dom.all("script") and not dom.all("iframe")
        for payload in PAYLOADS:
            if payload in dom.text:
                shown.add(payload)
        # in the source, only ever escaped
        for raw in ("<script>", "<img", "<svg onload", 'onerror="'):
            assert raw not in reply.text, (url, raw)
    assert shown == set(PAYLOADS), "every hostile value was displayed somewhere, as text"
    keys = page.get("/console/keys?consumer=xss-shop").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in keys
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in keys
    detail = Dom(page.get(f"/console/events/{event_id}").text).text
    assert "user_agent" in detail and any(p in detail for p in PAYLOADS)


def test_a_hostile_consumer_name_is_refused_and_echoed_inert(sessions: dict[str, Page]) -> None:
    """Consumer names are restricted (letters, digits, ._@-): a hostile one is refused, and the form that
    comes back with it filled in renders it as an attribute value, not markup."""
    for payload in (SCRIPT, IMG, JS_URL, IMG_TRACE):
        reply = sessions["operator"].post("/console/consumers", {"name": payload, "scopes": payload})
        assert reply.status_code == 400 and "consumer names are" in reply.text
        dom = assert_inert(reply.text)
        names = [i.get("value") for i in dom.all("input") if i.get("name") == "name"]
        assert names == [payload[:64]]


# -- sensitive actions: revoking all keys, exporting events -----------------------------------------------


def test_revoke_all_keys_of_a_consumer_from_its_page(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    with api(gw) as client:
        client.post(f"{P}/consumers", json={"name": "con-fleet", "scopes": []})
        made = [client.post(f"{P}/keys", json={"consumer": "con-fleet"}).json()["id"] for _ in range(2)]
    op = console_session(gw, "con-revoker", "operator")  # just signed in: the second factor is fresh
    try:
        revoke_all_from_the_page(gw, op, sessions["viewer"], made)
    finally:
        op.close()


def revoke_all_from_the_page(gw: GatewayThread, op: Page, viewer: Page, made: list[str]) -> None:
    page = op.get("/console/consumers")
    action = "/console/consumers/con-fleet/keys/revoke-all"
    assert action in assert_inert(page.text).post_actions()
    assert action not in Dom(viewer.get("/console/consumers").text).post_actions()
    done = op.post(action)
    assert done.status_code == 303 and done.headers["location"] == "/console/consumers"
    assert "All keys of con-fleet revoked (2)." in op.get("/console/consumers").text
    with api(gw) as client:
        records = client.get(f"{P}/keys", params={"consumer": "con-fleet"}).json()["keys"]
    assert {r["id"] for r in records} == set(made)
    assert {r["revoked_by"] for r in records} == {"admin:con-revoker"}
    wait_for(
        lambda: events_of(gw, type="consumer.keys_revoked", actor="admin:con-revoker"),
        what="the consumer.keys_revoked event",
    )


def test_the_events_page_exports_what_its_filters_show(gw: GatewayThread, sessions: dict[str, Page]) -> None:
    for i in range(3):
        emit(gw, "request.denied", severity="warning", source_ip="198.51.100.41", path=f"/exp/{i}")
    wait_for(lambda: len(events_of(gw, source_ip="198.51.100.41")) == 3, what="the events")
    op = console_session(gw, "con-exporter", "operator")  # just signed in: the second factor is fresh
    try:
        export_from_the_page(gw, op, sessions["viewer"])
    finally:
        op.close()


def export_from_the_page(gw: GatewayThread, op: Page, viewer_page: Page) -> None:
    dom = assert_inert(op.get("/console/events", source_ip="198.51.100.41").text)
    links = [a.get("href") for a in dom.all("a") if a.get("id") == "export"]
    assert links == ["/console/events/export?source_ip=198.51.100.41"]
    reply = op.get("/console/events/export", source_ip="198.51.100.41")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
    assert_headers(reply)
    assert reply.headers["content-disposition"].startswith("attachment;")
    exported = [json.loads(line) for line in reply.text.splitlines()]
    assert exported == list(reversed(events_of(gw, source_ip="198.51.100.41")))
    bad = op.get("/console/events/export", since="yesterday")
    assert bad.status_code == 400 and "not valid" in bad.text
    # a viewer has no link, and the route refuses them
    viewer = Dom(viewer_page.get("/console/events").text)
    assert not [a for a in viewer.all("a") if a.get("id") == "export"]
    refused = viewer_page.get("/console/events/export")
    assert refused.status_code == 403 and refused.json()["code"] == "admin_forbidden"
    wait_for(
        lambda: events_of(gw, type="events.exported", actor="admin:con-exporter"),
        what="the events.exported event",
    )


# -- passwordless sign-in --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[Controller, Mailbox]]:
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, box
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def mailbox(smtp_server: tuple[Controller, Mailbox]) -> Mailbox:
    return smtp_server[1]


@pytest.fixture(scope="module")
def mail_gw(
    tmp_path_factory: pytest.TempPathFactory, smtp_server: tuple[Controller, Mailbox]
) -> Iterator[GatewayThread]:
    """A console gateway with admin.accounts.email (that server) and external_url."""
    with EchoUpstream() as up:
        extra = email_block(smtp_server[0].port)
        gateway = console_gateway(up, tmp_path_factory.mktemp("mail") / "bastion.db", accounts_extra=extra)
        with gateway:
            yield gateway


def test_the_sign_in_page_offers_an_emailed_code_only_when_email_is_configured(
    gw: GatewayThread, mail_gw: GatewayThread
) -> None:
    for gateway, offered in ((gw, False), (mail_gw, True)):
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.admin_port}", timeout=15) as browser:
            page = browser.get("/console/sign-in")
            assert_headers(page)
            assert ("/console/sign-in/email" in assert_inert(page.text).post_actions()) is offered


def test_sign_in_with_an_emailed_code_from_the_console(mail_gw: GatewayThread, mailbox: Mailbox) -> None:
    seed(mail_gw, "by-mail", "operator", password=None)
    address = "by-mail@example.com"
    with httpx.Client(base_url=f"http://127.0.0.1:{mail_gw.admin_port}", timeout=15) as browser:
        token = hidden_csrf(browser.get("/console/sign-in").text)
        # without the double submit (no field; or the field without this browser's cookie): nothing is sent
        assert browser.post("/console/sign-in/email", data={"email": address}).status_code == 403
        with httpx.Client(base_url=f"http://127.0.0.1:{mail_gw.admin_port}", timeout=15) as stranger:
            forged = stranger.post("/console/sign-in/email", data={"csrf_token": token, "email": address})
            assert forged.status_code == 403
        assert mailbox.codes_for(address) == []
        # a forged Host header changes nothing in the mail
        sent = browser.post(
            "/console/sign-in/email",
            data={"csrf_token": token, "email": address},
            headers={"host": "evil.example"},
        )
        assert sent.status_code == 200
        assert_headers(sent)
        dom = assert_inert(sent.text)
        assert "/console/sign-in/code" in dom.post_actions() and address in dom.text
        unknown = browser.post(
            "/console/sign-in/email", data={"csrf_token": token, "email": "nobody@example.com"}
        )
        assert (
            unknown.status_code == 200
            and "/console/sign-in/code" in assert_inert(unknown.text).post_actions()
        )
        code = wait_code(mailbox, address)
        link = wait_link(mailbox, address)
        assert link.startswith(f"{EXTERNAL}/console/sign-in/link?token=") and "evil.example" not in link
        fields = {"csrf_token": token, "email": address}
        signed = browser.post("/console/sign-in/code", data={**fields, "code": code})
        assert signed.status_code == 303 and signed.headers["location"] == "/console/enrol"  # require_mfa
    # another browser: the refusals, then a new code
    with httpx.Client(base_url=f"http://127.0.0.1:{mail_gw.admin_port}", timeout=15) as browser:
        token = hidden_csrf(browser.get("/console/sign-in").text)
        fields = {"csrf_token": token, "email": address}
        assert browser.post("/console/sign-in/code", data={"email": address, "code": code}).status_code == 403
        reused = browser.post("/console/sign-in/code", data={**fields, "code": code})
        assert reused.status_code == 401 and "not valid" in reused.text
        assert_inert(reused.text)
        assert "bastion_admin" not in browser.cookies
        # the link of the same email went with the code
        page = browser.get(local(link))
        spent = browser.post(
            "/console/sign-in/link", data={"csrf_token": hidden_csrf(page.text), "token": token_of(link)}
        )
        assert spent.status_code == 401
        # a new code: signed in again
        token = hidden_csrf(page.text)  # the link's page set a new double-submit cookie
        fields = {"csrf_token": token, "email": address}
        again = browser.post("/console/sign-in/email", data=fields)
        assert again.status_code == 200, again.text
        fresh = wait_code(mailbox, address, 2)
        done = browser.post("/console/sign-in/code", data={**fields, "code": fresh})
        assert done.status_code == 303 and done.headers["location"] == "/console/enrol"
        assert browser.cookies.get("bastion_admin")
        assert browser.get("/console/enrol").status_code == 200

    def found() -> Any:
        passed = events_of(mail_gw, type="admin_auth.first_factor_passed", actor="admin:by-mail")
        return len(passed) == 2 and {e["data"]["method"] for e in passed} == {"email_code"}

    wait_for(found, what="the sign-in events")
    text = json.dumps(events_of(mail_gw))
    assert code not in text and fresh not in text and token_of(link).split(".")[1] not in text
