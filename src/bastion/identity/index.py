"""The in-memory identity snapshot that requests read, and the thread that keeps it fresh.

Per request, authentication is dictionary lookups in :class:`IdentitySnapshot` — never a database
query. :class:`IdentitySync` reloads the whole snapshot when ``identity_state.revision`` changes
(polled every ``identity.refresh_interval``; immediately after a change made in this process), and
writes ``last_used_at`` in batches. A reload builds new dictionaries and swaps one reference, so a
request sees either the old snapshot or the new one, never a mix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from ipaddress import ip_network

from sqlalchemy import Engine, bindparam, delete, select, update

from ..core.forwarding import NetworkSet
from ..core.identity import (
    ClientRecord,
    ConsumerRecord,
    KeyRecord,
    PublicKeyRecord,
    key_principal,
    parse_permission,
    public_key_principal,
)
from ..core.ratelimit import parse_quota
from ..store.schema import (
    api_keys_table,
    consumers_table,
    identity_state_table,
    oauth_clients_table,
    public_keys_table,
    revoked_tokens_table,
)
from .manage import bump_revision

__all__ = ["IdentitySnapshot", "IdentitySync", "check_pepper", "load_snapshot"]

log = logging.getLogger("bastion.identity")

RECENTLY_ENDED = 30 * 86400.0  # revoked or expired keys kept in the snapshot this long, to name their use


def _nets(text: str) -> NetworkSet | None:
    values = json.loads(text)
    return NetworkSet(ip_network(v) for v in values) if values else None


class _Data:
    __slots__ = (
        "by_name",
        "clients",
        "consumers",
        "generation",
        "keys",
        "public_keys",
        "revision",
        "revoked",
    )

    def __init__(self) -> None:
        self.keys: dict[str, KeyRecord] = {}
        self.consumers: dict[str, ConsumerRecord] = {}
        self.by_name: dict[str, ConsumerRecord] = {}
        self.clients: dict[str, ClientRecord] = {}
        self.revoked: dict[str, float] = {}  # jti -> expires_at
        self.public_keys: dict[str, PublicKeyRecord] = {}
        self.revision = -1
        # A new object for every load: what was derived from this snapshot is valid while it is current
        # (compared with `is`; unlike the revision number it cannot repeat, even after a restore).
        self.generation = object()


class IdentitySnapshot:
    """Implements :class:`bastion.core.ports.IdentityIndex`."""

    def __init__(self, max_staleness: float = math.inf) -> None:
        self._data = _Data()
        # Read per request, so plain attributes rather than lookups through _data; swapped with it.
        self.keys = self._data.keys  # IdentityIndex.keys
        self.revoked = self._data.revoked  # jti -> expires_at
        self.revision = self._data.revision
        self.generation = self._data.generation
        # When the store last confirmed this snapshot is current (None: no store, always current). While the
        # store is unreachable the snapshot keeps serving, up to identity.max_staleness: fresh_until, one
        # comparison per authenticated request (implements bastion.core.ports.Freshness).
        self.max_staleness = max_staleness
        self._confirmed_at: float | None = None
        self.fresh_until = math.inf
        # IdentityIndex.last_used, written once per authenticated request (an item assignment, no call):
        # take_used empties this dict in place and never replaces it.
        self.last_used: dict[str, float] = {}
        self.pending_revocations: list[tuple[str, float, float]] = []
        # Revocations are appended on the event loop and taken by the sync thread: never lose one.
        self.pending_lock = threading.Lock()

    @property
    def confirmed_at(self) -> float | None:
        return self._confirmed_at

    @confirmed_at.setter
    def confirmed_at(self, when: float | None) -> None:
        self._confirmed_at = when
        self.fresh_until = math.inf if when is None else when + self.max_staleness

    def replace(self, data: _Data) -> None:
        # Revocations made here but not yet written must survive a reload.
        with self.pending_lock:
            for jti, exp, _at in self.pending_revocations:
                data.revoked.setdefault(jti, exp)
            self._data = data
            # generation last: whoever reads it first and then the snapshot sees data at least as new
            self.keys, self.revoked, self.revision = data.keys, data.revoked, data.revision
            self.generation = data.generation

    def key(self, key_id: str) -> KeyRecord | None:
        return self.keys.get(key_id)

    def consumer(self, consumer_id: str) -> ConsumerRecord | None:
        return self._data.consumers.get(consumer_id)

    def consumer_named(self, name: str) -> ConsumerRecord | None:
        return self._data.by_name.get(name)

    def client(self, client_id: str) -> ClientRecord | None:
        return self._data.clients.get(client_id)

    def token_revoked(self, jti: str) -> bool:
        return jti in self.revoked

    def public_key(self, credential_id: str) -> PublicKeyRecord | None:
        return self._data.public_keys.get(credential_id)

    def revoke_token(self, jti: str, expires_at: float, now: float) -> None:
        """Effective at once in this process; written to the store by the sync thread."""
        with self.pending_lock:  # replace() takes the same lock: a reload cannot slip in between
            self.pending_revocations.append((jti, expires_at, now))
            self.revoked[jti] = expires_at

    def take_used(self) -> dict[str, float]:
        """The uses noted since the last call, taken out of the dict the event loop writes to. Each pop
        is atomic; a use noted meanwhile stays for the next call."""
        used = self.last_used
        taken = {}
        for key_id in list(used):
            when = used.pop(key_id, None)
            if when is not None:
                taken[key_id] = when
        return taken


def check_pepper(engine: Engine, value: str) -> bool:
    """Record the pepper's check value the first time; afterwards, say whether it still matches."""
    t = identity_state_table.c
    with engine.begin() as conn:
        stored = conn.execute(select(t.pepper_check).where(t.id == 1)).scalar_one_or_none()
        if stored is None:
            conn.execute(update(identity_state_table).where(t.id == 1).values(pepper_check=value))
            return True
    return bool(stored == value)


def load_snapshot(engine: Engine, now: float | None = None) -> _Data:
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet, RSAKey

    now = time.time() if now is None else now
    data = _Data()
    with engine.connect() as conn:
        data.revision = conn.execute(
            select(identity_state_table.c.revision).where(identity_state_table.c.id == 1)
        ).scalar_one()
        for r in conn.execute(select(consumers_table)).mappings():
            rec = ConsumerRecord(
                id=r["id"],
                name=r["name"],
                active=r["status"] == "active",
                scopes=frozenset(json.loads(r["scopes"])),
                ip_allow=_nets(r["ip_allow"]),
                quota=parse_quota(r["quota"]) if r["quota"] else None,
            )
            data.consumers[rec.id] = rec
            data.by_name[rec.name] = rec
        # Revoked and expired keys stay for a while (the client sees the same 401 either way): when the
        # real secret of a revoked or expired key is presented, the event says so — a strong signal that a
        # leaked or forgotten credential is in use — instead of "unknown key".
        recent = now - RECENTLY_ENDED
        k = api_keys_table.c
        live = select(api_keys_table).where(
            (k.revoked_at.is_(None) | (k.revoked_at > recent))
            & (k.expires_at.is_(None) | (k.expires_at > recent))
        )
        for r in conn.execute(live).mappings():
            rec = KeyRecord(
                id=r["id"],
                consumer_id=r["consumer_id"],
                digest=bytes.fromhex(r["digest"]),
                scopes=frozenset(json.loads(r["scopes"])),
                permissions=tuple(parse_permission(p) for p in json.loads(r["permissions"])),
                ip_allow=_nets(r["ip_allow"]),
                expires_at=r["expires_at"],
                revoked_at=r["revoked_at"],
                rotated_to=r["rotated_to"],
            )
            owner = data.consumers.get(rec.consumer_id)
            if owner is not None and owner.active:  # no principal: the check then refuses the key
                rec = dataclasses.replace(rec, principal=key_principal(rec, owner))
            data.keys[rec.id] = rec
        o = oauth_clients_table.c
        for r in conn.execute(select(oauth_clients_table).where(o.revoked_at.is_(None))).mappings():
            jwks = KeySet.import_key_set(json.loads(r["jwks"])) if r["jwks"] else None
            data.clients[r["client_id"]] = ClientRecord(
                client_id=r["client_id"],
                consumer_id=r["consumer_id"],
                scopes=frozenset(json.loads(r["scopes"])),
                secret_digest=bytes.fromhex(r["secret_digest"]) if r["secret_digest"] else None,
                jwks=jwks,
            )
        p = public_keys_table.c
        for r in conn.execute(select(public_keys_table).where(p.revoked_at.is_(None))).mappings():
            try:
                key = RSAKey.import_key(r["public_key"])
            except (JoseError, ValueError, TypeError):  # registered through checks; a corrupt row is skipped
                log.error("public key %s could not be read; requests signed with it are refused", r["id"])
                continue
            pk = PublicKeyRecord(id=r["id"], consumer_id=r["consumer_id"], key=key)
            owner = data.consumers.get(pk.consumer_id)
            if owner is not None and owner.active:
                pk = dataclasses.replace(pk, principal=public_key_principal(pk, owner))
            data.public_keys[pk.id] = pk
        t = revoked_tokens_table.c
        for r in conn.execute(select(t.jti, t.expires_at).where(t.expires_at > now)).mappings():
            data.revoked[r["jti"]] = r["expires_at"]
    return data


class IdentitySync:
    """Keeps a snapshot fresh from the store, on a daemon thread."""

    def __init__(
        self,
        engine: Engine,
        snapshot: IdentitySnapshot,
        *,
        interval: float = 1.0,
        flush_every: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_reload: Callable[[], None] | None = None,
        periodic: Callable[[], None] | None = None,
        periodic_every: float = 60.0,
    ) -> None:
        self.engine = engine
        self.snapshot = snapshot
        self.interval = interval
        self.flush_every = flush_every
        self.clock = clock
        self.on_reload = on_reload
        self.periodic = periodic
        self.periodic_every = periodic_every
        self._last_periodic = clock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_flush = clock()
        self.reloads = 0
        self.failures = 0

    def load(self) -> None:
        """Reload now if the revision moved (or always, the first time)."""
        with self._lock:
            with self.engine.connect() as conn:
                rev = conn.execute(
                    select(identity_state_table.c.revision).where(identity_state_table.c.id == 1)
                ).scalar_one()
            if rev == self.snapshot.revision:
                self.snapshot.confirmed_at = self.clock()
                return
            self.snapshot.replace(load_snapshot(self.engine, self.clock()))
            self.snapshot.confirmed_at = self.clock()
            self.reloads += 1
        if self.on_reload is not None:
            self.on_reload()

    def changed(self) -> None:
        """Called after a change made in this process: reload before returning to the caller."""
        self.load()

    def flush(self) -> None:
        """Write ``last_used_at`` and pending token revocations. Under the reload lock: a reload between
        taking the revocations and committing them would drop them from the snapshot."""
        with self._lock:
            used = self.snapshot.take_used()
            with self.snapshot.pending_lock:
                pending, self.snapshot.pending_revocations = self.snapshot.pending_revocations, []
            if not used and not pending:
                return
            try:
                self._write(used, pending)
            except Exception:
                # Not written: revocations stay pending (in force across reloads) until a flush succeeds.
                with self.snapshot.pending_lock:
                    self.snapshot.pending_revocations[:0] = pending
                for kid, t in used.items():
                    self.snapshot.last_used.setdefault(kid, t)
                raise

    def _write(self, used: dict[str, float], pending: list[tuple[str, float, float]]) -> None:
        with self.engine.begin() as conn:
            if used:
                k = api_keys_table.c
                conn.execute(
                    update(api_keys_table)
                    .where(k.id == bindparam("kid"))
                    .values(last_used_at=bindparam("t")),
                    [{"kid": kid, "t": t} for kid, t in used.items()],
                )
            if pending:
                t = revoked_tokens_table.c
                now = self.clock()
                conn.execute(delete(revoked_tokens_table).where(t.expires_at <= now))
                existing = set(
                    conn.execute(select(t.jti).where(t.jti.in_([p[0] for p in pending]))).scalars()
                )
                rows = [
                    {"jti": jti, "expires_at": exp, "revoked_at": at}
                    for jti, exp, at in pending
                    if jti not in existing
                ]
                if rows:
                    conn.execute(revoked_tokens_table.insert(), rows)
                bump_revision(conn)

    def start(self) -> None:
        self.load()
        self._thread = threading.Thread(target=self._run, name="bastion-identity-sync", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self.snapshot.pending_revocations or self.clock() - self._last_flush >= self.flush_every:
                    self._last_flush = self.clock()
                    self.flush()
                self.load()
                if self.periodic is not None and self.clock() - self._last_periodic >= self.periodic_every:
                    self._last_periodic = self.clock()
                    self.periodic()
            except Exception:  # the store being away must not kill the thread: keep the last snapshot
                self.failures += 1
                log.warning("identity refresh failed; serving the last snapshot", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception:
            log.warning("could not write key usage at shutdown", exc_info=True)
