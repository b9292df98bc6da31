"""Small tabular data sets that need no files: scikit-learn's bundled sets and a synthetic one.

All share one recipe (:func:`tabular_splits`): hold out 20% for test, then
``val_fraction`` of the rest for validation (stratified for classification),
then standardise features -- and regression targets -- with train-split
statistics only, so nothing about val/test leaks into training.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from lipschitz_lab.data.memory import PairDataset
from lipschitz_lab.data.registry import (
    DataRequest, DataSplits, check_choice, check_int, check_bool, register_dataset, TASKS,
)
from lipschitz_lab.data.splits import holdout, subset

TEST_FRACTION = 0.2


def tabular_splits(name: str, X: np.ndarray, y: np.ndarray, task: str, request: DataRequest, *,
                   num_classes: int, example_shape: tuple[int, ...] | None = None) -> DataSplits:
    """Split, standardise and wrap ``X`` (N x features) and ``y`` (N) as tensors."""
    rng = np.random.default_rng(request.seed)
    stratify = task != "regression"
    # 1) fixed test hold-out, 2) validation from the rest, 3) optional training subset
    rest, test = holdout(y, TEST_FRACTION, rng, stratify=stratify)
    keep, val = holdout(y[rest], request.val_fraction, rng, stratify=stratify)
    train, val = rest[keep], rest[val]
    if request.train_subset is not None:
        train = train[subset(y[train], request.train_subset, rng, stratify=stratify)]

    # 4) standardise with train statistics; constant features (digits' blank border
    # pixels) get scale 1 so they stay 0 instead of dividing by zero
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std[std == 0] = 1.0
    X = ((X - mean) / std).astype(np.float32)
    if example_shape is not None:
        X = X.reshape(len(X), *example_shape)

    target_mean, target_scale = 0.0, 1.0
    if task == "multiclass":
        Y = torch.as_tensor(y, dtype=torch.int64)
    elif task == "binary":
        Y = torch.as_tensor(y, dtype=torch.float32)
    else:
        target_mean, target_scale = float(y[train].mean()), float(y[train].std()) or 1.0
        Y = torch.as_tensor((y - target_mean) / target_scale, dtype=torch.float32)

    X = torch.from_numpy(X)

    def part(idx: np.ndarray) -> PairDataset:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        return PairDataset(X[idx], Y[idx])

    return DataSplits(
        name=name, task=task, train=part(train), val=part(val), test=part(test),
        num_classes=num_classes, num_outputs=num_classes if task == "multiclass" else 1,
        input_shape=tuple(X.shape[1:]), target_mean=target_mean, target_scale=target_scale,
    )


@register_dataset("digits")
def digits(request: DataRequest, *, image: bool = False) -> DataSplits:
    """scikit-learn's 1,797 8x8 handwritten digits; ``image=True`` gives shape (1, 8, 8)."""
    from sklearn.datasets import load_digits

    check_bool("image", image)
    X, y = load_digits(return_X_y=True)
    return tabular_splits(request.name, X, y, "multiclass", request, num_classes=10,
                          example_shape=(1, 8, 8) if image else None)


@register_dataset("breast_cancer")
def breast_cancer(request: DataRequest) -> DataSplits:
    """Wisconsin breast cancer: 569 examples, 30 features, binary (1 = benign)."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return tabular_splits(request.name, X, y, "binary", request, num_classes=2)


@register_dataset("diabetes")
def diabetes(request: DataRequest) -> DataSplits:
    """Diabetes progression: 442 examples, 10 features, a real-valued target."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    return tabular_splits(request.name, X, y, "regression", request, num_classes=0)


@register_dataset("synthetic")
def synthetic(request: DataRequest, *, task: str = "regression", n: int = 1000,
              features: int = 20, classes: int = 3) -> DataSplits:
    """A deterministic draw (``torch.Generator`` seeded with ``seed``) for any task.

    - regression: ``y = X w / sqrt(d) + 0.1 noise`` (unit-variance signal)
    - binary: ``y = 1[X w / sqrt(d) + 0.5 noise > 0]`` (noisy, not separable)
    - multiclass: ``X = mu_y + noise`` with ``classes`` Gaussian centres
    """
    check_choice("task", task, TASKS)
    check_int("n", n, 10)  # at least a few examples in each of the three splits
    check_int("features", features, 1)
    check_int("classes", classes, 2)

    g = torch.Generator().manual_seed(request.seed)
    if task == "multiclass":
        centres = 2.0 * torch.randn(classes, features, generator=g)
        y = torch.randint(classes, (n,), generator=g)
        X = centres[y] + torch.randn(n, features, generator=g)
        num_classes = classes
    else:
        X = torch.randn(n, features, generator=g)
        w = torch.randn(features, generator=g)
        signal = X @ w / math.sqrt(features)
        if task == "regression":
            y = signal + 0.1 * torch.randn(n, generator=g)
            num_classes = 0
        else:
            y = (signal + 0.5 * torch.randn(n, generator=g) > 0).to(torch.int64)
            num_classes = 2
    return tabular_splits(request.name, X.double().numpy(), y.numpy(), task, request,
                          num_classes=num_classes)
