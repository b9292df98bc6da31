"""The token-sequence data sets: modular_addition against Python's own arithmetic, text against
the characters of its file, ignore_index in the criteria, one-line errors, the shipped corpus."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lipschitz_lab.data import DatasetNotFoundError, get_dataset
from lipschitz_lab.data.sequence import CORPUS, IGNORE_INDEX, flatten_tokens, token_correct
from lipschitz_lab.losses import make_criterion

ROOT = Path(__file__).resolve().parents[1]


def tensors(split):
    return split.as_tensors()


# -- modular addition ----------------------------------------------------------------------
def test_modular_addition_holds_every_equation_once_with_the_answer_only_scored():
    p = 7
    s = get_dataset("modular_addition", p=p, val_fraction=0.25)
    assert (s.task, s.inputs, s.input_shape) == ("multiclass", "tokens", (4,))
    assert s.num_outputs == s.num_classes == p + 2                       # the numbers, "+" and "="
    seen = []
    for split in (s.train, s.val, s.test):
        x, y = tensors(split)
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (len(split), 4)
        for (a, plus, b, eq), target in zip(x.tolist(), y.tolist()):
            assert (plus, eq) == (p, p + 1) and 0 <= a < p and 0 <= b < p
            assert target == [IGNORE_INDEX] * 3 + [(a + b) % p]       # Python's own arithmetic
            seen.append((a, b))
    assert sorted(seen) == [(a, b) for a in range(p) for b in range(p)]    # all 49, none twice
    # 20 % test (10 of 49), then a quarter of the other 39 for validation (10)
    assert (len(s.train), len(s.val), len(s.test)) == (29, 10, 10)


def test_modular_addition_splits_are_fixed_by_the_seed():
    a, b = get_dataset("modular_addition", seed=3), get_dataset("modular_addition", seed=3)
    c = get_dataset("modular_addition", seed=4)
    for name in ("train", "val", "test"):
        assert all(torch.equal(u, v) for u, v in zip(tensors(getattr(a, name)), tensors(getattr(b, name))))
    assert not torch.equal(tensors(a.test)[0], tensors(c.test)[0])
    assert len(get_dataset("modular_addition", train_subset=50).train) == 50


# -- text ----------------------------------------------------------------------------------
def test_text_windows_are_the_files_characters_shifted_by_one(tmp_path):
    text = "".join(random.Random(0).choices("abcdéλ≤ \n", k=600))    # non-ASCII: characters, not bytes
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    s = get_dataset("text", path=str(tmp_path / "t.txt"), block_size=8, val_fraction=0.2)
    vocab = sorted(set(text))
    assert (s.inputs, s.input_shape, s.num_outputs) == ("tokens", (8,), len(vocab))
    # the text in order: test the last 10 % (60 characters), validation 20 % of the 540 before
    # it (108), train the rest; windows of T + 1 = 9 characters every 8 within each part
    cuts = {"train": (0, 432), "val": (432, 540), "test": (540, 600)}
    for name, (a, b) in cuts.items():
        x, y = tensors(getattr(s, name))
        assert torch.equal(x[:, 1:], y[:, :-1])            # y is x one character on
        windows = ["".join(vocab[i] for i in row_x + row_y[-1:])
                   for row_x, row_y in zip(x.tolist(), y.tolist())]
        assert windows == [text[i:i + 9] for i in range(a, b - 8, 8)], name
    overlapping = get_dataset("text", path=str(tmp_path / "t.txt"), block_size=8, stride=2, val_fraction=0.2)
    assert len(overlapping.train) == len(range(0, 432 - 8, 2))


def test_text_defaults_to_the_shipped_corpus_offline():
    s = get_dataset("text")
    corpus = resources.files("lipschitz_lab.data").joinpath(CORPUS).read_text(encoding="utf-8")
    assert len(corpus) > 20_000 and "Lipschitz" in corpus
    assert s.num_outputs == len(set(corpus)) and s.input_shape == (64,)
    x, _ = tensors(s.train)
    vocab = sorted(set(corpus))
    assert corpus.startswith("".join(vocab[i] for i in x[0].tolist()))


def test_the_corpus_ships_in_the_wheel(tmp_path):
    """pyproject's package-data puts it into the wheel, so ``pip install`` users have it too."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "lipschitz_lab", src / "lipschitz_lab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert f"lipschitz_lab/data/{CORPUS}" in zipfile.ZipFile(wheel).namelist()


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "absent.txt", "no such file"),
    (lambda d: d, "cannot read the file"),
    (lambda d: (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1")) and d / "latin1.txt", "not UTF-8"),
    (lambda d: (d / "short.txt").write_text("tiny") and d / "short.txt", "too few"),
])
def test_a_bad_path_is_one_line_naming_the_field_and_value(tmp_path, make, needle):
    path = str(make(tmp_path))
    with pytest.raises(ValueError) as info:
        get_dataset("text", path=path)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and (f"path={path!r}" in msg or "block_size=64" in msg)
    missing = needle in ("no such file", "cannot read the file")
    assert isinstance(info.value, DatasetNotFoundError) == missing


# -- targets that are not scored ------------------------------------------------------------
@pytest.mark.parametrize("loss", ["softmax_ce", "label_smoothed_ce"])
def test_the_criteria_skip_ignored_targets(loss):
    """The lab's criterion on the flattened (B*T, V) batch equals the criterion on the answer
    positions alone: ignore_index=-100 rows count neither in the sum nor in the mean."""
    x, y = tensors(get_dataset("modular_addition", p=5).train)
    out = torch.randn(*x.shape, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    crit = make_criterion(loss)
    oracle = crit(out[:, -1], y[:, -1])                       # only the answers, (B, V) and (B,)
    torch.testing.assert_close(crit(*flatten_tokens(out, y)), oracle, rtol=1e-12, atol=0)


def test_token_accuracy_counts_only_the_scored_tokens():
    y = torch.tensor([[IGNORE_INDEX, 2, 0], [1, IGNORE_INDEX, IGNORE_INDEX]])
    out = torch.zeros(2, 3, 4)
    for b, t, k in ((0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 1), (1, 1, 0), (1, 2, 0)):
        out[b, t, k] = 1.0
    # scored: (0,1) right, (0,2) wrong, (1,0) right -> 2 of 3, in sequences' worth: 2 * 2/3
    assert token_correct(out, y).item() == pytest.approx(2 * 2 / 3)
    assert flatten_tokens(out, y)[0].shape == (6, 4) and flatten_tokens(out[:, 0], y[:, 0])[1].shape == (2,)
