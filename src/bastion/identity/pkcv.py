"""Public Key Client Validation tokens (P18): the ``Twilio-Client-Validation`` JWT, verified exactly as
Twilio specifies (docs/pkcv.md has the rules and their sources).

Header: ``cty`` exactly ``twilio-pkrv;v=1``, ``alg`` RS256 or PS256, ``kid`` the id (``CR…``) of a
public key a consumer registered, ``typ`` JWT or absent. Claims: ``iss`` and ``sub`` (strings), ``exp``
(not passed, at most 300 s ahead), ``hrh`` (the signed header names; must include ``authorization`` and
``host``), ``rqh`` (hex SHA-256 of the canonical request, which the check recomputes from the request
actually received). The signature is verified with joserfc; nothing here parses JSON or RSA by hand.
"""

from __future__ import annotations

import re
from typing import Any

from ..core.identity import AuthFailure, Principal
from ..core.ports import IdentityIndex
from .jwt import JwtPolicy, JwtRejected, token_header, verify_signature

__all__ = ["CONTENT_TYPE", "HEADER", "MAX_TTL", "PkcvClaims", "PkcvVerifier"]

HEADER = "twilio-client-validation"
CONTENT_TYPE = "twilio-pkrv;v=1"
MAX_TTL = 300.0
_POLICY = JwtPolicy(issuer="pkcv", audience=None, algorithms=("RS256", "PS256"), max_token_bytes=8192)
_KID = re.compile(r"CR[0-9a-f]{32}")
_RQH = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


class PkcvClaims:
    __slots__ = ("exp", "hrh", "rqh", "until")

    def __init__(self, hrh: tuple[str, ...], rqh: str, exp: float, until: float | None = None) -> None:
        self.hrh = hrh  # signed header names, lower-case, in the token's order
        self.rqh = rqh
        self.exp = exp
        self.until = exp + 60.0 if until is None else until  # accepted until then: remember it as long


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer beyond any date
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


class PkcvVerifier:
    """Verifies the token's signature and claims; the request hash is the check's job (it has the
    request). Raises :class:`AuthFailure` with a stable code."""

    def __init__(self, index: IdentityIndex, *, leeway: float = 60.0) -> None:
        self.index = index
        self.leeway = leeway

    def verify(self, token: str, now: float) -> tuple[Principal, PkcvClaims]:
        try:
            header = token_header(token, _POLICY)
        except JwtRejected as exc:
            raise AuthFailure("pkcv_" + exc.code.removeprefix("jwt_")) from None
        if header.get("cty") != CONTENT_TYPE:
            raise AuthFailure("pkcv_content_type_invalid")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthFailure("pkcv_type_invalid")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise AuthFailure("pkcv_kid_invalid" if kid is not None else "pkcv_kid_missing")
        record = self.index.public_key(kid)
        if record is None:
            raise AuthFailure("pkcv_credential_unknown", credential_id=kid)
        try:
            claims = verify_signature(token, record.key, header["alg"])  # type: ignore[arg-type]
        except JwtRejected as exc:
            raise AuthFailure("pkcv_" + exc.code.removeprefix("jwt_"), credential_id=kid) from None
        if record.principal is None:
            raise AuthFailure("consumer_disabled", credential_id=kid)
        return record.principal, self._claims(claims, now, kid)

    def _claims(self, claims: dict[str, Any], now: float, kid: str) -> PkcvClaims:
        exp = _number(claims.get("exp"))
        if exp is None:
            raise AuthFailure("pkcv_exp_invalid", credential_id=kid)
        if exp <= now - self.leeway:
            raise AuthFailure("pkcv_expired", credential_id=kid)
        if exp > now + MAX_TTL + self.leeway:
            raise AuthFailure("pkcv_exp_too_far", credential_id=kid)
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None or nbf > now + self.leeway:
                raise AuthFailure("pkcv_not_yet_valid", credential_id=kid)
        for name in ("iss", "sub"):
            value = claims.get(name)
            if not isinstance(value, str) or not 0 < len(value) <= 256:
                raise AuthFailure("pkcv_claim_invalid", credential_id=kid, claim=name)
        hrh = claims.get("hrh")
        if not isinstance(hrh, str) or len(hrh) > 1024:
            raise AuthFailure("pkcv_claim_invalid", credential_id=kid, claim="hrh")
        names = tuple(hrh.split(";"))
        if len(names) > 32 or not all(_HEADER_NAME.fullmatch(n) for n in names):
            raise AuthFailure("pkcv_claim_invalid", credential_id=kid, claim="hrh")
        if "authorization" not in names or "host" not in names:
            raise AuthFailure("pkcv_headers_not_signed", credential_id=kid)
        rqh = claims.get("rqh")
        if not isinstance(rqh, str) or not _RQH.fullmatch(rqh):
            raise AuthFailure("pkcv_claim_invalid", credential_id=kid, claim="rqh")
        return PkcvClaims(names, rqh, exp, exp + self.leeway)
