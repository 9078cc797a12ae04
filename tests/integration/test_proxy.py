"""The data plane as a reverse proxy, end to end: the real server (same code as ``bastion serve``) in
front of a real HTTP/1.1 origin on loopback.

What is proved here: what reaches the upstream (method, canonical path, query as sent, body, the
gateway's own X-Request-Id / X-Forwarded-* / Host), what comes back (status, headers, body, framing
recomputed for the client), connection reuse on both sides, pipelining, ``Expect: 100-continue``,
upstream failures mapped to 502/504 problem+json without leaking the upstream's address, the one retry
on a stale pooled connection, and CORS answered at the gateway.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import EchoUpstream, GatewayThread, config_text, load_text, request

from ._dataplane import RawClient, ScriptedUpstream, free_port, get, wait_until


@contextmanager
def serving(upstream_port: int, tmp_path: Path, **kwargs: str) -> Iterator[GatewayThread]:
    """A gateway with a variant of the test config (``config_text`` keyword arguments)."""
    loaded = load_text(config_text(upstream_port, tmp_path / "bastion.db", **kwargs))
    with GatewayThread(loaded) as gw:
        yield gw


def echoed(body: bytes) -> dict:
    return json.loads(body)


def upstream_header(doc: dict, name: str) -> list[str]:
    return [v for n, v in doc["headers"] if n == name]


def status_line_code(head: bytes) -> int:
    return int(head.split(b"\r\n", 1)[0].split(b" ")[1])


def problem(body: bytes) -> dict:
    doc = json.loads(body)
    assert set(doc) >= {"type", "title", "status", "code"}
    return doc


# -- what reaches the upstream ------------------------------------------------------------------------


class TestRequestForwarding:
    def test_method_path_query_and_body_reach_the_upstream(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        body = b'{"item": "book", "qty": 2}'
        status, _, data = request(
            gateway.port, "POST", "/v1/orders?b=2&a=1&a=3&q=hello%20world", body=body,
            headers={"content-type": "application/json"},
        )
        assert status == 200
        doc = echoed(data)
        assert doc["method"] == "POST"
        assert doc["path"] == "/v1/orders?b=2&a=1&a=3&q=hello%20world"  # the query exactly as sent
        assert doc["body_bytes"] == len(body)
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert upstream_header(doc, "content-type") == ["application/json"]
        assert upstream_header(doc, "content-length") == [str(len(body))]

    @pytest.mark.parametrize(
        ("sent", "canonical"),
        [
            ("/v1//orders/42", "/v1/orders/42"),  # duplicate slashes merged
            ("/v1/orders/./42", "/v1/orders/42"),  # dot-segment removed
            ("/v1/x/../orders/42", "/v1/orders/42"),
            ("/v1/orders/%41%62c", "/v1/orders/Abc"),  # unreserved characters decoded
            ("/v1/orders/caf%C3%A9", "/v1/orders/caf%C3%A9"),  # valid UTF-8 stays encoded
        ],
    )
    def test_the_upstream_sees_the_canonical_path(
        self, gateway: GatewayThread, upstream: EchoUpstream, sent: str, canonical: str
    ) -> None:
        with RawClient(gateway.port) as c:
            c.send(get(sent + "?x=1"))
            resp = c.read_response()
        assert resp.status == 200
        assert echoed(resp.body)["path"] == canonical + "?x=1"
        assert upstream.requests[-1][1] == canonical + "?x=1"

    def test_bodiless_get_is_sent_without_framing_headers(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, _, data = request(gateway.port, "GET", "/v1/orders/7")
        assert status == 200
        doc = echoed(data)
        assert doc["method"] == "GET"
        assert doc["body_bytes"] == 0
        assert upstream_header(doc, "transfer-encoding") == []

    def test_request_id_is_the_same_upstream_and_in_the_response(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        ids = set()
        for _ in range(3):
            status, headers, data = request(gateway.port, "GET", "/v1/orders/7")
            assert status == 200
            sent_up = upstream_header(echoed(data), "x-request-id")
            assert len(sent_up) == 1
            assert headers["x-request-id"] == sent_up[0]
            ids.add(sent_up[0])
        assert len(ids) == 3  # one per request

    def test_a_client_request_id_from_an_untrusted_peer_is_replaced(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, headers, data = request(
            gateway.port, "GET", "/v1/orders/7", headers={"x-request-id": "client-chosen-id"}
        )
        assert status == 200
        assert upstream_header(echoed(data), "x-request-id") == [headers["x-request-id"]]
        assert headers["x-request-id"] != "client-chosen-id"

    def test_forwarded_headers_are_set_by_the_gateway(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, _, data = request(
            gateway.port,
            "GET",
            "/v1/orders/7",
            headers={
                "host": "api.example.test:8443",
                "x-forwarded-for": "6.6.6.6",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "evil.example",
            },
        )
        assert status == 200
        doc = echoed(data)
        # The peer is not a trusted proxy: its X-Forwarded-* are replaced by the gateway's own.
        assert upstream_header(doc, "x-forwarded-for") == ["127.0.0.1"]
        assert upstream_header(doc, "x-forwarded-proto") == ["http"]
        assert upstream_header(doc, "x-forwarded-host") == ["api.example.test:8443"]

    def test_host_sent_upstream_is_the_upstreams_by_default(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, _, data = request(gateway.port, "GET", "/v1/orders/7", headers={"host": "api.example.test"})
        assert status == 200
        assert upstream_header(echoed(data), "host") == [f"127.0.0.1:{upstream.port}"]

    def test_preserve_host_sends_the_clients_host(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        with serving(upstream.port, tmp_path, service_extra="    preserve_host: true") as gw:
            status, _, data = request(gw.port, "GET", "/v1/orders/7", headers={"host": "api.example.test"})
        assert status == 200
        doc = echoed(data)
        assert upstream_header(doc, "host") == ["api.example.test"]
        assert upstream_header(doc, "x-forwarded-host") == ["api.example.test"]


# -- what comes back ----------------------------------------------------------------------------------


class TestResponseRelay:
    def test_status_headers_and_body_come_back(self, gateway: GatewayThread, upstream: EchoUpstream) -> None:
        status, headers, data = request(gateway.port, "POST", "/status/201", body=b"abc")
        assert status == 201
        assert headers["content-type"] == "application/json"
        assert headers["content-length"] == str(len(data))
        doc = echoed(data)
        assert doc["method"] == "POST"
        assert doc["body_bytes"] == 3

    def test_upstream_error_status_is_relayed(self, gateway: GatewayThread, upstream: EchoUpstream) -> None:
        status, _, data = request(gateway.port, "GET", "/status/418")
        assert status == 418
        assert echoed(data)["method"] == "GET"

    def test_large_length_delimited_response_is_relayed_exactly(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        size = 3 * 1024 * 1024 + 17
        status, headers, data = request(gateway.port, "GET", f"/download/{size}")
        assert status == 200
        assert headers["content-length"] == str(size)
        assert "transfer-encoding" not in headers
        assert data == b"x" * size

    def test_upstream_chunked_response_is_rechunked_to_the_client(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        size = 100_000
        with RawClient(gateway.port) as c:
            c.send(get(f"/stream/{size}"))
            resp = c.read_response()
            # ...and the connection stays usable after the terminating chunk
            c.send(get("/v1/orders/1"))
            after = c.read_response()
        assert resp.status == 200
        assert resp.chunked_on_wire
        assert resp.header("content-length") is None
        assert bytes(resp.body) == b"y" * size
        assert after.status == 200


class TestHead:
    def test_head_has_no_body_and_keeps_content_length(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        with RawClient(gateway.port) as c:
            c.send(b"HEAD /download/5000 HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            head = c.read_head_response()
            # A body after the HEAD response would be read as the start of the next response.
            c.send(get("/v1/orders/1"))
            nxt = c.read_responses(1) if not c.extra else None
        assert head.status == 200
        assert head.header("content-length") == "5000"
        assert nxt is not None, "bytes followed the response to HEAD"
        assert nxt[0].status == 200
        assert echoed(nxt[0].body)["method"] == "GET"
        assert upstream.requests[-2][0] == "HEAD"

    def test_head_is_allowed_where_get_is(self, gateway: GatewayThread, upstream: EchoUpstream) -> None:
        # /v1/orders/{order_id} lists only GET.
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        try:
            conn.request("HEAD", "/v1/orders/9")
            resp = conn.getresponse()
            assert resp.read() == b""
            assert resp.status == 200
            assert int(resp.getheader("content-length") or "0") > 0
        finally:
            conn.close()
        assert upstream.requests[-1][:2] == ("HEAD", "/v1/orders/9")

    def test_head_is_not_allowed_where_get_is_not(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        routes = """
      - path: /only-post
        methods: [POST]
        auth: none
"""
        with serving(upstream.port, tmp_path, routes=routes) as gw:
            status, headers, _ = request(gw.port, "HEAD", "/only-post")
        assert status == 405
        assert headers["allow"] == "POST"
        assert upstream.requests == []


class TestBodilessStatuses:
    @pytest.mark.parametrize("code", [204, 304])
    def test_bodiless_status_is_relayed_without_a_body(self, tmp_path: Path, code: int) -> None:
        # A compliant origin (tests.support's echo upstream writes a body even after 204/304).
        with ScriptedUpstream("plain") as origin, serving(origin.port, tmp_path) as gw:
            with RawClient(gw.port) as c:
                c.send(get(f"/status/{code}"))
                resp = c.read_response()
                c.send(get("/v1/orders/2"))
                nxt = c.read_response()
            assert origin.connections == 1  # the upstream connection was reused: no body awaited
        assert resp.status == code
        assert bytes(resp.body) == b""
        assert resp.header("transfer-encoding") is None
        if code == 204:
            assert resp.header("content-length") is None  # RFC 9110 §8.6: never on 204
        else:
            assert resp.header("etag") == '"v1"'
        # the client connection was left in a clean state for the next exchange
        assert nxt.status == 200
        assert json.loads(nxt.body) == {"ok": True}


class TestHttp10Clients:
    def test_length_delimited_body_then_close(self, gateway: GatewayThread, upstream: EchoUpstream) -> None:
        with RawClient(gateway.port) as c:
            c.send(get("/v1/orders/3", version="1.0"))
            raw = c.read_until_close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") or head.startswith(b"HTTP/1.0 200 ")
        lines = [ln.lower() for ln in head.split(b"\r\n")[1:]]
        assert b"transfer-encoding: chunked" not in lines
        assert f"content-length: {len(body)}".encode() in lines
        assert echoed(body)["path"] == "/v1/orders/3"

    def test_unknown_length_is_close_delimited(self, gateway: GatewayThread, upstream: EchoUpstream) -> None:
        size = 50_000
        with RawClient(gateway.port) as c:
            c.send(get(f"/stream/{size}", version="1.0"))
            raw = c.read_until_close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = [ln.lower() for ln in head.split(b"\r\n")[1:]]
        assert status_line_code(head) == 200
        # An HTTP/1.0 client cannot read chunked: the body runs to the close.
        assert not any(ln.startswith(b"transfer-encoding") for ln in lines)
        assert not any(ln.startswith(b"content-length") for ln in lines)
        assert body == b"y" * size


# -- connections --------------------------------------------------------------------------------------


class TestConnectionReuse:
    def test_sequential_requests_share_one_client_and_few_upstream_connections(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        try:
            for i in range(50):
                conn.request("GET", f"/v1/orders/{i}")
                resp = conn.getresponse()
                data = resp.read()
                assert resp.status == 200
                assert echoed(data)["path"] == f"/v1/orders/{i}"
                assert resp.getheader("connection") != "close"
            # http.client reconnects silently when the server closes; its socket must be the same one.
            sock = conn.sock
            conn.request("GET", "/v1/orders/last")
            conn.getresponse().read()
            assert conn.sock is sock
        finally:
            conn.close()
        assert len(upstream.requests) == 51
        assert upstream.connections <= 2

    def test_pipelined_requests_are_answered_in_order(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        paths = [f"/v1/orders/p{i}" for i in range(5)]
        with RawClient(gateway.port) as c:
            c.send(b"".join(get(p) for p in paths))  # one write
            responses = c.read_responses(5)
        assert [r.status for r in responses] == [200] * 5
        assert [echoed(r.body)["path"] for r in responses] == paths
        assert len({r.header("x-request-id") for r in responses}) == 5

    def test_gateway_answers_never_overtake_relayed_ones_waiting_in_the_outbox(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        # A relayed response waits for the end of its event-loop turn (Outbox); the gateway's own answers
        # (a 404 here) and later relays on the same connection must still come out in request order.
        with RawClient(gateway.port) as c:
            for _ in range(20):
                c.send(get("/v1/orders/a") + get("/nowhere") + get("/v1/orders/b") + get("/nowhere"))
                responses = c.read_responses(4)
                assert [r.status for r in responses] == [200, 404, 200, 404]
                assert echoed(responses[0].body)["path"] == "/v1/orders/a"
                assert echoed(responses[2].body)["path"] == "/v1/orders/b"
            c.send(get("/v1/orders/last", extra="Connection: close\r\n"))
            last = c.read_until_close()  # written before the connection ends
        assert last.startswith(b"HTTP/1.1 200") and b'"/v1/orders/last"' in last

    def test_a_slow_first_pipelined_request_does_not_let_later_ones_overtake_it(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        with RawClient(gateway.port) as c:
            c.send(get("/slow/0.3") + get("/v1/orders/after"))
            first, second = c.read_responses(2)
        assert echoed(first.body)["path"] == "/slow/0.3"
        assert echoed(second.body)["path"] == "/v1/orders/after"

    def test_pipelined_requests_with_bodies_stay_in_order(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        bodies = [b"a" * 10, b"", b"b" * 3000, b"c"]
        data = b"".join(
            b"POST /v1/orders?n=%d HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n%s" % (i, len(b), b)
            for i, b in enumerate(bodies)
        )
        with RawClient(gateway.port) as c:
            c.send(data)
            responses = c.read_responses(len(bodies))
        for i, (resp, body) in enumerate(zip(responses, bodies, strict=True)):
            assert resp.status == 200
            doc = echoed(resp.body)
            assert doc["path"] == f"/v1/orders?n={i}"
            assert doc["body_bytes"] == len(body)
            assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


class TestExpectContinue:
    def test_100_continue_comes_before_the_body_is_sent(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        body = b"x" * 1000
        with RawClient(gateway.port) as c:
            c.send(
                b"POST /v1/orders HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                % len(body)
            )
            interim = c.read_response()  # the body has not been sent yet
            assert interim.status == 100
            assert interim.version == "1.1"
            c.send(body)
            final = c.read_response()
        assert final.status == 200
        doc = echoed(final.body)
        assert doc["body_bytes"] == len(body)
        # Expect is the gateway's business with its client, not forwarded.
        assert upstream_header(doc, "expect") == []

    def test_raw_100_continue_status_line(self, gateway: GatewayThread, upstream: EchoUpstream) -> None:
        with RawClient(gateway.port) as c:
            c.send(
                b"POST /v1/orders HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
            )
            first = c.sock.recv(64)
            c.send(b"ok")
            final = c.read_response()
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert final.status == 200

    def test_a_refused_request_gets_its_final_answer_instead_of_100(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        # /v1/orders takes 16 KiB: the client is told 413 before it sends a byte of the body.
        with RawClient(gateway.port) as c:
            c.send(
                b"POST /v1/orders HTTP/1.1\r\nHost: g\r\nContent-Length: 100000\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            resp = c.read_response()
            closed = c.peer_closed_within(5)
        assert resp.status == 413
        assert problem(resp.body)["code"] == "body_too_large"
        assert resp.header("connection") == "close"  # the unsent body must not be read as a request
        assert closed
        assert upstream.requests == []

    def test_unsupported_expectation_is_417(self, gateway: GatewayThread, upstream: EchoUpstream) -> None:
        with RawClient(gateway.port) as c:
            c.send(b"POST /v1/orders HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\nExpect: 200-ok\r\n\r\nok")
            resp = c.read_response()
        assert resp.status == 417
        assert resp.header("content-type") == "application/problem+json"
        assert problem(resp.body)["code"] == "expectation_unsupported"
        assert upstream.requests == []


# -- upstream failures --------------------------------------------------------------------------------


class TestUpstreamFailures:
    def test_nothing_listening_is_502_without_the_upstreams_address(self, tmp_path: Path) -> None:
        port = free_port()  # closed again: connecting to it is refused
        with serving(port, tmp_path) as gw:
            status, headers, data = request(gw.port, "GET", "/v1/orders/1")
        assert status == 502
        assert headers["content-type"] == "application/problem+json"
        doc = problem(data)
        assert doc["code"] == "upstream_unavailable"
        assert doc["status"] == 502
        # Nothing about where the upstream lives (the request id is random hex: leave it out).
        text = data.decode().replace(doc.get("request_id", ""), "")
        assert "127.0.0.1" not in text
        assert str(port) not in text
        assert "refused" not in text.lower()
        for name, value in headers.items():
            if name != "x-request-id":
                assert str(port) not in value and "127.0.0.1" not in value

    def test_upstream_slower_than_read_timeout_is_504(self, upstream: EchoUpstream, tmp_path: Path) -> None:
        with serving(upstream.port, tmp_path, service_extra="    timeouts: {read: 0.5s}") as gw:
            status, headers, data = request(gw.port, "GET", "/slow/1.5")
            # the gateway is fine afterwards
            ok, _, _ = request(gw.port, "GET", "/v1/orders/1")
        assert status == 504
        assert headers["content-type"] == "application/problem+json"
        assert problem(data)["code"] == "upstream_timeout"
        assert str(upstream.port) not in data.decode().replace(problem(data).get("request_id", ""), "")
        assert ok == 200

    def test_upstream_closing_without_an_answer_is_502(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, _, data = request(gateway.port, "GET", "/close")
        assert status == 502
        assert problem(data)["code"] == "upstream_unavailable"
        # the gateway and its pool are fine afterwards
        assert request(gateway.port, "GET", "/v1/orders/1")[0] == 200

    def test_close_without_answer_on_a_reused_connection_is_still_502(
        self, gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        # Warm the pool first: the retry on a fresh connection must also fail, and only once.
        assert request(gateway.port, "GET", "/v1/orders/1")[0] == 200
        before = len(upstream.requests)
        status, _, data = request(gateway.port, "GET", "/close")
        assert status == 502
        assert problem(data)["code"] == "upstream_unavailable"
        assert [r[1] for r in upstream.requests[before:]] in (["/close"], ["/close", "/close"])

    def test_stale_pooled_connection_is_retried_once_for_a_bodiless_request(self, tmp_path: Path) -> None:
        with ScriptedUpstream("drop_second") as origin, serving(origin.port, tmp_path) as gw:
            assert request(gw.port, "GET", "/v1/orders/1")[0] == 200  # pools the connection
            status, _, data = request(gw.port, "GET", "/v1/orders/2")
            assert status == 200, data
            assert json.loads(data) == {"ok": True}
            # the pooled connection dropped the request; a fresh connection answered it
            assert origin.dropped == 1
            assert origin.connections == 2
            assert [p for _, p in origin.requests] == ["/v1/orders/1", "/v1/orders/2", "/v1/orders/2"]

    @pytest.mark.parametrize(
        "raw",
        [
            b"POST /v1/orders HTTP/1.1\r\nHost: gw\r\n\r\n",  # bodiless: the callback fast path
            b"POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 8\r\n\r\npay-once",  # the task path
        ],
        ids=["fast-path", "task-path"],
    )
    def test_a_pooled_connection_lost_before_the_request_was_written_is_retried_for_any_method(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: bytes
    ) -> None:
        # Requests wait for the end of the event-loop turn before they are written (Outbox). If the
        # pooled connection turns out closed meanwhile, nothing of the request reached the origin, so
        # even a POST goes again on a fresh connection — once, and the origin sees it once.
        from bastion.proxy.upstream import UpstreamPool

        take_idle = UpstreamPool.take_idle
        broken: list[object] = []

        def take_idle_then_lose_it(pool: UpstreamPool):  # type: ignore[no-untyped-def]
            conn = take_idle(pool)
            if conn is not None and not broken:
                broken.append(conn)
                conn.transport.abort()  # the origin's close, noticed after the connection was taken
            return conn

        with ScriptedUpstream("plain") as origin, serving(origin.port, tmp_path) as gw:
            assert request(gw.port, "GET", "/v1/orders/1")[0] == 200  # pools the connection
            monkeypatch.setattr(UpstreamPool, "take_idle", take_idle_then_lose_it)
            with RawClient(gw.port) as client:
                client.send(raw)
                resp = client.read_response()
            assert resp.status == 200, resp.body
            assert broken, "the pooled connection was not taken"
            assert [r for r in origin.requests if r[0] == "POST"] == [("POST", "/v1/orders")]
            assert origin.connections == 2

    def test_a_request_with_a_streamed_body_is_not_replayed(self, tmp_path: Path) -> None:
        with ScriptedUpstream("drop_second") as origin, serving(origin.port, tmp_path) as gw:
            assert request(gw.port, "GET", "/v1/orders/1")[0] == 200
            status, _, data = request(gw.port, "POST", "/v1/orders", body=b"pay-once")
            assert status == 502
            assert problem(data)["code"] == "upstream_unavailable"
            assert [r for r in origin.requests if r[0] == "POST"] == [("POST", "/v1/orders")]

    def test_origin_closing_idle_connections_never_fails_a_request(self, tmp_path: Path) -> None:
        with ScriptedUpstream("close_idle") as origin, serving(origin.port, tmp_path) as gw:
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            try:
                for i in range(8):
                    conn.request("GET", f"/v1/orders/{i}")
                    resp = conn.getresponse()
                    assert resp.status == 200, resp.read()
                    assert json.loads(resp.read()) == {"ok": True}
            finally:
                conn.close()
            # The origin counts a close in its own thread, just after the response: wait for it.
            wait_until(lambda: origin.idle_closed >= 8, 5, "the origin to close every idle connection")


# -- CORS, end to end ---------------------------------------------------------------------------------

CORS_ROUTES = """
      - path: /api/items
        methods: [GET, POST]
        auth: none
        cors: {allow_origins: [https://app.example], allow_credentials: true, allow_headers: [content-type]}
"""


class TestCors:
    @pytest.fixture
    def cors_gateway(self, upstream: EchoUpstream, tmp_path: Path) -> Iterator[GatewayThread]:
        with serving(upstream.port, tmp_path, routes=CORS_ROUTES) as gw:
            yield gw

    def test_preflight_is_answered_at_the_gateway(
        self, cors_gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, headers, data = request(
            cors_gateway.port,
            "OPTIONS",
            "/api/items",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert status == 204
        assert data == b""
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert headers["access-control-allow-credentials"] == "true"
        assert "POST" in headers["access-control-allow-methods"]
        assert headers["access-control-allow-headers"] == "content-type"
        assert "origin" in headers["vary"].lower()
        assert upstream.requests == []

    def test_actual_request_gets_allow_origin_and_vary(
        self, cors_gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, headers, data = request(
            cors_gateway.port, "GET", "/api/items", headers={"origin": "https://app.example"}
        )
        assert status == 200
        assert headers["access-control-allow-origin"] == "https://app.example"  # never * with credentials
        assert headers["access-control-allow-credentials"] == "true"
        assert "origin" in headers["vary"].lower()
        assert echoed(data)["path"] == "/api/items"

    def test_foreign_origin_is_403(self, cors_gateway: GatewayThread, upstream: EchoUpstream) -> None:
        status, headers, data = request(
            cors_gateway.port, "GET", "/api/items", headers={"origin": "https://evil.example"}
        )
        assert status == 403
        assert headers["content-type"] == "application/problem+json"
        assert problem(data)["code"] == "cors_origin_denied"
        assert "access-control-allow-origin" not in headers
        assert upstream.requests == []

    def test_foreign_origin_preflight_is_refused_at_the_gateway(
        self, cors_gateway: GatewayThread, upstream: EchoUpstream
    ) -> None:
        status, headers, data = request(
            cors_gateway.port,
            "OPTIONS",
            "/api/items",
            headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
        )
        assert status == 403
        assert problem(data)["code"] == "cors_preflight_denied"
        assert "access-control-allow-origin" not in headers
        assert upstream.requests == []


# -- the fast path ------------------------------------------------------------------------------------------


class TestFastPath:
    """Bodiless requests on an idle connection are served from protocol callbacks (no task); the rest
    takes the task path. Both must give the same answers — the suites above run through both."""

    def test_bodiless_requests_take_the_fast_path(self, gateway: GatewayThread) -> None:
        server = gateway.running.server  # type: ignore[union-attr]
        before = server.fast_forwards
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        try:
            for i in range(10):
                conn.request("GET", f"/v1/orders/{i}")
                resp = conn.getresponse()
                assert resp.status == 200
                assert json.loads(resp.read())["path"] == f"/v1/orders/{i}"
        finally:
            conn.close()
        # the first request opened the upstream connection on the task path; the rest reused it
        assert server.fast_forwards - before >= 9

    def test_requests_with_a_body_take_the_task_path(self, gateway: GatewayThread) -> None:
        server = gateway.running.server  # type: ignore[union-attr]
        request(gateway.port, "GET", "/v1/orders/warm")  # an idle pooled upstream connection exists
        before = server.fast_forwards
        status, _, body = request(gateway.port, "POST", "/v1/orders", body=b'{"item": "book"}',
                                  headers={"content-type": "application/json"})
        assert status == 200 and json.loads(body)["body_bytes"] == 16
        assert server.fast_forwards == before
