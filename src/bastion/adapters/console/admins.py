"""The admin accounts page (role ``admin``): list, add, disable, enable, change a role, reset MFA.

The same operations and rules as ``/admin/v1/admins``: each change needs a second factor checked within
``admin.accounts.step_up_within`` (the console asks for one, then the person does it again), an admin
cannot disable or change the role of their own account, and a generated password is shown once.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...identity.admins import ROLES
from ...identity.manage import IdentityError
from .web import Console, Secret

__all__ = ["add_admin_pages"]

C = "/console"


def add_admin_pages(app: FastAPI, console: Console) -> None:
    plane = console.plane

    def me(request: Request) -> str:
        p = console.principal(request)
        return p.session.name if p is not None and p.session is not None else ""

    def page(request: Request, status: int = 200, **extra: Any) -> Response:
        accounts, _ = plane.need()
        within = plane.settings.step_up_within
        return console.render(
            request,
            "admins.html",
            status,
            section="admins",
            admins=accounts.list_all(),
            roles=ROLES,
            me=me(request),
            step_up_within=f"{within / 60:g} minutes",
            **extra,
        )

    @app.get(f"{C}/admins", include_in_schema=False)
    def admins(request: Request) -> Response:
        return page(request)

    @app.post(f"{C}/admins", include_in_schema=False)
    async def create_admin(request: Request) -> Response:
        form = await console.form(request)
        if form is None:
            return console.expired(request)
        if console.needs_step_up(request):
            return console.step_up(request, "admins")
        accounts, _ = plane.need()
        name = form.get("name", "").strip()[:64]
        passwordless = form.get("passwordless", "") == "1"
        try:
            _, generated = await console.run(
                lambda: accounts.create(
                    name,
                    form.get("email", "").strip()[:254],
                    form.get("role", "")[:16],
                    password=None,
                    generate=not passwordless,
                    actor=console.actor(request),
                )
            )
        except IdentityError as exc:
            return await console.refused(page, request, exc, form)
        if generated:
            shown = Secret(
                title="Password of the new account",
                detail=f"Give it to {name} over a safe channel; they enrol MFA at their first sign-in.",
                value=generated,
            )
            console.note(request, "admins", secret=shown)
        else:
            console.note(
                request, "admins", message=f"Account {name} created: it signs in with emailed codes."
            )
        return console.go(f"{C}/admins")

    async def change(request: Request, name: str, what: str) -> Response:
        form = await console.form(request)
        if form is None:
            return console.expired(request)
        if console.needs_step_up(request):
            return console.step_up(request, "admins")
        accounts, _ = plane.need()
        actor = console.actor(request)
        p = console.principal(request)
        own = p is not None and p.session is not None and name in (p.session.name, p.session.admin_id)

        def work() -> str:
            if what in ("disable", "role") and own:
                raise IdentityError(409, "cannot_change_self", f"an admin cannot {what} their own account")
            if what == "disable":
                accounts.set_active(name, False, actor=actor)
                return f"Account {name} disabled: its sessions ended."
            if what == "enable":
                accounts.set_active(name, True, actor=actor)
                return f"Account {name} enabled (and unlocked)."
            if what == "role":
                role = form.get("role", "")[:16]
                accounts.set_role(name, role, actor=actor)
                return f"Account {name} is now {role}."
            accounts.reset_mfa(name, actor=actor)
            return f"MFA of {name} reset: the account enrols again at its next sign-in."

        return await console.act(request, "admins", name, work)

    @app.post(C + "/admins/{name}/disable", include_in_schema=False)
    async def disable_admin(name: str, request: Request) -> Response:
        return await change(request, name, "disable")

    @app.post(C + "/admins/{name}/enable", include_in_schema=False)
    async def enable_admin(name: str, request: Request) -> Response:
        return await change(request, name, "enable")

    @app.post(C + "/admins/{name}/role", include_in_schema=False)
    async def role_admin(name: str, request: Request) -> Response:
        return await change(request, name, "role")

    @app.post(C + "/admins/{name}/reset-mfa", include_in_schema=False)
    async def reset_mfa(name: str, request: Request) -> Response:
        return await change(request, name, "reset-mfa")
