"""Signing outbound requests with Twilio's Public Key Client Validation (P18).

Each request gets a ``Twilio-Client-Validation`` JWT: header ``cty: twilio-pkrv;v=1``, ``kid`` the
credential id (``CR…``), RS256 or PS256; claims ``iss`` (the API key SID), ``sub`` (the account SID),
``nbf``, ``exp`` (at most 300 s on), ``hrh`` (``authorization;host``) and ``rqh``, the SHA-256 of the
canonical request in the form Twilio's Java SDK computes (:func:`bastion.core.pkcv_canonical.canonical_java`)
— the same function Bastion's own ingress verifier checks, so what the egress signs, the ingress accepts.
The JWS is made by joserfc.
"""

from __future__ import annotations

from collections.abc import Sequence

from joserfc import jwt
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from ..core.headers import Headers
from ..core.pkcv_canonical import canonical_java, request_hash

__all__ = ["CONTENT_TYPE", "HEADER", "SIGNED_HEADERS", "PkcvSigner"]

HEADER = "twilio-client-validation"
CONTENT_TYPE = "twilio-pkrv;v=1"
SIGNED_HEADERS = ("authorization", "host")


class PkcvSigner:
    def __init__(
        self, private_key_pem: str, credential_id: str, *, algorithm: str = "RS256", ttl: float = 300.0
    ) -> None:
        self._key = RSAKey.import_key(private_key_pem)
        if not self._key.is_private:
            raise ValueError("PKCV signing needs the private key")
        self.credential_id = credential_id
        self.algorithm = algorithm
        self.ttl = ttl
        self._registry = JWSRegistry(algorithms=[algorithm])
        self._header = {"alg": algorithm, "typ": "JWT", "cty": CONTENT_TYPE, "kid": credential_id}

    def sign(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        iss: str,
        sub: str,
        now: float,
    ) -> str:
        """The token for this request. ``headers`` must include ``authorization`` and ``host`` as sent."""
        canonical = canonical_java(method, path, query, Headers(headers), SIGNED_HEADERS, body)
        claims = {
            "iss": iss,
            "sub": sub,
            "nbf": int(now),
            "exp": int(now + self.ttl),
            "hrh": ";".join(SIGNED_HEADERS),
            "rqh": request_hash(canonical),
        }
        return jwt.encode(dict(self._header), claims, self._key, registry=self._registry)
