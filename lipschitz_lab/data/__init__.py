"""Data sets by name: ``get_dataset("digits")`` -> :class:`DataSplits` (train/val/test).

Registered names: ``digits``, ``breast_cancer``, ``diabetes``, ``synthetic``
(no files needed), ``mnist``, ``cifar10``, ``cifar100`` (torchvision's layout
under the data root, :func:`default_data_root`), ``npz`` and ``cifar10_subset``
(train.npz/test.npz folders), and the token sequences ``modular_addition`` and
``text`` (:mod:`.sequence`, offline, for ``tiny_gpt``).  :func:`needs_files` and :func:`path_option` say
which of them read files, and from which option's folder; :func:`missing_files`
gives the one-line not-found message from the disk alone.

Batches: ``make_loader(split, ...)`` -> a :class:`BatchLoader` (a DataLoader,
or the split on the GPU with its augmentation done there per batch).
"""
from lipschitz_lab.data.registry import (
    DATASETS, DataRequest, DataSplits, DatasetNotFoundError, get_dataset, register_dataset,
)
from lipschitz_lab.data.roots import DATA_ROOT_ENV, default_data_root
from lipschitz_lab.data.files import (
    dataset_files, dataset_option_names, missing_files, needs_files, path_option,
)
from lipschitz_lab.data.memory import in_memory
from lipschitz_lab.data.loader import EVAL_BATCH, BatchLoader, make_eval_loader, make_loader
# importing the loaders fills DATASETS
from lipschitz_lab.data import npz, sequence, tabular, vision  # noqa: F401,E402

__all__ = ["DATASETS", "DATA_ROOT_ENV", "EVAL_BATCH", "BatchLoader", "DataRequest", "DataSplits",
           "DatasetNotFoundError", "dataset_files", "dataset_option_names", "default_data_root",
           "get_dataset", "in_memory", "make_eval_loader", "make_loader", "missing_files", "needs_files",
           "path_option", "register_dataset"]
