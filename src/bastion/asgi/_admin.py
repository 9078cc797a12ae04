"""The admin API as a sub-application of the protected application: ``app.mount("/bastion", BastionAdmin())``.

The mount says *where*; BastionMiddleware does the serving. When the engine starts, the middleware walks the
application's routes (Starlette's ``Mount``, nested ones included) for :class:`BastionAdmin` instances and
answers every request whose canonical path is under such a mount itself, with the admin API of its running
engine, behind the admin listener's guard (``admin.allow_ips`` on the TCP peer, ``Authorization: Bearer
<admin.token>``). The request never reaches the application's router: a route of the application that also
matches the path cannot take it past the guard, and a path Bastion canonicalises into the mount (``//``,
dot segments, escapes) reaches the guard like any other.

A ``BastionAdmin`` that is called at all has no running middleware in front of it (it was mounted in an
application without one): it refuses, 503 ``admin_unavailable``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..config.errors import ConfigError, ConfigIssue
from ..core.problem import problem_body

__all__ = ["BastionAdmin", "admin_mounts"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BastionAdmin:
    """``app.mount("/bastion", BastionAdmin())``: the admin API at ``/bastion/admin/v1/…`` (and Prometheus'
    ``/bastion/metrics``), served by the application's BastionMiddleware. Needs the config's ``admin:`` block
    (``token``, ``allow_ips``; ``admin.listen`` is not used)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        body = problem_body(
            503,
            "admin_unavailable",
            "The admin API is served by BastionMiddleware, which is not running here.",
        )
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"cache-control", b"no-store"),
            (b"content-length", b"%d" % len(body)),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def admin_mounts(app: Any, source: str) -> tuple[str, ...]:
    """The paths at which ``app`` (a Starlette or FastAPI application, or anything with Starlette-like
    ``routes``) mounts a :class:`BastionAdmin`. ``ConfigError`` for a mount Bastion cannot serve exactly:
    at the root, or under a path parameter."""
    found: list[str] = []

    def walk(routes: Any, prefix: str, depth: int) -> None:
        if depth > 16 or not isinstance(routes, list | tuple):
            return
        for route in routes:
            path, target = getattr(route, "path", None), getattr(route, "app", None)
            if not isinstance(path, str) or target is None:
                continue
            here = prefix + path.rstrip("/")
            if isinstance(target, BastionAdmin):
                if not here or "{" in here:
                    where = here or "/"
                    raise ConfigError(
                        [
                            ConfigIssue(
                                source,
                                None,
                                "admin",
                                f"BastionAdmin is mounted at {where}: mount it at a fixed path other "
                                "than the root, such as /bastion",
                            )
                        ]
                    )
                found.append(here)
            else:
                walk(getattr(route, "routes", None), here, depth + 1)

    walk(getattr(app, "routes", None), "", 0)
    return tuple(dict.fromkeys(found))
