"""``bastion audit`` reading the store's event log: an intact log passes, an edited event is a fail that
names it (P11, tamper evidence)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import update

from bastion.events.writer import EventWriter, new_event
from bastion.store.database import open_database
from bastion.store.schema import events_table

from .test_audit import checks, cli

CONFIG = """\
listen: 127.0.0.1:8080
storage:
  database: sqlite:///{db}
services:
  - name: shop
    upstream: http://127.0.0.1:9000
    routes:
      - {{path: /v1/items, methods: [GET], auth: none}}
"""


def audit_chain(tmp_path: Path, tamper: bool) -> dict:
    db = tmp_path / "bastion.db"
    engine = open_database(f"sqlite:///{db}")
    try:
        writer = EventWriter(engine, flush_interval=60.0)
        ids = []
        for i in range(12):
            event = new_event(
                "request.denied", now=time.time() + i, reason="ip_denied", source_ip=f"10.0.0.{i}"
            )
            ids.append(event.id)
            writer.emit(event)
        writer.close()
        if tamper:
            with engine.begin() as conn:
                conn.execute(
                    update(events_table).where(events_table.c.id == ids[5]).values(source_ip="192.0.2.9")
                )
    finally:
        engine.dispose()
    cfg = tmp_path / "bastion.yaml"
    cfg.write_text(CONFIG.format(db=db), encoding="utf-8")
    result = cli("audit", "-c", str(cfg), "--json")
    doc = json.loads(result.stdout)
    assert "verified 12 event(s)" in doc["store"]["detail"]
    return checks(doc)["P11.event-log-tampered"]


def test_an_intact_event_log_passes(tmp_path: Path) -> None:
    assert audit_chain(tmp_path, tamper=False)["status"] == "pass"


def test_an_edited_event_fails_and_is_named(tmp_path: Path) -> None:
    got = audit_chain(tmp_path, tamper=True)
    assert got["status"] == "fail"
    assert len(got["findings"]) == 1
    assert got["findings"][0]["message"].startswith("edited:")
