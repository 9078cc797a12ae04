"""The batching event writer: a bounded queue in front of the database.

Theory of operation: ``emit`` is called on the request path, so it only appends to a deque (O(1), no
lock, no I/O) and, when a batch is full, sets a threading event. One writer thread wakes on that event
or every ``flush_interval``, swaps the queue out, serialises the batch to JSON (off the event loop, so
a big batch cannot stall requests) and inserts it in one transaction.

Nothing is silent: when the queue is full the event is counted, not queued, and the next flush writes an
``events.dropped`` event with the count. ``close`` flushes everything that is queued before it returns.

**The database is down: lose nothing.** A batch the database refuses is appended to a local spool file
(JSON lines, flushed and fsynced, under an exclusive ``flock`` so several processes can share it), and so
is every batch after it, without waiting for the database. With backoff (up to 5 s) the writer probes:
it inserts the spooled events — ``ON CONFLICT (id) DO NOTHING``, so a spool replayed twice (a crash
between the insert and the truncation) writes nothing twice — then truncates the spool and resumes. A
spool left by a crash or a shutdown is replayed when a writer starts. Event ids are ULIDs made here, so
the spool needs no other bookkeeping.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy import Engine, insert

from ..core.events import Event, make_event_id
from ..store.schema import events_table
from .chain import Chain

__all__ = ["EventWriter", "new_event", "row_for"]

log = logging.getLogger("bastion.events")


class _Ids:
    """Monotonic ULIDs within this process: in the same millisecond the random part is incremented,
    so events sort in the order they were created (a ULID alone only orders by millisecond)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = -1
        self._rand = 0

    def next(self, ms: int) -> str:
        with self._lock:
            if ms == self._ms:
                self._rand = (self._rand + 1) & ((1 << 80) - 1)
            else:
                self._ms = ms
                # leave headroom so increments within one millisecond never wrap
                self._rand = int.from_bytes(os.urandom(10), "big") >> 1
            return make_event_id(ms, self._rand.to_bytes(10, "big"))


_ids = _Ids()


def new_event(type: str, *, now: float | None = None, **fields: object) -> Event:
    """Build an event with a fresh ULID (the runtime's source of time and randomness)."""
    t = time.time() if now is None else now
    return Event(id=_ids.next(int(t * 1000)), time=t, type=type, **fields)  # type: ignore[arg-type]


class EventWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
        dead_letter_path: str | None = None,
        chain_key: bytes | None = None,
    ) -> None:
        self._engine = engine
        self.chain = Chain(chain_key)  # this writer's hash chain (events/chain.py)
        self._flush_lock = threading.Lock()
        self._queue: deque[Event] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.dropped = 0  # events refused because the queue was full (since start)
        self._dropped_reported = 0
        self.written = 0
        self.failures = 0
        self.dead_lettered = 0
        self._database_down = False
        self._spooled = False
        self._backoff = 0.05
        self._next_probe = 0.0
        self._clock_mono = time.monotonic
        self.dead_letter_path = dead_letter_path or _default_dead_letter(engine)

    # -- the EventSink port ------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        if len(self._queue) >= self._queue_size:
            self.dropped += 1
            return
        self._queue.append(event)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bastion-event-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after writing everything queued (or until ``timeout``)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None
        else:
            self.flush()

    def flush(self) -> int:
        """Write what is queued now, in batches; returns the number written. Serialised by a lock (never
        taken on the request path): rows are numbered into the hash chain in the order they are written."""
        total = 0
        with self._flush_lock:
            while True:
                batch = self._take()
                if not batch:
                    return total
                self._write(batch)
                total += len(batch)

    def _take(self) -> list[Event]:
        batch: list[Event] = []
        q = self._queue
        while q and len(batch) < self._batch_size:
            batch.append(q.popleft())
        dropped = self.dropped  # read once: the request path may be counting more right now
        pending_drops = dropped - self._dropped_reported
        if pending_drops:
            self._dropped_reported = dropped
            batch.append(
                new_event(
                    "events.dropped",
                    now=self._clock(),
                    severity="error",
                    actor="system",
                    reason="event_queue_full",
                    data={"count": pending_drops, "queue_size": self._queue_size},
                )
            )
        return batch

    def _write(self, batch: list[Event]) -> None:
        rows = [row_for(e) for e in batch]
        self.chain.link(rows)  # before the insert or the spool: a spooled row keeps its place in the chain
        if self._database_down and (
            self._stopping or self._clock_mono() < self._next_probe or not self._replay()
        ):
            self._spool(rows)
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(events_table), rows)
            self.written += len(rows)
        except Exception as exc:  # the database is down, locked or full: keep the batch in the spool
            self.failures += 1
            log.error("event batch of %d could not be written (%s); spooled", len(rows), type(exc).__name__)
            self._database_down = True
            self._backoff = 0.05
            self._next_probe = self._clock_mono() + self._backoff
            self._spool(rows)

    def _spool(self, rows: list[dict[str, object]]) -> None:
        """Append to the spool file; the events reach the database when it answers again."""
        path = self.dead_letter_path
        text = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in rows)
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            self.dead_lettered += len(rows)
            self._spooled = True
        except OSError as exc:
            log.error(
                "database unavailable and %s is not writable (%s): %d events lost",
                path,
                exc.strerror,
                len(rows),
            )

    # The name of the counter predates the spool: events held in the file, waiting for the database.
    _dead_letter = _spool

    def _replay(self) -> bool:
        """Insert what the spool holds; True when it is empty afterwards (the database is back)."""
        path = self.dead_letter_path
        try:
            fh = open(path, "r+", encoding="utf-8")  # noqa: SIM115 - held across the lock
        except FileNotFoundError:
            self._database_down = False
            return True
        except OSError:
            return False
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            rows = [json.loads(line) for line in fh if line.strip()]
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                with self._engine.begin() as conn:
                    conn.execute(_insert_ignoring_duplicates(self._engine), chunk)
                self.written += len(chunk)
            fh.seek(0)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
        except Exception as exc:  # still down (or a line that is not ours): keep the spool, back off
            self.failures += 1
            self._backoff = min(self._backoff * 2, 5.0)
            self._next_probe = self._clock_mono() + self._backoff
            log.error("spooled events could not be written yet (%s)", type(exc).__name__)
            return False
        finally:
            fh.close()
        with contextlib.suppress(OSError):
            if os.path.getsize(path) == 0:
                os.unlink(path)
        self._database_down = False
        self._spooled = False
        log.info("spooled events written (%d)", len(rows))
        return True

    def _run(self) -> None:
        if os.path.exists(self.dead_letter_path):  # left by a crash or a shutdown: replay it first
            self._database_down = True
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush()
                if self._database_down and not self._stopping and self._clock_mono() >= self._next_probe:
                    self._replay()  # nothing new to write, but the spool waits for the database
            except Exception:  # never let the writer die silently
                log.exception("event writer failed")
            if self._stopping:
                self.flush()
                return


def _default_dead_letter(engine: Engine) -> str:
    db = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    base = os.path.dirname(os.path.abspath(db)) if db and db != ":memory:" else os.getcwd()
    return os.path.join(base, "bastion-events.unwritten.jsonl")


def _insert_ignoring_duplicates(engine: Engine) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` in the engine's dialect (SQLite and PostgreSQL): a spooled row
    already written (same id, same place in its chain) is skipped, never an error that blocks the spool."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(events_table).on_conflict_do_nothing()  # id, or (chain, seq): a row already written
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(events_table).on_conflict_do_nothing()


def row_for(e: Event) -> dict[str, Any]:
    """The events-table row of an event (``data`` as compact JSON text), without its chain columns."""
    row = asdict(e)
    row["data"] = json.dumps(dict(e.data), separators=(",", ":"), default=str)
    return row
