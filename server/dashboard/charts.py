"""Charts of the programme dashboard, drawn on the server with pygal (SVG).

Why pygal and not a browser library: the auditor and dashboard pages run under
``script-src 'none'`` (no JavaScript at all); pygal renders a complete SVG on the
server, and the page embeds it as an ``<img>``, so nothing executes in the browser.
pygal always writes a small ``<script>`` into its SVG for tooltips; inside an image
it never runs. The SVG scales with its ``viewBox`` (``width: 100%`` in CSS), so a chart
is readable on a 360 px phone. Each chart has its numbers as a table on the page too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import pygal
from pygal.style import Style

from server.dashboard.queries import RegionProgress, Throughput
from server.regions import short_name

# pygal appends a sys.meta_path finder for its map plugins (pygal.maps.*, unused here) that
# has only the find_module() Python 3.4 deprecated: every later import elsewhere in the
# process then warns (ImportWarning). Take it out again.
sys.meta_path[:] = [f for f in sys.meta_path if type(f) is not pygal.PluginImportFixer]

#: Programme colours: collected (green), expected-but-pending (grey), an accent.
_STYLE = Style(
    background="white", plot_background="white", foreground="#1b1b1b", foreground_strong="#1b1b1b",
    foreground_subtle="#6b7280", colors=("#15803d", "#9ca3af", "#b45309"),
    font_family="system-ui, sans-serif", label_font_size=14, major_label_font_size=14,
    value_font_size=13, legend_font_size=14, title_font_size=15, tooltip_font_size=12)


def _config(width: int, height: int) -> dict[str, object]:
    return {"style": _STYLE, "width": width, "height": height, "js": [], "disable_xml_declaration": True,
            "legend_at_bottom": True, "legend_at_bottom_columns": 2, "margin": 8, "spacing": 8,
            "truncate_label": -1, "print_values": False}


def _ticks(top: float) -> list[float]:
    """About five round axis ticks from 0 to at least ``top`` (whole numbers for counts)."""
    if top <= 0:
        return [0, 1]
    step = 10 ** math.floor(math.log10(max(top / 5, 1e-9)))
    for factor in (1, 2, 5, 10):
        if top / (step * factor) <= 5:
            step *= factor
            break
    if top >= 1:
        whole = max(int(round(step)), 1)
        return [i * whole for i in range(math.ceil(top / whole) + 1)]
    return [round(i * step, 6) for i in range(math.ceil(top / step) + 1)]


def progress_chart(rows: Sequence[RegionProgress], *, collected: str, pending: str, title: str) -> str:
    """Stacked horizontal bars per region: households collected and still pending.

    :param collected: translated legend of the collected part; :param pending: of the rest.
    :returns: SVG text.
    """
    chart = pygal.HorizontalStackedBar(**_config(480, 140 + 40 * max(len(rows), 1)), title=title,
                                       y_labels=_ticks(max((r.expected for r in rows), default=0)))
    chart.x_labels = [short_name(r.region) for r in rows]
    chart.add(collected, [r.collected for r in rows])
    chart.add(pending, [r.expected - r.collected for r in rows])
    return str(chart.render(is_unicode=True))


def daily_chart(days: Sequence[tuple[str, int]], *, daily: str, title: str) -> str:
    """Households collected per WIB day (bars; the running total is in the page's table).

    :param days: ``(YYYY-MM-DD, households)`` in date order.
    :returns: SVG text.
    """
    chart = pygal.Bar(**_config(480, 340), title=title, x_label_rotation=40, show_legend=False,
                      y_labels=_ticks(max((n for _, n in days), default=0)))
    chart.x_labels = [d[5:] for d, _ in days]  # MM-DD
    chart.add(daily, [n for _, n in days])
    return str(chart.render(is_unicode=True))


def throughput_chart(rows: Sequence[Throughput], *, title: str, limit: int = 15) -> str:
    """Households per active hour of the fastest ``limit`` terminals (horizontal bars).

    :returns: SVG text.
    """
    shown = list(rows)[:limit]
    chart = pygal.HorizontalBar(**_config(480, 100 + 30 * max(len(shown), 1)), title=title, show_legend=False,
                                y_labels=_ticks(max((t.per_hour for t in shown), default=0)))
    chart.x_labels = [t.terminal_id for t in shown]
    chart.add(title, [round(t.per_hour, 1) for t in shown])
    return str(chart.render(is_unicode=True))
