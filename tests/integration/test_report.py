"""The audit report (:mod:`bastion.events.report`) on a real SQLite store: events, keys made through
:class:`IdentityAdmin` and inventory rows, then the Markdown's sections and numbers, the escaping of
hostile values in both formats, and the HTML as headless Chromium renders it (DOM and pixels).

Time is injected: ``T0`` is "now" for the report, the identity admin and every event.

Chromium (``/usr/bin/chromium``) is required: without it the browser tests fail, unless
``BASTION_SKIP_BROWSER=1`` says to skip them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update

from bastion.events import svg
from bastion.events.report import build_report
from bastion.events.writer import new_event
from bastion.identity.credentials import Peppers
from bastion.identity.manage import IdentityAdmin
from bastion.store.database import open_database
from bastion.store.schema import api_keys_table, events_table, inventory_observed_table

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z: the period starts mid-day, so 7 days touch 8 UTC days
DAY = 86400.0
SINCE = T0 - 7 * DAY
HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = "<img src=x onerror=alert(2)>"
SECTION_IDS = [
    "summary",
    "denials-per-day",
    "top-denied-sources",
    "auth-failures-by-consumer",
    "unused-keys",
    "expiring-keys",
    "alerts-fired",
    "undeclared-endpoints",
]
HEADINGS = [
    "Summary",
    "Denials per day",
    "Top denied sources",
    "Auth failures by consumer",
    "Keys unused for 30+ days",
    "Keys near expiry",
    "Alerts fired",
    "Undeclared endpoints",
]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def add_event(
    engine: Engine, type_: str, at: float, *, data: dict[str, Any] | None = None, **fields: Any
) -> None:
    """One row in ``events``, with only the columns this schema has (it grows: resource, the chain…)."""
    row = asdict(new_event(type_, now=at, data=data or {}, **fields))
    row["data"] = json.dumps(row["data"])
    columns = set(events_table.c.keys())
    with engine.begin() as db:
        db.execute(insert(events_table), [{k: v for k, v in row.items() if k in columns}])


def add_observed(engine: Engine, method: str, template: str, count: int, first: float, last: float) -> None:
    with engine.begin() as db:
        db.execute(
            insert(inventory_observed_table).values(
                method=method, template=template, count=count, first_seen=first, last_seen=last
            )
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The report's queries on both stores: SQLite (embedded) and the real PostgreSQL."""
    if request.param == "sqlite":
        eng = open_database(f"sqlite:///{tmp_path / 'report.db'}")
        yield eng
        eng.dispose()
        return
    from ..support import scratch_postgres

    with scratch_postgres("bastion_report") as eng:
        yield eng


@pytest.fixture
def keys(engine: Engine) -> dict[str, str]:
    """Keys in every state the two key sections tell apart; returns name → key id."""
    clock = Clock(T0)
    admin = IdentityAdmin(
        engine, Peppers("report-pepper-0123456789abcdef"), max_key_ttl=90 * DAY, clock=clock
    )
    admin.create_consumer("shop", ["orders:read"], actor="test")
    admin.create_consumer("billing", ["invoices:read"], actor="test")
    admin.create_consumer("retired", ["orders:read"], actor="test")
    ids: dict[str, str] = {}

    def key(name: str, consumer: str, created: float, ttl: float, last_used: float | None = None) -> str:
        clock.now = created
        out, _ = admin.create_key(consumer, ttl=ttl, name=name, actor="test")
        if last_used is not None:
            with engine.begin() as db:
                db.execute(
                    update(api_keys_table)
                    .where(api_keys_table.c.id == out["id"])
                    .values(last_used_at=last_used)
                )
        ids[name] = out["id"]
        return str(out["id"])

    key("stale", "shop", T0 - 60 * DAY, 90 * DAY, last_used=T0 - 40 * DAY)  # unused
    key("fresh", "shop", T0 - 10 * DAY, 20 * DAY)  # expires in 10 days; too young to be "unused"
    key("idle", "billing", T0 - 45 * DAY, 90 * DAY)  # never used, created before the cutoff: unused
    key("busy-expiring", "shop", T0 - 80 * DAY, 85 * DAY, last_used=T0 - DAY)  # expires in 5 days
    revoked = key("revoked", "billing", T0 - 45 * DAY, 90 * DAY)
    key("expired", "shop", T0 - 89 * DAY, 30 * DAY)
    key("of-retired", "retired", T0 - 60 * DAY, 88 * DAY)  # its consumer is disabled
    rotated = key("rotated", "billing", T0 - 70 * DAY, 90 * DAY, last_used=T0 - 50 * DAY)
    clock.now = T0 - DAY
    admin.revoke_key(revoked, actor="test")
    admin.set_consumer_active("retired", False, actor="test")
    admin.rotate_key(rotated, grace=3 * DAY, actor="test")  # the old key expires in 2 days, by design
    clock.now = T0
    return ids


@pytest.fixture
def populated(engine: Engine, keys: dict[str, str]) -> dict[str, str]:
    at = T0 - DAY  # 2025-06-14
    for i in range(5):
        add_event(
            engine, "request.denied", at + i, source_ip="203.0.113.5", reason="ip_denied", path="/v1/orders"
        )
    for i in range(2):
        add_event(engine, "request.denied", at - DAY + i, source_ip="203.0.113.5", reason="route_not_found")
    for i in range(3):
        add_event(
            engine,
            "auth.failed",
            at + 100 + i,
            source_ip="203.0.113.5",
            reason="auth_invalid",
            data={"status": 401, "cause": "key_invalid", "key_id": keys["stale"]},
        )
    for i in range(4):
        add_event(
            engine,
            "auth.failed",
            at - 3 * DAY + i,
            source_ip="198.51.100.7",
            reason="auth_invalid",
            data={"status": 401, "cause": "key_unknown", "key_id": f"bk_nokey{i % 2}"},
        )
    add_event(
        engine,
        "auth.failed",
        at,
        source_ip="192.0.2.77",
        reason="auth_invalid",
        actor="consumer:billing/key:whatever",
        data={"cause": "key_ip_denied"},
    )
    add_event(
        engine,
        "auth.failed",
        at,
        source_ip="192.0.2.77",
        reason="pkcv_invalid",
        data={"cause": "pkcv_signature_invalid", "credential_id": "CR" + "0" * 32},
    )
    add_event(
        engine,
        "auth.failed",
        at,
        source_ip="192.0.2.77",
        reason="auth_invalid",
        data={"cause": "key_malformed"},
    )
    add_event(
        engine,
        "webhook.signature_invalid",
        at,
        source_ip="192.0.2.50",
        reason="webhook_signature_invalid",
        data={"scheme": "twilio", "cause": "signature_mismatch"},
    )
    add_event(
        engine,
        "rate_limit.exceeded",
        at,
        source_ip="192.0.2.9",
        reason="rate_limited",
        route="shop:GET /v1/orders",
        data={"limit": "10/second", "by": "ip"},
    )
    add_event(
        engine,
        "rate_limit.exceeded",
        at + 60,
        reason="rate_limited",
        route="shop:GET /v1/orders",
        data={"summary": True, "count": 9, "limit": "10/second", "by": "ip", "window": 60.0},
    )
    for n in range(1, 9):  # scanners: the top-10 cut leaves some of them out
        add_event(engine, "request.denied", at - 2 * DAY, source_ip=f"10.0.0.{n}", reason="route_not_found")
    # hostile values, everywhere a report shows text from the store
    add_event(
        engine,
        "request.denied",
        at,
        source_ip=HOSTILE[:60],
        reason="route_not_found",
        path="/" + HOSTILE,
        actor=HOSTILE,
    )
    add_event(
        engine,
        "alert.fired",
        at + 5,
        severity="warning",
        data={"rule": HOSTILE, "group": {"source_ip": HOSTILE_IMG}, "count": 12},
    )
    add_event(
        engine,
        "alert.fired",
        at - 4 * DAY,
        severity="critical",
        # the shape the alert engine writes: the count is in the evidence
        data={
            "rule": "credential-stuffing",
            "detector": "credential_stuffing",
            "group": "ip:198.51.100.7",
            "evidence": {"by": "ip", "distinct_identities": 4, "threshold": 3, "window": 300.0},
        },
    )
    # outside the period: counted nowhere
    add_event(engine, "request.denied", SINCE - 60, source_ip="203.0.113.99", reason="ip_denied")
    add_event(engine, "alert.fired", SINCE - 60, data={"rule": "old-rule", "count": 1})
    add_event(engine, "auth.failed", T0 + 1, source_ip="203.0.113.98", data={"key_id": keys["idle"]})
    # the inventory: one endpoint new in the period, one older but called, one not called since
    add_observed(engine, "GET", "/admin/users/{id}", 5, T0 - 2 * DAY, T0 - DAY)
    add_observed(engine, "GET", "/.env", 3, T0 - 20 * DAY, T0 - 3 * DAY)
    add_observed(engine, "GET", "/old/{id}", 7, T0 - 40 * DAY, T0 - 30 * DAY)
    add_observed(engine, "POST", "/x/" + HOSTILE + "|`tick`|", 1, T0 - 3 * DAY, T0 - 3 * DAY)
    add_event(
        engine,
        "inventory.undeclared_endpoint",
        T0 - 2 * DAY + 5,
        method="GET",
        path="/admin/users/{id}",
        data={"method": "GET", "template": "/admin/users/{id}", "count": 5},
    )
    add_event(engine, "inventory.undeclared_endpoint", T0 - 2 * DAY + 6, data={"more": 4, "not_recorded": 0})
    return keys


# -- reading the Markdown back ---------------------------------------------------------------------------


def md_sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:]
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def md_table(lines: list[str]) -> list[list[str]]:
    """The rows of the section's table (without the header and the rule), cells unescaped."""
    rows = [line for line in lines if line.startswith("| ")]
    cells = [[unescape_md(c.strip()) for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return cells[1:]


def unescape_md(cell: str) -> str:
    return re.sub(r"\\(.)", r"\1", cell).replace("&amp;", "&")


@pytest.fixture
def markdown(engine: Engine, populated: dict[str, str]) -> str:
    return build_report(engine, since=SINCE, now=T0, fmt="md")


def test_markdown_has_every_section_in_order(markdown: str) -> None:
    assert markdown.startswith("# Bastion security report\n")
    assert list(md_sections(markdown)) == HEADINGS


def test_summary_counts(markdown: str) -> None:
    summary = dict((r[0], r[1]) for r in md_table(md_sections(markdown)["Summary"]))
    assert summary == {
        "Requests denied (all causes)": "37",
        "Denied by a check (request.denied)": "16",
        "Authentication failures (auth.failed)": "10",
        "Webhook signatures refused": "1",
        "Rate-limit refusals": "10",  # the first refusal, then 9 more in the summary
        "Distinct denied sources": "14",
        "Alerts fired": "2",
        "Undeclared endpoints first seen": "5",  # one event, and four more in a summary
        "Keys unused for 30+ days": "2",
        "Keys expiring within 14 days": "2",
    }
    assert "2025-06-08T15:06:40Z" in "\n".join(md_sections(markdown)["Summary"])


def test_denials_per_day(markdown: str) -> None:
    rows = md_table(md_sections(markdown)["Denials per day"])
    assert [r[0] for r in rows] == [f"2025-06-{d:02d}" for d in range(8, 16)]
    assert sum(int(r[1]) for r in rows) == 37
    assert sum(int(r[2]) for r in rows) == 10
    by_day = {r[0]: (int(r[1]), int(r[2])) for r in rows}
    # 06-14: 5 denies, 3+3 auth failures, webhook, rate limit 1 + 9 summarised, hostile deny
    assert by_day["2025-06-14"] == (5 + 6 + 1 + 10 + 1, 6)
    assert by_day["2025-06-11"] == (4, 4)


def test_top_denied_sources(markdown: str) -> None:
    rows = md_table(md_sections(markdown)["Top denied sources"])
    assert len(rows) == 10
    assert rows[0][:3] == ["203.0.113.5", "10", "ip_denied (5), auth_invalid (3), route_not_found (2)"]
    assert rows[1][:3] == ["198.51.100.7", "4", "auth_invalid (4)"]
    assert rows[2][:3] == ["192.0.2.77", "3", "auth_invalid (2), pkcv_invalid (1)"]
    assert all(r[1] == "1" for r in rows[3:])
    assert "203.0.113.99" not in markdown  # before the period


def test_auth_failures_by_consumer(markdown: str) -> None:
    rows = md_table(md_sections(markdown)["Auth failures by consumer"])
    table = {r[0]: r[1:4] for r in rows}
    assert table == {
        "(unknown key)": ["4", "key_unknown (4)", "2"],
        "shop": ["3", "key_invalid (3)", "1"],  # the key id found in api_keys
        "billing": ["1", "key_ip_denied (1)", "0"],  # from the actor
        "(unknown credential)": ["1", "pkcv_signature_invalid (1)", "0"],
        "(no key or consumer named)": ["1", "key_malformed (1)", "0"],
    }
    assert [r[0] for r in rows][:2] == ["(unknown key)", "shop"]


def test_key_sections(markdown: str, populated: dict[str, str]) -> None:
    sections = md_sections(markdown)
    unused = md_table(sections["Keys unused for 30+ days"])
    assert [(r[0], r[1], r[2]) for r in unused] == [
        (populated["idle"], "billing", "idle"),  # never used first
        (populated["stale"], "shop", "stale"),
    ]
    assert unused[0][4] == "never"
    assert unused[1][4] == "2025-05-06T15:06:40Z"
    expiring = md_table(sections["Keys near expiry"])
    assert [(r[0], r[2], r[4]) for r in expiring] == [
        (populated["busy-expiring"], "busy-expiring", "5 days"),
        (populated["fresh"], "fresh", "10 days"),
    ]


def test_alerts_and_endpoints(markdown: str) -> None:
    sections = md_sections(markdown)
    alerts = md_table(sections["Alerts fired"])
    assert [(r[1], r[2], r[3]) for r in alerts] == [
        (HOSTILE, f"source_ip={HOSTILE_IMG}", "12"),
        ("credential-stuffing", "ip:198.51.100.7", "4"),
    ]
    endpoints = md_table(sections["Undeclared endpoints"])
    assert [(r[0], r[1], r[2], r[5]) for r in endpoints] == [
        ("GET", "/admin/users/{id}", "5", "yes"),  # new ones first
        ("POST", "/x/" + HOSTILE + "|`tick`|", "1", "yes"),  # first seen in the period, no event
        ("GET", "/.env", "3", ""),
    ]
    assert "5 first seen in the period" in "\n".join(sections["Undeclared endpoints"])


def test_markdown_escapes_hostile_text(markdown: str) -> None:
    assert re.search(r"(?<!\\)<", markdown) is None  # no "<" that could open raw HTML
    assert "\\<script\\>alert(1)\\</script\\>" in markdown
    for line in markdown.splitlines():  # every table row keeps its column count: no cell broke out
        if line.startswith("| ") and "tick" in line:
            assert len(re.split(r"(?<!\\)\|", line)) == 8
            assert "\\`tick\\`" in line


def test_inventory_report_list_replaces_the_table(engine: Engine, populated: dict[str, str]) -> None:
    """With the inventory report's ``undeclared`` list (a route declared /.env since), only what it lists."""
    undeclared = [
        {
            "method": "GET",
            "path": "/admin/users/{id}",
            "count": 5,
            "first_seen": T0 - 2 * DAY,
            "last_seen": T0 - DAY,
        }
    ]
    text = build_report(engine, since=SINCE, now=T0, fmt="md", undeclared=undeclared)
    rows = md_table(md_sections(text)["Undeclared endpoints"])
    assert [(r[0], r[1]) for r in rows] == [("GET", "/admin/users/{id}")]


def test_empty_store_says_none(engine: Engine) -> None:
    text = build_report(engine, since=SINCE, now=T0, fmt="md")
    sections = md_sections(text)
    assert list(sections) == HEADINGS
    for heading in HEADINGS[1:]:
        assert "none" in sections[heading], heading
    page = build_report(engine, since=SINCE, now=T0, fmt="html")
    assert page.count('<p class="none">none</p>') == len(HEADINGS) - 1
    assert "<svg" not in page


def test_bad_arguments(engine: Engine) -> None:
    with pytest.raises(ValueError, match="period"):
        build_report(engine, since=T0, now=T0, fmt="md")
    with pytest.raises(ValueError, match="format"):
        build_report(engine, since=SINCE, now=T0, fmt="pdf")  # type: ignore[arg-type]


# -- the HTML ------------------------------------------------------------------------------------------


@pytest.fixture
def page(engine: Engine, populated: dict[str, str]) -> str:
    return build_report(engine, since=SINCE, now=T0, fmt="html", title="Weekly <b>report</b>")


def test_html_is_self_contained_and_escaped(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert (
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
    ) in page
    lowered = page.lower()
    assert "<script" not in lowered
    assert "<img" not in lowered
    assert "<b>" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Weekly &lt;b&gt;report&lt;/b&gt;</title>" in page
    assert re.findall(r"\b(?:src|href)=\"(?!#)", page) == []  # links only within the page
    assert "@import" not in page and "url(" not in page
    for section_id, heading in zip(SECTION_IDS, HEADINGS, strict=True):
        assert f'<section id="{section_id}">\n<h2>{heading}</h2>' in page


def test_svg_charts_escape_and_count() -> None:
    chart = svg.bar_chart([(HOSTILE, 3), ("b", 0)], title=HOSTILE)
    assert "<script" not in chart
    assert chart.count('class="bar"') == 2
    columns = svg.column_chart(["06-14", "06-15"], [("a", [1, 0]), ("b", [2, 5])], title="t")
    assert columns.count('<rect class="bar') == 4
    with pytest.raises(ValueError):
        svg.column_chart(["x"], [("a", [1, 2])], title="t")


# -- in a real browser -----------------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.path.exists("/usr/bin/chromium"):
        found = "/usr/bin/chromium"
    if found is None:
        if os.environ.get("BASTION_SKIP_BROWSER") == "1":
            pytest.skip("BASTION_SKIP_BROWSER=1: the HTML report is not rendered in a browser")
        pytest.fail(
            "chromium is not installed, so the HTML report cannot be rendered: install it "
            "(apt-get install chromium) or set BASTION_SKIP_BROWSER=1 to skip the browser tests"
        )
    return found


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


class Dom(HTMLParser):
    """What the tests look for in the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.scripts = 0
        self.bars: dict[str, int] = {}  # svg chart class → bars
        self._svg: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id") or "")
        elif tag == "h2":
            self._in_h2 = True
            self.headings.append("")
        elif tag == "script":
            self.scripts += 1
        elif tag == "svg":
            self._svg = (a.get("class") or "").split()[-1]
            self.bars.setdefault(self._svg, 0)
        elif tag == "rect" and self._svg and "bar" in (a.get("class") or "").split():
            self.bars[self._svg] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False
        elif tag == "svg":
            self._svg = None

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings[-1] += data


def test_chromium_renders_the_sections_and_charts(page: str, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    dom_text = run_chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    dom = Dom()
    dom.feed(dom_text)
    assert dom.sections == SECTION_IDS
    assert dom.headings == HEADINGS
    assert dom.scripts == 0  # the hostile values stayed text
    assert HOSTILE not in dom_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom_text
    assert dom.bars == {"column-chart": 8 * 2, "bar-chart": 10}  # 8 UTC days, 2 series; the top 10 sources


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows of an 8-bit RGB(A), non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    # byte-wise addition mod 256 over a whole row at once (no carries between bytes): the "Up" filter,
    # which most rows use, costs one big-integer operation instead of a Python loop
    low, high = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        if kind == 2:
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            line = (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(stride, "big")
        elif kind != 0:
            out = bytearray(line)
            for i in range(stride):
                left = out[i - bpp] if i >= bpp else 0
                up = prev[i]
                if kind == 1:
                    out[i] = (out[i] + left) & 255
                elif kind == 3:
                    out[i] = (out[i] + (left + up) // 2) & 255
                else:  # 4: Paeth
                    corner = prev[i - bpp] if i >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    out[i] = (out[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
            line = bytes(out)
        rows.append(line)
        prev = line
    return width, height, rows


def colours(data: bytes, step: int = 4) -> dict[bytes, int]:
    """How many (sampled) pixels have each RGB colour."""
    width, height, rows = png_pixels(data)
    bpp = len(rows[0]) // width
    seen: dict[bytes, int] = {}
    for y in range(0, height, step):
        row = rows[y]
        for x in range(0, width, step):
            rgb = row[x * bpp : x * bpp + 3]
            seen[rgb] = seen.get(rgb, 0) + 1
    return seen


def test_chromium_paints_the_report(page: str, tmp_path: Path) -> None:
    """The page is not blank: the inline CSS (the header's background) and the SVG bars are painted,
    so the Content-Security-Policy blocks nothing the report needs."""
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    data = shot.read_bytes()
    assert len(data) > 20_000
    seen = colours(data)
    header = bytes.fromhex("1f2a38")
    bar_red, bar_blue = bytes.fromhex(svg.PALETTE[0][1:]), bytes.fromhex(svg.PALETTE[1][1:])
    assert seen.get(header, 0) > 1000, "the header's background (inline CSS) is not painted"
    assert seen.get(bar_red, 0) > 50, "no bar of the charts is painted"
    assert seen.get(bar_blue, 0) > 5, "no auth-failure column is painted"
    assert len(seen) > 20  # text, tables, charts: not a flat page


# -- the command ------------------------------------------------------------------------------------------


def test_the_report_command(tmp_path: Path) -> None:
    """``bastion report``: Markdown to stdout, HTML to a file, a bad --since refused."""
    import time as _time

    from click.testing import CliRunner

    from bastion.adapters.cli import main

    from ..support import config_text

    db = tmp_path / "bastion.db"
    cfg = tmp_path / "bastion.yaml"
    cfg.write_text(config_text(9, db), encoding="utf-8")
    eng = open_database(f"sqlite:///{db}")
    now = _time.time()
    for i in range(3):
        add_event(eng, "request.denied", now - 60 - i, source_ip="203.0.113.7", reason="ip_denied")
    eng.dispose()
    env = {"BASTION_ADMIN_TOKEN": "t" * 32, "BASTION_CONFIG": None}
    run = CliRunner().invoke(main, ["report", "-c", str(cfg), "--since", "1d", "--format", "md"], env=env)
    assert run.exit_code == 0, run.output
    assert "## Top denied sources" in run.stdout and "203.0.113.7" in run.stdout
    out = tmp_path / "r.html"
    run = CliRunner().invoke(main, ["report", "-c", str(cfg), "-o", str(out)], env=env)
    assert run.exit_code == 0, run.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    run = CliRunner().invoke(main, ["report", "-c", str(cfg), "--since", "yesterday"], env=env)
    assert run.exit_code == 2 and "--since" in run.stderr
