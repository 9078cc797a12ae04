"""API keys (P5, P13): ``Authorization: Bearer bst_…`` or a configured header (default ``X-API-Key``);
the query string only when a route opts in with ``api_key_in_query: true``.

A value of a key's length is digested (HMAC-SHA-256 under the pepper's sub-key), its public id looked
up in the in-memory snapshot, and the digests compared in constant time — against a placeholder when the
id is unknown, so a refusal takes the same work either way. Format and checksum are looked at only when
that fails: a string whose keyed digest matches a stored one *is* that key.

A key verified that way is remembered by a tag, never by its text: keyed BLAKE2s under a random secret
of this process's own (RFC 7693's keyed mode, hashlib), kept in memory with the record it was verified
against. A later request with the same key and the same record (a reload brings new records) is
accepted on the tag alone, about half the work of the HMAC; anything else is digested as above.
Every value of a key's length gets the tag and its comparison, so a refusal still costs the same
whether the id is unknown, known, or in use. :meth:`ApiKeyAuth.recognise`
accepts a key in good standing (``KeyRecord.good_until``) and says nothing else; :meth:`authenticate`
judges every case, and every failure raises :class:`AuthFailure` with a cause for the event log; the
client cannot tell an unknown id from a wrong secret or a bad checksum.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from hashlib import blake2s
from hmac import compare_digest
from urllib.parse import parse_qsl

from ..core.identity import AuthFailure, KeyRecord, Principal, checksum_ok, key_id_of, key_principal
from ..core.ports import IdentityIndex
from ..core.request import RequestView

__all__ = ["QUERY_PARAM", "ApiKeyAuth"]

QUERY_PARAM = "api_key"
_NO_DIGEST = bytes(32)  # what an unknown id's digest is compared with (never matched: see the callers)
_NO_TAG = bytes(32)  # likewise, a tag with no remembered one
_ROTATION_NOTICE_EVERY = 60.0


def _tagger(secret: bytes) -> blake2s:
    """Keyed BLAKE2s under ``secret``, with nothing hashed yet: a tag copies it (hashlib's ``copy()``)
    rather than building a hash object from its parameters each time, a third of the tag's time."""
    return blake2s(key=secret)


class ApiKeyAuth:
    name = "api_key"

    def __init__(
        self,
        index: IdentityIndex,
        digest: Callable[[str], bytes],
        *,
        header: str = "x-api-key",
        in_query: bool = False,
    ) -> None:
        self.index = index
        self.digest = digest
        self.header = header.lower()
        self.in_query = in_query
        self._noticed: dict[str, float] = {}
        # key id -> (tag, the record the key was verified against): see the module's docstring
        self._tagger = _tagger(secrets.token_bytes(32))
        self._seen: dict[str, tuple[bytes, KeyRecord]] = {}
        self._last_used = index.last_used  # the same dict for the index's life (IdentityIndex)

    def with_query(self) -> ApiKeyAuth:
        other = ApiKeyAuth(self.index, self.digest, header=self.header, in_query=True)
        other._noticed = self._noticed
        other._tagger, other._seen = self._tagger, self._seen
        return other

    def credential(self, req: RequestView, bearer: str | None) -> str | None:
        """The presented key, if any. Two different keys in one request are refused."""
        key = bearer if bearer is not None and bearer.startswith("bst_") else None
        headers = req.headers
        value = headers.first.get(self.header)  # lower-cased at __init__
        repeats = headers.repeats
        if value is not None and (repeats is None or self.header not in repeats):
            value = value.strip()
            if key is None:
                key = value
            elif value != key:
                raise AuthFailure("api_key_ambiguous")
        elif value is not None:
            for value in headers.getall(self.header):  # every copy: two different keys are refused
                value = value.strip()
                if key is None:
                    key = value
                elif value != key:
                    raise AuthFailure("api_key_ambiguous")
        if self.in_query and req.query:
            for name, value in parse_qsl(req.query, keep_blank_values=True):
                if name != QUERY_PARAM:
                    continue
                if key is None:
                    key = value
                elif value != key:
                    raise AuthFailure("api_key_ambiguous")
        return key

    def recognise(self, key: str, now: float) -> Principal | None:
        """The principal of a current key in good standing, presented exactly; None for anything else,
        which :meth:`authenticate` then judges (and says why). A key of the right length is tagged and
        digested whether its id exists or not (a key remembered from an earlier request, only tagged),
        so a refusal costs the same work for a known id as for an unknown one; anything longer or
        shorter is not digested at all."""
        if len(key) != 56:  # no digest of junk (a header can hold 16 KiB); the length is no secret
            return None
        key_id = key[4:16]
        rec = self.index.keys.get(key_id)
        tagging = self._tagger.copy()
        try:
            data = key.encode()  # no arguments: the quick call
        except UnicodeEncodeError:  # a lone surrogate, never in a header (Latin-1 text): tagged all the same
            data = key.encode("utf-8", "surrogateescape")
        tagging.update(data)
        tag = tagging.digest()
        seen = self._seen.get(key_id)
        # compared with something either way, like the digests below
        if (
            compare_digest(tag, seen[0] if seen is not None else _NO_TAG)
            and seen[1] is rec  # type: ignore[index]
            and now < rec.good_until  # type: ignore[union-attr]
        ):
            self._last_used[key_id] = now
            return rec.principal  # type: ignore[union-attr]
        digest = self.digest(key)
        # compared with something either way: an unknown id does the same work as a wrong secret
        stored = rec.digest if rec is not None else _NO_DIGEST
        if compare_digest(digest, stored) and rec is not None and now < rec.good_until:
            self._remember(key_id, tag, rec)
            self._last_used[key_id] = now
            return rec.principal
        return None

    def _remember(self, key_id: str, tag: bytes, rec: KeyRecord) -> None:
        seen = self._seen
        if key_id not in seen and len(seen) >= len(self.index.keys):
            # some entries are for records no longer current (deleted keys, older snapshots): keep only
            # the live ones, so the memo never outgrows the snapshot
            keys = self.index.keys
            for stale in [k for k, (_, r) in seen.items() if keys.get(k) is not r]:
                del seen[stale]
        seen[key_id] = (tag, rec)

    def authenticate(self, key: str, req: RequestView, now: float, notices: list) -> Principal:  # type: ignore[type-arg]
        """Every case: the principal, or :class:`AuthFailure` naming why not. The digest, lookup and
        comparison of :meth:`recognise` without its tag (nothing is remembered on this way; the id sits
        at a fixed place)."""
        digest = self.digest(key) if len(key) == 56 else None
        rec: KeyRecord | None = self.index.keys.get(key[4:16]) if digest is not None else None
        matched = (
            digest is not None
            and compare_digest(digest, rec.digest if rec is not None else _NO_DIGEST)
            and rec is not None
        )
        if matched and now < rec.good_until:  # type: ignore[union-attr]
            # in good standing: the full way was taken for another reason (a lockout elsewhere, a
            # repeated header, a key also allowed in the query string)
            self._last_used[rec.id] = now  # type: ignore[union-attr]
            return rec.principal  # type: ignore[union-attr,return-value]
        return self._judge(key, rec, matched, now, notices)

    def _judge(
        self,
        key: str,
        rec: KeyRecord | None,
        matched: bool,
        now: float,
        notices: list,  # type: ignore[type-arg]
    ) -> Principal:
        """Every other case: why the key is refused, or a key in its rotation's grace period (noticed)."""
        if rec is None or not matched:
            key_id = key_id_of(key)
            if key_id is None:
                raise AuthFailure("api_key_malformed")
            # The checksum is checked only on failure: for a known id the digest comparison covers it.
            # A bad one is not counted under the id: that would tell known ids from unknown ones.
            if not checksum_ok(key):
                raise AuthFailure("api_key_checksum")
            if rec is None:
                raise AuthFailure("api_key_unknown", key_id)
            raise AuthFailure("api_key_mismatch", rec.id)
        key_id = rec.id
        if rec.revoked_at is not None:
            raise AuthFailure("api_key_revoked", key_id)
        if rec.expires_at is not None and now >= rec.expires_at:
            raise AuthFailure("api_key_expired", key_id)
        principal = rec.principal
        if principal is None:
            consumer = self.index.consumer(rec.consumer_id)
            if consumer is None or not consumer.active:
                raise AuthFailure("consumer_disabled", key_id)
            principal = key_principal(rec, consumer)
        self._last_used[key_id] = now
        if rec.rotated_to is not None:
            last = self._noticed.get(key_id, 0.0)
            if now - last >= _ROTATION_NOTICE_EVERY:  # one event a minute per key, not one per request
                self._noticed[key_id] = now
                notices.append(
                    (
                        "api_key.used_after_rotation",
                        {
                            "key_id": key_id,
                            "new_key_id": rec.rotated_to,
                            "consumer": principal.consumer,
                            "grace_until": rec.expires_at,
                        },
                    )
                )
        return principal
