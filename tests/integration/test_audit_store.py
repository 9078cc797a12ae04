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


ADMIN_CONFIG = """\
listen: 127.0.0.1:8080
identity: {{pepper: ${{env:BASTION_PEPPER}}}}
admin:
  listen: 127.0.0.1:8081
  token: ${{env:BASTION_ADMIN_TOKEN}}
  accounts: {{require_mfa: {require_mfa}}}
storage:
  database: sqlite:///{db}
services:
  - name: shop
    upstream: http://127.0.0.1:9000
    routes:
      - {{path: /v1/items, methods: [GET], auth: none}}
"""


def test_admin_accounts_without_mfa_and_the_token_still_enabled(tmp_path: Path) -> None:
    import pyotp

    from bastion.config.loader import load_config
    from bastion.identity.admins import AdminAccounts, AdminKeys

    from .test_audit import PEPPER

    db = tmp_path / "bastion.db"
    cfg = tmp_path / "bastion.yaml"
    cfg.write_text(ADMIN_CONFIG.format(db=db, require_mfa="false"), encoding="utf-8")
    loaded = load_config(cfg, env={"BASTION_PEPPER": PEPPER, "BASTION_ADMIN_TOKEN": "t" * 32})
    engine = open_database(f"sqlite:///{db}")
    try:
        accounts = AdminAccounts(engine, AdminKeys(PEPPER), loaded.settings.admin.accounts)  # type: ignore[union-attr]
        accounts.create("ada", "ada@example.com", "admin", password="Quiet-Lantern-Orbit-81", actor="t")
        grace, _ = accounts.create(
            "grace", "grace@example.com", "operator", password="Velvet-Harbor-Sprocket-36", actor="t"
        )
        enrolment = accounts.begin_totp(grace["id"])
        accounts.confirm_totp(
            grace["id"], pyotp.parse_uri(enrolment.otpauth_uri).now(), actor="t", source_ip=None
        )
    finally:
        engine.dispose()
    doc = json.loads(cli("audit", "-c", str(cfg), "--json").stdout)
    assert "2 admin account(s)" in doc["store"]["detail"]
    got = checks(doc)
    assert got["P12.admin-mfa-not-required"]["status"] == "fail"
    without = got["P12.admin-without-mfa"]
    assert without["status"] == "fail"
    assert [f["subject"] for f in without["findings"]] == ["admin:ada"]  # grace has TOTP
    assert got["P12.admin-token-still-enabled"]["status"] == "warn"
    assert "t" * 32 not in json.dumps(doc)
