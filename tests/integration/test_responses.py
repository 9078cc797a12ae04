"""Don't overshare (P7), end to end: the real gateway in front of a real origin whose responses each test
scripts (``EchoUpstream.fixtures``, served verbatim at ``/fixture/...``).

What is proved here: an upstream 5xx keeps its status but never its body or headers (a stack trace stays
inside; Retry-After survives) and is recorded as ``upstream.error``, with the connection still usable;
identifying headers are removed from every upstream response (default list, or a custom one that
replaces it); ``response_fields`` filters JSON bodies at any depth and refuses (502) whatever it cannot
check — compressed, too large, not JSON, nested too deep — rather than send it unfiltered; everything
that is not a JSON body (text, streams, HEAD, 204) passes untouched.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Engine, select

from bastion.store.database import open_database
from bastion.store.schema import events_table

from ..support import EchoUpstream, GatewayThread, config_text, load_text, request
from ._dataplane import RawClient, get
from ._identity import wait_for

JSON = ("content-type", "application/json")
TRACE = (
    b'Traceback (most recent call last):\n  File "/srv/app/orders.py", line 42, in get_order\n'
    b"psycopg2.errors.UndefinedColumn: column \"ssn\" does not exist at postgres://db.internal:5432\n"
)
DOC = {
    "id": 7,
    "name": "Ada",
    "token": "top-level-token-kept",
    "password": "hunter2",
    "session": {"token": "sess-secret", "expires": 123},
    "user": {"email": "ada@example.com", "name": "Ada L", "password": "p2"},
    "items": [
        {"sku": "A-1", "price": 10, "owner": {"user": {"email": "own@example.com", "id": 3}}},
        {"sku": "B-2", "auth": {"token": "t3"}, "tags": ["password", "token"]},
    ],
}
DENIED = {
    "id": 7,
    "name": "Ada",
    "token": "top-level-token-kept",
    "session": {"expires": 123},
    "user": {"name": "Ada L"},
    "items": [
        {"sku": "A-1", "price": 10, "owner": {"user": {"id": 3}}},
        {"sku": "B-2", "auth": {}, "tags": ["password", "token"]},
    ],
}
ALLOWED = {"id": 7, "name": "Ada", "items": [{"sku": "A-1"}, {"sku": "B-2"}]}

ROUTES = """
      - path: /status/{code}
        methods: [GET, POST]
        auth: none
      - path: /download/{size}
        methods: [GET]
        auth: none
      - path: /stream/{size}
        methods: [GET]
        auth: none
        response_fields: {deny: [password]}
      - path: /fixture/deny/{name}
        methods: [GET, POST]
        auth: none
        response_fields: {deny: [password, "*.token", user.email]}
      - path: /fixture/allow/{name}
        methods: [GET]
        auth: none
        response_fields: {allow: [id, name, items.sku]}
      - path: /fixture/small/{name}
        methods: [GET]
        auth: none
        response_fields: {deny: [password], max_body: 1KiB}
      - path: /fixture/plain/{name}
        methods: [GET, POST]
        auth: none
"""


class Stack(NamedTuple):
    gw: GatewayThread
    origin: EchoUpstream
    engine: Engine

    @property
    def port(self) -> int:
        return self.gw.port



def _stack(tmp: Path, extra: str = "", routes: str = ROUTES) -> Iterator[Stack]:
    with EchoUpstream() as origin:
        db = tmp / "bastion.db"
        loaded = load_text(config_text(origin.port, db, routes=routes, extra=extra, admin=False))
        engine = open_database(f"sqlite:///{db}")
        try:
            with GatewayThread(loaded) as gw:
                yield Stack(gw, origin, engine)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The defaults: upstream errors replaced, the default headers hidden."""
    yield from _stack(tmp_path_factory.mktemp("responses"))


@pytest.fixture(scope="module")
def passthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """replace_upstream_errors off, and a custom hide_headers list."""
    extra = "responses: {replace_upstream_errors: false, hide_headers: [X-Upstream-Debug, x-custom-secret]}"
    yield from _stack(tmp_path_factory.mktemp("passthrough"), extra)


def serve(stack: Stack, path: str, status: int, headers: list[tuple[str, str]], body: bytes) -> str:
    stack.origin.fixtures[path] = (status, headers, body)
    return path


def events_for(stack: Stack, request_id: str, type_: str) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        t = events_table.c
        stmt = select(events_table).where(t.request_id == request_id, t.type == type_)
        with stack.engine.connect() as db:
            rows = db.execute(stmt).mappings().all()
        return [{**r, "data": json.loads(r["data"])} for r in rows]

    return wait_for(found, what=f"a {type_} event for {request_id}")  # type: ignore[no-any-return]


def problem(body: bytes, status: int, code: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == status
    assert doc["code"] == code
    return doc


def upstream_saw(stack: Stack, path: str) -> dict[str, str]:
    headers = next(r[2] for r in reversed(stack.origin.requests) if r[1] == path)
    return {n.lower(): v for n, v in headers}


# -- upstream errors -----------------------------------------------------------------------------------


class TestUpstreamErrorsReplaced:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
    def test_body_and_headers_replaced_status_and_retry_after_kept(self, stack: Stack, status: int) -> None:
        path = serve(stack, f"/fixture/plain/err{status}", status, [
            ("content-type", "text/plain"),
            ("retry-after", "120"),
            ("x-upstream-debug", "db=db.internal:5432 user=app"),
            ("set-cookie", "debug_session=abc"),
            ("server", "gunicorn/20.1"),
        ], TRACE)
        code, headers, body = request(stack.port, "GET", path)
        assert code == status
        assert b"Traceback" not in body and b"db.internal" not in body and b"ssn" not in body
        assert headers["content-type"] == "application/problem+json"
        assert int(headers["content-length"]) == len(body)
        problem(body, status, "upstream_error")
        assert headers["retry-after"] == "120"
        for leaked in ("x-upstream-debug", "set-cookie", "server"):
            assert leaked not in headers
        [event] = events_for(stack, headers["x-request-id"], "upstream.error")
        assert event["reason"] == "upstream_error"
        assert event["severity"] == "error"
        assert event["route"] == "orders:GET POST /fixture/plain/{name}"
        assert event["data"]["service"] == "orders"
        assert event["data"]["upstream_status"] == status
        assert "Traceback" not in json.dumps(event["data"])

    def test_json_error_body_with_secrets_replaced(self, stack: Stack) -> None:
        secret = {"error": "IntegrityError", "query": "SELECT password FROM users", "dsn": "postgres://u:pw@db"}
        path = serve(stack, "/fixture/plain/json500", 500, [JSON], json.dumps(secret).encode())
        code, _headers, body = request(stack.port, "GET", path)
        assert code == 500
        assert b"SELECT" not in body and b"postgres://" not in body
        problem(body, 500, "upstream_error")

    def test_echo_upstream_5xx_after_a_request_body(self, stack: Stack) -> None:
        code, headers, body = request(stack.port, "POST", "/status/503", body=b'{"a": 1}' * 100,
                                      headers={"content-type": "application/json"})
        assert code == 503
        problem(body, 503, "upstream_error")
        assert "x-powered-by" not in headers  # the echo upstream's own header is gone too
        assert b"body_sha256" not in body

    def test_head_to_an_upstream_error_has_no_body(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/plain/head500", 500, [("content-type", "text/plain")], TRACE)
        with RawClient(stack.port) as client:
            client.send(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            head = client.read_head_response()
            client.send(get("/status/200"))
            nxt = client.read_responses(1) if not client.extra else None
        assert head.status == 500
        assert head.header("content-type") == "application/problem+json"
        assert nxt is not None, "bytes followed the response to HEAD"
        assert nxt[0].status == 200

    def test_4xx_is_not_an_upstream_error(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/plain/teapot", 418, [("content-type", "text/plain")], b"I'm a teapot")
        code, _headers, body = request(stack.port, "GET", path)
        assert (code, body) == (418, b"I'm a teapot")

    def test_connection_stays_usable_after_a_replaced_error(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/plain/keepalive500", 500, [("content-type", "text/plain")], TRACE)
        with RawClient(stack.port) as client:
            client.send(get(path))
            first = client.read_response()
            client.send(get("/status/200"))
            second = client.read_response()
        assert first.status == 500 and first.keep_alive
        assert b"Traceback" not in first.body
        assert second.status == 200
        assert json.loads(second.body)["path"] == "/status/200"

    def test_pipelined_errors_and_successes_stay_in_order(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/plain/pipe502", 502, [("content-type", "text/plain")], TRACE)
        one = get(path)
        ok = get("/status/201")
        with RawClient(stack.port) as client:
            client.send(one + ok + one + ok)
            got = client.read_responses(4)
        assert [r.status for r in got] == [502, 201, 502, 201]
        assert all(b"Traceback" not in r.body for r in got)

    def test_huge_error_body_is_dropped_and_the_connection_still_works(self, stack: Stack) -> None:
        # Larger than the 1 MiB the gateway reads to reuse the upstream connection: it gives that up.
        path = serve(stack, "/fixture/plain/huge500", 500, [("content-type", "text/plain")],
                     TRACE * (3 * 1024 * 1024 // len(TRACE)))
        with RawClient(stack.port) as client:
            client.send(get(path))
            first = client.read_response()
            client.send(get("/status/200"))
            second = client.read_response()
        assert first.status == 500 and b"Traceback" not in first.body
        assert second.status == 200

    def test_replace_off_passes_the_body_through(self, passthrough: Stack) -> None:
        path = serve(passthrough, "/fixture/plain/off500", 500,
                     [("content-type", "text/plain"), ("retry-after", "5")], TRACE)
        code, headers, body = request(passthrough.port, "GET", path)
        assert (code, body) == (500, TRACE)
        assert headers["content-type"] == "text/plain"
        assert headers["retry-after"] == "5"

    def test_replace_off_echo_503(self, passthrough: Stack) -> None:
        code, _headers, body = request(passthrough.port, "GET", "/status/503")
        assert code == 503
        assert json.loads(body)["path"] == "/status/503"  # the upstream's own body

    def test_replace_off_still_filters_fields_of_an_error(self, passthrough: Stack) -> None:
        path = serve(passthrough, "/fixture/deny/off500", 500, [JSON], json.dumps(DOC).encode())
        code, _headers, body = request(passthrough.port, "GET", path)
        assert code == 500
        assert json.loads(body) == DENIED


# -- hidden headers --------------------------------------------------------------------------------------


class TestHiddenHeaders:
    IDENTIFYING = [
        ("SERVER", "Apache/2.4.1 (Unix)"),
        ("X-Powered-By", "PHP/5.6"),
        ("X-AspNet-Version", "4.0.30319"),
        ("x-aspnetmvc-version", "5.2"),
        ("X-Runtime", "0.0123"),
        ("X-Version", "1.2.3"),
        ("X-Generator", "Drupal 7"),
        ("X-Drupal-Cache", "HIT"),
        ("X-Backend-Server", "app-07.internal"),
    ]

    def test_default_list_removed_case_insensitively(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/plain/ident", 200,
                     [("content-type", "text/plain"), *self.IDENTIFYING, ("X-App", "kept")], b"hello")
        code, headers, body = request(stack.port, "GET", path)
        assert (code, body) == (200, b"hello")
        for name, _ in self.IDENTIFYING:
            assert name.lower() not in headers
        assert headers["x-app"] == "kept"

    def test_echo_upstream_headers_removed(self, stack: Stack) -> None:
        code, headers, _ = request(stack.port, "GET", "/status/200")
        assert code == 200
        assert "server" not in headers and "x-powered-by" not in headers

    def test_removed_from_streamed_and_head_responses(self, stack: Stack) -> None:
        code, headers, body = request(stack.port, "GET", "/download/300000")
        assert code == 200 and len(body) == 300000
        assert "server" not in headers
        code, headers, body = request(stack.port, "HEAD", "/download/300000")
        assert code == 200 and body == b""
        assert "server" not in headers

    def test_removed_from_filtered_responses(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/ident", 200, [JSON, *self.IDENTIFYING], b'{"a": 1}')
        code, headers, body = request(stack.port, "GET", path)
        assert (code, json.loads(body)) == (200, {"a": 1})
        assert not {n.lower() for n, _ in self.IDENTIFYING} & set(headers)

    def test_custom_list_replaces_the_default(self, passthrough: Stack) -> None:
        path = serve(passthrough, "/fixture/plain/custom", 200, [
            ("content-type", "text/plain"),
            ("X-Upstream-Debug", "node-3"),
            ("X-CUSTOM-SECRET", "s"),
            ("Server", "nginx/1.25"),
            ("X-Powered-By", "Express"),
        ], b"ok")
        code, headers, _ = request(passthrough.port, "GET", path)
        assert code == 200
        assert "x-upstream-debug" not in headers and "x-custom-secret" not in headers
        # the custom list is the whole list: the default names are no longer hidden
        assert headers["server"] == "nginx/1.25"
        assert headers["x-powered-by"] == "Express"


# -- response_fields ---------------------------------------------------------------------------------------


class TestResponseFields:
    def test_deny_on_nested_json(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/nested", 200, [JSON], json.dumps(DOC, indent=2).encode())
        code, headers, body = request(stack.port, "GET", path)
        assert code == 200
        assert json.loads(body) == DENIED
        assert int(headers["content-length"]) == len(body)
        assert b"hunter2" not in body and b"sess-secret" not in body and b"ada@example.com" not in body
        assert b"\n" not in body and b", " not in body  # re-serialised compactly

    def test_upstream_asked_for_identity_encoding(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/ae", 200, [JSON], b"{}")
        request(stack.port, "GET", path, headers={"Accept-Encoding": "gzip, br, zstd"})
        assert upstream_saw(stack, path)["accept-encoding"] == "identity"
        # a route without response_fields forwards what the client asked for
        plain = serve(stack, "/fixture/plain/ae", 200, [("content-type", "text/plain")], b"x")
        request(stack.port, "GET", plain, headers={"Accept-Encoding": "gzip, br"})
        assert upstream_saw(stack, plain)["accept-encoding"] == "gzip, br"

    def test_allow_on_nested_json(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/allow/nested", 200, [JSON], json.dumps(DOC).encode())
        code, headers, body = request(stack.port, "GET", path)
        assert code == 200
        assert json.loads(body) == ALLOWED
        assert int(headers["content-length"]) == len(body)

    def test_allow_keeps_a_bare_scalar_and_empties_a_scalar_array(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/allow/scalar", 200, [JSON], b'"just a string"')
        assert request(stack.port, "GET", path)[2] == b'"just a string"'
        path = serve(stack, "/fixture/allow/array", 200, [JSON], b'[1, 2, {"id": 1, "x": 2}]')
        assert json.loads(request(stack.port, "GET", path)[2]) == [{"id": 1}]

    def test_escaped_key_names_are_still_matched(self, stack: Stack) -> None:
        # JSON escapes decode before matching: "pass\u0077ord" is "password".
        raw = b'{"pass\\u0077ord": "hunter2", "user": {"\\u0065mail": "e@x", "ok": "\\u00e9"}}'
        path = serve(stack, "/fixture/deny/escaped", 200, [JSON], raw)
        code, _headers, body = request(stack.port, "GET", path)
        assert code == 200
        assert json.loads(body) == {"user": {"ok": "é"}}
        assert "é".encode() in body  # non-ASCII written as UTF-8, not escaped

    def test_duplicate_keys_cannot_smuggle_a_denied_field(self, stack: Stack) -> None:
        raw = b'{"password": "a", "n": 1, "password": "b"}'
        path = serve(stack, "/fixture/deny/dupes", 200, [JSON], raw)
        assert json.loads(request(stack.port, "GET", path)[2]) == {"n": 1}

    def test_error_statuses_are_filtered_too(self, stack: Stack) -> None:
        echo = {"error": "invalid", "submitted": {"user": "ada", "password": "hunter2"}}
        path = serve(stack, "/fixture/deny/bad-request", 400, [JSON], json.dumps(echo).encode())
        code, _headers, body = request(stack.port, "GET", path)
        assert code == 400
        assert json.loads(body) == {"error": "invalid", "submitted": {"user": "ada"}}

    @pytest.mark.parametrize("ctype", [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/problem+json",
        "application/vnd.api+json",
    ])
    def test_json_media_types_are_filtered(self, stack: Stack, ctype: str) -> None:
        path = serve(stack, f"/fixture/deny/ct-{abs(hash(ctype))}", 200,
                     [("content-type", ctype)], b'{"password": "x", "a": 1}')
        code, headers, body = request(stack.port, "GET", path)
        assert (code, json.loads(body)) == (200, {"a": 1})
        assert headers["content-type"] == ctype

    def test_chunked_json_is_filtered_and_sent_with_a_length(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/chunked", 200, [JSON, ("transfer-encoding", "chunked")],
                     json.dumps(DOC).encode())
        with RawClient(stack.port) as client:
            client.send(get(path))
            resp = client.read_response()
        assert resp.status == 200
        assert not resp.chunked_on_wire
        assert resp.header("content-length") == str(len(resp.body))
        assert json.loads(resp.body) == DENIED

    def test_post_with_a_body_is_filtered(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/post", 201, [JSON], b'{"id": 9, "password": "set"}')
        code, _headers, body = request(stack.port, "POST", path, body=b'{"password": "set"}' * 500,
                                       headers={"content-type": "application/json"})
        assert (code, json.loads(body)) == (201, {"id": 9})

    def test_body_at_max_body_is_filtered(self, stack: Stack) -> None:
        head = b'{"password": "x", "pad": "'
        raw = head + b"p" * (1024 - len(head) - 2) + b'"}'
        assert len(raw) == 1024  # max_body: 1KiB, and one byte more is refused (test_too_large_by_one)
        path = serve(stack, "/fixture/small/at-limit", 200, [JSON], raw)
        code, _headers, body = request(stack.port, "GET", path)
        assert code == 200
        assert set(json.loads(body)) == {"pad"}


class TestUnfilterable:
    """Whatever cannot be checked is refused with one generic 502 — never sent as it came."""

    def _refused(self, stack: Stack, path: str, stage: str) -> None:
        code, headers, body = request(stack.port, "GET", path)
        assert code == 502
        assert headers["content-type"] == "application/problem+json"
        problem(body, 502, "response_unfilterable")
        assert b"hunter2" not in body
        [event] = events_for(stack, headers["x-request-id"], "request.denied")
        assert event["reason"] == "response_unfilterable"
        assert event["data"]["stage"] == stage
        assert event["data"]["service"] == "orders"

    def test_gzip_encoded_json(self, stack: Stack) -> None:
        packed = gzip.compress(json.dumps({"password": "hunter2"}).encode())
        path = serve(stack, "/fixture/deny/gzip", 200, [JSON, ("content-encoding", "gzip")], packed)
        self._refused(stack, path, "encoded")

    def test_identity_encoding_is_not_an_encoding(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/identity", 200, [JSON, ("content-encoding", "identity")],
                     b'{"password": "hunter2", "a": 1}')
        code, _headers, body = request(stack.port, "GET", path)
        assert (code, json.loads(body)) == (200, {"a": 1})

    def test_too_large(self, stack: Stack) -> None:
        raw = json.dumps({"password": "hunter2", "pad": "p" * 2000}).encode()
        self._refused(stack, serve(stack, "/fixture/small/big", 200, [JSON], raw), "too_large")

    def test_too_large_by_one_byte(self, stack: Stack) -> None:
        head = b'{"password": "hunter2", "pad": "'
        raw = head + b"p" * (1025 - len(head) - 2) + b'"}'
        assert len(raw) == 1025
        self._refused(stack, serve(stack, "/fixture/small/by-one", 200, [JSON], raw), "too_large")

    def test_too_large_and_chunked(self, stack: Stack) -> None:
        raw = json.dumps({"password": "hunter2", "pad": "p" * 2000}).encode()
        path = serve(stack, "/fixture/small/bigchunked", 200, [JSON, ("transfer-encoding", "chunked")], raw)
        self._refused(stack, path, "too_large")

    @pytest.mark.parametrize(("name", "raw"), [
        ("truncated", b'{"password": "hunter2", "a": '),
        ("html", b"<html>password: hunter2</html>"),
        ("bad-utf8", b'{"password": "hunter2", "a": "\xff\xfe"}'),
        ("empty", b""),
        # valid by the JSON grammar, but not Unicode: it cannot be written back out as UTF-8
        ("lone-surrogate", b'{"password": "hunter2", "a": "\\ud800"}'),
    ])
    def test_not_json(self, stack: Stack, name: str, raw: bytes) -> None:
        self._refused(stack, serve(stack, f"/fixture/deny/{name}", 200, [JSON], raw), "not_json")

    def test_nesting_too_deep_for_the_parser(self, stack: Stack) -> None:
        deep = b'{"password": "hunter2", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        self._refused(stack, serve(stack, "/fixture/deny/deep", 200, [JSON], deep), "not_json")
    def test_non_json_number_constants(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/nan", 200, [JSON], b'{"a": NaN, "password": Infinity}')
        self._refused(stack, path, "not_json")

    def test_connection_stays_usable_after_a_refusal(self, stack: Stack) -> None:
        bad = serve(stack, "/fixture/deny/keep-bad", 200, [JSON], b"{nope")
        good = serve(stack, "/fixture/deny/keep-good", 200, [JSON], b'{"password": 1, "a": 2}')
        with RawClient(stack.port) as client:
            client.send(get(bad) + get(good))
            first, second = client.read_responses(2)
        assert first.status == 502 and first.keep_alive
        assert (second.status, json.loads(second.body)) == (200, {"a": 2})


class TestUntouched:
    """Not a JSON body: relayed byte for byte, with the upstream's framing."""

    def test_text_plain(self, stack: Stack) -> None:
        raw = b'{"password": "looks like JSON but is labelled text"}'
        path = serve(stack, "/fixture/deny/text", 200, [("content-type", "text/plain")], raw)
        code, headers, body = request(stack.port, "GET", path)
        assert (code, body) == (200, raw)
        assert headers["content-length"] == str(len(raw))

    def test_no_content_type_is_not_filtered(self, stack: Stack) -> None:
        # Pinned: only a JSON media type is filtered; an upstream that labels nothing is relayed as is.
        raw = b'{"password": "unlabelled"}'
        path = serve(stack, "/fixture/deny/unlabelled", 200, [], raw)
        assert request(stack.port, "GET", path)[2] == raw
    def test_a_second_json_content_type_is_not_a_way_around_the_filter(self, stack: Stack) -> None:
        raw = b'{"password": "hunter2", "a": 1}'
        path = serve(stack, "/fixture/deny/two-types", 200,
                     [("content-type", "text/plain"), ("content-type", "application/json")], raw)
        code, _headers, body = request(stack.port, "GET", path)
        assert b"hunter2" not in body
        assert code in (200, 502)

    def test_streamed_chunked_body(self, stack: Stack) -> None:
        with RawClient(stack.port) as client:
            client.send(get("/stream/200000"))
            resp = client.read_response()
        assert resp.status == 200
        assert resp.chunked_on_wire
        assert bytes(resp.body) == b"y" * 200000

    def test_head(self, stack: Stack) -> None:
        raw = json.dumps(DOC).encode()
        path = serve(stack, "/fixture/deny/head", 200, [JSON], raw)
        with RawClient(stack.port) as client:
            client.send(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            head = client.read_head_response()
            # A body after the HEAD response would be read as the start of the next response.
            client.send(get("/status/200"))
            nxt = client.read_responses(1) if not client.extra else None
        assert head.status == 200
        # The upstream's length is the unfiltered body's: it is not relayed (it would tell the size of what
        # the filter removes).
        assert head.header("content-length") is None
        assert nxt is not None, "bytes followed the response to HEAD"
        assert nxt[0].status == 200

    def test_no_content(self, stack: Stack) -> None:
        path = serve(stack, "/fixture/deny/nocontent", 204, [JSON], b"")
        code, _headers, body = request(stack.port, "GET", path)
        assert (code, body) == (204, b"")


# -- byte ranges: a JSON document served in slices ----------------------------------------------------------

RANGED_DOC = b'{"id": 1, "password": "hunter2", "name": "Ada"}'


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves RANGED_DOC as application/json and honours Range (RFC 9110 §14) like a static file server:
    one range → 206 with that slice, several → 206 multipart/byteranges."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        spec = self.headers.get("range", "")
        ctype = "application/json"
        status, body = 200, RANGED_DOC
        if spec.startswith("bytes="):
            ranges = [tuple(int(n) for n in part.split("-")) for part in spec[6:].split(",")]
            status = 206
            if len(ranges) == 1:
                body = RANGED_DOC[ranges[0][0] : ranges[0][1] + 1]
            else:
                ctype = "multipart/byteranges; boundary=SLICE"
                body = b"".join(
                    b"--SLICE\r\ncontent-type: application/json\r\n"
                    b"content-range: bytes %d-%d/%d\r\n\r\n%s\r\n"
                    % (a, b, len(RANGED_DOC), RANGED_DOC[a : b + 1])
                    for a, b in ranges
                ) + b"--SLICE--\r\n"
        self.send_response_only(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def ranged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    origin = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    origin.daemon_threads = True
    thread = threading.Thread(target=origin.serve_forever, daemon=True)
    thread.start()
    routes = """
      - path: /doc
        methods: [GET]
        auth: none
        response_fields: {deny: [password]}
"""
    db = tmp_path_factory.mktemp("ranged") / "bastion.db"
    try:
        port = int(origin.server_address[1])
        with GatewayThread(load_text(config_text(port, db, routes=routes, admin=False))) as gw:
            yield gw.port
    finally:
        origin.shutdown()
        origin.server_close()


class TestByteRanges:
    START = RANGED_DOC.index(b'"hunter2"')

    def test_whole_document_filtered(self, ranged: int) -> None:
        code, _headers, body = request(ranged, "GET", "/doc")
        assert (code, json.loads(body)) == (200, {"id": 1, "name": "Ada"})
    def test_a_single_range_cannot_cut_out_a_denied_value(self, ranged: int) -> None:
        a, b = self.START, self.START + len(b'"hunter2"') - 1
        _code, _headers, body = request(ranged, "GET", "/doc", headers={"Range": f"bytes={a}-{b}"})
        assert b"hunter2" not in body
    def test_several_ranges_cannot_carry_a_denied_value_out(self, ranged: int) -> None:
        ranges = f"bytes=0-1,{self.START}-{self.START + 10}"
        _code, _headers, body = request(ranged, "GET", "/doc", headers={"Range": ranges})
        assert b"hunter2" not in body
