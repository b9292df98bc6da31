"""Token-sequence data sets for sequence models (``tiny_gpt``), offline, and their batch helpers.

``modular_addition``
    Every equation ``a + b = c`` with ``c = (a + b) mod p``, as the tokens
    ``[a, +, b, =]``; the target is ``c`` at the ``=`` position and
    :data:`IGNORE_INDEX` elsewhere (only the answer is scored).  Generated,
    deterministic; the equations are split into train/val/test by ``seed``.
``text``
    Character level, from any UTF-8 file (``path``); by default the corpus that
    ships in this package (``lab_corpus.txt``: the README, docs/ and the
    rendered derivations of the built-in losses, concatenated).  The vocabulary
    is the file's characters, sorted.  Windows of ``block_size + 1`` characters
    become ``x = w[:-1]``, ``y = w[1:]`` (every position scored).  The text is
    split in order: the last 10 % is the test split, the ``val_fraction`` before
    it validation (no window spans two splits, so none leaks).

Both are multiclass data sets with ``inputs="tokens"``: ``x`` and ``y`` are int64
of shape (T,), ``num_outputs`` = ``num_classes`` = the vocabulary V.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from lipschitz_lab.data.memory import PairDataset
from lipschitz_lab.data.registry import (
    DataRequest, DataSplits, DatasetNotFoundError, check_int, register_dataset,
)
from lipschitz_lab.data.splits import holdout, subset

__all__ = ["IGNORE_INDEX", "CORPUS", "flatten_tokens", "token_correct", "read_text"]

#: the target of a position that is not scored (torch's cross_entropy default)
IGNORE_INDEX = -100
#: the default text: a file of this package (found after ``pip install`` too)
CORPUS = "lab_corpus.txt"
TEST_FRACTION = 0.2           # modular_addition: as the tabular sets
TEXT_TEST_FRACTION = 0.1      # text: nanoGPT's 90/10 split, the tail as test


# -- batches -------------------------------------------------------------------------------
def flatten_tokens(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) logits and (B, T) targets as (B*T, V) and (B*T), what ``cross_entropy`` takes;
    any other pair is returned unchanged."""
    if out.dim() == 3 and y.dim() == 2 and out.shape[:2] == y.shape:
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)
    return out, y


def token_correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Right predictions of (B, T, V) logits over the targets that are not :data:`IGNORE_INDEX`,
    in sequences' worth: ``B * correct / counted``, a float64 device tensor (no host sync).

    Divided by B it is the batch's accuracy over its counted tokens; summed over batches and
    divided by the sequences it is the token accuracy whenever every sequence counts the same
    number of tokens (both data sets here: one for modular_addition, T for text).
    """
    counted = y != IGNORE_INDEX
    correct = ((out.argmax(dim=-1) == y) & counted).sum().double()
    return correct * len(y) / counted.sum().clamp(min=1).double()


def _tokens(name: str, x: torch.Tensor, y: torch.Tensor, parts: dict[str, np.ndarray],
            vocab: int) -> DataSplits:
    def part(idx: np.ndarray) -> PairDataset:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        return PairDataset(x[idx], y[idx])
    return DataSplits(name=name, task="multiclass", train=part(parts["train"]), val=part(parts["val"]),
                      test=part(parts["test"]), num_classes=vocab, num_outputs=vocab,
                      input_shape=(x.shape[1],), inputs="tokens")


# -- modular addition ----------------------------------------------------------------------
@register_dataset("modular_addition")
def modular_addition(request: DataRequest, *, p: int = 31) -> DataSplits:
    """All p² equations ``a + b = c (mod p)``; tokens 0..p-1 are the numbers, p is "+", p+1 is "=".

    p = 31 gives 961 equations, ~690 for training at the default fractions: a CPU learns it
    in seconds.  20 % test, then ``val_fraction`` of the rest, drawn with ``seed``.
    """
    check_int("p", p, 2)
    a, b = (g.reshape(-1) for g in torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"))
    plus, equals = torch.full_like(a, p), torch.full_like(a, p + 1)
    x = torch.stack([a, plus, b, equals], dim=1)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, -1] = (a + b) % p
    rng = np.random.default_rng(request.seed)
    answers = y[:, -1].numpy()
    rest, test = holdout(answers, TEST_FRACTION, rng, stratify=False)
    keep, val = holdout(answers[rest], request.val_fraction, rng, stratify=False)
    train = rest[keep]
    if request.train_subset is not None:
        train = train[subset(answers[train], request.train_subset, rng, stratify=False)]
    return _tokens(request.name, x, y, {"train": train, "val": rest[val], "test": test}, p + 2)


# -- text ------------------------------------------------------------------------------------
def read_text(path: str | Path | None) -> str:
    """The UTF-8 text at ``path``, or the shipped corpus for None; one line naming ``path`` if not."""
    if path is None:
        return resources.files(__package__).joinpath(CORPUS).read_text(encoding="utf-8")
    if not isinstance(path, (str, Path)) or not str(path):
        raise ValueError(f"path must be the name of a UTF-8 text file, got path={path!r}")
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"path={str(path)!r}: no such file") from None
    except OSError as exc:
        raise DatasetNotFoundError(f"path={str(path)!r}: cannot read the file ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"path={str(path)!r}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _windows(ids: torch.Tensor, start: int, stop: int, T: int, stride: int) -> torch.Tensor:
    """Windows of T + 1 ids that lie in [start, stop)."""
    n = (stop - start - (T + 1)) // stride + 1
    if n < 1:
        return torch.zeros(0, T + 1, dtype=torch.int64)
    return ids[start:stop].unfold(0, T + 1, stride)[:n]


@register_dataset("text")
def text(request: DataRequest, *, path: str | None = None, block_size: int = 64,
         stride: int | None = None) -> DataSplits:
    """Characters of ``path`` (None: the shipped corpus) in windows of ``block_size`` (T).

    ``stride`` (default T, no overlap) is how far one window starts after the previous;
    ``train_subset`` keeps that many training windows, drawn with ``seed``.
    """
    check_int("block_size", block_size, 1)
    stride = block_size if stride is None else check_int("stride", stride, 1)
    chars = read_text(path)
    vocab = sorted(set(chars))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in chars], dtype=torch.int64)
    # 1) the text in order: train | val | test; the splits' cuts fall between windows
    n = len(ids)
    test_at = n - math.floor(TEXT_TEST_FRACTION * n)
    val_at = test_at - math.floor(request.val_fraction * test_at)
    cuts = ((0, val_at), (val_at, test_at), (test_at, n))
    parts = [_windows(ids, a, b, block_size, stride) for a, b in cuts]
    if len(parts[0]) == 0 or len(parts[2]) == 0:
        where = "the shipped corpus" if path is None else f"path={str(path)!r}"
        raise ValueError(f"block_size={block_size}: {where} has {n} characters, too few for a training and a "
                         f"test window of {block_size + 1}; use a longer text or a smaller block_size")
    w = torch.cat(parts)
    sizes = np.cumsum([0] + [len(t) for t in parts])
    idx = {name: np.arange(sizes[i], sizes[i + 1]) for i, name in enumerate(("train", "val", "test"))}
    if request.train_subset is not None:
        rng = np.random.default_rng(request.seed)
        idx["train"] = idx["train"][subset(idx["train"], request.train_subset, rng, stratify=False)]
    return _tokens(request.name, w[:, :-1].contiguous(), w[:, 1:].contiguous(), idx, len(vocab))
