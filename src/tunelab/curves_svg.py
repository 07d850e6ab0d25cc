"""Learning curves as a small self-contained SVG (MLflow's artifact view shows it as an image).

Written directly rather than through matplotlib: it takes about a millisecond, where matplotlib
spends ~0.1 s of CPU per figure, which every run and every sweep trial would pay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
PANEL_W, PANEL_H = 340, 250
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 26, 38  # plot margins inside a panel
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


@dataclass
class Panel:
    title: str
    series: dict[str, Sequence[float]]
    log: bool = False
    marker: int | None = None  # epoch (1-based) drawn as a dashed vertical line
    marker_label: str = "selected epoch"
    legend_at: str = "top"  # top | bottom (right-hand corner)


def learning_curves(history: dict[str, list[float]], best_epoch: int | None = None) -> str:
    """Loss, accuracy and learning rate per epoch; the selected (best) epoch is marked."""
    marker = best_epoch + 1 if best_epoch is not None and best_epoch >= 0 else None

    def pick(*keys: str) -> dict[str, list[float]]:
        return {k: history[k] for k in keys if k in history}

    return render(
        [
            Panel("loss", pick("train/loss", "val/loss"), marker=marker),
            Panel("accuracy", pick("train/acc", "val/acc"), marker=marker, legend_at="bottom"),
            Panel("learning rate", pick("opt/lr"), log=True),
        ]
    )


def render(panels: list[Panel]) -> str:
    """Panels side by side, sharing nothing but the height."""
    width = PANEL_W * max(len(panels), 1)
    body = [_panel(p, i * PANEL_W) for i, p in enumerate(panels)]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" '
        f'viewBox="0 0 {width} {PANEL_H}" {FONT} font-size="11">\n'
        f'<rect width="{width}" height="{PANEL_H}" fill="white"/>\n' + "".join(body) + "</svg>\n"
    )


def _panel(panel: Panel, x0: float) -> str:
    n = max((len(v) for v in panel.series.values()), default=0)
    xs = (0.5, 1.5) if n <= 1 else (1.0, float(n))
    transform = math.log10 if panel.log else float
    lines = [_segments(series, transform, panel.log) for series in panel.series.values()]
    values = [y for runs in lines for run in runs for _, y in run]
    lo, hi = _padded(min(values, default=0.0), max(values, default=1.0))
    box = (x0 + LEFT, TOP, PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM)

    def sx(x: float) -> float:
        return box[0] + (x - xs[0]) / (xs[1] - xs[0]) * box[2]

    def sy(y: float) -> float:
        return box[1] + box[3] - (y - lo) / (hi - lo) * box[3]

    out = [
        f'<text x="{box[0] + box[2] / 2:.1f}" y="{TOP - 9}" text-anchor="middle" '
        f'font-size="13">{escape(panel.title)}</text>\n',
        f'<rect x="{box[0]:.1f}" y="{box[1]}" width="{box[2]}" height="{box[3]}" '
        'fill="none" stroke="#444" stroke-width="0.8"/>\n',
    ]
    for t in _ticks(xs[0], xs[1], integer=True):
        out.append(_tick(sx(t), box[1] + box[3], f"{t:g}", vertical=False))
    for t in _log_ticks(lo, hi) if panel.log else _ticks(lo, hi):
        label = f"1e{t:g}" if panel.log else f"{t:.4g}"
        out.append(_tick(box[0], sy(t), label, vertical=True))
    out.append(
        f'<text x="{box[0] + box[2] / 2:.1f}" y="{PANEL_H - 6}" text-anchor="middle">epoch</text>\n'
    )
    for i, runs in enumerate(lines):
        color = COLORS[i % len(COLORS)]
        for run in runs:
            points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
            out.append(
                f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"/>\n'
            )
    legend = [(name, COLORS[i % len(COLORS)], "") for i, name in enumerate(panel.series)]
    if panel.marker is not None and xs[0] <= panel.marker <= xs[1]:
        mx = sx(panel.marker)
        dash = 'stroke-dasharray="4 3"'
        out.append(
            f'<line x1="{mx:.1f}" y1="{box[1]}" x2="{mx:.1f}" y2="{box[1] + box[3]}" '
            f'stroke="grey" stroke-width="0.9" {dash}/>\n'
        )
        legend.append((panel.marker_label, "grey", dash))
    out += _legend(legend, box[0] + box[2] - 6, box[1] + 6, box[1] + box[3] - 6, panel.legend_at)
    return "".join(out)


def _usable(v: float, positive: bool) -> bool:
    return math.isfinite(v) and (v > 0 or not positive)


def _segments(series: Sequence[float], transform, positive: bool) -> list[list[tuple[int, float]]]:
    """Runs of consecutive drawable points; a NaN/inf (or a non-positive value on a log axis)
    breaks the line instead of being drawn."""
    runs: list[list[tuple[int, float]]] = [[]]
    for epoch, v in enumerate(series, start=1):
        if _usable(v, positive):
            runs[-1].append((epoch, transform(v)))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _padded(lo: float, hi: float) -> tuple[float, float]:
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.05 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, integer: bool = False, target: int = 5) -> list[float]:
    """Round (1, 2, 5 x 10^k) tick values inside [lo, hi]."""
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    count = int((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(count)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Whole decades inside [lo, hi] (in log10 units); round ticks when the range is under one."""
    decades = list(range(math.ceil(lo), math.floor(hi) + 1))
    return [float(d) for d in decades] if decades else _ticks(lo, hi)


def _tick(x: float, y: float, label: str, vertical: bool) -> str:
    if vertical:  # a y-axis tick: mark left of the axis, label further left
        return (
            f'<line x1="{x - 4:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#444"/>'
            f'<text x="{x - 7:.1f}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>\n'
        )
    return (
        f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + 4:.1f}" stroke="#444"/>'
        f'<text x="{x:.1f}" y="{y + 16:.1f}" text-anchor="middle">{escape(label)}</text>\n'
    )


def _legend(
    entries: list[tuple[str, str, str]], right: float, top: float, bottom: float, at: str
) -> list[str]:
    if not entries:
        return []
    width, height = 24 + 6.2 * max(len(name) for name, _, _ in entries), 8 + 14 * len(entries)
    x, top = right - width, top if at == "top" else bottom - height
    out = [
        f'<rect x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" height="{height}" '
        'fill="white" fill-opacity="0.85" stroke="#ccc"/>\n'
    ]
    for i, (name, color, dash) in enumerate(entries):
        y = top + 12 + 14 * i
        out.append(
            f'<line x1="{x + 4:.1f}" y1="{y - 3:.1f}" x2="{x + 18:.1f}" y2="{y - 3:.1f}" '
            f'stroke="{color}" stroke-width="1.6" {dash}/>'
            f'<text x="{x + 22:.1f}" y="{y:.1f}" font-size="10">{escape(name)}</text>\n'
        )
    return out
