"""The request an egress route sends the provider: the caller's headers cut down to a short list, the
provider credential injected, and (with ``pkcv``) a PKCV signature over the final request.

Zero trust towards the third party: none of the caller's credentials, cookies, tracing or internal
headers leave (no ``X-Forwarded-*``, no ``X-Bastion-*``, no request id) — only what an API call needs
(``Content-Type``, ``Accept``, ``User-Agent``, idempotency tokens …) plus ``forward_headers``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .signing import HEADER as PKCV_HEADER
from .signing import PkcvSigner

__all__ = ["FORWARDED", "Outbound", "OutboundHeaders"]

FORWARDED = frozenset(
    {
        "content-type",
        "accept",
        "accept-encoding",
        "accept-language",
        "user-agent",
        "idempotency-key",
        "i-twilio-idempotency-token",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    }
)


@dataclass(frozen=True, slots=True)
class OutboundHeaders:
    """The provider credential as headers, built once at load (the secret is read once from config)."""

    authorization: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def basic(cls, username: str, password: str) -> OutboundHeaders:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return cls(authorization=f"Basic {token}")

    @classmethod
    def bearer(cls, token: str) -> OutboundHeaders:
        return cls(authorization=f"Bearer {token}")

    @classmethod
    def header(cls, name: str, value: str) -> OutboundHeaders:
        return cls(extra=((name.lower(), value),))

    def __repr__(self) -> str:  # never show the credential
        return "OutboundHeaders(***)"


class Outbound:
    """Per egress route: turns the caller's request into the provider's."""

    def __init__(
        self,
        *,
        prefix: str,
        credential: OutboundHeaders,
        forward: Iterable[str] = (),
        signer: PkcvSigner | None = None,
        iss: str | None = None,
        sub: str | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.prefix = prefix
        self.credential = credential
        self.forward = FORWARDED | frozenset(h.lower() for h in forward)
        self.signer = signer
        self.iss = iss
        self.sub = sub
        self.clock = clock
        self.credential_names = frozenset(
            ({"authorization"} if credential.authorization else set()) | {n for n, _ in credential.extra}
        )

    def __repr__(self) -> str:
        return f"Outbound({self.prefix!r})"

    def path(self, canonical_path: str) -> str:
        return canonical_path[len(self.prefix) :] or "/"

    def headers(self, caller_headers: Iterable[tuple[str, str]], host: str) -> list[tuple[str, str]]:
        keep = self.forward
        drop = self.credential_names | {PKCV_HEADER}
        out = [(n, v) for n, v in caller_headers if n in keep and n not in drop]
        out.append(("host", host))
        if self.credential.authorization is not None:
            out.append(("authorization", self.credential.authorization))
        out.extend(self.credential.extra)
        return out

    def sign(
        self,
        headers: list[tuple[str, str]],
        *,
        method: str,
        path: str,
        query: str,
        body: bytes,
        params: Mapping[str, str],
    ) -> None:
        """Append the PKCV header, signed over the request exactly as it will be sent."""
        if self.signer is None:
            return
        iss = self.iss or ""
        sub = self.sub or params.get("account") or params.get("AccountSid") or iss
        token = self.signer.sign(
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            iss=iss,
            sub=sub,
            now=self.clock(),
        )
        headers.append((PKCV_HEADER, token))
