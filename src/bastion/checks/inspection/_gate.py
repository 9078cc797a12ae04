"""The gate: which rules of one view can match a text, decided from the rules' anchors.

Running every rule on every value is what made inspection slow: the regex engine tries each
pattern at each position. Each rule instead names *anchors* (see :class:`~._rules.Rule`), literals
that every match contains, and the gate reads the text once to find which anchors occur:

* a *word* anchor (only ``a-z`` and ``_``) must occur as a whole word. The words of a text are
  its runs of ASCII letters, found with one ``bytes.translate`` and one ``split`` (C loops).
  They split at least wherever the regex ``\\b`` does, and also at ``_`` and digits, so a keyword
  that a pattern writes as ``\\bselect\\b`` is always one of them; an anchor with ``_``
  (``xp_cmdshell``, ``json_``) is looked up by its longest run of letters (``cmdshell``, ``json``);
* any other anchor (``<``, ``;``, ``$(``, ``/*``, ``etc/``) must occur as a substring; these are
  filed under one of their punctuation characters and tested with ``in`` only when that
  character occurs.

The answer is a bit mask over the view's rules, so choosing costs a few set operations however
many rules there are. Soundness (no anchor that a match could avoid) is a test over the corpus:
the same findings with and without the gate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["Features", "Gate"]

# The words of a text, and the characters that anchors are filed under (ints for ASCII text).
Features = tuple[set[bytes], set[str] | set[int]]

_WORD_ANCHOR = re.compile(r"[a-z_]+")
# ASCII letters stay, every other byte becomes a space.
_WORD_BYTES = bytes(c if chr(c).isascii() and chr(c).isalpha() else 0x20 for c in range(256))
_LETTERS = re.compile(r"[a-z]+")


def _index_char(anchor: str) -> str:
    """The character a substring anchor is filed under: its first punctuation character, which
    is rarer in ordinary text than letters, digits and spaces (any character of it would do)."""
    for char in anchor:
        if not (char.isalnum() or char == " "):
            return char
    return anchor[0]


# Per character: anchored bits, required bits, a regex for the longer anchors, those anchors.
_CharEntry = tuple[int, int, "re.Pattern[str] | None", tuple[tuple[str, int, int], ...]]


class Gate:
    """Built once per Inspector from each rule's ``(anchors, requires)``; pure and thread-safe.

    Every anchor is looked up once per text and contributes to two masks: the rules it anchors
    and the rules it satisfies a requirement of. A rule is chosen when both hold.
    """

    __slots__ = ("_always", "_by_char", "_drop", "_firsts", "_word_keys", "_words")

    def __init__(self, rules: Sequence[tuple[tuple[str, ...], tuple[str, ...]]]) -> None:
        # anchor -> [bits of the rules it anchors, bits of the rules it is required by]
        table: dict[str, list[int]] = {}
        always = [0, 0]  # rules without anchors, rules without requirements
        for index, lists in enumerate(rules):
            bit = 1 << index
            for side, anchors in enumerate(lists):
                if not anchors:
                    always[side] |= bit
                for anchor in anchors:
                    table.setdefault(anchor, [0, 0])[side] |= bit
        words: dict[bytes, tuple[int, int]] = {}
        single: dict[str, tuple[int, int]] = {}
        multi: dict[str, list[tuple[str, int, int]]] = {}
        for anchor, (anchored, required) in table.items():
            if _WORD_ANCHOR.fullmatch(anchor):
                key = max(anchor.split("_"), key=len).encode("ascii")
                old = words.get(key, (0, 0))
                words[key] = (old[0] | anchored, old[1] | required)
            elif len(anchor) == 1:
                single[anchor] = (anchored, required)
            else:
                multi.setdefault(_index_char(anchor), []).append((anchor, anchored, required))
        self._always = (always[0], always[1])
        self._words = words
        self._word_keys = frozenset(words)
        # Per character: the bits of the one-character anchor, and the longer anchors filed there
        # with one regex that answers "does any of them occur?" in a single C call (only then are
        # they tested one by one).
        by_char: dict[str | int, _CharEntry] = {}
        for char in set(single) | set(multi):
            group = tuple(multi.get(char, ()))
            any_of = re.compile("|".join(re.escape(a) for a, _, _ in group)) if group else None
            anchored, required = single.get(char, (0, 0))
            entry = (anchored, required, any_of, group)
            # ASCII texts are read as bytes, whose characters come as ints: file both spellings.
            by_char[char] = by_char[ord(char)] = entry
        self._by_char = by_char
        self._firsts = frozenset(by_char)
        self._drop = bytes(c for c in range(128) if chr(c) not in by_char)

    def features(self, text: str) -> Features:
        """The words of ``text`` and those of its characters that anchors are filed under.

        Computed once per distinct view of a value. For ASCII text both come from two
        ``bytes.translate`` calls, which are far cheaper than building a set of every character.
        """
        if text.isascii():
            data = text.encode("ascii")
            return set(data.translate(_WORD_BYTES).split()), set(data.translate(None, self._drop))
        return {w.encode("ascii") for w in _LETTERS.findall(text)}, set(text)

    def select(self, text: str, features: Features) -> int:
        """The bit mask of the rules whose anchors (and required anchors) occur in ``text``."""
        anchored, required = self._always
        words, chars = features
        for word in self._word_keys & words:
            bits = self._words[word]
            anchored |= bits[0]
            required |= bits[1]
        by_char = self._by_char
        for char in self._firsts & chars:
            anchors, requires, any_of, group = by_char[char]
            anchored |= anchors
            required |= requires
            if any_of is not None and any_of.search(text) is not None:
                for anchor, anchor_bits, require_bits in group:
                    if anchor in text:
                        anchored |= anchor_bits
                        required |= require_bits
        return anchored & required
