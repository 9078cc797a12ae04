"""Authentication (P5): whichever of the route's methods (``api_key``, ``oauth2``, ``jwt:<issuer>``)
the caller used must succeed; a route never falls back to anonymous.

Brute force and credential stuffing: failures are counted per source address and per key id through
the :class:`FailureLimiter` port; past the threshold the source (or key id) is refused with 429 and
``Retry-After`` until the cool-down ends, whatever it presents. Every failure gets the same 401 body.

The common case — nobody locked out, no repeated header, a key in good standing or a token this process
has verified — is decided first in a few lookups; only a success is decided there. Everything else takes
the full way, which judges the request afresh and names the cause (a unit test holds both to the same
verdicts).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from ..core.decision import LATER, Context, Deny, Verdict
from ..core.forwarding import ip_text
from ..core.identity import UNCLAIMED, AuthFailure, Principal
from ..core.ports import FailureLimiter, Freshness, TokenVerifier
from ..core.request import RequestView
from .api_key import ApiKeyAuth
from .refusals import IDENTITY_UNAVAILABLE
from .scopes import Authorize

__all__ = ["Authenticate"]

_INVALID_DETAIL = "The credentials are not valid."


class Authenticate:
    name = "authn"

    def __init__(
        self,
        methods: tuple[str, ...],
        api_keys: ApiKeyAuth | None,
        verifiers: tuple[TokenVerifier, ...],
        limiter: FailureLimiter,
        clock: Callable[[], float],
        realm: str = "bastion",
        authorize: Authorize | None = None,
        freshness: Freshness | None = None,
        basic: bool = False,
    ) -> None:
        self.methods = methods
        # HTTP Basic with the API key as the password (egress routes: stock SDKs such as Twilio's speak
        # only Basic). The user name must be the key's consumer or its public id.
        self.basic = basic and api_keys is not None
        # past freshness.fresh_until the store has not confirmed the snapshot for too long: fail closed
        self.freshness = freshness
        self.authorize = authorize  # run right after a success (authn → authz, fused)
        self.api_keys = api_keys
        self.verifiers = verifiers
        self.limiter = limiter
        self.clock = clock
        challenge = f'Bearer realm="{realm}"'
        self._challenge = (("www-authenticate", challenge),)
        self._required = Deny(
            401,
            "auth_required",
            "This endpoint requires authentication.",
            headers=self._challenge,
            evidence={"methods": list(methods)},
            severity="notice",
        )
        self._invalid_challenge = (("www-authenticate", challenge + ', error="invalid_token"'),)
        # The common case, decided in a few lookups (see decide_now). A route that also takes keys from
        # the query string always goes the full way. None as a header name is never in the headers.
        in_query = api_keys is not None and api_keys.in_query
        self._key_header = api_keys.header if api_keys is not None else None
        self._quick_key_header = None if in_query else self._key_header
        self._recognise = api_keys.recognise if api_keys is not None and not in_query else _unknown
        self._recall = verifiers[0].recall if verifiers and not in_query else _unknown
        self._decide = authorize.decide if authorize is not None else _admitted
        self._scopes_needed = authorize.required if authorize is not None else frozenset()
        self._insufficient = authorize.insufficient if authorize is not None else None

    def decide_now(self, req: RequestView, ctx: Context) -> Verdict:
        """The common case: one credential, nobody locked out, and a current key or a token this process
        has already verified. Only a success is decided here (and a snapshot too stale to trust);
        anything else (a failure, a key in its rotation's grace period, a token not seen before) is
        :data:`LATER`: the chain then awaits :meth:`decide_later`, the full way, which decides it afresh
        and records why."""
        headers = req.headers
        if self.limiter.active or headers.repeats is not None:
            return LATER
        # Callables kept in attributes are read with LOAD_ATTR and then called: called as
        # self.clock(), CPython 3.11 looks for a method of that name first, the unspecialised way.
        clock = self.clock
        now = clock()
        if self.freshness is not None and now > self.freshness.fresh_until:
            return IDENTITY_UNAVAILABLE
        first = headers.first
        auth = first.get("authorization")
        if auth is None:
            key = first.get(self._quick_key_header)  # type: ignore[arg-type]
            if key is None:
                return LATER
            recognise = self._recognise
            principal = recognise(key, now)
        elif auth[:7] == "Bearer " and self._key_header not in first:  # else a key would win
            token = auth[7:]  # (slices and ==: str.startswith parses its arguments the slow way)
            principal = (self._recognise if token[:4] == "bst_" else self._recall)(token, now)
        else:
            return LATER
        if principal is None:
            return LATER
        ctx.principal = principal
        if principal.ip_allow or principal.permissions:
            decide = self._decide
            return decide(req, principal)
        return None if self._scopes_needed <= principal.scopes else self._insufficient

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        verdict = self.decide_now(req, ctx)
        if verdict is not LATER:
            return verdict  # type: ignore[no-any-return]
        return await self.decide_later(req, ctx)

    async def decide_later(self, req: RequestView, ctx: Context) -> Verdict:
        """The full way, after :meth:`decide_now` said LATER (the chain awaits this, not ``__call__``,
        so a refused key is not digested a second time by the short way)."""
        now = self.clock()
        if self.freshness is not None and now > self.freshness.fresh_until:
            return IDENTITY_UNAVAILABLE
        limiter = self.limiter
        checking = limiter.active
        headers = req.headers
        if checking:
            wait = await limiter.blocked_for("ip:" + ip_text(req.client_ip), now)
            if wait:
                return _locked(wait, {"subject": "source_ip"})
        bearer = None
        basic_user: str | None = None
        auth = headers.first.get("authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                bearer = value.strip()
            elif self.basic and scheme.lower() == "basic":
                basic_user, bearer = _basic_credentials(value)
        failure: AuthFailure | None = None
        principal: Principal | None = None
        presented = False
        key_blocked = 0.0
        key_id: str | None = None
        try:
            key = self.api_keys.credential(req, bearer) if self.api_keys is not None else None
            if key is not None:
                presented = True
                key_id = key[4:16] if checking and key.startswith("bst_") and len(key) > 16 else None
                if key_id is not None:
                    # A blocked key id refuses guesses, but the key's holder still gets in: anyone can
                    # send failures under a known id, and must not lock its owner out that way.
                    key_blocked = await limiter.blocked_for("key:" + key_id, now)
                principal = self.api_keys.authenticate(key, req, now, ctx.notices)  # type: ignore[union-attr]
                if basic_user is not None and basic_user not in (principal.consumer, principal.key_id):
                    principal = None
                    raise AuthFailure("basic_user_mismatch", key_id=key_id)
            elif bearer and not bearer.startswith("bst_"):
                # Any listed method may authenticate: try each verifier that takes the token; the
                # first real failure (not "not mine") is the one recorded.
                for verifier in self.verifiers:
                    if not verifier.claims_like(bearer):
                        continue
                    presented = True
                    try:
                        principal = await verifier.verify(bearer, now)
                        break
                    except AuthFailure as exc:
                        if failure is None or failure.code == UNCLAIMED:
                            failure = exc
        except AuthFailure as exc:
            failure = exc
        if principal is not None:
            ctx.principal = principal
            authorize = self.authorize
            if authorize is None:
                return None
            if principal.ip_allow or principal.permissions:
                return authorize.decide(req, principal)
            # Authorize.decide for a principal with no address or path restrictions: the scopes alone
            return None if authorize.required <= principal.scopes else authorize.insufficient
        if failure is None:
            if not presented and not bearer and auth is None and not _other_credential(req, self.api_keys):
                return self._required
            failure = AuthFailure("credential_not_accepted")
        elif failure.code == UNCLAIMED:
            failure = AuthFailure("token_issuer_unknown")
        blocked = await limiter.failed("ip:" + ip_text(req.client_ip), now)
        if key_blocked:
            return _locked(key_blocked, {"subject": "key_id", "key_id": key_id, "cause": failure.code})
        subject = "source_ip"
        if failure.key_id is not None:
            blocked_key = await limiter.failed("key:" + failure.key_id, now)
            if blocked_key and not blocked:
                blocked, subject = blocked_key, "key_id"
        evidence: dict[str, object] = {"cause": failure.code}
        if failure.key_id is not None:
            evidence["key_id"] = failure.key_id
        evidence.update(failure.evidence)
        if blocked:
            ctx.notices.append(("auth.locked_out", {"subject": subject, "block_for": blocked, **evidence}))
        return Deny(
            401,
            "auth_invalid",
            _INVALID_DETAIL,
            headers=self._invalid_challenge,
            evidence=evidence,
            event="auth.failed",
        )


def _unknown(credential: str, now: float) -> Principal | None:
    return None


def _admitted(req: RequestView, principal: Principal) -> Deny | None:
    return None


def _basic_credentials(value: str) -> tuple[str | None, str | None]:
    """``(user, password)`` of a Basic credential whose password is a Bastion key; (None, None) otherwise
    (the request then presents no key, and is refused as unauthenticated or invalid)."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None, "\x00malformed"  # presented, and wrong: counted as a failed attempt
    user, sep, password = decoded.partition(":")
    if not sep:
        return None, "\x00malformed"
    return user, password


def _other_credential(req: RequestView, api_keys: ApiKeyAuth | None) -> bool:
    return api_keys is not None and api_keys.header in req.headers


def _locked(wait: float, evidence: dict[str, object]) -> Deny:
    seconds = max(1, int(wait + 0.999))
    return Deny(
        429,
        "auth_locked_out",
        "Too many failed authentication attempts; retry later.",
        headers=(("retry-after", str(seconds)),),
        evidence={**evidence, "retry_after": seconds},
    )
