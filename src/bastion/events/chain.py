"""Tamper evidence for the event log: each writer's events form a hash chain.

Theory of operation. Every :class:`~bastion.events.writer.EventWriter` is a *chain*: it takes a fresh
ULID as the chain id, numbers its rows 1, 2, 3… (``seq``) in the order it writes them, and stores in
each row the hash of the one before (``prev_hash``; 64 zeros for the first) and its own hash over every
column of the row plus ``prev_hash``. The hash is SHA-256, or HMAC-SHA-256 with ``events.chain_key``:
without the key, someone who can write to the database could edit a row and recompute every hash after
it; with it, they cannot.

:func:`verify` reads each chain in order and names the first row where it breaks:

- a row whose content was **edited** no longer matches its hash;
- a **deleted** row leaves a gap in ``seq`` (and the next row's ``prev_hash`` points at nothing);
- rows **reordered** (``seq`` or ids swapped) break the links or the hashes.

Retention deletes old rows on purpose, so a purge (:func:`purge`) first records, for every chain it
cuts, an *anchor*: the ``seq`` and hash of the last row it deletes. The anchors travel in an
``events.purged`` event (itself a one-row chain) and are carried forward by every later purge, so a
chain that starts at ``seq`` 41 is fine exactly when an anchor says 40 rows went, with the hash row 41
points to. What a chain cannot show is rows cut from its *end* (a writer that stopped looks the same):
export the events to a sink (docs/exports.md) to keep a copy the database's writers cannot touch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from ..core.events import make_event_id
from ..store.schema import events_table

__all__ = ["Chain", "Problem", "Verification", "purge", "row_hash", "verify"]

GENESIS = "0" * 64
_FIELDS = (
    "id",
    "time",
    "type",
    "severity",
    "request_id",
    "route",
    "method",
    "path",
    "source_ip",
    "actor",
    "resource",
    "reason",
    "data",
    "chain",
    "seq",
    "prev_hash",
)


def row_hash(row: Mapping[str, Any], key: bytes | None) -> str:
    """The hash of one stored row (``data`` as its stored JSON text), hex."""
    material = json.dumps([row.get(f) for f in _FIELDS], separators=(",", ":"), ensure_ascii=False).encode()
    if key is None:
        return hashlib.sha256(material).hexdigest()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def _new_chain_id() -> str:
    """A ULID: chains sort by when their writer started."""
    return make_event_id(int(time.time() * 1000), os.urandom(10))


class Chain:
    """One writer's chain: numbers rows and links them. Only the writer thread calls :meth:`link`."""

    def __init__(self, key: bytes | None = None, chain_id: str | None = None) -> None:
        self.id = chain_id or _new_chain_id()
        self._key = key
        self._seq = 0
        self._prev = GENESIS

    def link(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._seq += 1
            row["chain"] = self.id
            row["seq"] = self._seq
            row["prev_hash"] = self._prev
            row["hash"] = self._prev = row_hash(row, self._key)


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    seq: int | None
    event_id: str | None
    kind: str  # edited, deleted, reordered, unanchored, forged_anchor
    detail: str

    def __str__(self) -> str:
        where = f"chain {self.chain}" + (f" seq {self.seq}" if self.seq is not None else "")
        return f"{where}" + (f" (event {self.event_id})" if self.event_id else "") + f": {self.detail}"


@dataclass(slots=True)
class Verification:
    events: int = 0
    chains: int = 0
    unchained: int = 0  # rows written before the chain existed (schema revision 0005 and older)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_COLUMNS = [events_table.c[name] for name in (*_FIELDS, "hash")]


def _rows(engine: Engine) -> Iterator[Mapping[str, Any]]:
    stmt = (
        select(*_COLUMNS)
        .where(events_table.c.chain.is_not(None))
        .order_by(events_table.c.chain, events_table.c.seq)
        .execution_options(yield_per=2000)
    )
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            yield row._mapping


def _anchors_in(row: Mapping[str, Any], into: dict[str, tuple[int, str]]) -> None:
    """Merge the anchors an ``events.purged`` row carries (the highest ``seq`` per chain wins)."""
    try:
        anchors = json.loads(row["data"]).get("anchors") or {}
    except (ValueError, AttributeError):
        return
    for chain_id, anchor in anchors.items():
        if not isinstance(anchor, dict) or not isinstance(anchor.get("seq"), int):
            continue
        seq, digest = anchor["seq"], str(anchor.get("hash", ""))
        if chain_id not in into or into[chain_id][0] < seq:
            into[chain_id] = (seq, digest)


def verify(engine: Engine, key: bytes | None = None) -> Verification:
    """Check every chain in the event log. Reads the table once in (chain, seq) order."""
    result = Verification()
    with engine.connect() as conn:
        result.unchained = conn.execute(
            select(func.count()).select_from(events_table).where(events_table.c.chain.is_(None))
        ).scalar_one()
    # First pass: the anchors (purge events are few; they are verified with their own chain below).
    anchors: dict[str, tuple[int, str]] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(*_COLUMNS).where(events_table.c.type == "events.purged")):
            # Only a record that verifies may excuse missing rows (a forged one is reported below).
            if row.hash is not None and row_hash(row._mapping, key) == row.hash:
                _anchors_in(row._mapping, anchors)
    chain: str | None = None
    prev_seq = 0
    prev_hash = GENESIS
    prev_id = ""
    broken = False
    for row in _rows(engine):
        result.events += 1
        if row["chain"] != chain:
            chain, broken = row["chain"], False
            result.chains += 1
            prev_seq, prev_hash = anchors.get(chain, (0, GENESIS))
            prev_id = ""
            if row["seq"] != prev_seq + 1 and prev_seq == 0:
                result.problems.append(
                    Problem(
                        chain,
                        row["seq"],
                        row["id"],
                        "deleted",
                        f"the chain starts at seq {row['seq']}: rows 1-{row['seq'] - 1} were deleted "
                        "(no purge recorded them)",
                    )
                )
                broken = True
        if broken:
            continue  # one problem per chain: after a break, every later link is suspect anyway
        problem = _check(row, prev_seq, prev_hash, prev_id, key)
        if problem is not None:
            result.problems.append(problem)
            broken = True
            continue
        prev_seq, prev_hash, prev_id = row["seq"], row["hash"], row["id"]
    return result


def _check(
    row: Mapping[str, Any], prev_seq: int, prev_hash: str, prev_id: str, key: bytes | None
) -> Problem | None:
    chain, seq, event_id = row["chain"], row["seq"], row["id"]
    if row_hash(row, key) != row["hash"]:
        return Problem(chain, seq, event_id, "edited", "the row does not match its hash: it was edited")
    if seq != prev_seq + 1:
        missing = f"row {prev_seq + 1}" if seq == prev_seq + 2 else f"rows {prev_seq + 1}-{seq - 1}"
        return Problem(chain, seq, event_id, "deleted", f"{missing} of the chain are missing: deleted")
    if row["prev_hash"] != prev_hash:
        kind = "unanchored" if prev_id == "" else "reordered"
        detail = (
            "the first row left after a purge does not link to the purge's anchor"
            if kind == "unanchored"
            else "the row does not link to the one before it: rows were reordered or replaced"
        )
        return Problem(chain, seq, event_id, kind, detail)
    if prev_id and event_id <= prev_id:
        return Problem(chain, seq, event_id, "reordered", "event ids go backwards: rows were reordered")
    return None


@dataclass(frozen=True, slots=True)
class Purged:
    count: int
    before: float
    anchors: dict[str, dict[str, Any]]
    event_id: str | None


def purge(
    engine: Engine,
    before: float,
    *,
    key: bytes | None = None,
    now: Callable[[], float],
    batch: int = 5000,
) -> Purged:
    """Delete events older than ``before`` and record the anchors that keep the chains verifiable.

    One transaction: the anchors are read, the rows deleted and the ``events.purged`` event inserted
    together, so a crash leaves either the old rows or the new anchors, never neither. On PostgreSQL a
    transaction-level advisory lock serialises purges of several gateways."""
    t = events_table.c
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
        count = conn.execute(select(func.count()).where(t.time < before)).scalar_one()
        if not count:
            return Purged(0, before, {}, None)
        carried: dict[str, tuple[int, str]] = {}
        for row in conn.execute(select(t.data).where(t.type == "events.purged")):
            _anchors_in(row._mapping, carried)
        # The last deleted row of each chain the purge cuts: its seq and hash.
        last = (
            select(t.chain, func.max(t.seq).label("seq"))
            .where(t.time < before, t.chain.is_not(None))
            .group_by(t.chain)
            .subquery()
        )
        cut = conn.execute(
            select(t.chain, t.seq, t.hash).join(last, (t.chain == last.c.chain) & (t.seq == last.c.seq))
        ).all()
        for chain_id, seq, digest in cut:
            if chain_id not in carried or carried[chain_id][0] < seq:
                carried[chain_id] = (seq, digest)
        while True:  # in slices, so one statement never holds millions of rows
            ids = [r[0] for r in conn.execute(select(t.id).where(t.time < before).limit(batch))]
            if not ids:
                break
            conn.execute(delete(events_table).where(t.id.in_(ids)))
        # Anchors are needed only while their chain still has rows.
        alive = {r[0] for r in conn.execute(select(t.chain).where(t.chain.is_not(None)).distinct())}
        anchors = {c: {"seq": s, "hash": h} for c, (s, h) in sorted(carried.items()) if c in alive}
        from .writer import new_event, row_for

        event = new_event(
            "events.purged",
            now=now(),
            severity="info",
            actor="system",
            data={"count": count, "before": before, "anchors": anchors},
        )
        row = row_for(event)
        Chain(key).link([row])
        conn.execute(insert(events_table), [row])
    return Purged(count, before, anchors, event.id)
