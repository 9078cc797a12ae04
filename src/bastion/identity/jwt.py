"""JWT verification policy; joserfc does the JOSE parsing and all of the cryptography.

Specs: RFC 7519 (JWT, §7.2 validation), RFC 8725 (JWT Best Current Practices) and RFC 9068 (JWT profile
for OAuth 2.0 access tokens). Nothing here splits, decodes or verifies a JWS by hand.

Theory of operation. :func:`verify_jwt` runs four stages, cheapest first, and every failure is a
:class:`JwtRejected` carrying a stable code (listed in :data:`CODES`); the client only ever sees a generic
message, the code and detail go to the event log.

1. :func:`token_header` bounds the token and reads its protected header before any key is looked up: size,
   compact shape, an allow-listed ``alg`` (RFC 8725 §3.1: the caller names the algorithms, the token does
   not choose; ``none`` is never allowed), no header that would fetch or embed a key (``jku``, ``x5u``,
   ``jwk``, ``x5c``: RFC 8725 §3.10, the key comes from configuration, never from the token), no ``crit``
   (RFC 7515 §4.1.11: we understand no extension, so we must reject), no ``b64`` (RFC 7797 unencoded
   payloads have no place in a JWT), and an explicit ``typ`` that says JWT (RFC 8725 §3.11, RFC 9068 §2.1).
2. The key is chosen by ``kid`` and must belong to the algorithm's family and curve (RFC 8725 §3.1: "each
   key MUST be used with exactly one algorithm"). This is what defeats HS/RS confusion, an HS256 token
   MACed with the issuer's RSA public key: an RSA key never verifies an HS* token, whatever the allow-list.
3. joserfc verifies the signature with exactly that one algorithm.
4. Claims (RFC 7519 §4.1, RFC 9068 §4): ``exp`` always, ``nbf`` and ``iat`` with leeway, ``iss`` exactly,
   ``aud`` when the policy names an audience, the policy's required claims and maximum lifetime.
   joserfc's ``JWTClaimsRegistry`` does the comparisons with an injected ``now``; the claims are fed to it
   in a fixed order, so a token with several faults always gets the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidHeaderValueError,
    InvalidPayloadError,
    JoseError,
    MissingAlgorithmError,
    MissingClaimError,
    MissingCritHeaderError,
)
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, Key, KeySet, OKPKey

__all__ = ["CODES", "JwtPolicy", "JwtRejected", "sign_jwt", "token_header", "verify_jwt", "verify_signature"]

#: Every code a :class:`JwtRejected` can carry.
CODES = frozenset(
    {
        "jwt_too_large",
        "jwt_malformed",
        "jwt_alg_not_allowed",
        "jwt_header_not_allowed",
        "jwt_crit_unsupported",
        "jwt_kid_unknown",
        "jwt_alg_key_mismatch",
        "jwt_signature_invalid",
        "jwt_missing_claim",
        "jwt_expired",
        "jwt_not_yet_valid",
        "jwt_issued_in_future",
        "jwt_issuer_invalid",
        "jwt_audience_invalid",
        "jwt_lifetime_too_long",
    }
)

# alg -> (kty, curves or None): the only keys that may verify it. RFC 7518 §3.1, RFC 8037 §3.1,
# RFC 8812 §3.2 (ES256K), RFC 9864 §2.2 (Ed25519, Ed448). "none" is absent, so it can never be configured.
_KEY_FAMILY: dict[str, tuple[str, frozenset[str] | None]] = {
    **{f"HS{n}": ("oct", None) for n in (256, 384, 512)},
    **{f"RS{n}": ("RSA", None) for n in (256, 384, 512)},
    **{f"PS{n}": ("RSA", None) for n in (256, 384, 512)},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "ES256K": ("EC", frozenset({"secp256k1"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
    "Ed448": ("OKP", frozenset({"Ed448"})),
}

_KEY_SOURCE_HEADERS = ("jku", "x5u", "jwk", "x5c")
_JWT_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
# The order in which claims reach joserfc's validators, so that the first fault found is stable.
_CLAIM_ORDER = ("exp", "nbf", "iat", "iss", "aud")
_TIME_CODES = {"nbf": "jwt_not_yet_valid", "iat": "jwt_issued_in_future"}
_CLAIM_CODES = {"iss": "jwt_issuer_invalid", "aud": "jwt_audience_invalid"}


class JwtRejected(Exception):
    """A token was refused. ``code`` is stable snake_case for the event log (one of :data:`CODES`);
    clients only ever see a generic message. ``detail`` is for operators and never holds the token."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class JwtPolicy:
    """What a token from one issuer must satisfy. Checked at construction: an empty or unknown
    algorithm list (``none`` included) is a configuration error (``ValueError``)."""

    issuer: str
    audience: str | None
    algorithms: tuple[str, ...]
    leeway: float = 60.0
    max_token_bytes: int = 8192
    max_lifetime: float | None = None
    required_claims: tuple[str, ...] = ("exp",)

    def __post_init__(self) -> None:
        # Config hands over lists; a frozen policy keeps tuples.
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        object.__setattr__(self, "required_claims", tuple(self.required_claims))
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("a JWT policy needs an issuer")
        if self.audience is not None and (not isinstance(self.audience, str) or not self.audience):
            raise ValueError("a JWT audience, when set, must be a non-empty string")
        if not self.algorithms:
            raise ValueError("a JWT policy needs at least one algorithm")
        unknown = [alg for alg in self.algorithms if alg not in _KEY_FAMILY]
        if unknown:
            raise ValueError(f"JWT algorithms {unknown} are not supported; choose from {sorted(_KEY_FAMILY)}")
        if not (math.isfinite(self.leeway) and self.leeway >= 0):
            raise ValueError("JWT leeway must be a finite number of seconds >= 0")
        if self.max_token_bytes <= 0:
            raise ValueError("max_token_bytes must be positive")
        if self.max_lifetime is not None and not self.max_lifetime > 0:
            raise ValueError("max_lifetime, when set, must be positive")
        if not all(isinstance(name, str) and name for name in self.required_claims):
            raise ValueError("required_claims must be claim names")


class _Registry(jws.JWSRegistry):
    """joserfc's algorithm registry, adjusted where Bastion's policy has already decided.

    * Per-part size limits are lifted: ``JwtPolicy.max_token_bytes`` bounds the whole token before
      joserfc sees it, and joserfc's own 1024-byte signature limit would refuse an RSA-8192 signature.
    * ``get_alg`` does not warn. joserfc emits a ``SecurityWarning`` on every use of ``EdDSA`` (deprecated by
      RFC 9864 in favour of ``Ed25519``); the operator put it in the allow-list, and a warning per request
      is noise (and an exception wherever warnings are errors, as in our tests).
    """

    max_header_length = max_payload_length = max_signature_length = 1 << 20

    def get_alg(self, name: str) -> JWSAlgModel:
        if self.allowed and name in self.allowed and name in self.algorithms:
            return self.algorithms[name]
        return super().get_alg(name)


# RFC 7515 §4: header parameters that are not understood MUST be ignored (unless listed in "crit", which
# token_header refuses), so joserfc's strict "unknown header" check stays off.
_EXTRACTOR = _Registry(strict_check_header=False)
_REGISTRIES = {alg: _Registry(algorithms=[alg], strict_check_header=False) for alg in _KEY_FAMILY}


def token_header(token: str, policy: JwtPolicy) -> dict[str, Any]:
    """Read and vet the protected header of a compact JWS before any key lookup (RFC 8725 §3.1, §3.10,
    §3.11; RFC 7515 §4.1.11; RFC 9068 §2.1). Returns the header (which may name a ``kid``)."""
    if not isinstance(token, str):
        raise JwtRejected("jwt_malformed", "token is not text")
    if len(token) > policy.max_token_bytes:
        raise JwtRejected("jwt_too_large", f"{len(token)} characters, limit {policy.max_token_bytes}")
    if not token.isascii():
        raise JwtRejected("jwt_malformed", "token is not ASCII")
    dots = token.count(".")
    if dots != 2:
        shape = "five parts: an encrypted JWE, not a JWS" if dots == 4 else f"{dots + 1} parts, not 3"
        raise JwtRejected("jwt_malformed", shape)
    try:
        header = jws.extract_compact(token.encode("ascii"), registry=_EXTRACTOR).headers()
    except MissingCritHeaderError as exc:  # raised by joserfc for "b64": false without "crit"
        raise JwtRejected("jwt_header_not_allowed", "b64") from exc
    except MissingAlgorithmError as exc:
        raise JwtRejected("jwt_malformed", "header has no alg") from exc
    except (JoseError, ValueError, TypeError, RecursionError) as exc:
        raise JwtRejected("jwt_malformed", _describe(exc)) from exc
    if not isinstance(header, dict):  # joserfc only asks `"alg" in header`, which a string or list passes
        raise JwtRejected("jwt_malformed", "header is not a JSON object")

    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none" or alg not in policy.algorithms:
        raise JwtRejected("jwt_alg_not_allowed", f"alg {alg!r}"[:80])
    key_sources = [name for name in _KEY_SOURCE_HEADERS if name in header]
    if key_sources:
        raise JwtRejected("jwt_header_not_allowed", ",".join(key_sources))
    if "crit" in header:
        raise JwtRejected("jwt_crit_unsupported", "crit")
    if "b64" in header:
        raise JwtRejected("jwt_header_not_allowed", "b64")
    if "typ" in header and (not isinstance(header["typ"], str) or header["typ"].lower() not in _JWT_TYPES):
        raise JwtRejected("jwt_malformed", f"typ {header['typ']!r}"[:80])
    if "kid" in header and not isinstance(header["kid"], str):
        raise JwtRejected("jwt_malformed", "kid is not a string")
    return header


def verify_jwt(token: str, keys: KeySet, policy: JwtPolicy, now: float) -> dict[str, Any]:
    """Verify a compact JWS JWT against ``policy`` with a key from ``keys`` at time ``now`` (seconds since
    the epoch) and return its claims. Raises :class:`JwtRejected` and nothing else."""
    header = token_header(token, policy)
    alg: str = header["alg"]
    key = _choose_key(keys, header.get("kid"), alg)
    claims = verify_signature(token, key, alg)
    _check_claims(claims, policy, now)
    return claims


def verify_signature(token: str, key: Key, alg: str) -> dict[str, Any]:
    """The claims of ``token`` if ``key`` verifies its ``alg`` signature (the header already vetted by
    :func:`token_header`, the key chosen for ``alg``); :class:`JwtRejected` otherwise. Claims unchecked."""
    try:
        claims = jwt.decode(token, key, registry=_REGISTRIES[alg]).claims
    except BadSignatureError as exc:
        raise JwtRejected("jwt_signature_invalid", alg) from exc
    except (InvalidPayloadError, InvalidHeaderValueError, RecursionError) as exc:
        # RecursionError: joserfc's payload json.loads catches ValueError only, not deep nesting.
        raise JwtRejected("jwt_malformed", _describe(exc)) from exc
    except (JoseError, ValueError, TypeError) as exc:
        # The key was vetted by _choose_key, so joserfc refusing it is a failed verification all the same.
        raise JwtRejected("jwt_signature_invalid", _describe(exc)) from exc
    if not isinstance(claims, dict):
        raise JwtRejected("jwt_malformed", "claims are not a JSON object")
    return claims


def sign_jwt(claims: dict[str, Any], key: Key, alg: str, kid: str, typ: str = "at+jwt") -> str:
    """Sign ``claims`` as a compact JWS (RFC 9068 §2.1: access tokens carry ``typ: at+jwt``). For Bastion's
    own OAuth2 server; a key that cannot make ``alg`` signatures is a ``ValueError``."""
    if alg not in _KEY_FAMILY:
        raise ValueError(f"cannot sign with {alg!r}; choose from {sorted(_KEY_FAMILY)}")
    if not _fits(key, alg, "sign") or not key.is_private:
        raise ValueError(f"a {key.key_type} key (private: {key.is_private}) cannot sign {alg}")
    header = {"alg": alg, "kid": kid, "typ": typ}
    # joserfc's encode converts datetime claims in place; the caller's dict stays untouched.
    return jwt.encode(header, dict(claims), key, registry=_REGISTRIES[alg], default_type=None)


def _fits(key: Key, alg: str, operation: str) -> bool:
    """Whether ``key`` may be used for ``alg`` (RFC 8725 §3.1; RFC 7517 §4.2-4.4 for use, key_ops, alg)."""
    kty, curves = _KEY_FAMILY[alg]
    if key.key_type != kty:
        return False
    if curves is not None and not (isinstance(key, ECKey | OKPKey) and key.curve_name in curves):
        return False
    if key.get("use") not in (None, "sig"):
        return False
    if key.alg is not None and key.alg != alg:
        return False
    ops = key.get("key_ops")
    return ops is None or operation in ops


def _choose_key(keys: KeySet, kid: str | None, alg: str) -> Key:
    family = _KEY_FAMILY[alg][0]
    if kid is None:
        fitting = [key for key in keys if _fits(key, alg, "verify")]
        if len(fitting) == 1:
            return fitting[0]
        if not fitting:
            raise JwtRejected("jwt_alg_key_mismatch", f"no kid, and no {family} key can verify {alg}")
        raise JwtRejected("jwt_kid_unknown", f"no kid, and {len(fitting)} keys could verify {alg}")
    named = [key for key in keys if key.kid == kid]
    if not named:
        raise JwtRejected("jwt_kid_unknown", f"kid {kid!r}"[:120])
    for key in named:
        if _fits(key, alg, "verify"):
            return key
    raise JwtRejected(
        "jwt_alg_key_mismatch", f"key {kid!r} is {named[0].key_type}; {alg} needs {family}"[:160]
    )


def _check_claims(claims: dict[str, Any], policy: JwtPolicy, now: float) -> None:
    """RFC 7519 §4.1 and §7.2 step 10; RFC 9068 §4 (iss exact, aud must contain ours, exp required)."""
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _is_numeric_date(claims[name]):
            raise JwtRejected("jwt_malformed", f"{name} is not a NumericDate")
    options: dict[str, jwt.ClaimsOption] = {
        "exp": {"essential": True},
        "iss": {"essential": True, "value": policy.issuer},
    }
    if policy.audience is not None:
        options["aud"] = {"essential": True, "value": policy.audience}
    for name in policy.required_claims:
        options.setdefault(name, {"essential": True})
    # joserfc annotates now/leeway as int but only compares them; floats keep sub-second precision.
    registry = jwt.JWTClaimsRegistry(now=now, leeway=policy.leeway, **options)  # type: ignore[arg-type]
    ordered = {name: claims[name] for name in _CLAIM_ORDER if name in claims}
    ordered.update(claims)
    try:
        registry.validate(ordered)
    except MissingClaimError as exc:
        missing = set(exc.claim.split(","))
        if missing - {"iss", "aud"}:
            code = "jwt_missing_claim"
        else:
            code = "jwt_issuer_invalid" if "iss" in missing else "jwt_audience_invalid"
        raise JwtRejected(code, f"missing {exc.claim}") from exc
    except ExpiredTokenError as exc:
        raise JwtRejected("jwt_expired", f"exp {claims['exp']}, now {now}") from exc
    except InvalidClaimError as exc:
        # exp/nbf/iat are numbers by now, so a complaint about them is about time, not type.
        code = _TIME_CODES.get(exc.claim) or _CLAIM_CODES.get(exc.claim, "jwt_malformed")
        raise JwtRejected(code, exc.claim) from exc
    except JoseError as exc:
        raise JwtRejected("jwt_malformed", _describe(exc)) from exc

    if policy.max_lifetime is not None:
        start = claims.get("iat", now)
        if claims["exp"] - start > policy.max_lifetime:
            raise JwtRejected("jwt_lifetime_too_long", f"{claims['exp'] - start}s > {policy.max_lifetime}s")


def _is_numeric_date(value: object) -> bool:
    """RFC 7519 §2: a JSON number; NaN and infinities are not (an exp of NaN would never expire)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
