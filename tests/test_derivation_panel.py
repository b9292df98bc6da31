"""The derivation panel draws on first show, and its smoothness plot is the derived S₂.

A ``jupyter_bokeh`` widget hands the browser the document as it was when the
widget was made (its ``render_bundle``): the panel must fill its plots before.
The second derivative is checked against oracles that share nothing with the
generated code: ``sympy.diff`` of the loss for elementwise losses, torch's own
criteria (``F.cross_entropy``) for softmax ones.  Screenshots in test-artifacts/figures/.
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
    assert isinstance(p.x_range, Range1d) and (p.x_range.start, p.x_range.end) == (lo, hi)
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


# -- notebook 01 in JupyterLab: the widget's first render, as a user sees it ------------------------

FIRST_RENDER = """() => [...Bokeh.index.all_views()].filter((v) => v.model.type == "Figure").map((v) => {
    const f = v.frame.bbox;
    const d = v.canvas_view.compose().ctx.getImageData(f.x0 + 1, f.y0 + 1, f.width - 2, f.height - 2).data;
    let colored = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) colored += 1;
    }
    return {title: v.model.title.text, x: [v.frame.x_range.start, v.frame.x_range.end], colored};
})"""


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of notebook 01; yields the notebook's URL."""
    import shutil
    from pathlib import Path

    from ui_helpers import serve_lab
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "notebooks" / "01_derivations.ipynb", notebooks)
    with serve_lab(tmp_path, notebooks) as server:
        yield f"{server['url']}/lab/tree/01_derivations.ipynb?token={server['token']}"


@pytest.mark.browser
@pytest.mark.timeout(400)
def test_notebook_01_draws_the_derivation_plots_on_first_show(lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(lab)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_function("() => { const s = window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext;"
                           " return !!(s && s.session && s.session.kernel && s.session.kernel.status === 'idle'); }",
                           timeout=120_000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    panel = page.locator(".lipschitz-derivation-panel")
    panel.locator("canvas").first.wait_for(timeout=300_000)
    page.wait_for_function(f"() => ({FIRST_RENDER})().length >= 2 && ({FIRST_RENDER})().every((p) => p.colored > 0)",
                           timeout=30_000)
    panel.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    panel.screenshot(path=str(ARTIFACTS / "notebook_01_derivation_panel.png"))
    drawn = page.evaluate(FIRST_RENDER)
    page.close()
    assert len(drawn) == 2, drawn
    for p in drawn:
        assert p["x"] == [-6, 6] and p["colored"] > 1000, p        # curves on the canvas, not a blank box
    assert not [c for c in console if "could not set initial ranges" in c or c.startswith("error")], console

