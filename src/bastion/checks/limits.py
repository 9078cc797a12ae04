"""Request body size per route (P9): a declared ``Content-Length`` over the route's ``max_body`` is
refused with 413 before a byte of the body is read. Chunked bodies are counted by the data plane as
they stream, against the same ``Route.max_body``, and cut off with the same code."""

from __future__ import annotations

from ..core.decision import Context, Deny, Verdict
from ..core.request import RequestView

__all__ = ["BODY_TOO_LARGE", "BodyLimit"]

BODY_TOO_LARGE = "body_too_large"


class BodyLimit:
    name = "limits"

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._deny = Deny(
            413,
            BODY_TOO_LARGE,
            f"The request body is larger than this endpoint accepts ({max_body} bytes).",
            evidence={"max_body": max_body},
        )

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        return self.decide_now(req, ctx)

    def decide_now(self, req: RequestView, ctx: Context) -> Verdict:
        length = req.body.declared_length
        if length is not None and length > self.max_body:
            return self._deny
        return None
