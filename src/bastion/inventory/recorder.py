"""The inventory's background half: every few seconds, what the gateway observed goes to the store, and an
endpoint seen for the first time anywhere becomes an ``inventory.undeclared_endpoint`` event.

"First time anywhere" is decided by the store, not by this process: the row's ``INSERT`` succeeds for
exactly one instance, which emits the event; everyone else adds to the counts. A scanner walking random
paths cannot flood the event log: at most ``max_events`` such events per flush, the rest summarised in
one (``data.more``), and the observer itself is bounded (``inventory.max_observed``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, case, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..store.schema import inventory_observed_table as observed_t
from ..store.schema import route_traffic_table as traffic_t
from . import Observer

__all__ = ["InventoryRecorder"]

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
