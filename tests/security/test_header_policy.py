"""Size limits and header hygiene, end to end over raw sockets.

Requests: URL/header/body limits answer with their documented status and code before anything reaches
the upstream; method-override and underscore headers are stripped (or refused when configured);
client-supplied forwarding headers are believed only from trusted proxies, and what policy sees
(``ip_allow``/``ip_deny``) is the same client address the upstream is told about.
Responses: implementation-revealing and hop-by-hop upstream headers are removed, security headers are
always present, and gateway errors never echo request data.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.proxy import server as proxy_server
from tests.support import QUICKSTART_ROUTES, GatewayThread, config_text, load_text

from ._raw import (
    HOP_BY_HOP_RESPONSE,
    Outcome,
    RawResponse,
    RecordingUpstream,
    exchange,
    gateway_with,
    open_conn,
    read_responses,
)

ROUTES = QUICKSTART_ROUTES + """
      - path: /local-denied
        methods: [GET]
        auth: none
        ip_deny: [127.0.0.0/8]
      - path: /doc-only
        methods: [GET]
        auth: none
        ip_allow: [203.0.113.0/24]
      - path: /hop-headers
        methods: [GET]
        auth: none
      - path: /status/{code}
        methods: [GET, POST]
        auth: none
"""
# A stuck request (a bug) ends as a visible 504 after 2 s instead of hanging the module's teardown.
SERVICE = "    timeouts: {read: 2s}"
SHUTDOWN = "timeouts: {shutdown: 1s}"


@pytest.fixture(scope="module")
def origin() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


def _gateway(origin: RecordingUpstream, tmp: Path, extra: str = "") -> Iterator[GatewayThread]:
    with gateway_with(origin, tmp, routes=ROUTES, service_extra=SERVICE, extra=f"{SHUTDOWN}\n{extra}") as gw:
        yield gw


@pytest.fixture(scope="module")
def gw(origin: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """Defaults: no trusted proxies, override headers stripped, underscore headers dropped."""
    yield from _gateway(origin, tmp_path_factory.mktemp("hp-default"))


@pytest.fixture(scope="module")
def strict_gw(origin: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    yield from _gateway(
        origin,
        tmp_path_factory.mktemp("hp-strict"),
        "method_override_headers: reject\nunderscore_headers: reject",
    )


@pytest.fixture(scope="module")
def proxied_gw(
    origin: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayThread]:
    """The gateway behind a load balancer on 127.0.0.1: the TCP peer of every test connection is trusted."""
    tmp = tmp_path_factory.mktemp("hp-proxied")
    text = config_text(origin.port, tmp / "bastion.db", routes=ROUTES, service_extra=SERVICE, extra=SHUTDOWN)
    text = text.replace("trusted_proxies: []", "trusted_proxies: [127.0.0.1/32]", 1)
    assert "trusted_proxies: [127.0.0.1/32]" in text
    with GatewayThread(load_text(text)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def tight_gw(origin: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """Small limits, so the exact boundaries can be probed without tripping the echo upstream's own."""
    tmp = tmp_path_factory.mktemp("hp-tight")
    text = config_text(origin.port, tmp / "bastion.db", routes=ROUTES, service_extra=SERVICE, extra=SHUTDOWN)
    limits = "limits: {max_body: 1MiB, max_header_bytes: 16KiB, max_headers: 100, max_url: 8KiB}"
    assert limits in text
    tight = "limits: {max_body: 1KiB, max_header_bytes: 2KiB, max_headers: 10, max_url: 256}"
    text = text.replace(limits, tight)
    with GatewayThread(load_text(text)) as gateway:
        yield gateway


def _get(path: str = "/v1/orders/1", headers: bytes = b"", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: gw.test\r\n".encode() + headers + b"\r\n"


def _one(gw: GatewayThread, data: bytes, *, close_wait: float = 0.3, timeout: float = 4.0) -> Outcome:
    return exchange(gw.port, data, timeout=timeout, close_wait=close_wait)


def _upstream_headers(origin: RecordingUpstream, before: int, out: Outcome) -> list[tuple[str, str]]:
    """The headers the upstream received for the request behind ``out`` (matched by X-Request-Id: the
    threaded origin may record a previous test's half-forwarded request late)."""
    rid = out.first.header("x-request-id")
    seen = [
        r
        for r in origin.requests[before:]
        if dict((n.lower(), v) for n, v in r[2]).get("x-request-id") == rid
    ]
    assert len(seen) == 1, origin.requests[before:]
    return [(n.lower(), v) for n, v in seen[0][2]]


def _problem(resp: RawResponse, status: int, code: str) -> None:
    assert resp.status == status, resp.raw_head + b"\r\n\r\n" + resp.body
    assert resp.header("content-type") == "application/problem+json"
    assert resp.code == code, resp.body
    assert resp.header("cache-control") == "no-store"
    assert resp.header("x-content-type-options") == "nosniff"


# -- limits ------------------------------------------------------------------------------------------------


def test_url_longer_than_max_url_is_414(gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    out = _one(gw, _get("/v1/orders/" + "a" * (8 * 1024 + 10)), close_wait=1.5)
    _problem(out.first, 414, "url_too_long")
    assert out.closed
    assert len(origin.requests) == before


def test_url_just_under_max_url_is_served(gw: GatewayThread, origin: RecordingUpstream) -> None:
    path = "/v1/orders/" + "a" * (8 * 1024 - len("/v1/orders/"))
    assert len(path) == 8 * 1024
    out = _one(gw, _get(path))
    assert out.first.status == 200
    assert out.first.json()["path"] == path


def test_query_counts_toward_max_url(gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    out = _one(gw, _get("/v1/orders/1?q=" + "b" * (8 * 1024)), close_wait=1.5)
    _problem(out.first, 414, "url_too_long")
    assert len(origin.requests) == before


def test_more_than_max_headers_is_431(gw: GatewayThread, origin: RecordingUpstream) -> None:
    # Host + 100 more = 101 fields, one over the limit of 100.
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    before = len(origin.requests)
    out = _one(gw, _get(headers=extra), close_wait=1.5)
    _problem(out.first, 431, "too_many_headers")
    assert out.closed
    assert len(origin.requests) == before


def test_header_names_past_the_name_memo_bound_are_still_lower_cased(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    # The proxy remembers the lower-cased text of the field-name spellings it has seen, up to a bound. A
    # flood of new spellings must neither grow it past the bound nor change how later names are read:
    # a method override in a spelling never seen before is still recognised and stripped.
    for batch in range(12):  # 1,080 new spellings, past the bound of 1,024
        flood = b"".join(b"X-Flood-%d-%d: v\r\n" % (batch, i) for i in range(90))
        assert _one(gw, _get(headers=flood)).first.status == 200
    assert len(proxy_server._NAMES) <= proxy_server._NAMES_MAX
    before = len(origin.requests)
    out = _one(gw, _get(headers=b"X-HTTP-Method-OVERRIDE-ish: a\r\nX-Http-Method-OVERRIDE: DELETE\r\n"))
    assert out.first.status == 200
    rid = out.first.header("x-request-id")
    (seen,) = [r for r in origin.requests[before:] if ("x-request-id", rid) in r[2]]
    names = [n for n, _ in seen[2]]
    assert "x-http-method-override-ish" in names  # forwarded, lower-cased as always
    assert not any(n.lower() == "x-http-method-override" for n in names)  # recognised, stripped


def test_header_count_boundary(tight_gw: GatewayThread, origin: RecordingUpstream) -> None:
    at_limit = b"".join(b"X-H%d: v\r\n" % i for i in range(9))  # + Host = 10 = max_headers
    assert _one(tight_gw, _get(headers=at_limit)).first.status == 200
    before = len(origin.requests)
    out = _one(tight_gw, _get(headers=at_limit + b"X-One-More: v\r\n"), close_wait=1.5)
    _problem(out.first, 431, "too_many_headers")
    assert len(origin.requests) == before


def test_header_bytes_boundary(tight_gw: GatewayThread, origin: RecordingUpstream) -> None:
    # Counted as name + value + 4 per field (": " and CRLF): Host "gw.test" is 4 + 7 + 4 = 15 bytes.
    value_len = 2048 - 15 - (len("x-pad") + 4)
    ok = _one(tight_gw, _get(headers=b"X-Pad: " + b"p" * value_len + b"\r\n"))
    assert ok.first.status == 200, ok.raw[:300]
    before = len(origin.requests)
    out = _one(tight_gw, _get(headers=b"X-Pad: " + b"p" * (value_len + 1) + b"\r\n"), close_wait=1.5)
    _problem(out.first, 431, "headers_too_large")
    assert len(origin.requests) == before


def test_url_boundary(tight_gw: GatewayThread, origin: RecordingUpstream) -> None:
    path = "/v1/orders/" + "u" * (256 - len("/v1/orders/"))
    assert _one(tight_gw, _get(path)).first.json()["path"] == path
    before = len(origin.requests)
    _problem(_one(tight_gw, _get(path + "u"), close_wait=1.5).first, 414, "url_too_long")
    assert len(origin.requests) == before


def test_global_max_body_applies_to_routes_without_their_own(
    tight_gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.requests)
    data = b"POST /status/200 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1025\r\n\r\n" + b"b" * 1025
    _problem(_one(tight_gw, data, close_wait=1.5).first, 413, "body_too_large")
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20)), id="many-1KiB"),
        pytest.param(b"X-One: " + b"v" * (17 * 1024) + b"\r\n", id="one-17KiB-value"),
        pytest.param(b"X-Huge: " + b"v" * (64 * 1024) + b"\r\n", id="one-64KiB-value"),
        pytest.param(b"X-" + b"n" * (17 * 1024) + b": v\r\n", id="one-17KiB-name"),
    ],
)
def test_header_bytes_over_limit_in_one_read_is_431(
    gw: GatewayThread, origin: RecordingUpstream, headers: bytes
) -> None:
    before = len(origin.requests)
    out = _one(gw, _get(headers=headers), close_wait=1.5)
    _problem(out.first, 431, "headers_too_large")
    assert out.closed
    assert len(origin.requests) == before


def test_header_bytes_over_limit_in_small_pieces_is_431(gw: GatewayThread, origin: RecordingUpstream) -> None:
    data = _get(headers=b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20)))
    before = len(origin.requests)
    with open_conn(gw.port) as sock:
        for i in range(0, len(data), 512):
            try:
                sock.sendall(data[i : i + 512])
            except (BrokenPipeError, ConnectionResetError):
                break  # the gateway already answered and closed: fine, read what it said
        out = read_responses(sock, 1, timeout=4.0)
    _problem(out.first, 431, "headers_too_large")
    assert len(origin.requests) == before


def test_declared_body_over_route_max_body_is_413_before_the_body(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    """Only the head is sent: the answer must not wait for a body that will never be accepted."""
    before = len(origin.requests)
    head = b"POST /v1/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 16385\r\n\r\n"
    out = _one(gw, head, close_wait=1.5, timeout=3.0)
    _problem(out.first, 413, "body_too_large")
    assert out.closed, "the unread body must not be parsed as the next request"
    assert len(origin.requests) == before


def test_declared_body_over_limit_with_body_sent_is_413(gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    body = b"z" * 20000
    data = b"POST /v1/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    out = _one(gw, data, close_wait=1.5)
    _problem(out.first, 413, "body_too_large")
    assert len(origin.requests) == before


def test_body_exactly_at_route_max_body_is_served(gw: GatewayThread, origin: RecordingUpstream) -> None:
    body = b"k" * 16384
    data = b"POST /v1/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 16384\r\n\r\n" + body
    out = _one(gw, data)
    assert out.first.status == 200, out.raw[:300]
    assert out.first.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_body_over_route_max_body_is_413_and_never_completes_upstream(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.completed)
    chunk = b"c" * 4096
    wire = b"".join(b"1000\r\n" + chunk + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"  # 20 KiB > 16 KiB
    data = b"POST /v1/orders HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n" + wire
    out = _one(gw, data, close_wait=1.5, timeout=3.0)
    _problem(out.first, 413, "body_too_large")
    assert out.closed
    assert len(origin.completed) == before, "the upstream received a complete over-limit request"


# -- method override and underscore headers ------------------------------------------------------------------

OVERRIDES = [b"X-HTTP-Method-Override", b"X-HTTP-Method", b"X-Method-Override"]


@pytest.mark.parametrize("name", OVERRIDES)
def test_method_override_headers_are_stripped_by_default(
    gw: GatewayThread, origin: RecordingUpstream, name: bytes
) -> None:
    before = len(origin.requests)
    out = _one(gw, _get(headers=name + b": DELETE\r\n"))
    assert out.first.status == 200
    assert out.first.json()["method"] == "GET"
    got = _upstream_headers(origin, before, out)
    assert name.decode().lower() not in {n for n, _ in got}


@pytest.mark.parametrize("name", OVERRIDES)
def test_method_override_headers_rejected_when_configured(
    strict_gw: GatewayThread, origin: RecordingUpstream, name: bytes
) -> None:
    before = len(origin.requests)
    out = _one(strict_gw, _get(headers=name + b": DELETE\r\n"))
    _problem(out.first, 400, "method_override_rejected")
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    "name", [b"X_Forwarded_For", b"Content_Length", b"X_Custom_Auth", b"Transfer_Encoding"]
)
def test_underscore_headers_are_dropped_by_default(
    gw: GatewayThread, origin: RecordingUpstream, name: bytes
) -> None:
    before = len(origin.requests)
    out = _one(gw, _get(headers=name + b": 5\r\n"))
    assert out.first.status == 200
    got = _upstream_headers(origin, before, out)
    assert all("_" not in n for n, _ in got), got
    assert dict(got)["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize("name", [b"X_Forwarded_For", b"Content_Length", b"X_Custom_Auth"])
def test_underscore_headers_rejected_when_configured(
    strict_gw: GatewayThread, origin: RecordingUpstream, name: bytes
) -> None:
    before = len(origin.requests)
    out = _one(strict_gw, _get(headers=name + b": 5\r\n"))
    _problem(out.first, 400, "header_name_underscore")
    assert len(origin.requests) == before


# -- forwarding headers and client address ------------------------------------------------------------------

SPOOFED = (
    b"X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\n"
    b"X-Real-IP: 203.0.113.10\r\n"
    b"Forwarded: for=203.0.113.11;proto=https;host=evil.test\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: evil.test\r\n"
    b"X-Forwarded-Port: 443\r\n"
)


def test_forwarding_headers_from_untrusted_peer_are_discarded(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.requests)
    out = _one(gw, _get(headers=SPOOFED))
    assert out.first.status == 200
    got = _upstream_headers(origin, before, out)
    names = [n for n, _ in got]
    assert [v for n, v in got if n == "x-forwarded-for"] == ["127.0.0.1"]
    assert [v for n, v in got if n == "x-forwarded-proto"] == ["http"]
    assert [v for n, v in got if n == "x-forwarded-host"] == ["gw.test"]
    assert "x-real-ip" not in names
    assert "forwarded" not in names
    assert "x-forwarded-port" not in names
    assert all("203.0.113" not in v and "evil.test" not in v for _, v in got), got


def test_untrusted_peer_cannot_spoof_past_ip_deny(gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    out = _one(gw, _get("/local-denied", SPOOFED))
    _problem(out.first, 403, "ip_denied")
    assert len(origin.requests) == before


def test_untrusted_peer_cannot_spoof_into_ip_allow(gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    out = _one(gw, _get("/doc-only", b"X-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\n"))
    _problem(out.first, 403, "ip_not_allowed")
    assert len(origin.requests) == before


def test_trusted_proxy_xff_decides_ip_allow(proxied_gw: GatewayThread, origin: RecordingUpstream) -> None:
    """/v1/orders allows 127.0.0.0/8 only. Via the trusted proxy, the client is whom XFF names."""
    before = len(origin.requests)
    out = _one(proxied_gw, _get("/v1/orders", b"X-Forwarded-For: 203.0.113.9\r\n"))
    _problem(out.first, 403, "ip_not_allowed")
    assert len(origin.requests) == before


def test_trusted_proxy_rightmost_untrusted_entry_is_the_client(
    proxied_gw: GatewayThread, origin: RecordingUpstream
) -> None:
    # A client that prepends a loopback address cannot pass for it: the rightmost untrusted entry rules.
    before = len(origin.requests)
    out = _one(proxied_gw, _get("/v1/orders", b"X-Forwarded-For: 127.0.0.9, 203.0.113.9\r\n"))
    _problem(out.first, 403, "ip_not_allowed")
    assert len(origin.requests) == before


def test_trusted_proxy_client_inside_allow_list_is_served(
    proxied_gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.requests)
    out = _one(
        proxied_gw,
        _get("/v1/orders", b"X-Forwarded-For: 127.0.0.9\r\nX-Forwarded-Proto: https\r\n"),
    )
    assert out.first.status == 200, out.raw[:300]
    got = _upstream_headers(origin, before, out)
    assert [v for n, v in got if n == "x-forwarded-for"] == ["127.0.0.9, 127.0.0.1"]
    assert [v for n, v in got if n == "x-forwarded-proto"] == ["https"]


def test_trusted_proxy_xff_decides_ip_deny(proxied_gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    out = _one(proxied_gw, _get("/public/x", b"X-Forwarded-For: 10.1.2.3\r\n"))
    _problem(out.first, 403, "ip_denied")
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    "nominated", [b"X-Forwarded-For", b"x-forwarded-for, X-Forwarded-Proto", b"X-Request-Id"]
)
def test_connection_header_cannot_remove_gateway_forwarding_headers(
    gw: GatewayThread, origin: RecordingUpstream, nominated: bytes
) -> None:
    """CVE-2022-31813: a client listing X-Forwarded-For in Connection made Apache drop its own XFF."""
    before = len(origin.requests)
    out = _one(gw, _get(headers=b"Connection: keep-alive, " + nominated + b"\r\n"))
    assert out.first.status == 200
    got = dict(_upstream_headers(origin, before, out))
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got.get("x-request-id")


def test_connection_header_removes_the_fields_it_nominates(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.requests)
    out = _one(gw, _get(headers=b"Connection: X-Custom\r\nX-Custom: private\r\nX-Other: kept\r\n"))
    assert out.first.status == 200
    got = dict(_upstream_headers(origin, before, out))
    assert "x-custom" not in got
    assert got["x-other"] == "kept"


def test_client_request_id_is_replaced_from_untrusted_peer(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.requests)
    out = _one(gw, _get(headers=b"X-Request-Id: client-chosen-id-42\r\n"))
    assert out.first.status == 200
    got = _upstream_headers(origin, before, out)
    ids = [v for n, v in got if n == "x-request-id"]
    assert len(ids) == 1 and ids[0] != "client-chosen-id-42"
    assert out.first.header("x-request-id") == ids[0]


def test_request_id_from_trusted_proxy_is_kept(proxied_gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    out = _one(proxied_gw, _get(headers=b"X-Request-Id: lb-7f3a.9:abc-1\r\n"))
    assert out.first.status == 200
    got = _upstream_headers(origin, before, out)
    assert [v for n, v in got if n == "x-request-id"] == ["lb-7f3a.9:abc-1"]
    assert out.first.header("x-request-id") == "lb-7f3a.9:abc-1"


@pytest.mark.parametrize("bad", [b"has space", b"x" * 200, b"semi;colon", b"<script>"])
def test_malformed_request_id_from_trusted_proxy_is_replaced(
    proxied_gw: GatewayThread, origin: RecordingUpstream, bad: bytes
) -> None:
    before = len(origin.requests)
    out = _one(proxied_gw, _get(headers=b"X-Request-Id: " + bad + b"\r\n"))
    assert out.first.status == 200
    got = _upstream_headers(origin, before, out)
    ids = [v for n, v in got if n == "x-request-id"]
    assert len(ids) == 1 and ids[0] != bad.decode()
    assert bad.decode() not in (out.first.header("x-request-id") or "")


# -- response headers -------------------------------------------------------------------------------------


def test_server_and_powered_by_are_removed_from_upstream_responses(gw: GatewayThread) -> None:
    out = _one(gw, _get())
    resp = out.first
    assert resp.status == 200
    assert not resp.has("server"), resp.raw_head
    assert not resp.has("x-powered-by")
    assert resp.header("x-content-type-options") == "nosniff"


def test_upstream_hop_by_hop_response_headers_are_removed(gw: GatewayThread) -> None:
    resp = _one(gw, _get("/hop-headers")).first
    assert resp.status == 200, resp.raw_head
    names = {n for n, _ in resp.headers}
    for name, _ in HOP_BY_HOP_RESPONSE:
        if name == "connection":
            assert all("nominated" not in v.lower() for v in resp.header_all("connection"))
            continue
        assert name not in names, f"{name} relayed to the client: {resp.raw_head!r}"
    assert resp.header("x-end-to-end") == "kept"
    assert not resp.has("x-powered-by")
    assert resp.json() == {"ok": True}


def test_upstream_nominated_response_header_is_removed(gw: GatewayThread) -> None:
    # The echo upstream sends "Connection: keep-alive, x-upstream-private" and that header.
    resp = _one(gw, _get()).first
    assert not resp.has("x-upstream-private")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        pytest.param(_get("/nowhere"), 404, "route_not_found", id="404"),
        pytest.param(_get("/v1/orders/1", method="DELETE"), 405, "method_not_allowed", id="405"),
        pytest.param(_get("/v1/orders/%2e%2e%2fadmin"), 400, "path_encoded_slash", id="400-path"),
        pytest.param(b"GET /v1/orders/1 HTTP/1.1\r\n\r\n", 400, "host_missing", id="400-host"),
        pytest.param(
            b"GET /v1/orders/1 HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
            400,
            "malformed_request",
            id="400-parse",
        ),
        pytest.param(_get("/local-denied"), 403, "ip_denied", id="403"),
    ],
)
def test_gateway_errors_carry_security_headers(
    gw: GatewayThread, data: bytes, status: int, code: str
) -> None:
    _problem(_one(gw, data).first, status, code)


def test_nosniff_on_allowed_response_and_upstream_error(gw: GatewayThread) -> None:
    ok = _one(gw, _get()).first
    assert ok.status == 200 and ok.header("x-content-type-options") == "nosniff"
    err = _one(gw, _get("/status/500")).first
    assert err.status == 500 and err.header("x-content-type-options") == "nosniff"


def test_head_request_error_has_headers_but_no_body(gw: GatewayThread) -> None:
    out = exchange(gw.port, _get("/nowhere", method="HEAD"), head_methods=1, close_wait=0.3)
    resp = out.first
    assert resp.status == 404
    assert resp.header("x-content-type-options") == "nosniff"
    assert resp.header("cache-control") == "no-store"
    assert resp.body == b""
    assert out.leftover == b"", "a HEAD response must not carry a body"


MARK = "zq" + hashlib.sha256(str(time.monotonic()).encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_get(f"/nowhere/{MARK}?{MARK}=1"), id="404-path-query"),
        pytest.param(_get(f"/v1/orders/{MARK}", method="DELETE"), id="405"),
        pytest.param(_get(f"/{MARK}/%2fadmin"), id="400-path"),
        pytest.param(_get(f"/{MARK}%00"), id="400-nul"),
        pytest.param(_get(f"/v1/orders/1?{MARK}=\u00e9"), id="400-query"),
        pytest.param(f"GET /v1/orders/1 HTTP/1.1\r\nHost: {MARK}/x\r\n\r\n".encode(), id="400-host"),
        pytest.param(
            _get("/local-denied", f"X-Request-Id: {MARK}\r\nX-Forwarded-For: {MARK}\r\n".encode()),
            id="403-headers",
        ),
        pytest.param(_get("/v1/orders/" + MARK * 700), id="414"),
        pytest.param(_get(headers=f"X-Big: {MARK}".encode() + b"v" * 20000 + b"\r\n"), id="431"),
        pytest.param(
            f"POST /v1/orders?{MARK} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 99999\r\n\r\n".encode(),
            id="413",
        ),
    ],
)
def test_problem_responses_never_echo_request_data(gw: GatewayThread, data: bytes) -> None:
    out = _one(gw, data, close_wait=0.5)
    assert out.first.status >= 400
    assert out.first.code is not None
    assert MARK.encode() not in out.raw, out.raw[:600]


# -- Bastion's own headers cannot be spoofed through the underscore spelling ---------------------------


def test_underscore_spellings_of_gateway_headers_are_dropped_even_when_underscores_are_allowed() -> None:
    """With ``underscore_headers: allow``, ``X_Bastion_Consumer`` would reach a CGI/WSGI-style upstream
    as ``X-Bastion-Consumer`` (both spellings become HTTP_X_BASTION_CONSUMER): it is dropped, like the
    underscore forms of every header Bastion owns, while other underscore headers pass."""
    from ipaddress import ip_address

    from bastion.config.loader import load_config_text
    from bastion.proxy.server import NO_BODY
    from bastion.runtime.gateway import Forward, build_gateway

    text = config_text(9, Path("/nonexistent/unused.db"), admin=False).replace(
        "services:", "underscore_headers: allow\nservices:", 1
    )
    gateway = build_gateway(load_config_text(text, source="t.yaml"))
    raw = [
        ("host", "gw.example"),
        ("x_bastion_consumer", "admin"),
        ("x_bastion_scopes", "everything"),
        ("x_forwarded_for", "10.0.0.1"),
        ("x_custom_thing", "kept"),
    ]
    coro = gateway.admit("GET", "/public/x", "", raw, ip_address("127.0.0.1"), NO_BODY)
    try:
        coro.send(None)
        raise AssertionError("admit suspended")
    except StopIteration as stop:
        decision = stop.value
    assert isinstance(decision, Forward)
    names = [n for n, _ in decision.headers]
    assert "x_custom_thing" in names
    assert not {"x_bastion_consumer", "x_bastion_scopes", "x_forwarded_for"} & set(names)
