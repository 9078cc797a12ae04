"""CORS per route (Fetch standard, "CORS protocol").

Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are answered at the gateway and never
reach the upstream. A request whose ``Origin`` is not listed is refused with 403: a browser would not
let the page read the answer anyway, and refusing also keeps cross-site "simple" requests (the CSRF
shape) away from the application. ``*`` is never combined with credentials (rejected at load).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.decision import Answer, Context, Deny, Verdict
from ..core.request import RequestView

__all__ = ["Cors"]


class Cors:
    name = "cors"

    def __init__(
        self,
        *,
        allow_origins: Sequence[str],
        allow_methods: Sequence[str],
        allow_headers: Sequence[str] = (),
        expose_headers: Sequence[str] = (),
        allow_credentials: bool = False,
        max_age: float = 600.0,
    ) -> None:
        self.any_origin = "*" in allow_origins
        self.origins = frozenset(o.lower() for o in allow_origins if o != "*")
        self.methods = frozenset(allow_methods)
        self.any_header = "*" in allow_headers
        self.allow_headers = frozenset(h.lower() for h in allow_headers) - {"*"}
        self.credentials = allow_credentials
        common: list[tuple[str, str]] = [("vary", "Origin")]
        if self.credentials:
            common.append(("access-control-allow-credentials", "true"))
        self._common = tuple(common)
        self._expose = (
            (("access-control-expose-headers", ", ".join(expose_headers)),) if expose_headers else ()
        )
        self._preflight_static = (
            ("access-control-allow-methods", ", ".join(sorted(self.methods))),
            ("access-control-max-age", str(int(max_age))),
        )
        self._origin_denied = Deny(403, "cors_origin_denied", "This origin is not allowed.")
        self._preflight_denied = Deny(
            403, "cors_preflight_denied", "This cross-origin request is not allowed."
        )

    def _origin_ok(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def _allow_origin(self, origin: str) -> tuple[str, str]:
        # With credentials the exact origin must be echoed; "*" is only for credential-less wildcard.
        value = "*" if self.any_origin and not self.credentials else origin
        return ("access-control-allow-origin", value)

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        origin = req.headers.get("origin")
        if origin is None:
            return None
        if req.method == "OPTIONS" and "access-control-request-method" in req.headers:
            requested = (req.headers.get("access-control-request-method") or "").strip()
            if not self._origin_ok(origin) or requested not in self.methods:
                return self._preflight_denied
            asked = req.headers.get("access-control-request-headers") or ""
            names = [h.strip().lower() for h in asked.split(",") if h.strip()]
            if not self.any_header and any(h not in self.allow_headers for h in names):
                return self._preflight_denied
            headers = [self._allow_origin(origin), *self._common, *self._preflight_static]
            if names:
                headers.append(("access-control-allow-headers", ", ".join(names)))
            return Answer(204, tuple(headers))
        if not self._origin_ok(origin):
            return self._origin_denied
        ctx.response_headers.append(self._allow_origin(origin))
        ctx.response_headers.extend(self._common)
        ctx.response_headers.extend(self._expose)
        return None
