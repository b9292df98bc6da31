"""Axes and legends that show their data: readable log ticks, whole-number epochs,
legends beside the frame, and ranges fitted to the data.

Bokeh's own ``LogTicker`` puts ticks only at powers of ten once a range spans two
decades (its mantissas are ignored there), and below two decades it falls back to
linear ticks that can miss the data altogether (an lr near 0.14 on a range up to 1
gets the ticks 0.5 and 1 only).  :func:`log_ticker` chooses, for whatever range
is on screen (zoom included), the richest of

1. powers of ten (every n-th one when the range spans many decades),
2. mantissas 1, 2, 5 in every decade,
3. mantissas 1 .. 9 in every decade,
4. evenly spaced 1-2-5 steps (a range narrower than about a decade),

that keeps at most ``max_ticks`` ticks (the last only when the others give
fewer than four ticks).  :func:`number_formatter` writes those ticks compactly
(``0.14``, ``1000``, ``2e-5``, ``1.3e5``) where Bokeh's log formatter would round 0.5 to
``10⁰``.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from bokeh.models import (BasicTicker, CustomJSTickFormatter, CustomJSTicker, Legend, LinearScale,
                          NumeralTickFormatter, Range1d)

#: at most this many major ticks on a log axis (a 260-px figure fits about 8 labels)
MAX_LOG_TICKS = 8

_LOG_MAJOR = """
const lo = Math.min(cb_data.start, cb_data.end), hi = Math.max(cb_data.start, cb_data.end);
if (!(lo > 0) || !isFinite(hi) || !(hi > lo)) return [];
const span = Math.log10(hi / lo);
const e0 = Math.floor(Math.log10(lo)), e1 = Math.ceil(Math.log10(hi));
const inside = (t) => t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9);
function decades(mantissas, stride) {
  const ticks = [];
  for (let e = e0; e <= e1; e++) {
    if (((e % stride) + stride) % stride != 0) continue;
    for (const m of mantissas) {
      const t = Number((m * 10 ** e).toPrecision(12));
      if (inside(t)) ticks.push(t);
    }
  }
  return ticks;
}
// 1) many decades: every n-th power of ten
if (span > max_ticks - 1) return decades([1], Math.ceil(span / (max_ticks - 1)));
// 2)-3) the richest mantissa set that stays within max_ticks
let best = decades([1], 1);
for (const ms of [[1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
  const ticks = decades(ms, 1);
  if (ticks.length > max_ticks) break;
  best = ticks;
}
if (best.length >= 4 || span >= 1.5) return best;
// 4) a narrow range: evenly spaced 1-2-5 steps
const raw = (hi - lo) / (max_ticks - 2);
const p = 10 ** Math.floor(Math.log10(raw));
const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
const ticks = [];
for (let i = Math.ceil(lo / step); i * step <= hi * (1 + 1e-9); i++) {
  ticks.push(Number((i * step).toPrecision(12)));
}
return ticks.length > best.length ? ticks : best;
"""

_LOG_MINOR = """
const lo = Math.min(cb_data.start, cb_data.end), hi = Math.max(cb_data.start, cb_data.end);
if (!(lo > 0) || !isFinite(hi) || !(hi > lo)) return [];
const span = Math.log10(hi / lo);
if (span < 0.5 || span > 6) return [];
const minor = [];
for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
  for (let m = 1; m <= 9; m++) {
    const t = m * 10 ** e;
    if (t >= lo && t <= hi) minor.push(t);
  }
}
return minor;
"""

_NUMBER = """
// the fewest significant digits (2 .. 8) that tell every tick apart, found once per axis draw
if (this.digits === undefined) {
  this.digits = 8;
  for (let d = 2; d <= 8; d++) {
    const s = new Set(ticks.map((t) => t.toPrecision(d)));
    if (s.size == ticks.length) { this.digits = d; break; }
  }
}
const a = Math.abs(tick);
if (a == 0) return "0";
if (a >= 1e-3 && a < 1e4) return String(Number(tick.toPrecision(this.digits)));
const [mant, expo] = tick.toExponential(this.digits - 1).split("e");
return String(Number(mant)) + "e" + Number(expo);
"""


def log_ticker(max_ticks: int = MAX_LOG_TICKS) -> CustomJSTicker:
    """Ticks for a log axis, chosen in the browser for the range on screen (module doc)."""
    return CustomJSTicker(major_code=_LOG_MAJOR, minor_code=_LOG_MINOR, args={"max_ticks": max_ticks})


def number_formatter() -> CustomJSTickFormatter:
    """Compact tick labels: ``0.14``, ``250``, ``2e-5``, ``1e4``; as few digits as tell them apart."""
    return CustomJSTickFormatter(code=_NUMBER)


def readable_log_axis(axis, max_ticks: int = MAX_LOG_TICKS) -> None:
    """Give a log axis (``p.yaxis``) :func:`log_ticker` and :func:`number_formatter`."""
    axis.ticker = log_ticker(max_ticks)
    axis.formatter = number_formatter()


def integer_axis(axis) -> None:
    """Whole-number ticks only (epochs, steps): 1, 2, 5, 10, ... apart, never 0.2."""
    axis.ticker = BasicTicker(min_interval=1, desired_num_ticks=6)
    axis.formatter = NumeralTickFormatter(format="0,0")


def legend_outside(p, place: str = "right", *, legend: Legend | None = None) -> Legend | None:
    """Move the figure's legend (or ``legend``) beside the frame; a click hides a line.

    A legend inside the frame covers the data it names: beside it, it covers nothing.
    """
    if legend is None:
        if not p.legend:
            return None
        legend = p.legend[0]
        p.center = [r for r in p.center if r is not legend]
    legend.click_policy = "hide"
    legend.label_text_font_size = "8pt"
    legend.spacing = 0
    legend.glyph_height = legend.label_height = 12
    legend.padding = legend.margin = 4
    legend.border_line_alpha = 0
    if place in ("above", "below"):
        legend.orientation = "horizontal"
    p.add_layout(legend, place)
    return legend


def fitted_range(values: Iterable[float], *, log: bool = False, pad: float = 0.08,
                 default: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """(start, end) around the finite ``values`` (the positive ones on a log axis),
    padded by ``pad`` of the span on each side, in log space on a log axis."""
    v = np.asarray([x for x in values], dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)] if log else v[np.isfinite(v)]
    if not v.size:
        return default
    lo, hi = (np.log10(v.min()), np.log10(v.max())) if log else (v.min(), v.max())
    span = hi - lo or (0.5 if log else max(abs(hi), 1.0) * 0.1)
    lo, hi = lo - pad * span, hi + pad * span
    return (float(10 ** lo), float(10 ** hi)) if log else (float(lo), float(hi))


#: the extra y range the step marks are drawn in: 0 .. 1 over the frame, whatever the y axis
MARKS_RANGE = "marks"


def add_marks_range(p) -> str:
    """A linear 0..1 y range over the whole frame (on log axes too), for rugs and stripes."""
    if MARKS_RANGE not in p.extra_y_ranges:
        p.extra_y_ranges = {**p.extra_y_ranges, MARKS_RANGE: Range1d(0, 1)}
        p.extra_y_scales = {**p.extra_y_scales, MARKS_RANGE: LinearScale()}
    return MARKS_RANGE
