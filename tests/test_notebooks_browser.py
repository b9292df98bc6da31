"""Every notebook in JupyterLab in headless Chromium, the way a new user meets it: open it, Run
All, and look at what the browser shows (issue 16): no ``[bokeh]`` warning or error in the
console, no page error, every Bokeh figure that holds data draws it with a visible renderer,
and the derivation plot has glyphs on first show.  Screenshots: test-artifacts/notebooks/."""
from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, _free_port, _wait_http
from ui_helpers import jupyter_env

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
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp / "jupyter.log"
    env = jupyter_env(tmp, LIPSCHITZ_LAB_STORE=str(tmp / "store" / "runs.db"), LIPSCHITZ_LAB_QUICK="1")
    settings = tmp / "app-settings"
    settings.mkdir()
    shutil.copy(ROOT / "jupyter" / "overrides.json", settings / "overrides.json")
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--ServerApp.token={token}", "--allow-root", f"--notebook-dir={notebooks}",
           "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.app_settings_dir={settings}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, cwd=notebooks, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", server, log)
        yield {"url": f"http://127.0.0.1:{port}", "token": token}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


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
