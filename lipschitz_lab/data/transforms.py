"""The paper's train-time augmentation, as torchvision transforms.

Yedida & Saha used Keras' ``ImageDataGenerator``; these are the torchvision
equivalents.  They work on PIL images and on tensors alike;
:class:`~lipschitz_lab.data.images.ImageTensorDataset` hands them PIL images.
No mean/std normalisation: images are only divided by 255.
:mod:`.device_augment` draws the same distributions for a whole batch on the device.
"""
from __future__ import annotations

from typing import Callable

AUGMENTATIONS = ("mnist", "cifar")


def mnist_augmentation() -> Callable:
    """Random shifts of 10%, zoom of 10% and rotations of 15 degrees."""
    from torchvision import transforms as T

    return T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1))


def cifar_augmentation(size: tuple[int, int] = (32, 32)) -> Callable:
    """Random horizontal flips and translations of up to 4 pixels (zero padding)."""
    from torchvision import transforms as T

    return T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()])


def augmentation(style: str, size: tuple[int, int]) -> Callable:
    """The augmentation named ``style`` (one of :data:`AUGMENTATIONS`) for ``size`` images."""
    if style == "mnist":
        return mnist_augmentation()
    if style == "cifar":
        return cifar_augmentation(size)
    raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got augmentation={style!r}")
