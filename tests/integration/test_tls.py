"""TLS termination at the gateway (P6): TLS 1.2 minimum (1.3 when configured), HSTS on every response,
and the upstream told the client came over HTTPS.

A self-signed certificate for 127.0.0.1 is made per test run with ``cryptography``. Refusal of an old
protocol only proves something if the client really offered it, so the TLS 1.1 client is first checked
against an in-memory server that accepts TLS 1.1; where the local OpenSSL cannot speak TLS 1.1 at all
the test is skipped with that reason.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EchoUpstream, GatewayThread, config_text, load_text

pytest.importorskip("cryptography", reason="cryptography is needed to make a test certificate")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert_file, key_file): self-signed, valid for 127.0.0.1 and localhost."""
    tmp = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bastion-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def tls_gateway(
    upstream: EchoUpstream, tmp_path: Path, cert: tuple[Path, Path], min_version: str = ""
) -> GatewayThread:
    extra = f"tls: {{cert_file: {cert[0]}, key_file: {cert[1]}"
    extra += f", min_version: '{min_version}'}}" if min_version else "}"
    loaded = load_text(config_text(upstream.port, tmp_path / "bastion.db", extra=extra))
    return GatewayThread(loaded)


@pytest.fixture
def tls12(upstream: EchoUpstream, tmp_path: Path, cert: tuple[Path, Path]) -> Iterator[GatewayThread]:
    with tls_gateway(upstream, tmp_path, cert) as gw:
        yield gw


def client_context(cert_file: Path, *, lo: ssl.TLSVersion | None = None,
                   hi: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert_file))
    with warnings.catch_warnings():
        # Python deprecates naming TLS 1.0/1.1 at all; these tests must, to prove they are refused.
        warnings.simplefilter("ignore", DeprecationWarning)
        if lo is not None and lo < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL offer the old protocol
        if lo is not None:
            ctx.minimum_version = lo
        if hi is not None:
            ctx.maximum_version = hi
    return ctx


def https(
    port: int, ctx: ssl.SSLContext, method: str = "GET", path: str = "/v1/orders/1"
) -> tuple[int, dict[str, str], bytes, str | None]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        version = conn.sock.version() if conn.sock is not None else None
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, version
    finally:
        conn.close()


def _in_memory_handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> str | None:
    """Handshake two contexts through memory BIOs; the negotiated version, or None if it fails."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    try:
        for _ in range(20):
            for key, obj in (("c", c), ("s", s)):
                if not done[key]:
                    try:
                        obj.do_handshake()
                        done[key] = True
                    except ssl.SSLWantReadError:
                        pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
            if all(done.values()):
                return c.version()
    except ssl.SSLError:
        return None
    return None


@pytest.fixture(scope="module")
def tls11_client(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """A client that offers only TLS 1.1, proved able to complete a TLS 1.1 handshake."""
    ctx = client_context(cert[0], lo=ssl.TLSVersion.TLSv1_1, hi=ssl.TLSVersion.TLSv1_1)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.minimum_version = ssl.TLSVersion.TLSv1_1
        server.maximum_version = ssl.TLSVersion.TLSv1_1
    server.load_cert_chain(str(cert[0]), str(cert[1]))
    if _in_memory_handshake(ctx, server) != "TLSv1.1":
        pytest.skip("this OpenSSL cannot negotiate TLS 1.1 even when allowed; cannot build the old client")
    return ctx


class TestTermination:
    def test_https_request_is_forwarded(
        self, tls12: GatewayThread, upstream: EchoUpstream, cert: tuple[Path, Path]
    ) -> None:
        status, _, body, _ = https(tls12.port, client_context(cert[0]))
        assert status == 200
        assert json.loads(body)["path"] == "/v1/orders/1"

    def test_responses_carry_hsts(
        self, tls12: GatewayThread, upstream: EchoUpstream, cert: tuple[Path, Path]
    ) -> None:
        ctx = client_context(cert[0])
        _, ok_headers, _, _ = https(tls12.port, ctx)
        status, err_headers, _, _ = https(tls12.port, ctx, path="/no/such/route")
        assert ok_headers["strict-transport-security"] == "max-age=31536000"
        assert status == 404
        assert err_headers["strict-transport-security"] == "max-age=31536000"  # errors too

    def test_upstream_sees_https_as_the_forwarded_proto(
        self, tls12: GatewayThread, upstream: EchoUpstream, cert: tuple[Path, Path]
    ) -> None:
        _, _, body, _ = https(tls12.port, client_context(cert[0]))
        headers = json.loads(body)["headers"]
        assert ["x-forwarded-proto", "https"] in headers
        assert ["x-forwarded-for", "127.0.0.1"] in headers

    def test_plain_http_gets_no_http_answer(self, tls12: GatewayThread, upstream: EchoUpstream) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", tls12.port, timeout=5)
        try:
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                conn.request("GET", "/v1/orders/1")
                conn.getresponse().read()
        finally:
            conn.close()
        assert upstream.requests == []


class TestProtocolVersions:
    def test_tls12_client_is_accepted(
        self, tls12: GatewayThread, upstream: EchoUpstream, cert: tuple[Path, Path]
    ) -> None:
        ctx = client_context(cert[0], hi=ssl.TLSVersion.TLSv1_2)
        status, _, _, version = https(tls12.port, ctx)
        assert status == 200
        assert version == "TLSv1.2"

    def test_tls11_client_is_refused(
        self, tls12: GatewayThread, upstream: EchoUpstream, tls11_client: ssl.SSLContext
    ) -> None:
        with pytest.raises(ssl.SSLError):
            https(tls12.port, tls11_client)
        assert upstream.requests == []

    def test_min_version_13_refuses_a_tls12_client(
        self, upstream: EchoUpstream, tmp_path: Path, cert: tuple[Path, Path]
    ) -> None:
        with tls_gateway(upstream, tmp_path, cert, min_version="1.3") as gw:
            with pytest.raises(ssl.SSLError):
                https(gw.port, client_context(cert[0], hi=ssl.TLSVersion.TLSv1_2))
            status, _, _, version = https(gw.port, client_context(cert[0]))
        assert status == 200
        assert version == "TLSv1.3"
        assert len(upstream.requests) == 1  # only the TLS 1.3 request got through
