"""Exporting the event log: every event a Monitor API filter matches, as JSON Lines (one event document per
line, https://jsonlines.org), oldest first.

An export is a snapshot: it stops at the newest event that existed when it began, so events written while
it runs (its own ``events.exported`` among them) are not in it. It reads in pages of ``PAGE`` events and
stops after ``limit``; an export that returned exactly ``limit`` events continues with ``after=<the last
id>``. The lines are exactly the documents ``GET /admin/v1/events`` returns: an export shows nothing the
event log does not hold.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine

from .query import EventFilter, QueryError, events_after, newest_id

__all__ = ["MAX_EXPORT", "EventExport", "export_headers"]

PAGE = 1000
MAX_EXPORT = 1_000_000
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


class EventExport:
    """One export. Iterate :meth:`lines`; afterwards ``count`` says how many events it held and
    ``truncated`` whether more matched beyond ``limit``."""

    def __init__(self, engine: Engine, flt: EventFilter, *, after: str = "", limit: int = 100_000) -> None:
        if after and not _ULID.fullmatch(after):
            raise QueryError("after must be an event id")
        if not 1 <= limit <= MAX_EXPORT:
            raise QueryError(f"limit must be between 1 and {MAX_EXPORT}")
        self.engine = engine
        self.flt = flt
        self.after = after
        self.limit = limit
        self.count = 0
        self.truncated = False
        self.finished = False  # False after the reader went away midway

    def lines(self) -> Iterator[bytes]:
        """The export in chunks of up to ``PAGE`` lines (a blocking iterator: run it off the event loop)."""
        up_to = newest_id(self.engine)
        if not up_to:
            self.finished = True
            return
        after = self.after
        while self.count < self.limit:
            batch = events_after(
                self.engine, self.flt, after, up_to=up_to, limit=min(PAGE, self.limit - self.count)
            )
            if not batch:
                self.finished = True
                return
            self.count += len(batch)
            after = batch[-1]["id"]
            yield b"".join(
                json.dumps(e, separators=(",", ":"), ensure_ascii=False, default=str).encode() + b"\n"
                for e in batch
            )
        self.truncated = bool(events_after(self.engine, self.flt, after, up_to=up_to, limit=1))
        self.finished = True

    def stream(self, emit: Callable[..., None], filters: dict[str, str], **fields: Any) -> Iterator[bytes]:
        """:meth:`lines`, then an ``events.exported`` event saying who exported what and how much (also
        when the reader went away midway)."""
        try:
            yield from self.lines()
        finally:
            emit(
                "events.exported",
                severity="notice",
                data={
                    "count": self.count,
                    "truncated": self.truncated,
                    "complete": self.finished,
                    "filters": filters,
                    "limit": self.limit,
                },
                **fields,
            )


def export_headers(now: float) -> dict[str, str]:
    """The HTTP headers of an export: a download, never cached."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return {
        "cache-control": "no-store",
        "content-disposition": f'attachment; filename="bastion-events-{stamp}.jsonl"',
        "x-content-type-options": "nosniff",
    }
