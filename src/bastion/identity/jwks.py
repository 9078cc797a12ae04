"""A bounded, rate-limited cache of one issuer's JSON Web Key Set (RFC 7517 §5), fetched over HTTPS.

The JWKS URL is configuration, never something a token names (RFC 8725 §3.10: ``jku``/``x5u`` are
refused by ``identity.jwt``). Keys rotate, so a token with an unknown ``kid`` triggers a refetch (OpenID
Connect Core §10.1.1) -- but an attacker can send a million random kids, so refetches are rate-limited
and single-flight: at most one fetch in flight, and none sooner than ``min_refresh_interval`` after the
last attempt, whatever callers ask for. A failed fetch never takes the last good set down with it.

What is kept from a fetched set: public signing keys only. Entries carrying private members, symmetric
``oct`` keys (a secret published in a JWKS is no longer secret), keys meant for encryption (``use`` other
than ``sig``, ``key_ops`` without ``verify``, X25519/X448), RSA moduli under 2048 bits (RFC 7518 §3.3) and
entries that do not import are skipped, one by one. A response over ``max_bytes``, with more than
``max_keys`` entries, or with no usable key at all counts as a failed fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable

import httpx
from joserfc.jwk import JWKRegistry, Key, KeySet, RSAKey

from ..core.urls import require_secure_url

__all__ = ["JwksCache", "JwksError", "check_jwks_url"]

# Tuples, not sets: membership tests on untrusted JSON values must not hash them (a list is unhashable).
_SIGNING_KEY_TYPES = ("RSA", "EC", "OKP")
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_SIGNING_OKP_CURVES = ("Ed25519", "Ed448")
_MIN_RSA_BITS = 2048
# base64url length of a 256-byte modulus: shorter ones are skipped before joserfc imports them (and warns).
MIN_RSA_N_CHARS = 342


class JwksError(Exception):
    """No key set can be served: the JWKS has never been fetched successfully."""


def check_jwks_url(url: str) -> str:
    """Return ``url`` if it is fit to fetch keys from, else raise ``ValueError`` saying why
    (the rule of :func:`bastion.core.urls.require_secure_url`)."""
    return require_secure_url(url, "the JWKS URL")


class JwksCache:
    """The key set of one issuer: fetched lazily, cached for ``ttl`` seconds, refetched on an unknown
    ``kid`` at most once per ``min_refresh_interval``. ``clock`` is monotonic seconds; ``fetch`` takes
    the URL and returns the body (the default is an ``httpx`` GET that never follows redirects)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str], Awaitable[bytes]] | None = None,
        ttl: float = 300.0,
        min_refresh_interval: float = 30.0,
        max_bytes: int = 256 * 1024,
        max_keys: int = 50,
        timeout: float = 5.0,
    ) -> None:
        self.url = check_jwks_url(url)
        for name, value in (
            ("ttl", ttl),
            ("timeout", timeout),
            ("max_bytes", max_bytes),
            ("max_keys", max_keys),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"JWKS {name} must be positive")
        if not (math.isfinite(min_refresh_interval) and min_refresh_interval >= 0):
            raise ValueError("JWKS min_refresh_interval must be >= 0")
        self._clock = clock
        self._fetch = fetch if fetch is not None else self._http_get
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._max_bytes = max_bytes
        self._max_keys = max_keys
        self._timeout = timeout
        self._keys: KeySet | None = None
        self._kids: frozenset[str | None] = frozenset()
        self._fetched_at = -math.inf  # when the current set arrived
        self._attempted_at = -math.inf  # when the last fetch started, whatever became of it
        self._inflight: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        #: Why the last fetch failed (None after a success), for the event log and JwksError.
        self.last_error: str | None = None

    async def key_set(self, kid: str | None) -> KeySet:
        """The current key set, refetched first if it is missing, older than ``ttl`` or lacks ``kid`` --
        unless a fetch is already running (then wait for it) or the last one started less than
        ``min_refresh_interval`` ago (then serve what we have). Raises :class:`JwksError` only if no
        fetch has ever succeeded."""
        now = self._clock()
        stale = (
            self._keys is None
            or now - self._fetched_at >= self._ttl
            or (kid is not None and kid not in self._kids)
        )
        if stale and (self._inflight is not None or now - self._attempted_at >= self._min_interval):
            if self._inflight is None:
                self._attempted_at = now
                self._inflight = asyncio.create_task(self._refresh())
            # shield: a caller that gives up must not cancel the fetch the other callers are waiting on.
            await asyncio.shield(self._inflight)
        if self._keys is None:
            raise JwksError(f"no key set from the JWKS URL yet ({self.last_error or 'refetch rate-limited'})")
        return self._keys

    async def aclose(self) -> None:
        """Cancel a running fetch and close the HTTP client, if one was created."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _refresh(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                body = await self._fetch(self.url)
            keys = self._parse(body)
        except Exception as exc:  # whatever went wrong, the last good set stays in service
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        else:
            self._keys = keys
            self._kids = frozenset(key.kid for key in keys)
            self._fetched_at = self._clock()
            self.last_error = None
        finally:
            self._inflight = None

    def _parse(self, body: bytes) -> KeySet:
        if len(body) > self._max_bytes:
            raise JwksError(f"JWKS response is {len(body)} bytes, limit {self._max_bytes}")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise JwksError("JWKS response is not JSON") from exc
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise JwksError('JWKS response is not an object with a "keys" array')
        if len(entries) > self._max_keys:
            raise JwksError(f"JWKS has {len(entries)} keys, limit {self._max_keys}")
        keys = [key for key in map(_public_signing_key, entries) if key is not None]
        if not keys:
            raise JwksError("JWKS has no usable public signing key")
        return KeySet(keys)

    async def _http_get(self, url: str) -> bytes:
        if self._client is None:
            # trust_env=False: no proxy, .netrc credentials or CA bundle taken from the environment;
            # identity encoding: the byte limit below then bounds what we hold, not a compressed size.
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=self._timeout,
                trust_env=False,
                headers={
                    "accept": "application/jwk-set+json, application/json",
                    "accept-encoding": "identity",
                },
            )
        async with self._client.stream("GET", url) as response:
            if response.status_code != 200:
                raise JwksError(f"JWKS URL answered HTTP {response.status_code}")
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise JwksError("JWKS response is compressed although identity was asked for")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise JwksError(f"JWKS response declares {declared} bytes, limit {self._max_bytes}")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self._max_bytes:
                    raise JwksError(f"JWKS response exceeds {self._max_bytes} bytes")
        return bytes(body)


def _public_signing_key(entry: object) -> Key | None:
    """One JWKS entry as a public signing key, or None to skip it (RFC 7517 §5: a set may hold keys a
    recipient does not use; one odd entry must not cost us the whole set)."""
    if not isinstance(entry, dict) or entry.get("kty") not in _SIGNING_KEY_TYPES:
        return None
    if PRIVATE_MEMBERS & entry.keys():
        return None
    if entry.get("use", "sig") != "sig":
        return None
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if entry["kty"] == "OKP" and entry.get("crv") not in _SIGNING_OKP_CURVES:
        return None
    if entry["kty"] == "RSA" and not (isinstance(entry.get("n"), str) and len(entry["n"]) >= MIN_RSA_N_CHARS):
        return None
    try:
        key = JWKRegistry.import_key(entry)
    except Exception:  # untrusted input: joserfc and cryptography raise many types for a bad key
        return None
    if key.is_private:
        return None
    if isinstance(key, RSAKey) and key.public_key.key_size < _MIN_RSA_BITS:
        return None
    return key
