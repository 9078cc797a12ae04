"""Request smuggling and malformed HTTP/1.1 against the real gateway, over raw sockets.

Smuggling works when two parsers disagree about where a request ends. Bastion's answer is to refuse
every ambiguous framing outright (400, never forwarded) and to re-serialise what it does forward, so
the upstream only ever parses bytes Bastion wrote. Each refusal below checks four things: the status,
the stable problem ``code`` (docs/errors.md), that nothing reached the upstream, and, where a body's
extent is in doubt, that the gateway hung up, so bytes after the bad request are never read as a
second request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import GatewayThread

from ._raw import Outcome, RecordingUpstream, exchange, gateway_with


@pytest.fixture(scope="module")
def origin() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(origin: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    # One gateway for the module (starting one costs ~0.5 s); tests compare upstream counts before and
    # after.  The short shutdown grace and upstream read timeout keep a request that a bug leaves stuck
    # from hanging everything after it (it ends as a visible 504 in its own test instead).
    tmp: Path = tmp_path_factory.mktemp("smuggling")
    with gateway_with(
        origin, tmp, extra="timeouts: {shutdown: 1s}", service_extra="    timeouts: {read: 2s}"
    ) as gateway:
        yield gateway


def _send(
    gw: GatewayThread, data: bytes, *, expect: int = 1, timeout: float = 3.0, close_wait: float = 1.5
) -> Outcome:
    """One connection; ``close_wait`` is how long to watch for the close (or a stray extra response)."""
    return exchange(gw.port, data, expect=expect, timeout=timeout, close_wait=close_wait)


def _assert_refused(out: Outcome, status: int, code: str, *, closed: bool = True) -> None:
    assert len(out.responses) == 1, f"expected exactly one response, got {out.raw[:600]!r}"
    resp = out.first
    assert resp.status == status, out.raw[:600]
    assert resp.header("content-type") == "application/problem+json"
    assert resp.code == code, resp.body
    assert resp.header("x-content-type-options") == "nosniff"
    assert resp.header("cache-control") == "no-store"
    if closed:
        assert out.closed, "the gateway must close the connection after refusing an ambiguous request"
        assert resp.header("connection") == "close"
    assert out.leftover == b""


def _post(headers: bytes, body: bytes = b"", target: bytes = b"/v1/orders") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\nHost: gw.test\r\n" + headers + b"\r\n" + body


# -- framing: Content-Length / Transfer-Encoding ---------------------------------------------------------

FRAMING = [
    pytest.param(
        _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        "content_length_with_transfer_encoding",
        id="CL-then-TE",
    ),
    pytest.param(
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        "content_length_with_transfer_encoding",
        id="TE-then-CL",
    ),
    pytest.param(
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", b"0\r\n\r\n"),
        "content_length_with_transfer_encoding",
        id="TE-chunked-with-CL-0",
    ),
    pytest.param(_post(b"Transfer-Encoding: gzip\r\n"), "transfer_encoding_unsupported", id="TE-gzip"),
    pytest.param(
        _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        "transfer_encoding_unsupported",
        id="TE-gzip-chunked",
    ),
    pytest.param(
        _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
        "transfer_encoding_unsupported",
        id="TE-chunked-identity",
    ),
    pytest.param(
        _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
        "transfer_encoding_unsupported",
        id="TE-xchunked",
    ),
    pytest.param(
        _post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"),
        "transfer_encoding_unsupported",
        id="TE-quoted",
    ),
    pytest.param(
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        "transfer_encoding_unsupported",
        id="TE-twice",
    ),
    pytest.param(
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n"),
        "transfer_encoding_unsupported",
        id="TE-twice-different",
    ),
    pytest.param(
        _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
        "content_length_invalid",
        id="CL-duplicate-same",
    ),
    pytest.param(
        _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
        "content_length_invalid",
        id="CL-duplicate-different",
    ),
    pytest.param(_post(b"Content-Length: 5, 5\r\n", b"hello"), "content_length_invalid", id="CL-list"),
    pytest.param(_post(b"Content-Length: +5\r\n", b"hello"), "content_length_invalid", id="CL-plus"),
    pytest.param(_post(b"Content-Length: -1\r\n", b"hello"), "content_length_invalid", id="CL-negative"),
    pytest.param(_post(b"Content-Length: 0x5\r\n", b"hello"), "content_length_invalid", id="CL-hex"),
    pytest.param(_post(b"Content-Length: 5a\r\n", b"hello"), "content_length_invalid", id="CL-trailing-junk"),
    pytest.param(_post(b"Content-Length: \r\n", b"hello"), "content_length_invalid", id="CL-empty"),
    pytest.param(
        _post(b"Content-Length: 1000000000000000000\r\n", b"hello"),
        "content_length_invalid",
        id="CL-huge-19-digits",
    ),
    pytest.param(
        _post(b"Content-Length: 99999999999999999999999999\r\n", b"hello"),
        "content_length_invalid",
        id="CL-huge-overflow",
    ),
]


@pytest.mark.parametrize(("data", "code"), FRAMING)
def test_ambiguous_framing_is_refused_and_closed(
    gw: GatewayThread, origin: RecordingUpstream, data: bytes, code: str
) -> None:
    before = len(origin.requests)
    out = _send(gw, data)
    _assert_refused(out, 400, code)
    assert len(origin.requests) == before, "an ambiguous request reached the upstream"


@pytest.mark.parametrize(
    "te_line",
    [
        pytest.param(b"Transfer-Encoding: chunked\r\n", id="plain"),
        pytest.param(b"Transfer-Encoding:  chunked\r\n", id="extra-leading-space"),
        pytest.param(b"Transfer-Encoding:\tchunked\r\n", id="leading-tab"),
        pytest.param(b"Transfer-Encoding: chunked \r\n", id="trailing-space"),
        pytest.param(b"Transfer-Encoding: CHUNKED\r\n", id="upper-case"),
    ],
)
def test_chunked_with_optional_whitespace_or_case_is_one_unambiguous_framing(
    gw: GatewayThread, origin: RecordingUpstream, te_line: bytes
) -> None:
    """OWS around a field value and the case of a coding name carry no meaning (RFC 9110 §5.5, §7.8):
    both parsers agree these are chunked, so Bastion accepts them and the body arrives intact."""
    body = b"hello world"
    data = _post(te_line, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    before = len(origin.completed)
    out = _send(gw, data, close_wait=0.3)
    assert out.first.status == 200, out.raw[:400]
    doc = out.first.json()
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert doc["body_bytes"] == len(body)
    assert len(origin.completed) == before + 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_post(b" Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"), id="space-before-TE-name"),
        pytest.param(_post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), id="space-before-colon-TE"),
        pytest.param(_post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"), id="vertical-tab-TE"),
        pytest.param(_post(b"Content-Length : 5\r\n", b"hello"), id="space-before-colon-CL"),
    ],
)
def test_whitespace_games_around_framing_headers_are_malformed(
    gw: GatewayThread, origin: RecordingUpstream, data: bytes
) -> None:
    before = len(origin.requests)
    _assert_refused(_send(gw, data), 400, "malformed_request")
    assert len(origin.requests) == before


# -- header syntax ----------------------------------------------------------------------------------------

MALFORMED_HEADS = [
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", id="obs-fold-space"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", id="obs-fold-tab"),
    pytest.param(b"GET /v1/orders HTTP/1.1\nHost: a\r\n\r\n", id="bare-LF-request-line"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", id="bare-LF-header"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\n\n", id="bare-LF-end-of-head"),
    pytest.param(b"GET /v1/orders HTTP/1.1\nHost: a\n\n", id="bare-LF-everywhere"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", id="space-in-name"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", id="NUL-in-value"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", id="CR-in-value"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nX-\x01A: b\r\n\r\n", id="control-in-name"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\n: empty-name\r\n\r\n", id="empty-name"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", id="no-colon"),
]


@pytest.mark.parametrize("data", MALFORMED_HEADS)
def test_malformed_header_syntax_is_refused_and_closed(
    gw: GatewayThread, origin: RecordingUpstream, data: bytes
) -> None:
    before = len(origin.requests)
    _assert_refused(_send(gw, data), 400, "malformed_request")
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    ("host_lines", "code"),
    [
        pytest.param(b"", "host_missing", id="missing"),
        pytest.param(b"Host: a.test\r\nHost: b.test\r\n", "host_duplicate", id="duplicate-different"),
        pytest.param(b"Host: a.test\r\nHost: a.test\r\n", "host_duplicate", id="duplicate-same"),
        pytest.param(b"Host: \r\n", "host_invalid", id="empty"),
        pytest.param(b"Host: a.test/evil\r\n", "host_invalid", id="slash"),
        pytest.param(b"Host: a.test:80:80\r\n", "host_invalid", id="two-ports"),
        pytest.param(b"Host: user@a.test\r\n", "host_invalid", id="userinfo"),
    ],
)
def test_host_must_be_exactly_one_valid_value(
    gw: GatewayThread, origin: RecordingUpstream, host_lines: bytes, code: str
) -> None:
    before = len(origin.requests)
    out = _send(gw, b"GET /v1/orders HTTP/1.1\r\n" + host_lines + b"\r\n", close_wait=0.3)
    # No body, so the next request's start is unambiguous: keep-alive may continue.
    _assert_refused(out, 400, code, closed=False)
    assert len(origin.requests) == before


# -- chunked bodies ----------------------------------------------------------------------------------------

BAD_CHUNKS = [
    pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="hex-prefix"),
    pytest.param(b"5_0\r\nhello\r\n0\r\n\r\n", id="underscore"),
    pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative"),
    pytest.param(b"5 \r\nhello\r\n0\r\n\r\n", id="trailing-space"),
    pytest.param(b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n", id="overflow"),
    pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="missing-CRLF-after-data"),
    pytest.param(b"5\nhello\n0\n\n", id="bare-LF-chunk-lines"),
    pytest.param(b"5;a=\rb\r\nhello\r\n0\r\n\r\n", id="CR-in-chunk-ext"),
]


@pytest.mark.parametrize("chunks", BAD_CHUNKS)
def test_invalid_chunked_body_is_refused_and_never_completes_upstream(
    gw: GatewayThread, origin: RecordingUpstream, chunks: bytes
) -> None:
    """The head may already be on its way upstream (bodies stream), but the upstream must never receive
    a complete request, and the client gets a 400 promptly, not after the upstream read timeout."""
    before = len(origin.completed)
    out = _send(gw, _post(b"Transfer-Encoding: chunked\r\n", chunks))
    _assert_refused(out, 400, "malformed_request")
    assert len(origin.completed) == before, "the upstream received a complete request from a bad body"


# -- desync probes ----------------------------------------------------------------------------------------

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: gw.test\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(
            _post(
                b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (len(b"0\r\n\r\n") + len(SMUGGLED)),
                b"0\r\n\r\n" + SMUGGLED,
            ),
            "content_length_with_transfer_encoding",
            id="CL.TE",
        ),
        pytest.param(
            _post(
                b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
            ),
            "content_length_with_transfer_encoding",
            id="TE.CL",
        ),
        pytest.param(
            _post(
                b"Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n",
                b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
            ),
            "content_length_with_transfer_encoding",
            id="TE.CL-obfuscated-TE",
        ),
        pytest.param(
            _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n" + SMUGGLED),
            "transfer_encoding_unsupported",
            id="TE.TE",
        ),
        pytest.param(
            _post(b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
            "content_length_invalid",
            id="CL.CL",
        ),
    ],
)
def test_desync_probe_never_delivers_the_smuggled_request(
    gw: GatewayThread, origin: RecordingUpstream, data: bytes, code: str
) -> None:
    # Request ids are a per-process prefix and a fixed-width counter: a probe's id marks "now", so
    # requests an earlier test left in flight (recorded late by the threaded origin) are told apart.
    probe = _send(gw, b"GET /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    mark = re.search(rb"x-request-id: ([0-9a-f]+)", probe.raw).group(1).decode()  # type: ignore[union-attr]
    out = _send(gw, data)
    _assert_refused(out, 400, code)
    seen = [r for r in origin.requests if dict(r[2]).get("x-request-id", "") > mark]
    assert not any(path.startswith("/admin") for _, path, _ in origin.requests), origin.requests
    assert seen == []


def test_body_boundary_is_content_length_exactly(gw: GatewayThread, origin: RecordingUpstream) -> None:
    """A valid request whose body is followed by more bytes: the extra bytes are a second request, routed
    (and refused) by the gateway itself; the upstream sees exactly the declared body and nothing else."""
    before = len(origin.requests)
    out = _send(gw, _post(b"Content-Length: 5\r\n", b"hello" + SMUGGLED), expect=2, close_wait=0.3)
    assert [r.status for r in out.responses] == [200, 404], out.raw[:600]
    assert out.responses[0].json()["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert out.responses[1].code == "route_not_found"
    assert [p for _, p, _ in origin.requests[before:]] == ["/v1/orders"]


# -- request line, target, method ----------------------------------------------------------------------------


_HOST = b"\r\nHost: gw.test\r\n\r\n"
_REQUEST_LINES = [
    # (id, bytes, status, code, connection must close)
    ("absolute-form", b"GET http://gw.test/v1/orders HTTP/1.1" + _HOST, 400, "path_not_origin_form", False),
    ("absolute-https", b"GET https://x.test/v1/orders HTTP/1.1" + _HOST, 400, "path_not_origin_form", False),
    ("asterisk", b"OPTIONS * HTTP/1.1" + _HOST, 400, "path_not_origin_form", False),
    ("CONNECT-authority", b"CONNECT gw.test:443 HTTP/1.1" + _HOST, 400, "path_not_origin_form", True),
    ("CONNECT-path", b"CONNECT /v1/orders HTTP/1.1" + _HOST, 405, "method_not_allowed", True),
    ("TRACE", b"TRACE /v1/orders HTTP/1.1" + _HOST, 405, "method_not_allowed", False),
    ("PROPFIND", b"PROPFIND /v1/orders HTTP/1.1" + _HOST, 405, "method_not_allowed", False),
    ("unknown-token", b"FOO /v1/orders HTTP/1.1" + _HOST, 400, "malformed_request", True),
    ("lowercase-method", b"get /v1/orders HTTP/1.1" + _HOST, 400, "malformed_request", True),
    ("NUL-in-method", b"G\x00T /v1/orders HTTP/1.1" + _HOST, 400, "malformed_request", True),
    ("version-1.2", b"GET /v1/orders HTTP/1.2" + _HOST, 400, "malformed_request", True),
    ("trailing-token", b"GET /v1/orders HTTP/1.1 x" + _HOST, 400, "malformed_request", True),
    ("tab-separator", b"GET\t/v1/orders HTTP/1.1" + _HOST, 400, "malformed_request", True),
    ("TLS-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "malformed_request", True),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "malformed_request", True),
]


@pytest.mark.parametrize(
    ("data", "status", "code", "closed"),
    [pytest.param(*case[1:], id=case[0]) for case in _REQUEST_LINES],
)
def test_bad_request_lines_targets_and_methods(
    gw: GatewayThread, origin: RecordingUpstream, data: bytes, status: int, code: str, closed: bool
) -> None:
    before = len(origin.requests)
    out = _send(gw, data, close_wait=1.5 if closed else 0.3)
    _assert_refused(out, status, code, closed=closed)
    if code == "method_not_allowed":
        assert out.first.header("allow") is not None
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        # llhttp parses these as versions, so Bastion refuses them itself: 505
        pytest.param(b"GET /v1/orders\r\n\r\n", 505, "http_version_unsupported", id="HTTP/0.9-no-headers"),
        pytest.param(b"GET /v1/orders\r\nHost: gw.test\r\n\r\n", 505, "http_version_unsupported",
                     id="HTTP/0.9-with-host"),
        pytest.param(b"GET /v1/orders HTTP/0.9\r\nHost: gw.test\r\n\r\n", 505, "http_version_unsupported",
                     id="explicit-0.9"),
        pytest.param(b"GET /v1/orders HTTP/2.0\r\nHost: gw.test\r\n\r\n", 505, "http_version_unsupported",
                     id="explicit-2.0"),
        # llhttp itself refuses this one as a malformed request line
        pytest.param(b"GET /v1/orders HTTP/3.0\r\nHost: gw.test\r\n\r\n", 400, "malformed_request",
                     id="explicit-3.0"),
    ],
)
def test_http_versions_other_than_1x_are_refused(
    gw: GatewayThread, origin: RecordingUpstream, data: bytes, status: int, code: str
) -> None:
    """Only HTTP/1.0 and 1.1 speak this syntax. A 0.9-style line or a 2.x/3.x version in an HTTP/1 request
    line must not be 'upgraded' to an HTTP/1.1 request for the upstream."""
    before = len(origin.requests)
    _assert_refused(_send(gw, data), status, code)
    assert len(origin.requests) == before, origin.requests[before:]


# -- re-serialisation ----------------------------------------------------------------------------------


def test_valid_chunked_body_arrives_intact_and_reframed(gw: GatewayThread, origin: RecordingUpstream) -> None:
    parts = [b"a" * 1000, b"\r\n0\r\n\r\n", b"", b"xyz" * 333]
    wire = b"".join(b"%x;ext=1\r\n" % len(p) + p + b"\r\n" for p in parts if p)
    wire += b"0\r\nX-Trailer: t\r\n\r\n"
    body = b"".join(parts)
    before_complete = len(origin.completed)
    out = _send(gw, _post(b"Transfer-Encoding: chunked\r\n", wire), close_wait=0.3)
    resp = out.first
    assert resp.status == 200, out.raw[:400]
    doc = resp.json()
    assert doc["body_bytes"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = dict(doc["headers"])
    # Bastion wrote its own framing: exactly one of CL / TE chunked, never the client's extensions.
    assert ("transfer-encoding" in headers) != ("content-length" in headers)
    if "transfer-encoding" in headers:
        assert headers["transfer-encoding"] == "chunked"
    assert "x-trailer" not in headers
    assert len(origin.completed) == before_complete + 1
    assert not out.closed


@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(b"X-Injected: yes\r\n", id="custom"),
        pytest.param(b"Host: evil.test\r\n", id="host"),
        pytest.param(b"Authorization: Bearer forged\r\n", id="authorization"),
    ],
)
def test_chunked_trailer_fields_never_become_request_headers(
    gw: GatewayThread, origin: RecordingUpstream, trailer: bytes
) -> None:
    """Trailers arrive after the head was judged; promoting them to headers would let a client add
    fields no policy ever saw. Bastion drops them: the request is served as if they were absent."""
    before = len(origin.requests)
    data = _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n")
    out = _send(gw, data, close_wait=0.3)
    assert out.first.status == 200, out.raw[:400]
    assert out.first.json()["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    (_, _, got), = origin.requests[before:]
    name = trailer.split(b":")[0].decode().lower()
    values = [v for n, v in got if n.lower() == name]
    assert "yes" not in values and "evil.test" not in values and "Bearer forged" not in values, got


def test_hop_by_hop_request_headers_are_not_forwarded(gw: GatewayThread, origin: RecordingUpstream) -> None:
    data = (
        b"GET /v1/orders/7 HTTP/1.1\r\nHost: gw.test\r\n"
        b"Connection: keep-alive, X-Hop-Nominated\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-T\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"X-Hop-Nominated: secret\r\n"
        b"X-End-To-End: kept\r\n\r\n"
    )
    before = len(origin.requests)
    out = _send(gw, data, close_wait=0.3)
    assert out.first.status == 200, out.raw[:400]
    (method, path, got), = origin.requests[before:]
    names = {n.lower() for n, _ in got}
    for hop in ("keep-alive", "te", "trailer", "upgrade", "proxy-connection", "proxy-authorization",
                "x-hop-nominated", "transfer-encoding"):
        assert hop not in names, f"{hop} was forwarded: {got}"
    conn_values = [v.lower() for n, v in got if n.lower() == "connection"]
    assert all("x-hop-nominated" not in v and "upgrade" not in v for v in conn_values), conn_values
    assert ("x-end-to-end", "kept") in [(n.lower(), v) for n, v in got]
    assert (method, path) == ("GET", "/v1/orders/7")


def test_upgrade_request_is_answered_plainly_and_never_tunnelled(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    """Bastion proxies no upgrades: the request is served as plain HTTP without the Upgrade header, then
    the connection closes, so bytes after it (a would-be tunnel) are never parsed as requests."""
    data = (
        b"GET /v1/orders/9 HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + SMUGGLED
    )
    before = len(origin.requests)
    out = _send(gw, data, expect=2)
    assert [r.status for r in out.responses] == [200], out.raw[:600]
    assert out.closed
    seen = origin.requests[before:]
    assert [p for _, p, _ in seen] == ["/v1/orders/9"]
    names = {n.lower() for n, _ in seen[0][2]}
    assert "upgrade" not in names
    assert all("upgrade" not in v.lower() for n, v in seen[0][2] if n.lower() == "connection")


# -- pipelining ----------------------------------------------------------------------------------------


def test_pipelined_requests_get_ordered_responses(gw: GatewayThread, origin: RecordingUpstream) -> None:
    data = (
        b"GET /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        b"POST /v1/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /v1/orders/3 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    )
    out = _send(gw, data, expect=3, close_wait=0.3)
    assert [r.status for r in out.responses] == [200, 200, 200], out.raw[:600]
    docs = [r.json() for r in out.responses]
    assert [(d["method"], d["path"]) for d in docs] == [
        ("GET", "/v1/orders/1"),
        ("POST", "/v1/orders"),
        ("GET", "/v1/orders/3"),
    ]
    assert docs[1]["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert not out.closed, "valid pipelined requests keep the connection alive"


def test_valid_then_malformed_pipelined_gets_one_answer_then_400_and_close(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    data = (
        b"GET /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        b"GET /v1/orders/2 HTTP/1.1\r\nHost: gw.test\r\nX A: b\r\n\r\n"
        + SMUGGLED
    )
    before = len(origin.requests)
    out = _send(gw, data, expect=3)
    assert [r.status for r in out.responses] == [200, 400], out.raw[:600]
    assert out.responses[0].json()["path"] == "/v1/orders/1"
    assert out.responses[1].code == "malformed_request"
    assert out.closed
    assert [p for _, p, _ in origin.requests[before:]] == ["/v1/orders/1"]


def test_valid_then_ambiguous_framing_pipelined(gw: GatewayThread, origin: RecordingUpstream) -> None:
    data = (
        b"GET /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        + _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED)
    )
    before = len(origin.requests)
    out = _send(gw, data, expect=3)
    assert [r.status for r in out.responses] == [200, 400], out.raw[:600]
    assert out.responses[1].code == "content_length_with_transfer_encoding"
    assert out.closed
    assert [p for _, p, _ in origin.requests[before:]] == ["/v1/orders/1"]
