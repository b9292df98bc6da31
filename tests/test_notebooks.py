"""Every notebook runs top to bottom on a fresh kernel (QUICK mode), and is committed clean."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

from ui_helpers import venv_kernelspec

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """python3 is this venv's python; runs go to a temporary store; QUICK mode."""
    monkeypatch.setenv("JUPYTER_PATH", str(venv_kernelspec(tmp_path / "jupyter-data")))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("LIPSCHITZ_LAB_QUICK", "1")
    monkeypatch.setenv("LIPSCHITZ_LAB_STORE", str(tmp_path / "store" / "runs.db"))
    from jupyter_client.kernelspec import KernelSpecManager
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    return tmp_path


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_derivations.ipynb", "02_live_training.ipynb", "04_paper_experiments.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, kernel_env):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    workdir = kernel_env / "cwd"
    workdir.mkdir()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()   # raises CellExecutionError, naming the cell, on the first error

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    mimes = {m for o in outputs for m in o.get("data", {})}
    if "derivation_panel(" in _source(nb) or "training_panel(" in _source(nb) or "runs_panel(" in _source(nb):
        # the panels: BokehJS loaded inline once, then widget views
        assert "application/vnd.bokehjs_load.v0+json" in mimes
        assert "application/vnd.jupyter.widget-view+json" in mimes
    if path.name == "02_live_training.ipynb":
        from lipschitz_lab.runs import RunStore
        runs = RunStore(kernel_env / "store" / "runs.db").list_runs()
        assert [r["status"] for r in runs] == ["finished"] and runs[0]["name"] == "direct"
        assert "report" in runs[0]["artifacts"]


def _source(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")
