"""`make lab`'s server settings: notebooks are saved without their outputs.

Run All and JupyterLab's autosave would write every plot, table and widget state into
the repository's notebooks (10 KB each grew to 8 MB).  So each notebook is saved as it
is committed: code cells without outputs or execution counts, no widget state, and only
the language's name as language_info.  `git status` stays clean after Run All; the
outputs live in the open tab until it closes (File > Save and Export Notebook As... keeps
a copy with them).  tests/test_notebooks_browser.py runs every notebook through `make lab`
and checks `git status`.
"""


def strip_outputs(model, **_kwargs):
    """The contents manager's pre-save hook: ``model`` is the notebook about to be written."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    nb = model["content"]
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    if isinstance(meta.get("language_info"), dict):
        meta["language_info"] = {"name": meta["language_info"].get("name", "python")}
    for cell in nb.get("cells", []):
        for key in ("execution", "collapsed", "scrolled", "jupyter", "trusted"):
            cell.get("metadata", {}).pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None


c = get_config()  # noqa: F821  (Jupyter's config loader provides it)
c.FileContentsManager.pre_save_hook = strip_outputs
c.ContentsManager.pre_save_hook = strip_outputs
