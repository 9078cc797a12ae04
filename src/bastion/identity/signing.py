"""Bastion's token-signing keys: asymmetric (ES256 or EdDSA), rotated on a schedule, encrypted at rest.

The private key is stored encrypted with a Fernet key derived from the pepper (see ``credentials``);
the public half is published at the JWKS endpoint. The newest key signs; the JWKS serves it and every
key that may still have unexpired tokens (those created within one rotation period plus the token
lifetime), so a verifier holding the JWKS never sees an unknown ``kid`` during a rotation.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from cryptography.fernet import InvalidToken
from joserfc.jwk import ECKey, KeySet, OKPKey
from sqlalchemy import Engine, select

from ..store.schema import signing_keys_table
from .credentials import Peppers, random_base62
from .manage import bump_revision

__all__ = ["PepperMismatch", "SigningKeys"]


class PepperMismatch(Exception):
    def __init__(self) -> None:
        super().__init__(
            "the store was set up with a different identity.pepper: restore the original pepper "
            "(with another one, every API key, client secret and token-signing key in the store is unusable)"
        )


Key = ECKey | OKPKey


def _generate(alg: str) -> Key:
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True)
    raise ValueError(f"unsupported signing algorithm {alg}")


def _import(alg: str, pem: bytes) -> Key:
    return ECKey.import_key(pem) if alg == "ES256" else OKPKey.import_key(pem)


class SigningKeys:
    def __init__(
        self,
        engine: Engine | None,
        peppers: Peppers,
        *,
        alg: str = "ES256",
        rotation: float = 30 * 86400.0,
        token_ttl: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.peppers = peppers
        self.alg = alg
        self.rotation = rotation
        self.token_ttl = token_ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._current: tuple[str, Key] | None = None
        self._published: list[dict[str, Any]] = []
        self._verify = KeySet([])
        self._loaded_kids: frozenset[str] = frozenset()
        self.jwks_body = b'{"keys":[]}'

    def current(self) -> tuple[str, Key]:
        cur = self._current
        if cur is None:
            raise RuntimeError("no signing key loaded")
        return cur

    @property
    def verify_keys(self) -> KeySet:
        return self._verify

    def refresh(self) -> None:
        """Load keys from the store and create a new one when the newest is due for rotation (or there is
        none). Several gateway processes may race to create one; each created key is valid and published."""
        with self._lock:
            now = self.clock()
            rows = self._rows()
            newest = max(
                (r for r in rows if r["alg"] == self.alg), key=lambda r: r["created_at"], default=None
            )
            if newest is None or now - newest["created_at"] >= self.rotation:
                self._create(now)
                rows = self._rows()
            self._load(rows, now)

    def _rows(self) -> list[dict[str, Any]]:
        if self.engine is None:
            raise RuntimeError("signing keys need the store")
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(signing_keys_table)).mappings()]

    def _create(self, now: float) -> None:
        key = _generate(self.alg)
        kid = f"bst-{int(now)}-{random_base62(8)}"
        token = self.peppers.fernet.encrypt(key.as_pem(private=True)).decode("ascii")
        public = {**key.as_dict(private=False), "kid": kid, "alg": self.alg, "use": "sig"}
        assert self.engine is not None
        with self.engine.begin() as conn:
            conn.execute(
                signing_keys_table.insert().values(
                    kid=kid, alg=self.alg, private_key=token, public_jwk=json.dumps(public), created_at=now
                )
            )
            bump_revision(conn)  # other instances reload and publish (and verify with) the new key

    def _load(self, rows: list[dict[str, Any]], now: float) -> None:
        keep = self.rotation + self.token_ttl + 300.0
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        newest = next(r for r in rows if r["alg"] == self.alg)
        published = [r for r in rows if r is newest or now - r["created_at"] < keep]
        kids = frozenset(r["kid"] for r in published)
        if kids == self._loaded_kids and self._current is not None and self._current[0] == newest["kid"]:
            return
        if self._current is None or self._current[0] != newest["kid"]:
            try:
                pem = self.peppers.fernet.decrypt(newest["private_key"].encode("ascii"))
            except InvalidToken:
                raise PepperMismatch() from None
            self._current = (newest["kid"], _import(newest["alg"], pem))
        self._published = [json.loads(r["public_jwk"]) for r in published]
        self._verify = KeySet.import_key_set({"keys": self._published})
        self._loaded_kids = kids
        self.jwks_body = json.dumps({"keys": self._published}, separators=(",", ":")).encode()
