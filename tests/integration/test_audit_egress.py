"""``bastion audit`` on egress routes: a deliberately weak egress config finds each egress problem with
its line; a careful one has no egress finding."""

from __future__ import annotations

import json
from pathlib import Path

from .test_audit import checks, cli, line_of

WEAK_EGRESS = """\
listen: 127.0.0.1:8080
identity: {pepper: ${env:BASTION_PEPPER}}
egress:
  - name: twilio
    listen_path: /egress/twilio
    target: https://api.twilio.com
    callers: [billing-service]
    tls_verify: false
    credentials:
      basic: {username: SK0123, password: ${env:BASTION_PEPPER}}
    allow:
      - {method: "*", path: "/2010-04-01/{rest:path}"}
  - name: crm
    listen_path: /egress/crm
    target: https://crm.example.com
    callers: [billing-service]
    credentials:
      bearer: ${env:BASTION_PEPPER}
    geo: {fields: [phone]}
    sms_pumping: {auto_block: false}
"""

CAREFUL_EGRESS = """\
listen: 127.0.0.1:8080
identity: {pepper: ${env:BASTION_PEPPER}}
alerts:
  rules:
    - {name: pumping, builtin: sms_pumping}
egress:
  - name: twilio
    listen_path: /egress/twilio
    target: https://api.twilio.com
    callers: [billing-service]
    credentials:
      basic: {username: SK0123, password: ${env:BASTION_PEPPER}}
    allow:
      - {method: POST, path: "/2010-04-01/Accounts/{account}/Messages.json"}
    geo: {fields: [To], allow_countries: [US, GB]}
    pkcv: {credential_id: CR00112233445566778899aabbccddeeff, private_key: ${file:key.pem}}
"""

EGRESS_RULES = (
    "P6.egress-tls-verify-off",
    "P15.egress-without-allow",
    "P15.egress-allow-too-broad",
    "P16.egress-without-geo",
    "P17.egress-pumping-unguarded",
    "P18.egress-without-pkcv",
)


def test_a_weak_egress_config_finds_each_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "egress.yaml"
    cfg.write_text(WEAK_EGRESS, encoding="utf-8")
    result = cli("audit", "-c", str(cfg), "--json")
    assert result.exit_code == 1, result.output
    got = checks(json.loads(result.stdout))
    text = WEAK_EGRESS

    def lines(rule: str) -> list[tuple[str, int | None]]:
        return [(f["level"], f["line"]) for f in got[rule]["findings"]]

    assert lines("P6.egress-tls-verify-off") == [("fail", line_of(text, "tls_verify: false"))]
    assert lines("P15.egress-without-allow") == [("fail", line_of(text, "name: crm"))]
    assert lines("P15.egress-allow-too-broad") == [("warn", line_of(text, "{rest:path}"))]
    # Twilio without geo is a fail; the CRM route checks numbers but lets every country through.
    assert lines("P16.egress-without-geo") == [
        ("fail", line_of(text, "name: twilio")),
        ("warn", line_of(text, "geo: {fields: [phone]}")),
    ]
    assert lines("P17.egress-pumping-unguarded") == [("warn", line_of(text, "sms_pumping"))]
    assert lines("P18.egress-without-pkcv") == [("warn", line_of(text, "name: twilio"))]
    # bastion check shows the in-check ones as warnings.
    warned = {w["path"] for w in json.loads(cli("check", "-c", str(cfg), "--json").stdout)["warnings"]}
    assert {"egress[0].tls_verify", "egress[1].name", "egress[0].name"} <= warned


def test_a_careful_egress_config_has_no_egress_finding(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cfg = tmp_path / "egress.yaml"
    cfg.write_text(CAREFUL_EGRESS, encoding="utf-8")
    result = cli("audit", "-c", str(cfg), "--json")
    got = checks(json.loads(result.stdout))
    for rule in EGRESS_RULES:
        assert got[rule]["status"] == "pass", (rule, got[rule])
