"""End to end in headless Chromium: the app (`lipschitz-lab app`, Voilà) used as a person
uses it, and JupyterLab running 02_live_training.

The app: four tabs and no notebook code, no JavaScript error, no request leaving
127.0.0.1; a loss switched in Derivations redraws the plot; a digits run in Live
training advances its step counter and its Bokeh plots until Stop says "stopped";
a 2-policy study fills its curves in; the Runs tab lists what ran.

Needs /usr/bin/chromium (apt) and the playwright package; a missing browser is a
failure, not a skip.  Screenshots land in test-artifacts/app/ and test-artifacts/browser/
(gitignored).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lipschitz_lab.runs import RunStore
from ui_helpers import serve_lab
from test_app import App

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
APP_ARTIFACTS = ROOT / "test-artifacts" / "app"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

#: true once NOTEBOOK is the current tab and its kernel is connected and idle (needs expose_app_in_browser)
NOTEBOOK = "02_live_training.ipynb"
KERNEL_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const s = w && w.context && w.context.path.endsWith('%s') && w.sessionContext;
    return !!(s && s.isReady && s.session && s.session.kernel && s.session.kernel.status === 'idle');
}""" % NOTEBOOK

LONG_EPOCHS = 1000     # ~41,000 steps: far longer than the test waits, on any machine

# each test takes 1-3 minutes on two idle cores; the limit leaves room for a loaded machine
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free port, serving a copy of the notebook; always torn down."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, notebooks)
    store = tmp_path / "store" / "runs.db"
    # LIPSCHITZ_LAB_QUICK unset: the panel's defaults train for ~30 s or more, time to press Stop
    with serve_lab(tmp_path, notebooks, LIPSCHITZ_LAB_STORE=str(store)) as server:
        yield {**server, "store": store}


def _default(lab, plugin: str, key: str):
    """The default the server hands the page for one setting (overrides are applied to the schema)."""
    url = f"{lab['url']}/lab/api/settings/{plugin}?token={lab['token']}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)["schema"]["properties"][key]["default"]


def test_make_labs_defaults_reach_jupyterlab(lab):
    """jupyter/overrides.json (what `make lab` installs) is what the server hands the page;
    JupyterLab's own defaults are the opposite."""
    assert _default(lab, "@jupyterlab/notebook-extension:tracker", "autoStartDefaultKernel") is True
    assert _default(lab, "@jupyterlab/apputils-extension:notification", "fetchNews") == "false"


def _step(text: str) -> int:
    m = re.search(r"step\s+(\d+)", text)
    return int(m.group(1)) if m else 0


def test_live_training_panel_in_jupyterlab(lab):
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "02_live_training.png"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(120_000)           # a loaded machine: Chromium itself may lag
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            # the notebook's kernel must be connected and idle before "Run All"
            page.wait_for_function(KERNEL_IDLE, timeout=120_000)
            assert not page.locator(".jp-Dialog").count(), "a dialog (Select Kernel?) opened with the notebook"

            # 1) Run All Cells, the command behind Run > Run All Cells
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # 2) the panel renders: widgets, and Bokeh figures drawn on canvases
            panel = page.locator(".lipschitz-training-panel")
            panel.wait_for(timeout=120_000)
            panel.locator("canvas").first.wait_for(timeout=60_000)
            start = panel.locator("button", has_text="Start")
            status = panel.locator(".lipschitz-status")
            counter = panel.locator(".lipschitz-counter")
            # the later cells (a direct 30-step run, the report, the runs panel) finish first
            page.locator(".lipschitz-runs-panel").wait_for(timeout=120_000)
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)

            # 3) a long run, typed into the epochs field (so that it is still going when Stop
            #    comes, however fast this machine is), then Start: the counter advances
            epochs = panel.locator(".widget-text:has(label:text-is('epochs')) input")
            epochs.fill(str(LONG_EPOCHS))
            epochs.press("Enter")
            panel.scroll_into_view_if_needed()
            start.click()
            page.wait_for_function(
                "el => /step\\s+\\d{2,}/.test(el.textContent)", arg=counter.element_handle(), timeout=90_000)
            first = _step(counter.inner_text())
            deadline = time.monotonic() + 30
            while _step(counter.inner_text()) <= first:
                assert time.monotonic() < deadline, "the step counter stopped advancing"
                time.sleep(0.25)
            assert "running" in status.inner_text()

            # 4) Stop: the kernel answers "stopping", then the run ends within a batch: "stopped".
            #    On a loaded machine a click can take long to reach the kernel; a user would
            #    click again, and so does the test (twice at most).
            stop = panel.locator("button", has_text="Stop")
            for attempt in range(3):
                stop.click()
                try:
                    page.wait_for_function("el => /stopping|stopped/.test(el.textContent)",
                                           arg=status.element_handle(), timeout=60_000)
                    break
                except PlaywrightTimeout:
                    if attempt == 2 or not stop.is_enabled():
                        raise AssertionError(f"Stop was not acknowledged: {status.inner_text()!r}") from None
            page.wait_for_function("el => el.textContent.includes('stopped')",
                                   arg=status.element_handle(), timeout=60_000)
            time.sleep(1.0)   # let the last batch draw before the picture
            panel.screenshot(path=str(shot))
            page.screenshot(path=str(ARTIFACTS / "02_live_training_page.png"), full_page=False)
            text = status.inner_text()
            n_canvas = panel.locator("canvas").count()
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=False)
            raise
        finally:
            browser.close()

    assert "stopped" in text
    assert n_canvas >= 7, f"expected the 7 figures' canvases, found {n_canvas}"
    runs = RunStore(lab["store"]).list_runs()
    stopped = [r for r in runs if r["status"] == "stopped"]
    assert len(stopped) == 1, [(r["name"], r["status"]) for r in runs]
    assert stopped[0]["config"]["epochs"] == LONG_EPOCHS          # the typed value reached the kernel
    n = len(RunStore(lab["store"]).records(stopped[0]["id"], "step"))
    assert n >= 10
    assert shot.stat().st_size > 20_000
    assert not [e for e in errors if "Bokeh" in e or "bokeh" in e], errors


# -- the app ------------------------------------------------------------------------------------

#: rows BokehJS holds in the sources of the figure titled ``title`` (-1: no such figure drawn)
ROWS = """(title) => {
  let n = -1;
  for (const v of Bokeh.index.all_views()) {
    const m = v.model;
    if (!m.title || m.title.text !== title) continue;
    n = Math.max(n, 0);
    for (const r of m.renderers) {
      const d = r.data_source && r.data_source.data;
      const col = d && ["step", "epoch", "x", "xs"].find((k) => d[k] !== undefined);
      if (col) n += d[col].length;
    }
  }
  return n;
}"""
#: every figure's title, as BokehJS draws it
TITLES = "() => [...Bokeh.index.all_views()].filter((v) => v.model.title).map((v) => v.model.title.text)"


@pytest.fixture
def served_app(tmp_path):
    store = tmp_path / "store" / "runs.db"
    app = App([sys.executable, "-m", "lipschitz_lab", "app", "--no-browser", "--store", str(store)], tmp_path)
    try:
        yield {"url": app.url(), "store": store, "app": app}
    finally:
        if app.proc.poll() is None:
            assert app.interrupt() == 0
        app.close()


def _tab(page, title: str):
    page.locator(".lm-TabBar-tab", has_text=title).click()


def _field(panel, label: str):
    return panel.locator(f".widget-text:has(label:text-is('{label}')) input")


def _wait_text(page, locator, pattern: str, timeout: float = 120_000) -> None:
    page.wait_for_function("([el, p]) => new RegExp(p).test(el.textContent)",
                           arg=[locator.element_handle(), pattern], timeout=timeout)


def _derivations(page) -> None:
    panel = page.locator(".lipschitz-derivation-panel")
    panel.locator("canvas").first.wait_for(timeout=120_000)
    page.wait_for_function(f"() => ({TITLES})().some((t) => t.includes(' of softmax_ce '))", timeout=60_000)
    plot = panel.locator("canvas").first             # the |dE/dz| plot, as drawn
    before = plot.screenshot()
    panel.locator("select").first.select_option("mse")
    page.wait_for_function(f"() => ({TITLES})().some((t) => t.includes(' of mse '))", timeout=60_000)
    assert not any(" of softmax_ce " in t for t in page.evaluate(TITLES))
    time.sleep(0.5)                                  # the redraw after the new data
    assert plot.screenshot() != before, "the plot looks the same after the loss changed"
    page.screenshot(path=str(APP_ARTIFACTS / "01_derivations.png"))


def _training(page) -> None:
    from lipschitz_lab.ui.figures import TITLES as RUN_TITLES
    _tab(page, "Live training")
    panel = page.locator(".lipschitz-training-panel")
    panel.locator("canvas").first.wait_for(timeout=120_000)
    epochs = _field(panel, "epochs")
    epochs.fill(str(LONG_EPOCHS))
    epochs.press("Enter")
    panel.locator("button", has_text="Start").click()
    counter, status = panel.locator(".lipschitz-counter"), panel.locator(".lipschitz-status")
    _wait_text(page, counter, r"step\s+\d{2,}", 120_000)
    first, rows = _step(counter.inner_text()), page.evaluate(ROWS, RUN_TITLES["K_z"])
    deadline = time.monotonic() + 120
    while _step(counter.inner_text()) <= first or page.evaluate(ROWS, RUN_TITLES["K_z"]) <= rows:
        assert time.monotonic() < deadline, "the step counter or the K_z plot stopped advancing"
        time.sleep(0.25)
    text = counter.inner_text()
    assert re.search(r"epoch \d+/%d · .* elapsed" % LONG_EPOCHS, text), text
    assert "running" in status.inner_text()
    panel.locator("button", has_text="Stop").click()
    _wait_text(page, status, "stopped", 90_000)
    time.sleep(1.0)
    page.screenshot(path=str(APP_ARTIFACTS / "02_live_training.png"))


def _study(page) -> list[int]:
    from lipschitz_lab.ui.study_plots import TITLES as STUDY_TITLES
    _tab(page, "What-if study")
    panel = page.locator(".lipschitz-study-panel")
    panel.locator("select[multiple]").select_option(["lipschitz-strict-epoch-sgd", "constant-0.1"])
    _field(panel, "epochs").fill("3")
    _field(panel, "epochs").press("Enter")
    time.sleep(0.5)                                  # the field's value reaches the kernel
    panel.locator("button", has_text="Launch").click()
    status = panel.locator(".lipschitz-status")
    _wait_text(page, status, "running|finished", 60_000)
    seen, deadline = [], time.monotonic() + 240
    while "finished" not in status.inner_text():
        assert "failed" not in status.inner_text() and "error" not in status.inner_text(), status.inner_text()
        assert time.monotonic() < deadline, f"the study did not finish: {status.inner_text()!r}"
        seen.append(page.evaluate(ROWS, STUDY_TITLES["acc"]))
        time.sleep(0.25)
    time.sleep(1.0)
    seen.append(page.evaluate(ROWS, STUDY_TITLES["acc"]))
    assert "`" not in status.inner_text()
    panel.screenshot(path=str(APP_ARTIFACTS / "03_what_if_study.png"))
    return seen


def test_the_app_in_chromium(served_app):
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    from playwright.sync_api import sync_playwright

    APP_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = served_app["url"]
    origin = url.split("/?")[0]
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(120_000)           # a loaded machine: Chromium itself may lag
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, timeout=180_000)
            # 1) four tabs, no notebook code
            page.wait_for_selector(".lipschitz-app .lm-TabBar-tab", timeout=180_000)
            tabs = page.locator(".lipschitz-app .lm-TabBar-tab").all_inner_texts()
            assert [t.strip() for t in tabs] == ["Derivations", "Live training", "What-if study", "Runs"]
            assert page.locator(".jp-InputArea, .jp-CodeMirrorEditor, .cm-editor").count() == 0
            assert "lipschitz_lab.ui.app" not in page.content()
            # 2) - 4) the panels, as a person uses them
            _derivations(page)
            _training(page)
            seen = _study(page)
            # 5) the Runs tab lists the stopped run and the study's, without a reload
            _tab(page, "Runs")
            table = page.locator(".lipschitz-runs-panel table")
            _wait_text(page, table, "constant-0.1", 30_000)
            text = table.inner_text()
            page.screenshot(path=str(APP_ARTIFACTS / "04_runs.png"))
            icons = page.evaluate("() => getComputedStyle(document.querySelector('.lipschitz-app .fa-play'), "
                                  "'::before').fontFamily")
            # 6) closing the page mid-run shuts its kernel down, and the run says "stopped"
            _tab(page, "Live training")
            training = page.locator(".lipschitz-training-panel")
            training.locator("button", has_text="Start").click()
            _wait_text(page, training.locator(".lipschitz-status"), "running · run|running: run", 120_000)
            assert len(served_app["app"].kernels()) == 1
            dialogs: list[str] = []                 # "Leave site?": a person closing the tab confirms
            page.on("dialog", lambda d: dialogs.append(d.type) or d.accept())
            page.close(run_before_unload=True)
            deadline = time.monotonic() + 90
            while served_app["app"].kernels():
                assert time.monotonic() < deadline, \
                    f"the kernel of the closed page is still running (dialogs: {dialogs}); the app said:\n" \
                    + "".join(served_app["app"].log)
                time.sleep(0.5)
        except Exception:
            if not page.is_closed():
                page.screenshot(path=str(APP_ARTIFACTS / "failure.png"))
            raise
        finally:
            browser.close()

    assert not errors, errors
    assert all(r.startswith((origin, "data:", "blob:")) for r in requests), \
        [r for r in requests if not r.startswith((origin, "data:", "blob:"))]
    assert "Font Awesome" in icons                               # the button icons, served locally
    assert seen[-1] >= 2 * 3 and any(0 < n < seen[-1] for n in seen), seen   # the curves filled in
    for name, status in (("lipschitz paper (panel)", "stopped"), ("constant-0.1", "finished"),
                         ("lipschitz-strict-epoch-sgd", "finished")):
        assert re.search(rf"{re.escape(name)}\s+{status}", text), text
    runs = RunStore(served_app["store"]).list_runs()
    assert sorted(r["status"] for r in runs) == ["finished", "finished", "stopped", "stopped"], \
        [(r["name"], r["status"]) for r in runs]
