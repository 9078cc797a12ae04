"""The API inventory (P2): what the gateway declares, what clients actually call, and the difference.

* **Declared**: every route of the config (and of the services' OpenAPI documents), with its auth, scopes
  and limits — :func:`declared`.
* **Observed, undeclared**: requests that matched no route (404) or no method of their route (405),
  recorded by *templated* path — ``/v1/users/123`` and ``/v1/users/456`` are one endpoint,
  ``/v1/users/{id}`` (:func:`template_path`). The first time one is seen anywhere it is an event
  (``inventory.undeclared_endpoint``): an endpoint nobody declared is either shadow API or a probe.
* **Unused**: declared routes with no traffic for ``inventory.unused_after`` (default 30 days).

Per request the gateway does one dictionary update (:class:`Observer`); everything else — the store,
the events — happens in the recorder's background thread (:mod:`bastion.inventory.recorder`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Observer", "declared", "template_path"]

_NUMBER = re.compile(r"[0-9]+|[0-9]+\.[0-9]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{16,}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-=.~]{20,}")
_PREFIXED_ID = re.compile(r"[A-Za-z]{1,8}[_-][A-Za-z0-9]{8,}")  # cus_Nffrfe…, ord-12ab34cd…
_MAX_SEGMENTS = 16
_MAX_SEGMENT = 64


def _is_id(segment: str) -> bool:
    if _NUMBER.fullmatch(segment) or _UUID.fullmatch(segment) or _HEX.fullmatch(segment):
        return True
    if _PREFIXED_ID.fullmatch(segment) and any(c.isdigit() for c in segment):
        return True
    # a long opaque token: letters and digits mixed (not a long word like "notifications")
    return bool(_TOKEN.fullmatch(segment)) and any(c.isdigit() for c in segment)


def template_path(path: str) -> str:
    """A canonical path as an endpoint template: identifier-like segments (numbers, UUIDs, long hex, opaque
    tokens, ``prefix_1234abcd`` ids) fold to ``{id}``. Bounded: at most 16 segments (the rest become
    ``{…}``) and segments cut to 64 characters, so a scanner cannot grow the inventory with long paths."""
    parts = path.split("/")
    out = []
    for index, segment in enumerate(parts):
        if index > _MAX_SEGMENTS:
            out.append("{…}")
            break
        if segment and _is_id(segment):
            out.append("{id}")
        else:
            out.append(segment[:_MAX_SEGMENT])
    return "/".join(out)


class Observer:
    """Undeclared endpoints seen by this process since the recorder last collected them. Bounded: past
    ``max_entries`` distinct endpoints, further ones are only counted (``overflow``)."""

    __slots__ = ("entries", "max_entries", "overflow")

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self.entries: dict[tuple[str, str], list[float]] = {}  # (method, template) → [count, first, last]
        self.overflow = 0

    def observe(self, method: str, path: str, now: float) -> None:
        key = (method if len(method) <= 16 else method[:16], template_path(path))
        entry = self.entries.get(key)
        if entry is not None:
            entry[0] += 1
            entry[2] = now
        elif len(self.entries) < self.max_entries:
            self.entries[key] = [1, now, now]
        else:
            self.overflow += 1

    def take(self) -> tuple[dict[tuple[str, str], list[float]], int]:
        entries, overflow = self.entries, self.overflow
        self.entries, self.overflow = {}, 0
        return entries, overflow


@dataclass(frozen=True)
class DeclaredEndpoint:
    route_id: str
    service: str
    methods: tuple[str, ...]
    path: str
    auth: str | list[str]
    scopes: tuple[str, ...]
    rate_limit: tuple[str, ...]
    from_openapi: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route_id,
            "service": self.service,
            "methods": list(self.methods),
            "path": self.path,
            "auth": self.auth,
            "scopes": list(self.scopes),
            "rate_limit": list(self.rate_limit),
            "from_openapi": self.from_openapi,
        }


def declared(services: Iterable[Any]) -> list[DeclaredEndpoint]:
    """Every route of the config (``ServiceSettings``), generated ones included; ``route_id`` is the same
    id the gateway gives the route (``service:METHODS path``)."""
    out = []
    for svc in services:
        generated = svc.openapi is not None and svc.route_defaults is not None
        for rs in svc.routes:
            methods = tuple(sorted(rs.methods))
            out.append(
                DeclaredEndpoint(
                    route_id=f"{svc.name}:{' '.join(methods)} {rs.path}",
                    service=svc.name,
                    methods=methods,
                    path=rs.path,
                    auth=rs.auth,
                    scopes=tuple(rs.scopes),
                    rate_limit=tuple(limit.text for limit in rs.rate_limit),
                    from_openapi=generated,
                )
            )
    return out
