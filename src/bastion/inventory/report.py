"""The inventory report: declared routes with their traffic, endpoints called that no route declares, and
unused routes — what ``bastion inventory`` and ``GET /admin/v1/inventory`` show, read from the store the
recorder writes."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from sqlalchemy import Engine, select

from ..store.schema import inventory_observed_table as observed_t
from ..store.schema import route_traffic_table as traffic_t
from . import declared

__all__ = ["load_inventory", "report"]


def load_inventory(
    engine: Engine, *, limit: int = 10_000
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """What the store knows: observed undeclared endpoints (most requested first) and route traffic."""
    observed: list[dict[str, Any]] = []
    traffic: dict[str, dict[str, Any]] = {}
    with contextlib.closing(engine.connect()) as db:
        for row in db.execute(select(observed_t).order_by(observed_t.c.count.desc()).limit(limit)):
            observed.append(
                {
                    "method": row.method,
                    "path": row.template,
                    "count": row.count,
                    "first_seen": row.first_seen,
                    "last_seen": row.last_seen,
                }
            )
        for row in db.execute(select(traffic_t)):
            traffic[row.route_id] = {
                "count": row.count,
                "first_seen": row.first_seen,
                "last_seen": row.last_seen,
            }
    return observed, traffic


def report(services: Any, engine: Engine, *, unused_after: float, now: float) -> dict[str, Any]:
    """Declared, observed-undeclared and unused endpoints: what ``bastion inventory`` and
    ``GET /admin/v1/inventory`` show."""
    endpoints = declared(services)
    observed, traffic = load_inventory(engine)
    matchers = [(_template_regex(e.path), e.methods) for e in endpoints]
    rows = []
    unused = []
    for endpoint in endpoints:
        seen = traffic.get(endpoint.route_id)
        row = endpoint.as_dict() | {
            "requests": seen["count"] if seen else 0,
            "last_seen": seen["last_seen"] if seen else None,
        }
        rows.append(row)
        if seen is None or seen["last_seen"] < now - unused_after:
            unused.append(row)
    undeclared = []
    for entry in observed:
        path = entry["path"]
        method = entry["method"]
        if not any(
            (method in methods or (method == "HEAD" and "GET" in methods)) and m.fullmatch(path)
            for m, methods in matchers
        ):
            # (a match: declared since it was observed)
            undeclared.append(entry)
    return {
        "declared": rows,
        "undeclared": undeclared,
        "unused": unused,
        "unused_after_seconds": unused_after,
    }


def _template_regex(template: str) -> re.Pattern[str]:
    out, last = [], 0
    for m in re.finditer(r"\{([^}:]+)(:path)?\}", template):
        out.append(re.escape(template[last : m.start()]))
        out.append(".*" if m.group(2) else "[^/]+")
        last = m.end()
    out.append(re.escape(template[last:]))
    return re.compile("".join(out))
