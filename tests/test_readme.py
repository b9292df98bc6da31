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


# -- every command in the README, as written ---------------------------------------------------------
def readme_commands() -> list[str]:
    """Each command line of the README's ```bash blocks: continuations joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


#: what a README command may leave to the test: a placeholder the reader fills in
PLACEHOLDERS = {"RUN_ID"}


def _parse(argv: list[str]) -> None:
    """The command's flags, presets and policy names exist (argparse, then the named presets)."""
    from lipschitz_lab.cli import build_parser
    from lipschitz_lab.config import PRESETS
    from lipschitz_lab.studies.spec import STUDY_PRESETS
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:                          # --help
        assert exc.code == 0, argv
    if "--preset" in argv:
        name = argv[argv.index("--preset") + 1]
        assert name in (STUDY_PRESETS if argv[0] == "study" else PRESETS), argv


def _make(line: str) -> None:
    """``[VAR=value ...] make TARGET``: make knows the target and its recipe expands (make -n)."""
    import os
    import shlex
    import subprocess
    words = shlex.split(line)
    env = dict(os.environ, **dict(w.split("=", 1) for w in words[:words.index("make")]))
    done = subprocess.run(["make", "-n", *words[words.index("make") + 1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (line, done.stderr)


MY_LOSSES = '''
import sympy as sp

from lipschitz_lab.symbolic import LossSpec, finite, real_line
from lipschitz_lab.symbolic.symbols import m, y, z

logistic = LossSpec(name="logistic", title="Logistic loss, y in {-1, 1}",
                    loss=sp.log(1 + sp.exp(-y * z)) / m, wrt=z,
                    variables=(real_line(z, "logit"), finite(y, (-1, 1), "label")))
'''


def test_every_readme_command_runs_as_written(cli, tmp_path, monkeypatch):
    """The quick ones run (in this process, in a fresh folder, the run store in it); the ones that
    serve, train for minutes or need a GPU or MNIST are parsed: their flags, presets and make targets
    exist.  A command of a kind this test does not know fails it."""
    import shlex

    from lipschitz_lab import losses
    from lipschitz_lab.runs import RunStore
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIPSCHITZ_LAB_STORE", str(tmp_path / "runs.db"))
    monkeypatch.setenv("LIPSCHITZ_LAB_DATA", str(tmp_path / "no-data"))
    (tmp_path / "my_losses.py").write_text(MY_LOSSES)
    (tmp_path / "run.toml").write_text('[train]\ndataset = "digits"\nepochs = 1\n')
    run = {"derive", "lr", "runs", "study --list", "train --help", "train --config", "train --loss-module",
           "train --preset", "train --dataset digits --model mlp"}
    ran, parsed = [], []
    try:
        for line in readme_commands():
            words = shlex.split(line)
            if "make" in words:
                _make(line)
                parsed.append(line)
            elif words[0] == "conda":
                assert words[-1] == "environment.yml" and (ROOT / words[-1]).is_file()
            elif words[0] == "torchrun":
                _parse(words[words.index("lipschitz_lab") + 1:])
                parsed.append(line)
            else:
                assert words[0] == "lipschitz-lab", f"a README command this test does not know: {line}"
                argv = words[1:]
                if not any(" ".join(argv).startswith(k) for k in run):
                    _parse(argv)
                    parsed.append(line)
                    continue
                if "RUN_ID" in argv:
                    argv = [RunStore(tmp_path / "runs.db").list_runs()[-1]["id"] if a in PLACEHOLDERS else a
                            for a in argv]
                if argv == ["train", "--help"]:
                    _parse(argv)
                    ran.append(line)
                    continue
                code, out, err = cli(*argv)
                if argv[:2] == ["train", "--preset"]:       # no MNIST here: one line says which files where
                    assert code == 2 and len(err.strip().splitlines()) == 1 and "mnist" in err.lower(), err
                else:
                    assert code == 0, (line, err[-2000:])
                ran.append(line)
    finally:
        if "logistic" in losses.loss_names():
            losses.unregister("logistic")
    assert len(ran) >= 12 and len(parsed) >= 10, (ran, parsed)
    runs = RunStore(tmp_path / "runs.db").list_runs()
    assert {r["config"]["loss"] for r in runs} >= {"logistic", "softmax_ce"}
    assert all(r["status"] == "finished" for r in runs), [(r["name"], r["status"], r["reason"]) for r in runs]
    assert (tmp_path / "run.csv").is_file() and (tmp_path / "derivations" / "softmax_ce.md").is_file()
