"""The ``bastion`` command line: through click's CliRunner for most cases, and as real subprocesses
(``python -m bastion``) where the process boundary matters: ``--help`` and ``bastion demo``.

CliRunner's ``env=`` sets (or, with ``None``, removes) variables for one invocation only, so no test
depends on the environment pytest was started with.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner, Result

from bastion import __version__
from bastion.adapters.cli import main
from bastion.events.writer import EventWriter, new_event
from bastion.store.database import open_database

from ..support import (
    ADMIN_TOKEN,
    EchoUpstream,
    GatewayThread,
    config_text,
    load_text,
    raw_exchange,
    status_of,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
WITH_TOKEN = {"BASTION_ADMIN_TOKEN": ADMIN_TOKEN, "BASTION_CONFIG": None}
NO_TOKEN = {"BASTION_ADMIN_TOKEN": None, "BASTION_CONFIG": None}


def cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    env = WITH_TOKEN if env is None else env
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


# -- help and version -----------------------------------------------------------------------------------

SUBCOMMANDS = ["serve", "check", "events", "demo", "version", "audit", "scan", "report"]


class TestHelp:
    def test_top_level_help(self) -> None:
        result = cli("--help")
        assert result.exit_code == 0
        for name in SUBCOMMANDS:
            assert re.search(rf"^\s+{name}\s", result.stdout, re.MULTILINE), name

    def test_every_subcommand_is_listed(self) -> None:
        assert set(SUBCOMMANDS) <= set(main.commands)  # type: ignore[attr-defined]

    @pytest.mark.parametrize("name", SUBCOMMANDS)
    def test_subcommand_help(self, name: str) -> None:
        result = cli(name, "--help")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage:")
        assert name in result.stdout.splitlines()[0]

    @pytest.mark.parametrize("name", ["serve", "check", "events"])
    def test_store_touching_commands_take_config(self, name: str) -> None:
        assert "-c, --config" in cli(name, "--help").stdout

    def test_short_help_flag(self) -> None:
        assert cli("-h").exit_code == 0

    def test_version_command(self) -> None:
        result = cli("version")
        assert result.exit_code == 0
        assert result.stdout.strip() == f"bastion {__version__}"

    def test_version_option(self) -> None:
        result = cli("--version")
        assert result.exit_code == 0
        assert __version__ in result.stdout

    def test_unknown_command_is_a_usage_error(self) -> None:
        assert cli("frobnicate").exit_code == 2

    def test_help_as_a_real_process(self, tmp_path: Path) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "bastion", "--help"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "check" in proc.stdout and "demo" in proc.stdout


# -- bastion check ----------------------------------------------------------------------------------------


class TestCheck:
    def test_quickstart_is_ok(self) -> None:
        result = cli("check", "-c", str(QUICKSTART))
        assert result.exit_code == 0, result.output
        assert "OK" in result.stdout
        assert "1 service(s), 3 route(s)" in result.stdout

    def test_config_from_environment_variable(self) -> None:
        result = cli("check", env={**WITH_TOKEN, "BASTION_CONFIG": str(QUICKSTART)})
        assert result.exit_code == 0, result.output
        assert "OK" in result.stdout

    def test_missing_env_reference_names_variable_and_line(self) -> None:
        result = cli("check", "-c", str(QUICKSTART), env=NO_TOKEN)
        assert result.exit_code == 1
        line = line_of(QUICKSTART.read_text(), "token:")
        assert f"{QUICKSTART}:{line}: admin.token:" in result.stderr
        assert "BASTION_ADMIN_TOKEN" in result.stderr
        assert "OK" not in result.stdout

    def test_every_problem_listed_with_location(self, tmp_path: Path) -> None:
        text = QUICKSTART.read_text()
        text = text.replace("listen: 127.0.0.1:8080", "listen: nowhere")
        text = text.replace("max_body: 16KiB", "max_body: lots")
        text = text.replace("ip_deny: [10.0.0.0/8]", "ip_deny: [10.0.0.1/8]")
        bad = write(tmp_path / "bad.yaml", text)
        result = cli("check", "-c", str(bad))
        assert result.exit_code == 1
        assert "3 problem(s)" in result.stderr
        expected = [
            (line_of(text, "listen: nowhere"), "listen"),
            (line_of(text, "max_body: lots"), "services[0].routes[1].max_body"),
            (line_of(text, "10.0.0.1/8"), "services[0].routes[2].ip_deny[0]"),
        ]
        for line, field in expected:
            assert f"{bad}:{line}: {field}:" in result.stderr, (line, field, result.stderr)

    def test_route_table_errors_fail_the_check(self, tmp_path: Path) -> None:
        text = QUICKSTART.read_text().replace("path: /v1/orders\n", "path: /v1//orders\n")
        bad = write(tmp_path / "bad.yaml", text)
        result = cli("check", "-c", str(bad))
        assert result.exit_code == 1
        assert f"{bad}:{line_of(text, '/v1//orders')}: services[0].routes[1].path:" in result.stderr

    def test_identity_example_is_valid_and_quiet(self) -> None:
        example = ROOT / "examples" / "identity.yaml"
        env = {**WITH_TOKEN, "BASTION_PEPPER": "example-pepper-0123456789abcdef"}
        result = cli("check", "-c", str(example), "--json", env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["ok"] is True and doc["warnings"] == []
        # Without the pepper it is an error that names the missing variable, not a crash.
        result = cli("check", "-c", str(example), env={**WITH_TOKEN, "BASTION_PEPPER": None})
        assert result.exit_code == 1 and "BASTION_PEPPER" in result.stderr

    def test_webhooks_example_is_valid_and_quiet(self) -> None:
        example = ROOT / "examples" / "webhooks.yaml"
        env = {
            **WITH_TOKEN,
            "TWILIO_AUTH_TOKEN": "example-twilio-token",
            "TWILIO_AUTH_TOKEN_SECONDARY": "example-twilio-token-2",
            "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "STRIPE_WEBHOOK_SECRET": "whsec_stripe_example",
        }
        result = cli("check", "-c", str(example), "--json", env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["ok"] is True and doc["warnings"] == []
        assert "example-twilio-token" not in result.output

    def test_inputs_example_is_valid_and_quiet(self) -> None:
        example = ROOT / "examples" / "inputs.yaml"
        env = {**WITH_TOKEN, "BASTION_PEPPER": "example-pepper-0123456789abcdef"}
        result = cli("check", "-c", str(example), "--json", env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["ok"] is True and doc["warnings"] == []

    def test_monitoring_example_is_valid_and_quiet(self) -> None:
        example = ROOT / "examples" / "monitoring.yaml"
        env = {
            **WITH_TOKEN,
            "BASTION_PEPPER": "example-pepper-0123456789abcdef",
            "BASTION_CHAIN_KEY": "example-chain-key-0123456789",
            "SINK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "ALERT_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        }
        result = cli("check", "-c", str(example), "--json", env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["ok"] is True and doc["warnings"] == []

    def test_egress_example_is_valid_and_quiet(self, tmp_path: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        # The example reads the PKCV key from /run/secrets; the test points it at a throwaway key.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file = write(
            tmp_path / "pkcv.pem",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
        )
        example = ROOT / "examples" / "egress.yaml"
        text = example.read_text()
        assert "${file:/run/secrets/twilio-pkcv.pem}" in text
        cfg = write(tmp_path / "egress.yaml", text.replace("/run/secrets/twilio-pkcv.pem", str(key_file)))
        env = {
            **WITH_TOKEN,
            "BASTION_PEPPER": "example-pepper-0123456789abcdef",
            "TWILIO_API_KEY_SID": "SK" + "0" * 32,
            "TWILIO_API_KEY_SECRET": "example-twilio-api-key-secret",
            "TWILIO_CREDENTIAL_SID": "CR" + "0" * 32,
            "TWILIO_AUTH_TOKEN": "example-twilio-auth-token",
        }
        result = cli("check", "-c", str(cfg), "--json", env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["ok"] is True and doc["warnings"] == []
        assert "example-twilio-api-key-secret" not in result.output

    def test_serve_refuses_workers_with_per_process_replay_protection(self, tmp_path: Path) -> None:
        example = ROOT / "examples" / "webhooks.yaml"
        text = example.read_text().replace("sqlite:///bastion-webhooks.db", f"sqlite:///{tmp_path / 'b.db'}")
        cfg = write(tmp_path / "webhooks.yaml", text)
        env = {
            **WITH_TOKEN,
            "TWILIO_AUTH_TOKEN": "t1",
            "TWILIO_AUTH_TOKEN_SECONDARY": "t2",
            "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "STRIPE_WEBHOOK_SECRET": "s",
        }
        result = cli("serve", "-c", str(cfg), "--workers", "2", env=env)
        assert result.exit_code == 1
        assert "/hooks/sms has replay protection" in result.stderr and "--workers 1" in result.stderr

    def test_serve_refuses_workers_with_per_process_egress_caps(self, tmp_path: Path) -> None:
        text = f"""
identity: {{pepper: pepper-for-the-cli-test-0123456789}}
storage: {{database: sqlite:///{tmp_path / 'b.db'}}}
egress:
  - name: sms
    listen_path: /egress/sms
    target: https://api.twilio.com
    callers: [app]
    credentials: {{bearer: ${{env:PROVIDER_TOKEN}}}}
    allow: [{{method: POST, path: /Messages.json}}]
    geo: {{fields: [To], allow_countries: [US]}}
"""
        cfg = write(tmp_path / "egress.yaml", text)
        result = cli("serve", "-c", str(cfg), "--workers", "2", env={**WITH_TOKEN, "PROVIDER_TOKEN": "t"})
        assert result.exit_code == 1
        assert "/egress/sms has caps or SMS pumping detection" in result.stderr
        assert "storage.state: redis://" in result.stderr

    def test_json_ok(self) -> None:
        result = cli("check", "-c", str(QUICKSTART), "--json")
        assert result.exit_code == 0
        doc = json.loads(result.stdout)
        assert doc["ok"] is True
        assert (doc["services"], doc["routes"]) == (1, 3)
        assert isinstance(doc["warnings"], list)

    def test_json_errors(self, tmp_path: Path) -> None:
        text = QUICKSTART.read_text().replace("auth: none", "auth: sometimes", 1)
        bad = write(tmp_path / "bad.yaml", text)
        result = cli("check", "-c", str(bad), "--json")
        assert result.exit_code == 1
        doc = json.loads(result.stdout)
        assert doc["ok"] is False
        [error] = doc["errors"]
        assert error["file"] == str(bad)
        assert error["line"] == line_of(text, "auth: sometimes")
        assert error["path"] == "services[0].routes[0].auth"
        assert error["message"]

    def test_literal_secret_warns_by_field_path(self, tmp_path: Path) -> None:
        secret = "literal-admin-token-9f8e7d6c5b4a3210"
        text = QUICKSTART.read_text().replace("${env:BASTION_ADMIN_TOKEN}", secret)
        cfg = write(tmp_path / "literal.yaml", text)
        result = cli("check", "-c", str(cfg), env=NO_TOKEN)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        assert any(f"{cfg}:{line_of(text, secret)}: admin.token:" in w and "literal secret" in w
                   for w in warnings), result.stderr
        assert secret not in result.output

    def test_literal_secret_warning_in_json(self, tmp_path: Path) -> None:
        secret = "literal-admin-token-9f8e7d6c5b4a3210"
        cfg = write(tmp_path / "literal.yaml",
                    QUICKSTART.read_text().replace("${env:BASTION_ADMIN_TOKEN}", secret))
        result = cli("check", "-c", str(cfg), "--json", env=NO_TOKEN)
        assert result.exit_code == 0
        doc = json.loads(result.stdout)
        assert any(w["path"] == "admin.token" and "literal" in w["message"] for w in doc["warnings"])
        assert secret not in result.stdout

    def test_missing_file(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope.yaml"
        result = cli("check", "-c", str(missing))
        assert result.exit_code == 1
        assert "not found" in result.stderr
        assert str(missing) in result.stderr
        assert "Traceback" not in result.output

    def test_config_option_is_required(self) -> None:
        result = cli("check")
        assert result.exit_code == 2
        assert "--config" in result.stderr


# -- bastion events ---------------------------------------------------------------------------------------


def events_config(tmp_path: Path, upstream_port: int = 9) -> tuple[Path, Path]:
    db = tmp_path / "bastion.db"
    return write(tmp_path / "bastion.yaml", config_text(upstream_port, db)), db


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


class TestEvents:
    @pytest.fixture
    def filled(self, tmp_path: Path) -> Path:
        """A config whose database holds recent and old events of several types."""
        cfg, db = events_config(tmp_path)
        engine = open_database(f"sqlite:///{db}")
        writer = EventWriter(engine, flush_interval=60.0)
        now = time.time()
        specs = [
            ("request.denied", now - 60, "route_not_found", "10.0.0.1"),
            ("request.denied", now - 120, "ip_denied", "10.0.0.2"),
            ("request.denied", now - 7200, "method_not_allowed", "10.0.0.1"),  # older than 1h
            ("admin.action", now - 30, None, "127.0.0.1"),
            ("gateway.started", now - 3000, None, None),
        ]
        for type_, t, reason, ip in specs:
            writer.emit(new_event(type_, now=t, reason=reason, source_ip=ip, severity="warning"))
        writer.close()
        engine.dispose()
        return cfg

    def test_json_type_and_since(self, filled: Path) -> None:
        result = cli("events", "-c", str(filled), "--json", "--type", "request.", "--since", "1h")
        assert result.exit_code == 0, result.output
        rows = json_lines(result)
        assert [r["reason"] for r in rows] == ["route_not_found", "ip_denied"]  # newest first
        assert {r["type"] for r in rows} == {"request.denied"}
        for r in rows:
            assert set(r) >= {"id", "time", "type", "severity", "source_ip", "reason", "data"}

    def test_source_ip_and_limit(self, filled: Path) -> None:
        result = cli("events", "-c", str(filled), "--json", "--source-ip", "10.0.0.1")
        assert [r["reason"] for r in json_lines(result)] == ["route_not_found", "method_not_allowed"]
        result = cli("events", "-c", str(filled), "--json", "--limit", "2")
        assert [r["type"] for r in json_lines(result)] == ["admin.action", "request.denied"]

    def test_table_output(self, filled: Path) -> None:
        result = cli("events", "-c", str(filled), "--type", "request.")
        assert result.exit_code == 0
        assert "request.denied" in result.stdout
        assert "ip_denied" in result.stdout

    def test_no_events(self, tmp_path: Path) -> None:
        cfg, _ = events_config(tmp_path)
        result = cli("events", "-c", str(cfg))
        assert result.exit_code == 0
        assert "no events" in result.stderr
        assert cli("events", "-c", str(cfg), "--json").stdout == ""

    @pytest.mark.parametrize("value", ["yesterday", "1 hour", "-1h"])
    def test_bad_since_is_a_usage_error(self, filled: Path, value: str) -> None:
        result = cli("events", "-c", str(filled), "--since", value)
        assert result.exit_code == 2
        assert "Traceback" not in result.output

    def test_bad_severity_is_a_usage_error(self, filled: Path) -> None:
        assert cli("events", "-c", str(filled), "--severity", "loud").exit_code == 2

    def test_bad_config_exits_1(self, tmp_path: Path) -> None:
        cfg, _ = events_config(tmp_path)
        result = cli("events", "-c", str(cfg), env=NO_TOKEN)
        assert result.exit_code == 1
        assert "BASTION_ADMIN_TOKEN" in result.stderr

    def test_events_from_a_real_gateway_run(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        cfg, _ = events_config(tmp_path, upstream.port)
        loaded = load_text(cfg.read_text())
        with GatewayThread(loaded) as gw:
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            try:
                conn.request("DELETE", "/v1/orders/42")
                resp = conn.getresponse()
                resp.read()
                request_id = resp.getheader("x-request-id")
            finally:
                conn.close()
            assert resp.status == 405
        result = cli("events", "-c", str(cfg), "--json", "--type", "request.", "--since", "1h")
        assert result.exit_code == 0, result.output
        [row] = json_lines(result)
        assert (row["reason"], row["method"]) == ("method_not_allowed", "DELETE")
        assert row["path"] == "/v1/orders/42"
        assert row["request_id"] == request_id
        result = cli("events", "-c", str(cfg), "--json", "--type", "gateway.")
        assert sorted(r["type"] for r in json_lines(result)) == ["gateway.started", "gateway.stopped"]


# -- bastion demo (a real process) ---------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pump(stream: IO[str], sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None], list[int]]]:
    port, admin_port, upstream_port = free_ports(3)
    env = {**os.environ, "BASTION_ADMIN_TOKEN": ADMIN_TOKEN, "TMPDIR": str(tmp_path)}
    env.pop("BASTION_CONFIG", None)
    args = [sys.executable, "-m", "bastion", "demo", "--port", str(port), "--admin-port", str(admin_port),
            "--upstream-port", str(upstream_port), "--duration", "3"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                          env=env) as proc:
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            yield proc, lines, [port, admin_port, upstream_port]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            reader.join(10)


def read_until(lines: queue.Queue[str | None], marker: str, timeout: float = 60.0) -> str:
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {marker!r} in the demo's output:\n{''.join(out)}") from None
        if line is None:
            raise AssertionError(f"the demo exited before printing {marker!r}:\n{''.join(out)}")
        out.append(line)
        if marker in line:
            return "".join(out)


def call(port: int, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("content-type") or ""
        return resp.status, json.loads(raw) if "json" in ctype else raw
    finally:
        conn.close()


DENIED_LINE = re.compile(
    r"^\s*curl -i (?:-X (?P<method>[A-Z]+) )?(?:--path-as-is )?'?http://127\.0\.0\.1:(?P<port>\d+)"
    r"(?P<target>\S*?)'?\s+# (?P<status>\d{3}) (?P<code>[a-z_]+)\b"
)


class TestDemo:
    def test_prints_instructions_serves_and_exits_by_itself(
        self, demo: tuple[subprocess.Popen[str], queue.Queue[str | None], list[int]], tmp_path: Path
    ) -> None:
        proc, lines, (port, admin_port, _) = demo
        text = read_until(lines, "Press Ctrl-C")
        gateway_url = f"http://127.0.0.1:{port}"
        assert f"curl -i {gateway_url}/v1/orders/42" in text
        assert f"http://127.0.0.1:{admin_port}/admin/v1" in text

        # The allowed requests, as printed.
        status, body = call(port, "GET", "/v1/orders/42")
        assert status == 200
        assert isinstance(body, dict) and body["path"] == "/v1/orders/42"
        order = b'{"item":"book"}'
        status, body = call(port, "POST", "/v1/orders", order, {"content-type": "application/json"})
        assert status == 200

        # The API key the demo made works on the keyed route; the origin sees the consumer, not the key.
        key = re.search(r"X-API-Key: (bst_[0-9A-Za-z_]{52})'", text).group(1)  # type: ignore[union-attr]
        status, body = call(port, "GET", "/v1/account", headers={"X-API-Key": key})
        assert status == 200 and isinstance(body, dict), body
        assert body["headers"]["x-bastion-consumer"] == "demo-app"
        assert key not in json.dumps(body)
        wrong = key[:-1] + ("x" if key[-1] != "x" else "y")
        status, body = call(port, "GET", "/v1/account", headers={"X-API-Key": wrong})
        assert status == 401 and isinstance(body, dict) and body["code"] == "auth_invalid"

        # The signed Twilio webhook as printed passes and reaches the origin; the tampered one does not.
        signature = re.search(r"X-Twilio-Signature: ([A-Za-z0-9+/=]+)'", text).group(1)  # type: ignore[union-attr]
        bodies = re.findall(r"-d '(From=[^']*)' http://127\.0\.0\.1:\d+/hooks/sms", text)
        assert len(bodies) == 2, text
        form = {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature}
        status, body = call(port, "POST", "/hooks/sms", bodies[0].encode(), form)
        assert status == 200 and isinstance(body, dict) and body["body_bytes"] == len(bodies[0]), body
        status, body = call(port, "POST", "/hooks/sms", bodies[1].encode(), form)
        assert status == 403 and isinstance(body, dict) and body["code"] == "webhook_signature_invalid"

        # The egress route: the caller's Bastion key in, the provider credential (which only Bastion holds)
        # out; a destination outside the allowed countries and a denied operation never reach the origin.
        sms = re.search(r"(/egress/sms/\S+)/Messages\.json", text).group(1)  # type: ignore[union-attr]
        basic = {"authorization": "Basic " + base64.b64encode(f"demo-app:{key}".encode()).decode(),
                 "content-type": "application/x-www-form-urlencoded"}
        status, body = call(port, "POST", f"{sms}/Messages.json", b"To=%2B14155552671&Body=hi", basic)
        assert status == 200 and isinstance(body, dict), body
        assert body["authorization"].startswith("Basic ") and key not in json.dumps(body)
        assert body["authorization"] != basic["authorization"][:14] + "…"
        status, body = call(port, "POST", f"{sms}/Messages.json", b"To=%2B33612345678&Body=hi", basic)
        assert status == 403 and isinstance(body, dict) and body["code"] == "egress_geo_blocked"
        status, body = call(port, "POST", f"{sms}/Calls.json", b"To=%2B14155552671", basic)
        assert status == 403 and isinstance(body, dict) and body["code"] == "egress_operation_denied"

        # Every simple denied line does what its comment says.
        denied = [m for m in map(DENIED_LINE.match, text.splitlines()) if m]
        assert len(denied) >= 5, text
        for m in denied:
            assert int(m["port"]) == port
            status, body = call(port, m["method"] or "GET", m["target"])
            assert status == int(m["status"]), m.group(0)
            assert isinstance(body, dict) and body["code"] == m["code"], m.group(0)
        assert any(m["code"] == "method_not_allowed" for m in denied)

        # The documented body limit and smuggling shape.
        assert "413 body_too_large" in text
        status, body = call(port, "POST", "/v1/orders", b"\0" * 20000)
        assert status == 413 and isinstance(body, dict) and body["code"] == "body_too_large"
        raw = raw_exchange(
            port,
            b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\nx\r\n0\r\n\r\n",
        )
        assert status_of(raw) == 400

        # The denials are in the event log, readable through the admin API with the printed token.
        token = re.search(r"token: (\S+)", text).group(1)  # type: ignore[union-attr]
        reasons: set[str] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not {"method_not_allowed", "body_too_large"} <= reasons:
            status, doc = call(admin_port, "GET", "/admin/v1/events?type=request.denied&page_size=100",
                               headers={"Authorization": f"Bearer {token}"})
            assert status == 200 and isinstance(doc, dict)
            reasons = {e["reason"] for e in doc["events"]}
        # --duration 3: it stops on its own, cleanly, and removes its temporary directory.
        assert proc.wait(timeout=60) == 0
        assert not list(tmp_path.glob("bastion-demo-*")), "the demo left its temporary directory"
        assert {"method_not_allowed", "body_too_large", "route_not_found"} <= reasons, reasons
