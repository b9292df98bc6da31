"""The data-set registry: one name -> one builder that returns train/val/test splits.

A builder is ``builder(request, **options) -> DataSplits``.  ``request`` carries
the arguments every data set shares (seed, validation fraction, ...); the
keyword-only parameters of the builder are its own options, and
:func:`get_dataset` rejects any other option by name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from lipschitz_lab._registry import check_options, registrar
from lipschitz_lab.data.roots import DATA_ROOT_ENV, default_data_root  # noqa: F401 (re-exported)

TASKS = ("multiclass", "binary", "regression")
#: what a data set's x holds: float feature tensors, or int64 token ids (sequence models)
INPUTS = ("features", "tokens")


class DatasetNotFoundError(ValueError):
    """The files of a data set are not on disk and could not be downloaded."""


@dataclass
class DataSplits:
    """Three ``(x, y)`` datasets and what a model and a loss need to know about them.

    ``x`` is float32 of shape ``input_shape``.  ``y`` is an int64 class index
    (multiclass), a float32 0./1. (binary) or a standardised float32 value
    (regression); each is a 0-d tensor, so a batch of targets has shape (B,).

    Token sequences (``inputs="tokens"``, :mod:`.sequence`): ``x`` is int64 of shape
    ``input_shape = (T,)`` and ``y`` int64 of shape (T,), the next token or
    ``IGNORE_INDEX`` (-100) where nothing is scored; ``num_outputs`` is the vocabulary V.
    """

    name: str
    task: str                      # "multiclass" | "binary" | "regression": picks the loss
    train: Dataset
    val: Dataset                   # may be empty when val_fraction=0
    test: Dataset
    num_classes: int               # k for multiclass, 2 for binary, 0 for regression
    num_outputs: int               # width of the last Linear: k, or 1 (a logit / a value)
    input_shape: tuple[int, ...]   # per example, e.g. (64,), (1, 28, 28), (3, 32, 32)
    target_mean: float = 0.0       # regression: the model sees (y - target_mean) / target_scale
    target_scale: float = 1.0      # ... so errors in original units are target_scale * error
    inputs: str = "features"       # "tokens": (T,) int64 token ids, for a sequence model (tiny_gpt)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got task={self.task!r}")
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}; got inputs={self.inputs!r}")


@dataclass(frozen=True)
class DataRequest:
    """The arguments of :func:`get_dataset` that every builder receives."""

    name: str
    data_root: str | os.PathLike | None
    seed: int               # fixes every split, subset and synthetic draw
    val_fraction: float     # share of the training pool held out for validation
    augment: bool           # paper augmentation on the train split (image sets only)
    train_subset: int | None
    download: bool

    def root(self) -> Path:
        """The folder that holds the data sets' own folders (MNIST/, cifar-10-batches-py/, ...).

        ``data_root`` when given, else :func:`~lipschitz_lab.data.roots.default_data_root`
        (never relative to the current directory).
        """
        if self.data_root is not None:
            return Path(self.data_root).expanduser()
        return default_data_root()


Builder = Callable[..., DataSplits]

#: name -> builder; add to it with :func:`register_dataset`
DATASETS: dict[str, Builder] = {}


register_dataset = registrar(DATASETS, "data set")


def check_int(field: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= minimum, else raise naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {field}={value!r}")
    return value


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}; got {field}={value!r}")
    return value


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be True or False, got {field}={value!r}")
    return value


def get_dataset(name: str, *, data_root: str | os.PathLike | None = None, seed: int = 0,
                val_fraction: float = 0.1, augment: bool = True, train_subset: int | None = None,
                download: bool = True, **options: Any) -> DataSplits:
    """Build the train/val/test splits of a registered data set.

    ``options`` go to the data set's builder (e.g. ``image=True`` for digits,
    ``task="binary"`` for synthetic); an option it does not take raises
    ``ValueError``.  Missing files raise :class:`DatasetNotFoundError`.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set name={name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    check_int("seed", seed, 0)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got val_fraction={val_fraction!r}")
    if train_subset is not None:
        check_int("train_subset", train_subset, 1)
    check_bool("augment", augment)
    check_bool("download", download)
    request = DataRequest(name, data_root, seed, float(val_fraction), augment, train_subset, download)

    builder = DATASETS[name]
    check_options(builder, "data set", name, options)
    return builder(request, **options)
