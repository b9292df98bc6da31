"""Data sets by name: ``get_dataset("digits")`` -> :class:`DataSplits` (train/val/test).

Registered names: ``digits``, ``breast_cancer``, ``diabetes``, ``synthetic``
(no files needed), ``mnist``, ``cifar10``, ``cifar100`` (torchvision's layout
under ``data_root``), ``npz`` and ``cifar10_subset`` (train.npz/test.npz folders).
"""
from lipschitz_lab.data.registry import (
    DATASETS, DataRequest, DataSplits, DatasetNotFoundError, get_dataset, register_dataset,
)
# importing the loaders fills DATASETS
from lipschitz_lab.data import npz, tabular, vision  # noqa: F401,E402

__all__ = ["DATASETS", "DataRequest", "DataSplits", "DatasetNotFoundError",
           "get_dataset", "register_dataset"]
