"""Bearer-token verifiers (implementations of :class:`bastion.core.ports.TokenVerifier`).

- :class:`LocalTokenVerifier` — access tokens Bastion's own OAuth2 server issued (route auth ``oauth2``).
- :class:`IssuerVerifier` — JWTs from an external identity provider (route auth ``jwt:<name>``).

Signature verification costs tens of microseconds, so a verified token's claims are cached, keyed by
the exact token string, until the token expires (bounded). What can change during a token's life is
checked on every request, from the in-memory identity snapshot: revocation (RFC 7009), the client
being revoked, the consumer being disabled, and the consumer's scopes (a token never carries more).
"""

from __future__ import annotations

import json
import re
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError

from ..core.identity import UNCLAIMED, AuthFailure, ConsumerRecord, Principal, identity_headers, valid_scope
from .index import IdentitySnapshot
from .jwks import JwksCache, JwksError
from .jwt import JwtPolicy, JwtRejected, token_header, verify_jwt
from .signing import SigningKeys

__all__ = ["IssuerVerifier", "LocalTokenVerifier", "scopes_from_claims"]

_CACHE_MAX = 10_000


def _looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


def _unverified(token: str, part: str) -> dict[str, Any]:
    """The header or claims of a compact JWS *without* verifying it — only to pick the verifier that
    will verify it. Anything unreadable gives ``{}`` (and then fails verification properly)."""
    if len(token) > 16384:
        return {}
    try:
        obj = jws.extract_compact(token.encode("ascii"))
        value = obj.protected if part == "header" else json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeError, TypeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def scopes_from_claims(claims: dict[str, Any]) -> frozenset[str]:
    """``scope`` (space-separated, RFC 8693/9068) or ``scp`` (a list or a string, as some IdPs send).
    Only RFC 6749 scope-tokens are kept: scopes travel upstream in a header, so a claim cannot smuggle
    a line break, a NUL or non-ASCII text into it."""
    value = claims.get("scope", claims.get("scp"))
    if isinstance(value, str):
        items: list[str] = value.split(" ")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        return frozenset()
    return frozenset(s for s in items if valid_scope(s))


_SUBJECT = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII: it becomes the X-Bastion-Consumer header


# Token memos are keyed by the token's last characters (its signature's): hashing a whole token, a few
# hundred characters, on every request cost more than the rest of the lookup. The entry keeps the whole
# token, and only an identical token is a hit.
_TAIL = 43


class _Cache:
    def __init__(self) -> None:
        self.items: dict[str, tuple[str, float, Any]] = {}

    def get(self, token: str, now: float) -> Any:
        tail = token[-_TAIL:]
        hit = self.items.get(tail)
        if hit is None or hit[0] != token:
            return None
        if now >= hit[1]:
            del self.items[tail]
            return None
        return hit[2]

    def put(self, token: str, exp: float, value: Any) -> None:
        if len(self.items) >= _CACHE_MAX:
            self.items.clear()  # crude but bounded; a flood of distinct valid tokens is itself rare
        self.items[token[-_TAIL:]] = (token, exp, value)


class LocalTokenVerifier:
    name = "oauth2"

    def __init__(
        self,
        signing: SigningKeys,
        index: IdentitySnapshot,
        *,
        issuer: str,
        audience: str,
        leeway: float = 30.0,
    ) -> None:
        self.signing = signing
        self.index = index
        self.policy = JwtPolicy(
            issuer=issuer,
            audience=audience,
            algorithms=(signing.alg,),
            leeway=leeway,
            required_claims=("exp", "iat", "jti", "client_id", "sub"),
            max_lifetime=signing.token_ttl + leeway,
        )
        self._cache = _Cache()
        # token's tail -> (token, snapshot generation, principal, exp, jti): a token seen before, unexpired,
        # unrevoked and with the same snapshot is answered from here in one lookup (no claims cache)
        self._principals: dict[str, tuple[str, object, Principal, float, str]] = {}

    def claims_like(self, token: str) -> bool:
        return _looks_like_jwt(token)

    def decode(self, token: str, now: float) -> dict[str, Any]:
        """Verified claims (signature, issuer, audience, times) — raises AuthFailure."""
        claims = self._cache.get(token, now)
        if claims is not None:
            return claims  # type: ignore[no-any-return]
        kid = _unverified(token, "header").get("kid")
        if not isinstance(kid, str) or not kid.startswith("bst-"):
            raise AuthFailure(UNCLAIMED)  # not signed by Bastion: another verifier may take it
        try:
            header = token_header(token, self.policy)
            keys = self.signing.verify_keys
            if not any(k.kid == kid for k in keys.keys):
                raise AuthFailure("jwt_kid_unknown")
            if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
                raise AuthFailure("jwt_typ_invalid")  # RFC 9068 §4: only access tokens, typed as such
            claims = verify_jwt(token, keys, self.policy, now)
        except JwtRejected as exc:
            raise AuthFailure(exc.code) from None
        self._cache.put(token, float(claims["exp"]), claims)
        return claims

    def recall(self, token: str, now: float) -> Principal | None:
        memo = self._principals.get(token[-_TAIL:])
        if memo is None or memo[0] != token:
            return None
        # The principal depends on the snapshot (client, consumer, scopes): reused until a reload.
        index = self.index
        if memo[1] is index.generation and now < memo[3] and memo[4] not in index.revoked:
            return memo[2]
        return None

    async def verify(self, token: str, now: float) -> Principal:
        known = self.recall(token, now)
        if known is not None:
            return known
        index = self.index
        generation = index.generation  # read before the snapshot's records (see IdentitySnapshot.replace)
        claims = self.decode(token, now)
        if index.token_revoked(claims["jti"]):
            raise AuthFailure("token_revoked")
        client = self.index.client(claims["client_id"])
        if client is None:
            raise AuthFailure("client_revoked")
        consumer = self.index.consumer(client.consumer_id)
        if consumer is None or not consumer.active:
            raise AuthFailure("consumer_disabled")
        scopes = scopes_from_claims(claims) & client.scopes & consumer.scopes
        principal = Principal(
            consumer=consumer.name,
            scopes=scopes,
            method="oauth2",
            consumer_id=consumer.id,
            client_id=client.client_id,
            ip_allow=(consumer.ip_allow,) if consumer.ip_allow else (),
            upstream_headers=identity_headers(consumer.name, scopes),
        )
        if len(self._principals) >= _CACHE_MAX:
            self._principals.clear()
        self._principals[token[-_TAIL:]] = (token, generation, principal, float(claims["exp"]), claims["jti"])
        return principal


class IssuerVerifier:
    """JWTs of one configured external issuer (``jwt_issuers[].name``)."""

    def __init__(
        self,
        name: str,
        jwks: JwksCache,
        policy: JwtPolicy,
        index: IdentitySnapshot,
        *,
        consumer_claim: str = "sub",
    ) -> None:
        self.name = f"jwt:{name}"
        self.jwks = jwks
        self.policy = policy
        self.index = index
        self.consumer_claim = consumer_claim
        self._cache = _Cache()

    def claims_like(self, token: str) -> bool:
        return _looks_like_jwt(token)

    def recall(self, token: str, now: float) -> Principal | None:
        hit: _Verified | None = self._cache.get(token, now)
        if hit is None:
            return None
        known = self.index.consumer_named(hit.subject)
        if known is not None and not known.active:
            return None  # verify says why
        return self._principal(hit, known)

    async def verify(self, token: str, now: float) -> Principal:
        hit = self._cache.get(token, now)
        if hit is None:
            if _unverified(token, "payload").get("iss") != self.policy.issuer:
                # Routing only (the signature and every claim are verified below): a token that does not
                # even claim this issuer is another verifier's, and must not make us refetch our JWKS.
                raise AuthFailure(UNCLAIMED)
            try:
                header = token_header(token, self.policy)
                kid = header.get("kid")
                keys = await self.jwks.key_set(kid if isinstance(kid, str) else None)
                claims = verify_jwt(token, keys, self.policy, now)
            except JwtRejected as exc:
                raise AuthFailure(exc.code) from None
            except JwksError:
                raise AuthFailure("jwks_unavailable") from None
            subject = claims.get(self.consumer_claim)
            if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
                # Missing, or not something a header can carry verbatim (spaces, controls, non-ASCII).
                raise AuthFailure("jwt_subject_invalid", claim=self.consumer_claim)
            hit = _Verified(subject, scopes_from_claims(claims))
            self._cache.put(token, float(claims["exp"]), hit)
        known = self.index.consumer_named(hit.subject)
        if known is not None and not known.active:
            raise AuthFailure("consumer_disabled")
        return self._principal(hit, known)

    def _principal(self, hit: _Verified, known: ConsumerRecord | None) -> Principal:
        """The principal of a verified token, remembered with it for the consumer record it was built
        from (a reload brings new records: it is then built again)."""
        if hit.consumer is known and hit.principal is not None:
            return hit.principal
        principal = Principal(
            consumer=hit.subject,
            scopes=hit.scopes,
            method=self.name,
            consumer_id=known.id if known is not None else None,
            ip_allow=(known.ip_allow,) if known is not None and known.ip_allow else (),
            upstream_headers=identity_headers(hit.subject, hit.scopes),
        )
        hit.consumer, hit.principal = known, principal
        return principal


class _Verified:
    """What an external issuer's token was verified to say, and the principal last built from it."""

    __slots__ = ("consumer", "principal", "scopes", "subject")

    def __init__(self, subject: str, scopes: frozenset[str]) -> None:
        self.subject = subject
        self.scopes = scopes
        self.consumer: ConsumerRecord | None = None  # the record `principal` was built from
        self.principal: Principal | None = None
