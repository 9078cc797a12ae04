"""Path-confusion bypasses end to end: the gateway authorises and forwards one canonical string.

Each accepted attack must reach the upstream as exactly the canonical path the gateway routed on (the
echo upstream reports the path it received); each rejected one gets 400 with its documented code and
never reaches the upstream. A traversal through a catch-all route lands on the route its canonical
path names and gets *that* route's policy, never the catch-all's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import QUICKSTART_ROUTES, GatewayThread

from ._raw import Outcome, RecordingUpstream, exchange, gateway_with

ROUTES = QUICKSTART_ROUTES + """
      - path: /admin
        methods: [GET]
        auth: none
        ip_deny: [127.0.0.0/8]
      - path: /files/{name}
        methods: [GET]
        auth: none
"""


@pytest.fixture(scope="module")
def origin() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(origin: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp = tmp_path_factory.mktemp("paths")
    with gateway_with(
        origin, tmp, routes=ROUTES, extra="timeouts: {shutdown: 1s}", service_extra="    timeouts: {read: 3s}"
    ) as gateway:
        yield gateway


def _request(gw: GatewayThread, target: bytes, method: bytes = b"GET", extra: bytes = b"") -> Outcome:
    data = method + b" " + target + b" HTTP/1.1\r\nHost: gw.test\r\n" + extra + b"\r\n"
    return exchange(gw.port, data, timeout=4.0, close_wait=0.0)


REJECTED = [
    (b"/public/..%2f..%2fadmin", "path_encoded_slash"),
    (b"/public/..%2F..%2Fv1/orders", "path_encoded_slash"),
    (b"/v1/orders/..;/admin", "path_parameter"),
    (b"/public/x;jsessionid=1/../../admin", "path_parameter"),
    (b"/public/%252e%252e/x", "path_double_encoding"),
    (b"/public/%252e%252e%252fadmin", "path_double_encoding"),
    (b"/public/%c0%ae%c0%ae/x", "path_invalid_utf8"),
    (b"/public/%e0%80%ae/x", "path_invalid_utf8"),
    (b"/public/%EF%BC%8E%EF%BC%8E/x", "path_unicode_dot_segment"),
    (b"/public/%EF%BC%8F..%EF%BC%8Fadmin", "path_unicode_separator"),
    (b"/public/%u002e%u002e/x", "path_bad_percent_encoding"),
    (b"/public/%2/x", "path_bad_percent_encoding"),
    (b"/v1/orders/1%00", "path_control_char"),
    (b"/v1/orders/1%00.json", "path_control_char"),
    (b"/v1/orders/1%20", "path_control_char"),
    (b"/v1/orders/1%09", "path_control_char"),
    (b"/v1/orders/1%0d%0aX-Injected:%20yes", "path_control_char"),
    (b"/public/%C2%A0/x", "path_control_char"),
    (b"/public/..%5c..%5cadmin", "path_backslash"),
    (b"/public/..\\..\\admin", "path_backslash"),
    (b"/public/\xc3\xa9", "path_non_ascii"),
    (b"/public/<script>", "path_invalid_char"),
]


@pytest.mark.parametrize(
    ("target", "code"), [pytest.param(t, c, id=t.decode("latin-1")) for t, c in REJECTED]
)
def test_ambiguous_paths_are_rejected_with_their_code(
    gw: GatewayThread, origin: RecordingUpstream, target: bytes, code: str
) -> None:
    before = len(origin.requests)
    out = _request(gw, target)
    resp = out.first
    assert resp.status == 400, out.raw[:300]
    assert resp.code == code, resp.body
    assert resp.header("cache-control") == "no-store"
    assert len(origin.requests) == before, f"{target!r} reached the upstream"


CANONICAL = [
    (b"//v1//orders/1", "/v1/orders/1"),
    (b"/v1/./orders/1", "/v1/orders/1"),
    (b"/v1/orders/x/../1", "/v1/orders/1"),
    (b"/%2e%2e/v1/orders", "/v1/orders"),
    (b"/../../v1/orders", "/v1/orders"),
    (b"/v1/orders/%31", "/v1/orders/1"),
    (b"/%76%31/orders/1", "/v1/orders/1"),
    (b"/public/%2E%2E/v1/orders/1", "/v1/orders/1"),
    (b"/public/a/b/../../../v1/orders/2", "/v1/orders/2"),
    (b"/public/.%2e/.%2E/v1/orders/3", "/v1/orders/3"),
    (b"/files/caf%c3%a9", "/files/caf%C3%A9"),
    (b"/files/a%3ab", "/files/a%3Ab"),
    (b"/public/x/./y/", "/public/x/y/"),
]


@pytest.mark.parametrize(
    ("target", "canonical"), [pytest.param(t, c, id=t.decode("latin-1")) for t, c in CANONICAL]
)
def test_accepted_paths_reach_upstream_as_their_canonical_form(
    gw: GatewayThread, origin: RecordingUpstream, target: bytes, canonical: str
) -> None:
    before = len(origin.requests)
    out = _request(gw, target)
    assert out.first.status == 200, out.raw[:300]
    assert out.first.json()["path"] == canonical
    assert [p for _, p, _ in origin.requests[before:]] == [canonical]


def test_query_is_forwarded_unchanged_after_the_canonical_path(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    out = _request(gw, b"//v1/./orders/1?a=%2F..&b=c%20d")
    assert out.first.status == 200
    assert out.first.json()["path"] == "/v1/orders/1?a=%2F..&b=c%20d"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/V1/orders/1", id="case"),
        pytest.param(b"/v1/orders/1/", id="trailing-slash"),
        pytest.param(b"/v1/Orders", id="case-collection"),
        pytest.param(b"/v1/orders/1/extra", id="longer"),
        pytest.param(b"/v1/orders.json", id="suffix"),
        pytest.param(b"/v1", id="prefix"),
        pytest.param(b"/admin/", id="admin-trailing-slash"),
        pytest.param(b"/", id="root"),
        pytest.param(b"/nowhere", id="unknown"),
    ],
)
def test_unmatched_paths_are_404(gw: GatewayThread, origin: RecordingUpstream, target: bytes) -> None:
    before = len(origin.requests)
    resp = _request(gw, target).first
    assert resp.status == 404
    assert resp.code == "route_not_found"
    assert len(origin.requests) == before


@pytest.mark.parametrize("method", [b"DELETE", b"POST", b"PUT", b"PATCH", b"OPTIONS", b"TRACE"])
def test_unlisted_method_is_405_with_allow(
    gw: GatewayThread, origin: RecordingUpstream, method: bytes
) -> None:
    before = len(origin.requests)
    extra = b"Content-Length: 0\r\n" if method in (b"POST", b"PUT", b"PATCH") else b""
    resp = _request(gw, b"/v1/orders/1", method, extra).first
    assert resp.status == 405
    assert resp.code == "method_not_allowed"
    assert [m.strip() for m in (resp.header("allow") or "").split(",")] == ["GET", "HEAD"]
    assert len(origin.requests) == before


def test_head_is_allowed_where_get_is(gw: GatewayThread, origin: RecordingUpstream) -> None:
    data = b"HEAD /v1/orders/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    out = exchange(gw.port, data, head_methods=1, close_wait=0.0)
    assert out.first.status == 200
    assert origin.requests[-1][:2] == ("HEAD", "/v1/orders/1")


# -- traversal through the catch-all route -------------------------------------------------------------------


def test_traversal_out_of_catch_all_is_routed_by_its_canonical_path(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.requests)
    out = _request(gw, b"/public/../v1/orders")
    assert out.first.status == 200
    assert out.first.json()["path"] == "/v1/orders"
    assert [p for _, p, _ in origin.requests[before:]] == ["/v1/orders"]


def test_traversal_gets_the_target_routes_methods_not_the_catch_alls(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    """/public/* is GET-only; /v1/orders takes POST. The canonical path decides, so POST is served."""
    data = b"POST /public/../v1/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\n\r\nhi"
    out = exchange(gw.port, data, close_wait=0.0)
    assert out.first.status == 200
    assert (out.first.json()["method"], out.first.json()["path"]) == ("POST", "/v1/orders")


def test_traversal_gets_the_target_routes_body_limit(gw: GatewayThread, origin: RecordingUpstream) -> None:
    before = len(origin.requests)
    data = b"POST /public/../v1/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 20000\r\n\r\n"
    out = exchange(gw.port, data, close_wait=0.0)
    assert out.first.status == 413
    assert out.first.code == "body_too_large"
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    "target",
    [b"/public/../admin", b"/public/%2e%2e/admin", b"/public/x/../../admin", b"//admin", b"/./admin"],
)
def test_traversal_cannot_escape_the_target_routes_ip_policy(
    gw: GatewayThread, origin: RecordingUpstream, target: bytes
) -> None:
    """/admin denies loopback; reaching it through /public (which does not) still hits /admin's deny."""
    before = len(origin.requests)
    resp = _request(gw, target).first
    assert resp.status == 403
    assert resp.code == "ip_denied"
    assert len(origin.requests) == before


def test_traversal_to_an_unrouted_path_is_404_not_the_catch_all(
    gw: GatewayThread, origin: RecordingUpstream
) -> None:
    before = len(origin.requests)
    resp = _request(gw, b"/public/../internal/secrets").first
    assert resp.status == 404
    assert resp.code == "route_not_found"
    assert len(origin.requests) == before
