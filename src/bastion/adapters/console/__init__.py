"""The web console: server-rendered pages under ``/console`` on the admin listener (docs/console.md).

Theory of operation
-------------------
The console is a set of routes of the admin app, so everything in front of the admin API is in front of it
too: the listener's IP allow-list (``admin.allow_ips``), then the guard in ``admin.py``, which finds each
route's :class:`~bastion.adapters.admin_auth.Policy` in ``CONSOLE_POLICIES`` below, authenticates the
session cookie and enforces the least role before a handler runs. A browser without a (complete) session
is sent to the sign-in (or MFA) page instead of getting an error. Handlers call the same services as the
admin API (``IdentityAdmin``, ``AdminAccounts``, the Monitor API's queries, ``audit``): one implementation.

Pages are Jinja2 templates (``templates/``) with autoescaping everywhere; every response carries
``Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;
form-action 'self'; frame-ancestors 'none'; base-uri 'none'`` — no inline script or style, no other origin
— plus ``no-store``, ``nosniff``, ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``. The only
script is ``static/console.js`` (the copy button), loaded only by a page that shows a secret.

CSRF: forms cannot send the API's ``X-CSRF-Token`` header, so every console form carries the session's
token in a hidden ``csrf_token`` field and every state-changing handler checks it before doing anything
(the guard leaves form routes to them: ``Policy.form``). Before sign-in, a random token in a
``SameSite=Strict`` cookie that the form repeats (double submit). Sensitive actions (disabling a consumer,
revoking all its keys, exporting events, every change to an admin account) need a recent second factor,
as in the API: the handler asks for one (``/console/step-up``) instead of acting. Secrets are shown once
(``web.Notes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import Response
from sqlalchemy import Engine

from ...identity.manage import IdentityAdmin
from ...runtime.gateway import Gateway
from ..admin_auth import AdminPlane, Policy
from .admins import add_admin_pages
from .identities import add_identity_pages
from .monitor import add_monitor_pages
from .sign_in import add_sign_in_routes
from .templates import STATIC
from .web import CSP, Console, security_headers

__all__ = ["CONSOLE_POLICIES", "CSP", "add_console_routes", "security_headers"]

C = "/console"

_PUBLIC = Policy("public", page=True)
_PARTIAL = Policy("partial", page=True)
_PARTIAL_FORM = Policy("partial", page=True, form=True)
_VIEW = Policy("viewer", page=True)
_VIEW_FORM = Policy("viewer", page=True, form=True)
_PUBLIC_FORM = Policy("public", page=True, form=True)  # before sign-in: the handler checks a double submit
_OPERATE = Policy("operator", page=True, form=True)
_ADMIN = Policy("admin", page=True)
_ADMIN_FORM = Policy("admin", page=True, form=True)

# (method, route path) -> policy. The guard enforces the role; form handlers check the CSRF field. Routes
# marked "step-up" check the second factor's age themselves (and ask for a new one).
CONSOLE_POLICIES: dict[tuple[str, str], Policy] = {
    ("GET", f"{C}/"): _PUBLIC,  # a redirect to the overview (which needs a session)
    ("GET", f"{C}/static/console.css"): _PUBLIC,
    ("GET", f"{C}/static/console.js"): _PUBLIC,
    # signing in
    ("GET", f"{C}/sign-in"): _PUBLIC,
    ("POST", f"{C}/sign-in"): _PUBLIC_FORM,
    ("POST", f"{C}/sign-in/email"): _PUBLIC_FORM,  # email a code (and a link)
    ("POST", f"{C}/sign-in/code"): _PUBLIC_FORM,
    ("GET", f"{C}/sign-in/link"): _PUBLIC,  # the emailed link: a page with a button, never a sign-in
    ("POST", f"{C}/sign-in/link"): _PUBLIC_FORM,
    ("GET", f"{C}/mfa"): _PARTIAL,
    ("POST", f"{C}/mfa"): _PARTIAL_FORM,
    ("GET", f"{C}/enrol"): _PARTIAL,
    ("POST", f"{C}/enrol"): _PARTIAL_FORM,
    ("POST", f"{C}/sign-out"): _PARTIAL_FORM,
    ("GET", f"{C}/step-up"): _VIEW,
    ("POST", f"{C}/step-up"): _VIEW_FORM,
    # observing
    ("GET", f"{C}/overview"): _VIEW,
    ("GET", f"{C}/events"): _VIEW,
    ("GET", f"{C}/events/export"): Policy("operator", page=True),  # step-up
    ("GET", C + "/events/{event_id}"): _VIEW,
    ("GET", f"{C}/alerts"): _VIEW,
    ("GET", f"{C}/inventory"): _VIEW,
    ("GET", f"{C}/posture"): _VIEW,
    # identities
    ("GET", f"{C}/consumers"): _VIEW,
    ("POST", f"{C}/consumers"): _OPERATE,
    ("POST", C + "/consumers/{name}/disable"): _OPERATE,  # step-up
    ("POST", C + "/consumers/{name}/enable"): _OPERATE,
    ("POST", C + "/consumers/{name}/scopes"): _OPERATE,
    ("POST", C + "/consumers/{name}/keys/revoke-all"): _OPERATE,  # step-up
    ("GET", f"{C}/keys"): _VIEW,
    ("POST", f"{C}/keys"): _OPERATE,
    ("POST", C + "/keys/{key_id}/rotate"): _OPERATE,
    ("POST", C + "/keys/{key_id}/revoke"): _OPERATE,
    ("GET", f"{C}/clients"): _VIEW,
    ("POST", f"{C}/clients"): _OPERATE,
    ("POST", C + "/clients/{client_id}/revoke"): _OPERATE,
    # admin accounts: admins only, every change with step-up
    ("GET", f"{C}/admins"): _ADMIN,
    ("POST", f"{C}/admins"): _ADMIN_FORM,
    ("POST", C + "/admins/{name}/disable"): _ADMIN_FORM,
    ("POST", C + "/admins/{name}/enable"): _ADMIN_FORM,
    ("POST", C + "/admins/{name}/role"): _ADMIN_FORM,
    ("POST", C + "/admins/{name}/reset-mfa"): _ADMIN_FORM,
}
STEP_UP = frozenset(
    {
        ("POST", C + "/consumers/{name}/disable"),
        ("POST", C + "/consumers/{name}/keys/revoke-all"),
        ("GET", f"{C}/events/export"),
        ("POST", f"{C}/admins"),
        ("POST", C + "/admins/{name}/disable"),
        ("POST", C + "/admins/{name}/enable"),
        ("POST", C + "/admins/{name}/role"),
        ("POST", C + "/admins/{name}/reset-mfa"),
    }
)


def add_console_routes(
    app: FastAPI,
    plane: AdminPlane,
    identity: IdentityAdmin | None,
    *,
    engine: Engine | None = None,
    gateway: Gateway | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    console = Console(plane, identity, engine=engine, gateway=gateway, clock=clock)
    # Work at construction: the static files are read once.
    css = (STATIC / "console.css").read_bytes()
    js = (STATIC / "console.js").read_bytes()

    @app.get(f"{C}/static/console.css", include_in_schema=False)
    def stylesheet() -> Response:
        return Response(css, media_type="text/css", headers=security_headers())

    @app.get(f"{C}/static/console.js", include_in_schema=False)
    def script() -> Response:
        return Response(js, media_type="text/javascript", headers=security_headers())

    add_sign_in_routes(app, console)
    add_monitor_pages(app, console)
    add_identity_pages(app, console)
    add_admin_pages(app, console)
