"""Detection and false-positive rates of ``bastion.checks.inspection`` on the OWASP CRS regression corpus.

    python bench/inspection.py                      # full corpus, tables on stdout
    python bench/inspection.py --write-docs         # also rewrite the metrics block of docs/inspection.md
    python bench/inspection.py --subset 300 --assert   # quick stratified subset; exit 1 below the bar
    python bench/inspection.py --split tune --misses sqli   # list what a family misses

Every case is turned into values with ``request_values`` (exactly what the gateway inspects) and
scanned by an ``Inspector`` at the case's own paranoia level (the level at which CRS expects its
rule to fire); a second column uses the default paranoia 1. A case is *detected* when any value
is flagged by any family; *same family* counts only findings of the case's family.

The corpus is split deterministically in two halves by ``sha256(id)``: rules were tuned while
looking at the ``tune`` half only; the ``holdout`` half is reported separately to show how much of
the result is overfitting (except for paranoia-1 ``rce`` and ``lfi``, whose misses in both halves
were read in round 3; see docs/inspection.md).

False positives are reported twice: over every ``benign_hint`` case, and over the genuinely benign
ones, which leave out the payloads listed, with a reason each, in ``PAYLOADS_LABELLED_BENIGN``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bastion.checks.inspection import FAMILIES, Finding, Inspector, request_values

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "crs-attacks.jsonl"
DOCS = ROOT / "docs" / "inspection.md"
START, END = "<!-- metrics:start -->", "<!-- metrics:end -->"

# The bar: paranoia-1 detection per family, overall detection, false positives on benign cases.
MIN_PL1_RATE = 0.95
MIN_OVERALL_RATE = 0.85
MAX_BENIGN_FP_RATE = 0.02

# ``benign_hint`` cases that carry a real attack payload. CRS marks a case "negative" when one
# particular rule must stay silent (another rule or another paranoia level is meant to catch it),
# and the corpus's heuristic turns that into ``benign_hint``. These are reported apart, with the
# reason, so the "genuinely benign" false-positive rate excludes them openly; the raw rate over
# every benign_hint case is reported next to it and is what ``--assert`` checks. Judgement calls
# say so. A test checks that every id here is a benign_hint case of the corpus.
PAYLOADS_LABELLED_BENIGN: dict[str, str] = {
    "932207-3": "Referer carries ';/bin/ca? /et*/passwd', a globbed read of /etc/passwd "
    "(CRS: 'obvious payload', negative only for 932207)",
    "932230-18": "SSI injection '<!--#exec cmd=\"/bin/cat /etc/shadow\"-->' after HTML-entity text",
    "932230-19": "SSI injection '<!--#exec cmd=\"/bin/cat /etc/shadow\"-->' before HTML-entity text",
    "932230-20": "newline, then 'cat /etc/passwd;' (a command after a line break)",
    "932230-21": "'cat /etc/passwd;' after a newline at the end of the value",
    "932230-23": "Shellshock header '() { :;}; /bin/bash -c \"ftp …\"'",
    "932236-6": "';vi … +silent !whoami' runs whoami from vi (negative only at PL2 for 932236)",
    "932236-9": "';vi -c:!pwd' runs pwd from vi (negative only at PL2 for 932236)",
    "932250-1": "judgement: a whole command line 'tar -xzf /var/www/exfiltrate.tar.gz /etc'; the test "
    "checks that 932250 skips the word tar, not that the input is harmless",
    "942160-12": "judgement: '/BENChmARk(2999/**/999,Md5(' is a mixed-case, comment-evaded time-based "
    "blind SQLi probe; the test checks only that 942160 needs complete benchmark() syntax",
}


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    family: str
    paranoia: int
    attack: bool
    benign: bool
    values: tuple[tuple[str, str], ...]

    @property
    def genuine(self) -> bool:
        """A benign_hint case that does not carry a payload (see PAYLOADS_LABELLED_BENIGN)."""
        return self.benign and self.id not in PAYLOADS_LABELLED_BENIGN

    @property
    def half(self) -> str:
        return "tune" if hashlib.sha256(self.id.encode()).digest()[0] % 2 == 0 else "holdout"


def load(path: Path) -> list[Case]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        headers = list(row["headers"].items())
        content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
        values = tuple(
            request_values(row["method"], row["uri"], headers, row["body"].encode("utf-8"), content_type)
        )
        cases.append(
            Case(
                id=row["id"],
                family=row["rule_family"],
                paranoia=int(row["paranoia_level"]),
                attack=bool(row["expect_detect"]),
                benign=bool(row["benign_hint"]),
                values=values,
            )
        )
    return cases


def stratified(cases: Sequence[Case], n: int) -> list[Case]:
    """A deterministic subset of about ``n`` cases, proportional per (family, paranoia, attack)."""
    if n >= len(cases):
        return list(cases)
    strata: dict[tuple[str, int, bool], list[Case]] = defaultdict(list)
    for case in cases:
        strata[(case.family, case.paranoia, case.attack)].append(case)
    chosen: list[Case] = []
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda c: hashlib.sha256(c.id.encode()).hexdigest())
        take = max(1, round(len(group) * n / len(cases)))
        chosen.extend(group[:take])
    return chosen


class Scanner:
    """One compiled inspector per paranoia level, and the verdict for a case."""

    def __init__(self) -> None:
        self.inspectors = {level: Inspector(paranoia=level) for level in range(1, 5)}

    def findings(self, case: Case, level: int) -> list[Finding]:
        inspector = self.inspectors[level]
        found = []
        for _, value in case.values:
            finding = inspector.scan(value)
            if finding is not None:
                found.append(finding)
        return found


@dataclass
class Tally:
    cases: int = 0
    any_family: int = 0
    same_family: int = 0
    at_pl1: int = 0

    def add(self, findings: list[Finding], family: str, pl1: list[Finding]) -> None:
        self.cases += 1
        self.any_family += bool(findings)
        self.same_family += any(f.family == family for f in findings)
        self.at_pl1 += bool(pl1)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


@dataclass
class Report:
    detection: dict[tuple[str, int], Tally]
    benign: dict[str, Tally]
    genuine: dict[str, Tally]
    negatives: dict[str, Tally]
    missed: list[tuple[Case, int]]
    flagged_benign: list[tuple[Case, list[Finding]]]

    def family_rate(self, family: str, level: int | None = None) -> tuple[int, int]:
        rows = [t for (f, p), t in self.detection.items() if f == family and (level is None or p == level)]
        return sum(t.any_family for t in rows), sum(t.cases for t in rows)

    def overall(self) -> tuple[int, int]:
        return sum(t.any_family for t in self.detection.values()), sum(
            t.cases for t in self.detection.values()
        )

    def benign_fp(self) -> tuple[int, int]:
        return sum(t.any_family for t in self.benign.values()), sum(t.cases for t in self.benign.values())

    def genuine_fp(self) -> tuple[int, int]:
        """False positives on the benign_hint cases that carry no payload."""
        return sum(t.any_family for t in self.genuine.values()), sum(t.cases for t in self.genuine.values())


def evaluate(cases: Iterable[Case], scanner: Scanner) -> Report:
    detection: dict[tuple[str, int], Tally] = defaultdict(Tally)
    benign: dict[str, Tally] = defaultdict(Tally)
    genuine: dict[str, Tally] = defaultdict(Tally)
    negatives: dict[str, Tally] = defaultdict(Tally)
    missed: list[tuple[Case, int]] = []
    flagged: list[tuple[Case, list[Finding]]] = []
    for case in cases:
        found = scanner.findings(case, case.paranoia)
        pl1 = found if case.paranoia == 1 else scanner.findings(case, 1)
        if case.attack:
            detection[(case.family, case.paranoia)].add(found, case.family, pl1)
            if not found:
                missed.append((case, case.paranoia))
        else:
            negatives[case.family].add(found, case.family, pl1)
            if case.benign:
                benign[case.family].add(found, case.family, pl1)
                if case.genuine:
                    genuine[case.family].add(found, case.family, pl1)
                if found:
                    flagged.append((case, found))
    return Report(detection, benign, genuine, negatives, missed, flagged)


def detection_table(report: Report) -> str:
    lines = [
        "| family | paranoia | attack cases | detected | rate | same family | detected at paranoia 1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for family in FAMILIES:
        for (fam, level), t in sorted(report.detection.items()):
            if fam == family:
                lines.append(
                    f"| `{family}` | {level} | {t.cases} | {t.any_family} | {_pct(t.any_family, t.cases)} "
                    f"| {_pct(t.same_family, t.cases)} | {_pct(t.at_pl1, t.cases)} |"
                )
        hit, total = report.family_rate(family)
        lines.append(f"| **`{family}`** | all | {total} | {hit} | **{_pct(hit, total)}** | | |")
    hit, total = report.overall()
    lines.append(f"| **all** | all | {total} | {hit} | **{_pct(hit, total)}** | | |")
    return "\n".join(lines)


def fp_table(report: Report) -> str:
    lines = [
        "| family | benign-hint cases | flagged | FP rate | flagged at paranoia 1 "
        "| genuinely benign | flagged | FP rate | all expect_detect=false | flagged | rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals_b, totals_g, totals_n = Tally(), Tally(), Tally()
    for family in FAMILIES:
        tb, tg = report.benign.get(family, Tally()), report.genuine.get(family, Tally())
        tn = report.negatives.get(family, Tally())
        lines.append(
            f"| `{family}` | {tb.cases} | {tb.any_family} | {_pct(tb.any_family, tb.cases)} "
            f"| {_pct(tb.at_pl1, tb.cases)} | {tg.cases} | {tg.any_family} | {_pct(tg.any_family, tg.cases)} "
            f"| {tn.cases} | {tn.any_family} | {_pct(tn.any_family, tn.cases)} |"
        )
        for total, part in ((totals_b, tb), (totals_g, tg), (totals_n, tn)):
            total.cases += part.cases
            total.any_family += part.any_family
            total.at_pl1 += part.at_pl1
    b, g, n = totals_b, totals_g, totals_n
    lines.append(
        f"| **all** | {b.cases} | {b.any_family} | **{_pct(b.any_family, b.cases)}** "
        f"| {_pct(b.at_pl1, b.cases)} | {g.cases} | {g.any_family} | **{_pct(g.any_family, g.cases)}** "
        f"| {n.cases} | {n.any_family} | {_pct(n.any_family, n.cases)} |"
    )
    return "\n".join(lines)


def summary_row(name: str, report: Report) -> str:
    cells = []
    for family in FAMILIES:
        hit, total = report.family_rate(family, 1)
        cells.append(_pct(hit, total))
    hit, total = report.overall()
    fp, benign = report.benign_fp()
    gfp, genuine = report.genuine_fp()
    return (
        f"| {name} | " + " | ".join(cells) + f" | {_pct(hit, total)} | {_pct(fp, benign)} ({fp}/{benign}) "
        f"| {_pct(gfp, genuine)} ({gfp}/{genuine}) |"
    )


def summary_table(rows: Sequence[tuple[str, Report]]) -> str:
    head = (
        "| cases | "
        + " | ".join(f"`{f}` PL1" for f in FAMILIES)
        + " | all attacks | benign-hint FP | genuinely benign FP |"
    )
    sep = "|---|" + "---:|" * (len(FAMILIES) + 3)
    return "\n".join([head, sep, *(summary_row(name, report) for name, report in rows)])


# --- timing ------------------------------------------------------------------------------------

BENIGN_SAMPLES = (
    "42",
    "alice@example.com",
    "2026-03-14",
    "report-2026.pdf",
    "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "O'Reilly",
    "select your plan",
    "+1 (415) 555-0100",
    "https://example.com/search?q=shoes&page=2",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Please select the items from the list and update your order",
)
ATTACK_SAMPLES = (
    "' OR 1=1--",
    "1 UNION/**/SELECT username,password FROM users",
    "<svg/onload=alert(1)>",
    "javascript:alert(document.cookie)",
    ";cat /etc/passwd",
    "$(id)",
    "../../../../etc/passwd",
    "..%2f..%2f..%2fwindows%2fwin.ini",
)


def _per_value_us(inspector: Inspector, values: Sequence[str], rounds: int = 7, loops: int = 2000) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(loops):
            for value in values:
                inspector.scan(value)
        samples.append((time.perf_counter() - start) / (loops * len(values)))
    # The minimum, as timeit recommends: slower runs measure other processes on the machine.
    return min(samples) * 1e6


def timing_table(loops: int = 2000) -> str:
    inspector = Inspector()
    rows = [
        ("short plain value (`42`, `alice@example.com`, a UUID, a date, a file name)",
         BENIGN_SAMPLES[:5]),
        ("benign values with punctuation or spaces (≤ 60 chars)",
         tuple(v for v in BENIGN_SAMPLES[5:] if len(v) <= 60 and not v.startswith("Mozilla"))),
        ("browser User-Agent strings (70-110 chars)",
         tuple(v for v in BENIGN_SAMPLES if v.startswith("Mozilla"))),
        ("attack strings (first match returns)", ATTACK_SAMPLES),
    ]  # fmt: skip
    lines = ["| values | µs per value (best of 7 runs) |", "|---|---:|"]
    mixed: list[str] = []
    for name, values in rows:
        lines.append(f"| {name} | {_per_value_us(inspector, values, loops=loops):.2f} |")
        mixed.extend(values)
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------


def render(full: Report, halves: dict[str, Report], timing: str | None, *, corpus_size: int) -> str:
    parts = [
        f"Measured on {corpus_size} cases of `crs-attacks.jsonl` with `python bench/inspection.py`.",
        "",
        "**Summary.** Paranoia-1 detection per family, detection of all attack cases (each at its own "
        "paranoia level) and false positives on the `benign_hint` cases (all of them, and the genuinely "
        "benign ones: without the payloads listed below), for the whole corpus and for each half:",
        "",
        summary_table([("all", full), *((f"{name} half", r) for name, r in halves.items())]),
        "",
        "**Detection** (attack cases, scanned at the case's paranoia level; *same family* counts only "
        "findings of the case's own family):",
        "",
        detection_table(full),
        "",
        "**False positives** (`benign_hint` cases are inputs the CRS authors call legitimate; *genuinely "
        "benign* leaves out the benign-hint cases that carry a real payload, listed below with the reason; "
        "the full `expect_detect=false` set also holds real attacks that a *different* CRS rule must catch):",
        "",
        fp_table(full),
    ]
    flagged = sorted(full.flagged_benign, key=lambda item: item[0].id)
    for title, genuine in (
        ("Genuinely benign cases that are flagged (rule and normalised excerpt):", True),
        ("Benign-hint cases that carry a payload (`PAYLOADS_LABELLED_BENIGN` in the script):", False),
    ):
        rows = [(case, found) for case, found in flagged if case.genuine == genuine]
        if not rows:
            continue
        parts += ["", title, ""]
        for case, found in rows:
            first = found[0]
            excerpt = " ".join(first.excerpt.replace("`", "'").replace("|", "/").split())[:70]
            reason = "" if genuine else f" — {PAYLOADS_LABELLED_BENIGN[case.id]}"
            parts.append(f"- {case.id} (paranoia {case.paranoia}): `{first.rule}` on `{excerpt}`{reason}")
    labelled = [cid for cid in PAYLOADS_LABELLED_BENIGN if cid not in {c.id for c, _ in flagged}]
    if labelled and corpus_size > 2000:
        parts += ["", "Labelled as payloads but not flagged: " + ", ".join(sorted(labelled))]
    if timing:
        parts += ["", "**Timing** (`Inspector()` at paranoia 1, one CPython 3.11 thread):", "", timing]
    return "\n".join(parts)


def write_docs(block: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{DOCS} has no {START} … {END} block")
    DOCS.write_text(f"{head}{START}\n{block}\n{END}{tail}", encoding="utf-8")


def check(
    report: Report,
    *,
    min_pl1: float = MIN_PL1_RATE,
    min_overall: float = MIN_OVERALL_RATE,
    max_benign_fp: float = MAX_BENIGN_FP_RATE,
) -> list[str]:
    """What falls short of the bar (the issue's bar by default; CI passes regression floors)."""
    failures = []
    for family in FAMILIES:
        hit, total = report.family_rate(family, 1)
        if total and hit / total < min_pl1:
            failures.append(f"{family}: paranoia-1 detection {_pct(hit, total)} < {min_pl1:.0%}")
    hit, total = report.overall()
    if total and hit / total < min_overall:
        failures.append(f"overall detection {_pct(hit, total)} < {min_overall:.0%}")
    fp, benign = report.benign_fp()
    if benign and fp / benign > max_benign_fp:
        failures.append(f"benign false positives {_pct(fp, benign)} > {max_benign_fp:.0%}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument(
        "--subset", type=int, metavar="N", help="a deterministic stratified subset of ~N cases"
    )
    parser.add_argument("--split", choices=("all", "tune", "holdout"), default="all")
    parser.add_argument("--assert", dest="enforce", action="store_true", help="exit 1 below the bar")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite the metrics block of {DOCS.name}")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--misses", metavar="FAMILY", help="list missed attacks and flagged benign cases")
    args = parser.parse_args(argv)

    cases = load(args.corpus)
    if args.split != "all":
        cases = [c for c in cases if c.half == args.split]
    if args.subset:
        cases = stratified(cases, args.subset)
    scanner = Scanner()
    full = evaluate(cases, scanner)
    halves = {} if args.split != "all" else {
        name: evaluate([c for c in cases if c.half == name], scanner) for name in ("tune", "holdout")
    }  # fmt: skip
    timing = None if args.no_timing else timing_table(loops=200 if args.subset else 2000)
    block = render(full, halves, timing, corpus_size=len(cases))
    print(block)

    if args.misses:
        print(f"\n## missed `{args.misses}` attacks")
        for case, level in full.missed:
            if case.family == args.misses:
                shown = [(loc, v[:160]) for loc, v in case.values if not loc.startswith("path")]
                print(f"- {case.id} (PL{level}): {shown}")
        print(f"\n## flagged benign `{args.misses}` cases")
        for case, found in full.flagged_benign:
            if case.family == args.misses:
                print(f"- {case.id}: {[(f.rule, f.excerpt) for f in found]}")
    if args.write_docs:
        write_docs(block)
    if args.enforce:
        failures = check(full)
        for failure in failures:
            print(f"FAIL: {failure}", file=sys.stderr)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
