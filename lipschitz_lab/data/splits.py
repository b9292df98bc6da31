"""Index arithmetic for fixed splits: stratified hold-outs and class-balanced subsets.

Every function takes a ``numpy.random.Generator`` so that one seed fixes the
whole chain (test hold-out, then validation hold-out, then subset).
"""
from __future__ import annotations

import math

import numpy as np


def _round_half_up(x: float) -> int:
    # Python's round() rounds 2.5 to 2; sizes should not depend on parity
    return int(math.floor(x + 0.5))


def holdout(targets: np.ndarray, fraction: float, rng: np.random.Generator, *,
            stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Split ``0..N-1`` into sorted ``(keep, held)`` with ``len(held) == round(fraction * N)``.

    Stratified: each class gives ``floor(fraction * n_c)`` examples, and the
    rounding remainder goes to the classes with the largest fractional quota, so
    class shares stay as close to the whole set's as integers allow.
    """
    n = len(targets)
    n_held = _round_half_up(fraction * n)
    if not stratify:
        order = rng.permutation(n)
        return np.sort(order[n_held:]), np.sort(order[:n_held])

    classes, counts = np.unique(targets, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    # stable sort: ties go to the lower class index, so the split is reproducible
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[: n_held - int(take.sum())]] += 1

    held = [rng.permutation(np.flatnonzero(targets == c))[:t] for c, t in zip(classes, take)]
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep_idx = np.setdiff1d(np.arange(n), held_idx)
    return keep_idx, held_idx


def balanced_subset(targets: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` examples, ``n // k`` per class (+1 for ``n % k`` classes drawn by ``rng``)."""
    classes = np.unique(targets)
    k = len(classes)
    per_class = np.full(k, n // k, dtype=np.int64)
    per_class[rng.permutation(k)[: n % k]] += 1
    chosen = []
    for c, want in zip(classes, per_class):
        idx = np.flatnonzero(targets == c)
        if want > len(idx):
            raise ValueError(f"train_subset={n} needs {want} examples of class {c}, "
                             f"but the training pool has {len(idx)}")
        chosen.append(rng.permutation(idx)[:want])
    return np.sort(np.concatenate(chosen))


def subset(targets: np.ndarray, n: int, rng: np.random.Generator, *, stratify: bool) -> np.ndarray:
    """``n`` indices: class-balanced when ``stratify``, else uniformly at random."""
    if n > len(targets):
        raise ValueError(f"train_subset={n} is larger than the training pool ({len(targets)} examples)")
    if stratify:
        return balanced_subset(targets, n, rng)
    return np.sort(rng.permutation(len(targets))[:n])
