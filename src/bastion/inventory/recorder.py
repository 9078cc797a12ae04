"""The inventory's background half: every few seconds, what the gateway observed goes to the store, and an
endpoint seen for the first time anywhere becomes an ``inventory.undeclared_endpoint`` event.

"First time anywhere" is decided by the store, not by this process: the row's ``INSERT`` succeeds for
exactly one instance, which emits the event; everyone else adds to the counts. A scanner walking random
paths cannot flood the event log: at most ``max_events`` such events per flush, the rest summarised in
one (``data.more``), and the observer itself is bounded (``inventory.max_observed``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, case, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..store.schema import inventory_observed_table as observed_t
from ..store.schema import route_traffic_table as traffic_t
from . import Observer, declared

__all__ = ["InventoryRecorder", "load_inventory", "report"]

log = logging.getLogger("bastion.inventory")


class InventoryRecorder:
    def __init__(
        self,
        engine: Engine,
        observer: Observer,
        route_hits: dict[str, int],
        emit: Callable[..., None],
        *,
        interval: float = 5.0,
        max_events: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.observer = observer
        self.route_hits = route_hits  # the gateway's per-route counters (route id → requests)
        self.emit = emit
        self.interval = interval
        self.max_events = max_events
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bastion-inventory", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # a bug must not end the thread: the next flush tries again
                self.failures += 1
                log.exception("inventory flush failed")

    def flush(self) -> int:
        """Write what was observed since the last flush; returns the number of new endpoints. A store that
        does not answer keeps the observations for the next flush (merged back, still bounded)."""
        entries, overflow = self.observer.take()
        hits = self._take_hits()
        if not entries and not hits and not overflow:
            return 0
        now = self.clock()
        try:
            new = self._write(entries, hits, now)
        except SQLAlchemyError:
            self.failures += 1
            self._restore(entries, overflow, hits)
            return 0
        shown = new[: self.max_events]
        for method, template, count in shown:
            self.emit(
                "inventory.undeclared_endpoint",
                severity="warning",
                method=method,
                path=template,
                data={"method": method, "template": template, "count": count},
            )
        more = len(new) - len(shown)
        if more or overflow:
            self.emit(
                "inventory.undeclared_endpoint",
                severity="warning",
                data={"more": more, "not_recorded": overflow},
            )
        return len(new)

    def _take_hits(self) -> dict[str, int]:
        hits = self.route_hits
        taken = {route: hits.pop(route) for route in list(hits)}
        return {route: n for route, n in taken.items() if n}

    def _restore(
        self, entries: dict[tuple[str, str], list[float]], overflow: int, hits: dict[str, int]
    ) -> None:
        for key, (count, first, last) in entries.items():
            entry = self.observer.entries.get(key)
            if entry is not None:
                entry[0] += count
                entry[1] = min(entry[1], first)
            elif len(self.observer.entries) < self.observer.max_entries:
                self.observer.entries[key] = [count, first, last]
            else:
                self.observer.overflow += int(count)
        self.observer.overflow += overflow
        for route, n in hits.items():
            self.route_hits[route] = self.route_hits.get(route, 0) + n

    def _write(
        self, entries: dict[tuple[str, str], list[float]], hits: dict[str, int], now: float
    ) -> list[tuple[str, str, int]]:
        new: list[tuple[str, str, int]] = []
        with self.engine.begin() as db:
            for route, n in hits.items():
                _insert_or_add(db, traffic_t, {"route_id": route}, n, now, now)
            for (method, template), (count, first, last) in entries.items():
                key = {"method": method, "template": template}
                if _insert_or_add(db, observed_t, key, int(count), first, last):
                    new.append((method, template, int(count)))
        return new


def _insert_or_add(db: Any, table: Any, key: dict[str, str], count: int, first: float, last: float) -> bool:
    """Add to the row in the database (the arithmetic in SQL: instances writing at once lose nothing), or
    insert it (True: it is new). Two instances inserting at once: the loser's INSERT fails inside a
    savepoint, and it adds instead."""
    where = [table.c[name] == value for name, value in key.items()]
    add = (
        update(table)
        .where(*where)
        .values(
            count=table.c.count + count,
            first_seen=case((table.c.first_seen > first, first), else_=table.c.first_seen),
            last_seen=case((table.c.last_seen < last, last), else_=table.c.last_seen),
        )
    )
    if db.execute(add).rowcount:
        return False
    try:
        with db.begin_nested():
            db.execute(table.insert().values(**key, count=count, first_seen=first, last_seen=last))
        return True
    except IntegrityError:
        db.execute(add)
        return False


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
