"""The views a value is matched in: one decoded base, then one cheap transformation per family.

Attackers hide the same payload behind many spellings (encodings, comments, quotes inside words,
fullwidth letters). Rather than writing every spelling into the patterns, each family matches a
*view* in which those spellings have been folded into one. Every function here is total (never
raises) and linear in the length of its input.

=========  ===================================================================================
view       how it is built from the base (decoded, NFKC, lower-cased)
=========  ===================================================================================
``sql``    ``/*!50000 … */`` markers dropped (their content is executed by MySQL), other ``/* … */``
           comments replaced by a space, typographic quotes folded to ``'`` and ``"``, whitespace
           collapsed
``html``   HTML entities decoded (twice, for ``&amp;lt;``), JavaScript comments dropped, control
           characters and whitespace collapsed to one space
``shell``  evasion characters removed: backslashes, quotes touching a word (``c'a't``), empty
           expansions (``$@``, ``$()``, a backtick pair), ``${IFS}`` and ``+`` read as spaces,
           brace lists ``{cat,/etc/passwd}`` opened, newlines read as ``;``
``path``   ``\\`` read as ``/``, ``0x2e``/``0x2f``/``0x5c`` literals and runs of undecodable bytes
           (overlong UTF-8) read as ``.`` and ``/``, NUL and ``;params`` dropped, repeated
           slashes and ``/./`` folded
=========  ===================================================================================
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import unquote

__all__ = ["base_view", "html_view", "path_view", "shell_view", "sql_view"]

# %xx, and the non-standard %uXXXX that IIS and some frameworks still decode.
_PERCENT = re.compile(r"%(?:[0-9a-fA-F]{2}|[uU][0-9a-fA-F]{4})")
_PERCENT_U = re.compile(r"%[uU]([0-9a-fA-F]{4})")
_EXTRA_DECODE_ROUNDS = 2


def _percent_decode(value: str) -> str:
    if "%u" in value or "%U" in value:
        value = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), value)
    return unquote(value, errors="replace")


def base_view(value: str) -> str:
    """Decode what a careless application would decode again, then fold Unicode compatibility forms.

    The caller has percent-decoded once; up to two more rounds run while ``%xx`` remains (double
    and triple encoding). NFKC turns fullwidth letters and signs (U+FF1C ``<``, U+FF53 ``s``…) and
    ligatures into ASCII.
    """
    for _ in range(_EXTRA_DECODE_ROUNDS):
        if "%" not in value or _PERCENT.search(value) is None:
            break
        value = _percent_decode(value)
    if not value.isascii():
        value = unicodedata.normalize("NFKC", value)
    return value


_MYSQL_VERSIONED = re.compile(r"/\*!\d*|/\*\+")
_SQL_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.S)
# A run of whitespace (or NUL) that is not already one plain space. Matching only what must
# change lets ``sub`` hand back the very same string for ordinary text, so the engine sees
# that the view equals the lower-cased value and reads it once.
_SPACES = re.compile(r"[\s\x00](?:[\s\x00]+|(?<! ))")
_SMART_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u00b4": "'", "\u02bc": "'", "\u2032": "'",
                               "\u201c": '"', "\u201d": '"', "\u2033": '"'})  # fmt: skip


def sql_view(lower: str) -> str:
    if "/*" in lower:
        lower = _MYSQL_VERSIONED.sub(" ", lower)
        lower = _SQL_COMMENT.sub(" ", lower).replace("*/", " ")
    if not lower.isascii():
        lower = lower.translate(_SMART_QUOTES)
    return _SPACES.sub(" ", lower)


_JS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.S)
_HTML_SPACES = re.compile(r"[\s\x00-\x1f\x7f](?:[\s\x00-\x1f\x7f]+|(?<! ))")


_HTML_SPACE_ENTITIES = re.compile(r"&(?:tab|newline);", re.I)
# What html.unescape could turn into ASCII: a numeric reference, a named one with its ";", or one
# of the four legacy names it also decodes without ";" (``&lt``, ``&amp``, ``&gt``, ``&quot``).
# Other names without ";" (``&copy``, ``&utm_source=``) decode to non-ASCII letters or nothing,
# and no rule reads those, so query strings skip the (slow) unescape.
_ENTITY_HINT = re.compile(r"&(?:#|[a-z][a-z0-9]*;|amp|lt|gt|quot)", re.I)


def html_view(base: str) -> str:
    """Built from the case-preserving base: HTML entity names are case-sensitive (``&Tab;``)."""
    if "&" in base and _ENTITY_HINT.search(base) is not None:
        base = html.unescape(_HTML_SPACE_ENTITIES.sub(" ", base))
        if "&" in base:
            base = html.unescape(base)
    lower = base.lower()
    if "/*" in lower:
        lower = _JS_COMMENT.sub("", lower)
    return _HTML_SPACES.sub(" ", lower)


_SHELL_IFS = re.compile(r"\$\{?ifs\}?(?:\$\d)?")
# A backslash goes (c\at), except after a drive letter, where it starts a Windows path (c:\windows).
_SHELL_EMPTY = re.compile(
    r"\$[@*!?#$\-]|\$\(\)|\$\{\}|``|<\(\)|(?<=[a-z])\$[a-z]{1,3}\b|(?<![a-z]:)\\(?=[^\s])"
)
# A run of quotes touching a word or path character on either side (``c'a't``, ``"/etc"/passwd``).
# Both alternatives start with a quote, so the engine skips ahead to quotes; each tests its side
# from the run's first quote, so a long run of quotes costs linear time.
_SHELL_QUOTES = re.compile(r"['\"](?:(?<=[\w/.$-]['\"])['\"]*|(?<!['\"]['\"])['\"]*(?=[\w/.$-]))")
_SHELL_BRACES = re.compile(r"\{([^{}\s]*,[^{}\s]*)\}")
_SHELL_NEWLINES = re.compile(r"[\r\n]+")
# A Markdown code fence on its own line (```python): a separator, not two substitutions.
_MARKDOWN_FENCE = re.compile(r"^[ \t]*```[\w+-]*[ \t\r]*$", re.M)


def shell_view(lower: str) -> str:
    if "```" in lower and "\n" in lower:
        lower = _MARKDOWN_FENCE.sub("", lower)
    if "$" in lower:
        lower = _SHELL_IFS.sub(" ", lower)
    if "$" in lower or "`" in lower or "\\" in lower or "<(" in lower:
        lower = _SHELL_EMPTY.sub("", lower)
    if "'" in lower or '"' in lower:
        lower = _SHELL_QUOTES.sub("", lower)
    if "{" in lower:
        lower = _SHELL_BRACES.sub(lambda m: m.group(1).replace(",", " "), lower)
    if "\n" in lower or "\r" in lower:
        lower = _SHELL_NEWLINES.sub(";", lower)
    return _SPACES.sub(" ", lower.replace("+", " ")).strip()


_PATH_HEX = re.compile(r"0x(?:2e|2f|5c)")
_PATH_HEX_MAP = {"0x2e": ".", "0x2f": "/", "0x5c": "/"}
# ";jsessionid=…" and "..;/": a path parameter runs from ";" to the next "/" and holds no space
# ("; " is prose or a User-Agent, left alone so such values keep one view).
_PATH_PARAMS = re.compile(r";(?!\s)[^/\s]*")
# Repeated slashes and "/./" fold to one slash, except the "//" of a URL scheme ("https://").
_PATH_SLASHES = re.compile(r"/(?<!:/)(?:\.?/)+")


# Undecodable bytes (U+FFFD after decoding): a lone lead byte in front of a real "." or "/"
# (%c0%2e) is junk; a run of four or more is two or more overlong characters (%c0%ae%c0%ae%c0%af),
# which in a path can only have been dots and a separator; a shorter run is one separator (%c0%af).
_PATH_FFFD_LEAD = re.compile("\ufffd(?=[./\\\\])")
_PATH_FFFD_LONG = re.compile("\ufffd{4,}")
_PATH_FFFD = re.compile("\ufffd+")
# Slashes that look like "/" or "\\" but that NFKC leaves alone (division slash, fraction slash,
# set minus, big solidi), and control characters, which no file name holds ("..%09/", "..%0d/").
_PATH_LOOKALIKES = str.maketrans({"\u2215": "/", "\u2044": "/", "\u2216": "/", "\u29f5": "/", "\u29f8": "/",
                                  "\u29f9": "/"})  # fmt: skip
_PATH_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


def path_view(lower: str) -> str:
    if "0x" in lower:
        lower = _PATH_HEX.sub(lambda m: _PATH_HEX_MAP[m.group(0)], lower)
    if not lower.isascii():
        lower = lower.translate(_PATH_LOOKALIKES)
        if "\ufffd" in lower:
            lower = _PATH_FFFD_LEAD.sub("", lower)
            lower = _PATH_FFFD_LONG.sub("../", lower)
            lower = _PATH_FFFD.sub("/", lower)
    if not lower.isprintable():
        lower = _PATH_CONTROLS.sub("", lower)
    lower = lower.replace("\\", "/")
    if ";" in lower:
        lower = _PATH_PARAMS.sub("", lower)
    return _PATH_SLASHES.sub("/", lower)
