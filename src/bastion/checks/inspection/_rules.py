"""The rule type shared by the four families."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Rule", "View", "keywords", "trie"]

View = Literal["lower", "raw", "sql", "html", "shell", "path"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One attack shape: a stable id, the lowest paranoia level it runs at, the view it reads.

    ``pattern`` is a regular expression over the view (which is already lower-cased, except
    ``raw``). Patterns use no capturing groups of their own (``(?:...)`` only): the engine wraps
    each in a named group to know which rule matched.

    ``anchors`` are literal substrings of the view of which any match must contain at least one
    (a keyword, or a characteristic character such as ``<`` or ``;``). The engine runs a rule only
    when one of its anchors occurs, which a plain ``in`` test decides; an empty tuple means the
    rule always runs. ``requires`` is a second list of the same kind, of which one must occur as
    well (``anchors=("count", "user", …), requires=("(",)``). A test scans the corpus with and
    without this gate and requires the same findings, so an anchor that a match could avoid is
    caught.
    """

    id: str
    paranoia: int
    view: View
    pattern: str
    anchors: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


_NAME_SUFFIX = re.compile(r"\\w\+|\(\?:-\[a-z\]\+\)\?|\[[^\]a-z]*\][?*]?|\\\+|\\\.")


def keywords(alternation: str) -> tuple[str, ...]:
    """Word anchors for an alternation of names (``"concat|json_\\w+|sha1|g\\+\\+"``): the first run
    of letters of each name (``concat``, ``json``, ``sha``, ``g``). A name whose run the regex
    could extend with more letters (``vim?``, ``pip[x3]?``) is refused: spell its variants out."""
    words = []
    for name in alternation.split("|"):
        literal = _NAME_SUFFIX.sub(" ", name)
        if not re.fullmatch(r"[a-z0-9_ -]+", literal):
            raise ValueError(f"cannot derive an anchor from {name!r}")
        words.append(re.findall(r"[a-z]+", literal)[0])
    return tuple(dict.fromkeys(words))


_ATOM = re.compile(r"\\.|[a-z0-9_ -]")
_LITERAL_NAME = re.compile(r"(?:\\.|[a-z0-9_ -])+")


def trie(alternation: str) -> str:
    """The same alternation of names, with literal names merged by common prefix.

    ``"cat|cut|curl"`` becomes ``"c(?:at|u(?:t|rl))"``: the regex engine then tests one branch per
    letter instead of every name in turn, which matters for lists of hundreds of commands or
    functions tried after every separator. Which strings match is unchanged; names that are not
    plain literals (``json_\\w+``, ``python[23]?``) are kept as they are, after the trie.
    """
    root: dict[str, dict] = {}  # type: ignore[type-arg]
    others = []
    for name in dict.fromkeys(alternation.split("|")):
        if not _LITERAL_NAME.fullmatch(name):
            others.append(name)
            continue
        node = root
        for atom in _ATOM.findall(name):
            node = node.setdefault(atom, {})
        node[""] = {}

    def render(node: dict) -> str:  # type: ignore[type-arg]
        optional = "" in node
        branches = [atom + render(child) for atom, child in node.items() if atom]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and not optional else f"(?:{'|'.join(branches)})"
        if optional:
            body = f"(?:{'|'.join(branches)})?" if len(branches) > 1 else f"(?:{branches[0]})?"
        return body

    return "|".join(filter(None, [render(root), *others]))
