"""Image sets held in memory as uint8, served as float tensors in [0, 1].

Every image loader (torchvision's MNIST/CIFAR readers, npz folders) ends in
:func:`image_splits`, so the validation carve-out, the class-balanced subset
and the "augment the train split only" rule live in one place.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lipschitz_lab.data.registry import DataRequest, DataSplits
from lipschitz_lab.data.splits import balanced_subset, holdout
from lipschitz_lab.data.transforms import AUGMENTATIONS, augmentation as make_augmentation


class ImageTensorDataset(Dataset):
    """``(x, y)`` pairs from uint8 images (N x C x H x W) and int64 labels (N).

    ``x`` is ``image / 255`` as float32, exactly what ``ToTensor`` gives.
    A ``transform`` (train-time augmentation) sees a PIL image, as in
    torchvision's own data sets, when the image has 1 or 3 channels: PIL warps
    one small image about 100x faster than torch's ``grid_sample``, which also
    slows down badly when its threads compete with the training step.

    ``augmentation`` names the paper's augmentation (``"mnist"``, ``"cifar"``)
    that ``transform`` performs, so a device loader can do the same per batch
    (:mod:`.device_augment`) from :meth:`as_tensors`.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor,
                 transform: Callable | None = None, augmentation: str | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got dtype={images.dtype}, "
                             f"shape={tuple(images.shape)}")
        if augmentation is not None and augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)} or None; "
                             f"got augmentation={augmentation!r}")
        if len(images) != len(targets):
            raise ValueError(f"images and targets differ in length: {len(images)} != {len(targets)}")
        self.images = images
        self.targets = targets.to(torch.int64)
        self.transform = transform
        self.augmentation = augmentation

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(uint8 images N x C x H x W, int64 targets N)``; a batch is ``images[i] / 255``."""
        return self.images, self.targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.transform is None:
            return image.to(torch.float32).div_(255.0), self.targets[i]
        if image.shape[0] in (1, 3):
            hwc = image.permute(1, 2, 0).numpy()
            pil = Image.fromarray(hwc[..., 0] if image.shape[0] == 1 else hwc)
            out = np.asarray(self.transform(pil))  # H x W (grey) or H x W x 3
            image = torch.from_numpy(out.reshape(out.shape[0], out.shape[1], -1).copy()).permute(2, 0, 1)
            return image.to(torch.float32).div_(255.0), self.targets[i]
        return self.transform(image.to(torch.float32).div_(255.0)), self.targets[i]


def image_splits(name: str, train_x: torch.Tensor, train_y: torch.Tensor,
                 test_x: torch.Tensor, test_y: torch.Tensor, request: DataRequest, *,
                 num_classes: int, augmentation: str | None) -> DataSplits:
    """Carve validation from train, optionally subset, and augment the train split only.

    ``augmentation``: ``"mnist"`` or ``"cifar"`` (:mod:`.transforms`), or None.

    The validation split is stratified by class and drawn first, from the full
    training set, so it does not change with ``train_subset``; the subset of
    exactly ``train_subset`` class-balanced images comes from what is left.
    """
    rng = np.random.default_rng(request.seed)
    labels = train_y.numpy()
    keep, val = holdout(labels, request.val_fraction, rng, stratify=True)
    if request.train_subset is not None:
        if request.train_subset > len(keep):
            raise ValueError(f"train_subset={request.train_subset} is larger than the training "
                             f"pool ({len(keep)} images after the validation split)")
        keep = keep[balanced_subset(labels[keep], request.train_subset, rng)]

    def part(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray | None, style: str | None):
        if idx is not None:
            idx = torch.as_tensor(idx, dtype=torch.int64)
            x, y = x[idx], y[idx]
        transform = None if style is None else make_augmentation(style, tuple(x.shape[2:]))
        return ImageTensorDataset(x, y, transform, style)

    return DataSplits(
        name=name, task="multiclass",
        train=part(train_x, train_y, keep, augmentation if request.augment else None),
        val=part(train_x, train_y, val, None),
        test=part(test_x, test_y, None, None),
        num_classes=num_classes, num_outputs=num_classes,
        input_shape=tuple(train_x.shape[1:]),
    )
