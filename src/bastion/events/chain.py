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
        """Number and hash ``rows`` in order; all or nothing (a failure leaves the chain where it was)."""
        seq, prev = self._seq, self._prev
        for row in rows:
            seq += 1
            row["chain"] = self.id
            row["seq"] = seq
            row["prev_hash"] = prev
            row["hash"] = prev = row_hash(row, self._key)
        self._seq, self._prev = seq, prev


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


Anchor = tuple[int, str, float]  # seq, hash, when recorded


def _purge_records(conn: Any, key: bytes | None) -> tuple[dict[str, Anchor], dict[str, Anchor], list[str]]:
    """The anchors and heads of every ``events.purged`` record that verifies (the highest ``seq`` per chain
    wins), and the ids of records that do not (forged or edited: they excuse nothing)."""
    anchors: dict[str, Anchor] = {}
    heads: dict[str, Anchor] = {}
    forged: list[str] = []
    rows = conn.execute(select(*_COLUMNS).where(events_table.c.type == "events.purged"))
    for row in rows:
        m = row._mapping
        if m["hash"] is None or row_hash(m, key) != m["hash"] or m["seq"] != 1 or m["prev_hash"] != GENESIS:
            forged.append(m["id"])
            continue
        try:
            data = json.loads(m["data"])
        except ValueError:
            forged.append(m["id"])
            continue
        for field_name, into in (("anchors", anchors), ("heads", heads)):
            for chain_id, mark in (data.get(field_name) or {}).items():
                if not isinstance(mark, dict) or not isinstance(mark.get("seq"), int):
                    continue
                at = mark.get("at", m["time"])
                entry = (
                    mark["seq"],
                    str(mark.get("hash", "")),
                    float(at) if isinstance(at, int | float) else 0.0,
                )
                if chain_id not in into or into[chain_id][0] < entry[0]:
                    into[chain_id] = entry
    return anchors, heads, forged


def verify(engine: Engine, key: bytes | None = None) -> Verification:
    """Check every chain in the event log. Reads the table once in (chain, seq) order."""
    result = Verification()
    t = events_table.c
    with engine.connect() as conn:
        anchors, heads, _forged = _purge_records(conn, key)  # a forged record fails its own hash below
        first_chained = conn.execute(select(func.min(t.id)).where(t.chain.is_not(None))).scalar()
        result.unchained = conn.execute(
            select(func.count()).select_from(events_table).where(t.chain.is_(None))
        ).scalar_one()
        if first_chained is not None:
            # Rows from before the chain existed are older than every chained row. One that is newer was
            # not written by a Bastion writer: inserted by hand.
            for row in conn.execute(
                select(t.id, t.type).where(t.chain.is_(None), t.id > first_chained).order_by(t.id).limit(100)
            ):
                result.problems.append(
                    Problem(
                        "-",
                        None,
                        row.id,
                        "inserted",
                        "a row without a chain, newer than the chain: not written by a Bastion writer",
                    )
                )
    chain: str | None = None
    prev_seq = 0
    prev_hash = GENESIS
    last_seen: dict[str, tuple[int, str]] = {}
    broken = False
    for row in _rows(engine):
        result.events += 1
        if row["chain"] != chain:
            chain, broken = row["chain"], False
            result.chains += 1
            prev_seq, prev_hash = anchors.get(chain, (0, GENESIS, 0.0))[:2]
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
        last_seen[chain] = (row["seq"], row["hash"])
        if broken:
            continue  # one problem per chain: after a break, every later link is suspect anyway
        problem = _check(row, prev_seq, prev_hash, key, first=prev_seq == anchors.get(chain, (0,))[0])
        if problem is not None:
            result.problems.append(problem)
            broken = True
            continue
        prev_seq, prev_hash = row["seq"], row["hash"]
    # What a purge saw at the end of each chain must still be there (or purged since, by an anchor).
    for chain_id, (seq, _digest, _at) in sorted(heads.items()):
        if anchors.get(chain_id, (0, "", 0.0))[0] >= seq:
            continue
        seen = last_seen.get(chain_id)
        if seen is None or seen[0] < seq:
            have = "no rows" if seen is None else f"rows only up to seq {seen[0]}"
            result.problems.append(
                Problem(
                    chain_id,
                    seq,
                    None,
                    "deleted",
                    f"a purge saw this chain up to seq {seq}; it now has {have}: its last rows were deleted",
                )
            )
    return result


def _check(
    row: Mapping[str, Any], prev_seq: int, prev_hash: str, key: bytes | None, *, first: bool
) -> Problem | None:
    chain, seq, event_id = row["chain"], row["seq"], row["id"]
    if row_hash(row, key) != row["hash"]:
        return Problem(chain, seq, event_id, "edited", "the row does not match its hash: it was edited")
    if seq != prev_seq + 1:
        missing = f"row {prev_seq + 1}" if seq == prev_seq + 2 else f"rows {prev_seq + 1}-{seq - 1}"
        return Problem(chain, seq, event_id, "deleted", f"{missing} of the chain are missing: deleted")
    if row["prev_hash"] != prev_hash:
        if first and prev_seq:
            return Problem(
                chain,
                seq,
                event_id,
                "unanchored",
                "the first row left after a purge does not link to the purge's anchor",
            )
        return Problem(
            chain,
            seq,
            event_id,
            "reordered",
            "the row does not link to the one before it: rows were reordered or replaced",
        )
    return None


@dataclass(frozen=True, slots=True)
class Purged:
    count: int
    before: float
    anchors: dict[str, dict[str, Any]]
    event_id: str | None
    suspect: tuple[str, ...] = ()  # chains whose old rows did not verify: kept, not purged
    event: Any = None  # the events.purged Event (for the export sinks)


def purge(
    engine: Engine,
    before: float,
    *,
    key: bytes | None = None,
    now: Callable[[], float],
    batch: int = 5000,
    keep_anchors_for: float | None = None,
) -> Purged:
    """Delete events older than ``before`` and record what keeps the chains verifiable.

    Per chain the cut is contiguous: every row up to the last one older than ``before`` (event times are
    taken before rows are numbered, so a chain's times are only nearly in order). The rows to delete are
    verified first, from the chain's anchor on; a chain whose old rows do not verify is **not** purged
    (the evidence stays for ``bastion events verify``) and is named in the record. The record, an
    ``events.purged`` event (a one-row chain of its own), holds an *anchor* per chain cut (the seq and
    hash of its last deleted row), the anchors of earlier verified records carried forward, and the
    *head* of every chain (its last row now), so rows later cut from a chain's end are noticed too.

    One transaction: a crash leaves either the old rows or the new record, never neither. On PostgreSQL a
    transaction-level advisory lock serialises the purges of several gateways."""
    t = events_table.c
    stamp = now()
    keep_for = keep_anchors_for if keep_anchors_for is not None else max(2 * (stamp - before), 86400.0)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
        carried, _heads, _forged = _purge_records(conn, key)
        # Per chain: the last seq older than the cut.
        cuts = dict(
            conn.execute(
                select(t.chain, func.max(t.seq))
                .where(t.time < before, t.chain.is_not(None))
                .group_by(t.chain)
            ).all()
        )
        suspect: list[str] = []
        new_anchors: dict[str, Anchor] = {}
        for chain_id, last in sorted(cuts.items()):
            start_seq, start_hash = carried.get(chain_id, (0, GENESIS, 0.0))[:2]
            if last <= start_seq:
                continue
            ok, digest = _verify_prefix(conn, chain_id, start_seq, start_hash, last, key)
            if not ok:
                suspect.append(chain_id)
                continue
            new_anchors[chain_id] = (last, digest, stamp)
        count = 0
        for chain_id, (last, _digest, _at) in new_anchors.items():
            count += (
                conn.execute(delete(events_table).where(t.chain == chain_id, t.seq <= last)).rowcount or 0
            )
        while True:  # rows from before the chain existed, in slices
            ids = [
                r[0]
                for r in conn.execute(select(t.id).where(t.time < before, t.chain.is_(None)).limit(batch))
            ]
            if not ids:
                break
            count += conn.execute(delete(events_table).where(t.id.in_(ids))).rowcount or 0
        if not count and not suspect:
            return Purged(0, before, {}, None)
        last_rows = (
            select(t.chain, func.max(t.seq).label("seq"))
            .where(t.chain.is_not(None))
            .group_by(t.chain)
            .subquery()
        )
        heads = {
            c: {"seq": s, "hash": h}
            for c, s, h in conn.execute(
                select(t.chain, t.seq, t.hash).join(
                    last_rows, (t.chain == last_rows.c.chain) & (t.seq == last_rows.c.seq)
                )
            ).all()
        }
        merged = dict(carried)
        merged.update(new_anchors)
        anchors = {
            c: {"seq": s, "hash": h, "at": at}
            for c, (s, h, at) in sorted(merged.items())
            if c in heads or c in new_anchors or stamp - at < keep_for
        }
        from .writer import new_event, row_for

        event = new_event(
            "events.purged",
            now=stamp,
            severity="warning" if suspect else "info",
            actor="system",
            data={"count": count, "before": before, "anchors": anchors, "heads": heads, "suspect": suspect},
        )
        row = row_for(event)
        Chain(key).link([row])
        conn.execute(insert(events_table), [row])
    return Purged(count, before, anchors, event.id, tuple(suspect), event)


def _verify_prefix(
    conn: Any, chain_id: str, start_seq: int, start_hash: str, last: int, key: bytes | None
) -> tuple[bool, str]:
    """Whether rows ``start_seq+1 .. last`` of a chain are all there, intact and linked; the last hash."""
    t = events_table.c
    expected, prev = start_seq + 1, start_hash
    rows = conn.execute(
        select(*_COLUMNS).where(t.chain == chain_id, t.seq > start_seq, t.seq <= last).order_by(t.seq)
    )
    for row in rows:
        m = row._mapping
        if m["seq"] != expected or m["prev_hash"] != prev or row_hash(m, key) != m["hash"]:
            return False, ""
        expected, prev = expected + 1, m["hash"]
    return expected == last + 1, prev
