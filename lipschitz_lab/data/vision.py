"""MNIST, CIFAR-10 and CIFAR-100, read from torchvision's on-disk layout.

torchvision reads the files; this module decides what happens when they are
missing.  Files present: load them.  Missing and ``download=True``: let
torchvision try (it fails at once without a network; what it created is
removed again).  Otherwise raise one :class:`DatasetNotFoundError`, one line
that names the data set, the files and the folder (:mod:`.files`).

Checksums: torchvision checks the MD5 of each CIFAR file against the official
release (``CIFAR10._check_integrity`` -> ``check_integrity(path, md5)``), so
small hand-written CIFAR files never load.  The option ``verify=False`` loads
them through a subclass whose file lists carry ``md5=None``, which
``check_integrity`` treats as "the file exists".  MNIST's raw files carry no
checksum in torchvision, so MNIST has no such option.
"""
from __future__ import annotations

from typing import Callable

import torch

from lipschitz_lab.data.files import FILES, DataFiles, locate, require_files
from lipschitz_lab.data.images import image_splits
from lipschitz_lab.data.registry import (
    DataRequest, DataSplits, DatasetNotFoundError, check_bool, register_dataset,
)

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")
LAYOUT = "torchvision layout"

FILES["mnist"] = DataFiles(MNIST_FILES, "MNIST/raw", layout=LAYOUT)
FILES["cifar10"] = DataFiles(CIFAR10_FILES, "cifar-10-batches-py", layout=LAYOUT)
FILES["cifar100"] = DataFiles(CIFAR100_FILES, "cifar-100-python", layout=LAYOUT)


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require(request: DataRequest, key: str, download: Callable[[], object]) -> None:
    folder, hint = locate(key, request)
    require_files(request, folder, FILES[key].names, download, layout=LAYOUT, hint=hint, also=request.root())


@register_dataset("mnist")
def mnist(request: DataRequest) -> DataSplits:
    """MNIST, 60,000 train / 10,000 test 1x28x28 digits, from ``<data_root>/MNIST/raw/``."""
    from torchvision.datasets import MNIST

    root = request.root()
    _require(request, "mnist", lambda: MNIST(str(root), train=True, download=True))
    try:
        train, test = MNIST(str(root), train=True), MNIST(str(root), train=False)
    except RuntimeError as err:  # a truncated IDX file
        raise DatasetNotFoundError(f"dataset={request.name!r}: the files in {root / 'MNIST' / 'raw'} "
                                   f"could not be read: {_one_line(err)}") from None
    return image_splits(request.name, train.data.unsqueeze(1), train.targets,
                        test.data.unsqueeze(1), test.targets, request,
                        num_classes=10, augmentation="mnist")


def _without_md5(cls: type) -> type:
    """A subclass of a torchvision CIFAR class that only checks that its files exist."""
    return type(f"Unverified{cls.__name__}", (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def _cifar(request: DataRequest, title: str, cls: type, key: str, num_classes: int,
           verify: bool) -> DataSplits:
    check_bool("verify", verify)
    root = request.root()
    folder = root / cls.base_folder
    _require(request, key, lambda: cls(str(root), train=True, download=True))
    reader = cls if verify else _without_md5(cls)
    try:
        train, test = reader(str(root), train=True), reader(str(root), train=False)
    except RuntimeError as err:  # torchvision's "not found or corrupted": an MD5 mismatch
        raise DatasetNotFoundError(
            f"dataset={request.name!r}: the {title} files in {folder} failed torchvision's MD5 check "
            f"({_one_line(err)}); replace them with the official release, or pass verify=False "
            f"to skip the check.") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision holds HWC uint8; models and transforms want CHW
        return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                torch.as_tensor(ds.targets, dtype=torch.int64))

    return image_splits(request.name, *tensors(train), *tensors(test), request,
                        num_classes=num_classes, augmentation="cifar")


@register_dataset("cifar10")
def cifar10(request: DataRequest, *, verify: bool = True) -> DataSplits:
    """CIFAR-10 from ``<data_root>/cifar-10-batches-py/`` (torchvision's python pickles)."""
    from torchvision.datasets import CIFAR10

    return _cifar(request, "CIFAR-10", CIFAR10, "cifar10", 10, verify)


@register_dataset("cifar100")
def cifar100(request: DataRequest, *, verify: bool = True) -> DataSplits:
    """CIFAR-100 (fine labels) from ``<data_root>/cifar-100-python/``."""
    from torchvision.datasets import CIFAR100

    return _cifar(request, "CIFAR-100", CIFAR100, "cifar100", 100, verify)
