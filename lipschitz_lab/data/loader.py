"""Batches for the trainer, from a DataLoader or from tensors on the device, behind one interface.

``make_loader(dataset, ...)`` returns a :class:`BatchLoader`: iterate it for
``(x, y)`` already on ``device``; call ``set_epoch(epoch)`` before each epoch.

- :class:`HostLoader` (``on_device=False``): today's ``DataLoader`` with
  ``generator=order`` (and a ``DistributedSampler`` when ``world > 1``),
  ``order.manual_seed(seed + epoch)`` in ``set_epoch``: the same batches,
  bit for bit, as a DataLoader built by hand.
- :class:`DeviceLoader` (``on_device=True``; the default on CUDA for in-memory
  data sets, :mod:`.memory`): the whole split on the device, batches by
  ``index_select``, images divided by 255 per batch and augmented per batch on
  the device (:mod:`.device_augment`).  The order is the DataLoader path's own
  (the same CPU generator draws, one index copy per epoch), so the two paths
  feed a model the same samples in the same order; no worker processes and no
  host sync per batch.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lipschitz_lab.data.device_augment import augment
from lipschitz_lab.data.memory import as_float, in_memory
from lipschitz_lab.data.registry import check_bool, check_int

EVAL_BATCH = 512            # val/test batches: no gradients, so larger than any training batch


class BatchLoader(Protocol):
    dataset: Dataset
    on_device: bool

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class HostLoader:
    """A ``DataLoader`` whose batches are moved to ``device``; ``set_epoch`` reseeds its order."""

    on_device = False

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int,
                 device: torch.device, num_workers: int, drop_last: bool, rank: int, world: int):
        self.dataset, self.device, self.seed = dataset, device, seed
        self.order = torch.Generator().manual_seed(seed)
        self.sampler = None
        if world > 1:
            self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and self.sampler is None,
                                 sampler=self.sampler, generator=self.order, num_workers=num_workers,
                                 pin_memory=device.type == "cuda", drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        check_int("epoch", epoch, 0)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.order.manual_seed(self.seed + epoch)      # the same batches after a resume

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def dataloader_order(n: int, order: torch.Generator) -> torch.Tensor:
    """The indices one pass of ``DataLoader(shuffle=True, generator=order)`` visits, drawn as it draws them.

    The iterator first takes its workers' base seed from ``order``, then
    ``RandomSampler`` a permutation, and, once exhausted, one more (unused) one.
    """
    torch.empty((), dtype=torch.int64).random_(generator=order)
    perm = torch.randperm(n, generator=order)
    torch.randperm(n, generator=order)
    return perm


def distributed_order(n: int, *, rank: int, world: int, shuffle: bool, seed: int) -> torch.Tensor:
    """``DistributedSampler(num_replicas=world, rank=rank, shuffle, seed)`` after ``set_epoch``: its indices.

    ``seed`` is the sampler's seed plus the epoch.  The order is padded by
    repeating its start to ``world * ceil(n / world)``, then rank ``r`` takes
    every ``world``-th index from ``r``: every rank gets the same count.
    """
    per_rank = -(-n // world)
    if shuffle:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        idx = torch.arange(n)
    idx = idx.repeat(-(-per_rank * world // n))[: per_rank * world]
    return idx[rank::world]


def _augment_seed(seed: int, epoch: int, rank: int) -> int:
    # apart from the order's seed + epoch (one CPU generator seeded alike would draw the
    # same numbers), and different on each rank
    return ((seed * 1_000_003 + epoch) * 1_009 + rank + 0x9E3779B9) % 2**63


class DeviceLoader:
    """Batches of an in-memory data set held on ``device``, augmented there per batch."""

    on_device = True

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int,
                 device: torch.device, drop_last: bool, rank: int, world: int):
        x, y, style = in_memory(dataset)
        self.dataset, self.device = dataset, device
        self.x, self.y, self.augmentation = x.to(device), y.to(device), style
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world = rank, world
        self.num_samples = len(x) if world == 1 else -(-len(x) // world)
        self.order = torch.Generator().manual_seed(seed)     # the DataLoader path's generator
        self.gen = torch.Generator(device=device)            # the augmentation's, on the device
        self.epoch = 0
        self.gen.manual_seed(_augment_seed(seed, 0, rank))

    def set_epoch(self, epoch: int) -> None:
        check_int("epoch", epoch, 0)
        self.epoch = epoch
        self.order.manual_seed(self.seed + epoch)
        self.gen.manual_seed(_augment_seed(self.seed, epoch, self.rank))

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _indices(self) -> torch.Tensor:
        """This epoch's indices on the device: one copy per epoch, none per batch."""
        n = len(self.x)
        if self.world > 1:
            idx = distributed_order(n, rank=self.rank, world=self.world, shuffle=self.shuffle,
                                    seed=self.seed + self.epoch)
        elif self.shuffle:
            idx = dataloader_order(n, self.order)
        else:
            return torch.arange(n, device=self.device)
        if self.device.type == "cuda":
            idx = idx.pin_memory()
        return idx.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        b = self.batch_size
        for start in range(0, len(self) * b, b):
            i = idx[start:start + b]
            x = as_float(self.x.index_select(0, i))
            yield augment(x, self.augmentation, self.gen), self.y.index_select(0, i)


def _check(batch_size, shuffle, seed, on_device, num_workers, drop_last, rank, world) -> None:
    check_int("batch_size", batch_size, 1)
    check_bool("shuffle", shuffle)
    check_int("seed", seed, 0)
    if on_device is not None:
        check_bool("on_device", on_device)
    check_int("num_workers", num_workers, 0)
    check_bool("drop_last", drop_last)
    check_int("world", world, 1)
    check_int("rank", rank, 0)
    if rank >= world:
        raise ValueError(f"rank must be below world={world}, got rank={rank}")


def resolve_on_device(dataset: Dataset, device: torch.device, on_device: bool | None) -> bool:
    """``on_device=None``: True on CUDA for an in-memory data set.  True for another raises."""
    if on_device is None:
        return device.type == "cuda" and in_memory(dataset) is not None
    if on_device and in_memory(dataset) is None:
        raise ValueError(f"on_device=True needs an in-memory data set (as_tensors() and a known "
                         f"augmentation); got dataset={type(dataset).__name__}")
    return on_device


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int,
                device: torch.device | str, on_device: bool | None = None, num_workers: int = 0,
                drop_last: bool = False, rank: int = 0, world: int = 1) -> BatchLoader:
    """Batches of ``dataset`` on ``device``; see the module doc for the two kinds.

    ``on_device=None``: on the device when ``device`` is CUDA and the data set
    is in memory (:func:`~lipschitz_lab.data.memory.in_memory`).  ``num_workers``
    only matters off the device.  ``rank``/``world``: this process's shard.
    """
    _check(batch_size, shuffle, seed, on_device, num_workers, drop_last, rank, world)
    device = torch.device(device)
    on_device = resolve_on_device(dataset, device, on_device)
    if shuffle and len(dataset) == 0:
        raise ValueError("shuffle=True needs a non-empty data set; got len(dataset)=0")
    common = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, device=device,
                  drop_last=drop_last, rank=rank, world=world)
    if on_device:
        return DeviceLoader(dataset, **common)
    return HostLoader(dataset, num_workers=num_workers, **common)


def make_eval_loader(dataset: Dataset, *, device: torch.device | str, on_device: bool | None = None,
                     num_workers: int = 0, batch_size: int = EVAL_BATCH) -> BatchLoader:
    """Val/test batches in file order, the whole split on every rank (no shuffling, no augmentation)."""
    return make_loader(dataset, batch_size=batch_size, shuffle=False, seed=0, device=device,
                       on_device=on_device, num_workers=num_workers)
