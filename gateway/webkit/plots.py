"""Small server-side line plots as inline SVG: no script, no chart library, a few kilobytes a plot.

Shared by the local dashboard, the device pages and the registry's node pages. Points are (unix time, value) pairs;
a value of None, or a pixel column without any point, leaves a gap in the line (a node that was off shows as a hole,
not a ramp). Each line is reduced to at most one point per column (the highest value in it, so short peaks stay
visible).

These are what a page shows without script. With it, webkit/static/plot.js draws the same data with uPlot (time
ticks, grid, a tooltip, zoom, a window selector, refresh) from a JSON endpoint: `plot_figure` wraps an SVG in the
markup that says where that data is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal

from gateway.webkit.units import display_unit

Unit = Literal["percent", "bytes", "bytes_per_s", "per_s", "count"]
Point = tuple[float, float | None]

WIDTH, HEIGHT = 320, 120
LEFT, RIGHT, TOP, BOTTOM = 54, 6, 22, 16
MAX_COLUMNS = 160
COLORS = ("#1f6feb", "#d9480f", "#2b8a3e", "#862e9c")
_FONT = 'font-family="sans-serif" font-size="10"'
_TEXT = f'{_FONT} fill="#5b6470"'
GAP = ' dx="8"'


@dataclass(frozen=True)
class Line:
    """One series of a plot, drawn in `color` and named in the legend with its latest value."""

    label: str
    points: Sequence[Point]
    color: str = COLORS[0]


def format_value(value: float | None, unit: Unit | str) -> str:
    """A value for a label: `12 %`, `1.5 MiB`, `3.2 KiB/s`, `40/s`, `7`, or with a device's unit `21.5 °C`; an
    en dash when unknown."""
    if value is None or math.isnan(value):
        return "\u2013"
    if unit == "percent":
        return f"{value:.0f} %" if value >= 10 or value == 0 else f"{value:.1f} %"
    if unit in ("bytes", "bytes_per_s"):
        suffix = "/s" if unit == "bytes_per_s" else ""
        size = float(value)
        for prefix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(size) < 1024 or prefix == "TiB":
                digits = 0 if prefix == "B" or abs(size) >= 100 else 1
                return f"{size:.{digits}f} {prefix}{suffix}"
            size /= 1024
    text = f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.1f}"
    if unit == "per_s":
        return f"{text}/s"
    shown = "" if unit == "count" else display_unit(unit)
    return text if not shown else f"{text}{shown}" if shown == "°" else f"{text} {shown}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times 10^k at or above `value`; 1 when there is nothing to show."""
    if value <= 0 or math.isnan(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def columns(points: Sequence[Point], start: float, end: float, count: int) -> list[float | None]:
    """The highest value per column of the time range [start, end]; None for a column without a value."""
    result: list[float | None] = [None] * count
    span = end - start
    if span <= 0 or count <= 0:
        return result
    for ts, value in points:
        if value is None or math.isnan(value) or not start <= ts <= end:
            continue
        index = min(int((ts - start) / span * count), count - 1)
        current = result[index]
        result[index] = value if current is None or value > current else current
    return result


def _path(values: Sequence[float | None], x_of: Sequence[float], low: float, high: float, top: float) -> str:
    """An SVG path `d`: a new segment after every gap; a lone point becomes a short dash so it stays visible."""
    parts: list[str] = []
    run: list[tuple[float, float]] = []

    def flush() -> None:
        if len(run) == 1:
            x, y = run[0]
            parts.append(f"M{x - 1:.1f} {y:.1f}h2")
        elif run:
            parts.append("M" + "L".join(f"{x:.1f} {y:.1f}" for x, y in run))
        run.clear()

    for x, value in zip(x_of, values, strict=True):
        if value is None:
            flush()
        else:
            share = (value - low) / (high - low)
            run.append((x, top + (1 - min(max(share, 0.0), 1.0)) * (HEIGHT - TOP - BOTTOM)))
    flush()
    return "".join(parts)


def span_label(seconds: float) -> str:
    """`-24 h`, `-10 min`, `-45 s`: how far back the left edge of a plot is."""
    if seconds >= 7200:
        return f"-{seconds / 3600:.0f} h"
    if seconds >= 120:
        return f"-{seconds / 60:.0f} min"
    return f"-{seconds:.0f} s"


def line_plot(title: str, lines: Sequence[Line], *, start: float, end: float, step: float, unit: Unit | str,
              y_max: float | None = None, note: str = "") -> str:
    """An SVG line plot of `lines` over [start, end]; `step` is the spacing of their points in seconds; `unit` one
    of the Unit kinds or a device's unit (`degC`).

    The y axis starts at 0 (or at a round number below the lowest value when that is negative) and ends at `y_max`,
    or at a round number above the highest value."""
    count = max(1, min(MAX_COLUMNS, round((end - start) / max(step, 1e-9))))
    reduced = [columns(line.points, start, end, count) for line in lines]
    highest = max((v for values in reduced for v in values if v is not None), default=0.0)
    lowest = min((v for values in _lowest(lines, start, end, count) for v in values if v is not None), default=0.0)
    bottom_value = -nice_ceiling(-lowest) if lowest < 0 else 0.0
    if y_max is not None:
        top_value = y_max
    elif unit in ("bytes", "bytes_per_s") and highest >= 1024:  # round in KiB, MiB, … so the label is round too
        scale = 1024.0 ** min(math.floor(math.log(highest, 1024)), 4)
        top_value = nice_ceiling(highest / scale) * scale
    else:
        top_value = nice_ceiling(highest)
    plot_width = WIDTH - LEFT - RIGHT
    x_of = [LEFT + (i + 0.5) / count * plot_width for i in range(count)]
    base = HEIGHT - BOTTOM
    axis_label = format_value(top_value, "bytes" if unit == "bytes_per_s" else unit)  # the legend says "/s"
    latest = [next((v for _, v in reversed(line.points) if v is not None), None) for line in lines]
    summary = "; ".join(f"{line.label} {format_value(value, unit)}" for line, value in zip(lines, latest,
                                                                                             strict=True))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" class="plot" role="img" '
           f'aria-label="{escape(title)}: {escape(summary)}">',
           f'<text x="{LEFT}" y="12" {_FONT} font-weight="bold" fill="#1c2128">{escape(title)}'
           + (f' <tspan font-weight="normal" fill="#5b6470">{escape(note)}</tspan>' if note else "") + "</text>",
           f'<path d="M{LEFT} {TOP}H{WIDTH - RIGHT}M{LEFT} {base}H{WIDTH - RIGHT}" stroke="#d0d7de" '
           'stroke-width="1" fill="none"/>',
           f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" {_TEXT}>{escape(axis_label)}</text>',
           f'<text x="{LEFT - 4}" y="{base}" text-anchor="end" {_TEXT}>'
           f'{escape(format_value(bottom_value, unit) if bottom_value else "0")}</text>',
           f'<text x="{LEFT}" y="{HEIGHT - 3}" {_TEXT}>{escape(span_label(end - start))}</text>',
           f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 3}" text-anchor="end" {_TEXT}>now</text>']
    # one right-aligned text of tspans: the browser lays the entries out, no text widths to guess here
    out.append(f'<text x="{WIDTH - RIGHT}" y="12" text-anchor="end" {_FONT}>' + "".join(
        f'<tspan fill="{escape(line.color)}"{GAP if i else ""}>{escape(line.label)} '
        f"{escape(format_value(value, unit))}</tspan>"
        for i, (line, value) in enumerate(zip(lines, latest, strict=True))) + "</text>")
    for line, values in zip(lines, reduced, strict=True):
        d = _path(values, x_of, bottom_value, max(top_value, bottom_value + 1e-9), TOP)
        if d:
            out.append(f'<path d="{d}" fill="none" stroke="{escape(line.color)}" stroke-width="1.5" '
                       'stroke-linejoin="round"/>')
    out.append("</svg>")
    return "".join(out)


def _lowest(lines: Sequence[Line], start: float, end: float, count: int) -> list[list[float | None]]:
    """The lowest value per column of each line (the y axis goes below 0 when one is negative)."""
    flipped = [columns([(ts, None if v is None else -v) for ts, v in line.points], start, end, count) for line in lines]
    return [[None if v is None else -v for v in values] for values in flipped]


def plot_figure(svg: str, *, source: str, title: str, kind: Unit | str, data_format: Literal["buckets", "series"],
                series: Sequence[tuple[str, str]] = (), y_max: float | None = None, wide: bool = False) -> str:
    """`svg` in the markup plot.js draws over: a figure saying where its JSON is (`source`, fetched with
    `?window=`), in which format, which series (name, label) and how values read (`kind`: a Unit or a unit)."""
    attributes = {"data-plot-src": source, "data-plot-format": data_format, "data-plot-title": title,
                  "data-plot-kind": kind if kind in UNIT_KINDS else display_unit(kind),
                  "data-plot-series": " ".join(f"{name}:{label}" for name, label in series),
                  "data-plot-ymax": "" if y_max is None else f"{y_max:g}"}
    shown = " ".join(f'{key}="{escape(value)}"' for key, value in attributes.items() if value)
    return f'<figure class="plot-box{" wide" if wide else ""}" {shown}>{svg}</figure>'


UNIT_KINDS = ("percent", "bytes", "bytes_per_s", "per_s", "count")


def plot_group(plots: Sequence[str], *, source: str, window: str, window_links: str, windows: Sequence[str]) -> str:
    """Plots side by side; with `source`, a group plot.js redraws with a selector of `windows`: links that reload
    the page with `?<window_links>=<window>` when the page takes that, else buttons the script makes."""
    # the plots have a fixed size and flow side by side: no style attribute, which the pages' CSP would refuse
    if not source:
        return '<div class="node-plots">' + " ".join(plots) + "</div>"
    window = window if window in windows else windows[-1]
    group = f' data-plot-group="" data-plot-windows="{" ".join(windows)}" data-plot-window="{window}"'
    links = ""
    if window_links:
        active = ' class="active"'
        links = '<nav class="windows">' + " · ".join(
            f'<a href="?{escape(window_links)}={name}" data-window="{name}"{active if name == window else ""}>'
            f"{name}</a>" for name in windows) + "</nav>"
    return f'<div class="node-plots"{group}>' + links + " ".join(plots) + "</div>"
RESOURCE_WINDOWS = ("15m", "1h", "24h")


def resource_plots_html(series: dict[str, list[Point]], *, start: float, end: float, step: float,
                        source: str = "", window: str = "", window_links: str = "",
                        windows: Sequence[str] = RESOURCE_WINDOWS) -> str:
    """The CPU, memory, disk and network plots of one node, side by side. With `source` (the JSON of those series,
    gateway.wire.SERIES by name) the page's script redraws them from there, with a selector of `windows`: links that
    reload the page with `?<window_links>=<window>` when the page takes that, else buttons the script makes;
    `window` is the one shown."""

    def plot(title: str, unit: Unit, names: list[tuple[str, str]], y_max: float | None = None,
             note: str = "") -> str:
        lines = [Line(label, series.get(name, []), COLORS[i]) for i, (name, label) in enumerate(names)]
        svg = line_plot(title, lines, start=start, end=end, step=step, unit=unit, y_max=y_max, note=note)
        if not source:
            return svg
        return plot_figure(svg, source=source, title=title, kind=unit, data_format="series", series=names,
                           y_max=y_max)

    def latest(name: str) -> float | None:
        return next((value for _, value in reversed(series.get(name, [])) if value is not None), None)

    disk = latest("disk_percent")
    used = latest("memory_used")
    plots = [
        plot("CPU", "percent", [("cpu_percent", "cpu")], y_max=100),
        plot("Memory", "percent", [("memory_percent", "used")], y_max=100,
             note=format_value(used, "bytes") if used is not None else ""),
        plot("Disk I/O", "bytes_per_s", [("disk_read_bps", "read"), ("disk_write_bps", "write")],
             note=f"{format_value(disk, 'percent')} full" if disk is not None else ""),
        plot("Network", "bytes_per_s", [("net_rx_bps", "rx"), ("net_tx_bps", "tx")]),
    ]
    return plot_group(plots, source=source, window=window, window_links=window_links, windows=windows)


MAX_APP_LINES = 4  # instances drawn in one app plot (the newest ones by their series' order)


def app_series_name(figure: str, key: str) -> str:
    """The name of one instance's series in the apps' plot JSON: `<figure>@<key>` (key: `<node>/<instance>` at
    the registry, the instance id on the node)."""
    return f"{figure}@{key}"


def app_plots_html(series: dict[str, list[Point]], instances: Sequence[tuple[str, str]], *, start: float,
                   end: float, step: float, source: str = "", window: str = "", window_links: str = "",
                   windows: Sequence[str] = RESOURCE_WINDOWS) -> str:
    """The CPU, memory, disk and network plots of an app's instances (`instances`: (key, label), one line each,
    at most MAX_APP_LINES), from series named by app_series_name — the network plot only when some instance has
    network figures; with `source` the page's script redraws them from there, with a window selector as
    resource_plots_html has."""
    shown = list(instances)[:MAX_APP_LINES]

    def plot(title: str, unit: Unit, figures: list[tuple[str, str]]) -> str:
        names = [(app_series_name(figure, key), f"{label}\u00b7{suffix}" if suffix else label)
                 for key, label in shown for figure, suffix in figures]
        lines = [Line(label, series.get(name, []), COLORS[i % len(COLORS)]) for i, (name, label) in enumerate(names)]
        svg = line_plot(title, lines, start=start, end=end, step=step, unit=unit)
        if not source:
            return svg
        return plot_figure(svg, source=source, title=title, kind=unit, data_format="series", series=names)

    plots = [plot("CPU (% of a core)", "percent", [("cpu_percent", "")]),
             plot("Memory", "bytes", [("memory_bytes", "")]),
             plot("Disk I/O", "bytes_per_s", [("disk_read_bps", "read"), ("disk_write_bps", "write")])]
    if any(value is not None for key, _ in shown for figure in ("net_rx_bps", "net_tx_bps")
           for _, value in series.get(app_series_name(figure, key), [])):
        # apps on the host's network have no network figures of their own: no plot rather than an empty one
        plots.append(plot("Network", "bytes_per_s", [("net_rx_bps", "rx"), ("net_tx_bps", "tx")]))
    return plot_group(plots, source=source, window=window, window_links=window_links, windows=windows)
