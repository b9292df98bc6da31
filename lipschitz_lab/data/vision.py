"""MNIST, CIFAR-10 and CIFAR-100, read from torchvision's on-disk layout.

torchvision reads the files; this module decides what happens when they are
missing.  Files present: load them.  Missing and ``download=True``: let
torchvision try (it fails at once without a network).  Otherwise raise one
:class:`DatasetNotFoundError` that names the data set, the files and the folder.

Checksums: torchvision checks the MD5 of each CIFAR file against the official
release (``CIFAR10._check_integrity`` -> ``check_integrity(path, md5)``), so
small hand-written CIFAR files never load.  The option ``verify=False`` loads
them through a subclass whose file lists carry ``md5=None``, which
``check_integrity`` treats as "the file exists".  MNIST's raw files carry no
checksum in torchvision, so MNIST has no such option.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from lipschitz_lab.data.images import image_splits
from lipschitz_lab.data.registry import (
    DataRequest, DataSplits, DatasetNotFoundError, check_bool, register_dataset,
)
from lipschitz_lab.data.transforms import cifar_augmentation, mnist_augmentation

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_files(request: DataRequest, title: str, folder: Path, files: tuple[str, ...],
                  download: Callable[[], object]) -> None:
    """Return when all ``files`` are in ``folder``, after a download if allowed; else raise."""
    missing = [f for f in files if not (folder / f).is_file()]
    if not missing:
        return
    if not request.download:
        reason = "download=False"
    else:
        try:
            download()
        # torchvision wraps failed mirrors in RuntimeError (also its MD5 check);
        # urllib's URLError and socket errors are OSErrors
        except (RuntimeError, OSError) as err:
            reason = f"download failed: {_one_line(err)}"
        else:
            missing = [f for f in files if not (folder / f).is_file()]
            if not missing:
                return
            reason = "the download did not produce them"
    absent = "none of them is there" if len(missing) == len(files) else f"missing: {', '.join(missing)}"
    raise DatasetNotFoundError(
        f"{title} not found: expected the files {', '.join(files)} in the folder {folder} "
        f"({absent}; {reason}). Copy them there, or set data_root to the folder that "
        f"contains {folder.relative_to(request.root())}/.")


@register_dataset("mnist")
def mnist(request: DataRequest) -> DataSplits:
    """MNIST, 60,000 train / 10,000 test 1x28x28 digits, from ``<data_root>/MNIST/raw/``."""
    from torchvision.datasets import MNIST

    root = request.root()
    require_files(request, "MNIST", root / "MNIST" / "raw", MNIST_FILES,
                  lambda: MNIST(str(root), train=True, download=True))
    try:
        train, test = MNIST(str(root), train=True), MNIST(str(root), train=False)
    except RuntimeError as err:  # a truncated IDX file
        raise DatasetNotFoundError(f"MNIST files in {root / 'MNIST' / 'raw'} could not be read: "
                                   f"{_one_line(err)}") from None
    return image_splits(request.name, train.data.unsqueeze(1), train.targets,
                        test.data.unsqueeze(1), test.targets, request,
                        num_classes=10, augmentation=mnist_augmentation())


def _without_md5(cls: type) -> type:
    """A subclass of a torchvision CIFAR class that only checks that its files exist."""
    return type(f"Unverified{cls.__name__}", (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def _cifar(request: DataRequest, title: str, cls: type, files: tuple[str, ...],
           num_classes: int, verify: bool) -> DataSplits:
    check_bool("verify", verify)
    root = request.root()
    folder = root / cls.base_folder
    require_files(request, title, folder, files, lambda: cls(str(root), train=True, download=True))
    reader = cls if verify else _without_md5(cls)
    try:
        train, test = reader(str(root), train=True), reader(str(root), train=False)
    except RuntimeError as err:  # torchvision's "not found or corrupted": an MD5 mismatch
        raise DatasetNotFoundError(
            f"{title} files in {folder} failed torchvision's MD5 check ({_one_line(err)}); "
            f"replace them with the official release, or pass verify=False to skip the check.") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision holds HWC uint8; models and transforms want CHW
        return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                torch.as_tensor(ds.targets, dtype=torch.int64))

    return image_splits(request.name, *tensors(train), *tensors(test), request,
                        num_classes=num_classes, augmentation=cifar_augmentation())


@register_dataset("cifar10")
def cifar10(request: DataRequest, *, verify: bool = True) -> DataSplits:
    """CIFAR-10 from ``<data_root>/cifar-10-batches-py/`` (torchvision's python pickles)."""
    from torchvision.datasets import CIFAR10

    return _cifar(request, "CIFAR-10", CIFAR10, CIFAR10_FILES, 10, verify)


@register_dataset("cifar100")
def cifar100(request: DataRequest, *, verify: bool = True) -> DataSplits:
    """CIFAR-100 (fine labels) from ``<data_root>/cifar-100-python/``."""
    from torchvision.datasets import CIFAR100

    return _cifar(request, "CIFAR-100", CIFAR100, CIFAR100_FILES, 100, verify)
