"""Every notebook runs top to bottom on a fresh kernel, in its default mode (what a user gets
from Run All) and in QUICK mode, and is committed clean."""
from __future__ import annotations

import html
import sys
import time
from pathlib import Path

import nbformat
import pytest

from ui_helpers import venv_kernelspec

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 600


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """python3 is this venv's python; runs go to a temporary store; the default mode (no QUICK)."""
    monkeypatch.setenv("JUPYTER_PATH", str(venv_kernelspec(tmp_path / "jupyter-data")))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.delenv("LIPSCHITZ_LAB_QUICK", raising=False)      # conftest sets it for the other tests
    monkeypatch.delenv("LIPSCHITZ_LAB_FULL_STUDY", raising=False)
    monkeypatch.setenv("LIPSCHITZ_LAB_STORE", str(tmp_path / "store" / "runs.db"))
    from jupyter_client.kernelspec import KernelSpecManager
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    return tmp_path


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_derivations.ipynb", "02_live_training.ipynb", "03_what_if_lr.ipynb",
            "04_paper_experiments.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def _execute(path: Path, tmp: Path):
    """Run the notebook as Run All does, in a fresh kernel and working folder; the executed notebook."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    workdir = tmp / "cwd"
    workdir.mkdir()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    t0 = time.perf_counter()
    client.execute()   # raises CellExecutionError, naming the cell, on the first error
    print(f"\n{path.name}: {time.perf_counter() - t0:.0f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    mimes = {m for o in outputs for m in o.get("data", {})}
    if any(f"{panel}(" in _source(nb) for panel in ("derivation_panel", "training_panel", "runs_panel")):
        # the panels: BokehJS loaded inline once, then widget views
        assert "application/vnd.bokehjs_load.v0+json" in mimes
        assert "application/vnd.jupyter.widget-view+json" in mimes
    return nb


def _source(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def _text(nb) -> str:
    """Everything the cells printed or displayed as text or HTML."""
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", ""))
            parts += [o.get("data", {}).get(m, "") for m in ("text/plain", "text/html")]
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


def _store(kernel_env: Path):
    from lipschitz_lab.runs import RunStore
    return RunStore(kernel_env / "store" / "runs.db")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_in_its_default_mode(path, kernel_env):
    nb = _execute(path, kernel_env)
    CHECKS.get(path.stem, lambda nb, env: None)(nb, kernel_env)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_in_quick_mode_without_data_files(path, kernel_env, monkeypatch):
    monkeypatch.setenv("LIPSCHITZ_LAB_QUICK", "1")
    empty = kernel_env / "no-data"
    empty.mkdir()
    monkeypatch.setenv("LIPSCHITZ_LAB_DATA", str(empty))         # no MNIST: the notebooks say so and go on
    nb = _execute(path, kernel_env)
    if path.stem == "04_paper_experiments":
        assert "MNIST is not on this machine" in _text(nb)
    if path.stem == "02_live_training":
        _check_02(nb, kernel_env)


# -- what each notebook must show ---------------------------------------------------------------
def _check_01(nb, kernel_env) -> None:
    from lipschitz_lab.symbolic import derive_all
    from lipschitz_lab.symbolic.render import witness_text
    (table,) = [o["data"]["text/html"] for c in nb.cells if "verdicts = pd.DataFrame" in c.source
                for o in c.outputs if "text/html" in o.get("data", {})]
    for name, d in derive_all().items():
        if d.witness:
            assert witness_text(d.witness) in html.unescape(table), name      # whole, not cut off
    assert "\u2026" not in table and "None" not in table


def _check_02(nb, kernel_env) -> None:
    runs = _store(kernel_env).list_runs()
    assert [r["status"] for r in runs] == ["finished"] and runs[0]["name"] == "direct"
    assert "report" in runs[0]["artifacts"]


def _check_03(nb, kernel_env) -> None:
    runs = _store(kernel_env).list_runs(study="notebook-tour")
    assert len(runs) == 12 and all(r["key"] for r in runs)
    assert all(r["status"] in ("finished", "diverged") for r in runs), [(r["name"], r["reason"]) for r in runs]
    assert "12 policies x 1 seed(s): 12 runs trained" in _text(nb)


def _check_04(nb, kernel_env) -> None:
    text = _text(nb)
    store = _store(kernel_env)
    runs = {r["name"].rsplit("=", 1)[-1]: r for r in store.list_runs() if "synthetic" in (r["name"] or "")}
    assert runs["strict"]["status"] == "finished"
    paper = runs["paper"]
    assert paper["status"] in ("finished", "diverged")
    if paper["status"] == "diverged":                     # what the issue saw: no epoch finished, said in words
        step = paper["reason"].split(":")[0]
        assert f"What happened: diverged at {step} (" in text
        assert "No epoch finished" in text
    assert text.count("What happened:") >= 2
    assert ("MNIST found" in text) or ("MNIST is not on this machine" in text)
    assert all("report" in store.get_run(r["id"])["artifacts"] for r in runs.values())


CHECKS = {"01_derivations": _check_01, "02_live_training": _check_02, "03_what_if_lr": _check_03,
          "04_paper_experiments": _check_04}
