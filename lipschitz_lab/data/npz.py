"""Image sets stored as a folder with ``train.npz`` and ``test.npz``.

Each file holds ``x`` (uint8, N x H x W x C or N x H x W) and ``y`` (integer
labels 0..k-1).  The project's offline CIFAR-10 subset uses this format
(shared/data/README.md), registered as ``cifar10_subset``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lipschitz_lab.data.files import FILES, DataFiles, locate, require_files
from lipschitz_lab.data.images import image_splits
from lipschitz_lab.data.registry import DataRequest, DataSplits, register_dataset
from lipschitz_lab.data.transforms import AUGMENTATIONS

NPZ_FILES = ("train.npz", "test.npz")
SUBSET_FOLDER = "cifar10-subset"

FILES["npz"] = DataFiles(NPZ_FILES, None, path_option="path")
FILES["cifar10_subset"] = DataFiles(NPZ_FILES, SUBSET_FOLDER, path_option="path")


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images N x C x H x W uint8, labels N int64)`` from one npz file."""
    with np.load(path) as f:
        missing = [key for key in ("x", "y") if key not in f.files]
        if missing:
            raise ValueError(f"{path} lacks the array(s) {', '.join(missing)}; it has {', '.join(f.files)}")
        x, y = f["x"], f["y"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise ValueError(f"{path}: x must be uint8 N x H x W (x C), got dtype={x.dtype}, shape={x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError(f"{path}: y must hold {len(x)} non-negative integer labels, "
                         f"got dtype={y.dtype}, shape={y.shape}")
    if x.ndim == 3:
        x = x[..., None]
    return (torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
            torch.from_numpy(y.astype(np.int64)))


def load_npz_folder(request: DataRequest, folder: Path, augmentation: str, *,
                    hint: str = "or set path to the folder that holds them") -> DataSplits:
    """Read ``folder``/train.npz and test.npz; ``hint`` ends the not-found message."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; "
                         f"got augmentation={augmentation!r}")
    require_files(request, folder, NPZ_FILES, None, hint=hint)
    train_x, train_y = _read(folder / "train.npz")
    test_x, test_y = _read(folder / "test.npz")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"{folder}: train images are {tuple(train_x.shape[1:])} "
                         f"but test images are {tuple(test_x.shape[1:])}")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return image_splits(request.name, train_x, train_y, test_x, test_y, request,
                        num_classes=num_classes, augmentation=augmentation)


@register_dataset("npz")
def npz(request: DataRequest, *, path: str | os.PathLike | None = None,
        augmentation: str = "cifar") -> DataSplits:
    """Any ``train.npz``/``test.npz`` folder: ``path``, or else ``data_root`` itself."""
    folder, hint = locate("npz", request, path)
    if folder is None:
        raise ValueError("data set 'npz' needs path= a folder holding train.npz, test.npz; got path=None")
    return load_npz_folder(request, folder, augmentation, hint=hint)


@register_dataset("cifar10_subset")
def cifar10_subset(request: DataRequest, *, path: str | os.PathLike | None = None,
                   augmentation: str = "cifar") -> DataSplits:
    """The offline class-balanced CIFAR-10 subset: 10,000 train / 2,000 test, 3x32x32.

    Folder: ``path``, else ``<data root>/cifar10-subset`` where the data root is
    resolved as for MNIST (:func:`~lipschitz_lab.data.roots.default_data_root`).
    """
    folder, hint = locate("cifar10_subset", request, path)
    return load_npz_folder(request, folder, augmentation, hint=hint)
