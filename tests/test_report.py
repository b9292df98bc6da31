"""The static report: one self-contained HTML file per run, registered as an artifact,
that uses the page's width and shows its own data (checked in Chromium; screenshots in
test-artifacts/figures/, git-ignored)."""
from __future__ import annotations

import html

import json
import math
import re

import pytest

from bokeh_page import BokehPage, chromium, disjoint, y_axis
from lipschitz_lab.records import epoch_record, step_record
from lipschitz_lab.runs import RunStore
from lipschitz_lab.ui import write_report
from lipschitz_lab.ui.figures import BOUND_FIGURES, TITLES, RunFigures
from test_figures import hard_run


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs" / "lipschitz_lab.db") as s:
        yield s


def lipschitz_run(store: RunStore, n_steps: int = 40, per_epoch: int = 10) -> str:
    run_id = store.create_run({"dataset": "digits", "model": "mlp", "loss": "softmax_ce", "lr_policy": "lipschitz",
                               "bound": "paper", "optimizer": "sgd", "batch_size": 64}, name="lipschitz run")
    recs = []
    for s in range(n_steps):
        L = 2.0 + 0.1 * s
        lam = 3.0 + 0.4 * s if s % 5 == 0 else None      # sharpness_every=5: edge > 2 from step 10 on
        recs.append(step_record(step=s, epoch=s // per_epoch, lr=1 / L, K_z=10.0 + s, L=L, bound="paper",
                                grad_last=0.5, grad_layers={"0": 0.3, "2": 0.5}, clamped=None,
                                L_paper=L, L_corrected=1.1 * L, L_strict=3 * L, loss=2.0 - 0.03 * s, acc=0.02 * s,
                                beta=4 * L, sigma_max=2.0, lr_smooth=1 / (4 * L), lambda_max=lam,
                                edge=None if lam is None else lam / L, edge_limit=2.0))
        if s % per_epoch == per_epoch - 1:
            e = s // per_epoch
            recs.append(epoch_record(epoch=e, step=s + 1, lr=1 / L, train_loss=1.5 - 0.1 * e, train_acc=0.5 + 0.1 * e,
                                     val_loss=1.6 - 0.1 * e, val_acc=0.45 + 0.1 * e, test_loss=1.7, test_acc=0.4))
    store.append_records(run_id, recs)
    store.set_status(run_id, "finished")
    return run_id


def baseline_run(store: RunStore) -> str:
    run_id = store.create_run({"dataset": "digits", "model": "mlp", "lr_policy": "constant"}, name="baseline")
    recs = [step_record(step=s, epoch=0, lr=0.05, K_z=None, L=None, bound=None, grad_last=None, grad_layers=None,
                        clamped=None, loss=1.0, acc=0.5) for s in range(8)]
    recs.append(epoch_record(epoch=0, step=8, lr=0.05, train_loss=1.0, train_acc=0.5, val_loss=1.1, val_acc=0.4))
    store.append_records(run_id, recs)
    store.set_status(run_id, "stopped", "stopped by the user at step 8")
    return run_id


def embedded_docs(text: str) -> dict:
    """The Bokeh document JSON that file_html embeds."""
    (payload,) = re.findall(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', text, re.S)
    return json.loads(payload)


def strings(node) -> set[str]:
    """Every string in the embedded document (titles, labels, ...)."""
    if isinstance(node, str):
        return {node}
    values = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return set().union(*(strings(v) for v in values)) if values else set()


def columns(text: str, name: str) -> list[dict]:
    """Every ColumnDataSource's data in the embedded document that has column ``name``."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == "ColumnDataSource":
                data = node["attributes"]["data"]
                cols = dict(data["entries"]) if data.get("type") == "map" else data
                if name in cols:
                    found.append(cols)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(embedded_docs(text))
    return found


def test_the_report_is_one_self_contained_file_with_every_figure(store):
    run_id = lipschitz_run(store)
    path = write_report(store, run_id)
    assert path == store.path.parent / "reports" / f"{run_id}.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    assert "cdn.bokeh.org" not in text
    assert not re.search(r"<script[^>]+src=", text), "a script is loaded from elsewhere"
    assert not re.search(r"<link[^>]+href=[\"']https?:", text)
    assert run_id in text and "lipschitz run" in text
    drawn = strings(embedded_docs(text))
    for title in TITLES.values():
        assert title in drawn, title
    assert store.artifacts(run_id) == {"report": str(path)}


def test_the_report_holds_the_runs_numbers(store):
    run_id = lipschitz_run(store)
    text = write_report(store, run_id).read_text(encoding="utf-8")
    (steps,) = columns(text, "grad_last")
    recs = store.records(run_id, "step")
    assert steps["step"] == [r["step"] for r in recs]
    assert steps["lr"] == [r["lr"] for r in recs]
    assert steps["L_corrected"] == [r["L_corrected"] for r in recs]
    assert steps["gap"] == pytest.approx([r["grad_last"] / r["L"] for r in recs])
    assert steps["beta"] == [r["beta"] for r in recs] and steps["lr_smooth"] == [r["lr_smooth"] for r in recs]
    (epochs,) = columns(text, "val_acc")
    assert epochs["val_acc"] == pytest.approx([0.45, 0.55, 0.65, 0.75])
    (layers,) = columns(text, "g1")
    assert layers["g1"] == [0.5] * 40 and "layer 2 (last layer)" in text
    # the header says what happened: the verdict of the same records (runs/verdict.py)
    from lipschitz_lab.runs.verdict import run_verdict
    said = run_verdict(store, run_id)
    header = [html.unescape(t) for t in strings(embedded_docs(text)) if "verdict:" in t]
    assert said.kind == "healthy" and any(f"verdict: <b>{said.text}</b>" in t for t in header), header
    # the stability figure's measured steps, and the line that counts them: edge = λ_max/L above 2 from step 10
    (measured,) = columns(text, "inv_lambda")
    assert measured["step"] == list(range(0, 40, 5))
    edges = [(3.0 + 0.4 * s) / (2.0 + 0.1 * s) for s in range(0, 40, 5)]
    assert measured["edge"] == pytest.approx(edges, rel=1e-12)
    median = (edges[3] + edges[4]) / 2
    line = f"edge: above 2 on 6 of 8 measured steps (first at step 10); median lr·λ_max {median:.3g}"
    assert any(line in html.unescape(t) and "lipschitz-edge" in t for t in strings(embedded_docs(text))), line


def test_a_baseline_run_reports_without_bound_fields(store, tmp_path):
    run_id = baseline_run(store)
    path = write_report(store, run_id, tmp_path / "elsewhere" / "b.html")
    text = path.read_text(encoding="utf-8")
    assert path.is_file() and "not a Lipschitz one" in text and "stopped by the user" in text
    (steps,) = columns(text, "grad_last")
    # NaN is how Bokeh draws a gap; the embedding writes it as a special value, not a number
    assert len(steps["step"]) == 8 and steps["lr"] == [0.05] * 8
    assert all(not isinstance(v, (int, float)) or math.isnan(v) for v in steps["K_z"])
    assert store.artifacts(run_id)["report"] == str(path)
    assert "lipschitz-edge" not in text and TITLES["edge"] not in text     # it measured no curvature


def test_an_unknown_run_is_refused_by_name(store):
    with pytest.raises(ValueError, match="r-nope"):
        write_report(store, "r-nope")


def test_a_long_run_is_thinned_evenly_for_the_report():
    recs = [step_record(step=s, epoch=0, lr=1.0, K_z=1.0, L=1.0, bound="paper", grad_last=0.1,
                        grad_layers={"fc": 0.1}, clamped=None) for s in range(10_001)]
    figs = RunFigures(max_points=1000)
    figs.load(recs)
    assert figs.steps.data["step"] == list(range(0, 10_001, 11))
    assert figs.layers.data["step"] == figs.steps.data["step"]


def test_a_baseline_run_leaves_the_bound_figures_out():
    figs = RunFigures()
    figs.load([step_record(step=s, epoch=0, lr=0.05, K_z=None, L=None, bound=None, grad_last=None,
                           grad_layers=None, clamped=None, loss=1.0) for s in range(4)])
    assert {k for k, p in figs.figures.items() if not p.visible} == {*BOUND_FIGURES, "smooth", "edge", "curv"}


# -- in Chromium -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def hard_report(store: RunStore) -> str:
    run_id = store.create_run({"dataset": "mnist", "model": "mlp", "loss": "softmax_ce", "lr_policy": "lipschitz",
                               "bound": "paper", "optimizer": "sgd", "batch_size": 64}, name="paper rate, spiky")
    store.append_records(run_id, hard_run())
    store.set_status(run_id, "finished")
    return run_id


def test_the_report_fills_a_1600_px_page_and_shows_its_data(store, browser):
    run_id = hard_report(store)
    page = BokehPage(browser, write_report(store, run_id), width=1600)
    shot = page.screenshot("report_1600.png")
    assert not page.bokeh_problems(), page.bokeh_problems()
    plots = page.plots()
    assert set(plots) == set(TITLES.values()) and all(p["visible"] for p in plots.values())
    # the plots span the page: >= 90 % of 1600 px, two or more of them side by side
    left = min(p["el"][0] for p in plots.values())
    right = max(p["el"][2] for p in plots.values())
    assert right - left >= 0.9 * 1600, (left, right)
    rows = {}
    for p in plots.values():
        rows.setdefault(round(p["el"][1]), []).append(p)
    assert max(len(r) for r in rows.values()) >= 2 and len(rows) <= 5, {k: len(v) for k, v in rows.items()}
    for title, p in plots.items():
        assert all(disjoint(lg["box"], p["frame"]) for lg in p["legends"]), title
        assert p["frame"][2] - p["frame"][0] >= 400, (title, p["frame"])      # wide frames, not 40 % of a page
    loss = y_axis(plots[TITLES["loss"]])
    assert loss["type"] == "LogAxis" and {"0.1", "1", "1e5"} <= set(loss["labels"]), loss
    lr = y_axis(plots[TITLES["lr"]])
    assert {"0.1", "0.2"} <= set(lr["labels"]), lr           # the rate near 0.14 sits between two labels
    assert shot.stat().st_size > 50_000
    page.close()


def test_a_baseline_report_draws_what_it_has_without_console_warnings(store, browser, tmp_path):
    run_id = baseline_run(store)
    page = BokehPage(browser, write_report(store, run_id, tmp_path / "baseline.html"), width=1600)
    page.screenshot("report_baseline.png")
    assert not page.bokeh_problems(), page.bokeh_problems()
    shown = {t for t, p in page.plots().items() if p["visible"]}
    assert shown == {TITLES[k] for k in ("loss", "acc", "lr")}, shown
    page.close()
