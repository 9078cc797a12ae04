"""Roles on every admin route, over the real admin listener.

The route list comes from the admin app itself (its FastAPI routes), and this module keeps its own table of
what each route should need: a route added to the app without a line here fails
``test_every_route_is_in_this_table``, and a route added without an access policy stops the app from being
built at all. Each route is then called as anonymous, viewer, operator, admin and the bearer token, and must
answer exactly as the table says: below the role, 401 (anonymous) or 403 ``admin_forbidden``; at or above
it, whatever the handler answers (200, 400 for the empty body, 404 for the made-up id…), never 401/403.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pyotp
import pytest

from bastion.adapters.admin import build_admin_app
from bastion.core.forwarding import NetworkSet
from bastion.store.database import open_database

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread
from .test_admin import wait_for
from .test_admin_accounts import PASSWORD, PEPPER, Admin, admin_gateway, seed, signed_in

P = "/admin/v1"
# (method, path) -> least level: public | partial | viewer | operator | admin; "+" marks step-up routes.
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", f"{P}/health"): "public",
    ("GET", f"{P}/status"): "viewer",
    ("GET", f"{P}/events"): "viewer",
    ("GET", f"{P}/events/export"): "operator+",
    ("GET", P + "/events/{event_id}"): "viewer",
    ("GET", f"{P}/inventory"): "viewer",
    ("GET", f"{P}/openapi.json"): "viewer",
    ("GET", "/metrics"): "viewer",
    ("POST", f"{P}/auth/login"): "public",
    ("POST", f"{P}/auth/email/start"): "public",
    ("POST", f"{P}/auth/email/verify"): "public",
    ("GET", f"{P}/auth/oidc/start"): "public",
    ("GET", f"{P}/auth/oidc/callback"): "public",
    ("POST", f"{P}/auth/mfa"): "partial",
    ("POST", f"{P}/auth/mfa/totp"): "partial",
    ("POST", f"{P}/auth/mfa/totp/confirm"): "partial",
    ("GET", f"{P}/auth/session"): "partial",
    ("POST", f"{P}/auth/logout"): "partial",
    ("POST", f"{P}/auth/step-up"): "viewer",
    ("POST", f"{P}/auth/recovery-codes"): "viewer+",
    ("POST", f"{P}/auth/password"): "viewer+",
    ("GET", f"{P}/admins"): "viewer",
    ("GET", P + "/admins/{name}"): "viewer",
    ("POST", f"{P}/admins"): "admin+",
    ("POST", P + "/admins/{name}/disable"): "admin+",
    ("POST", P + "/admins/{name}/enable"): "admin+",
    ("PUT", P + "/admins/{name}/role"): "admin+",
    ("POST", P + "/admins/{name}/reset-mfa"): "admin+",
    ("POST", f"{P}/consumers"): "operator",
    ("GET", f"{P}/consumers"): "viewer",
    ("GET", P + "/consumers/{name}"): "viewer",
    ("POST", P + "/consumers/{name}/disable"): "operator+",
    ("POST", P + "/consumers/{name}/enable"): "operator",
    ("PUT", P + "/consumers/{name}/quota"): "operator",
    ("PUT", P + "/consumers/{name}/scopes"): "operator",
    ("POST", f"{P}/keys"): "operator",
    ("GET", f"{P}/keys"): "viewer",
    ("GET", P + "/keys/{key_id}"): "viewer",
    ("POST", P + "/consumers/{name}/keys/revoke-all"): "operator+",
    ("POST", P + "/keys/{key_id}/revoke"): "operator",
    ("POST", P + "/keys/{key_id}/rotate"): "operator",
    ("POST", f"{P}/clients"): "operator",
    ("GET", f"{P}/clients"): "viewer",
    ("POST", P + "/clients/{client_id}/revoke"): "operator",
    ("POST", f"{P}/credentials"): "operator",
    ("GET", f"{P}/credentials"): "viewer",
    ("GET", P + "/credentials/{credential_id}"): "viewer",
    ("POST", P + "/credentials/{credential_id}/revoke"): "operator",
    # the web console
    ("GET", "/console/"): "public",
    ("GET", "/console/static/console.css"): "public",
    ("GET", "/console/sign-in"): "public",
    ("POST", "/console/sign-in"): "public",
    ("POST", "/console/sign-in/email"): "public",
    ("POST", "/console/sign-in/code"): "public",
    ("GET", "/console/sign-in/link"): "public",
    ("POST", "/console/sign-in/link"): "public",
    ("GET", "/console/mfa"): "partial",
    ("POST", "/console/mfa"): "partial",
    ("GET", "/console/enrol"): "partial",
    ("POST", "/console/enrol"): "partial",
    ("POST", "/console/sign-out"): "partial",
    ("GET", "/console/keys"): "viewer",
    ("POST", "/console/keys/{key_id}/revoke"): "operator",
    ("GET", "/console/static/console.js"): "public",
    ("GET", "/console/step-up"): "viewer",
    ("POST", "/console/step-up"): "viewer",
    ("GET", "/console/overview"): "viewer",
    ("GET", "/console/events"): "viewer",
    ("GET", "/console/events/export"): "operator+",
    ("GET", "/console/events/{event_id}"): "viewer",
    ("GET", "/console/alerts"): "viewer",
    ("GET", "/console/inventory"): "viewer",
    ("GET", "/console/posture"): "viewer",
    ("GET", "/console/consumers"): "viewer",
    ("POST", "/console/consumers"): "operator",
    ("POST", "/console/consumers/{name}/disable"): "operator+",
    ("POST", "/console/consumers/{name}/enable"): "operator",
    ("POST", "/console/consumers/{name}/scopes"): "operator",
    ("POST", "/console/consumers/{name}/keys/revoke-all"): "operator+",
    ("POST", "/console/keys"): "operator",
    ("POST", "/console/keys/{key_id}/rotate"): "operator",
    ("GET", "/console/clients"): "viewer",
    ("POST", "/console/clients"): "operator",
    ("POST", "/console/clients/{client_id}/revoke"): "operator",
    ("GET", "/console/admins"): "admin",
    ("POST", "/console/admins"): "admin+",
    ("POST", "/console/admins/{name}/disable"): "admin+",
    ("POST", "/console/admins/{name}/enable"): "admin+",
    ("POST", "/console/admins/{name}/role"): "admin+",
    ("POST", "/console/admins/{name}/reset-mfa"): "admin+",
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with EchoUpstream() as up:
        gateway = admin_gateway(up, tmp_path_factory.mktemp("roles") / "bastion.db")
        with gateway:
            yield gateway


@pytest.fixture(scope="module")
def app_routes(gw: GatewayThread) -> list[tuple[str, str]]:
    """Every (method, path) of the admin app, built the way ``bastion serve`` builds it."""
    assert gw.running is not None and gw.running.gateway is not None
    engine = open_database(gw.loaded.settings.storage.database, migrate_schema=False)
    guard: Any = build_admin_app(
        gw.running.gateway, engine, ADMIN_TOKEN, NetworkSet([]), metrics=lambda: b"", stats=lambda: {}
    )
    routes = [
        (method, route.path)
        for route in guard.router.routes
        for method in sorted(getattr(route, "methods", None) or ())
        if method != "HEAD"
    ]
    engine.dispose()
    return routes


@pytest.fixture(scope="module")
def principals(gw: GatewayThread) -> Iterator[dict[str, Admin | None]]:
    made = {role: signed_in(gw, f"matrix-{role}", role) for role in RANK}
    yield {"anonymous": None, **made}
    for admin in made.values():
        admin.close()


def test_every_route_is_in_this_table(app_routes: list[tuple[str, str]]) -> None:
    assert sorted(app_routes) == sorted(EXPECTED), "a route was added or removed: update EXPECTED"


def _call(gw: GatewayThread, who: str, principal: Admin | None, method: str, path: str) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", "nonexistent", path)
    body = {} if method in ("POST", "PUT") else None
    if who == "token":
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15) as client:
            return client.request(method, url, json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    if principal is None:
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15) as client:
            return client.request(method, url, json=body)
    return principal.call(method, url, body)


def refusal(reply: httpx.Response) -> str | None:
    """The guard's refusal code, or None when the request reached its handler."""
    if reply.status_code == 303:
        return reply.headers.get("x-bastion-refused")
    if reply.status_code in (401, 403) and reply.headers.get("content-type", "").startswith(
        "application/problem+json"
    ):
        code = reply.json().get("code")
        return code if code in ("admin_unauthorized", "admin_forbidden", "admin_mfa_required") else None
    return None


def _allowed(level: str, who: str) -> bool:
    need = level.rstrip("+")
    if need == "public":
        return True
    if who == "anonymous":
        return False
    if who == "token" or need == "partial":
        return True
    return RANK[who] >= RANK[need]


@pytest.mark.parametrize("who", ["anonymous", "viewer", "operator", "admin", "token"])
def test_role_matrix(gw: GatewayThread, who: str) -> None:
    # a session of its own: the walk ends with logout
    principal = signed_in(gw, f"walk-{who}", who) if who in RANK else None
    wrong: list[str] = []
    # logout last: it ends the session the other calls use
    ordered = sorted(
        EXPECTED.items(), key=lambda kv: (kv[0][1].endswith("/logout"), kv[0][1].endswith("/sign-out"))
    )
    for (method, path), level in ordered:
        reply = _call(gw, who, principal, method, path)
        code = refusal(reply)
        refused = code is not None
        if _allowed(level, who) == refused:
            wrong.append(f"{method} {path} as {who}: {reply.status_code} {reply.text[:120]}")
        elif refused:
            if path.startswith("/console/") and who == "anonymous":
                expected = 303  # a browser is sent to the sign-in page
            else:
                expected = 401 if who == "anonymous" else 403
            if reply.status_code != expected:
                wrong.append(f"{method} {path} as {who}: {reply.status_code}, expected {expected}")
    if principal is not None:
        principal.close()
    assert not wrong, "\n".join(wrong)


def test_viewers_never_see_secrets(gw: GatewayThread, principals: dict[str, Admin | None]) -> None:
    """Everything a viewer can read, after secrets of every kind were made: none of them appears."""
    token = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15, headers=token) as client:
        assert (
            client.post(f"{P}/consumers", json={"name": "secret-holder", "scopes": ["a:b"]}).status_code
            == 201
        )
        key = client.post(f"{P}/keys", json={"consumer": "secret-holder"}).json()
        made = client.post(f"{P}/clients", json={"consumer": "secret-holder"}).json()
        admin = client.post(
            f"{P}/admins", json={"name": "gen-pw", "email": "gen-pw@example.com", "role": "viewer"}
        ).json()
    secrets_made = [key["key"], made["client_secret"], admin["password"], ADMIN_TOKEN, PEPPER, PASSWORD]
    viewer = principals["viewer"]
    assert viewer is not None
    ids = {"event_id": "nonexistent", "name": "secret-holder", "key_id": key["id"], "credential_id": "x"}
    seen = []
    for (method, path), level in EXPECTED.items():
        if method != "GET" or level.rstrip("+") not in ("viewer", "partial") or path.startswith("/console/"):
            continue
        url = re.sub(r"\{([^}]+)\}", lambda m: ids.get(m.group(1), "x"), path)
        reply = viewer.call("GET", url)
        seen.append(reply.text)
    events = viewer.call("GET", f"{P}/events?page_size=1000").text
    text = "\n".join([*seen, events])
    for secret in secrets_made:
        assert secret not in text
    assert "argon2" not in text and "password_hash" not in text and "totp_secret" not in text


def test_a_viewer_cannot_create_keys_even_with_a_valid_session_and_csrf(
    principals: dict[str, Admin | None],
) -> None:
    viewer = principals["viewer"]
    assert viewer is not None
    reply = viewer.call("POST", f"{P}/keys", {"consumer": "secret-holder"})
    assert reply.status_code == 403 and reply.json()["code"] == "admin_forbidden"


def test_refusals_and_actions_are_events_with_the_account_as_actor(
    gw: GatewayThread, principals: dict[str, Admin | None]
) -> None:
    operator = principals["operator"]
    assert operator is not None
    created = operator.call("POST", f"{P}/consumers", {"name": "made-by-operator", "scopes": []})
    assert created.status_code == 201 and created.json()["created_by"] == "admin:matrix-operator"
    denied = operator.call("POST", f"{P}/admins", {"name": "x", "email": "x@example.com", "role": "admin"})
    assert denied.status_code == 403
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gw.admin_port}",
        timeout=15,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as client:

        def found() -> Any:
            docs = client.get(
                f"{P}/events", params={"actor": "admin:matrix-operator", "page_size": 200}
            ).json()
            types = {e["type"] for e in docs["events"]}
            need = {"consumer.created", "admin.action", "admin.forbidden", "admin_auth.signed_in"}
            return need <= types

        wait_for(found, what="the operator's events")


def test_openapi_documents_roles_and_public_routes(gw: GatewayThread) -> None:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gw.admin_port}",
        timeout=15,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as client:
        doc = client.get(f"{P}/openapi.json").json()
    assert doc["paths"][f"{P}/auth/login"]["post"]["security"] == []
    assert doc["paths"][f"{P}/keys"]["post"]["x-bastion-role"] == "operator"
    assert doc["paths"][f"{P}/admins"]["post"]["x-bastion-step-up"] is True
    assert "adminSession" in doc["components"]["securitySchemes"]


def test_token_can_be_disabled_and_its_use_is_refused_as_an_event(tmp_path: Path) -> None:
    with EchoUpstream() as up, admin_gateway(up, tmp_path / "b.db", token_enabled=False) as gateway:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.admin_port}", timeout=15) as client:
            reply = client.get(f"{P}/status", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            assert reply.status_code == 401 and reply.json()["code"] == "admin_unauthorized"
        admin = signed_in(gateway, "only-way-in", "admin")
        try:
            assert admin.call("GET", f"{P}/status").status_code == 200

            def refused() -> Any:
                events = admin.call("GET", f"{P}/events?type=admin.auth_failed").json()["events"]
                return [e for e in events if e["reason"] == "admin_token_disabled"]

            wait_for(refused, what="the admin.auth_failed event")
        finally:
            admin.close()


# -- the web console ----------------------------------------------------------------------------------------


def hidden_csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert found, html[:500]
    return found.group(1)


class Browser:
    """A browser-like client of the console: form posts, cookies, no redirects followed automatically."""

    def __init__(self, gw: GatewayThread) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15)

    def form(self, path: str, fields: dict[str, str]) -> httpx.Response:
        return self.client.post(path, data=fields)

    def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        page = self.client.get("/console/sign-in")
        assert page.status_code == 200
        return self.form(
            "/console/sign-in", {"csrf_token": hidden_csrf(page.text), "email": email, "password": password}
        )

    def close(self) -> None:
        self.client.close()


def test_console_sign_in_enrol_and_keys(gw: GatewayThread) -> None:
    seed(gw, "console-op", "operator")
    token = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15, headers=token) as api:
        api.post(f"{P}/consumers", json={"name": "console-shop", "scopes": ["a:b"]})
        key = api.post(f"{P}/keys", json={"consumer": "console-shop", "name": "ci"}).json()
    browser = Browser(gw)
    try:
        first = browser.client.get("/console/keys")
        assert first.status_code == 303 and first.headers["location"] == "/console/sign-in"
        signed = browser.sign_in("console-op@example.com")
        assert signed.status_code == 303 and signed.headers["location"] == "/console/enrol"
        assert browser.client.get("/console/keys").headers["location"] == "/console/enrol"
        enrol = browser.client.get("/console/enrol")
        assert enrol.status_code == 200 and "<svg" in enrol.text
        uri = unquote(re.search(r"<code>(otpauth://[^<]+)</code>", enrol.text).group(1)).replace("&amp;", "&")  # type: ignore[union-attr]
        totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
        codes_page = browser.form(
            "/console/enrol", {"csrf_token": hidden_csrf(enrol.text), "code": totp.now()}
        )
        assert codes_page.status_code == 200
        assert len(re.findall(r"<li><code>[a-z2-9]{5}-[a-z2-9]{5}</code></li>", codes_page.text)) == 10
        keys = browser.client.get("/console/keys")
        assert keys.status_code == 200 and key["id"] in keys.text and "Revoke" in keys.text
        assert key["key"] not in keys.text
        revoked = browser.form(f"/console/keys/{key['id']}/revoke", {"csrf_token": hidden_csrf(keys.text)})
        assert revoked.status_code == 303
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.admin_port}", timeout=15, headers=token) as api:
            record = api.get(f"{P}/keys/{key['id']}").json()
        assert record["revoked_by"] == "admin:console-op"
        out = browser.form(
            "/console/sign-out", {"csrf_token": hidden_csrf(browser.client.get("/console/keys").text)}
        )
        assert out.headers["location"] == "/console/sign-in"
        assert browser.client.get("/console/keys").status_code == 303
    finally:
        browser.close()


def test_console_sign_in_with_mfa_and_viewer_sees_no_revoke(gw: GatewayThread) -> None:
    viewer = signed_in(gw, "console-viewer", "viewer")  # enrolled over the API
    browser = Browser(gw)
    try:
        signed = browser.sign_in("console-viewer@example.com")
        assert signed.headers["location"] == "/console/mfa"
        mfa = browser.client.get("/console/mfa")
        wrong = browser.form("/console/mfa", {"csrf_token": hidden_csrf(mfa.text), "code": "aaaaa-aaaaa"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        done = browser.form("/console/mfa", {"csrf_token": hidden_csrf(mfa.text), "code": viewer.next_code()})
        assert done.status_code == 303 and done.headers["location"] == "/console/keys"
        keys = browser.client.get("/console/keys")
        assert (
            keys.status_code == 200 and "Revoke" not in keys.text and "console-viewer (viewer)" in keys.text
        )
        refused = browser.form("/console/keys/x/revoke", {"csrf_token": hidden_csrf(keys.text)})
        assert refused.status_code == 403
    finally:
        browser.close()
        viewer.close()
