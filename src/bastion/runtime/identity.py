"""Wiring of identities into a running gateway: the snapshot and its sync thread, the failure limiter,
the API key authenticator, token verifiers (own OAuth2 tokens, external issuers) and the OAuth2 server.

Built once at load from the config; :meth:`IdentityRuntime.start` loads the snapshot (and the signing
keys) from the store before the gateway accepts a request, :meth:`close` writes what is pending.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine

from ..checks.api_key import ApiKeyAuth
from ..checks.authn import Authenticate
from ..checks.hmac_webhook import PRESETS, HmacWebhook, custom_scheme, standard_webhooks_secret
from ..checks.pkcv import Pkcv
from ..checks.scopes import Authorize
from ..checks.twilio_signature import TwilioSignature
from ..config.errors import ConfigError, ConfigIssue
from ..config.models import GatewayConfig, RouteSettings
from ..core.chain import Check
from ..core.ports import ReplayCache, TokenVerifier
from ..core.ratelimit import Limit
from ..identity.credentials import Peppers
from ..identity.index import IdentitySnapshot, IdentitySync, check_pepper
from ..identity.jwks import JwksCache
from ..identity.jwt import JwtPolicy
from ..identity.manage import IdentityAdmin
from ..identity.oauth_server import OAuthServer
from ..identity.pkcv import PkcvVerifier
from ..identity.signing import PepperMismatch, SigningKeys
from ..identity.tokens import IssuerVerifier, LocalTokenVerifier
from ..state.memory import MemoryFailureLimiter, MemoryReplayCache
from ..state.redis import RedisFailureLimiter
from .state import StateRuntime

__all__ = ["IdentityRuntime"]


class IdentityRuntime:
    def __init__(
        self,
        settings: GatewayConfig,
        engine: Engine | None,
        emit: Callable[..., None],
        *,
        clock: Callable[[], float] = time.time,
        source: str = "",
        lines: Mapping[tuple[str | int, ...], int] | None = None,
        replay: ReplayCache | None = None,
        state: StateRuntime | None = None,
    ) -> None:
        ident = settings.identity
        self.source = source
        self.settings_lines = lines or {}
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.emit = emit
        self.peppers = Peppers(ident.pepper.reveal()) if ident.pepper is not None else None
        self.snapshot = IdentitySnapshot(settings.identity.max_staleness)
        self.sync: IdentitySync | None = None
        lock = ident.lockout
        self.limiter: Any = MemoryFailureLimiter(lock.failures, lock.within, lock.block_for)
        if state is not None and state.redis is not None:  # shared by every instance, local as fallback
            self.limiter = RedisFailureLimiter(
                state.redis, lock.failures, lock.within, lock.block_for, self.limiter
            )
        # One-time values (webhook ids, PKCV request hashes): from the state backend (storage.state).
        self.replay: ReplayCache = replay if replay is not None else MemoryReplayCache()
        self.pkcv = PkcvVerifier(self.snapshot)
        self.api_keys = (
            ApiKeyAuth(self.snapshot, self.peppers.key_digest, header=ident.api_key_header)
            if self.peppers is not None
            else None
        )
        self.signing: SigningKeys | None = None
        self.oauth: OAuthServer | None = None
        self.verifiers: dict[str, TokenVerifier] = {}
        o = settings.oauth2
        if o is not None and self.peppers is not None:
            # Without a store (``bastion check``) the server is compiled but never started: no keys.
            self.signing = SigningKeys(
                engine,
                self.peppers,
                alg=o.algorithm,
                rotation=o.signing_key_rotation,
                token_ttl=o.token_ttl,
                clock=clock,
            )
            local = LocalTokenVerifier(
                self.signing, self.snapshot, issuer=o.issuer, audience=o.audience or o.issuer
            )
            self.verifiers["oauth2"] = local
            self.oauth = OAuthServer(
                issuer=o.issuer,
                audience=o.audience or o.issuer,
                token_ttl=o.token_ttl,
                paths={
                    "token": o.token_path,
                    "introspection": o.introspection_path,
                    "revocation": o.revocation_path,
                    "jwks": o.jwks_path,
                    "metadata": o.metadata_path,
                },
                signing=self.signing,
                verifier=local,
                index=self.snapshot,
                peppers=self.peppers,
                limiter=self.limiter,
                clock=clock,
                emit=emit,
                revoke=self._revoke_token,
                replay=self.replay,
            )
        self.jwks_caches: list[JwksCache] = []
        for issuer in settings.jwt_issuers:
            cache = JwksCache(issuer.jwks_url)
            self.jwks_caches.append(cache)
            policy = JwtPolicy(
                issuer=issuer.issuer,
                audience=issuer.audience,
                algorithms=tuple(issuer.algorithms),
                leeway=issuer.leeway,
                max_token_bytes=issuer.max_token_bytes,
            )
            self.verifiers[f"jwt:{issuer.name}"] = IssuerVerifier(
                issuer.name, cache, policy, self.snapshot, consumer_claim=issuer.consumer_claim
            )

    @property
    def needed(self) -> bool:
        return self.peppers is not None or bool(self.verifiers)

    def checks_for(self, route: RouteSettings, route_id: str = "", *, basic: bool = False) -> list[Check]:
        """The authentication checks of a route. ``basic``: also take an API key as the password of HTTP
        Basic (egress routes, for SDKs that speak nothing else)."""
        methods = route.auth_methods
        if not methods:
            return []
        if methods == ("twilio_signature",):
            t = route.twilio
            assert t is not None  # the config requires it
            return [
                TwilioSignature(
                    [s.reveal().encode("utf-8") for s in t.auth_tokens],
                    {k: s.reveal().encode("utf-8") for k, s in t.shared_keys.items()},
                    public_url=t.public_url,
                    public_base_url=self.settings.public_base_url,
                    replay=self.replay,
                    replay_window=t.replay_window,
                    clock=self.clock,
                    namespace=route_id or route.path,
                )
            ]
        if methods == ("hmac_signature",):
            h = route.hmac
            assert h is not None
            if h.preset == "custom":
                assert h.signature_header is not None
                scheme = custom_scheme(
                    signature_header=h.signature_header,
                    timestamp_header=h.timestamp_header,
                    id_header=h.id_header,
                    algorithm=h.algorithm or "sha256",
                    encoding=h.encoding or "hex",
                    prefix=h.signature_prefix or "",
                )
            else:
                scheme = PRESETS[h.preset]
            decode = standard_webhooks_secret if h.preset == "standard_webhooks" else str.encode
            return [
                HmacWebhook(
                    scheme,
                    [decode(s.reveal()) for s in h.secrets],
                    tolerance=h.tolerance,
                    replay=self.replay,
                    clock=self.clock,
                    namespace=route_id or route.path,
                )
            ]
        if methods == ("pkcv",):
            return [
                Pkcv(
                    self.pkcv,
                    self.replay,
                    self.clock,
                    authorize=Authorize(route.scopes),
                    freshness=self.snapshot,
                )
            ]
        api_keys = None
        if "api_key" in methods:
            api_keys = self.api_keys
            if api_keys is None:  # the config requires a pepper; be explicit rather than skip auth
                raise RuntimeError("api_key authentication without identity.pepper")
            if route.api_key_in_query:
                api_keys = api_keys.with_query()
        verifiers = []
        for m in methods:
            if m == "api_key":
                continue
            verifier = self.verifiers.get(m)
            if verifier is None:
                raise RuntimeError(f"auth method {m} is not available (is the store configured?)")
            verifiers.append(verifier)
        # Authorisation runs inside authentication's call (one await fewer per request): same verdicts
        # and order as two checks in the chain.
        checks: list[Check] = [
            Authenticate(
                methods,
                api_keys,
                tuple(verifiers),
                self.limiter,
                self.clock,
                authorize=Authorize(route.scopes),
                freshness=self.snapshot,
                basic=basic,
            )
        ]
        if route.require_pkcv:
            checks.append(Pkcv(self.pkcv, self.replay, self.clock, required=True))
        return checks

    def consumer_quota(self, consumer_id: str) -> Limit | None:
        """The consumer's own quota from the snapshot (None: the default applies)."""
        consumer = self.snapshot.consumer(consumer_id)
        return consumer.quota if consumer is not None else None  # type: ignore[return-value]

    def admin(self, *, on_change: Callable[[], None] | None = None) -> IdentityAdmin:
        if self.engine is None:
            raise RuntimeError("identity management needs the store")
        return IdentityAdmin(
            self.engine,
            self.peppers,
            max_key_ttl=self.settings.identity.max_key_ttl,
            emit=self.emit,
            on_change=on_change or self.changed,
        )

    def changed(self) -> None:
        if self.sync is not None:
            self.sync.changed()

    def _revoke_token(self, jti: str, expires_at: float, now: float) -> None:
        self.snapshot.revoke_token(jti, expires_at, now)
        if self.sync is not None:
            self.sync.wake()

    def start(self) -> None:
        """Load the snapshot and signing keys; a pepper that does not match the store is a ConfigError."""
        if self.engine is None:
            return
        if self.peppers is not None and not check_pepper(self.engine, self.peppers.check_value):
            raise self._pepper_error(str(PepperMismatch()))
        self.sync = IdentitySync(
            self.engine,
            self.snapshot,
            interval=self.settings.identity.refresh_interval,
            clock=self.clock,
            on_reload=self._refresh_signing,
            periodic=self._refresh_signing,  # signing-key rotation is due on a schedule, not on a change
        )
        try:
            if self.signing is not None:
                self.signing.refresh()
        except PepperMismatch as exc:
            raise self._pepper_error(str(exc)) from None
        self.sync.start()

    def _pepper_error(self, message: str) -> ConfigError:
        return ConfigError(
            [
                ConfigIssue(
                    self.source, self.settings_lines.get(("identity", "pepper")), "identity.pepper", message
                )
            ]
        )

    def _refresh_signing(self) -> None:
        if self.signing is not None:
            self.signing.refresh()

    async def aclose(self) -> None:
        for cache in self.jwks_caches:
            await cache.aclose()

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
            self.sync = None

    def stats(self) -> dict[str, Any]:
        sync = self.sync
        return {
            "revision": self.snapshot.revision,
            "reloads": sync.reloads if sync else 0,
            "refresh_failures": sync.failures if sync else 0,
        }
