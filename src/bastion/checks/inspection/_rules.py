"""The rule type shared by the four families."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Rule", "View"]

View = Literal["lower", "raw", "sql", "html", "shell", "path"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One attack shape: a stable id, the lowest paranoia level it runs at, the view it reads.

    ``pattern`` is a regular expression over the view (which is already lower-cased, except
    ``raw``). Patterns use no capturing groups of their own (``(?:...)`` only): the engine wraps
    each in a named group to know which rule matched.
    """

    id: str
    paranoia: int
    view: View
    pattern: str
