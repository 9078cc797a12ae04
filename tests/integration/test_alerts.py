"""Alerts for real: two engines sharing the real Redis on 127.0.0.1:6379 alert once between them, a
webhook receiver on loopback verifies each delivery with Bastion's own Standard Webhooks check, and an
aiosmtpd server on loopback (and on the host's non-loopback address, for STARTTLS) receives the mail —
including a receiver that is down at first and up for a retry. Time inside the engines is a fake clock;
only retries wait for real (a fraction of a second)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bastion.alerts import AlertEngine, EmailChannel, WebhookChannel, build_alert_state
from bastion.alerts.state import AlertState, Baseline, FallbackAlertState, MemoryAlertState, RedisAlertState
from bastion.checks.hmac_webhook import PRESETS, HmacWebhook, standard_webhooks_secret
from bastion.config.models import AlertSettings, EmailChannelSettings
from bastion.core.decision import Context
from bastion.core.events import Event
from bastion.core.headers import Headers
from bastion.core.request import RequestView
from bastion.core.router import Route
from bastion.events.writer import new_event
from bastion.state.memory import MemoryReplayCache
from bastion.state.redis import RedisState

REDIS = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000.0
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test fixture, not a secret
STUFFING = {"name": "stuffing", "builtin": "credential_stuffing"}


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def failed(ip: str, key_id: str, t: float = T0) -> Event:
    return new_event(
        "auth.failed",
        now=t,
        severity="warning",
        source_ip=ip,
        reason="auth_invalid",
        data={"status": 401, "cause": "api_key_unknown", "key_id": key_id},
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- two engines on one Redis ----------------------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    name = "bastion-alerts-" + secrets.token_hex(5)
    yield name
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(match=f"{name}:*"):
        client.delete(key)
    client.close()


class Instance:
    """One gateway's engine: its own Redis connection (as a separate process would have), the shared
    prefix, and a clock the test moves."""

    def __init__(self, rules: Sequence[dict[str, Any]], prefix: str, clock: Clock, **kw: Any) -> None:
        self.emitted: list[Event] = []
        self.redis = RedisState(REDIS, prefix=prefix)  # the gateway's (the alerts open their own)
        settings = AlertSettings.model_validate({"rules": list(rules)})
        self.engine = AlertEngine(
            settings,
            state=build_alert_state(REDIS, self.redis, prefix),
            emit=self.emitted.append,
            clock=clock,
            channels={},
            **kw,
        )

    async def feed(self, events: Sequence[Event]) -> list[Event]:
        for event in events:
            self.engine.observe(event)
        return await self.engine.step()

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.redis.aclose()


def pair(
    rules: Sequence[dict[str, Any]],
    prefix: str,
    scenario: Callable[[Instance, Instance, Clock], Awaitable[None]],
) -> None:
    async def main() -> None:
        clock = Clock()
        a, b = Instance(rules, prefix, clock), Instance(rules, prefix, clock)
        try:
            await scenario(a, b, clock)
            for instance in (a, b):
                assert instance.engine.stats["state_failures"] == 0
                assert instance.engine.stats["errors"] == 0
                assert instance.redis._conn is None  # the request path's connection carried none of it
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


def test_two_instances_each_seeing_half_a_burst_alert_exactly_once(prefix: str) -> None:
    async def scenario(a: Instance, b: Instance, clock: Clock) -> None:
        fired = []
        for i in range(0, 10, 2):  # interleaved: each instance sees every other key
            clock.t = T0 + i
            fired += await a.feed([failed("203.0.113.9", f"key{i}", clock.t)])
            fired += await b.feed([failed("203.0.113.9", f"key{i + 1}", clock.t)])
        assert len(fired) == 1 and fired[0].data["evidence"]["distinct_identities"] == 10
        # the attack goes on at both: both see the threshold crossed, the cooldown holds both
        clock.t = T0 + 20
        more = [failed("203.0.113.9", f"more{i}", clock.t) for i in range(30)]
        assert await a.feed(more[:15]) == [] and await b.feed(more[15:]) == []
        # after the cooldown (15 min) a new burst alerts once again, seen by both at once
        clock.t = T0 + 1000
        burst = [failed("203.0.113.9", f"late{i}", clock.t) for i in range(12)]
        again = await a.feed(burst[:6]) + await b.feed(burst[6:])
        assert len(again) == 1
        assert len(a.emitted) + len(b.emitted) == 2

    pair([STUFFING], prefix, scenario)
    keys = {k.decode() for k in redis.Redis.from_url(REDIS).scan_iter(match=f"{prefix}:*")}
    assert keys and all(k.startswith(f"{prefix}:alert:") for k in keys)
    assert f"{prefix}:alert:cd:stuffing:net:203.0.113.0/24" in keys


def test_two_instances_share_the_slash_24_and_the_per_key_counts(prefix: str) -> None:
    async def scenario(a: Instance, b: Instance, clock: Clock) -> None:
        events = [failed(f"203.0.113.{i}", f"key{i}") for i in range(10)]
        fired = await a.feed(events[:5]) + await b.feed(events[5:])
        assert [x.data["group"] for x in fired] == ["net:203.0.113.0/24"]
        spread = [failed(f"198.{18 + i}.0.1", "k_target") for i in range(10)]
        fired = await a.feed(spread[::2]) + await b.feed(spread[1::2])
        assert [x.data["group"] for x in fired] == ["key:k_target"]

    pair([STUFFING], prefix, scenario)


def test_traffic_is_summed_across_instances_for_the_baseline(prefix: str) -> None:
    rule = {"name": "spike", "builtin": "traffic_spike"}

    async def scenario(a: Instance, b: Instance, clock: Clock) -> None:
        fired: list[Event] = []
        # steady: 100/min in total, 50 through each instance; then 400/min through each (8x in total, 4x
        # at either instance alone — only the shared count sees the spike)
        for i, per_instance in enumerate([50] * 12 + [400, 50, 50]):
            clock.t = T0 + i * 60 + 30
            for instance in (a, b):
                for _ in range(per_instance):
                    instance.engine.observe_use("acme", "k1", "203.0.113.9")
                fired += await instance.engine.step()
        assert len(fired) == 1
        ev = fired[0].data["evidence"]
        assert ev["count"] == 800 and ev["baseline"] == pytest.approx(100, rel=0.01)

    pair([rule], prefix, scenario)


def test_a_steady_rate_over_two_instances_never_alerts(prefix: str) -> None:
    rule = {"name": "spike", "builtin": "traffic_spike", "min_rate": 10}

    async def scenario(a: Instance, b: Instance, clock: Clock) -> None:
        fired: list[Event] = []
        for i in range(20):
            clock.t = T0 + i * 60 + 30
            for instance, n in ((a, 300 + 40 * (i % 3)), (b, 320 - 40 * (i % 3))):
                for _ in range(n):
                    instance.engine.observe_use("acme", None, "203.0.113.9")
                fired += await instance.engine.step()
        assert fired == []

    pair([rule], prefix, scenario)


def test_a_new_country_seen_by_another_instance_alerts_once(prefix: str) -> None:
    rule = {"name": "new-country", "builtin": "new_source_country"}

    async def scenario(a: Instance, b: Instance, clock: Clock) -> None:
        a.engine.observe_use("acme", "k1", "8.8.8.8")  # US: the baseline
        assert await a.engine.step() == []
        b.engine.observe_use("acme", "k1", "1.0.16.1")  # JP: new, though b never saw k1 before
        fired = await b.engine.step()
        assert [x.data["evidence"]["previous_countries"] for x in fired] == [["US"]]
        clock.t += 3600
        a.engine.observe_use("acme", "k1", "1.0.16.1")  # known by now, at every instance
        assert await a.engine.step() == []

    pair([rule], prefix, scenario)


def test_a_when_rule_counts_across_instances_per_group(prefix: str) -> None:
    rule = {
        "name": "denials",
        "when": {"type": "request.denied", "count": 6, "within": "1m", "group_by": "source_ip"},
    }

    def denied(ip: str) -> Event:
        return new_event("request.denied", now=T0, source_ip=ip, reason="ip_denied", data={"status": 403})

    async def scenario(a: Instance, b: Instance, clock: Clock) -> None:
        fired = await a.feed([denied("203.0.113.1")] * 3 + [denied("203.0.113.2")] * 5)
        fired += await b.feed([denied("203.0.113.1")] * 3)
        assert [x.data["group"] for x in fired] == ["source_ip:203.0.113.1"]

    pair([rule], prefix, scenario)


def test_when_redis_is_down_alerts_come_from_this_process(prefix: str) -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        emitted: list[Event] = []
        state = build_alert_state(f"redis://127.0.0.1:{port}/0", None, prefix)
        assert isinstance(state, FallbackAlertState)
        engine = AlertEngine(
            AlertSettings.model_validate({"rules": [STUFFING]}),
            state=state,
            emit=emitted.append,
            clock=Clock(),
            channels={},
        )
        for i in range(10):
            engine.observe(failed("203.0.113.9", f"k{i}"))
        started = time.monotonic()
        fired = await engine.step()
        assert time.monotonic() - started < 2.0  # the breaker opens: no waiting on a dead Redis per call
        assert len(fired) == 1 and engine.stats["state_failures"] == 31
        await engine.aclose()

    asyncio.run(main())


def test_memory_and_redis_state_answer_alike(prefix: str) -> None:
    """The same operations at the same (fake) times give the same answers on both backends."""

    async def script(state: AlertState) -> list[Any]:
        out: list[Any] = []
        for i in range(12):  # members at T0..T0+110, window 60 s
            out.append(await state.add_distinct("d", f"m{i % 8}", T0 + 10 * i, 60))
        out.append(await state.add_distinct("d", "late", T0 + 500, 60))
        for i in range(40):  # 40 events over 80 s, window 60 s in 2 s sub-buckets
            out.append(await state.count("c", T0 + 2 * i, 60))
        out += [
            await state.add("n", 5, T0, 10),
            await state.add("n", 0, T0, 10),
            await state.add("n", 2, T0, 10),
        ]
        for member in ("US", "US", "GB", "JP", "GB"):
            seen = await state.remember("s", member, T0, 3600)
            out.append((seen.new, seen.known, sorted(seen.sample)))
        out += [
            await state.claim("k", T0, 10),
            await state.claim("k", T0 + 5, 10),
            await state.claim("k", T0 + 10, 10),
        ]
        out.append(await state.baseline("b", T0))
        await state.set_baseline("b", Baseline(12.5, 7, 99), T0, 3600)
        out.append(await state.baseline("b", T0 + 1))
        for i in range(5):  # a caller 300 s behind the others counts only what it could see
            await state.count("lag", T0 + 300 + i, 60)
            await state.add_distinct("lagd", f"m{i}", T0 + 300 + i, 60)
        out.append(await state.count("lag", T0, 60))
        out.append(await state.add_distinct("lagd", "late", T0, 60))
        return out

    async def main() -> None:
        shared = RedisAlertState(RedisState(REDIS, timeout=2.0, prefix=prefix), prefix, owned=True)
        try:
            local = await script(MemoryAlertState())
            assert await script(shared) == local
            assert local[11] == 6 and local[12] == 1  # members of the last 60 s; then only the late one
            # at T0+78: the events from T0+18 on (the window rounded out to its 2 s sub-bucket)
            assert local[13:53][-1] == 31 and local[53:56] == [5, 5, 7]
            seen = [(True, 0, []), (False, 1, []), (True, 1, ["US"]), (True, 2, ["GB", "US"]), (False, 3, [])]
            assert local[56:61] == seen
            assert local[61:64] == [True, False, True]
            assert local[64] is None and local[65] == Baseline(12.5, 7, 99)
            assert local[66:] == [1, 1]
        finally:
            await shared.aclose()

    asyncio.run(main())


# -- webhook channel -------------------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback: answers with ``statuses`` in turn (the last one repeats)."""

    def __init__(self, statuses: Sequence[int] = (200,)) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.got = threading.Event()
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/alerts?token=querysecret"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Receiver

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.statuses.pop(0) if len(self.server.statuses) > 1 else self.server.statuses[0]
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()
        if status == 200:
            self.server.got.set()


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def declared_length(self) -> int:
        return len(self.data)

    def cap(self, limit: int) -> None:
        return None

    async def read(self) -> bytes:
        return self.data

    def arrived(self) -> bytes | None:
        return None  # read() is the one way to get it here


async def bastion_verifies(headers: dict[str, str], body: bytes) -> bool:
    """Bastion's own ``hmac_signature`` check (standard_webhooks preset) accepts the delivery."""
    check = HmacWebhook(
        PRESETS["standard_webhooks"],
        [standard_webhooks_secret(SECRET)],
        tolerance=300,
        replay=MemoryReplayCache(),
        clock=time.time,
        namespace="alerts",
    )
    ip = ipaddress.ip_address("127.0.0.1")
    route = Route(
        id="hooks:POST /hooks/alerts", service="hooks", template="/hooks/alerts", methods=frozenset({"POST"})
    )
    view = RequestView(
        method="POST",
        path="/hooks/alerts",
        query="",
        headers=Headers(list(headers.items())),
        client_ip=ip,
        peer_ip=ip,
        scheme="http",
        host="127.0.0.1",
        route=route,
        params={},
        body=_Body(body),
        request_id="r1",
        raw_path="/hooks/alerts",
    )
    return await check(view, Context("r1")) is None


def webhook_engine(
    url: str, emitted: list[Event], delays: Sequence[float] = (0.05, 0.05, 0.05, 0.05)
) -> AlertEngine:
    channel = {"name": "ops-hook", "type": "webhook", "url": url, "secret": SECRET, "timeout": "2s"}
    settings = AlertSettings.model_validate(
        {"channels": [channel], "rules": [{**STUFFING, "channels": ["ops-hook"]}]}
    )
    return AlertEngine(
        settings,
        state=build_alert_state("memory://", None, "x"),
        emit=emitted.append,
        clock=Clock(),
        retry_delays=delays,
    )


async def fire_stuffing(engine: AlertEngine) -> Event:
    for i in range(10):
        engine.observe(failed("203.0.113.9", f"key{i}"))
    fired = await engine.step()
    assert len(fired) == 1
    return fired[0]


def test_the_webhook_is_signed_as_bastion_verifies_standard_webhooks() -> None:
    emitted: list[Event] = []
    with Receiver() as receiver:

        async def main() -> None:
            engine = webhook_engine(receiver.url, emitted)
            assert isinstance(engine.channels["ops-hook"], WebhookChannel)
            alert = await fire_stuffing(engine)
            await engine.aclose()
            assert len(receiver.received) == 1
            headers, body = receiver.received[0]
            assert headers["webhook-id"] == alert.id and headers["content-type"] == "application/json"
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
            assert await bastion_verifies(headers, body)
            tampered = body.replace(b"203.0.113.9", b"203.0.113.8")
            assert not await bastion_verifies(headers, tampered)
            doc = json.loads(body)["alert"]
            assert doc["id"] == alert.id and doc["type"] == "alert.fired" and doc["time"].endswith("Z")
            assert doc["data"]["rule"] == "stuffing" and doc["data"]["channels"] == ["ops-hook"]
            assert engine.stats["deliveries"] == 1 and engine.stats["deliveries_failed"] == 0

        asyncio.run(main())


def test_a_receiver_answering_503_gets_the_same_alert_again_until_it_accepts() -> None:
    emitted: list[Event] = []
    with Receiver([503, 502, 200]) as receiver:

        async def main() -> None:
            engine = webhook_engine(receiver.url, emitted)
            alert = await fire_stuffing(engine)
            await engine.aclose()
            assert [h["webhook-id"] for h, _ in receiver.received] == [alert.id] * 3
            for headers, body in receiver.received:
                assert await bastion_verifies(headers, body)
            assert engine.stats["deliveries"] == 1 and engine.stats["deliveries_failed"] == 0

        asyncio.run(main())
    assert [e.type for e in emitted] == ["alert.fired"]


def test_a_receiver_that_refuses_for_good_becomes_a_delivery_failed_event() -> None:
    emitted: list[Event] = []
    with Receiver([404]) as receiver:

        async def main() -> None:
            engine = webhook_engine(receiver.url, emitted)
            await fire_stuffing(engine)
            await engine.aclose()
            assert len(receiver.received) == 1  # a 404 is not retried

        asyncio.run(main())
    failure = [e for e in emitted if e.type == "alert.delivery_failed"]
    assert (
        len(failure) == 1
        and failure[0].data["error"] == "http_404"
        and failure[0].data["channel"] == "ops-hook"
    )
    assert "querysecret" not in json.dumps(failure[0].data) and "127.0.0.1" not in json.dumps(failure[0].data)


def test_an_unreachable_receiver_is_tried_five_times() -> None:
    emitted: list[Event] = []
    url = f"http://127.0.0.1:{free_port()}/hooks"

    async def main() -> None:
        engine = webhook_engine(url, emitted, delays=(0.01, 0.01, 0.01, 0.01))
        await fire_stuffing(engine)
        await engine.aclose()
        assert engine.stats["deliveries_failed"] == 1

    asyncio.run(main())
    failure = next(e for e in emitted if e.type == "alert.delivery_failed")
    assert failure.data["error"] == "ConnectError" and failure.data["attempts"] == 5


def test_run_steps_until_closed() -> None:
    emitted: list[Event] = []

    async def main() -> None:
        engine = AlertEngine(
            AlertSettings.model_validate({"rules": [STUFFING]}),
            state=build_alert_state("memory://", None, "x"),
            emit=emitted.append,
        )
        task = asyncio.create_task(engine.run(interval=0.01))
        for i in range(10):
            engine.observe(failed("203.0.113.9", f"k{i}", time.time()))
        for _ in range(200):
            if emitted:
                break
            await asyncio.sleep(0.01)  # waiting for the background loop, not for time to pass
        await engine.aclose()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert [e.type for e in emitted] == ["alert.fired"]


# -- email channel ---------------------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.got = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        )
        self.got.set()
        return "250 OK"

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.logins.append((data.login, data.password))
            return AuthResult(success=data.password == b"mail-password")
        return AuthResult(success=False)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A self-signed certificate for 127.0.0.1 and 192.0.2.2, and a client context trusting only it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bastion-test-smtp")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "192.0.2.2")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp: Path = tmp_path_factory.mktemp("smtp-tls")
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return {"server": server, "client": client}


def email_engine(
    smtp: str, emitted: list[Event], *, ssl_context: ssl.SSLContext | None = None, **channel: Any
) -> tuple[AlertEngine, EmailChannel]:
    config = {
        "name": "ops-mail",
        "type": "email",
        "smtp": smtp,
        "to": ["ops@example.com", "security@example.com"],
        "from": "bastion@example.com",
        "timeout": "2s",
        **channel,
    }
    settings = AlertSettings.model_validate(
        {"channels": [config], "rules": [{**STUFFING, "channels": ["ops-mail"]}]}
    )
    assert isinstance(settings.channels[0], EmailChannelSettings)
    mail = EmailChannel(settings.channels[0], ssl_context=ssl_context)
    engine = AlertEngine(
        settings,
        state=build_alert_state("memory://", None, "x"),
        emit=emitted.append,
        clock=Clock(),
        channels={"ops-mail": mail},
        retry_delays=(0.3, 0.5, 1.0, 2.0),
    )
    return engine, mail


def test_the_email_reaches_a_real_smtp_server() -> None:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    emitted: list[Event] = []
    try:

        async def main() -> None:
            engine, _ = email_engine(f"smtp://127.0.0.1:{controller.port}", emitted)
            alert = await fire_stuffing(engine)
            await engine.aclose()
            assert engine.stats["deliveries"] == 1
            sender, rcpts, msg = box.messages[0]
            assert sender == "bastion@example.com" and rcpts == ["ops@example.com", "security@example.com"]
            assert msg["Subject"] == "[Bastion] stuffing: 10 identities failed from 203.0.113.9 in 5m"
            assert msg["To"] == "ops@example.com, security@example.com"
            body = msg.get_payload(decode=True).decode()
            assert alert.id in body and "Group:     ip:203.0.113.9" in body
            assert "distinct_identities: 10" in body and "key_id=key9" in body

        asyncio.run(main())
    finally:
        controller.stop()


def test_an_smtp_server_down_at_first_gets_the_alert_on_a_retry() -> None:
    port = free_port()
    box = Mailbox()
    emitted: list[Event] = []
    controller = Controller(box, hostname="127.0.0.1", port=port)

    async def main() -> None:
        engine, mail = email_engine(f"smtp://127.0.0.1:{port}", emitted)
        attempts: list[float] = []
        send = mail.send

        async def counted(alert: Event) -> None:
            attempts.append(time.monotonic())
            await send(alert)

        mail.send = counted  # type: ignore[method-assign]
        await fire_stuffing(engine)
        for _ in range(500):  # until the first attempt has failed (nothing listens yet)
            if attempts:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await asyncio.to_thread(controller.start)  # the receiver comes up before the retry
        await engine.aclose()
        assert (
            len(attempts) >= 2 and engine.stats["deliveries"] == 1 and engine.stats["deliveries_failed"] == 0
        )

    try:
        asyncio.run(main())
    finally:
        controller.stop()
    assert len(box.messages) == 1
    assert [e.type for e in emitted] == ["alert.fired"]


def test_smtp_to_a_remote_host_without_starttls_sends_nothing() -> None:
    box = Mailbox()
    controller = Controller(box, hostname="192.0.2.2", port=free_port("192.0.2.2"))
    controller.start()
    emitted: list[Event] = []
    try:

        async def main() -> None:
            engine, _ = email_engine(f"smtp://192.0.2.2:{controller.port}", emitted)
            await fire_stuffing(engine)
            await engine.aclose()

        asyncio.run(main())
    finally:
        controller.stop()
    assert box.messages == []
    failure = [e for e in emitted if e.type == "alert.delivery_failed"]
    assert [(f.data["error"], f.data["attempts"]) for f in failure] == [("starttls_unavailable", 1)]


def test_smtp_to_a_remote_host_upgrades_with_starttls_and_logs_in(tls: dict[str, Any]) -> None:
    box = Mailbox()
    controller = Controller(
        box,
        hostname="192.0.2.2",
        port=free_port("192.0.2.2"),
        tls_context=tls["server"],
        require_starttls=True,
        authenticator=box.authenticator,
        auth_required=True,
    )
    controller.start()
    emitted: list[Event] = []
    try:

        async def main() -> None:
            engine, _ = email_engine(
                f"smtp://192.0.2.2:{controller.port}",
                emitted,
                ssl_context=tls["client"],
                username="alerts",
                password="mail-password",
            )
            await fire_stuffing(engine)
            await engine.aclose()
            assert engine.stats["deliveries"] == 1

        asyncio.run(main())
    finally:
        controller.stop()
    assert box.logins == [(b"alerts", b"mail-password")] and len(box.messages) == 1


def test_smtps_is_implicit_tls_with_a_verified_certificate(tls: dict[str, Any]) -> None:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), ssl_context=tls["server"])
    controller.start()
    emitted: list[Event] = []
    try:

        async def main() -> None:
            engine, _ = email_engine(
                f"smtps://127.0.0.1:{controller.port}", emitted, ssl_context=tls["client"]
            )
            await fire_stuffing(engine)
            # a client that does not trust the certificate refuses, and does not retry
            untrusting, _ = email_engine(f"smtps://127.0.0.1:{controller.port}", emitted)
            await fire_stuffing(untrusting)
            await engine.aclose()
            await untrusting.aclose()
            assert engine.stats["deliveries"] == 1 and untrusting.stats["deliveries_failed"] == 1

        asyncio.run(main())
    finally:
        controller.stop()
    assert len(box.messages) == 1
    failure = [e for e in emitted if e.type == "alert.delivery_failed"]
    assert [(f.data["error"], f.data["attempts"]) for f in failure] == [("SSLCertVerificationError", 1)]


class _OddQuitServer(threading.Thread):
    """A minimal SMTP server on loopback that accepts every message and answers QUIT with 421."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(b"220 odd ESMTP\r\n")
                f.flush()
                in_data = False
                for raw in f:
                    line = raw.decode("latin-1").rstrip("\r\n")
                    if in_data:
                        if line == ".":
                            in_data = False
                            self.accepted += 1
                            f.write(b"250 queued\r\n")
                        else:
                            continue
                    elif line.upper().startswith("EHLO"):
                        f.write(b"250-odd\r\n250 8BITMIME\r\n")
                    elif line.upper() == "DATA":
                        in_data = True
                        f.write(b"354 go on\r\n")
                    elif line.upper() == "QUIT":
                        f.write(b"421 closing oddly\r\n")
                        f.flush()
                        break
                    else:
                        f.write(b"250 ok\r\n")
                    f.flush()


def test_an_odd_answer_to_quit_after_the_message_was_accepted_sends_it_once() -> None:
    server = _OddQuitServer()
    server.start()
    emitted: list[Event] = []
    try:

        async def main() -> None:
            engine, _ = email_engine(f"smtp://127.0.0.1:{server.port}", emitted)
            await fire_stuffing(engine)
            await engine.aclose()
            assert engine.stats["deliveries"] == 1 and engine.stats["deliveries_failed"] == 0

        asyncio.run(main())
        assert server.accepted == 1
        assert not [e for e in emitted if e.type == "alert.delivery_failed"]
    finally:
        server.sock.close()


def test_deliveries_cut_off_at_shutdown_are_on_record() -> None:
    """A receiver that never answers and a short flush timeout: the pending delivery becomes an
    alert.delivery_failed event with error "shutdown", not a silent loss."""
    hang = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does) and never answers
    emitted: list[Event] = []
    try:

        async def main() -> None:
            settings = AlertSettings.model_validate(
                {
                    "channels": [
                        {
                            "name": "ops",
                            "type": "webhook",
                            "url": f"http://127.0.0.1:{hang.getsockname()[1]}/hook",
                            "secret": SECRET,
                            "timeout": "5s",
                        }
                    ],
                    "rules": [{**STUFFING, "channels": ["ops"]}],
                }
            )
            engine = AlertEngine(
                settings,
                state=build_alert_state("memory://", None, "x"),
                emit=emitted.append,
                clock=Clock(),
                flush_timeout=0.2,
            )
            await fire_stuffing(engine)
            await engine.aclose()

        asyncio.run(main())
        failed = [e for e in emitted if e.type == "alert.delivery_failed"]
        assert [e.data["error"] for e in failed] == ["shutdown"]
    finally:
        hang.close()


def test_admin_sign_in_mail_takes_the_same_tls_rule() -> None:
    """The admin sign-in codes go through the same SMTP transport (bastion.smtp): a remote server that
    offers no STARTTLS gets neither the code nor a login."""
    from bastion.config.models import AdminEmailSettings
    from bastion.identity.admin_codes import AdminMailer
    from bastion.smtp import StartTlsUnavailable

    box = Mailbox()
    controller = Controller(box, hostname="192.0.2.2", port=free_port("192.0.2.2"))
    controller.start()
    try:
        settings = AdminEmailSettings.model_validate({"smtp": f"smtp://192.0.2.2:{controller.port}"})
        mailer = AdminMailer(settings)
        with pytest.raises(StartTlsUnavailable):
            mailer.send("ada@example.com", "123456", 600)
        mailer.close()
    finally:
        controller.stop()
    assert box.messages == []
