"""How each figure of a run draws its sources (:class:`~lipschitz_lab.ui.figures.RunFigures`
owns the sources and streams into them).

Every figure shows its own data: losses, rates, bounds and gaps on log axes with
readable ticks (:mod:`lipschitz_lab.ui.axes`), so one spike does not flatten the
rest; whole-number ticks on step and epoch axes; legends beside the frame, where
a click hides a line; and the steps whose L is 0 (K_z = 0) marked by a red stripe
and a rug, since such steps vanish from a log axis.
"""
from __future__ import annotations

import math

from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem
from bokeh.palettes import Category10_10, Viridis256
from bokeh.plotting import figure

from lipschitz_lab.ui.axes import add_marks_range, integer_axis, legend_outside, readable_log_axis

#: figure titles, by key (tests and the report look for these)
TITLES = {
    "loss": "Loss (train, val per epoch; log)",
    "acc": "Accuracy (train, val per epoch)",
    "lr": "Learning rate lr = 1/L and lr_smooth = c/β (log)",
    "K_z": "K_z over steps",
    "grad": "Measured grad_last against the bound L (log)",
    "gap": "Gap: grad_last / L (below 1: the bound holds; log)",
    "layers": "Per-layer max |grad| against the last layer's (eq. 1; log)",
    "smooth": "Smoothness β = S₂·σ_max([A,1])² beside L (log)",
    "edge": "Edge of stability: lr·λ_max on the measured steps (log)",
    "curv": "lr beside 1/L (gradient bound) and 1/λ_max (curvature) (log)",
}

TOOLS = "pan,box_zoom,wheel_zoom,reset,save"
#: up to this many layers get a legend entry each; deeper models get entries for blocks of layers
MAX_LAYER_ITEMS = 12
MARK_COLOR = "#c51b7d"      # magenta: no data line uses it (L is red)
MARK_ALPHA = 0.25


def new_figure(key: str, x_label: str, y_label: str, size: dict, *, y_log: bool = False, x_range=None):
    """A figure titled ``TITLES[key]``: integer x ticks, readable log y ticks when ``y_log``."""
    kw = dict(title=TITLES[key], x_axis_label=x_label, y_axis_label=y_label, tools=TOOLS,
              toolbar_location="above", y_axis_type="log" if y_log else "linear", **size)
    if x_range is not None:
        kw["x_range"] = x_range
    p = figure(**kw)
    p.title.text_font_size = "11pt"
    integer_axis(p.xaxis)          # steps and epochs are whole numbers
    if y_log:
        readable_log_axis(p.yaxis)
    return p


def draw_marks(p, marks: ColumnDataSource) -> None:
    """A faint red stripe over the frame's height and a rug tick at its foot for every
    marked step; the legend says why (``marks.why``), once per reason.

    Call it after the data lines: the y range is fitted to those lines only (a
    DataRange1d would otherwise take the stripes' 0 .. 1 for data).
    """
    if hasattr(p.y_range, "renderers"):
        p.y_range.renderers = list(p.renderers)
    y = add_marks_range(p)
    p.segment(x0="step", x1="step", y0=0, y1=1, y_range_name=y, source=marks, color=MARK_COLOR,
              alpha=MARK_ALPHA, line_width=2, legend_field="why")
    p.scatter("step", 0.03, y_range_name=y, source=marks, marker="triangle", size=8, color=MARK_COLOR)


def epoch_figures(E: ColumnDataSource, size: dict) -> dict:
    """Loss (log) and accuracy per epoch, x = epochs done."""
    f = {}
    p = f["loss"] = new_figure("loss", "epochs done", "loss", size, y_log=True)
    for col, color, label in (("train_loss", "#1f77b4", "train"), ("val_loss", "#ff7f0e", "val")):
        p.line("epochs_done", col, source=E, color=color, line_width=2, legend_label=label)
        p.scatter("epochs_done", col, source=E, color=color, size=5, legend_label=label)
    p.add_tools(HoverTool(tooltips=[("epoch", "@epochs_done"), ("train", "@train_loss{0.000e}"),
                                    ("val", "@val_loss{0.000e}")]))
    legend_outside(p)
    p = f["acc"] = new_figure("acc", "epochs done", "accuracy", size, x_range=f["loss"].x_range)
    for col, color, label in (("train_acc", "#1f77b4", "train"), ("val_acc", "#ff7f0e", "val")):
        p.line("epochs_done", col, source=E, color=color, line_width=2, legend_label=label)
        p.scatter("epochs_done", col, source=E, color=color, size=5, legend_label=label)
    legend_outside(p)
    return f


def rate_figures(S: ColumnDataSource, marks: ColumnDataSource, size: dict) -> dict:
    """lr and lr_smooth = c/β (log), and K_z, over steps."""
    f = {}
    p = f["lr"] = new_figure("lr", "step", "lr", size, y_log=True)
    p.line("step", "lr", source=S, color="#2ca02c", line_width=2, legend_label="lr (in use)")
    p.line("step", "lr_smooth", source=S, color="#9467bd", line_width=2, line_dash="dashed",
           legend_label="lr_smooth = c/β")
    p.add_tools(HoverTool(tooltips=[("step", "@step"), ("epoch", "@epoch"), ("lr", "@lr{0.000e}"),
                                    ("lr_smooth", "@lr_smooth{0.000e}")]))
    draw_marks(p, marks)
    legend_outside(p)
    p = f["K_z"] = new_figure("K_z", "step", "K_z", size, x_range=f["lr"].x_range)
    p.line("step", "K_z", source=S, color="#9467bd", line_width=2, legend_label="K_z")
    draw_marks(p, marks)
    legend_outside(p)
    return f


def bound_figures(S: ColumnDataSource, marks: ColumnDataSource, size: dict, steps_x) -> dict:
    """grad_last against L in every variant, the gaps, and β beside L; all log."""
    f = {}
    p = f["grad"] = new_figure("grad", "step", "max |∂E/∂w|, L", size, y_log=True, x_range=steps_x)
    p.line("step", "grad_last", source=S, color="black", line_width=2, legend_label="grad_last (measured)")
    p.line("step", "L", source=S, color="#d62728", line_width=2, legend_label="L (in use)")
    p.line("step", "L_paper", source=S, color="#ff7f0e", line_dash="dashed", line_width=2, legend_label="L_paper")
    p.line("step", "L_corrected", source=S, color="#17becf", line_dash="dotted", line_width=2,
           legend_label="L_corrected")
    p.add_tools(HoverTool(tooltips=[("step", "@step"), ("grad_last", "@grad_last{0.000e}"), ("L", "@L{0.000e}"),
                                    ("L_paper", "@L_paper{0.000e}"), ("L_corrected", "@L_corrected{0.000e}")]))
    draw_marks(p, marks)
    legend_outside(p)

    p = f["gap"] = new_figure("gap", "step", "grad_last / L", size, y_log=True, x_range=steps_x)
    p.line("step", "gap", source=S, color="#d62728", line_width=2, legend_label="grad_last / L (in use)")
    p.line("step", "gap_paper", source=S, color="#ff7f0e", line_dash="dashed",
           legend_label="grad_last / L_paper")
    p.line("step", "gap_corrected", source=S, color="#17becf", line_dash="dotted",
           legend_label="grad_last / L_corrected")
    # a glyph, not a Span: the y range then always reaches 1, the level the title speaks of
    p.hspan(y=[1.0], line_color="gray", line_dash="dashed", line_width=1.5, legend_label="1: L is tight")
    draw_marks(p, marks)
    legend_outside(p)

    p = f["smooth"] = new_figure("smooth", "step", "β, L", size, y_log=True, x_range=steps_x)
    p.line("step", "beta", source=S, color="#9467bd", line_width=2, legend_label="β = S₂·σ_max²")
    p.line("step", "L", source=S, color="#d62728", line_width=2, legend_label="L (in use)")
    p.add_tools(HoverTool(tooltips=[("step", "@step"), ("β", "@beta{0.000e}"), ("σ_max", "@sigma_max{0.000e}"),
                                    ("L", "@L{0.000e}")]))
    draw_marks(p, marks)
    legend_outside(p)
    return f


def layers_figure(size: dict, steps_x) -> tuple:
    """The per-layer figure and its (empty) legend beside the frame; the lines come later."""
    p = new_figure("layers", "step", "max |∂E/∂w| of the layer", size, y_log=True, x_range=steps_x)
    legend = legend_outside(p, legend=Legend(items=[]))
    return p, legend


def layer_style(names: list[str]) -> list[tuple[str, str, float]]:
    """(label, colour, width) per layer: the last layer (the bound's) black and bold;
    deeper models coloured by depth."""
    n, last = len(names), len(names) - 1
    palette = Category10_10 if n <= 10 else [Viridis256[int(i * 220 / max(n - 2, 1))] for i in range(n)]
    style = []
    for i, name in enumerate(names):
        label = f"layer {name}" if name.isdigit() else name     # nn.Sequential names its layers 0, 1, ...
        if i == last:
            style.append((f"{label} (last layer)", "black", 3.0))
        else:
            style.append((label, palette[i % len(palette)], 1.5))
    return style


def layer_legend(labels: list[str], renderers: list) -> list[LegendItem]:
    """One entry per layer up to :data:`MAX_LAYER_ITEMS`; else the last layer alone and
    the others in at most ``MAX_LAYER_ITEMS - 1`` blocks of consecutive layers (a click
    hides a block): a legend taller than its figure would hide the entries below."""
    if len(labels) <= MAX_LAYER_ITEMS:
        return [LegendItem(label=t, renderers=[r]) for t, r in zip(labels, renderers)]
    rest = len(labels) - 1
    size = math.ceil(rest / (MAX_LAYER_ITEMS - 1))
    items = [LegendItem(label=f"{labels[i]} … {labels[min(i + size, rest) - 1]}",
                        renderers=renderers[i:min(i + size, rest)]) for i in range(0, rest, size)]
    return items + [LegendItem(label=labels[-1], renderers=[renderers[-1]])]
