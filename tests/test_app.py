"""The lab as an app: ui/app.py's tabs, and `lipschitz-lab app` / `make run` serving them with Voilà.

The page in a real browser is tests/test_browser.py; here the server is driven with
plain HTTP: one page on 127.0.0.1 behind a token, no notebook source in it, the
kernel of a page nobody watches culled, Ctrl-C ending it all with exit code 0.
"""
from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from lipschitz_lab.runs import RunStore
from lipschitz_lab.ui.app import TABS, LabApp, app
from ui_helpers import jupyter_env

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
QUICK = dict(epochs=1, max_steps=6)

pytestmark = pytest.mark.timeout(300)


# -- the layout -------------------------------------------------------------------------------

def test_the_app_lays_the_four_panels_out_and_a_finished_run_reaches_the_runs_tab(tmp_path):
    from lipschitz_lab.ui.panel_derivation import DerivationPanel
    from lipschitz_lab.ui.panel_runs import RunsPanel
    from lipschitz_lab.ui.panel_study import StudyPanel
    from lipschitz_lab.ui.panel_training import TrainingPanel
    store = RunStore(tmp_path / "runs.db")
    lab = app(store, lazy=False, training=QUICK)
    assert lab.tabs.titles == TABS == ("Derivations", "Live training", "What-if study", "Runs")
    kinds = (DerivationPanel, TrainingPanel, StudyPanel, RunsPanel)
    assert [type(c) for c in lab.shown()] == list(kinds) and lab.ready()
    assert str(store.path.resolve()) in lab.header.value

    training, runs = lab.panels["Live training"], lab.panels["Runs"]
    assert runs.select.options == ()
    training.start_button.click()
    assert training.wait(120)
    training.flush()                     # what the kernel's loop does; the app refreshes Runs itself
    assert training.status_text.startswith("finished"), training.status_text
    assert [v for _, v in runs.select.options] == [training.run_id]
    assert "digits mlp softmax_ce · lipschitz strict/step (panel)" in runs.table.value
    assert "finished" in runs.table.value and "healthy" in runs.table.value


def test_in_a_kernel_the_tabs_come_at_once_and_the_panels_follow_the_shown_one_first(tmp_path):
    async def build() -> tuple[LabApp, list[str]]:
        lab = LabApp(tmp_path / "runs.db", lazy=True, selected="Runs")
        first = [type(c).__name__ for c in lab.shown()]
        tabs = lab.tabs.children
        while not lab.ready():
            await asyncio.sleep(0.05)
        assert lab.tabs.children is tabs     # the tabs never change: a tab clicked meanwhile stays selected
        return lab, first

    lab, first = asyncio.run(asyncio.wait_for(build(), 240))
    assert first == ["HTML"] * 4                         # the loading lines, before any panel
    assert lab.tabs.selected_index == 3 and list(lab.panels)[0] == "Runs"
    assert [type(c).__name__ for c in lab.shown()] == ["DerivationPanel", "TrainingPanel", "StudyPanel",
                                                       "RunsPanel"]
    assert lab.errors == {}


def test_in_a_jupyter_kernel_app_loads_bokehjs_in_its_cell_and_builds_the_panels_after_it(tmp_path, monkeypatch):
    """The same tabs as the last line of a notebook cell (JupyterLab): the cell returns at once,
    the panels arrive while the kernel waits for the next cell."""
    import nbformat
    from nbclient import NotebookClient
    for key, value in jupyter_env(tmp_path, LIPSCHITZ_LAB_STORE=str(tmp_path / "runs.db")).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\nfrom lipschitz_lab.ui.app import app\n"
                                          "t0 = time.perf_counter()\nlab = app()\nbuilt = time.perf_counter() - t0\nlab"),
                nbformat.v4.new_code_cell("import asyncio\nprint(f'{len(lab.panels)} panels when the cell ended')\n"
                                          "while not lab.ready():\n    await asyncio.sleep(0.1)\n"
                                          "print(sorted(lab.panels), lab.errors, f'{built:.2f}')")]
    NotebookClient(nb, timeout=240, kernel_name="python3").execute()
    mimes = {m for o in nb.cells[0].outputs for m in o.get("data", {})}
    assert {"application/vnd.bokehjs_load.v0+json", "application/vnd.jupyter.widget-view+json"} <= mimes
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert text.startswith("0 panels when the cell ended"), text
    shown = text.splitlines()[1]
    assert shown.startswith("['Derivations', 'Live training', 'Runs', 'What-if study'] {} "), shown
    assert float(shown.split()[-1]) < 5.0           # the cell only lays the tabs out


# -- `lipschitz-lab app` ----------------------------------------------------------------------

def test_bad_options_are_one_line_errors(cli):
    code, _, err = cli("app", "--port", "70000", "--no-browser")
    assert code == 2 and err.strip() == "lipschitz-lab: error: --port=70000: must be in 1..65535 (or 0: a free one)"
    code, _, err = cli("app", "--cull-after", "0", "--no-browser")
    assert code == 2 and "--cull-after=0" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("app", "--threads", "0", "--no-browser")
    assert code == 2 and err.strip() == "lipschitz-lab: error: --threads=0: must be >= 1"


def test_the_pages_kernel_leaves_a_core_to_the_page_unless_told(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lipschitz_lab.cli.app import _environment, kernel_threads
    assert [kernel_threads(n) for n in (1, 2, 16)] == [1, 1, 15]
    args = SimpleNamespace(store=str(tmp_path / "s.db"), data_root=None, threads=None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _environment(tmp_path, args, "t")["OMP_NUM_THREADS"] == str(kernel_threads())
    monkeypatch.setenv("OMP_NUM_THREADS", "3")                   # the user's setting wins
    assert _environment(tmp_path, args, "t")["OMP_NUM_THREADS"] == "3"
    args.threads = 2                                             # and --threads over it
    assert _environment(tmp_path, args, "t")["OMP_NUM_THREADS"] == "2"


class App:
    """``lipschitz-lab app`` (or ``make run``) in a subprocess; its stdout read line by line."""

    def __init__(self, cmd: list[str], tmp: Path, **env: str):
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=jupyter_env(tmp, **env), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            self.log.append(line)
            self.lines.put(line)

    def url(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, f"the app exited {self.proc.returncode}:\n{''.join(self.log)}"
                continue
            found = re.search(r"open (http://\S+)", line)
            if found:
                return found.group(1)
        raise AssertionError(f"no URL printed within {timeout} s:\n{''.join(self.log)}")

    def kernels(self) -> list[psutil.Process]:
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p for p in procs if _is_kernel(p)]

    def interrupt(self, sig=signal.SIGINT, group: bool = False, timeout: float = 20) -> int:
        (os.killpg if group else os.kill)(self.proc.pid, sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                p.kill()
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _is_kernel(p: psutil.Process) -> bool:
    try:
        return "ipykernel_launcher" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def _get(url: str, timeout: float = 180) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _port(url: str) -> int:
    return int(re.match(r"http://127\.0\.0\.1:(\d+)/", url).group(1))


def _other_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))          # TEST-NET-1: no packet is sent for a UDP connect
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def test_the_app_serves_one_page_on_localhost_behind_a_token_and_ctrl_c_stops_it(tmp_path):
    store = tmp_path / "store" / "runs.db"
    served = App([sys.executable, "-m", "lipschitz_lab", "app", "--no-browser", "--store", str(store)], tmp_path)
    try:
        url = served.url()
        port = _port(url)
        token = re.search(r"\?token=([\w-]{24,})$", url)
        assert token, url
        # 1) the token is required; with it, one page of widgets and no notebook source
        status, body = _get(url.split("?")[0])
        assert status in (401, 403) or "widget-view" not in body
        status, body = _get(url)
        assert status == 200 and "application/vnd.jupyter.widget-view+json" in body
        assert "lipschitz_lab.ui.app" not in body and "app()" not in body            # strip_sources
        assert "cdn.jsdelivr.net" not in body and "lipschitz-lab/static/bokeh.min.js" in body
        # 2) on 127.0.0.1 only
        other = _other_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
        kernels = served.kernels()
        assert len(kernels) == 1
        # 3) Ctrl-C: exit code 0 within seconds, the port free, the kernel gone
        t0 = time.monotonic()
        assert served.interrupt() == 0
        assert time.monotonic() - t0 < 15
        assert not _listening(port)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in kernels)
        assert "stopping" in "".join(served.log)
    finally:
        served.close()


def test_a_page_nobody_watches_has_its_kernel_culled_and_no_token_means_none(tmp_path):
    served = App([sys.executable, "-m", "lipschitz_lab", "app", "--no-browser", "--no-token", "--cull-after", "2",
                  "--store", str(tmp_path / "runs.db")], tmp_path)
    try:
        url = served.url()
        assert "token" not in url
        status, body = _get(url)          # executes the page; no websocket ever connects to its kernel
        assert status == 200 and "widget-view" in body
        deadline = time.monotonic() + 60
        while served.kernels():
            assert time.monotonic() < deadline, "the kernel of the page nobody watches was not culled"
            time.sleep(0.5)
        assert served.proc.poll() is None and _listening(_port(url))      # the server itself stays
        assert served.interrupt(signal.SIGTERM) == 0                          # as Ctrl-C does
    finally:
        served.close()


@pytest.mark.skipif(not (VENV / ".installed-app").exists(), reason="needs the venv `make run` builds")
def test_make_run_starts_the_app_and_prints_its_url(tmp_path):
    port = None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = App(["make", "-s", "run"], tmp_path,
                 APP_ARGS=f"--no-browser --port={port} --store={tmp_path / 'runs.db'}")
    try:
        url = served.url()
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        status, body = _get(url)
        assert status == 200 and "application/vnd.jupyter.widget-view+json" in body
        served.interrupt(group=True)                  # Ctrl-C in the terminal: make and the app
        assert not _listening(port)
        assert "lipschitz-lab app: stopping" in "".join(served.log)
        time.sleep(0.5)                               # make's own last words, if any, arrive
        assert "***" not in "".join(served.log), "".join(served.log)    # no "make: *** ... Interrupt"
    finally:
        served.close()
