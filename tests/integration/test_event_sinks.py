"""Export sinks against real receivers on loopback: a JSON-lines file (rotation, a missing directory), a
syslog listener over UDP and TCP (RFC 5424, octet counting, an outage), an HTTP receiver that checks the
Standard Webhooks signature with Bastion's own ``HmacWebhook`` (and a real gateway with an
``hmac_signature`` route), a receiver that fails then recovers, one that never answers, the dead-letter
file of an earlier run, queue overflow and the filters.

No sink is mocked. Nothing sleeps to make time pass: backoffs are injected short, and the tests poll
with a deadline until the sink threads have done their work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from bastion.checks.hmac_webhook import PRESETS, HmacWebhook, standard_webhooks_secret
from bastion.config.errors import ConfigError
from bastion.config.models import JsonlSinkSettings, SyslogSinkSettings, WebhookSinkSettings
from bastion.core.decision import Context
from bastion.core.events import Event, event_document
from bastion.core.headers import Headers
from bastion.core.request import RequestView
from bastion.core.router import Route
from bastion.events.sinks import SinkSet
from bastion.events.writer import new_event
from bastion.state.memory import MemoryReplayCache

from ..support import EchoUpstream, GatewayThread, config_text, load_text

FAST = (0.01, 0.05)  # backoff: first delay, cap
SECRET = "whsec_" + base64.b64encode(b"sink-test-secret-0123456789abcde").decode()  # a fixture, not a secret
RAW_SECRET = "plain-sink-secret-for-tests"  # a fixture, not a secret


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def events(n: int, type: str = "request.denied", severity: str = "warning", **fields: Any) -> list[Event]:
    return [
        new_event(type, severity=severity, request_id=f"req-{i}", data={"i": i, **fields}) for i in range(n)
    ]


def jsonl(path: Path, **kw: Any) -> JsonlSinkSettings:
    return JsonlSinkSettings.model_validate({"type": "jsonl", "name": "file", "path": str(path), **kw})


def line(event: Event) -> str:
    return json.dumps(event_document(event), separators=(",", ":"), ensure_ascii=False)


def read_ids(path: Path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text("utf-8").splitlines()]


@pytest.fixture
def sinks() -> Iterator[list[SinkSet]]:
    made: list[SinkSet] = []
    yield made
    for s in made:
        s.close(timeout=2)


def sink_set(made: list[SinkSet], settings: list[Any], base_dir: Path, **kw: Any) -> SinkSet:
    s = SinkSet(settings, base_dir=str(base_dir), backoff=FAST, **kw)
    made.append(s)
    return s


# -- jsonl -----------------------------------------------------------------------------------------------


def test_jsonl_appends_documents_and_rotates_keeping_n_files(tmp_path: Path, sinks: list[SinkSet]) -> None:
    path = tmp_path / "events.jsonl"
    s = sink_set(sinks, [jsonl(path, rotate=4096, keep=2)], tmp_path)
    s.start()
    sent = events(120, note="héllo ✓" + "x" * 100)  # non-ASCII stays UTF-8 (ensure_ascii=False)
    for e in sent:
        s.emit(e)
    wait_for(lambda: s.stats()["file"]["delivered"] == 120, what="120 delivered")
    s.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    kept: list[str] = []
    for name in ("events.jsonl.2", "events.jsonl.1", "events.jsonl"):
        file = tmp_path / name
        assert file.stat().st_size <= 4096
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        kept += file.read_text("utf-8").splitlines()
    # The kept files hold the newest events, in order, byte for byte; the oldest files were deleted.
    assert kept == [line(e) for e in sent[-len(kept) :]]
    assert "héllo ✓" in kept[-1]
    assert len(kept) < 120
    assert s.stats()["file"] == {
        "queued": 0,
        "delivered": 120,
        "failures": 0,
        "dead_lettered": 0,
        "dropped": 0,
    }


def test_jsonl_missing_directory_dead_letters_then_delivers_in_order(
    tmp_path: Path, sinks: list[SinkSet], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "bastion.events.sinks")
    path = tmp_path / "logs" / "events.jsonl"
    s = sink_set(sinks, [jsonl(path, name="audit")], tmp_path)
    dead = tmp_path / "bastion-sink-audit.unsent.jsonl"
    s.start()
    first = events(5, marker="do-not-log-me")
    for e in first:
        s.emit(e)
    wait_for(lambda: s.stats()["audit"]["dead_lettered"] == 5, what="5 dead-lettered")
    assert stat.S_IMODE(dead.stat().st_mode) == 0o600
    later = events(3)
    for e in later:
        s.emit(e)
    wait_for(lambda: s.stats()["audit"]["dead_lettered"] == 8, what="8 dead-lettered")
    assert s.stats()["audit"]["delivered"] == 0
    assert s.stats()["audit"]["failures"] >= 1

    (tmp_path / "logs").mkdir()
    wait_for(lambda: s.stats()["audit"]["delivered"] == 8, what="the dead-letter file delivered")
    wait_for(lambda: not dead.exists(), what="the dead-letter file removed")
    assert read_ids(path) == [e.id for e in first + later]
    logs = caplog.text
    assert "sink audit" in logs and "does not exist" in logs
    assert "do-not-log-me" not in logs


def test_dead_letter_file_of_an_earlier_run_is_delivered_at_start(
    tmp_path: Path, sinks: list[SinkSet]
) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    dead = tmp_path / "bastion-sink-file.unsent.jsonl"
    earlier = sink_set(sinks, [jsonl(path)], tmp_path)
    first = events(4)
    for e in first:
        earlier.emit(e)
    earlier.start()
    wait_for(lambda: earlier.stats()["file"]["dead_lettered"] == 4, what="4 dead-lettered")
    queued_at_close = events(2)
    for e in queued_at_close:
        earlier.emit(e)
    earlier.close()  # the sink is down: what was queued goes to the dead-letter file too
    assert read_ids(dead) == [e.id for e in first + queued_at_close]

    (tmp_path / "logs").mkdir()
    later = sink_set(sinks, [jsonl(path)], tmp_path)
    newer = events(3)
    for e in newer:  # queued before the thread starts: still written after the older events
        later.emit(e)
    later.start()
    wait_for(lambda: later.stats()["file"]["delivered"] == 9, what="9 delivered")
    assert read_ids(path) == [e.id for e in first + queued_at_close + newer]
    assert not dead.exists()


def test_queue_overflow_is_counted_and_logged(
    tmp_path: Path, sinks: list[SinkSet], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    s = sink_set(sinks, [jsonl(path, queue_size=10)], tmp_path)
    sent = events(25)
    for e in sent:
        s.emit(e)
    assert s.stats()["file"] == {
        "queued": 10,
        "delivered": 0,
        "failures": 0,
        "dead_lettered": 0,
        "dropped": 15,
    }
    s.start()
    wait_for(lambda: s.stats()["file"]["delivered"] == 10, what="10 delivered")
    s.close()
    assert read_ids(path) == [e.id for e in sent[:10]]
    assert "sink file: queue full (10); 15 events dropped" in caplog.text


def test_filters_by_type_prefix_and_min_severity(tmp_path: Path, sinks: list[SinkSet]) -> None:
    path = tmp_path / "events.jsonl"
    s = sink_set(sinks, [jsonl(path, types=["request", "admin.auth"], min_severity="warning")], tmp_path)
    cases = [
        (new_event("request.denied", severity="warning"), True),
        (new_event("request.denied", severity="info"), False),  # below min_severity
        (new_event("request", severity="critical"), True),  # the prefix itself
        (new_event("requests_log.x", severity="error"), False),  # "request" is a word, not "request…"
        (new_event("admin.auth_failed", severity="error"), True),  # a dotted prefix is literal
        (new_event("admin.config_changed", severity="critical"), False),
        (new_event("rate_limit.exceeded", severity="critical"), False),
    ]
    for e, _ in cases:
        s.emit(e)
    s.start()
    s.close()
    assert read_ids(path) == [e.id for e, wanted in cases if wanted]


# -- syslog ----------------------------------------------------------------------------------------------

_HEAD = re.compile(rb"<(\d{1,3})>(\d) (\S+) (\S+) (\S+) (\S+) (\S+) ")


def parse_rfc5424(message: bytes) -> dict[str, Any]:
    """A strict-enough RFC 5424 parser: the header, one SD-ELEMENT with escaped values (§6.3.3), MSG."""
    m = _HEAD.match(message)
    assert m, message[:80]
    pri, version, timestamp, hostname, app, procid, msgid = m.groups()
    rest = message[m.end() :].decode("utf-8")
    assert rest.startswith("["), rest[:40]
    sd_id, _, rest = rest[1:].partition(" ")
    params: dict[str, str] = {}
    i = 0
    while True:
        if rest[i] == "]":
            break
        name_end = rest.index('="', i)
        name = rest[i:name_end]
        j = name_end + 2
        value = []
        while rest[j] != '"':
            if rest[j] == "\\" and rest[j + 1] in '"\\]':
                value.append(rest[j + 1])
                j += 2
            else:
                assert rest[j] != "]", "an unescaped ] inside a PARAM-VALUE"
                value.append(rest[j])
                j += 1
        params[name] = "".join(value)
        i = j + 1
        if rest[i] == " ":
            i += 1
    assert rest[i + 1] == " "
    msg = rest[i + 2 :]
    return {
        "pri": int(pri),
        "version": int(version),
        "timestamp": timestamp.decode(),
        "hostname": hostname.decode(),
        "app": app.decode(),
        "procid": procid.decode(),
        "msgid": msgid.decode(),
        "sd_id": sd_id,
        "params": params,
        "msg": msg,
    }


def syslog(address: str, **kw: Any) -> SyslogSinkSettings:
    return SyslogSinkSettings.model_validate({"type": "syslog", "name": "siem", "address": address, **kw})


def test_syslog_udp_sends_rfc5424(sinks: list[SinkSet], tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        port = rx.getsockname()[1]
        s = sink_set(sinks, [syslog(f"udp://127.0.0.1:{port}", app_name="bastion-test")], tmp_path)
        tricky = new_event(
            "webhook.replayed",
            severity="warning",
            actor='consumer:a"b\\c]d',
            route="hooks:POST /hooks/x",
            reason="webhook_replayed",
            data={"note": "ünïcode"},
        )
        huge = new_event("request.denied", severity="critical", data={"blob": "y" * 20_000})
        s.emit(tricky)
        s.emit(huge)
        s.start()
        first, second = rx.recv(65535), rx.recv(65535)

    m = parse_rfc5424(first)
    assert m["pri"] == 16 * 8 + 4  # local0, warning
    assert m["version"] == 1
    assert m["timestamp"] == event_document(tricky)["time"]
    assert m["hostname"] != "" and " " not in m["hostname"]
    assert (m["app"], m["procid"], m["msgid"]) == ("bastion-test", str(os.getpid()), "webhook.replayed")
    assert m["sd_id"] == "bastion@32473"
    assert m["params"]["actor"] == 'consumer:a"b\\c]d'
    assert m["params"]["id"] == tricky.id and m["params"]["reason"] == "webhook_replayed"
    assert 'actor="consumer:a\\"b\\\\c\\]d"' in first.decode()
    assert not m["msg"].startswith("\ufeff")  # no BOM
    assert json.loads(m["msg"]) == event_document(tricky)

    # Over 8 KiB a datagram is shortened: the message is still JSON, its data marked as truncated.
    assert len(second) <= 8192
    big = parse_rfc5424(second)
    assert big["pri"] == 16 * 8 + 2
    assert json.loads(big["msg"]) == {**event_document(huge), "data": {"_truncated": True}}


class TcpSyslogReceiver:
    """A syslog receiver over TCP that reads octet-counted frames (RFC 6587 §3.4.1); stop and start it
    again on the same port."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen()
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while chunk := conn.recv(65536):
                buf += chunk
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    assert length.isdigit(), length[:20]
                    if len(rest) < int(length):
                        break
                    with self._lock:
                        self.messages.append(rest[: int(length)])
                    buf = rest[int(length) :]
        except OSError:
            return

    def stop(self) -> None:
        assert self._listener is not None
        # shutdown() first: close() alone leaves a socket that a thread is blocked in accept() on listening.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._conns:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def ids(self) -> list[str]:
        with self._lock:
            return [json.loads(parse_rfc5424(m)["msg"])["id"] for m in self.messages]


def test_syslog_tcp_octet_counting_survives_a_receiver_outage(tmp_path: Path, sinks: list[SinkSet]) -> None:
    rx = TcpSyslogReceiver()
    rx.start()
    try:
        s = sink_set(sinks, [syslog(f"tcp://127.0.0.1:{rx.port}", facility="auth")], tmp_path)
        s.start()
        before = events(5, severity="error")
        for e in before:
            s.emit(e)
        wait_for(lambda: len(rx.ids()) == 5, what="5 messages")
        m = parse_rfc5424(rx.messages[0])
        assert (m["pri"], m["msgid"]) == (4 * 8 + 3, "request.denied")
        assert json.loads(m["msg"]) == event_document(before[0])

        rx.stop()
        during = events(6)
        for e in during:
            s.emit(e)
        wait_for(lambda: s.stats()["siem"]["dead_lettered"] == 6, what=f"6 dead-lettered {s.stats()}")
        assert s.stats()["siem"]["failures"] >= 1

        rx.start()  # the same port
        wait_for(lambda: len(rx.ids()) == 11, what="the outage's events delivered")
        after = events(2)
        for e in after:
            s.emit(e)
        # Within 4 s, though the TCP timeout is 5 s: checking the connection before a batch must not wait.
        wait_for(lambda: len(rx.ids()) == 13, timeout=4, what="13 messages")
        assert rx.ids() == [e.id for e in before + during + after]  # nothing lost, order kept
        wait_for(lambda: s.stats()["siem"]["delivered"] == 13, what="13 delivered")
        st = s.stats()["siem"]
        assert (st["delivered"], st["dead_lettered"], st["dropped"]) == (13, 6, 0)
    finally:
        rx.stop()


# -- webhook ---------------------------------------------------------------------------------------------

ROUTE = Route(id="sink:POST /hook", service="sink", template="/hook", methods=frozenset({"POST"}))


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def declared_length(self) -> int | None:
        return len(self.data)

    def cap(self, limit: int) -> None:
        return None

    async def read(self) -> bytes:
        return self.data

    def arrived(self) -> bytes | None:
        return None  # read() is the one way to get it here


def bastion_verifies(
    secret: str, headers: list[tuple[str, str]], body: bytes, clock: Callable[[], float] = time.time
) -> bool:
    """The receiver side: Bastion's own ``hmac_signature`` check, preset standard_webhooks."""
    check = HmacWebhook(
        PRESETS["standard_webhooks"],
        [standard_webhooks_secret(secret)],
        tolerance=300,
        replay=MemoryReplayCache(),
        clock=clock,
        namespace="sink-test",
    )
    ip = ip_address("127.0.0.1")
    view = RequestView(
        method="POST",
        path="/hook",
        query="",
        headers=Headers([("host", "127.0.0.1"), *((n.lower(), v) for n, v in headers)]),
        client_ip=ip,
        peer_ip=ip,
        scheme="http",
        host="127.0.0.1",
        route=ROUTE,
        params={},
        body=_Body(body),
        request_id="req-1",
        raw_path="/hook",
    )
    return asyncio.run(check(view, Context("req-1"))) is None


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WebhookReceiver

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = list(self.headers.items())
        srv = self.server
        srv.gate.wait(30)  # a slow receiver, as slow as the test wants (set: answers at once)
        with srv.lock:
            status = srv.statuses.pop(0) if srv.statuses else 200
            verified = bastion_verifies(srv.secrets[self.path], headers, body, srv.clock)
            srv.received.append(
                {
                    "path": self.path,
                    "status": status,
                    "verified": verified,
                    "headers": {k.lower(): v for k, v in headers},
                    "body": body,
                }
            )
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


class WebhookReceiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secrets: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.secrets = secrets
        self.clock: Callable[[], float] = time.time
        self.statuses: list[int] = []
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def accepted_ids(self, path: str) -> list[str]:
        with self.lock:
            got = [r for r in self.received if r["path"] == path and r["status"] == 200]
        return [d["id"] for r in got for d in json.loads(r["body"])["events"]]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    rx = WebhookReceiver({"/a": SECRET, "/b": RAW_SECRET})
    yield rx
    rx.shutdown()
    rx.server_close()


def webhook(url: str, **kw: Any) -> WebhookSinkSettings:
    return WebhookSinkSettings.model_validate(
        {"type": "webhook", "name": "hook", "url": url, "secret": SECRET, "flush_interval": "50ms", **kw}
    )


def test_webhook_batches_are_signed_the_standard_webhooks_way(
    receiver: WebhookReceiver, sinks: list[SinkSet], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = [
        webhook(receiver.url("/a"), batch_size=4),  # a whsec_ secret: the key is its base64-decoded bytes
        webhook(receiver.url("/b"), name="raw", secret=RAW_SECRET, batch_size=4),  # the UTF-8 bytes
    ]
    receiver.clock = lambda: 1_700_000_000.0 + 60  # the receiver's clock, a minute later: within tolerance
    s = sink_set(sinks, settings, tmp_path, clock=lambda: 1_700_000_000.0 + 0.9)
    sent = events(10)
    for e in sent:
        s.emit(e)
    s.start()
    wait_for(lambda: len(receiver.accepted_ids("/a")) == 10 and len(receiver.accepted_ids("/b")) == 10)
    assert receiver.accepted_ids("/a") == receiver.accepted_ids("/b") == [e.id for e in sent]

    with receiver.lock:
        got = list(receiver.received)
    assert [len(json.loads(r["body"])["events"]) for r in got if r["path"] == "/a"] == [4, 4, 2]
    assert all(r["verified"] for r in got)
    for r in got:
        h = r["headers"]
        assert h["content-type"] == "application/json"
        assert h["webhook-timestamp"] == "1700000000"  # the injected clock, in whole seconds
        assert h["webhook-signature"].startswith("v1,")
        doc = json.loads(r["body"])
        assert list(doc) == ["events"]
        assert doc["events"][0]["id"] in h["webhook-id"]
    assert json.loads(got[0]["body"])["events"] == [event_document(e) for e in sent[:4]]
    assert len({r["headers"]["webhook-id"] for r in got if r["path"] == "/a"}) == 3
    # Another secret does not verify: the check is real.
    a = next(r for r in got if r["path"] == "/a")
    headers, body = list(a["headers"].items()), a["body"]
    assert bastion_verifies(SECRET, headers, body, receiver.clock)
    assert not bastion_verifies(RAW_SECRET, headers, body, receiver.clock)
    assert not bastion_verifies(SECRET, headers, body)  # now, long after the timestamp: stale
    assert SECRET not in caplog.text and RAW_SECRET not in caplog.text


def test_webhook_failing_then_recovering_loses_nothing(
    receiver: WebhookReceiver, sinks: list[SinkSet], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500, 404, 500]  # 4xx too: a misconfigured receiver must not cost events
    s = sink_set(sinks, [webhook(receiver.url("/a"), batch_size=5)], tmp_path)
    first = events(5)
    for e in first:
        s.emit(e)
    s.start()
    wait_for(lambda: len(receiver.accepted_ids("/a")) == 5, what="the batch accepted")
    later = events(3)
    for e in later:
        s.emit(e)
    wait_for(lambda: len(receiver.accepted_ids("/a")) == 8, what="8 accepted")
    wait_for(lambda: s.stats()["hook"]["delivered"] == 8, what="8 delivered")  # counted after the answer

    # Every event arrives; here each exactly once (the refused attempts were not accepted).
    assert receiver.accepted_ids("/a") == [e.id for e in first + later]
    with receiver.lock:
        got = list(receiver.received)
    assert [r["status"] for r in got] == [500, 404, 500, 200, 200]
    assert len({r["headers"]["webhook-id"] for r in got[:4]}) == 1  # retries carry the same webhook-id
    assert all(r["verified"] for r in got)
    assert s.stats()["hook"] == {"queued": 0, "delivered": 8, "failures": 3, "dead_lettered": 5, "dropped": 0}
    assert not (tmp_path / "bastion-sink-hook.unsent.jsonl").exists()
    assert "sink hook: delivery failed (HTTP 500)" in caplog.text


class HangingServer:
    """Accepts connections and reads, but never answers, until released."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            if conn.recv(65536).startswith(b"POST"):
                self.requests += 1
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_emit_never_blocks_when_the_receiver_hangs(tmp_path: Path) -> None:
    hang = HangingServer()
    settings = webhook(f"http://127.0.0.1:{hang.port}/a", timeout="60s", queue_size=20_000, batch_size=100)
    s = SinkSet([settings], base_dir=str(tmp_path), backoff=FAST)
    try:
        stuck = events(1)
        s.emit(stuck[0])
        s.start()
        wait_for(lambda: hang.requests == 1, what="the sink thread to be stuck in a request")

        rest = events(10_000)
        started = time.monotonic()
        for e in rest:
            s.emit(e)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0  # the sink thread waits up to 60 s; emitting does not wait with it
        assert s.stats()["hook"]["queued"] == 10_000

        # close() does not wait 60 s either: the stuck batch and the queue go to the dead-letter file.
        started = time.monotonic()
        s.close(timeout=1.0)
        assert time.monotonic() - started < 5.0
        dead = tmp_path / "bastion-sink-hook.unsent.jsonl"
        assert read_ids(dead) == [e.id for e in stuck + rest]
        assert s.stats()["hook"]["dead_lettered"] == 10_001
    finally:
        hang.release()


# -- through a real Bastion gateway: the receiver example of docs/exports.md -----------------------------

GATEWAY_ROUTES = """
      - path: /hooks/bastion-events
        methods: [POST]
        auth: [hmac_signature]
        hmac:
          secrets: [${env:EVENTS_WEBHOOK_SECRET}]
          preset: standard_webhooks
          tolerance: 5m
"""


def test_a_bastion_hmac_signature_route_accepts_the_batches(tmp_path: Path, sinks: list[SinkSet]) -> None:
    with EchoUpstream() as upstream:
        text = config_text(upstream.port, tmp_path / "bastion.db", routes=GATEWAY_ROUTES)
        with GatewayThread(load_text(text, env={"EVENTS_WEBHOOK_SECRET": SECRET})) as gw:
            url = f"http://127.0.0.1:{gw.port}/hooks/bastion-events"
            sent = events(7)
            s = sink_set(sinks, [webhook(url, batch_size=3)], tmp_path / "a")
            (tmp_path / "a").mkdir()
            for e in sent:
                s.emit(e)
            s.start()
            wait_for(lambda: s.stats()["hook"]["delivered"] == 7, what="7 delivered through the gateway")
            assert s.stats()["hook"]["failures"] == 0
            forwarded = [r for r in upstream.requests if r[1] == "/hooks/bastion-events"]
            assert len(forwarded) == 3

            # The same batches again (a retry whose first answer was lost): Bastion refuses the known
            # webhook-ids as replays (409 webhook_replayed), which the sink counts as delivered.
            again = sink_set(sinks, [webhook(url, batch_size=3)], tmp_path / "b")
            (tmp_path / "b").mkdir()
            for e in sent:
                again.emit(e)
            again.start()
            wait_for(lambda: again.stats()["hook"]["delivered"] == 7, what="replays counted as delivered")
            assert again.stats()["hook"]["failures"] == 0
            assert len([r for r in upstream.requests if r[1] == "/hooks/bastion-events"]) == 3


def test_a_broken_whsec_secret_is_a_config_error_that_does_not_show_it(tmp_path: Path) -> None:
    from tests.support import config_text, load_text

    broken = "whsec_not*base64*at-all"  # a fixture, not a secret
    sink = "{type: webhook, url: https://example.com/events, secret: ${env:SINK_SECRET}}"
    extra = f"events:\n  sinks:\n    - {sink}\n"
    with pytest.raises(ConfigError) as info:
        load_text(config_text(9, tmp_path / "b.db", extra=extra), env={"SINK_SECRET": broken})
    assert "test.yaml:16: events.sinks[0].secret: a whsec_ secret must be followed by base64" in str(
        info.value
    )
    assert broken not in str(info.value) and "not*base64" not in repr(info.value)


def test_draining_the_backlog_never_makes_another_process_wait(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Worker A delivers a 300-event backlog to a slow receiver; meanwhile worker B (same dead-letter file)
    must still put its own events there at once, and they arrive after the backlog, in order."""
    from bastion.core.events import event_document

    dead = tmp_path / "shared.unsent.jsonl"
    backlog = [event_document(new_event("request.denied", now=1_700_000_000.0 + i)) for i in range(300)]
    dead.write_text("".join(json.dumps(d) + "\n" for d in backlog))
    settings = webhook(receiver.url("/a"), dead_letter=str(dead), batch_size=100)
    receiver.gate.clear()
    a = SinkSet([settings], base_dir=str(tmp_path), backoff=FAST)
    b = SinkSet([settings], base_dir=str(tmp_path), backoff=FAST)
    a.start()
    try:
        wait_for(
            lambda: list(tmp_path.glob("shared.unsent.jsonl.draining.*")), what="A to move the backlog aside"
        )
        later = [event_document(new_event("request.denied", now=1_700_001_000.0 + i)) for i in range(5)]
        started = time.monotonic()
        b._sinks[0]._bury(later)  # what B does with a batch while the sink is down
        assert time.monotonic() - started < 1.0  # A is still stuck on the receiver, holding nothing
        assert not receiver.gate.is_set()
        receiver.gate.set()
        want = [d["id"] for d in backlog + later]
        wait_for(lambda: receiver.accepted_ids("/a") == want, what="the backlog, then B's events")
    finally:
        receiver.gate.set()
        a.close()
        b.close()
    assert not list(tmp_path.glob("shared.unsent.jsonl*"))
