"""Injection and XSS detection for client data: SQL injection, XSS, OS commands, path traversal.

This package is a pure library: no I/O, no logging, no threads, no global state. It has two parts:

* :func:`request_values` turns a request into the ``(location, value)`` pairs that carry client
  data (path segments, query and form fields, JSON strings, cookies, headers, and the names of all
  of those);
* :class:`Inspector` compiles the rules of the four families once and :meth:`Inspector.scan`
  answers, for one value, ``None`` or the first :class:`Finding`.

Theory of operation. A value is first screened: one C-level regex match decides whether it is
made only of characters that no rule can use (letters, digits, ``.,@:+-_``), which is what most
API values are (ids, numbers, e-mail addresses, slugs, tokens), and a few more C-level checks
(characters, words, shapes) let most other values without any rule material go too. Anything
else is decoded into a *base* (extra rounds of percent decoding, NFKC) and then into one view
per family (see ``_normalize``; a view that changes nothing is the very same string).

Rules do not all run. Each names *anchors*, literals that any match contains (``union``, ``<``,
``$(``, a command name), and optionally *required* anchors (``(`` after a function name); the
:class:`~._gate.Gate` reads each distinct view once (its words and its punctuation, with
``bytes.translate``) and picks the few rules whose anchors occur, usually none. Those run one by
one, in order, each written so the regex engine can skip ahead to its first character (a literal
or a character class, not ``(?:^|…)``; long word lists are merged into tries, see
``_rules.trie``). Before, every view was matched against one alternation of every rule, tried
at every position: 50-300 µs for a sentence; now a few µs to a few tens. The families'
approaches are described in their modules: :mod:`.sqli`, :mod:`.xss`, :mod:`.rce`, :mod:`.lfi`.

Work is bounded: a value longer than ``max_length`` characters (4 KiB by default; every value of
the CRS corpus fits) is inspected on its first ``max_length`` characters only, and every pattern
is written so that its cost is linear in the length of the value (inner repetitions are bounded,
runs are matched from their first character). On adversarial 4 KiB inputs the worst case
measured is about 3 ms at paranoia 1 and 8 ms at paranoia 2-4; the cost grows linearly with
``max_length``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import lfi, rce, sqli, xss
from ._gate import Gate
from ._normalize import base_view, html_view, path_view, shell_view, sql_view
from ._rules import Rule, View
from ._values import SKIPPED_HEADERS, request_values

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "FAMILIES",
    "SKIPPED_HEADERS",
    "Finding",
    "Inspector",
    "Rule",
    "all_rules",
    "request_values",
]

FAMILIES: tuple[str, ...] = ("sqli", "xss", "rce", "lfi")
DEFAULT_MAX_LENGTH = 4 * 1024
MAX_PARANOIA = 4

_RULES: dict[str, tuple[Rule, ...]] = {
    "sqli": sqli.RULES,
    "xss": xss.RULES,
    "rce": rce.RULES,
    "lfi": lfi.RULES,
}

# Values made only of these characters cannot express any rule: no quotes, brackets, operators,
# separators, slashes, spaces or percent signs. A leading dot is excluded (".env"), as are long
# digit runs (integer-overflow probes).
_PLAIN = re.compile(r"[\w,@+.:-]*")
# Plain values (lower-cased) that still deserve a full scan: DOM globals, SQL Server procedures, schema names,
# integer-overflow probes, sensitive file names.
_PLAIN_SUSPECT = re.compile(
    r"^\.|\.\.|::|(?:window|document|location)\.|xp_|sp_|openrowset|information_schema|\d{10}|wp-config|"
    r"\.php|\.env\b|\.e\.|\.sql\.|"
    # system catalogues (msdb, sysobjects, pg_catalog…: a literal each catalogue name contains)
    r"sys|msdb|tempdb|northwind|sqlite_|pg_|all_|user_|dba_|schema_name|"
    # file names that no upload may carry (config.yml, web.config, /proc's kcore…; see lfi.RESTRICTED_NAMES)
    r"\.(?:ya?ml|config|xml|ini)(?:$|[._~-])|^(?:mtrr|acpi|kcore|kmsg|kallsyms|cpuinfo|meminfo|iomem|ioports|slabinfo|"
    r"vmallocinfo|zoneinfo|buddyinfo|sysrq-trigger)$"
)  # matched on the lower-cased value: without re.I the engine compares literals much faster

# The screen. Every rule needs at least one of: a character from _SCREEN_CHARS, a word from
# _SCREEN_WORDS, or a match of _SCREEN_SHAPES. Those three checks are C-level (one charset scan,
# one findall, one set intersection, one small regex), so a value that passes all three returns
# in a few microseconds without building any view. Characters that normalisation acts on (``%``,
# ``&``-entities, ``\\``, non-ASCII, control characters) are in the screen too, so it never hides
# an encoded payload. A test runs the corpus with and without the screen and requires the same
# findings.
_SCREEN_CHARS = re.compile(r"[\x80-\U0010ffff'\"`<>$|{}\\#*~\[%!\x00-\x08\x0b\x0c\x0e-\x1f\t\r\n]")
_SCREEN_WORDS: frozenset[str] = frozenset(
    {*sqli.SCREEN_WORDS, *xss.SCREEN_WORDS, *rce.SCREEN_WORDS, *lfi.SCREEN_WORDS}
)
_WORD = re.compile(r"[a-z_][a-z0-9_]*")
# Every alternative starts with a literal character, so the regex engine only tries them where
# that character occurs (the context before it is checked with a lookbehind).
_SCREEN_SHAPES = re.compile(
    "|".join(
        (
            r"--|-moz-|-enc|-(?<=\s-)-?[a-z0-9]|/\*|/\.|/\?|/@|\?/|\?\?|==|=\s?\(|::|:[/\\](?<=\b[a-z]:[/\\])|@@|@import",
            r"0x|\.\.|\.e[(.]|\.ini|\.log\b|_log\b|\+ad-|&#|&[a-z]{2,8};|xp_|sp_|pg_|json|data\s?:|script\s?:",
            r"\((?<=[a-z_?&.]\()|\((?<=[a-z_?&.]\s\()|\((?<=[a-z]\d\()|\)\s?like|\)\s*as\s|like\s+null|"
            # a word, up to three other characters, then "(": the paranoia-2 function-call shape
            r"\((?<=[a-z]\W\()|\((?<=[a-z]\W\W\()|\((?<=[a-z]\W\W\W\()|"
            r"is\s+(?:not\s+)?null|on[a-z]{3,}\s?=|(?:claude|agents|gemini|instructions|cursor|windsurf|cline|roo)"
            r"(?:\.local)?\.md\b",
            r"\.(?:txt|log|sh|php|py|pl|rb|js|conf|cfg|config|ini|gz|xz|zip|tar|bak|sql|yml|yaml|json|xml|exe|bat|ps1|c|db)\b",
            r";\s?[a-z]+(?:\s+(?:-|/|\$|https?:|\d)|\s*$|\s*[;|&])",
            rce.SCREEN_SHAPE,
        )
    )
)
_SCREEN_DIGITS = re.compile(r"\d(?:\d{9}|(?:or|and|xor)\d|\s*as\s)")
_SCREEN_START = re.compile(
    rf"\s*(?:\.|/|(?:{rce.COMMANDS})\s+\S|[a-z]+\s+\d{{1,3}}\.\d{{1,3}}\.\d{{1,3}}\.\d)"
)


def _screened_out(lower: str) -> bool:
    """True when no rule can match ``lower``: the value is benign without building any view."""
    # Cheapest and most often decisive first: a character, then a word, then the shapes.
    if _SCREEN_CHARS.search(lower) is not None or not _SCREEN_WORDS.isdisjoint(_WORD.findall(lower)):
        return False
    return (
        _SCREEN_SHAPES.search(lower) is None
        and _SCREEN_DIGITS.search(lower) is None
        and _SCREEN_START.match(lower) is None
    )


_VIEW_ORDER: tuple[View, ...] = ("raw", "lower", "sql", "html", "shell", "path")
_DERIVED: dict[View, Callable[[str], str]] = {
    "sql": sql_view,
    "html": html_view,
    "shell": shell_view,
    "path": path_view,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """What matched: the family, the stable rule id, the rule's paranoia level, and an excerpt.

    ``excerpt`` is at most 80 characters of the normalised view around the match. It is attacker
    data: the gateway may record it in the event log but never reflects it to a client.
    """

    family: str
    rule: str
    paranoia: int
    excerpt: str


@dataclass(frozen=True, slots=True)
class _Pass:
    """The rules that read one view: bits ``offset`` to ``offset + len(rules)`` of the gate's mask."""

    view: View
    rules: tuple[tuple[Rule, re.Pattern[str]], ...]
    offset: int
    bits: int  # the mask of this pass's rules


def all_rules() -> dict[str, tuple[Rule, ...]]:
    """Every rule of every family, at every paranoia level (for documentation and tests)."""
    return dict(_RULES)


class Inspector:
    """Compiled detection rules for one paranoia level; :meth:`scan` is safe to call concurrently.

    ``paranoia`` 1 (the default) holds the rules meant to run in front of any API; 2 adds
    fragment rules that catch probes at a small false-positive cost; 3 and 4 currently add
    nothing beyond 2 and are accepted so configurations can name them. ``families`` restricts
    the scan (for example to ``("sqli", "xss")``).
    """

    __slots__ = ("_gate", "_max_length", "_passes", "_screen", "families", "paranoia")

    def __init__(
        self,
        paranoia: int = 1,
        *,
        families: Iterable[str] = FAMILIES,
        max_length: int = DEFAULT_MAX_LENGTH,
        screen: bool = True,
    ) -> None:
        if not isinstance(paranoia, int) or not 1 <= paranoia <= MAX_PARANOIA:
            raise ValueError(f"paranoia must be an integer from 1 to {MAX_PARANOIA}, not {paranoia!r}")
        chosen = tuple(families)
        unknown = sorted(set(chosen) - set(FAMILIES))
        if unknown or not chosen:
            raise ValueError(f"unknown or empty families: {unknown or chosen!r}; known: {FAMILIES}")
        if max_length < 1:
            raise ValueError("max_length must be positive")
        self.paranoia = paranoia
        self.families = tuple(f for f in FAMILIES if f in chosen)
        self._max_length = max_length
        self._screen = screen  # off only in tests that prove the screen hides nothing
        by_view: dict[View, list[Rule]] = {}
        for family in self.families:
            for rule in _RULES[family]:
                if rule.paranoia <= paranoia:
                    by_view.setdefault(rule.view, []).append(rule)
        passes = []
        chosen_rules: list[Rule] = []
        for view in _VIEW_ORDER:
            rules = by_view.get(view)
            if not rules:
                continue
            offset = len(chosen_rules)
            chosen_rules.extend(rules)
            bits = ((1 << len(rules)) - 1) << offset
            compiled = tuple((rule, re.compile(rule.pattern, re.S)) for rule in rules)
            passes.append(_Pass(view, compiled, offset, bits))
        # One gate over the rules of every view: views of a value are often the same text, and
        # then one reading of that text serves all of them.
        self._gate = Gate([(rule.anchors, rule.requires) for rule in chosen_rules]) if screen else None
        self._passes = tuple(passes)

    def scan(self, value: str) -> Finding | None:
        """The first finding in ``value``, or ``None``. Never raises for any ``str``."""
        if len(value) > self._max_length:
            value = value[: self._max_length]
        lowered = value.lower()
        if _PLAIN.fullmatch(value) is not None and _PLAIN_SUSPECT.search(lowered) is None:
            return None
        if self._screen and _screened_out(lowered):
            return None
        base = base_view(value)
        lower = base.lower()
        views: dict[str, str] = {"raw": base, "lower": lower}
        masks: dict[str, int] = {}  # text -> gate mask, for views that come out identical
        gate = self._gate
        for step in self._passes:
            text = views.get(step.view)
            if text is None:
                source = base if step.view == "html" else lower
                text = views[step.view] = _DERIVED[step.view](source)
            if gate is None:
                mask = step.bits
            else:
                mask = masks.get(text, -1)
                if mask < 0:
                    mask = masks[text] = gate.select(text, gate.features(text))
                mask &= step.bits
            mask >>= step.offset
            while mask:
                low = mask & -mask
                mask ^= low
                rule, regex = step.rules[low.bit_length() - 1]
                match = regex.search(text)
                if match is not None:
                    start = max(0, match.start() - 20)
                    return Finding(rule.id.split(".")[0], rule.id, rule.paranoia, text[start : start + 80])
        return None
