"""The run figures show their own data: checked on the Bokeh models, then in Chromium.

The run drawn here has what hid data before: a loss spike of 1.3e5 among losses
near 1, an lr near 0.14 with a clamp to 1 at the K_z = 0 steps, steps whose L is
0 (they vanish from a log axis), β / lr_smooth = c/β beside L and 1/L, and the
curvature measured every 10th step (``sharpness_every``) with heavy-ball momentum's
edge limit 3.8: lr·λ_max crosses 2, then 3.8.
Screenshots land in test-artifacts/figures/ (git-ignored).
"""
from __future__ import annotations

import math

import pytest
from bokeh.models import BasicTicker, CustomJSTicker, Div, Legend, LogScale, NumeralTickFormatter

from bokeh_page import BokehPage, chromium, disjoint, hex_rgb, write_html, x_axis, y_axis
from lipschitz_lab.records import epoch_record, step_record
from lipschitz_lab.ui import axes
from lipschitz_lab.ui.columns import MARK_REASONS, mark_columns, step_columns
from lipschitz_lab.ui.figures import MAX_LAYER_ITEMS, RunFigures, layer_legend, layer_style
from lipschitz_lab.ui.run_plots import MARK_ALPHA, MARK_COLOR, TITLES

KZ0 = (50, 51, 52, 200)           # steps with K_z = 0: L = 0, lr clamped to max_lr = 1
SPIKE_EPOCH = 4
LOG_FIGURES = ("loss", "lr", "grad", "gap", "layers", "smooth", "edge", "curv")
EVERY, LIMIT = 10, 3.8            # λ_max measured every 10th step; heavy ball μ = 0.9: 2(1 + μ)


def sharpness(s: int, lr: float) -> dict:
    """The instruments' fields of step ``s``: λ_max from 8 to 28 on every 10th step, edge = lr·λ_max."""
    lam = 8.0 + 20.0 * s / 300 if s % EVERY == 0 else None
    return dict(lambda_max=lam, edge=None if lam is None else lr * lam, edge_limit=LIMIT)


def hard_run(n: int = 300, per_epoch: int = 30, smooth: bool = True, curvature: bool = True) -> list[dict]:
    recs = []
    for s in range(n):
        kz0 = s in KZ0
        L = 0.0 if kz0 else 7.0 + 0.3 * math.sin(s / 7)
        beta = 20 + math.cos(s / 9)
        extra = dict(beta=beta, sigma_max=3.0, lr_smooth=1 / beta) if smooth and not kz0 else {}
        extra.update(sharpness(s, 1.0 if kz0 else 1 / L) if curvature else {})
        recs.append(step_record(step=s, epoch=s // per_epoch, lr=1.0 if kz0 else 1 / L, K_z=0.0 if kz0 else 7.0,
                                L=L, bound="paper", grad_last=0.05, grad_layers={"0": 0.03, "2": 0.04, "4": 0.05},
                                clamped="K_z=0" if kz0 else None, L_paper=L, L_corrected=1.1 * L,
                                loss=2.0 * math.exp(-s / 100) + 0.1, acc=min(1.0, s / 200), **extra))
        if s % per_epoch == per_epoch - 1:
            e = s // per_epoch
            train_loss = 1.3e5 if e == SPIKE_EPOCH else 1.5 / (e + 1)
            recs.append(epoch_record(epoch=e, step=s + 1, lr=1 / 7, train_loss=train_loss,
                                     train_acc=0.5 + 0.04 * e, val_loss=1.6 / (e + 1), val_acc=0.45 + 0.04 * e))
    return recs


# -- the Bokeh models -------------------------------------------------------------------------

def test_losses_rates_bounds_and_gaps_sit_on_log_axes_with_the_readable_ticker():
    f = RunFigures().figures
    for key in LOG_FIGURES:
        assert isinstance(f[key].y_scale, LogScale), key
        (ax,) = f[key].yaxis
        assert isinstance(ax.ticker, CustomJSTicker) and ax.ticker.args == {"max_ticks": axes.MAX_LOG_TICKS}, key
        assert ax.ticker.major_code == axes.log_ticker().major_code
    for key in ("acc", "K_z"):
        assert not isinstance(f[key].y_scale, LogScale), key


def test_step_and_epoch_axes_tick_whole_numbers():
    for key, p in RunFigures().figures.items():
        (ax,) = p.xaxis
        assert isinstance(ax.ticker, BasicTicker) and ax.ticker.min_interval == 1, key
        assert isinstance(ax.formatter, NumeralTickFormatter) and ax.formatter.format == "0,0", key


def test_every_legend_sits_beside_the_frame_and_a_click_hides_its_line():
    for key, p in RunFigures().figures.items():
        assert not [r for r in p.center if isinstance(r, Legend)], f"{key}: a legend inside the frame"
        (legend,) = [r for r in p.right if isinstance(r, Legend)]
        assert legend.click_policy == "hide", key


def test_the_steps_with_L_zero_are_marked_on_every_step_figure():
    recs = hard_run()
    cols = mark_columns(recs)
    assert cols["step"] == list(KZ0) and set(cols["why"]) == {MARK_REASONS["K_z=0"]}
    # an L of 0 or below marks the step even when the record gives no reason
    bare = [step_record(step=s, epoch=0, lr=0.1, K_z=1.0, L=L, bound="paper", grad_last=0.1, grad_layers={},
                        clamped=None) for s, L in enumerate((1.0, 0.0, -2.0))]
    assert mark_columns(bare) == {"step": [1.0, 2.0], "why": [MARK_REASONS["K_z=0"], MARK_REASONS["L<0"]]}
    figs = RunFigures()
    figs.load(recs)
    for key in ("lr", "K_z", "grad", "gap", "smooth"):
        p = figs.figures[key]
        marks = [r for r in p.renderers if r.data_source is figs.marks]
        assert len(marks) == 2 and all(r.y_range_name == axes.MARKS_RANGE for r in marks), key
        assert p.extra_y_ranges[axes.MARKS_RANGE].start == 0 and p.extra_y_ranges[axes.MARKS_RANGE].end == 1
        # the y axis fits the data lines, not the marks' 0 .. 1
        assert p.y_range.renderers and not set(p.y_range.renderers) & set(marks), key


def test_the_live_stream_keeps_every_marked_step_whatever_the_stride():
    figs = RunFigures(max_points=10)
    figs.plan(300)                       # stride 30: steps 50, 51, 52 and 200 are not on it
    for i in range(0, 300, 37):
        figs.add_steps([r for r in hard_run()[i:i + 37] if r["kind"] == "step"])
    assert list(figs.marks.data["step"]) == list(KZ0)
    assert not set(KZ0) & set(list(figs.steps.data["step"]))


def test_beta_and_lr_smooth_are_drawn_only_for_runs_that_carry_them():
    figs = RunFigures()
    figs.load(hard_run())
    cols = figs.steps.data
    assert cols["beta"][0] == pytest.approx(21.0) and cols["lr_smooth"][0] == pytest.approx(1 / 21)
    assert math.isnan(cols["beta"][50])                     # a K_z = 0 step without β: a gap
    assert figs.figures["smooth"].visible
    (item,) = [i for i in figs.figures["lr"].legend[0].items if "lr_smooth" in getattr(i.label, "value", "")]
    assert item.visible and {r.glyph.y for r in item.renderers} == {"lr_smooth"}

    old = RunFigures()
    old.load(hard_run(smooth=False))                       # a run from before the smoothness bound
    assert all(math.isnan(v) for v in old.steps.data["beta"] + old.steps.data["lr_smooth"])
    assert not old.figures["smooth"].visible
    shown = [i for i in old.figures["lr"].legend[0].items if i.visible]
    assert not [i for i in shown if "lr_smooth" in getattr(i.label, "value", "")]

    live = RunFigures()                                     # the live panel decides on the first records
    live.add_steps([r for r in hard_run()[:5] if r["kind"] == "step"])
    assert live.figures["smooth"].visible
    live.reset()
    live.add_steps([r for r in hard_run(smooth=False)[:5] if r["kind"] == "step"])
    assert not live.figures["smooth"].visible


def test_the_stability_figures_draw_every_measured_step_and_the_run_s_edge_limit():
    steps = [r for r in hard_run() if r["kind"] == "step"]
    measured = [r for r in steps if r["lambda_max"] is not None]
    assert len(measured) == 30
    for live in (False, True):
        figs = RunFigures(max_points=20)
        if live:                             # stride 15 from the plan: the steps' source keeps 0, 15, 30, ...
            figs.plan(300)
            for i in range(0, 300, 37):
                figs.add_steps(steps[i:i + 37])
        else:
            figs.load(hard_run())            # 300 steps over 20 rows: every 15th; 30 measured: every 2nd
        # live: every measured step until max_points rows, then the stride doubles
        kept = measured[:20] if live else measured[::2]
        got = {k: list(v) for k, v in figs.stability.source.data.items()}
        assert got["step"][:len(kept)] == [r["step"] for r in kept], (live, got["step"])
        assert got["edge"][:len(kept)] == pytest.approx([r["lr"] * r["lambda_max"] for r in kept], rel=1e-12)
        assert got["inv_lambda"][:len(kept)] == pytest.approx([1 / r["lambda_max"] for r in kept], rel=1e-12)
        assert set(figs.stability.source.data["step"]) - set(figs.steps.data["step"]), "none off the stride"
        assert figs.stability.limit.data["y"] == [LIMIT] and figs.figures["edge"].visible
        assert figs.figures["curv"].visible
        drawn = {getattr(r.glyph, "y", None) for r in figs.figures["curv"].renderers}
        assert {"lr", "inv_L", "inv_lambda"} <= drawn
        rows = [int(x) for x in figs.steps.data["step"][:3]]
        assert list(figs.steps.data["inv_L"][:3]) == pytest.approx([1 / steps[i]["L"] for i in rows], rel=1e-12)
    # gradient descent (edge_limit 2): no second line; a run without the instruments: no stability figures
    figs = RunFigures()
    figs.add_steps([{**r, "edge_limit": 2.0} for r in steps[:12]])
    assert figs.stability.limit.data["y"] == [] and figs.figures["edge"].visible
    figs.reset()
    figs.add_steps([r for r in hard_run(curvature=False) if r["kind"] == "step"][:12])
    assert not figs.figures["edge"].visible and not figs.figures["curv"].visible
    assert len(figs.stability.source.data["step"]) == 0


def test_a_deep_model_gets_a_legend_that_fits_with_the_last_layer_alone():
    names = [f"layer{i}.conv" for i in range(40)]
    assert layer_style(names)[-1] == ("layer39.conv (last layer)", "black", 3.0)
    figs = RunFigures()
    figs.set_layers(names)
    lines = figs.layer_lines
    items = figs._layers_legend.items
    assert len(lines) == 40 and len(items) <= MAX_LAYER_ITEMS
    assert items[-1].label.value == "layer39.conv (last layer)" and items[-1].renderers == [lines[-1]]
    assert items[0].label.value.startswith("layer0.conv … ")
    drawn = [r for item in items for r in item.renderers]
    assert sorted(map(id, drawn)) == sorted(map(id, lines))       # every line in exactly one entry
    assert len(layer_legend(["a", "b"], lines[:2])) == 2


def test_fitted_ranges_pad_in_log_space():
    lo, hi = axes.fitted_range([0.1, 10.0, math.nan, -1.0, 0.0], log=True, pad=0.1)
    assert math.log10(lo) == pytest.approx(-1.2) and math.log10(hi) == pytest.approx(1.2)
    assert axes.fitted_range([2.0, 4.0], pad=0.5) == (1.0, 5.0)
    assert axes.fitted_range([], log=True) == (0.0, 1.0)


def test_step_columns_give_nan_for_missing_keys():
    (row,) = [step_columns([{"kind": "step", "step": 3, "beta": None}])]
    assert row["step"] == [3.0] and math.isnan(row["beta"][0]) and math.isnan(row["lr_smooth"][0])


# -- in Chromium -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


RANGES = {                    # (start, end): what the ticks must show
    "lr near 0.14": (0.13, 0.16),
    "lr near 0.14 with a clamp to 1": (0.041, 1.16),
    "a loss spike": (0.076, 2.6e5),
    "many decades": (1e-12, 1e12),
    "a thin band": (0.02924, 0.05129),
}


def test_the_log_ticker_brackets_the_data_with_readable_labels(browser, tmp_path):
    page = BokehPage(browser, write_html(Div(text="ticks"), tmp_path / "ticks.html"))
    ticks = page.page.evaluate("""([major, fmt, ranges, max_ticks]) => {
        const tick = new Function("cb_data", "max_ticks", major);
        const label = new Function("tick", "index", "ticks", fmt);
        const out = {};
        for (const [name, [start, end]] of Object.entries(ranges)) {
            const t = tick({start, end}, max_ticks), cache = {};
            out[name] = {ticks: t, labels: t.map((x, i) => label.call(cache, x, i, t))};
        }
        return out;
    }""", [axes.log_ticker().major_code, axes.number_formatter().code, RANGES, axes.MAX_LOG_TICKS])
    for name, (lo, hi) in RANGES.items():
        t = ticks[name]["ticks"]
        assert 3 <= len(t) <= axes.MAX_LOG_TICKS, (name, t)
        assert all(lo <= x <= hi for x in t), (name, t)
        assert len(set(ticks[name]["labels"])) == len(t), (name, ticks[name]["labels"])
    near = ticks["lr near 0.14"]["ticks"]
    assert min(near) <= 0.14 <= max(near)
    clamp = ticks["lr near 0.14 with a clamp to 1"]
    assert clamp["labels"] == ["0.05", "0.1", "0.2", "0.5", "1"]          # 0.14 sits between 0.1 and 0.2
    spike = ticks["a loss spike"]
    assert spike["labels"] == ["0.1", "1", "10", "100", "1000", "1e4", "1e5"]
    assert ticks["a thin band"]["labels"] == ["0.03", "0.035", "0.04", "0.045", "0.05"]
    page.close()


def test_the_live_figures_in_chromium(browser, tmp_path):
    figs = RunFigures()                            # the live panel's size and layout
    recs = hard_run()
    figs.plan(300)
    figs.add_steps([r for r in recs if r["kind"] == "step"])
    figs.add_epochs([r for r in recs if r["kind"] == "epoch"])
    # about the width of a JupyterLab cell's output with the file browser open
    page = BokehPage(browser, write_html(figs.layout, tmp_path / "live.html"), width=1000)
    page.screenshot("live_figures.png")
    assert not page.bokeh_problems(), page.bokeh_problems()
    plots = page.plots()
    assert set(TITLES.values()) == set(plots)

    for key, p in ((k, plots[TITLES[k]]) for k in TITLES):
        # legends beside the frame, never over it, and in view: nothing is cut off at the cell's edge
        assert p["legends"] and all(disjoint(lg["box"], p["frame"]) for lg in p["legends"]), key
        assert p["el"][2] <= 1000 and all(lg["box"][2] <= p["el"][2] - p["el"][0] for lg in p["legends"]), key
        # steps and epochs: whole-number labels
        assert all(float(lab.replace(",", "")).is_integer() for lab in x_axis(p)["labels"]), (key, x_axis(p))

    loss = y_axis(plots[TITLES["loss"]])
    assert loss["type"] == "LogAxis" and loss["end"] > 1.3e5 and loss["start"] < 0.15
    assert {"0.1", "1", "1e5"} <= set(loss["labels"]), loss     # the spike and the usual losses both labelled
    lr = y_axis(plots[TITLES["lr"]])
    assert any(t <= 1 / 7.3 for t in lr["major"]) and any(1 / 6.7 <= t <= 0.3 for t in lr["major"]), lr
    epochs = x_axis(plots[TITLES["loss"]])["major"]
    assert epochs and all(float(t).is_integer() for t in epochs)

    # the K_z = 0 steps: a faint red stripe over the frame's height and a red rug tick, none elsewhere
    # (read where L has its gap: the grad figure; on the K_z figure the line itself drops there)
    grad = plots[TITLES["grad"]]
    red = hex_rgb(MARK_COLOR)
    stripe = tuple(round(255 * (1 - MARK_ALPHA) + c * MARK_ALPHA) for c in red)
    height = grad["frame"][3] - grad["frame"][1]
    at, off = (page.color_counts(grad["id"], [stripe, red], tol=25, x=x) for x in (200, 120))
    assert at[0] > 0.8 * height and at[1] > 5, (at, height)
    assert off[0] < 0.1 * height and off[1] == 0, off      # a stray antialiased pixel, no stripe
    page.close()


# -- the study plots ----------------------------------------------------------------------------

def study(sizing_mode=None):
    import pandas as pd
    from lipschitz_lab.ui.study_plots import StudyFigures
    policies = ["lipschitz", "constant-0.1", "cosine"]
    figs = StudyFigures(policies, {"lipschitz": "lipschitz"}, sizing_mode=sizing_mode)
    figs.set_epochs(pd.DataFrame([{"policy": p, "seed": s, "epoch": e, "val_acc": 0.5 + 0.05 * e + 0.01 * i,
                                   "test_acc": None} for i, p in enumerate(policies) for s in (0, 1)
                                  for e in range(3)]))
    lrs = {"lipschitz": lambda s: 0.14 + 0.005 * math.sin(s / 5), "constant-0.1": lambda s: 0.1,
           "cosine": lambda s: 0.12 * (1 + math.cos(math.pi * s / 60)) / 2 + 1e-3}
    figs.set_steps(pd.DataFrame([{"policy": p, "seed": 0, "step": s, "lr": lrs[p](s)} for p in policies
                                 for s in range(60)]))
    figs.set_table(pd.DataFrame({"policy": policies, "final_test_acc_mean": [0.9, 0.8, 0.85],
                                 "final_test_acc_std": [0.01, 0.02, 0.0], "final_val_acc_mean": [0.9, 0.8, 0.85],
                                 "final_val_acc_std": [0.01, 0.02, 0.0], "runs": [2, 2, 2]}))
    return figs


def test_the_study_plots_have_readable_log_rates_integer_axes_and_legends_beside():
    figs = study()
    assert isinstance(figs.lr.y_scale, LogScale) and isinstance(figs.lr.yaxis[0].ticker, CustomJSTicker)
    for p in (figs.acc, figs.lr):
        assert isinstance(p.xaxis[0].ticker, BasicTicker) and p.xaxis[0].ticker.min_interval == 1
        assert not [r for r in p.center if isinstance(r, Legend)]
        (legend,) = [r for r in p.right if isinstance(r, Legend)]
        assert legend.click_policy == "hide" and len(legend.items) == 3


def test_the_study_plots_in_chromium(browser, tmp_path):
    figs = study(sizing_mode="stretch_width")
    page = BokehPage(browser, write_html(figs.layout, tmp_path / "study.html"), width=1600)
    page.screenshot("study_plots.png")
    assert not page.bokeh_problems(), page.bokeh_problems()
    plots = page.plots()
    lr = plots[figs.lr.title.text]
    labels = y_axis(lr)["labels"]
    assert "0.001" in labels or "0.002" in labels, labels           # the cosine's tail ...
    assert any(0.14 / 1.5 <= t <= 0.14 * 1.5 for t in y_axis(lr)["major"]), labels   # ... and the rates near 0.14
    acc = plots[figs.acc.title.text]
    assert [float(t) for t in x_axis(acc)["major"]] == [1.0, 2.0, 3.0]
    assert lr["el"][2] - lr["el"][0] >= 0.9 * 1600                    # the static page's width
    for p in (lr, acc):
        assert all(disjoint(lg["box"], p["frame"]) for lg in p["legends"])
    page.close()
