"""The console's Jinja2 environment: the templates in ``templates/`` (package data) and a few filters.

Autoescaping is on for every template whatever its name, and undefined names are errors: every value from
the store or the request is escaped. Only two kinds of markup are inserted unescaped (``| safe``): the SVG
charts of :mod:`bastion.events.svg`, which escape every label themselves, and the enrolment QR code that
segno draws from the otpauth URI. No template has a script, an inline style or an event-handler attribute:
the Content-Security-Policy would block them anyway.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

__all__ = ["STATIC", "environment"]

HERE = Path(__file__).parent
STATIC = HERE / "static"
_WORD = re.compile(r"[a-z_]{1,24}")


def _when(value: float | None) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _isotime(value: float | None) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _shorttime(value: str | None) -> str:
    """An event's ISO 8601 time (``2025-06-15T15:06:40.123Z``) to the second, without the ``T``."""
    return (value or "")[:19].replace("T", " ")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _compact(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cssword(value: Any) -> str:
    """A status or severity as a CSS class: one lowercase word, or nothing."""
    text = str(value)
    return text if _WORD.fullmatch(text) else ""


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
        auto_reload=False,
    )
    env.filters.update(
        when=_when, isotime=_isotime, shorttime=_shorttime, pretty=_pretty, compact=_compact, cssword=_cssword
    )
    return env
