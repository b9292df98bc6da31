"""The README's own code runs as it is printed (issue 10, item 3): the loss of one's own,
registered once, trains from train() on breast_cancer."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {section}")
    body = text[start:text.index("\n## ", start + 3) if "\n## " in text[start + 3:] else len(text)]
    (block,) = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return block


def test_the_readme_loss_of_ones_own_trains_on_breast_cancer(tmp_path, monkeypatch, capsys):
    from lipschitz_lab import losses
    monkeypatch.setenv("LIPSCHITZ_LAB_STORE", str(tmp_path / "runs.db"))
    code = _python_block("Adding your own loss")
    try:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        if "logistic" in losses.loss_names():
            losses.unregister("logistic")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "0.09375" and out[1] == "0.0078125"           # what the README's comments say
    run = namespace["run"]
    assert run.status == "finished" and out[2].startswith("finished ")
    assert run.final["val_acc"] > 0.8


def test_the_readme_names_the_one_way_to_use_a_loss():
    text = (ROOT / "README.md").read_text()
    assert "derive --codegen" not in text.split("## Adding your own loss")[1]
    assert "losses.register" in _python_block("Adding your own loss")


@pytest.mark.parametrize("section", ["LipschitzLR in any PyTorch loop"])
def test_the_readme_loop_compiles(section):
    compile(_python_block(section), "README.md", "exec")
