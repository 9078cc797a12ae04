"""Console pages for identities: consumers, API keys and OAuth clients — the same operations as the admin
API (one implementation, :class:`~bastion.identity.manage.IdentityAdmin`), with the same roles.

Viewers see every record and no control that changes one; operators and admins get the forms. The guard
enforces each route's role before the handler runs; each handler then checks the form's CSRF token.
Disabling a consumer stops all its keys and tokens at once, and "Revoke all keys" every key: both need a
recent second factor, as in the API. A new key or client secret is shown once, through
:class:`~.web.Notes` (never in a URL).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...config.units import parse_duration
from ...identity.manage import IdentityAdmin, IdentityError
from ..admin_identity import revoke_all_keys
from .web import Console, Secret, split_lines, split_words

__all__ = ["GRACES", "add_identity_pages"]

C = "/console"
# Rotation: how long the old key keeps working (the choices offered; anything else is refused).
GRACES = (
    ("24h", "old key works 24 hours"),
    ("1h", "old key works 1 hour"),
    ("7d", "old key works 7 days"),
    ("0s", "old key stops now"),
)
_GRACE_VALUES = {value for value, _ in GRACES}


def _no_event(*_args: Any, **_fields: Any) -> None:
    """The emitter of a console without a gateway (tests that build the pages alone)."""


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days"


def _metadata(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise IdentityError(400, "invalid_metadata", "metadata must be a JSON object") from None
    if not isinstance(value, dict):
        raise IdentityError(400, "invalid_metadata", "metadata must be a JSON object")
    stack: list[Any] = [value]
    while stack:  # NaN and Infinity are not JSON: stored, they would come back as null
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise IdentityError(400, "invalid_metadata", "metadata numbers must be finite")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return value


def _duration(text: str, what: str) -> float | None:
    if not text.strip():
        return None
    try:
        return parse_duration(text.strip())
    except (ValueError, TypeError):
        raise IdentityError(400, "invalid_ttl", f"{what}: a duration such as 30d, 12h or 3600") from None


def add_identity_pages(app: FastAPI, console: Console) -> None:
    def admin_or_page(request: Request) -> IdentityAdmin | Response:
        if console.identity is None:
            return console.problem(
                request, 409, "Identities unavailable", "Managing identities needs storage.database."
            )
        return console.identity

    async def form_and_admin(request: Request) -> tuple[dict[str, str], IdentityAdmin] | Response:
        """The form, its CSRF token checked, and the identity store; or the page saying why not."""
        form = await console.form(request)
        if form is None:
            return console.expired(request)
        admin = admin_or_page(request)
        if isinstance(admin, Response):
            return admin
        return form, admin

    def active_consumers(admin: IdentityAdmin) -> list[str]:
        return [c["name"] for c in admin.list_consumers() if c["status"] == "active"]

    # -- consumers --------------------------------------------------------------------------------------

    def consumers_page(request: Request, status: int = 200, **extra: Any) -> Response:
        admin = admin_or_page(request)
        if isinstance(admin, Response):
            return admin
        return console.render(
            request, "consumers.html", status, section="consumers", consumers=admin.list_consumers(), **extra
        )

    @app.get(f"{C}/consumers", include_in_schema=False)
    def consumers(request: Request) -> Response:
        return consumers_page(request)

    @app.post(f"{C}/consumers", include_in_schema=False)
    async def create_consumer(request: Request) -> Response:
        got = await form_and_admin(request)
        if isinstance(got, Response):
            return got
        form, admin = got
        name = form.get("name", "").strip()[:64]

        def create() -> None:
            admin.create_consumer(
                name,
                split_words(form.get("scopes", "")),
                ip_allow=split_words(form.get("ip_allow", "")),
                metadata=_metadata(form.get("metadata", "")),
                quota=form.get("quota", "").strip() or None,
                actor=console.actor(request),
            )

        try:
            await console.run(create)
        except IdentityError as exc:
            return await console.refused(consumers_page, request, exc, form)
        console.note(request, "consumers", message=f"Consumer {name} created.")
        return console.go(f"{C}/consumers")

    async def consumer_action(request: Request, name: str, what: str) -> Response:
        got = await form_and_admin(request)
        if isinstance(got, Response):
            return got
        form, admin = got
        if what in ("disable", "revoke-keys") and console.needs_step_up(request):
            return console.step_up(request, "consumers")
        actor = console.actor(request)
        emit: Callable[..., None] = console.gateway.emit if console.gateway is not None else _no_event

        def work() -> str:
            if what == "revoke-keys":
                out = revoke_all_keys(admin, name, actor=actor, emit=emit)
                return f"All keys of {name} revoked ({out['revoked']})."
            if what == "scopes":
                admin.update_consumer_scopes(name, split_words(form.get("scopes", "")), actor=actor)
                return f"Scopes of {name} saved."
            active = what == "enable"
            admin.set_consumer_active(name, active, actor=actor)
            return f"Consumer {name} {'enabled' if active else 'disabled: its keys and tokens stopped'}."

        return await console.act(request, "consumers", name, work)

    @app.post(C + "/consumers/{name}/disable", include_in_schema=False)
    async def disable_consumer(name: str, request: Request) -> Response:
        return await consumer_action(request, name, "disable")

    @app.post(C + "/consumers/{name}/enable", include_in_schema=False)
    async def enable_consumer(name: str, request: Request) -> Response:
        return await consumer_action(request, name, "enable")

    @app.post(C + "/consumers/{name}/keys/revoke-all", include_in_schema=False)
    async def revoke_consumer_keys(name: str, request: Request) -> Response:
        return await consumer_action(request, name, "revoke-keys")

    @app.post(C + "/consumers/{name}/scopes", include_in_schema=False)
    async def consumer_scopes(name: str, request: Request) -> Response:
        return await consumer_action(request, name, "scopes")

    # -- API keys ---------------------------------------------------------------------------------------

    def keys_page(request: Request, status: int = 200, **extra: Any) -> Response:
        admin = admin_or_page(request)
        if isinstance(admin, Response):
            return admin
        consumer = request.query_params.get("consumer", "")[:64] or None
        try:
            rows = admin.list_keys(consumer)
        except IdentityError:
            rows, consumer = [], None
            extra.setdefault("problem", "No such consumer.")
        max_ttl = console.gateway.settings.identity.max_key_ttl if console.gateway is not None else None
        return console.render(
            request,
            "keys.html",
            status,
            section="keys",
            keys=rows,
            consumer=consumer or "",
            consumers=active_consumers(admin),
            graces=GRACES,
            max_ttl=_days(max_ttl) if max_ttl else "the maximum",
            **extra,
        )

    @app.get(f"{C}/keys", include_in_schema=False)
    def keys(request: Request) -> Response:
        return keys_page(request)

    def key_secret(out: dict[str, Any], key: str, rotated_from: str | None = None) -> Secret:
        what = f"Key {out['id']} for consumer {out['consumer']}"
        if rotated_from:
            what += f", replacing {rotated_from}"
        return Secret(title="New API key", detail=what + ".", value=key)

    @app.post(f"{C}/keys", include_in_schema=False)
    async def create_key(request: Request) -> Response:
        got = await form_and_admin(request)
        if isinstance(got, Response):
            return got
        form, admin = got
        scopes = split_words(form.get("scopes", ""))

        def create() -> tuple[dict[str, Any], str]:
            return admin.create_key(
                form.get("consumer", "")[:64],
                scopes or None,
                ttl=_duration(form.get("ttl", ""), "lifetime"),
                permissions=split_lines(form.get("permissions", "")),
                ip_allow=split_words(form.get("ip_allow", "")),
                name=form.get("name", "")[:128],
                actor=console.actor(request),
            )

        try:
            out, key = await console.run(create)
        except IdentityError as exc:
            return await console.refused(keys_page, request, exc, form)
        console.note(request, "keys", secret=key_secret(out, key))
        return console.go(f"{C}/keys")

    @app.post(C + "/keys/{key_id}/rotate", include_in_schema=False)
    async def rotate_key(key_id: str, request: Request) -> Response:
        got = await form_and_admin(request)
        if isinstance(got, Response):
            return got
        form, admin = got
        grace = form.get("grace", "24h")
        if grace not in _GRACE_VALUES:
            grace = "24h"
        seconds = parse_duration(grace)
        try:
            out, key = await console.run(
                lambda: admin.rotate_key(key_id, grace=seconds, actor=console.actor(request))
            )
        except IdentityError as exc:
            console.note(request, "keys", problem=f"{key_id}: {exc.message}")
            return console.go(f"{C}/keys")
        console.note(request, "keys", secret=key_secret(out, key, rotated_from=key_id))
        return console.go(f"{C}/keys")

    @app.post(C + "/keys/{key_id}/revoke", include_in_schema=False)
    async def revoke_key(key_id: str, request: Request) -> Response:
        got = await form_and_admin(request)
        if isinstance(got, Response):
            return got
        _, admin = got
        actor = console.actor(request)

        def work() -> str:
            admin.revoke_key(key_id, actor=actor)
            return f"Key {key_id} revoked."

        return await console.act(request, "keys", key_id, work)

    # -- OAuth clients ----------------------------------------------------------------------------------

    def clients_page(request: Request, status: int = 200, **extra: Any) -> Response:
        admin = admin_or_page(request)
        if isinstance(admin, Response):
            return admin
        return console.render(
            request,
            "clients.html",
            status,
            section="clients",
            clients=admin.list_clients(),
            consumers=active_consumers(admin),
            **extra,
        )

    @app.get(f"{C}/clients", include_in_schema=False)
    def clients(request: Request) -> Response:
        return clients_page(request)

    @app.post(f"{C}/clients", include_in_schema=False)
    async def create_client(request: Request) -> Response:
        got = await form_and_admin(request)
        if isinstance(got, Response):
            return got
        form, admin = got
        scopes = split_words(form.get("scopes", ""))
        try:
            out, secret = await console.run(
                lambda: admin.create_client(
                    form.get("consumer", "")[:64], scopes or None, actor=console.actor(request)
                )
            )
        except IdentityError as exc:
            return await console.refused(clients_page, request, exc, form)
        shown = Secret(
            title="New client secret",
            detail=f"Client {out['client_id']} for consumer {out['consumer']}: send it as the "
            "client_secret with this client_id.",
            value=secret or "",
        )
        console.note(request, "clients", secret=shown)
        return console.go(f"{C}/clients")

    @app.post(C + "/clients/{client_id}/revoke", include_in_schema=False)
    async def revoke_client(client_id: str, request: Request) -> Response:
        got = await form_and_admin(request)
        if isinstance(got, Response):
            return got
        _, admin = got
        actor = console.actor(request)

        def work() -> str:
            admin.revoke_client(client_id, actor=actor)
            return f"Client {client_id} revoked."

        return await console.act(request, "clients", client_id, work)
