"""Every notebook in JupyterLab in headless Chromium, the way a new user meets it: open it, Run
All, and look at what the browser shows (issue 16): no ``[bokeh]`` warning or error in the
console, no page error, every Bokeh figure that holds data draws it with a visible renderer,
and the derivation plot has glyphs on first show.  Screenshots: test-artifacts/notebooks/."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS
from ui_helpers import serve_lab

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "notebooks"
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

#: the notebook ``path`` is the current tab, its kernel idle, and no cell waiting or running
IDLE = """(path) => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const s = w && w.context && w.context.path.endsWith(path) && w.sessionContext;
    if (!(s && s.isReady && s.session && s.session.kernel && s.session.kernel.status === 'idle')) return false;
    return ![...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('*'));
}"""
#: per Bokeh figure: its title, how many rows its renderers hold, and how many of those are visible
FIGURES = """() => [...Bokeh.index.all_views()].filter(v => v.model.renderers !== undefined
                                                     && v.model.title && v.model.title.text).map(v => {
    let rows = 0, visible = 0;
    for (const r of v.model.renderers) {
        const d = r.data_source && r.data_source.data;
        if (!d) continue;
        const n = Math.max(0, ...Object.values(d).map(c => (c && c.length) || 0));
        rows += n;
        if (n > 0 && r.visible) visible += 1;
    }
    return {title: v.model.title.text, rows: rows, visible: visible};
})"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    notebooks = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    with serve_lab(tmp, notebooks, LIPSCHITZ_LAB_STORE=str(tmp / "store" / "runs.db"),
                   LIPSCHITZ_LAB_QUICK="1") as server:
        yield server


def _run_all(lab, name: str, shot: Path):
    """Open ``name``, Run All, wait for the last cell; (console messages, page errors, figures)."""
    from playwright.sync_api import sync_playwright
    console, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(180_000)
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{lab['url']}/lab/tree/{name}?token={lab['token']}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached", timeout=120_000)
            page.wait_for_function(IDLE, arg=name, timeout=180_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_timeout(2000)
            page.wait_for_function(IDLE, arg=name, timeout=600_000)
            page.wait_for_timeout(2000)                      # the last widgets draw
            figures = page.evaluate(FIGURES) if page.evaluate("() => typeof Bokeh !== 'undefined'") else []
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return console, errors, figures


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_notebook_run_all_draws_its_plots_and_the_console_stays_clean(lab, name):
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{Path(name).stem}.png"
    console, errors, figures = _run_all(lab, name, shot)
    bokeh = [text for kind, text in console if "[bokeh" in text and kind in ("warning", "error")]
    assert bokeh == [], bokeh
    assert errors == [], errors
    assert figures, "no Bokeh figure on the page"
    hidden = [f for f in figures if f["rows"] > 0 and f["visible"] == 0]
    assert hidden == [], hidden
    if name.startswith("01"):                                  # the derivation plots, on first show
        assert [f for f in figures if f["rows"] == 0] == [], figures
    assert shot.stat().st_size > 30_000
