"""How an egress route reaches its provider: over https verified against a private CA (``ca_file:``), with
verification on by default, and through an HTTP CONNECT proxy (``proxy:``) that only ever carries TLS.

The provider is the fake api.twilio.com of ``_fake_twilio`` behind TLS, with a certificate signed by a CA
made here with ``cryptography``. The proxy is a small threaded loopback proxy written here: it records each
CONNECT head and every byte it relays, maps the provider's name to 127.0.0.1 itself (so the gateway never
resolves it: the name exists only inside the tunnel), and can refuse the tunnel with 407 or 403.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._fake_twilio import API_KEY_SECRET, API_KEY_SID, FakeTwilio
from ._identity import Stack, identity_stack
from .test_egress import ENV, _pem, _public_pem, egress_config, send

PROVIDER_NAME = "provider.test"  # never resolved by anyone but the test proxy
BODY = "tunnel-canary-" + "q7" * 8  # a message body that must never appear in the proxy's bytes


# -- a private CA and the provider's certificate ---------------------------------------------------------


class Pki:
    def __init__(self, tmp: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bastion-test-ca")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PROVIDER_NAME)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(PROVIDER_NAME)]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = tmp / "ca.pem"
        self.cert_file = tmp / "provider.pem"
        self.key_file = tmp / "provider-key.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


class TlsFakeTwilio(FakeTwilio):
    """The fake provider behind TLS. Each connection's handshake runs on its handler thread; a failed one
    is recorded (``tls_errors``) and never reaches the request handler."""

    def __init__(self, ctx: ssl.SSLContext, public_key_pem: bytes | None = None) -> None:
        super().__init__(public_key_pem)
        self.ctx = ctx
        self.handshakes = 0
        self.tls_errors: list[str] = []

    def __enter__(self) -> TlsFakeTwilio:
        super().__enter__()
        return self

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        sock.settimeout(10)
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.do_handshake()
        with self.state.lock:
            self.handshakes += 1
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        with self.state.lock:
            self.tls_errors.append(f"{type(exc).__name__}: {exc}")


# -- an HTTP CONNECT proxy -----------------------------------------------------------------------------


class ConnectProxy:
    """A threaded CONNECT proxy on 127.0.0.1. ``answer`` 200 opens the tunnel (the target's host looked
    up in ``hosts`` first); another status refuses it, leaving the connection open as a keep-alive proxy
    would; ``None`` never answers. Records the CONNECT heads, the tunnels it opened and every byte relayed
    each way."""

    REASONS = {200: "Connection established", 403: "Forbidden", 407: "Proxy Authentication Required"}

    def __init__(self, answer: int | None = 200, hosts: dict[str, str] | None = None) -> None:
        self.answer = answer
        self.hosts = hosts or {}
        self.heads: list[bytes] = []
        self.tunnels: list[tuple[str, int]] = []
        self.to_target = bytearray()  # gateway → provider, as relayed
        self.from_target = bytearray()  # provider → gateway
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self.listener.close()
        with self.lock:
            for s in self._sockets:
                s.close()
        self._thread.join(5)

    def _track(self, s: socket.socket) -> socket.socket:
        with self.lock:
            self._sockets.append(s)
        return s

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(self._track(conn),), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, early = head.partition(b"\r\n\r\n")
            with self.lock:
                self.heads.append(head + b"\r\n\r\n")
            method, authority, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if self.answer is None:
                while client.recv(4096):  # a proxy that never answers: wait for the gateway to give up
                    pass
                return
            if method != "CONNECT" or self.answer != 200:
                status = 405 if method != "CONNECT" else self.answer
                extra = 'Proxy-Authenticate: Basic realm="egress"\r\n' if status == 407 else ""
                client.sendall(
                    f"HTTP/1.1 {status} {self.REASONS.get(status, 'No')}\r\n{extra}"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                while client.recv(4096):  # keep-alive: wait for the gateway to hang up
                    pass
                return
            host, port = authority.rsplit(":", 1)
            target = self._track(
                socket.create_connection((self.hosts.get(host, host), int(port)), timeout=10)
            )
            with self.lock:
                self.tunnels.append((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if early:
                self._relay_chunk(early, target, self.to_target)
            back = threading.Thread(target=self._pipe, args=(target, client, self.from_target), daemon=True)
            back.start()
            self._pipe(client, target, self.to_target)
            back.join(10)
        except OSError:
            pass
        finally:
            client.close()

    def _relay_chunk(self, data: bytes, dst: socket.socket, record: bytearray) -> None:
        with self.lock:
            record += data
        dst.sendall(data)

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._relay_chunk(data, dst, record)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def pkcv_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def provider(pki: Pki, pkcv_key: rsa.RSAPrivateKey) -> Iterator[TlsFakeTwilio]:
    with TlsFakeTwilio(pki.server_context(), public_key_pem=_public_pem(pkcv_key)) as fake:
        yield fake


ROUTES = """
      - path: /v1/ping
        methods: [GET]
        auth: none
"""


@contextmanager
def egress_gateway(
    tmp: Path, pkcv_key: rsa.RSAPrivateKey, target: str, settings: dict[str, str]
) -> Iterator[tuple[Stack, str]]:
    """A gateway whose egress route (test_egress's config) goes to ``target`` with ``settings`` added;
    yields it and the billing-service's key."""
    tmp.mkdir(parents=True, exist_ok=True)
    key_file = tmp / "pkcv.pem"
    key_file.write_bytes(_pem(pkcv_key))
    extra = "".join(f"    {name}: {value}\n" for name, value in settings.items())
    config = egress_config(0, key_file, extra=extra)
    assert "target: http://127.0.0.1:0\n" in config
    config = config.replace("target: http://127.0.0.1:0\n", f"target: {target}\n")
    with identity_stack(tmp, ROUTES, config, env=ENV) as stack:
        stack.admin().create_consumer("billing-service", ["sms:send"], actor="test")
        key = stack.admin().create_key("billing-service", actor="test")[1]
        yield stack, key


def _send(stack: Stack, key: str) -> Any:
    return send(stack, key, To="+14155552671", From="+15005550006", Body=BODY)


def _assert_sent(reply: Any, provider: TlsFakeTwilio, host: str, sent: int = 1) -> None:
    assert reply.status == 201, reply.body
    assert reply.json()["body"] == BODY
    assert len(provider.received) == sent
    arrived = provider.received[0]
    assert arrived.form()["Body"] == BODY
    assert arrived.headers["host"] == f"{host}:{provider.port}"
    assert arrived.pkcv == "valid"  # the signature covers the Host the provider saw


def _assert_refused_before_the_provider(reply: Any, provider: TlsFakeTwilio) -> None:
    assert reply.status == 502, reply.body
    assert reply.json()["code"] == "upstream_unavailable"
    assert provider.received == []


# -- (a) https to the provider, verified ----------------------------------------------------------------


class TestVerifiedHttps:
    def test_with_the_private_ca_the_message_goes_through(
        self, tmp_path: Path, pki: Pki, pkcv_key: rsa.RSAPrivateKey, provider: TlsFakeTwilio
    ) -> None:
        target = f"https://127.0.0.1:{provider.port}"
        with egress_gateway(tmp_path, pkcv_key, target, {"ca_file": str(pki.ca_file)}) as (stack, key):
            reply = _send(stack, key)
        _assert_sent(reply, provider, "127.0.0.1")
        assert provider.handshakes >= 1 and provider.tls_errors == []

    def test_without_ca_file_verification_is_on_and_nothing_is_sent(
        self, tmp_path: Path, pkcv_key: rsa.RSAPrivateKey, provider: TlsFakeTwilio
    ) -> None:
        target = f"https://127.0.0.1:{provider.port}"
        with egress_gateway(tmp_path, pkcv_key, target, {}) as (stack, key):
            reply = _send(stack, key)
        _assert_refused_before_the_provider(reply, provider)
        # The gateway did reach the provider and start TLS: it refused the certificate (not a dead port).
        assert provider.handshakes == 0
        assert provider.tls_errors and all("SSL" in e for e in provider.tls_errors), provider.tls_errors

    def test_tls_verify_false_is_the_explicit_way_to_skip_verification(
        self, tmp_path: Path, pkcv_key: rsa.RSAPrivateKey, provider: TlsFakeTwilio
    ) -> None:
        # The control for the test above: the same provider, the same gateway config but for the setting.
        target = f"https://127.0.0.1:{provider.port}"
        with egress_gateway(tmp_path, pkcv_key, target, {"tls_verify": "false"}) as (stack, key):
            reply = _send(stack, key)
        _assert_sent(reply, provider, "127.0.0.1")


# -- (b) through an HTTP CONNECT proxy --------------------------------------------------------------------


class TestConnectProxy:
    def test_the_message_goes_through_the_tunnel_and_the_proxy_sees_only_tls(
        self, tmp_path: Path, pki: Pki, pkcv_key: rsa.RSAPrivateKey, provider: TlsFakeTwilio
    ) -> None:
        with ConnectProxy(hosts={PROVIDER_NAME: "127.0.0.1"}) as proxy:
            settings = {"ca_file": str(pki.ca_file), "proxy": f"http://127.0.0.1:{proxy.port}"}
            target = f"https://{PROVIDER_NAME}:{provider.port}"
            with egress_gateway(tmp_path, pkcv_key, target, settings) as (stack, key):
                reply = _send(stack, key)
                again = send(stack, key, To="+14155552672", From="+15005550006", Body=BODY)
        _assert_sent(reply, provider, PROVIDER_NAME, sent=2)
        # The second message went over the same tunnel: the TLS connection inside it was pooled and reused.
        assert again.status == 201, again.body
        assert [r.form()["To"] for r in provider.received] == ["+14155552671", "+14155552672"]
        assert len(proxy.heads) == 1 and provider.handshakes == 1
        # The tunnel is asked for by the provider's name (the gateway never resolved it)...
        authority = f"{PROVIDER_NAME}:{provider.port}".encode()
        assert proxy.heads, "the gateway did not go through the proxy"
        assert proxy.heads[0].startswith(b"CONNECT " + authority + b" HTTP/1.1\r\n")
        assert b"\r\nHost: " + authority + b"\r\n" in proxy.heads[0]
        assert proxy.tunnels == [(PROVIDER_NAME, provider.port)]
        # ...and carries TLS only: a handshake record first, nothing of the request or the answer in clear.
        sent, got = bytes(proxy.to_target), bytes(proxy.from_target)
        assert sent[:1] == b"\x16" and got[:1] == b"\x16"
        encoded = base64.b64encode(f"{API_KEY_SID}:{API_KEY_SECRET}".encode())
        for secret in (BODY.encode(), b"Authorization", b"authorization", encoded, API_KEY_SECRET.encode()):
            assert secret not in sent and secret not in got
        assert b"Messages.json" not in sent
        heads = b"".join(proxy.heads)
        assert encoded not in heads and BODY.encode() not in heads and b"uthorization" not in heads

    def test_the_certificate_is_checked_against_the_providers_name_not_the_proxys(
        self, tmp_path: Path, pki: Pki, pkcv_key: rsa.RSAPrivateKey, provider: TlsFakeTwilio
    ) -> None:
        # The certificate names provider.test and 127.0.0.1 (the proxy's address), not elsewhere.test: had
        # the gateway checked it against the proxy's host, this would pass.
        with ConnectProxy(hosts={"elsewhere.test": "127.0.0.1"}) as proxy:
            settings = {"ca_file": str(pki.ca_file), "proxy": f"http://127.0.0.1:{proxy.port}"}
            target = f"https://elsewhere.test:{provider.port}"
            with egress_gateway(tmp_path, pkcv_key, target, settings) as (stack, key):
                reply = _send(stack, key)
        _assert_refused_before_the_provider(reply, provider)
        assert proxy.tunnels == [("elsewhere.test", provider.port)]  # the tunnel opened; TLS refused
        assert provider.tls_errors
        assert BODY.encode() not in bytes(proxy.to_target)

    def test_a_proxy_that_never_answers_times_out_without_reaching_the_provider(
        self, tmp_path: Path, pki: Pki, pkcv_key: rsa.RSAPrivateKey, provider: TlsFakeTwilio
    ) -> None:
        with ConnectProxy(answer=None) as proxy:
            settings = {
                "ca_file": str(pki.ca_file),
                "proxy": f"http://127.0.0.1:{proxy.port}",
                "timeouts": "{connect: 300ms}",
            }
            target = f"https://{PROVIDER_NAME}:{provider.port}"
            with egress_gateway(tmp_path, pkcv_key, target, settings) as (stack, key):
                reply = _send(stack, key)
        assert reply.status == 504, reply.body
        assert reply.json()["code"] == "upstream_timeout"
        assert proxy.heads and proxy.tunnels == []
        assert provider.received == [] and provider.handshakes == 0

    @pytest.mark.parametrize("answer", [407, 403])
    def test_a_proxy_that_refuses_the_tunnel_fails_the_request(
        self, tmp_path: Path, pki: Pki, pkcv_key: rsa.RSAPrivateKey, provider: TlsFakeTwilio, answer: int
    ) -> None:
        with ConnectProxy(answer=answer, hosts={PROVIDER_NAME: "127.0.0.1"}) as proxy:
            settings = {"ca_file": str(pki.ca_file), "proxy": f"http://127.0.0.1:{proxy.port}"}
            target = f"https://{PROVIDER_NAME}:{provider.port}"
            with egress_gateway(tmp_path, pkcv_key, target, settings) as (stack, key):
                reply = _send(stack, key)
        _assert_refused_before_the_provider(reply, provider)
        assert proxy.heads and proxy.heads[0].startswith(b"CONNECT " + f"{PROVIDER_NAME}:".encode())
        assert proxy.tunnels == []  # the proxy opened nothing towards the provider
        assert provider.handshakes == 0 and provider.tls_errors == []  # no connection reached it at all
        heads = b"".join(proxy.heads)
        assert BODY.encode() not in heads and b"uthorization" not in heads
