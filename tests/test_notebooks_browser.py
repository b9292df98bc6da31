"""Every notebook, once, the way a new user meets it: `make lab`, open it in JupyterLab (headless
Chromium), Run All, save.  In that one run, in its default mode (no LIPSCHITZ_LAB_QUICK), on a
machine without MNIST:

- no cell error, no kernel error or stderr traceback (what the cells and JupyterLab's Log Console
  would show), no page error, no console error and no ``[bokeh]`` warning;
- what each notebook must show (the verdict table whole, the runs in the store, the sentences);
- every Bokeh figure that holds data draws it with a visible renderer, and notebook 01's
  derivation plots have colour on their canvases on first show;
- in notebook 02, a long run from the panel advances its counter, and Stop says "stopped";
- after Run All and the save, the repository's notebooks are byte for byte what they were and
  ``git status`` says the same: `make lab` saves notebooks without their outputs
  (jupyter/jupyter_server_config.py).

One `make lab` server and one browser for the module.  Screenshots: test-artifacts/notebooks/.
"""
from __future__ import annotations

import html
import json
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS
from ui_helpers import KernelMessages, bokeh_console_problems, jupyter_env, stop_server, tracebacks

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "notebooks"
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
LONG_EPOCHS = 1000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600),
              pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists(), reason="needs `make test`'s venv")]

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
#: the derivation panel's figures as drawn: coloured pixels in each frame (not a blank box)
FIRST_RENDER = """() => [...Bokeh.index.all_views()].filter((v) => v.model.type == "Figure").map((v) => {
    const f = v.frame.bbox;
    const d = v.canvas_view.compose().ctx.getImageData(f.x0 + 1, f.y0 + 1, f.width - 2, f.height - 2).data;
    let colored = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) colored += 1;
    }
    return {title: v.model.title.text, x: [v.frame.x_range.start, v.frame.x_range.end], colored};
})"""
#: the executed notebook as JupyterLab holds it (outputs included: they are never saved)
NOTEBOOK_JSON = "() => window.jupyterapp.shell.currentWidget.context.model.toJSON()"


def _git_status() -> str | None:
    try:
        return subprocess.run(["git", "status", "--porcelain", "--", "notebooks"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None                                # not a git checkout: the bytes still say it


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make -s lab` (the repository's notebooks/), a token and a port of the test's; the runs go to a
    temporary store, and the data folder is empty (no MNIST)."""
    tmp = tmp_path_factory.mktemp("make-lab")
    (tmp / "no-data").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    args = (f"--port={port} --ServerApp.port_retries=0 --LabApp.expose_app_in_browser=True --LabApp.news_url= "
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    env = jupyter_env(tmp, LAB_TOKEN=token, LAB_ARGS=args, LIPSCHITZ_LAB_STORE=str(tmp / "store" / "runs.db"),
                      LIPSCHITZ_LAB_DATA=str(tmp / "no-data"))
    env.pop("LIPSCHITZ_LAB_FULL_STUDY", None)
    before = ({p: p.read_bytes() for p in (ROOT / "notebooks").glob("*.ipynb")}, _git_status())
    log = tmp / "make_lab.log"
    with open(log, "w") as out:
        server = subprocess.Popen(["make", "-s", "lab"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield {"url": url, "token": token, "store": tmp / "store" / "runs.db", "log": log, "before": before}
    finally:
        stop_server(server)
        shutil.rmtree(ROOT / "notebooks" / ".ipynb_checkpoints", ignore_errors=True)
    assert not tracebacks(log.read_text()), log.read_text()[-4000:]        # the kernels' own stderr


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(lab, browser):
    """A JupyterLab page per notebook (closing a notebook tab while its kernel runs on makes
    jupyter_bokeh's views log "Cannot send" in the console: a page of its own avoids that here);
    ``page.console`` and ``page.kernel`` keep what the console and the kernels' messages say."""
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(180_000)
    page.console = []
    page.on("console", lambda m: page.console.append((m.type, m.text)))
    page.on("pageerror", lambda exc: page.console.append(("error", f"pageerror: {exc}")))
    page.kernel = KernelMessages(page)
    yield page
    page.close()


def test_make_labs_defaults_reach_jupyterlab(lab):
    """jupyter/overrides.json (what `make lab` installs) is what the server hands the page;
    JupyterLab's own defaults are the opposite."""
    def default(plugin: str, key: str):
        with urllib.request.urlopen(f"{lab['url']}/lab/api/settings/{plugin}?token={lab['token']}", timeout=10) as r:
            return json.load(r)["schema"]["properties"][key]["default"]
    assert default("@jupyterlab/notebook-extension:tracker", "autoStartDefaultKernel") is True
    assert default("@jupyterlab/apputils-extension:notification", "fetchNews") == "false"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_run_all_then_save_shows_no_error_draws_every_plot_and_saves_no_output(lab, page, name):
    try:
        page.goto(f"{lab['url']}/lab/tree/{name}?token={lab['token']}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached", timeout=120_000)
        page.wait_for_function(IDLE, arg=name, timeout=180_000)
        assert not page.locator(".jp-Dialog").count(), "a dialog (Select Kernel?) opened with the notebook"
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_timeout(1000)
        page.wait_for_function(IDLE, arg=name, timeout=540_000)
        page.wait_for_timeout(1500)                      # the last widgets draw
        nb = page.evaluate(NOTEBOOK_JSON)
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert errors == [], errors
        CHECKS[Path(name).stem](nb, lab, page)
        figures = page.evaluate(FIGURES)
        assert figures and [f for f in figures if f["rows"] > 0 and f["visible"] == 0] == [], figures
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")   # as autosave would
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
        page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}-failure.png"), full_page=False)
        raise
    assert bokeh_console_problems(page.console) == [], page.console
    assert page.kernel.problems == [], page.kernel.problems


def test_after_run_all_and_save_the_notebooks_are_as_committed(lab):
    files, status = lab["before"]
    changed = [p.name for p, data in files.items() if p.read_bytes() != data]
    assert changed == [], f"saving rewrote {changed}"
    assert _git_status() == status


# -- what each notebook must show ---------------------------------------------------------------
def _text(nb) -> str:
    """Everything the cells printed or displayed as text or HTML."""
    parts = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            parts.append(o.get("text", ""))
            parts += [o.get("data", {}).get(m, "") for m in ("text/plain", "text/html", "text/markdown")]
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


def _store(lab):
    from lipschitz_lab.runs import RunStore
    return RunStore(lab["store"])


def _check_01(nb, lab, page) -> None:
    from lipschitz_lab.symbolic import derive_all
    from lipschitz_lab.symbolic.render import witness_text
    (table,) = [o["data"]["text/html"] for c in nb["cells"] if "verdicts = pd.DataFrame" in "".join(c["source"])
                for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    table = "".join(table)
    for name, d in derive_all().items():
        if d.witness:
            assert witness_text(d.witness) in html.unescape(table), name      # whole, not cut off
    assert "\u2026" not in table and "None" not in table
    # the derivation panel's plots have their curves on first show
    page.wait_for_function(f"() => ({FIRST_RENDER})().length >= 2 && ({FIRST_RENDER})().every((p) => p.colored > 0)",
                           timeout=30_000)
    drawn = page.evaluate(FIRST_RENDER)
    assert len(drawn) == 2 and all(p["x"] == [-6, 6] and p["colored"] > 1000 for p in drawn), drawn
    page.locator(".lipschitz-derivation-panel").screenshot(path=str(ARTIFACTS / "01_derivation_panel.png"))


def _check_02(nb, lab, page) -> None:
    runs = _store(lab).list_runs()
    assert [r["status"] for r in runs] == ["finished"] and runs[0]["name"] == "direct"
    assert "report" in runs[0]["artifacts"]
    # the panel: a long run, typed in, advances its counter; Stop says "stopped"
    panel = page.locator(".lipschitz-training-panel")
    epochs = panel.locator(".widget-text:has(label:text-is('epochs')) input")
    epochs.fill(str(LONG_EPOCHS))
    epochs.press("Enter")
    panel.scroll_into_view_if_needed()
    panel.locator("button", has_text="Start").click()
    status, counter = panel.locator(".lipschitz-status"), panel.locator(".lipschitz-counter")
    page.wait_for_function("el => /step\\s+\\d{2,}\\//.test(el.textContent)", arg=counter.element_handle(),
                           timeout=90_000)
    first = int(re.search(r"step\s+(\d+)", counter.inner_text())[1])
    page.wait_for_function(f"el => +(/step\\s+(\\d+)/.exec(el.textContent) || [0, 0])[1] > {first}",
                           arg=counter.element_handle(), timeout=30_000)
    assert "running" in status.inner_text()
    panel.locator("button", has_text="Stop").click()
    page.wait_for_function("el => el.textContent.startsWith('stopped')", arg=status.element_handle(), timeout=60_000)
    page.wait_for_timeout(1000)                        # the last batch draws
    panel.screenshot(path=str(ARTIFACTS / "02_live_training_panel.png"))
    assert panel.locator("canvas").count() >= 7
    stopped = [r for r in _store(lab).list_runs() if r["status"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["config"]["epochs"] == LONG_EPOCHS   # the typed value reached it
    page.wait_for_function(IDLE, arg="02_live_training.ipynb")


def _check_03(nb, lab, page) -> None:
    runs = _store(lab).list_runs(study="notebook-tour")
    assert len(runs) == 12 and all(r["key"] for r in runs)
    assert all(r["status"] in ("finished", "diverged") for r in runs), [(r["name"], r["reason"]) for r in runs]
    text = _text(nb)
    assert "12 policies x 1 seed(s): 12 runs trained" in text
    assert "| verdict |" in text and "healthy" in text          # the study table says which learned


def _check_04(nb, lab, page) -> None:
    text = _text(nb)
    store = _store(lab)
    runs = {r["name"].rsplit("=", 1)[-1]: r for r in store.list_runs() if "synthetic" in (r["name"] or "")}
    assert runs["strict"]["status"] == "finished"
    paper = runs["paper"]
    assert paper["status"] in ("finished", "diverged")
    if paper["status"] == "diverged":                     # what the issue saw: no epoch finished, said in words
        step = paper["reason"].split(":")[0]
        assert f"What happened: diverged at {step} (" in text
        assert "No epoch finished" in text
    assert text.count("What happened:") >= 2
    assert "MNIST is not on this machine" in text          # the data folder is empty: said, and skipped
    assert all("report" in store.get_run(r["id"])["artifacts"] for r in runs.values())


CHECKS = {"01_derivations": _check_01, "02_live_training": _check_02, "03_what_if_lr": _check_03,
          "04_paper_experiments": _check_04}
