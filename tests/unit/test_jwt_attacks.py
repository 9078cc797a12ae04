"""The JWT attack suite: every known way to get a forged or misused token past a verifier, refused with
its stable code (RFC 8725 §2 lists the attacks; ``bastion.identity.jwt`` documents the codes).

Tokens are crafted the way an attacker would: honestly with joserfc, or by hand with ``hmac`` and
``cryptography`` when the attack is a token joserfc refuses to make. ``now`` is fixed; nothing sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc import jwe, jws
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey

from bastion.identity.jwt import CODES, JwtPolicy, JwtRejected, sign_jwt, token_header, verify_jwt

NOW = 1_750_000_000
ISS = "https://idp.example.com/"
AUD = "https://api.example.com"

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
RSA_OTHER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, different key: a forger's
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
EC_384 = ECKey.generate_key("P-384", parameters={"kid": "ec-384"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
ATTACKER = RSAKey.generate_key(2048, parameters={"kid": "attacker"})


def public(key: RSAKey | ECKey | OKPKey) -> RSAKey | ECKey | OKPKey:
    return type(key).import_key(key.as_dict(private=False))


KEYS = KeySet([public(RSA), public(EC), public(ED), public(EC_384)])
RSA_ONLY = KeySet([public(RSA)])
POLICY = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256", "ES256", "EdDSA"))


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "user-42", "iat": NOW - 10, "exp": NOW + 300}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not ...}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any], payload: dict[str, Any] | bytes, sign: Callable[[bytes], bytes] | None = None
) -> str:
    """A compact JWS assembled by hand, optionally signed over its signing input by ``sign``."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def rs256(key: RSAKey) -> Callable[[bytes], bytes]:
    return lambda msg: key.private_key.sign(msg, padding.PKCS1v15(), hashes.SHA256())


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda msg: hmac.new(secret, msg, hashlib.sha256).digest()


def rejected(token: Any, keys: KeySet = KEYS, policy: JwtPolicy = POLICY, now: float = NOW) -> str:
    with pytest.raises(JwtRejected) as info:
        verify_jwt(token, keys, policy, now)
    assert info.value.code in CODES
    return info.value.code


def good(**changes: Any) -> str:
    return sign_jwt(claims(**changes), RSA, "RS256", "rsa-1")


# --- what must pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256"), (ED, "EdDSA")])
def test_valid_tokens_are_accepted(key: RSAKey | ECKey | OKPKey, alg: str) -> None:
    token = sign_jwt(claims(), key, alg, str(key.kid))
    assert verify_jwt(token, KEYS, POLICY, NOW) == claims()
    assert token_header(token, POLICY) == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}


@pytest.mark.parametrize("alg", ["PS256", "Ed25519", "ES384"])
def test_other_families_verify_when_allowed(alg: str) -> None:
    key = {"PS256": RSA, "Ed25519": ED, "ES384": EC_384}[alg]
    policy = JwtPolicy(issuer=ISS, audience=AUD, algorithms=(alg,))
    assert verify_jwt(sign_jwt(claims(), key, alg, str(key.kid)), KEYS, policy, NOW)["sub"] == "user-42"


def test_a_token_without_kid_is_accepted_when_exactly_one_key_fits() -> None:
    token = forge({"alg": "RS256", "typ": "JWT"}, claims(), rs256(RSA))
    assert verify_jwt(token, KEYS, POLICY, NOW)["iss"] == ISS


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"])
def test_jwt_types_are_accepted(typ: str) -> None:
    token = forge({"alg": "RS256", "kid": "rsa-1", "typ": typ}, claims(), rs256(RSA))
    assert verify_jwt(token, KEYS, POLICY, NOW)["sub"] == "user-42"


def test_unknown_header_parameters_are_ignored() -> None:
    """RFC 7515 §4: parameters not understood are ignored unless listed in crit (which is refused)."""
    token = forge({"alg": "RS256", "kid": "rsa-1", "x5t": "abc", "vendor": {"x": 1}}, claims(), rs256(RSA))
    assert verify_jwt(token, KEYS, POLICY, NOW)["sub"] == "user-42"


# --- alg: none, not allowed, confused --------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"x" * 32])
def test_alg_none_is_refused(alg: str, signature: bytes) -> None:
    token = forge({"alg": alg, "kid": "rsa-1"}, claims(), lambda _: signature)
    assert rejected(token) == "jwt_alg_not_allowed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_without_a_signature_part_is_refused(alg: str) -> None:
    two_parts = forge({"alg": alg}, claims()).rsplit(".", 1)[0]
    assert rejected(two_parts) == "jwt_malformed"


def test_none_cannot_even_be_configured() -> None:
    with pytest.raises(ValueError, match="not supported"):
        JwtPolicy(issuer=ISS, audience=None, algorithms=("RS256", "none"))
    with pytest.raises(ValueError, match="at least one"):
        JwtPolicy(issuer=ISS, audience=None, algorithms=())


def test_a_validly_signed_token_with_an_alg_off_the_allow_list_is_refused() -> None:
    token = sign_jwt(claims(), EC, "ES256", "ec-1")
    assert rejected(token, policy=JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",))) == (
        "jwt_alg_not_allowed"
    )


def test_alg_missing_or_not_a_string_is_refused() -> None:
    assert rejected(forge({"kid": "rsa-1"}, claims(), rs256(RSA))) == "jwt_malformed"
    assert rejected(forge({"alg": ["RS256"], "kid": "rsa-1"}, claims(), rs256(RSA))) == "jwt_alg_not_allowed"


def _public_key_encodings() -> dict[str, bytes]:
    native = RSA.public_key
    return {
        "pem": native.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "pem-pkcs1": native.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": native.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk-json": json.dumps(RSA.as_dict(private=False)).encode(),
    }


@pytest.mark.parametrize("secret", _public_key_encodings().values(), ids=_public_key_encodings().keys())
@pytest.mark.parametrize("kid", ["rsa-1", None])
def test_hs_rs_confusion_is_refused(secret: bytes, kid: str | None) -> None:
    """RFC 8725 §2.1: an HS256 token MACed with the issuer's *public* key, hoping the verifier feeds that
    key to HMAC. Refused when the policy allows RS256 only, and still refused when it (wrongly) allows HS256
    too, because an RSA key never verifies an HS* token."""
    header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    token = forge(header, claims(), hs256(secret))
    rs_only = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",))
    both = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("HS256", "RS256"))
    assert rejected(token, RSA_ONLY, rs_only) == "jwt_alg_not_allowed"
    assert rejected(token, RSA_ONLY, both) == "jwt_alg_key_mismatch"
    assert rejected(token, KEYS, both) == "jwt_alg_key_mismatch"


def test_hs256_still_works_with_a_real_shared_secret_when_configured() -> None:
    secret = OctKey.generate_key(256, parameters={"kid": "shared"})
    policy = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("HS256",))
    token = sign_jwt(claims(), secret, "HS256", "shared")
    assert verify_jwt(token, KeySet([secret]), policy, NOW)["sub"] == "user-42"
    assert (
        rejected(token, KeySet([public(RSA), secret]), JwtPolicy(ISS, AUD, ("RS256",)))
        == "jwt_alg_not_allowed"
    )


def test_a_key_of_the_right_type_but_another_curve_is_refused() -> None:
    token = forge({"alg": "ES256", "kid": "ec-384"}, claims())  # the signature never gets checked
    assert rejected(token) == "jwt_alg_key_mismatch"


@pytest.mark.parametrize("param", [{"use": "enc"}, {"alg": "RS512"}, {"key_ops": ["encrypt"]}])
def test_a_key_restricted_to_something_else_is_refused(param: dict[str, Any]) -> None:
    restricted = RSAKey.import_key(RSA.as_dict(private=False), parameters={**param, "kid": "rsa-1"})
    assert rejected(good(), KeySet([restricted])) == "jwt_alg_key_mismatch"


# --- keys -----------------------------------------------------------------------------------------


def test_unknown_kid_is_refused() -> None:
    token = forge({"alg": "RS256", "kid": "rotated-away"}, claims(), rs256(RSA))
    assert rejected(token) == "jwt_kid_unknown"


def test_a_token_without_kid_is_refused_when_several_keys_fit() -> None:
    two_rsa = KeySet([public(RSA), public(ATTACKER)])
    assert rejected(forge({"alg": "RS256"}, claims(), rs256(RSA)), two_rsa) == "jwt_kid_unknown"


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
def test_headers_that_bring_their_own_key_are_refused(name: str) -> None:
    """RFC 8725 §3.10: the classic being an attacker's key embedded in ``jwk`` and used to sign."""
    value = {
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": ATTACKER.as_dict(private=False),
        "x5c": ["MIIB"],
    }[name]
    header = {"alg": "RS256", "kid": "attacker", name: value}
    token = jws.serialize_compact(header, json.dumps(claims()), ATTACKER, algorithms=["RS256"])
    assert rejected(token, KeySet([public(RSA), public(ATTACKER)])) == "jwt_header_not_allowed"


def test_crit_is_refused() -> None:
    token = forge({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": NOW + 5}, claims(), rs256(RSA))
    assert rejected(token) == "jwt_crit_unsupported"


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"b64": True}, "jwt_header_not_allowed"),
        ({"b64": False}, "jwt_header_not_allowed"),
        ({"b64": False, "crit": ["b64"]}, "jwt_crit_unsupported"),
    ],
)
def test_unencoded_payload_option_is_refused(extra: dict[str, Any], code: str) -> None:
    token = forge({"alg": "RS256", "kid": "rsa-1", **extra}, claims(), rs256(RSA))
    assert rejected(token) == code


@pytest.mark.parametrize("typ", ["JOSE", "dpop+jwt", "secevent+jwt", "", 5, None])
def test_other_types_are_refused(typ: Any) -> None:
    """RFC 8725 §3.11: a DPoP proof or a security event token signed by the same issuer is not an
    access token."""
    token = forge({"alg": "RS256", "kid": "rsa-1", "typ": typ}, claims(), rs256(RSA))
    assert rejected(token) == "jwt_malformed"


# --- signature --------------------------------------------------------------------------------------


def test_tampered_payload_is_refused() -> None:
    header, _, signature = good().split(".")
    promoted = b64(json.dumps(claims(sub="admin")).encode())
    assert rejected(f"{header}.{promoted}.{signature}") == "jwt_signature_invalid"


@pytest.mark.parametrize("position", [0, 100, -2])
def test_tampered_signature_is_refused(position: int) -> None:
    header, payload, signature = good().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[position] ^= 0x01
    assert rejected(f"{header}.{payload}.{b64(bytes(raw))}") == "jwt_signature_invalid"


@pytest.mark.parametrize("signature", ["", "AAAA", "A" * 1000])
def test_missing_or_wrong_length_signature_is_refused(signature: str) -> None:
    header, payload, _ = good().split(".")
    assert rejected(f"{header}.{payload}.{signature}") == "jwt_signature_invalid"


def test_signature_by_another_key_with_the_same_kid_is_refused() -> None:
    assert rejected(sign_jwt(claims(), RSA_OTHER, "RS256", "rsa-1")) == "jwt_signature_invalid"


def test_es256_signature_malleability_shapes_are_refused() -> None:
    token = sign_jwt(claims(), EC, "ES256", "ec-1")
    header, payload, _ = token.split(".")
    for raw in (b"\x00" * 64, b"\xff" * 64, b"\x00" * 63):
        assert rejected(f"{header}.{payload}.{b64(raw)}") == "jwt_signature_invalid"


# --- claims ------------------------------------------------------------------------------------------


def test_missing_exp_is_refused() -> None:
    assert rejected(good(exp=...)) == "jwt_missing_claim"


@pytest.mark.parametrize("exp", ["1750000300", True, None, [NOW + 300], {"v": 1}])
def test_exp_that_is_not_a_number_is_refused(exp: Any) -> None:
    assert rejected(good(exp=exp)) == "jwt_malformed"


def test_exp_nan_or_infinity_is_refused() -> None:
    for literal in ("NaN", "Infinity"):
        payload = json.dumps(claims(exp=0)).replace('"exp": 0', f'"exp": {literal}').encode()
        assert rejected(forge({"alg": "RS256", "kid": "rsa-1"}, payload, rs256(RSA))) == "jwt_malformed"


@pytest.mark.parametrize(
    ("exp", "accepted"),
    [
        (NOW + 1, True),
        (NOW, True),
        (NOW - 59, True),
        (NOW - 60, False),
        (NOW - 61, False),
        (NOW - 86400, False),
    ],
)
def test_expiry_with_leeway(exp: int, accepted: bool) -> None:
    """RFC 7519 §4.1.4: not accepted on or after exp, with 60 s leeway for clock skew."""
    token = good(exp=exp, iat=exp - 100)
    if accepted:
        assert verify_jwt(token, KEYS, POLICY, NOW)["exp"] == exp
    else:
        assert rejected(token) == "jwt_expired"


def test_expiry_without_leeway_is_exact() -> None:
    strict = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",), leeway=0)
    assert rejected(good(exp=NOW), policy=strict) == "jwt_expired"
    assert verify_jwt(good(exp=NOW), KEYS, strict, NOW - 0.5)["exp"] == NOW


@pytest.mark.parametrize(("claim", "code"), [("nbf", "jwt_not_yet_valid"), ("iat", "jwt_issued_in_future")])
def test_future_nbf_and_iat_beyond_leeway_are_refused(claim: str, code: str) -> None:
    assert rejected(good(**{claim: NOW + 61})) == code
    assert rejected(good(**{claim: None})) == "jwt_malformed"
    assert rejected(good(**{claim: str(NOW)})) == "jwt_malformed"
    assert rejected(good(**{claim: NOW + 3600})) == code
    assert verify_jwt(good(**{claim: NOW + 59}), KEYS, POLICY, NOW)[claim] == NOW + 59


@pytest.mark.parametrize("iss", ["https://evil.example.com/", "https://idp.example.com", ISS.upper(), "", 7])
def test_wrong_issuer_is_refused(iss: Any) -> None:
    assert rejected(good(iss=iss)) == "jwt_issuer_invalid"


def test_missing_issuer_is_refused() -> None:
    assert rejected(good(iss=...)) == "jwt_issuer_invalid"


@pytest.mark.parametrize(
    "aud", ["https://other.example.com", ["https://other.example.com", "x"], [], "", ..., 5, [AUD + "/"]]
)
def test_wrong_or_missing_audience_is_refused(aud: Any) -> None:
    assert rejected(good(aud=aud)) == "jwt_audience_invalid"


def test_audience_list_containing_ours_is_accepted() -> None:
    assert verify_jwt(good(aud=["https://other", AUD]), KEYS, POLICY, NOW)["aud"] == ["https://other", AUD]


def test_no_audience_in_the_policy_means_no_aud_required() -> None:
    policy = JwtPolicy(issuer=ISS, audience=None, algorithms=("RS256",))
    assert "aud" not in verify_jwt(good(aud=...), KEYS, policy, NOW)


def test_required_claims_are_enforced() -> None:
    policy = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",), required_claims=("exp", "sub", "jti"))
    assert rejected(good(), policy=policy) == "jwt_missing_claim"
    assert verify_jwt(good(jti="j-1"), KEYS, policy, NOW)["jti"] == "j-1"
    assert rejected(good(jti="j-1", sub=...), policy=policy) == "jwt_missing_claim"


def test_sub_of_the_wrong_type_is_refused() -> None:
    assert rejected(good(sub=42)) == "jwt_malformed"


def test_max_lifetime() -> None:
    policy = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",), max_lifetime=3600)
    assert verify_jwt(good(iat=NOW, exp=NOW + 3600), KEYS, policy, NOW)["exp"] == NOW + 3600
    assert rejected(good(iat=NOW, exp=NOW + 3601), policy=policy) == "jwt_lifetime_too_long"
    # without iat the lifetime is measured from now
    assert rejected(good(iat=..., exp=NOW + 7200), policy=policy) == "jwt_lifetime_too_long"
    assert verify_jwt(good(iat=..., exp=NOW + 60), KEYS, policy, NOW)["exp"] == NOW + 60


def test_multiple_faults_give_a_stable_code() -> None:
    """The claims reach joserfc in a fixed order, whatever order the token lists them in."""
    faulty = {"aud": "nope", "iss": "nope", "exp": NOW - 3600, "sub": "x"}
    reordered = dict(reversed(list(faulty.items())))
    assert rejected(sign_jwt(faulty, RSA, "RS256", "rsa-1")) == "jwt_expired"
    assert rejected(sign_jwt(reordered, RSA, "RS256", "rsa-1")) == "jwt_expired"


# --- shape and size -------------------------------------------------------------------------------


def test_oversized_token_is_refused_before_parsing() -> None:
    small = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",), max_token_bytes=1024)
    token = good(padding="x" * 2000)
    assert rejected(token, policy=small) == "jwt_too_large"
    assert rejected("." * 1025, policy=small) == "jwt_too_large"
    assert rejected("a" * 9000) == "jwt_too_large"


def test_a_token_at_the_limit_is_not_too_large() -> None:
    token = good()
    exact = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",), max_token_bytes=len(token))
    assert verify_jwt(token, KEYS, exact, NOW)["sub"] == "user-42"


def test_a_jwe_is_refused() -> None:
    """Five parts: an encrypted token. Bastion accepts signed JWTs only."""
    token = jwe.encrypt_compact(
        {"alg": "RSA-OAEP-256", "enc": "A256GCM"},
        json.dumps(claims()),
        public(RSA),
        algorithms=["RSA-OAEP-256", "A256GCM"],
    )
    assert token.count(".") == 4
    assert rejected(token) == "jwt_malformed"


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "...",
        "....",
        "not a token",
        "a.b.c",
        "eyJ.eyJ.sig",
        "Bearer " + "x.y.z",
        "e30.e30.",  # {} . {}
        b64(b"[]") + ".e30.",
        b64(b'"alg"') + ".e30.",  # joserfc's `"alg" in header` holds for this string
        b64(b'["alg"]') + ".e30.",
        b64(b"{") + ".e30.",
        b64(b"\xff\xfe") + ".e30.",
        b64(b'{"alg":"RS256"}') + ".%%%.sig",
        b64(b'{"alg":"RS256"}') + "=.e30.sig",
        "ë" + good()[1:],
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    assert rejected(token) == "jwt_malformed"


def test_deeply_nested_header_is_malformed_not_a_recursion_error() -> None:
    header = b64(b"[" * 5000 + b"]" * 5000)
    policy = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",), max_token_bytes=100_000)
    assert rejected(f"{header}.e30.", policy=policy) == "jwt_malformed"


@pytest.mark.parametrize(
    "payload",
    [b"[]", b'"claims"', b"not json", b"\xff", b"", b"[" * 3000 + b"]" * 3000],
    ids=["array", "string", "text", "not-utf8", "empty", "deeply-nested"],
)
def test_a_signed_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    policy = JwtPolicy(issuer=ISS, audience=AUD, algorithms=("RS256",), max_token_bytes=100_000)
    assert (
        rejected(forge({"alg": "RS256", "kid": "rsa-1"}, payload, rs256(RSA)), policy=policy)
        == "jwt_malformed"
    )


@pytest.mark.parametrize("token", [b"x.y.z", None, 42, ["a", "b", "c"]])
def test_a_token_that_is_not_text_is_malformed(token: Any) -> None:
    assert rejected(token) == "jwt_malformed"


def test_kid_of_the_wrong_type_is_malformed() -> None:
    assert rejected(forge({"alg": "RS256", "kid": 1}, claims(), rs256(RSA))) == "jwt_malformed"


# --- fuzz: verify_jwt raises JwtRejected and nothing else ----------------------------------------------

B64URL = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=120)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
HEADER_NAMES = st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "jwk", "x5c", "cty", "zip", "enc"])
ALGS = st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", "PS256", "RS257", ""])
VALID = good()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_only_rejections(token: Any) -> None:
    try:
        verify_jwt(token, KEYS, POLICY, NOW)
    except JwtRejected as exc:
        assert exc.code in CODES
    else:  # pragma: no cover - a random string that verifies would be a forgery
        raise AssertionError(f"accepted a fuzzed token: {token!r}")


@FUZZ
@given(st.text(max_size=300))
@example("..")
@example("e30.e30.e30")
def test_fuzz_random_text(token: str) -> None:
    _assert_only_rejections(token)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(raw: bytes) -> None:
    _assert_only_rejections(raw)
    _assert_only_rejections(raw.decode("latin-1"))


@FUZZ
@given(st.lists(B64URL, min_size=1, max_size=6))
def test_fuzz_random_base64url_segments(segments: list[str]) -> None:
    _assert_only_rejections(".".join(segments))


@FUZZ
@given(
    header=st.dictionaries(HEADER_NAMES, JSONISH, max_size=5),
    alg=ALGS,
    payload=JSONISH,
    signature=st.binary(max_size=300),
)
def test_fuzz_structured_headers_and_payloads(
    header: dict[str, Any], alg: str, payload: Any, signature: bytes
) -> None:
    header = {"alg": alg, **header} if "alg" not in header else header
    body = json.dumps(payload).encode()
    _assert_only_rejections(f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}")


@FUZZ
@given(st.data())
def test_fuzz_mutations_of_a_valid_token(data: st.DataObject) -> None:
    token = list(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(token) - 1))
        token[index] = data.draw(st.sampled_from("A_-.=xQ0 "))
    mutated = "".join(token)
    if mutated != VALID:
        _assert_only_rejections(mutated)


# --- signing -----------------------------------------------------------------------------------------


def test_sign_jwt_writes_an_at_jwt_header_and_leaves_claims_alone() -> None:
    original = claims()
    token = sign_jwt(original, EC, "ES256", "ec-1")
    assert original == claims()
    assert token_header(token, POLICY) == {"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"}


def test_sign_jwt_refuses_keys_that_cannot_sign() -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        sign_jwt(claims(), public(RSA), "RS256", "rsa-1")
    with pytest.raises(ValueError, match="cannot sign"):
        sign_jwt(claims(), RSA, "ES256", "rsa-1")
    with pytest.raises(ValueError, match="cannot sign"):
        sign_jwt(claims(), RSA, "none", "rsa-1")


def test_rejection_carries_code_and_detail_but_never_the_token() -> None:
    token = good(exp=NOW - 3600)
    with pytest.raises(JwtRejected) as info:
        verify_jwt(token, KEYS, POLICY, NOW)
    assert info.value.code == "jwt_expired"
    assert token not in str(info.value) and token.split(".")[1] not in info.value.detail
