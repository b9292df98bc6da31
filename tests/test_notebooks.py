"""The notebooks as files: committed clean, and saved clean by `make lab`.

Each notebook runs once, in its default mode, in tests/test_notebooks_browser.py (JupyterLab in
Chromium, through `make lab`): cell errors, tracebacks, the console, the drawn plots and what
each notebook must show are checked in that run, and so is `git status` after the save.
LIPSCHITZ_LAB_QUICK only shrinks the same cells' sizes, so a second, quick run would prove
nothing more; the browser run's empty data folder is the no-data (no MNIST) case.
"""
from __future__ import annotations

import copy
import runpy
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


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
    assert path.read_text(encoding="utf-8") == nbformat.writes(nb) + "\n"      # as Jupyter writes it


class _Config:
    """What Jupyter's config loader hands a config file as ``c``."""

    def __getattr__(self, name):
        value = type(self)()
        setattr(self, name, value)
        return value


def test_make_labs_save_hook_writes_a_run_notebook_back_as_committed():
    """jupyter/jupyter_server_config.py's hook on a notebook as JupyterLab saves it after Run All
    (outputs, execution counts, widget state, the kernel's full language_info): the committed bytes."""
    config = _Config()
    hook = runpy.run_path(str(ROOT / "jupyter" / "jupyter_server_config.py"),
                          init_globals={"get_config": lambda: config})["strip_outputs"]
    assert config.FileContentsManager.pre_save_hook is hook
    path = ROOT / "notebooks" / "02_live_training.ipynb"
    committed = nbformat.read(path, as_version=4)
    run = copy.deepcopy(committed)
    run.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    run.metadata["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python"}
    for i, cell in enumerate(c for c in run.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
        cell.metadata["execution"] = {"iopub.status.idle": "2026-12-06T00:00:00Z"}
    model = {"type": "notebook", "content": run}
    hook(model, path=path.name, contents_manager=None)
    assert nbformat.writes(nbformat.from_dict(model["content"])) == nbformat.writes(committed)
