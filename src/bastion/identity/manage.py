"""Managing identities: consumers, API keys (create, rotate, revoke) and OAuth clients.

Shared by the CLI and the admin API. Every change is one transaction that also bumps
``identity_state.revision`` — running gateways poll it and reload their in-memory snapshot — and is
recorded as an event with its actor. Secrets (API keys, client secrets) are returned once, by the
call that creates them, and only their keyed digests are stored.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from ipaddress import ip_network
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from ..core.events import make_event_id
from ..core.identity import ScopeError, check_scope_subset, parse_permission, parse_scopes
from ..store.schema import (
    api_keys_table,
    consumers_table,
    identity_state_table,
    oauth_clients_table,
    public_keys_table,
)
from .credentials import Peppers, new_api_key, random_base62
from .jwks import MIN_RSA_N_CHARS, PRIVATE_MEMBERS

__all__ = ["Emit", "IdentityAdmin", "IdentityError"]

Emit = Callable[..., None]
CONSUMER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
DEFAULT_GRACE = 24 * 3600.0


class IdentityError(Exception):
    """A management request that cannot be carried out; ``status`` and ``code`` for the admin API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _not_found(what: str) -> IdentityError:
    return IdentityError(404, "not_found", f"No such {what}.")


def _cidrs(values: Iterable[str]) -> list[str]:
    out = []
    for v in values:
        try:
            out.append(str(ip_network(str(v).strip(), strict=True)))
        except ValueError:
            raise IdentityError(
                400, "invalid_ip_allow", f"{v!r} is not an IP address or CIDR network"
            ) from None
    return out


def _scopes(values: Iterable[str]) -> list[str]:
    try:
        return sorted(parse_scopes(list(values)))
    except ScopeError as exc:
        raise IdentityError(400, "invalid_scope", str(exc)) from None


def _ulid() -> str:
    return make_event_id(int(time.time() * 1000), secrets.token_bytes(10))


def bump_revision(conn: Connection) -> None:
    conn.execute(
        update(identity_state_table)
        .where(identity_state_table.c.id == 1)
        .values(revision=identity_state_table.c.revision + 1)
    )


class IdentityAdmin:
    def __init__(
        self,
        engine: Engine,
        peppers: Peppers | None,
        *,
        max_key_ttl: float = 90 * 86400.0,
        emit: Emit | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.peppers = peppers
        self.max_key_ttl = max_key_ttl
        self._emit = emit or (lambda *_a, **_k: None)
        self._on_change = on_change
        self.clock = clock

    # -- plumbing -----------------------------------------------------------------------------------
    def _need_peppers(self) -> Peppers:
        if self.peppers is None:
            raise IdentityError(
                409, "pepper_missing", "identity.pepper must be configured to create keys or clients"
            )
        return self.peppers

    def _changed(self, event_type: str, actor: str, resource: str, **data: Any) -> None:
        self._emit(
            event_type, severity="notice", actor=actor, resource=resource, data={"resource": resource, **data}
        )
        if self._on_change is not None:
            self._on_change()

    def _consumer_row(self, conn: Connection, name_or_id: str) -> Mapping[str, Any]:
        """By name first, then by id: a name that happens to equal another consumer's id never
        reaches that other consumer."""
        c = consumers_table.c
        row = conn.execute(select(consumers_table).where(c.name == name_or_id)).first()
        if row is None:
            row = conn.execute(select(consumers_table).where(c.id == name_or_id)).first()
        if row is None:
            raise _not_found("consumer")
        return row._mapping

    # -- consumers ----------------------------------------------------------------------------------
    def create_consumer(
        self,
        name: str,
        scopes: Iterable[str] = (),
        *,
        ip_allow: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        quota: str | None = None,
        actor: str,
    ) -> dict[str, Any]:
        if not CONSUMER_NAME.fullmatch(name):
            raise IdentityError(
                400, "invalid_name", "consumer names are 1-64 letters, digits, '.', '_', '@' or '-'"
            )
        meta = dict(metadata or {})
        if len(json.dumps(meta)) > 4096:
            raise IdentityError(400, "invalid_metadata", "metadata is limited to 4 KiB of JSON")
        now = self.clock()
        row = {
            "id": _ulid(),
            "name": name,
            "status": "active",
            "scopes": json.dumps(_scopes(scopes)),
            "ip_allow": json.dumps(_cidrs(ip_allow)),
            "meta": json.dumps(meta),
            "created_at": now,
            "created_by": actor,
            "updated_at": now,
            "quota": _quota(quota),
        }
        with self.engine.begin() as conn:
            exists = conn.execute(select(consumers_table.c.id).where(consumers_table.c.name == name)).first()
            if exists is not None:
                raise IdentityError(409, "conflict", f"a consumer named {name!r} already exists")
            conn.execute(consumers_table.insert().values(**row))
            bump_revision(conn)
        self._changed("consumer.created", actor, f"consumer:{name}", scopes=json.loads(row["scopes"]))
        return _consumer_out(row)

    def list_consumers(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(consumers_table).order_by(consumers_table.c.name)).all()
        return [_consumer_out(r._mapping) for r in rows]

    def get_consumer(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return _consumer_out(self._consumer_row(conn, name))

    def set_consumer_active(self, name: str, active: bool, *, actor: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            row = self._consumer_row(conn, name)
            status = "active" if active else "disabled"
            if row["status"] == status:
                return _consumer_out(row)  # already so: nothing changes, nothing to record
            now = self.clock()
            conn.execute(
                update(consumers_table)
                .where(consumers_table.c.id == row["id"])
                .values(status=status, updated_at=now)
            )
            bump_revision(conn)
            out = _consumer_out({**row, "status": status, "updated_at": now})
        self._changed("consumer.enabled" if active else "consumer.disabled", actor, f"consumer:{row['name']}")
        return out

    def set_consumer_quota(self, name: str, quota: str | None, *, actor: str) -> dict[str, Any]:
        """A consumer's own quota (``N/day`` or ``N/month``); None returns it to consumers_defaults.quota."""
        text = _quota(quota)
        with self.engine.begin() as conn:
            row = self._consumer_row(conn, name)
            conn.execute(
                update(consumers_table)
                .where(consumers_table.c.id == row["id"])
                .values(quota=text, updated_at=self.clock())
            )
            bump_revision(conn)
            out = dict(row)
        out.update(quota=text)
        self._changed("consumer.updated", actor, f"consumer:{out['name']}", quota=text)
        return _consumer_out(out)

    def update_consumer_scopes(self, name: str, scopes: Iterable[str], *, actor: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            row = self._consumer_row(conn, name)
            new = json.dumps(_scopes(scopes))
            now = self.clock()
            conn.execute(
                update(consumers_table)
                .where(consumers_table.c.id == row["id"])
                .values(scopes=new, updated_at=now)
            )
            bump_revision(conn)
            out = _consumer_out({**row, "scopes": new, "updated_at": now})
        self._changed("consumer.updated", actor, f"consumer:{row['name']}", scopes=out["scopes"])
        return out

    # -- API keys -----------------------------------------------------------------------------------
    def create_key(
        self,
        consumer: str,
        scopes: Iterable[str] | None = None,
        *,
        ttl: float | None = None,
        permissions: Iterable[str] = (),
        ip_allow: Iterable[str] = (),
        name: str = "",
        actor: str,
        _rotated_from: Mapping[str, Any] | None = None,
        _conn: Connection | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new key for ``consumer``: ``(record, full key)``. Scopes default to all of the consumer's."""
        peppers = self._need_peppers()
        ttl = self.max_key_ttl if ttl is None else ttl
        if not math.isfinite(ttl) or ttl <= 0:  # NaN compares false both ways: reject it explicitly
            raise IdentityError(400, "invalid_ttl", "the key lifetime must be a positive duration")
        if ttl > self.max_key_ttl:
            raise IdentityError(
                400,
                "invalid_ttl",
                f"the key lifetime exceeds identity.max_key_ttl ({_days(self.max_key_ttl)})",
            )
        perms = []
        for p in permissions:
            try:
                perms.append(parse_permission(p).text)
            except ValueError as exc:
                raise IdentityError(400, "invalid_permission", str(exc)) from None
        if len(name) > 128:
            raise IdentityError(400, "invalid_name", "key names are at most 128 characters")
        cidrs = _cidrs(ip_allow)

        def _do(conn: Connection) -> tuple[dict[str, Any], str, str]:
            owner = self._consumer_row(conn, consumer)
            granted = _granted(scopes, owner)
            public_id, key = new_api_key()
            now = self.clock()
            row = {
                "id": public_id,
                "consumer_id": owner["id"],
                "digest": peppers.key_digest(key).hex(),
                "name": name,
                "scopes": json.dumps(granted),
                "permissions": json.dumps(perms),
                "ip_allow": json.dumps(cidrs),
                "created_at": now,
                "created_by": actor,
                "expires_at": now + ttl,
                "last_used_at": None,
                "revoked_at": None,
                "revoked_by": None,
                "rotated_from": _rotated_from["id"] if _rotated_from else None,
                "rotated_to": None,
            }
            conn.execute(api_keys_table.insert().values(**row))
            bump_revision(conn)
            return _key_out(row, owner["name"]), key, owner["name"]

        if _conn is not None:
            out, key, owner_name = _do(_conn)
            return out, key
        with self.engine.begin() as conn:
            out, key, owner_name = _do(conn)
        self._changed(
            "api_key.created",
            actor,
            f"api_key:{out['id']}",
            key_id=out["id"],
            consumer=owner_name,
            scopes=out["scopes"],
            expires_at=out["expires_at"],
        )
        return out, key

    def list_keys(self, consumer: str | None = None, *, include_revoked: bool = True) -> list[dict[str, Any]]:
        k, c = api_keys_table.c, consumers_table.c
        query = select(api_keys_table, c.name.label("consumer_name")).join(
            consumers_table, k.consumer_id == c.id
        )
        with self.engine.connect() as conn:
            if consumer is not None:
                owner = self._consumer_row(conn, consumer)
                query = query.where(k.consumer_id == owner["id"])
            if not include_revoked:
                query = query.where(k.revoked_at.is_(None))
            rows = conn.execute(query.order_by(k.created_at, k.id)).all()
        return [_key_out(r._mapping, r._mapping["consumer_name"]) for r in rows]

    def get_key(self, key_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row, owner = self._key_row(conn, key_id)
        return _key_out(row, owner)

    def _key_row(self, conn: Connection, key_id: str) -> tuple[Mapping[str, Any], str]:
        k, c = api_keys_table.c, consumers_table.c
        r = conn.execute(
            select(api_keys_table, c.name.label("consumer_name"))
            .join(consumers_table, k.consumer_id == c.id)
            .where(k.id == key_id)
        ).first()
        if r is None:
            raise _not_found("key")
        return r._mapping, r._mapping["consumer_name"]

    def revoke_key(self, key_id: str, *, actor: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            row, owner = self._key_row(conn, key_id)
            if row["revoked_at"] is not None:
                return _key_out(row, owner)  # idempotent
            now = self.clock()
            conn.execute(
                update(api_keys_table)
                .where(api_keys_table.c.id == key_id)
                .values(revoked_at=now, revoked_by=actor)
            )
            bump_revision(conn)
            out = _key_out({**row, "revoked_at": now, "revoked_by": actor}, owner)
        self._changed("api_key.revoked", actor, f"api_key:{key_id}", key_id=key_id, consumer=owner)
        return out

    def rotate_key(
        self, key_id: str, *, grace: float = DEFAULT_GRACE, actor: str
    ) -> tuple[dict[str, Any], str]:
        """A new key with the same consumer, scopes, permissions and address list; the old one stays
        valid for ``grace`` seconds (never longer than it had left), then expires."""
        if not math.isfinite(grace) or grace < 0:
            raise IdentityError(400, "invalid_grace", "the grace period must be a duration of zero or more")
        with self.engine.begin() as conn:
            old, owner = self._key_row(conn, key_id)
            now = self.clock()
            if old["revoked_at"] is not None or (old["expires_at"] is not None and old["expires_at"] <= now):
                raise IdentityError(409, "key_inactive", "a revoked or expired key cannot be rotated")
            if old["rotated_to"] is not None:
                raise IdentityError(
                    409, "already_rotated", "this key was already rotated; rotate the new key"
                )
            held = set(json.loads(self._consumer_row(conn, owner)["scopes"]))
            out, key = self.create_key(
                owner,
                sorted(held.intersection(json.loads(old["scopes"]))),
                ttl=self.max_key_ttl,
                permissions=json.loads(old["permissions"]),
                ip_allow=json.loads(old["ip_allow"]),
                name=old["name"],
                actor=actor,
                _rotated_from=old,
                _conn=conn,
            )
            grace_end = now + grace
            if old["expires_at"] is not None:
                grace_end = min(grace_end, old["expires_at"])
            conn.execute(
                update(api_keys_table)
                .where(api_keys_table.c.id == key_id)
                .values(rotated_to=out["id"], expires_at=grace_end)
            )
            bump_revision(conn)
        self._changed(
            "api_key.rotated",
            actor,
            f"api_key:{key_id}",
            key_id=key_id,
            new_key_id=out["id"],
            consumer=owner,
            grace_until=grace_end,
        )
        return out, key

    # -- OAuth clients ------------------------------------------------------------------------------
    def create_client(
        self,
        consumer: str,
        scopes: Iterable[str] | None = None,
        *,
        jwks: Mapping[str, Any] | None = None,
        actor: str,
    ) -> tuple[dict[str, Any], str | None]:
        """A client of ``consumer``: with a generated secret (``client_secret_basic``/``_post``), or with
        a registered JWKS (``private_key_jwt``, RFC 7523) and no secret."""
        peppers = self._need_peppers()
        if jwks is not None:
            _check_client_jwks(jwks)
        with self.engine.begin() as conn:
            owner = self._consumer_row(conn, consumer)
            granted = _granted(scopes, owner)
            client_id = "bcl_" + random_base62(20)
            secret = None if jwks is not None else "bcs_" + random_base62(43)
            row = {
                "client_id": client_id,
                "consumer_id": owner["id"],
                "auth_method": "private_key_jwt" if jwks is not None else "client_secret_basic",
                "secret_digest": peppers.client_secret_digest(secret).hex() if secret else None,
                "jwks": json.dumps(jwks) if jwks is not None else None,
                "scopes": json.dumps(granted),
                "created_at": self.clock(),
                "created_by": actor,
                "revoked_at": None,
                "revoked_by": None,
            }
            conn.execute(oauth_clients_table.insert().values(**row))
            bump_revision(conn)
        out = _client_out(row, owner["name"])
        self._changed(
            "client.created",
            actor,
            f"client:{client_id}",
            client_id=client_id,
            consumer=owner["name"],
            scopes=granted,
            auth_method=row["auth_method"],
        )
        return out, secret

    def list_clients(self, consumer: str | None = None) -> list[dict[str, Any]]:
        o = oauth_clients_table.c
        rows = self._owned(oauth_clients_table, consumer, order=(o.created_at, o.client_id))
        return [_client_out(r, r["consumer_name"]) for r in rows]

    def revoke_client(self, client_id: str, *, actor: str) -> dict[str, Any]:
        row, now = self._revoke(
            oauth_clients_table, oauth_clients_table.c.client_id, client_id, "client", actor
        )
        if now is not None:
            self._changed("client.revoked", actor, f"client:{client_id}", client_id=client_id)
        return _client_out(row, row["consumer_name"])

    def _owned(
        self, table: Any, consumer: str | None, *, order: tuple[Any, ...], where: Any = None
    ) -> list[Any]:
        """Rows of ``table`` (clients, public keys) with their consumer's name, of one consumer or all."""
        c = consumers_table.c
        query = select(table, c.name.label("consumer_name")).join(
            consumers_table, table.c.consumer_id == c.id
        )
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as conn:
            if consumer is not None:
                owner = self._consumer_row(conn, consumer)
                query = query.where(table.c.consumer_id == owner["id"])
            return [r._mapping for r in conn.execute(query.order_by(*order)).all()]

    def _revoke(
        self, table: Any, id_column: Any, ident: str, what: str, actor: str
    ) -> tuple[Mapping[str, Any], float | None]:
        """Revoke one credential row (idempotent): the row as it now is, and when (None: it already was)."""
        c = consumers_table.c
        with self.engine.begin() as conn:
            r = conn.execute(
                select(table, c.name.label("consumer_name"))
                .join(consumers_table, table.c.consumer_id == c.id)
                .where(id_column == ident)
            ).first()
            if r is None:
                raise _not_found(what)
            row = r._mapping
            if row["revoked_at"] is not None:
                return row, None
            now = self.clock()
            conn.execute(update(table).where(id_column == ident).values(revoked_at=now, revoked_by=actor))
            bump_revision(conn)
        return {**row, "revoked_at": now, "revoked_by": actor}, now

    # -- public keys for PKCV ------------------------------------------------------------------------
    def add_public_key(
        self, consumer: str, public_key: str | bytes, *, name: str = "", actor: str
    ) -> dict[str, Any]:
        """Register an RSA public key (2048-8192 bits, e = 65537) for ``consumer``; its id (``CR…``)
        is the ``kid`` of the consumer's PKCV tokens."""
        pem, fingerprint = _check_public_key(public_key)
        if len(name) > 128:
            raise IdentityError(400, "invalid_request", "name: at most 128 characters")
        with self.engine.begin() as conn:
            owner = self._consumer_row(conn, consumer)
            row = {
                "id": "CR" + secrets.token_hex(16),
                "consumer_id": owner["id"],
                "name": name,
                "public_key": pem,
                "fingerprint": fingerprint,
                "created_at": self.clock(),
                "created_by": actor,
                "revoked_at": None,
                "revoked_by": None,
            }
            conn.execute(public_keys_table.insert().values(**row))
            bump_revision(conn)
        self._changed(
            "credential.created",
            actor,
            f"credential:{row['id']}",
            credential_id=row["id"],
            consumer=owner["name"],
            fingerprint=fingerprint,
        )
        return _public_key_out(row, owner["name"])

    def list_public_keys(self, consumer: str | None = None) -> list[dict[str, Any]]:
        p = public_keys_table.c
        rows = self._owned(public_keys_table, consumer, order=(p.created_at, p.id))
        return [_public_key_out(r, r["consumer_name"]) for r in rows]

    def get_public_key(self, credential_id: str) -> dict[str, Any]:
        p = public_keys_table.c
        rows = self._owned(public_keys_table, None, order=(p.id,), where=p.id == credential_id)
        if not rows:
            raise _not_found("credential")
        return _public_key_out(rows[0], rows[0]["consumer_name"])

    def revoke_public_key(self, credential_id: str, *, actor: str) -> dict[str, Any]:
        table = public_keys_table
        row, now = self._revoke(table, table.c.id, credential_id, "credential", actor)
        if now is not None:
            self._changed(
                "credential.revoked", actor, f"credential:{credential_id}", credential_id=credential_id
            )
        return _public_key_out(row, row["consumer_name"])


MAX_PUBLIC_KEY_BYTES = 16 * 1024


def _check_public_key(value: str | bytes) -> tuple[str, str]:
    """The key as normalised PEM and its fingerprint, or an IdentityError saying what is wrong."""
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) > MAX_PUBLIC_KEY_BYTES:
        raise IdentityError(400, "invalid_public_key", "the public key file is too large")
    if b"PRIVATE KEY" in raw:
        raise IdentityError(
            400,
            "invalid_public_key",
            "this is a private key: register the public key only (and keep this safe)",
        )
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        try:
            key = serialization.load_der_public_key(raw)
        except (ValueError, TypeError):
            raise IdentityError(
                400, "invalid_public_key", "expected an RSA public key in PEM (or DER) form"
            ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise IdentityError(400, "invalid_public_key", "PKCV keys must be RSA keys")
    if not 2048 <= key.key_size <= 8192:
        raise IdentityError(400, "invalid_public_key", "PKCV keys must have 2048 to 8192 bits")
    if key.public_numbers().e != 65537:
        raise IdentityError(400, "invalid_public_key", "PKCV keys must use the public exponent 65537")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii"), hashlib.sha256(der).hexdigest()


def _public_key_out(row: Mapping[str, Any], consumer: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "consumer": consumer,
        "name": row["name"],
        "fingerprint": row["fingerprint"],
        "public_key": row["public_key"],
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "revoked_at": row["revoked_at"],
        "revoked_by": row["revoked_by"],
    }


def _check_client_jwks(jwks: Mapping[str, Any]) -> None:
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not keys or len(keys) > 10:
        raise IdentityError(400, "invalid_jwks", "jwks must be a JSON Web Key Set with 1-10 public keys")
    for key in keys:
        if not isinstance(key, Mapping) or PRIVATE_MEMBERS & set(key):
            raise IdentityError(400, "invalid_jwks", "the client's JWKS must hold public keys only")
        if key.get("kty") not in ("RSA", "EC", "OKP"):
            raise IdentityError(400, "invalid_jwks", "only RSA, EC and OKP public keys are accepted")
        if key.get("kty") == "RSA":
            n = key.get("n")
            # base64url without padding: 2048 bits are 342 characters
            if not isinstance(n, str) or len(n.rstrip("=")) < MIN_RSA_N_CHARS:
                raise IdentityError(400, "invalid_jwks", "RSA keys must have at least 2048 bits")
    try:
        KeySet.import_key_set({"keys": [dict(k) for k in keys]})
    except (JoseError, ValueError, TypeError):
        raise IdentityError(400, "invalid_jwks", "the JWKS could not be read") from None


def _quota(value: str | None) -> str | None:
    if value is None:
        return None
    from ..core.ratelimit import LimitParseError, parse_quota

    try:
        return parse_quota(value).text
    except LimitParseError as exc:
        raise IdentityError(400, "invalid_quota", str(exc)) from None


def _granted(asked: Iterable[str] | None, owner: Mapping[str, Any]) -> list[str]:
    """Least privilege for a new key or client: the scopes asked for, all held by the consumer (an
    error names any that are not); none asked for means all of the consumer's."""
    held = frozenset(json.loads(owner["scopes"]))
    if asked is None:
        return sorted(held)
    try:
        return sorted(check_scope_subset(_scopes(asked), held))
    except ScopeError as exc:
        raise IdentityError(400, "invalid_scope", str(exc)) from None


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days"


def _consumer_out(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "scopes": json.loads(row["scopes"]),
        "ip_allow": json.loads(row["ip_allow"]),
        "metadata": json.loads(row["meta"]),
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "updated_at": row["updated_at"],
        "quota": row.get("quota"),
    }


def _key_out(row: Mapping[str, Any], consumer: str) -> dict[str, Any]:
    """A key as shown to admins: never the digest, never the key."""
    return {
        "id": row["id"],
        "consumer": consumer,
        "name": row["name"],
        "scopes": json.loads(row["scopes"]),
        "permissions": json.loads(row["permissions"]),
        "ip_allow": json.loads(row["ip_allow"]),
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "expires_at": row["expires_at"],
        "last_used_at": row["last_used_at"],
        "revoked_at": row["revoked_at"],
        "revoked_by": row["revoked_by"],
        "rotated_from": row["rotated_from"],
        "rotated_to": row["rotated_to"],
    }


def _client_out(row: Mapping[str, Any], consumer: str) -> dict[str, Any]:
    return {
        "client_id": row["client_id"],
        "consumer": consumer,
        "auth_method": row["auth_method"],
        "scopes": json.loads(row["scopes"]),
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "revoked_at": row["revoked_at"],
        "revoked_by": row["revoked_by"],
    }
