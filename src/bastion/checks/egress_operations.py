"""Egress operations (P1, P15): which callers may use an egress route, and which provider operations pass.

Deny by default: an operation passes only if an ``allow`` rule matches it and no ``deny`` rule does. The
path matched is the canonical path the gateway computed (no dot-segments, unreserved characters decoded,
``%2F`` and ``;`` refused), minus the route's ``listen_path`` — exactly what the provider receives, so
encoding tricks cannot reach an operation a rule refuses.

``allow`` rules match exactly (a placeholder ``{name}`` is one path segment or part of one). ``deny``
rules match loosely, so a refusal is never dodged by spelling: case-insensitively, with or without a
trailing slash, and with any format extension (a rule for ``/Calls.json`` also refuses ``/calls``,
``/Calls.xml`` and ``/Calls.json/``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..core.decision import Context, Deny, Verdict
from ..core.request import RequestView
from ..core.router import Route, RouteError, Router

__all__ = ["CallerCheck", "OperationRules"]

_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")


def _loose(path: str) -> str:
    """The spelling-independent form of a path for deny rules: lower-case, no trailing slash or extension."""
    path = path.lower().rstrip("/") or "/"
    return _EXTENSION.sub("", path)


def _router(rules: Iterable[tuple[str, str]], loose: bool) -> Router | None:
    by_path: dict[str, set[str]] = {}
    for method, path in rules:
        if loose:
            # Lower-casing a placeholder's name is harmless: deny rules use no placeholder values.
            path = _loose(path)
        by_path.setdefault(path, set()).add(method)
    if not by_path:
        return None
    routes = [
        Route(
            id=f"{' '.join(sorted(methods))} {path}",
            service="egress",
            template=path,
            methods=frozenset(methods),
        )
        for path, methods in by_path.items()
    ]
    return Router(routes)


class OperationRules:
    """``allow``/``deny`` of an egress route. Built once at load; :func:`compile_rules` checks templates."""

    name = "egress_operations"

    def __init__(
        self, prefix: str, allow: Iterable[tuple[str, str]], deny: Iterable[tuple[str, str]]
    ) -> None:
        self.prefix = prefix
        self.allow = _router(allow, loose=False)
        self.deny = _router(deny, loose=True)

    def operation(self, path: str) -> str:
        """The provider path of a request path under this route's prefix ("/" when it is the prefix)."""
        return path[len(self.prefix) :] or "/"

    @staticmethod
    def _matches(router: Router | None, method: str, path: str) -> dict[str, str] | None:
        if router is None:
            return None
        match = router.match(path)
        if match is None:
            return None
        route = match.endpoint.route_for(method) or match.endpoint.route_for("*")
        return match.params_for(route) if route is not None else None

    def decide(self, method: str, path: str) -> tuple[bool, dict[str, str]]:
        """Whether the operation passes, and the allow rule's placeholder values (``{account}``)."""
        if self._matches(self.deny, method, _loose(path)) is not None:
            return False, {}
        params = self._matches(self.allow, method, path)
        return params is not None, params or {}

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        operation = self.operation(req.path)
        allowed, params = self.decide(req.method, operation)
        if not allowed:
            return Deny(
                403,
                "egress_operation_denied",
                "This operation is not allowed through this egress route.",
                evidence={"operation": f"{req.method} {operation}"[:300]},
                event="egress.operation_denied",
            )
        ctx.notes["egress_params"] = params
        return None


def check_rule_templates(rules: Iterable[tuple[str, str]]) -> str | None:
    """The first template problem among ``rules`` (for a config error), or None."""
    for method, path in rules:
        try:
            Router([Route(id=path, service="egress", template=path, methods=frozenset({method}))])
        except RouteError as exc:
            return f"{method} {path}: {exc}"
    return None


class CallerCheck:
    """Only the listed consumers may use the route (after authentication)."""

    name = "egress_callers"

    def __init__(self, callers: Iterable[str]) -> None:
        self.callers = frozenset(callers)
        self._refused = Deny(
            403,
            "egress_caller_not_allowed",
            "These credentials may not use this egress route.",
            event="egress.caller_denied",
        )

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        principal = ctx.principal
        if principal is None or principal.consumer not in self.callers:
            return self._refused
        return None
