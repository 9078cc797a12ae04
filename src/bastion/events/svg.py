"""Small static SVG charts for the audit report: a horizontal bar chart and a column chart over time.

The output is inline SVG markup meant to sit inside an HTML page whose Content-Security-Policy allows no
scripts and no external resources, so the charts use neither: shapes, text and presentation attributes
only. Labels come from the event log, which is untrusted, so every piece of text goes through
:func:`html.escape` (quotes included: labels also land in attributes) and is cut to a bounded length.

Every bar is a ``<rect class="bar">`` — zero-valued ones too, with no height — so a chart has exactly one
bar per value, and each carries a ``<title>`` (the tooltip) with its label and value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["PALETTE", "bar_chart", "column_chart"]

PALETTE = ("#c0392b", "#2c6fbb", "#d68910", "#117a65")
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'
_MAX_LABEL = 40


def _text(value: object, limit: int = _MAX_LABEL) -> str:
    """Escaped, single-line text, cut to ``limit`` characters."""
    s = "".join(c if c.isprintable() else "\ufffd" for c in str(value))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return escape(s, quote=True)


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _nice_max(value: float) -> float:
    """The top of the scale: the smallest 1, 2 or 5 times a power of ten at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # unreachable: 10 * power is always enough


def _divisions(peak: float) -> int:
    """How many gridlines, so that they fall on round values: 5 for 50 (every 10), 4 for 20 (every 5)."""
    lead = round(peak / 10 ** math.floor(math.log10(peak)))
    divisions = 4 if lead == 2 else 5
    return max(1, min(divisions, int(peak))) if peak < divisions else divisions


def _open(width: float, height: float, title: str, css_class: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css_class}" role="img" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'aria-label="{_text(title, 200)}">',
        f"<title>{_text(title, 200)}</title>",
    ]


def bar_chart(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    width: int = 720,
    row_height: int = 22,
    label_width: int = 200,
    color: str = PALETTE[0],
) -> str:
    """Horizontal bars, one row per ``(label, value)``, longest scale at the largest value."""
    top, bottom, right = 8, 8, 70
    height = top + bottom + row_height * max(len(items), 1)
    scale = max((v for _, v in items), default=0.0) or 1.0
    span = width - label_width - right
    out = _open(width, height, title, "bar-chart")
    out.append(f"<g {_FONT}>")
    for i, (label, value) in enumerate(items):
        y = top + i * row_height
        length = span * max(value, 0.0) / scale
        tip = f"{label}: {_number(value)}"
        out.append(
            f'<text x="{label_width - 8}" y="{y + row_height * 0.65:.1f}" text-anchor="end" '
            f'fill="#222">{_text(label, 28)}</text>'
        )
        out.append(
            f'<rect class="bar" x="{label_width}" y="{y + 3}" width="{length:.1f}" '
            f'height="{row_height - 6}" fill="{escape(color, quote=True)}" data-value="{value:g}">'
            f"<title>{_text(tip, 200)}</title></rect>"
        )
        out.append(
            f'<text x="{label_width + length + 6:.1f}" y="{y + row_height * 0.65:.1f}" '
            f'fill="#444">{_number(value)}</text>'
        )
    out.append("</g></svg>")
    return "".join(out)


def column_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    width: int = 720,
    height: int = 260,
    max_labels: int = 12,
) -> str:
    """Grouped columns: one group per label (a day, say), one column per series in each group, a shared
    scale with gridlines, and a legend. Series must each have one value per label."""
    for name, values in series:
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} labels")
    left, right, top, bottom = 56, 12, 30, 34
    plot_w = width - left - right
    plot_h = height - top - bottom
    peak = _nice_max(max((v for _, values in series for v in values), default=0.0))
    groups = max(len(labels), 1)
    group_w = plot_w / groups
    bar_w = max(group_w * 0.8 / max(len(series), 1), 1.0)
    out = _open(width, height, title, "column-chart")
    out.append(f"<g {_FONT}>")
    divisions = _divisions(peak)
    for step in range(divisions + 1):  # gridlines and the scale
        value = peak * step / divisions
        y = top + plot_h - plot_h * step / divisions
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'stroke="{"#999" if step == 0 else "#e3e3e3"}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_number(value)}</text>'
        )
    every = max(1, math.ceil(len(labels) / max_labels))  # thin the axis labels, never the bars
    for i, label in enumerate(labels):
        x0 = left + i * group_w + group_w * 0.1
        for j, (name, values) in enumerate(series):
            value = max(values[i], 0.0)
            h = plot_h * value / peak
            tip = f"{label} — {name}: {_number(values[i])}"
            out.append(
                f'<rect class="bar series-{j}" x="{x0 + j * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}" '
                f'data-value="{values[i]:g}"><title>{_text(tip, 200)}</title></rect>'
            )
        if i % every == 0:
            out.append(
                f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle" fill="#555">{_text(label, 12)}</text>'
            )
    x = left
    for j, (name, _) in enumerate(series):
        out.append(
            f'<rect x="{x}" y="8" width="12" height="12" fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{x + 16}" y="18" fill="#222">{_text(name, 30)}</text>'
        )
        x += 24 + 7 * min(len(name), 30)
    out.append("</g></svg>")
    return "".join(out)
