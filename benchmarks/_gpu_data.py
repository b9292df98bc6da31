"""The images the GPU checks train on: the shared copies found by ``default_data_root()``, or fakes.

Nothing here reaches a network.  A machine without the developers' copy
(``../shared/data`` beside the checkout) gets it as an archive that travels
with the working tree: ``--pack-data FILE`` writes it here (MNIST/raw and
cifar10-subset, ~46 MB gzipped), ``--data-archive FILE`` unpacks it there and
points ``$LIPSCHITZ_LAB_DATA`` at it.

:func:`register` adds the data set ``gpu_checks_images`` to the lab's
registry (in this process only), so the trainer gets these images through its
ordinary path (``make_loader``, data on the device, the paper's augmentation):

- ``source="mnist"`` / ``"cifar10_subset"``: the real training images, tiled
  (repeated in order) to ``n_train`` when ``n_train`` is larger;
- ``source="fake_mnist"`` / ``"fake_cifar"``: uniform random uint8 images of
  the same shapes (``--smoke``, or a machine without the data).
"""
from __future__ import annotations

import os
import tarfile
from functools import lru_cache
from pathlib import Path

import torch

from lipschitz_lab.data import DATA_ROOT_ENV, default_data_root, get_dataset
from lipschitz_lab.data.images import image_splits
from lipschitz_lab.data.registry import DataRequest, DataSplits, register_dataset

NAME = "gpu_checks_images"
#: source -> (real data set, image shape, augmentation); the fakes share the real one's shape
SOURCES = {"mnist": ("mnist", (1, 28, 28), "mnist"), "cifar10_subset": ("cifar10_subset", (3, 32, 32), "cifar"),
           "fake_mnist": (None, (1, 28, 28), "mnist"), "fake_cifar": (None, (3, 32, 32), "cifar")}
#: what each real source needs under the data root
NEEDS = {"mnist": "MNIST/raw/train-images-idx3-ubyte", "cifar10_subset": "cifar10-subset/train.npz"}
PACKED = ("MNIST/raw", "cifar10-subset")


def pack(archive: Path) -> Path:
    """Write MNIST/raw and cifar10-subset of ``default_data_root()`` into a gzipped tar."""
    root = default_data_root()
    missing = [p for p in PACKED if not (root / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}: nothing to pack")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for part in PACKED:
            tar.add(root / part, arcname=part)
    return archive


def unpack(archive: Path, into: Path) -> Path:
    """Unpack ``archive`` into ``into`` and make it the data root of this process (and its children)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    os.environ[DATA_ROOT_ENV] = str(into)
    return into


def available(source: str) -> bool:
    """True when the real ``source`` is under the data root (fakes always are)."""
    return source not in NEEDS or (default_data_root() / NEEDS[source]).is_file()


def pick(source: str, smoke: bool) -> str:
    """The real source when it is there and this is no smoke run, else its fake."""
    fake = "fake_mnist" if source == "mnist" else "fake_cifar"
    return source if not smoke and available(source) else fake


@lru_cache(maxsize=4)
def images(source: str, n_fake: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train x, train y, test x, test y)``: uint8 N x C x H x W images, int64 labels."""
    real, shape, _ = SOURCES[source]
    if real is None:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n_fake, *shape), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n_fake,), generator=g)
        return x, y, x[: n_fake // 4], y[: n_fake // 4]
    splits = get_dataset(real, val_fraction=0.0, augment=False)
    return (*splits.train.as_tensors(), *splits.test.as_tensors())


def tile(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of ``x`` repeated in order (``n`` larger than ``len(x)``: whole copies, then a part)."""
    reps = -(-n // len(x))
    return x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n]


def register() -> None:
    """Add ``gpu_checks_images`` to the data-set registry (this process only)."""
    def builder(request: DataRequest, *, source: str, n_train: int, n_test: int) -> DataSplits:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}; got source={source!r}")
        x, y, xt, yt = images(source)
        x, y = tile(x, y, n_train)
        return image_splits(request.name, x, y, xt[:n_test], yt[:n_test], request, num_classes=10,
                            augmentation=SOURCES[source][2])
    register_dataset(NAME, builder, replace=True)


def device_batches(source: str, batch: int, count: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """``count`` batches of the source's first images, as the model sees them (x / 255), on ``device``."""
    x, y, _, _ = images(source)
    x, y = tile(x, y, batch * count)
    x = x.to(device).float().div_(255.0)
    y = y.to(device)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, batch * count, batch)]
