"""Admin API for identities: ``/admin/v1/consumers``, ``/keys``, ``/clients``, ``/credentials``.

The same operations as ``bastion consumers | keys | clients`` (one implementation:
:class:`bastion.identity.manage.IdentityAdmin`). A change is visible to this gateway's requests before
the response is sent, and to other instances within ``identity.refresh_interval``. Keys and client
secrets appear once, in the response that creates them (with ``Cache-Control: no-store``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config.units import parse_duration
from ..identity.manage import IdentityAdmin
from .admin_auth import Policy, actor_of

__all__ = ["IDENTITY_POLICIES", "add_identity_routes", "revoke_all_keys"]

PREFIX = "/admin/v1"

# Who may call each route (enforced by the guard in admin.py; see admin_auth.py): viewers read,
# operators change. Disabling a consumer stops all its keys and tokens at once, and revoking all its keys
# stops every key: both need a recent MFA.
_V, _O = Policy("viewer"), Policy("operator")
IDENTITY_POLICIES: dict[tuple[str, str], Policy] = {
    ("POST", f"{PREFIX}/consumers"): _O,
    ("GET", f"{PREFIX}/consumers"): _V,
    ("GET", PREFIX + "/consumers/{name}"): _V,
    ("POST", PREFIX + "/consumers/{name}/disable"): Policy("operator", sensitive=True),
    ("POST", PREFIX + "/consumers/{name}/enable"): _O,
    ("PUT", PREFIX + "/consumers/{name}/quota"): _O,
    ("PUT", PREFIX + "/consumers/{name}/scopes"): _O,
    ("POST", f"{PREFIX}/keys"): _O,
    ("GET", f"{PREFIX}/keys"): _V,
    ("GET", PREFIX + "/keys/{key_id}"): _V,
    ("POST", PREFIX + "/consumers/{name}/keys/revoke-all"): Policy("operator", sensitive=True),
    ("POST", PREFIX + "/keys/{key_id}/revoke"): _O,
    ("POST", PREFIX + "/keys/{key_id}/rotate"): _O,
    ("POST", f"{PREFIX}/clients"): _O,
    ("GET", f"{PREFIX}/clients"): _V,
    ("POST", PREFIX + "/clients/{client_id}/revoke"): _O,
    ("POST", f"{PREFIX}/credentials"): _O,
    ("GET", f"{PREFIX}/credentials"): _V,
    ("GET", PREFIX + "/credentials/{credential_id}"): _V,
    ("POST", PREFIX + "/credentials/{credential_id}/revoke"): _O,
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ValueError("expected a duration such as 30d, 12h or a number of seconds") from None


class ConsumerIn(_Body):
    # The pattern is documented here and enforced by the identity layer (400 invalid_name, not a generic 400).
    name: str = Field(max_length=64, json_schema_extra={"pattern": r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"})
    scopes: list[str] = Field(default_factory=list, max_length=256)
    ip_allow: list[str] = Field(default_factory=list, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict)
    quota: str | None = Field(None, max_length=32, description="its own quota, e.g. 50000/month")

    @field_validator("metadata")
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        """NaN and Infinity are not JSON: stored, they would come back as null."""
        stack: list[Any] = [v]
        while stack:
            node = stack.pop()
            if isinstance(node, float) and not math.isfinite(node):
                raise ValueError("metadata numbers must be finite")
            if isinstance(node, dict):
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return v


class QuotaIn(_Body):
    quota: str | None = Field(max_length=32, description="N/day or N/month; null: consumers_defaults.quota")


class ScopesIn(_Body):
    scopes: list[str] = Field(max_length=256)


class KeyIn(_Body):
    consumer: str = Field(max_length=64)
    scopes: list[str] | None = Field(None, max_length=256)
    ttl: float | str | None = Field(None, description="e.g. 30d; default and maximum: identity.max_key_ttl")
    ip_allow: list[str] = Field(default_factory=list, max_length=256)
    permissions: list[str] = Field(default_factory=list, max_length=256)
    name: str = Field("", max_length=128)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: object) -> float | None:
        return _seconds(v)


class RotateIn(_Body):
    grace: float | str | None = Field(None, description="how long the old key keeps working; default 24h")

    @field_validator("grace")
    @classmethod
    def _grace(cls, v: object) -> float | None:
        return _seconds(v)


class ClientIn(_Body):
    consumer: str = Field(max_length=64)
    scopes: list[str] | None = Field(None, max_length=256)
    jwks: dict[str, Any] | None = Field(None, description="public JWKS for private_key_jwt (RFC 7523)")


class PublicKeyIn(_Body):
    consumer: str = Field(max_length=64)
    public_key: str = Field(max_length=16384, description="RSA public key, PEM (2048+ bits, e = 65537)")
    name: str = Field("", max_length=128)


def revoke_all_keys(
    admin: IdentityAdmin, consumer: str, *, actor: str, emit: Callable[..., None]
) -> dict[str, Any]:
    """Revoke every key of ``consumer`` that still works (not revoked, not expired; a rotated key in its
    grace period included), each with its ``api_key.revoked`` event, then one ``consumer.keys_revoked``
    event with the count. Keys made while it runs are not included; revoking is idempotent, so running it
    again finishes the job. The consumer, its OAuth clients and tokens are untouched (disable the consumer
    to stop those too)."""
    name = admin.get_consumer(consumer)["name"]  # 404 before anything is done
    now = admin.clock()
    live = [
        k["id"]
        for k in admin.list_keys(name, include_revoked=False)
        if k["expires_at"] is None or k["expires_at"] > now
    ]
    for key_id in live:
        admin.revoke_key(key_id, actor=actor)
    emit(
        "consumer.keys_revoked",
        severity="notice",
        actor=actor,
        resource=f"consumer:{name}",
        data={"consumer": name, "count": len(live), "keys": live},
    )
    return {"consumer": name, "revoked": len(live), "keys": live}


def add_identity_routes(
    app: FastAPI,
    admin: IdentityAdmin,
    *,
    default_grace: float,
    emit: Callable[..., None] | None = None,
) -> None:
    # Handlers are sync: FastAPI runs them in a thread, so the event loop never waits on the store.
    emit_event = emit or (lambda *_a, **_k: None)

    def _no_store(response: Response) -> None:
        response.headers["cache-control"] = "no-store"

    @app.post(f"{PREFIX}/consumers", tags=["consumers"], status_code=201, summary="Create a consumer")
    def create_consumer(body: ConsumerIn, request: Request) -> dict[str, Any]:
        return admin.create_consumer(
            body.name,
            body.scopes,
            ip_allow=body.ip_allow,
            metadata=body.metadata,
            quota=body.quota,
            actor=actor_of(request),
        )

    @app.get(f"{PREFIX}/consumers", tags=["consumers"], summary="List consumers")
    def list_consumers() -> dict[str, Any]:
        return {"consumers": admin.list_consumers()}

    @app.get(PREFIX + "/consumers/{name}", tags=["consumers"], summary="One consumer")
    def get_consumer(name: str) -> dict[str, Any]:
        return admin.get_consumer(name)

    @app.post(
        PREFIX + "/consumers/{name}/disable", tags=["consumers"], summary="Disable: keys and tokens stop"
    )
    def disable_consumer(name: str, request: Request) -> dict[str, Any]:
        return admin.set_consumer_active(name, False, actor=actor_of(request))

    @app.post(PREFIX + "/consumers/{name}/enable", tags=["consumers"], summary="Enable a disabled consumer")
    def enable_consumer(name: str, request: Request) -> dict[str, Any]:
        return admin.set_consumer_active(name, True, actor=actor_of(request))

    @app.put(PREFIX + "/consumers/{name}/quota", tags=["consumers"], summary="Set a consumer's own quota")
    def set_quota(name: str, body: QuotaIn, request: Request) -> dict[str, Any]:
        return admin.set_consumer_quota(name, body.quota, actor=actor_of(request))

    @app.put(PREFIX + "/consumers/{name}/scopes", tags=["consumers"], summary="Replace a consumer's scopes")
    def set_scopes(name: str, body: ScopesIn, request: Request) -> dict[str, Any]:
        return admin.update_consumer_scopes(name, body.scopes, actor=actor_of(request))

    @app.post(f"{PREFIX}/keys", tags=["keys"], status_code=201, summary="Create a key (shown once)")
    def create_key(body: KeyIn, response: Response, request: Request) -> dict[str, Any]:
        _no_store(response)
        out, key = admin.create_key(
            body.consumer,
            body.scopes,
            ttl=body.ttl,  # type: ignore[arg-type]
            permissions=body.permissions,
            ip_allow=body.ip_allow,
            name=body.name,
            actor=actor_of(request),
        )
        return {"id": out["id"], "key": key, "expires_at": out["expires_at"], "record": out}

    @app.get(f"{PREFIX}/keys", tags=["keys"], summary="List keys (never the keys themselves)")
    def list_keys(consumer: str | None = Query(None, max_length=64)) -> dict[str, Any]:
        return {"keys": admin.list_keys(consumer)}

    @app.get(PREFIX + "/keys/{key_id}", tags=["keys"], summary="One key's record")
    def get_key(key_id: str) -> dict[str, Any]:
        return admin.get_key(key_id)

    @app.post(
        PREFIX + "/consumers/{name}/keys/revoke-all",
        tags=["consumers"],
        summary="Revoke every key of a consumer at once (step-up)",
    )
    def revoke_consumer_keys(name: str, request: Request) -> dict[str, Any]:
        return revoke_all_keys(admin, name, actor=actor_of(request), emit=emit_event)

    @app.post(PREFIX + "/keys/{key_id}/revoke", tags=["keys"], summary="Revoke a key at once")
    def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
        return admin.revoke_key(key_id, actor=actor_of(request))

    @app.post(
        PREFIX + "/keys/{key_id}/rotate", tags=["keys"], status_code=201, summary="Rotate with a grace period"
    )
    def rotate_key(
        key_id: str, response: Response, request: Request, body: RotateIn | None = None
    ) -> dict[str, Any]:
        _no_store(response)
        grace = body.grace if body is not None and body.grace is not None else default_grace
        out, key = admin.rotate_key(key_id, grace=grace, actor=actor_of(request))  # type: ignore[arg-type]
        return {"id": out["id"], "key": key, "expires_at": out["expires_at"], "record": out}

    @app.post(f"{PREFIX}/clients", tags=["clients"], status_code=201, summary="Create an OAuth client")
    def create_client(body: ClientIn, response: Response, request: Request) -> dict[str, Any]:
        _no_store(response)
        out, secret = admin.create_client(body.consumer, body.scopes, jwks=body.jwks, actor=actor_of(request))
        return {"client_id": out["client_id"], "client_secret": secret, "record": out}

    @app.get(f"{PREFIX}/clients", tags=["clients"], summary="List OAuth clients")
    def list_clients(consumer: str | None = Query(None, max_length=64)) -> dict[str, Any]:
        return {"clients": admin.list_clients(consumer)}

    @app.post(PREFIX + "/clients/{client_id}/revoke", tags=["clients"], summary="Revoke a client")
    def revoke_client(client_id: str, request: Request) -> dict[str, Any]:
        return admin.revoke_client(client_id, actor=actor_of(request))

    @app.post(
        f"{PREFIX}/credentials",
        tags=["credentials"],
        status_code=201,
        summary="Register a consumer's public key for PKCV",
    )
    def add_credential(body: PublicKeyIn, request: Request) -> dict[str, Any]:
        return admin.add_public_key(body.consumer, body.public_key, name=body.name, actor=actor_of(request))

    @app.get(f"{PREFIX}/credentials", tags=["credentials"], summary="List public keys")
    def list_credentials(consumer: str | None = Query(None, max_length=64)) -> dict[str, Any]:
        return {"credentials": admin.list_public_keys(consumer)}

    @app.get(PREFIX + "/credentials/{credential_id}", tags=["credentials"], summary="One public key")
    def get_credential(credential_id: str) -> dict[str, Any]:
        return admin.get_public_key(credential_id)

    @app.post(
        PREFIX + "/credentials/{credential_id}/revoke", tags=["credentials"], summary="Revoke a public key"
    )
    def revoke_credential(credential_id: str, request: Request) -> dict[str, Any]:
        return admin.revoke_public_key(credential_id, actor=actor_of(request))
