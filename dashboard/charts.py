"""Charts as server-side SVG: pure Python, no dependency, no script, no inline style.

Each function returns one ``<svg>`` element as a string, built only from escaped parts:
every piece of text (title, labels, tooltips, legend) goes through :func:`esc`, and every
number is formatted here, so the result may be marked safe in a template. The output is
deterministic (same input, same bytes) and valid XML.

Accessibility: the ``<svg>`` has ``role="img"`` and an ``aria-label`` that states what it
shows with its key figures, plus ``<title>`` and ``<desc>``; every bar or point carries a
``<title>`` tooltip. The figures are also on the page as a table (charts never replace it).
Colours come with a legend and the words; they only reinforce what the text says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

SVG_NS = "http://www.w3.org/2000/svg"
WIDTH = 640
HEIGHT = 260
_MARGIN_LEFT = 52
_MARGIN_RIGHT = 16
_MARGIN_TOP = 40
_MARGIN_BOTTOM = 44
# WCAG AA against white, distinct for the common colour-vision deficiencies.
PALETTE = ("#0b5cad", "#b45309", "#14532d", "#8f1c16", "#6b21a8", "#4f5766")
AXIS = "#4f5766"
GRID = "#d9dde4"
INK = "#1a1f2b"


def esc(text) -> str:
    """Text for SVG content or an attribute value (``&``, ``<``, ``>``, quotes)."""
    return escape(str(text), quote=True)


def fmt(value: float) -> str:
    """A number for an attribute or a label: at most two decimals, no trailing zeros, no ``-0``."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _nice_step(raw: float) -> float:
    """The 1-2-2.5-5 × 10ⁿ step at or above ``raw``."""
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw - 1e-12:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def axis_ticks(maximum: float, *, integer: bool = True, count: int = 4) -> list[float]:
    """Tick values from 0 to a round top at or above ``maximum`` (about ``count`` intervals)."""
    maximum = max(float(maximum), 0.0)
    step = _nice_step(maximum / count) if maximum > 0 else 1.0
    if integer:
        step = max(1.0, math.ceil(step))
    top = step * max(1, math.ceil(maximum / step - 1e-9))
    n = round(top / step)
    return [round(i * step, 6) for i in range(n + 1)]


def _open(title: str, summary: str, *, css_class: str) -> list[str]:
    label = f"{title}. {summary}" if summary else title
    return [
        f'<svg xmlns="{SVG_NS}" viewBox="0 0 {WIDTH} {HEIGHT}" class="{esc(css_class)}" role="img" '
        f'aria-label="{esc(label)}" font-family="system-ui, sans-serif" font-size="12" fill="{INK}">',
        f"<title>{esc(title)}</title>",
        f"<desc>{esc(summary)}</desc>",
        f'<text x="{_MARGIN_LEFT}" y="18" font-size="14" font-weight="600">{esc(title)}</text>',
    ]


def _plot_box() -> tuple[float, float, float, float]:
    """x0, y0 (top), width, height of the plot area."""
    return (
        _MARGIN_LEFT,
        _MARGIN_TOP,
        WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT,
        HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM,
    )


def _y_axis(ticks: list[float], unit: str) -> tuple[list[str], Callable[[float], float]]:
    """Grid lines with value labels; returns the parts and value → y."""
    x0, y0, w, h = _plot_box()
    top = ticks[-1] or 1.0

    def y_of(value: float) -> float:
        return y0 + h - (max(value, 0.0) / top) * h

    parts = ['<g class="axis-y">']
    for tick in ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{fmt(x0)}" y1="{fmt(y)}" x2="{fmt(x0 + w)}" y2="{fmt(y)}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{fmt(x0 - 6)}" y="{fmt(y + 4)}" text-anchor="end" fill="{AXIS}">{esc(fmt(tick))}</text>'
        )
    parts.append(f'<line x1="{fmt(x0)}" y1="{fmt(y0)}" x2="{fmt(x0)}" y2="{fmt(y0 + h)}" stroke="{AXIS}"/>')
    parts.append(f'<line x1="{fmt(x0)}" y1="{fmt(y0 + h)}" x2="{fmt(x0 + w)}" y2="{fmt(y0 + h)}" stroke="{AXIS}"/>')
    if unit:
        parts.append(f'<text x="{fmt(x0 - 6)}" y="{fmt(y0 - 8)}" text-anchor="end" fill="{AXIS}">{esc(unit)}</text>')
    parts.append("</g>")
    return parts, y_of


def _x_label(x: float, text: str) -> str:
    _x0, y0, _w, h = _plot_box()
    return f'<text x="{fmt(x)}" y="{fmt(y0 + h + 16)}" text-anchor="middle" fill="{AXIS}">{esc(text)}</text>'


def _shown(index: int, total: int, every: int) -> bool:
    """Whether the x label at ``index`` is drawn: every ``every``-th, counted back from the last."""
    return every <= 1 or (total - 1 - index) % every == 0


def _empty(parts: list[str], message: str) -> None:
    x0, y0, w, h = _plot_box()
    parts.append(
        f'<text x="{fmt(x0 + w / 2)}" y="{fmt(y0 + h / 2)}" text-anchor="middle" fill="{AXIS}">{esc(message)}</text>'
    )


def bar_chart(
    title: str,
    bars: Sequence[tuple[object, float]],
    *,
    unit: str = "",
    colors: Sequence[str] | None = None,
    integer: bool = True,
    empty_message: str = "Nothing to show yet",
) -> str:
    """Vertical bars, one per ``(label, value)``, each with its value above it and a tooltip."""
    shown = [(str(label), float(value or 0)) for label, value in bars]
    summary = "; ".join(f"{label}: {fmt(value)}{' ' + unit if unit else ''}" for label, value in shown)
    parts = _open(title, f"Bar chart. {summary}" if shown else "Bar chart, no data.", css_class="chart chart-bar")
    ticks = axis_ticks(max((v for _l, v in shown), default=0), integer=integer)
    axis, y_of = _y_axis(ticks, unit)
    parts += axis
    x0, y0, w, h = _plot_box()
    if not shown or all(v == 0 for _l, v in shown):
        _empty(parts, empty_message)
    slot = w / max(len(shown), 1)
    bar_w = min(slot * 0.6, 72)
    parts.append('<g class="bars">')
    for i, (label, value) in enumerate(shown):
        color = (colors[i % len(colors)] if colors else PALETTE[0]) or PALETTE[0]
        cx = x0 + slot * (i + 0.5)
        y = y_of(value)
        tooltip = f"{label}: {fmt(value)}{' ' + unit if unit else ''}"
        parts.append(
            f'<rect x="{fmt(cx - bar_w / 2)}" y="{fmt(y)}" width="{fmt(bar_w)}" height="{fmt(y0 + h - y)}" '
            f'fill="{esc(color)}"><title>{esc(tooltip)}</title></rect>'
        )
        if value:
            parts.append(f'<text x="{fmt(cx)}" y="{fmt(y - 4)}" text-anchor="middle">{esc(fmt(value))}</text>')
        parts.append(_x_label(cx, label))
    parts.append("</g></svg>")
    return "".join(parts)


def stacked_bar_chart(
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    unit: str = "",
    colors: Sequence[str] | None = None,
    label_every: int = 1,
    empty_message: str = "Nothing to show yet",
) -> str:
    """One bar per category, stacked from ``series`` = ``[(name, values per category), ...]``, with a legend."""
    categories = [str(c) for c in categories]
    colors = list(colors or PALETTE)
    values = [[float(v or 0) for v in vals] for _name, vals in series]
    for vals in values:
        if len(vals) != len(categories):
            raise ValueError("every series needs one value per category")
    totals = [sum(vals[i] for vals in values) for i in range(len(categories))]
    summary = ", ".join(f"{name} {fmt(sum(vals))}" for (name, _v), vals in zip(series, values, strict=True))
    parts = _open(
        title,
        f"Stacked bar chart of {len(categories)} bars; totals: {summary}." if categories else "No data.",
        css_class="chart chart-stacked",
    )
    ticks = axis_ticks(max(totals, default=0))
    axis, y_of = _y_axis(ticks, unit)
    parts += axis
    x0, y0, w, h = _plot_box()
    if not any(totals):
        _empty(parts, empty_message)
    # Legend, top right.
    parts.append('<g class="legend">')
    lx = x0 + w
    for index in reversed(range(len(series))):
        name = str(series[index][0])
        width = 24 + 7 * len(name)
        lx -= width
        parts.append(
            f'<rect x="{fmt(lx)}" y="8" width="12" height="12" fill="{esc(colors[index % len(colors)])}"/>'
            f'<text x="{fmt(lx + 16)}" y="18">{esc(name)}</text>'
        )
    parts.append("</g>")
    slot = w / max(len(categories), 1)
    bar_w = min(slot * 0.7, 48)
    parts.append('<g class="bars">')
    for i, category in enumerate(categories):
        cx = x0 + slot * (i + 0.5)
        base = 0.0
        for index, ((name, _v), vals) in enumerate(zip(series, values, strict=True)):
            value = vals[i]
            if value <= 0:
                continue
            y_top, y_bottom = y_of(base + value), y_of(base)
            parts.append(
                f'<rect x="{fmt(cx - bar_w / 2)}" y="{fmt(y_top)}" width="{fmt(bar_w)}" '
                f'height="{fmt(y_bottom - y_top)}" fill="{esc(colors[index % len(colors)])}">'
                f"<title>{esc(category)}: {esc(name)} {esc(fmt(value))}</title></rect>"
            )
            base += value
        if _shown(i, len(categories), label_every):
            parts.append(_x_label(cx, category))
    parts.append("</g></svg>")
    return "".join(parts)


def line_chart(
    title: str,
    points: Sequence[tuple[str, float | None]],
    *,
    unit: str = "",
    color: str = PALETTE[0],
    label_every: int = 1,
    integer: bool = False,
    empty_message: str = "Nothing to show yet",
) -> str:
    """A line through ``(label, value)`` points; ``None`` is a gap (no data that day), never a zero."""
    points = [(str(label), None if value is None else float(value)) for label, value in points]
    known = [v for _l, v in points if v is not None]
    summary = (
        f"Line chart of {len(points)} points, {len(known)} with data; "
        f"lowest {fmt(min(known))}, highest {fmt(max(known))}{' ' + unit if unit else ''}."
        if known
        else "Line chart, no data."
    )
    parts = _open(title, summary, css_class="chart chart-line")
    ticks = axis_ticks(max(known, default=0), integer=integer)
    axis, y_of = _y_axis(ticks, unit)
    parts += axis
    x0, _y0, w, _h = _plot_box()
    if not known:
        _empty(parts, empty_message)
    slot = w / max(len(points), 1)
    segments: list[list[tuple[float, float]]] = [[]]
    marks = []
    labels = []
    for i, (label, value) in enumerate(points):
        cx = x0 + slot * (i + 0.5)
        if _shown(i, len(points), label_every):
            labels.append(_x_label(cx, label))
        if value is None:
            if segments[-1]:
                segments.append([])
            continue
        cy = y_of(value)
        segments[-1].append((cx, cy))
        marks.append(
            f'<circle cx="{fmt(cx)}" cy="{fmt(cy)}" r="3.5" fill="{esc(color)}">'
            f"<title>{esc(label)}: {esc(fmt(value))}{esc(' ' + unit if unit else '')}</title></circle>"
        )
    parts.append('<g class="line">')
    for segment in segments:
        if len(segment) >= 2:
            d = " ".join(f"{'M' if j == 0 else 'L'}{fmt(x)} {fmt(y)}" for j, (x, y) in enumerate(segment))
            parts.append(f'<path d="{d}" fill="none" stroke="{esc(color)}" stroke-width="2"/>')
    parts += marks
    parts += labels
    parts.append("</g></svg>")
    return "".join(parts)
