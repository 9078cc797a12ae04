"""Public Key Client Validation (P18): requests signed by the client's private key.

The client sends ``Twilio-Client-Validation: <JWT>``; the token (verified through the
:class:`ClientValidator` port) names the consumer's public key and carries ``rqh``, the SHA-256 of the
*canonical request*. This check recomputes that hash from the request actually received — method,
path, query, the headers named in ``hrh`` and the body — and refuses any difference, so a token cannot
be moved to another request. Twilio's SDKs disagree on the canonical form, so both are accepted:

* the Python form: the path and query as sent (query ``k=v`` pairs sorted), header values as sent;
* the Java form (the reference Twilio's documentation links): the path with dot-segments removed and
  re-encoded (RFC 3986 unreserved characters bare, everything else ``%XX``), the query with ``+`` → ``%20``,
  ``*`` → ``%2A``, ``%7E`` → ``~``, and the Host value without ``:443`` / ``:80``.

A token is good for one request: its ``rqh`` + ``exp`` pair is remembered (replay-cache port) until it
expires. Used alone (``auth: [pkcv]``) it authenticates the key's consumer; with ``require_pkcv: true``
it must come from the same consumer as the route's other credential.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from ..core.decision import Context, Deny, Verdict
from ..core.identity import AuthFailure
from ..core.pkcv_canonical import canonical_java, canonical_python, request_hash
from ..core.ports import ClientValidator, Freshness, ReplayCache, StateUnavailable
from ..core.request import BodyReadError, RequestView
from .refusals import IDENTITY_UNAVAILABLE, remember, state_unavailable
from .scopes import Authorize

__all__ = ["HEADER", "Pkcv", "canonical_java", "canonical_python", "request_hash"]

HEADER = "twilio-client-validation"


class Pkcv:
    """``auth: [pkcv]`` (``required`` False: authenticates) or ``require_pkcv: true`` (``required``
    True: runs after the route's authentication, and the consumers must match)."""

    name = "pkcv"

    def __init__(
        self,
        validator: ClientValidator,
        replay: ReplayCache,
        clock: Callable[[], float],
        *,
        required: bool = False,
        authorize: Authorize | None = None,
        freshness: Freshness | None = None,
    ) -> None:
        # past freshness.fresh_until the store has not confirmed the registered keys for too long: fail closed
        self.freshness = freshness
        self.validator = validator
        self.replay = replay
        self.clock = clock
        self.required = required
        self.authorize = authorize

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        token = req.headers.get(HEADER)
        if token is None:
            return _refuse("pkcv_missing", status=401)
        now = self.clock()
        if self.freshness is not None and now > self.freshness.fresh_until:
            return IDENTITY_UNAVAILABLE
        try:
            principal, claims = self.validator.verify(token.strip(), now)
        except AuthFailure as exc:
            return _refuse(exc.code, **exc.evidence)
        credential = principal.credential_id
        if self.required:
            current = ctx.principal
            if current is None or current.consumer_id != principal.consumer_id:
                return _refuse("pkcv_consumer_mismatch", credential_id=credential)
        try:
            body = await req.body.read()
        except BodyReadError as exc:
            return Deny(exc.status, exc.code, "The request body could not be read.")
        signed = claims.hrh
        expected = claims.rqh.encode("ascii")
        method, path, query, headers = req.method, req.raw_path, req.query, req.headers
        matched = hmac.compare_digest(
            request_hash(canonical_python(method, path, query, headers, signed, body)).encode("ascii"),
            expected,
        )
        if not matched:
            try:
                java = canonical_java(method, path, query, headers, signed, body)
            except UnicodeDecodeError:
                java = ""
            matched = bool(java) and hmac.compare_digest(request_hash(java).encode("ascii"), expected)
        if not matched:
            return _refuse("pkcv_request_hash_mismatch", credential_id=credential)
        verdict = None
        if not self.required and self.authorize is not None:
            # Authorise before the token is remembered: a caller without the route's scope uses up nothing.
            verdict = self.authorize.decide(req, principal)
            if verdict is not None:
                return verdict
        # Per credential: another consumer's identical request cannot use up this one's token.
        once = f"pkcv|{credential}|{claims.rqh}|{claims.exp!r}"
        try:
            first = await remember(self.replay, once, claims.until, now, ctx)
        except StateUnavailable:
            return state_unavailable("replay_cache")
        if not first:
            return _refuse("pkcv_replayed", credential_id=credential)
        if not self.required:
            ctx.principal = principal
        return verdict


def _refuse(cause: str, status: int = 401, **evidence: object) -> Deny:
    return Deny(
        status,
        "pkcv_invalid" if cause != "pkcv_missing" else "pkcv_required",
        "Public key client validation failed."
        if cause != "pkcv_missing"
        else "This endpoint requires a Twilio-Client-Validation header.",
        evidence={"cause": cause, **evidence},
        event="auth.failed",
    )
