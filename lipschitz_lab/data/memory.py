"""Data sets held in memory as whole tensors, which a loader can move to the device at once.

A data set is *in memory* when it has ``as_tensors() -> (x, y)`` and an
``augmentation`` attribute (``"mnist"``, ``"cifar"`` or None), and
``dataset[i]`` equals ``(as_float(x[i]), y[i])`` with its augmentation applied.
The tabular sets (:class:`PairDataset`) and the image sets
(:class:`~lipschitz_lab.data.images.ImageTensorDataset`) both are.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset, TensorDataset


@runtime_checkable
class InMemory(Protocol):
    augmentation: str | None

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]: ...


class PairDataset(TensorDataset):
    """``TensorDataset(x, y)`` that says it is in memory, with no augmentation."""

    augmentation: str | None = None

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(x, y)

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors[0], self.tensors[1]


def in_memory(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, str | None] | None:
    """``(x, y, augmentation)`` of an in-memory data set, else None.

    A plain two-tensor ``TensorDataset`` counts too.  A data set with a
    ``transform`` that no augmentation name describes (a user's own) does not:
    only the DataLoader path can apply it.
    """
    if isinstance(dataset, InMemory):
        if getattr(dataset, "transform", None) is not None and dataset.augmentation is None:
            return None
        x, y = dataset.as_tensors()
        return x, y, dataset.augmentation
    if type(dataset) is TensorDataset and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1], None
    return None


def as_float(x: torch.Tensor) -> torch.Tensor:
    """What ``dataset[i]`` serves: uint8 images as ``x / 255`` in float32 (as ``ToTensor``), else ``x``."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x
