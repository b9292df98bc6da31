"""The derivation panel draws on first show, and its smoothness plot is the derived S₂.

A ``jupyter_bokeh`` widget hands the browser the document as it was when the
widget was made (its ``render_bundle``): the panel must fill its plots before.
The second derivative is checked against oracles that share nothing with the
generated code: ``sympy.diff`` of the loss for elementwise losses, torch's own
criteria (``F.cross_entropy``) for softmax ones.  Screenshots in test-artifacts/figures/.  Notebook 01's
plots on first show in JupyterLab: tests/test_notebooks_browser.py.
"""
from __future__ import annotations

import json

import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from bokeh.models import Range1d

from bokeh_page import ARTIFACTS, BokehPage, chromium, hex_rgb, write_html, x_axis, y_axis
from lipschitz_lab import bounds
from lipschitz_lab.symbolic import LOSS_SPECS, derive
from lipschitz_lab.ui.panel_derivation import CURVE_COLORS, derivation_panel
from lipschitz_lab.ui.smoothness_plot import smoothness_available

LOSSES = ["mse", "bce", "softmax_ce", "label_smoothed_ce"]


@pytest.fixture(scope="module")
def panels():
    return {name: derivation_panel(name) for name in LOSSES}


def _bundle_sources(panel) -> list[dict]:
    """The data of every ColumnDataSource in the widget's initial render bundle."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == "ColumnDataSource":
                data = node["attributes"]["data"]
                found.append(dict(data["entries"]) if data.get("type") == "map" else data)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(json.dumps(panel.bokeh.render_bundle["docs_json"], default=str)))
    return found


@pytest.mark.parametrize("name", LOSSES)
def test_the_first_render_already_holds_the_curves_and_ranges(panels, name):
    panel = panels[name]
    sources = _bundle_sources(panel)
    curves = [s for s in sources if "xs" in s and s.get("label")]
    assert len(curves) == (2 if panel.smooth_setup else 1)
    assert all(len(s["xs"]) >= 1 for s in curves)
    lo, hi = panel.setup["z"]
    p = panel.plot
    # the z grid, widened only to hold a witness marker that sits on its edge (mse: z = 2 = K_a)
    marks = [panel.setup["marker"]["z"]] if panel.setup["marker"] else []
    assert isinstance(p.x_range, Range1d) and p.x_range.start <= lo and p.x_range.end >= hi
    assert all(p.x_range.start < z < p.x_range.end for z in marks)
    assert (p.x_range.start, p.x_range.end) == (lo, hi) or any(z in (lo, hi) for z in marks)
    top = max(max(c["y"]) for c in panel.setup["curves"])
    assert isinstance(p.y_range, Range1d) and p.y_range.start == 0 and p.y_range.end >= max(top, panel.setup["sup"])


def _d2_oracle(name: str, at: dict) -> float:
    """|d²E/dz²| by sympy.diff of the loss itself."""
    spec = LOSS_SPECS[name]
    from lipschitz_lab.symbolic.symbols import PARAMS
    expr = sp.diff(spec.loss, spec.wrt, 2)
    syms = {str(s): s for s in expr.free_symbols}
    return abs(float(expr.subs({syms[k]: v for k, v in at.items() if k in syms}
                               | {PARAMS[k]: v for k, v in at.items() if k in PARAMS and k not in syms})))


def _hessian_oracle(name: str, logits: list[float], label: int, eps: float) -> float:
    """‖∇²E‖₂ of torch's own cross-entropy (label smoothing for label_smoothed_ce), one sample."""
    smoothing = eps if name == "label_smoothed_ce" else 0.0
    f = lambda x: F.cross_entropy(x.unsqueeze(0), torch.tensor([label]), label_smoothing=smoothing)  # noqa: E731
    H = torch.autograd.functional.hessian(f, torch.tensor(logits, dtype=torch.float64))
    return torch.linalg.eigvalsh(H).abs().max().item()


@pytest.mark.parametrize("name", LOSSES)
def test_the_smoothness_plot_is_the_second_derivative_under_S2(panels, name):
    if not smoothness_available(name):
        pytest.fail(f"{name}: the derivation or the generated code has no smoothness bound")
    panel = panels[name]
    s = panel.smooth_setup
    assert panel.smooth_plot.visible and "S_2" in panel.smooth_text.value
    (S2,) = panel.smooth_level.data["y"]
    p = s["params"]
    assert S2 == pytest.approx(bounds.smoothness_bound(name, m=p["m"], k=p.get("k"), eps=p.get("eps")))
    assert S2 == pytest.approx(float(derive(name).smoothness.value.subs(
        {sym: p[str(sym)] for sym in derive(name).smoothness.value.free_symbols})))
    data = panel.smooth_curves.data
    assert max(max(ys) for ys in data["ys"]) <= S2 * (1 + 1e-9)          # never above S₂ ...
    assert max(max(ys) for ys in data["ys"]) >= S2 * (1 - 2e-3)          # ... and reaching it
    for xs, ys, label in zip(data["xs"], data["ys"], data["label"]):
        for i in (0, len(xs) // 3, len(xs) // 2, len(xs) - 1):
            if s["kind"] == "softmax":
                logits = [xs[i]] + [float(v) for v in label[len("logits (z, "):-1].split(", ")]
                want = _hessian_oracle(name, logits, s["label"], p.get("eps", 0.0))
            else:
                fixed = dict(part.split(" = ") for part in label.replace(" (witness)", "").split(", "))
                want = _d2_oracle(name, {**p, **{k: float(v) for k, v in fixed.items()}, "z": xs[i]})
            assert ys[i] == pytest.approx(want, rel=1e-9, abs=1e-12), (label, xs[i])
    # the witness markers (the symbolic layer's own numbers) sit on drawn curves
    assert panel.smooth_witness.data["z"]
    for zw, yw in zip(panel.smooth_witness.data["z"], panel.smooth_witness.data["y"]):
        gaps = [min(abs(y - yw) + abs(x - zw) for x, y in zip(xs, ys)) for xs, ys in zip(data["xs"], data["ys"])]
        assert min(gaps) < 1e-6, (zw, yw)


def test_the_panel_says_why_a_gradient_bound_is_not_a_step_size_and_where_to_watch_it(panels):
    import html
    import re
    text = html.unescape(re.sub(r"<[^>]+>", "", panels["softmax_ce"].step_note.value))
    sentences = [t for t in re.split(r"(?<=[.!?])\s+", text.split("Why L is not a step size.")[1].strip()) if t]
    assert len(sentences) == 2, sentences
    assert "L bounds |∂E/∂w|" in sentences[0] and "lr·λmax < 2" in sentences[0]
    assert "Live training" in sentences[1] and "--sharpness-every" in sentences[1]
    assert panels["softmax_ce"].step_note in panels["softmax_ce"].children


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.mark.parametrize("name", ["softmax_ce", "bce"])
def test_chromium_draws_both_plots_on_first_render(panels, browser, tmp_path, name):
    """The widget's initial document, as BokehJS renders it: curves drawn, no range warnings."""
    panel = panels[name]
    page = BokehPage(browser, write_html(panel.plot.document, tmp_path / f"{name}.html"), width=1300)
    page.screenshot(f"derivation_{name}.png")
    assert not page.bokeh_problems(), page.bokeh_problems()
    plots = {p["id"]: p for p in page.plots().values()}
    for fig in (panel.plot, panel.smooth_plot):
        p = plots[fig.id]
        lo, hi = x_axis(p)["start"], x_axis(p)["end"]
        assert (lo, hi) == pytest.approx(panel.setup["z"] if fig is panel.plot else panel.smooth_setup["z"])
        assert y_axis(p)["start"] == 0 and len(y_axis(p)["major"]) >= 4
        counts = page.color_counts(fig.id, [hex_rgb(c) for c in CURVE_COLORS[:2]], tol=40)
        assert max(counts) > 100, (fig.title.text, counts)        # the first curves are on the canvas
    page.close()
