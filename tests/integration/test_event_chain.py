"""Tamper evidence: the event log's hash chains catch an edited, deleted or reordered row — and say where —
while retention's purge keeps them verifiable. Runs on SQLite and on the real PostgreSQL.

Attacks are made the way an intruder with database access would: plain SQL on the events table.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select, text, update

from bastion.events.chain import purge as purge_events
from bastion.events.chain import row_hash, verify
from bastion.events.writer import EventWriter, new_event
from bastion.store.database import open_database
from bastion.store.schema import events_table

from ..support import config_text, scratch_postgres
from .test_cli import cli, write

T0 = 1_700_000_000.0
KEY = b"chain-key-for-tests"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_database(f"sqlite:///{tmp_path / 'events.db'}")
    yield eng
    eng.dispose()


def fill(
    engine: Engine, n: int = 20, *, key: bytes | None = None, start: float = T0, step: float = 60.0
) -> list[str]:
    """``n`` events from one writer (one chain), one a minute from ``start``; their ids in order."""
    writer = EventWriter(engine, flush_interval=60.0, batch_size=7, chain_key=key)  # several batches
    ids = []
    for i in range(n):
        event = new_event("request.denied", now=start + i * step, reason="ip_denied", source_ip=f"10.0.0.{i}")
        ids.append(event.id)
        writer.emit(event)
    writer.close()
    return ids


def rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(events_table).order_by(events_table.c.seq))]


class TestIntact:
    def test_a_fresh_log_verifies(self, engine: Engine) -> None:
        fill(engine, 20)
        fill(engine, 5)  # a second writer: its own chain
        result = verify(engine)
        assert result.ok, result.problems
        assert (result.events, result.chains, result.unchained) == (25, 2, 0)

    def test_each_row_links_to_the_one_before(self, engine: Engine) -> None:
        fill(engine, 4)
        got = rows(engine)
        assert [r["seq"] for r in got] == [1, 2, 3, 4]
        assert got[0]["prev_hash"] == "0" * 64
        assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(got))
        assert all(row_hash(r, None) == r["hash"] for r in got)

    def test_rows_from_before_the_chain_are_counted_not_failed(self, engine: Engine) -> None:
        fill(engine, 3)
        with engine.begin() as conn:
            conn.execute(
                events_table.insert().values(
                    id="01H00000000000000000000000",
                    time=T0,
                    type="request.denied",
                    severity="warning",
                    data="{}",
                )
            )
        result = verify(engine)
        assert result.ok and result.unchained == 1


class TestTampering:
    def test_an_edited_row_is_named(self, engine: Engine) -> None:
        ids = fill(engine, 20)
        with engine.begin() as conn:
            conn.execute(
                update(events_table).where(events_table.c.id == ids[7]).values(source_ip="192.0.2.1")
            )
        result = verify(engine)
        assert not result.ok
        [problem] = result.problems
        assert (problem.kind, problem.seq, problem.event_id) == ("edited", 8, ids[7])

    def test_an_edited_data_field_is_caught(self, engine: Engine) -> None:
        ids = fill(engine, 5)
        with engine.begin() as conn:
            conn.execute(
                update(events_table).where(events_table.c.id == ids[2]).values(data='{"status":200}')
            )
        [problem] = verify(engine).problems
        assert problem.kind == "edited" and problem.event_id == ids[2]

    def test_a_deleted_row_is_named(self, engine: Engine) -> None:
        ids = fill(engine, 20)
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.id == ids[11]))
        [problem] = verify(engine).problems
        assert problem.kind == "deleted"
        assert problem.seq == 13 and "row 12" in problem.detail

    def test_deleted_first_rows_are_caught(self, engine: Engine) -> None:
        ids = fill(engine, 10)
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.id.in_(ids[:3])))
        [problem] = verify(engine).problems
        assert problem.kind == "deleted" and problem.seq == 4

    def test_swapped_rows_are_caught(self, engine: Engine) -> None:
        fill(engine, 10)
        with engine.begin() as conn:  # swap seq 4 and 5 through a free value (the pair is unique)
            conn.execute(update(events_table).where(events_table.c.seq == 4).values(seq=-1))
            conn.execute(update(events_table).where(events_table.c.seq == 5).values(seq=4))
            conn.execute(update(events_table).where(events_table.c.seq == -1).values(seq=5))
        [problem] = verify(engine).problems
        assert problem.seq == 4 and problem.kind in ("edited", "reordered")

    def test_a_rehashed_edit_is_caught_with_the_chain_key(self, engine: Engine) -> None:
        """An intruder who edits a row and recomputes every later hash (without the key) passes an unkeyed
        check but not the keyed one."""
        ids = fill(engine, 6, key=KEY)
        got = rows(engine)
        got[2]["source_ip"] = "192.0.2.9"
        prev = got[1]["hash"]
        with engine.begin() as conn:
            for r in got[2:]:
                r["prev_hash"] = prev
                r["hash"] = prev = row_hash(r, None)  # the intruder does not have the key
                conn.execute(update(events_table).where(events_table.c.id == r["id"]).values(**r))
        assert verify(engine, None).problems  # the first rows were keyed: an unkeyed check fails at once
        [problem] = verify(engine, KEY).problems
        assert problem.kind == "edited" and problem.event_id == ids[2]

    def test_the_wrong_key_fails_everything_from_the_first_row(self, engine: Engine) -> None:
        fill(engine, 3, key=KEY)
        [problem] = verify(engine, b"another key").problems
        assert problem.seq == 1


class TestPurge:
    def test_purge_keeps_the_chain_verifiable(self, engine: Engine) -> None:
        fill(engine, 20)  # T0 .. T0+19 min
        done = purge_events(engine, T0 + 10 * 60, now=lambda: T0 + 3600)
        assert done.count == 10
        [(_chain_id, anchor)] = done.anchors.items()
        assert anchor["seq"] == 10
        result = verify(engine)
        assert result.ok, result.problems
        assert result.events == 11  # ten left and the events.purged record

    def test_deleting_the_first_row_left_after_a_purge_is_caught(self, engine: Engine) -> None:
        ids = fill(engine, 20)
        purge_events(engine, T0 + 10 * 60, now=lambda: T0 + 3600)
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.id == ids[10]))
        [problem] = verify(engine).problems
        assert problem.kind == "deleted" and problem.seq == 12

    def test_anchors_are_carried_by_later_purges(self, engine: Engine) -> None:
        fill(engine, 30)
        purge_events(engine, T0 + 5 * 60, now=lambda: T0 + 3600)
        second = purge_events(engine, T0 + 3601, now=lambda: T0 + 7200)  # also deletes the first purge record
        assert second.count == 25 + 1
        with engine.connect() as conn:
            purges = conn.execute(
                select(events_table.c.id).where(events_table.c.type == "events.purged")
            ).all()
        assert len(purges) == 1  # only the second's record is left
        result = verify(engine)
        assert result.ok, result.problems

    def test_a_forged_purge_record_is_caught_with_the_chain_key(self, engine: Engine) -> None:
        """Deleting the first rows and forging an events.purged record to excuse them: the forgery fails its
        own hash, so it excuses nothing."""
        ids = fill(engine, 10, key=KEY)
        fifth = rows(engine)[4]
        fake = {
            "id": "01J00000000000000000000000",
            "time": T0,
            "type": "events.purged",
            "severity": "info",
            "actor": "system",
            "data": json.dumps({"anchors": {fifth["chain"]: {"seq": 4, "hash": fifth["prev_hash"]}}}),
            "chain": "01J00000000000000000000001",
            "seq": 1,
            "prev_hash": "0" * 64,
        }
        fake["hash"] = row_hash(fake, None)  # the intruder does not have the key
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.id.in_(ids[:4])))
            conn.execute(events_table.insert().values(**fake))
        assert verify(engine, None).problems  # keyed rows fail an unkeyed check anyway
        problems = {(p.kind, p.event_id) for p in verify(engine, KEY).problems}
        assert problems == {("edited", fake["id"]), ("deleted", ids[4])}

    def test_nothing_to_purge_writes_nothing(self, engine: Engine) -> None:
        fill(engine, 3)
        assert purge_events(engine, T0 - 1, now=time.time).count == 0
        assert len(rows(engine)) == 3


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with scratch_postgres("bastion_chain") as eng:
        yield eng


class TestPostgres:
    def test_chain_and_purge_on_postgres(self, pg_engine: Engine) -> None:
        ids = fill(pg_engine, 12, key=KEY)
        purge_events(pg_engine, T0 + 3 * 60, key=KEY, now=lambda: T0 + 3600)
        assert verify(pg_engine, KEY).ok
        with pg_engine.begin() as conn:
            conn.execute(
                update(events_table).where(events_table.c.id == ids[8]).values(reason="rate_limited")
            )
        [problem] = verify(pg_engine, KEY).problems
        assert problem.event_id == ids[8] and problem.kind == "edited"


class TestCli:
    def config(self, tmp_path: Path, *, key: bool = False) -> tuple[Path, Path]:
        db = tmp_path / "bastion.db"
        extra = "events:\n  chain_key: ${env:CHAIN_KEY}\n" if key else ""
        return write(tmp_path / "bastion.yaml", config_text(9, db, extra=extra)), db

    def test_verify_ok_and_tampered(self, tmp_path: Path) -> None:
        cfg, db = self.config(tmp_path, key=True)
        env = {"CHAIN_KEY": KEY.decode(), "BASTION_CONFIG": None, "BASTION_ADMIN_TOKEN": "t" * 32}
        engine = open_database(f"sqlite:///{db}")
        ids = fill(engine, 5, key=KEY)
        result = cli("events", "verify", "-c", str(cfg), env=env)
        assert result.exit_code == 0, result.output
        assert "OK: 5 event(s) in 1 chain(s), HMAC-SHA-256" in result.stdout
        with engine.begin() as conn:
            conn.execute(text("UPDATE events SET source_ip = '203.0.113.5' WHERE id = :id"), {"id": ids[3]})
        engine.dispose()
        result = cli("events", "verify", "-c", str(cfg), env=env)
        assert result.exit_code == 1
        assert "TAMPERED edited: chain" in result.stderr and f"seq 4 (event {ids[3]})" in result.stderr
        doc = json.loads(cli("events", "verify", "-c", str(cfg), "--json", env=env).stdout)
        assert doc["ok"] is False and doc["problems"][0]["event_id"] == ids[3] and doc["keyed"] is True

    def test_purge_command(self, tmp_path: Path) -> None:
        cfg, db = self.config(tmp_path)
        engine = open_database(f"sqlite:///{db}")
        now = time.time()
        fill(engine, 10, start=now - 10 * 86400 + 3600, step=86400)  # one a day, the last 23 h ago
        engine.dispose()
        result = cli("events", "purge", "-c", str(cfg), "--older-than", "5d")
        assert result.exit_code == 0, result.output
        assert "purged 5 event(s)" in result.stdout
        assert cli("events", "verify", "-c", str(cfg)).exit_code == 0

    def test_purge_rejects_a_bad_duration(self, tmp_path: Path) -> None:
        cfg, _ = self.config(tmp_path)
        result = cli("events", "purge", "-c", str(cfg), "--older-than", "soon")
        assert result.exit_code == 2 and "--older-than" in result.stderr

    def test_events_without_config_is_a_usage_error(self) -> None:
        result = cli("events", env={"BASTION_CONFIG": None})
        assert result.exit_code == 2 and "--config" in result.stderr


class TestPurgeCannotBeTurnedIntoACover:
    """Attacks on the purge itself: an intruder without the chain key trying to get rows deleted and the
    gap excused by a record the gateway signs."""

    def test_a_forged_record_is_not_carried_forward_by_the_next_purge(self, engine: Engine) -> None:
        ids = fill(engine, 10, key=KEY, start=time.time() - 60)  # recent: no purge would delete them
        rows_now = rows(engine)
        fake = {
            "id": "01J00000000000000000000000",
            "time": T0,  # old: the next purge deletes it, and would carry its anchors if it trusted them
            "type": "events.purged",
            "severity": "info",
            "actor": "system",
            "data": json.dumps({"anchors": {rows_now[0]["chain"]: {"seq": 4, "hash": rows_now[3]["hash"]}}}),
            "chain": "01J00000000000000000000001",
            "seq": 1,
            "prev_hash": "0" * 64,
        }
        fake["hash"] = row_hash(fake, None)
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.id.in_(ids[:4])))
            conn.execute(events_table.insert().values(**fake))
        purge_events(engine, T0 + 1, key=KEY, now=time.time)
        kinds = {(p.kind, p.event_id) for p in verify(engine, KEY).problems}
        assert ("deleted", ids[4]) in kinds  # still caught: the purge signed nothing for the forger

    def test_an_old_row_rewritten_to_look_like_the_anchor_is_not_purged(self, engine: Engine) -> None:
        """Delete recent rows 2..6, then rewrite old row 1 as seq 6 with row 6's hash: a purge that
        anchored the last deleted row blindly would excuse the gap."""
        now = time.time()
        writer = EventWriter(engine, flush_interval=60.0, chain_key=KEY)
        writer.emit(new_event("request.denied", now=now - 10 * 86400))  # old, purgeable
        for i in range(8):
            writer.emit(new_event("request.denied", now=now - 60 + i))
        writer.close()
        got = rows(engine)
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.seq.between(2, 6)))
            conn.execute(
                update(events_table).where(events_table.c.seq == 1).values(seq=6, hash=got[5]["hash"])
            )
        done = purge_events(engine, now - 86400, key=KEY, now=time.time)
        assert done.suspect == (got[0]["chain"],) and done.count == 0
        # the rewritten row is kept as evidence (beside rows 7-9 and the purge's own record, which names it)
        assert [r["type"] for r in rows(engine)].count("request.denied") == 4
        assert not verify(engine, KEY).ok

    def test_a_quiet_writer_keeps_its_anchor(self, engine: Engine) -> None:
        """Every row of a running gateway is older than the retention (a quiet night): its next row must
        still verify after the purge."""
        now = time.time()
        writer = EventWriter(engine, flush_interval=60.0, chain_key=KEY)
        for i in range(5):
            writer.emit(new_event("request.denied", now=now - 3 * 86400 + i))
        writer.flush()
        assert purge_events(engine, now - 86400, key=KEY, now=time.time).count == 5
        purge_events(engine, now - 86400, key=KEY, now=time.time)  # a second purge: nothing left to cut
        writer.emit(new_event("request.denied", now=now))
        writer.close()
        result = verify(engine, KEY)
        assert result.ok, result.problems

    def test_rows_cut_from_a_chains_end_after_a_purge_are_noticed(self, engine: Engine) -> None:
        now = time.time()
        ids = fill(engine, 10, key=KEY, start=now - 600)
        fill(engine, 2, key=KEY, start=now - 3 * 86400)  # something for the purge to do
        purge_events(engine, now - 86400, key=KEY, now=time.time)
        assert verify(engine, KEY).ok
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.id.in_(ids[7:])))  # the last three
        [problem] = verify(engine, KEY).problems
        assert problem.kind == "deleted" and problem.seq == 10 and "up to seq 7" in problem.detail

    def test_a_whole_chain_deleted_after_a_purge_is_noticed(self, engine: Engine) -> None:
        now = time.time()
        ids = fill(engine, 3, key=KEY, start=now - 600)  # e.g. one `bastion keys create`
        fill(engine, 2, key=KEY, start=now - 3 * 86400)
        purge_events(engine, now - 86400, key=KEY, now=time.time)
        with engine.begin() as conn:
            conn.execute(delete(events_table).where(events_table.c.id.in_(ids)))
        [problem] = verify(engine, KEY).problems
        assert problem.kind == "deleted" and "no rows" in problem.detail

    def test_a_row_inserted_without_a_chain_is_noticed(self, engine: Engine) -> None:
        fill(engine, 3, start=time.time() - 60)
        with engine.begin() as conn:
            conn.execute(
                events_table.insert().values(
                    id="7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
                    time=time.time(),
                    type="admin.action",
                    severity="info",
                    data="{}",
                )
            )
        [problem] = verify(engine).problems
        assert problem.kind == "inserted" and problem.event_id == "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"

    def test_times_out_of_order_in_a_chain_still_purge_and_verify(self, engine: Engine) -> None:
        now = time.time()
        writer = EventWriter(engine, flush_interval=60.0, chain_key=KEY)
        for t in (now - 3 * 86400, now - 10, now - 2 * 86400, now - 5):  # an alert made before a request
            writer.emit(new_event("request.denied", now=t))
        writer.close()
        done = purge_events(engine, now - 86400, key=KEY, now=time.time)
        assert done.count == 3  # the cut is contiguous: seq 1-3 (the newer seq 2 goes with them)
        result = verify(engine, KEY)
        assert result.ok, result.problems


class TestPurgeUnderLoad:
    def test_purges_while_two_writers_write_keep_every_chain_verifiable(self, pg_engine: Engine) -> None:
        """Two writers keep writing (old and new events interleaved) while purges run: afterwards every
        chain verifies and only old events are gone."""
        import threading

        now = time.time()
        writers = [
            EventWriter(pg_engine, flush_interval=0.01, batch_size=20, chain_key=KEY) for _ in range(2)
        ]
        for w in writers:
            w.start()
        stop = threading.Event()

        def write(w: EventWriter, offset: int) -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                age = 3 * 86400 if i % 3 == 0 else 10  # a third of them older than the retention
                w.emit(new_event("request.denied", now=now - age + offset + i * 0.001))
                i += 1
                if i % 50 == 0:
                    w.flush()

        threads = [threading.Thread(target=write, args=(w, n)) for n, w in enumerate(writers)]
        for t in threads:
            t.start()
        try:
            for _ in range(3):
                purge_events(pg_engine, now - 86400, key=KEY, now=time.time)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            for w in writers:
                w.close()
        purge_events(pg_engine, now - 86400, key=KEY, now=time.time)
        result = verify(pg_engine, KEY)
        assert result.ok, result.problems[:3]
        with pg_engine.connect() as conn:
            oldest = conn.execute(
                select(events_table.c.time)
                .where(events_table.c.type == "request.denied")
                .order_by(events_table.c.time)
                .limit(1)
            ).scalar()
        assert oldest is None or oldest > now - 86400 - 60
