"""Loaders: the DataLoader path against a hand-built DataLoader, the device path against both.

Oracles: a DataLoader built exactly as the trainer built it (bit for bit), the
data sets' own ``__getitem__`` (values of the device path), torchvision's
functional ``pad``/``crop``/``hflip``/``affine`` for fixed parameters (the device
augmentations), and torchvision's random transforms for the distributions.
The same code runs with ``device="cpu"``; the CUDA tests skip without a GPU.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import InterpolationMode

from lipschitz_lab.data import get_dataset, in_memory, make_eval_loader, make_loader
from lipschitz_lab.data.device_augment import affine, crop_flip, random_cifar, random_mnist
from lipschitz_lab.data.images import ImageTensorDataset
from lipschitz_lab.data.loader import DeviceLoader, HostLoader, resolve_on_device
from lipschitz_lab.data.memory import PairDataset
from lipschitz_lab.data.transforms import augmentation as torchvision_augmentation

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def images(n=37, shape=(3, 8, 8), style=None, seed=0) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    transform = None if style is None else torchvision_augmentation(style, shape[1:])
    return ImageTensorDataset(x, torch.arange(n) % 5, transform, style)


def indexed(n=23) -> PairDataset:
    """x[i] = (i, -i): a batch shows which samples it holds."""
    i = torch.arange(n, dtype=torch.float32)
    return PairDataset(torch.stack([i, -i], dim=1), torch.arange(n))


def hand_built(ds, *, batch_size, seed, world=1, rank=0):
    """The trainer's construction before make_loader (sampler, order, DataLoader)."""
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed) if world > 1 else None
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=order)
    return loader, sampler, order


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same(a, b, atol=0.0):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype and ya.dtype == yb.dtype
        torch.testing.assert_close(xa, xb, rtol=0, atol=atol)
        assert torch.equal(ya, yb)


# ---------------------------------------------------------------- the DataLoader path

@pytest.mark.parametrize("world, rank", [(1, 0), (2, 0), (2, 1), (3, 2)])
@pytest.mark.parametrize("make", [indexed, images])
def test_host_loader_is_a_hand_built_dataloader_bit_for_bit(world, rank, make):
    ds, seed = make(), 7
    loader = make_loader(ds, batch_size=5, shuffle=True, seed=seed, device="cpu", world=world, rank=rank)
    assert isinstance(loader, HostLoader) and loader.on_device is False and loader.dataset is ds
    ref, sampler, order = hand_built(ds, batch_size=5, seed=seed, world=world, rank=rank)
    assert len(loader) == len(ref)
    for epoch in (0, 1, 4):
        loader.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        order.manual_seed(seed + epoch)
        assert_same(batches(loader), batches(ref))


def test_host_loader_augments_as_the_dataset_does():
    ds = images(style="cifar")
    loader = make_loader(ds, batch_size=8, shuffle=True, seed=3, device="cpu")
    ref, _, order = hand_built(ds, batch_size=8, seed=3)
    loader.set_epoch(2)
    order.manual_seed(3 + 2)
    torch.manual_seed(11)           # the transforms draw from the global generator
    ours = batches(loader)
    torch.manual_seed(11)
    assert_same(ours, batches(ref))


# ---------------------------------------------------------------- the device path, on the CPU

@pytest.mark.parametrize("make", [indexed, images,
                                  lambda: get_dataset("digits", val_fraction=0.0).train,
                                  lambda: get_dataset("synthetic", task="binary", n=100).train])
@pytest.mark.parametrize("world, rank", [(1, 0), (2, 1), (4, 3)])
def test_device_path_feeds_the_dataloader_paths_values(make, world, rank):
    ds = make()
    kw = dict(batch_size=6, shuffle=True, seed=5, device="cpu", world=world, rank=rank)
    on, off = make_loader(ds, on_device=True, **kw), make_loader(ds, on_device=False, **kw)
    assert isinstance(on, DeviceLoader) and on.on_device is True and len(on) == len(off)
    for epoch in (0, 3):
        on.set_epoch(epoch)
        off.set_epoch(epoch)
        assert_same(batches(on), batches(off), atol=1e-6)
        # iterating again without set_epoch draws a new order, in both paths alike
        assert_same(batches(on), batches(off), atol=1e-6)


@pytest.mark.parametrize("make", [indexed, images])
def test_eval_loader_is_file_order_in_512s(make):
    ds = make(n=1100) if make is images else make(1100)
    on = make_eval_loader(ds, device="cpu", on_device=True)
    off = make_eval_loader(ds, device="cpu")
    assert len(on) == len(off) == 3 and isinstance(off, HostLoader)
    assert_same(batches(on), batches(off), atol=1e-6)
    assert_same(batches(off), batches(DataLoader(ds, batch_size=512)))


def test_same_seed_and_epoch_same_batches_else_new_order():
    def run(seed, epoch):
        loader = make_loader(images(n=50, style="cifar"), batch_size=8, shuffle=True, seed=seed,
                             device="cpu", on_device=True)
        loader.set_epoch(epoch)
        return batches(loader)

    first = run(1, 2)
    assert_same(first, run(1, 2))                        # a resumed run sees the same batches
    other_epoch = run(1, 3)
    assert not torch.equal(first[0][1], other_epoch[0][1])
    assert not torch.equal(first[0][0], run(2, 2)[0][0])


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(drop_last):
    loader = make_loader(indexed(23), batch_size=5, shuffle=True, seed=0, device="cpu", on_device=True,
                         drop_last=drop_last)
    seen = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        ys = torch.cat([y for _, y in loader])
        assert len(loader) == (4 if drop_last else 5)
        if not drop_last:
            assert sorted(ys.tolist()) == list(range(23))
        else:
            assert len(ys) == 20 and len(set(ys.tolist())) == 20
        for x, y in loader:
            assert torch.equal(x[:, 0], y.float()) and torch.equal(x[:, 1], -y.float())
        seen.append(ys)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_shards_cover_the_data_once(world):
    n = 23
    per_rank = -(-n // world)
    shards = []
    for rank in range(world):
        loader = make_loader(indexed(n), batch_size=4, shuffle=True, seed=9, device="cpu", on_device=True,
                             rank=rank, world=world)
        loader.set_epoch(1)
        assert len(loader) == -(-per_rank // 4)                       # the same on every rank
        shards.append(torch.cat([y for _, y in loader]).tolist())
    assert all(len(s) == per_rank for s in shards)
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(n))
    # padding repeats the order's first world * per_rank - n samples, once each
    assert sum(c - 1 for c in counts.values()) == world * per_rank - n and max(counts.values()) <= 2


def test_on_device_default_and_in_memory_protocol(tmp_path):
    ds = images()
    assert resolve_on_device(ds, torch.device("cuda"), None) is True
    assert resolve_on_device(ds, torch.device("cpu"), None) is False
    assert resolve_on_device(ds, torch.device("cpu"), True) is True

    class Streamed(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(2), torch.tensor(i)

    for other in (Streamed(), ImageTensorDataset(ds.images, ds.targets, transform=lambda img: img)):
        assert in_memory(other) is None
        assert resolve_on_device(other, torch.device("cuda"), None) is False
        with pytest.raises(ValueError, match="on_device=True needs an in-memory data set"):
            make_loader(other, batch_size=2, shuffle=False, seed=0, device="cpu", on_device=True)
    x, y, style = in_memory(torch.utils.data.TensorDataset(torch.ones(3, 2), torch.zeros(3)))
    assert style is None and x.shape == (3, 2)


def test_datasets_say_their_augmentation(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", x=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8),
                 y=np.arange(20) % 2)
    s = get_dataset("npz", path=tmp_path, augmentation="mnist", val_fraction=0.2)
    assert (s.train.augmentation, s.val.augmentation, s.test.augmentation) == ("mnist", None, None)
    x, y, style = in_memory(s.train)
    assert x.dtype == torch.uint8 and x.shape == (16, 1, 6, 6) and style == "mnist"
    assert get_dataset("npz", path=tmp_path, augment=False).train.augmentation is None
    assert in_memory(get_dataset("diabetes").train)[2] is None


@pytest.mark.parametrize("kwargs, needle", [
    ({"batch_size": 0}, "batch_size=0"), ({"shuffle": "yes"}, "shuffle='yes'"), ({"seed": -1}, "seed=-1"),
    ({"on_device": 1}, "on_device=1"), ({"num_workers": -2}, "num_workers=-2"), ({"world": 0}, "world=0"),
    ({"rank": 2, "world": 2}, "rank=2"), ({"drop_last": None}, "drop_last=None"),
])
def test_bad_arguments_name_field_and_value(kwargs, needle):
    args = dict(batch_size=4, shuffle=True, seed=0, device="cpu") | kwargs
    with pytest.raises(ValueError) as info:
        make_loader(indexed(), **args)
    assert needle in str(info.value) and "\n" not in str(info.value)
    loader = make_loader(indexed(), batch_size=4, shuffle=True, seed=0, device="cpu", on_device=True)
    with pytest.raises(ValueError, match="epoch=-1"):
        loader.set_epoch(-1)


# ---------------------------------------------------------------- the augmentations

def test_crop_flip_is_torchvisions_pad_crop_flip():
    x = images(n=40).images
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (40,), generator=g), torch.randint(0, 9, (40,), generator=g)
    flip = torch.rand(40, generator=g) < 0.5
    out = crop_flip(x, dy, dx, flip)
    for b in range(40):
        ref = TF.crop(TF.pad(x[b], [4]), int(dy[b]), int(dx[b]), 8, 8)
        ref = TF.hflip(ref) if flip[b] else ref
        assert torch.equal(out[b], ref), b
    centre = torch.full((40,), 4)
    assert torch.equal(crop_flip(x, centre, centre, torch.zeros(40, dtype=torch.bool)), x)


def _landing(out: torch.Tensor) -> list[tuple[int, int]]:
    """Where the one lit pixel of each image went ((-1, -1): cropped away)."""
    flat = out.reshape(len(out), -1).argmax(1)
    lit = out.reshape(len(out), -1).amax(1) > 0
    w = out.shape[-1]
    return [(int(f) // w, int(f) % w) if ok else (-1, -1) for f, ok in zip(flat, lit)]


def test_random_cifar_matches_torchvisions_distribution():
    n, r, c = 4000, 10, 6                         # a one-hot pixel, 6 columns from the left edge
    x = torch.zeros(n, 1, 32, 32)
    x[:, 0, r, c] = 1.0
    out = random_cifar(x, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0.0, 1.0} and out.sum() == n    # never cropped away here
    rows, cols = zip(*_landing(out))
    # rows: r + 4 - dy, dy ~ U{0..8}; columns: c + 4 - dx, or mirrored (31 - that) half the time
    assert set(rows) == set(range(r - 4, r + 5))
    assert all(abs(k / n - 1 / 9) < 0.03 for k in Counter(rows).values())
    flipped = sum(col > 15 for col in cols) / n
    assert abs(flipped - 0.5) < 0.03
    assert set(cols) == set(range(c - 4, c + 5)) | {31 - k for k in range(c - 4, c + 5)}

    tv = torchvision_augmentation("cifar", (32, 32))
    torch.manual_seed(0)
    pil = Image.fromarray((x[0, 0] * 255).to(torch.uint8).numpy())
    theirs = [tuple(np.argwhere(np.asarray(tv(pil)))[0]) for _ in range(n)]
    # total variation between the two paths' row and column histograms (noise alone: ~0.03, ~0.04)
    for ours_k, theirs_k in ((rows, [i for i, _ in theirs]), (cols, [j for _, j in theirs])):
        a, b = Counter(ours_k), Counter(int(k) for k in theirs_k)
        assert set(a) == set(b)
        assert sum(abs(a[k] - b[k]) for k in a) / (2 * n) < 0.07


def test_random_cifar_crops_stay_inside_the_padded_image():
    x = torch.ones(2000, 3, 32, 32)
    out = random_cifar(x, torch.Generator().manual_seed(1))
    for img in out[:, 0]:
        lit_rows, lit_cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        # a solid rectangle of at least 28 x 28 that reaches a top/bottom and a left/right edge
        assert len(lit_rows) >= 28 and len(lit_cols) >= 28
        assert lit_rows[0] == 0 or lit_rows[-1] == 31
        assert lit_cols[0] == 0 or lit_cols[-1] == 31
        assert img.sum() == len(lit_rows) * len(lit_cols)
    assert torch.equal(out[:, 0], out[:, 2])                         # one crop per image, all channels


def test_affine_with_zero_parameters_is_the_identity():
    x = torch.rand(16, 3, 28, 20)
    zero = torch.zeros(16)
    torch.testing.assert_close(affine(x, zero, zero, zero, torch.ones(16)), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tx, ty", [(2, -3), (-1, 1), (3, 0)])
def test_affine_shift_of_a_one_hot_image_lands_where_torchvision_puts_it(tx, ty):
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 12, 9] = 1.0
    out = affine(x, torch.zeros(1), torch.tensor([float(tx)]), torch.tensor([float(ty)]), torch.ones(1))
    assert _landing(out) == [(12 + ty, 9 + tx)]                    # content moves right / down
    pil = Image.fromarray((x[0, 0] * 255).to(torch.uint8).numpy())
    ref = TF.affine(pil, angle=0.0, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0],
                    interpolation=InterpolationMode.NEAREST, fill=0)
    assert torch.equal(out[0, 0], torch.from_numpy(np.array(ref)).float() / 255)


def test_affine_is_torchvisions_affine_for_random_parameters():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (32, 1, 28, 28), generator=g).float() / 255
    angle = torch.rand(32, generator=g) * 30 - 15
    tx, ty = (torch.round(torch.rand(32, generator=g) * 5.6 - 2.8) for _ in range(2))
    scale = torch.rand(32, generator=g) * 0.2 + 0.9
    out = affine(x, angle, tx, ty, scale)
    for b in range(32):
        ref = TF.affine(x[b], angle=float(angle[b]), translate=[int(tx[b]), int(ty[b])], scale=float(scale[b]),
                        shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST, fill=0)
        assert torch.equal(out[b], ref), b
    quarter = affine(x, torch.full((32,), 90.0), torch.zeros(32), torch.zeros(32), torch.ones(32))
    ref = TF.affine(x, angle=90.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0])
    assert torch.equal(quarter, ref) and not torch.equal(quarter, x)


def test_random_mnist_matches_torchvisions_distribution():
    n = 3000
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, 12:16, 12:16] = 1.0                  # a 4 x 4 block at the centre
    out = random_mnist(x, torch.Generator().manual_seed(3))
    tv = torchvision_augmentation("mnist", (28, 28))
    torch.manual_seed(3)
    pil = Image.fromarray((x[0, 0] * 255).to(torch.uint8).numpy())
    theirs = torch.stack([torch.from_numpy(np.array(tv(pil))).float() / 255 for _ in range(n)])[:, None]

    def shift_and_mass(imgs):
        grid = torch.arange(28.0)
        mass = imgs.sum((1, 2, 3))
        cx = (imgs.sum((1, 2)) * grid).sum(1) / mass - 13.5
        return torch.round(cx).long().tolist(), mass

    (ours_dx, ours_mass), (tv_dx, tv_mass) = shift_and_mass(out), shift_and_mass(theirs)
    # the block's centre moves by the whole-pixel shift round(U(-2.8, 2.8)): -3..3
    assert set(ours_dx) == set(tv_dx) == set(range(-3, 4))
    a, b = Counter(ours_dx), Counter(tv_dx)
    assert sum(abs(a[k] - b[k]) for k in range(-3, 4)) / (2 * n) < 0.05
    # zoom 0.9..1.1 and rotation change the block's area alike
    assert abs(float(ours_mass.mean()) / float(tv_mass.mean()) - 1) < 0.02
    assert abs(float(ours_mass.std()) / float(tv_mass.std()) - 1) < 0.1


def test_device_loader_augments_train_batches_only():
    ds = images(n=64, shape=(3, 16, 16), style="cifar")
    loader = make_loader(ds, batch_size=64, shuffle=False, seed=0, device="cpu", on_device=True)
    x, _ = next(iter(loader))
    plain = ds.images.float() / 255
    assert not torch.equal(x, plain)
    assert torch.isin(x, torch.cat([plain.unique(), torch.zeros(1)])).all()       # pixels moved, not blended
    val = ImageTensorDataset(ds.images, ds.targets)
    x, _ = next(iter(make_eval_loader(val, device="cpu", on_device=True)))
    assert torch.equal(x, plain)


# ---------------------------------------------------------------- no host syncs

SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


@pytest.mark.parametrize("style, world", [("cifar", 1), ("mnist", 1), ("cifar", 2), (None, 1)])
def test_device_loader_makes_no_host_sync_per_batch(monkeypatch, style, world):
    ds = images(n=200, shape=(1, 12, 12), style=style)
    loader = make_loader(ds, batch_size=16, shuffle=True, seed=0, device="cpu", on_device=True, world=world)
    calls = Counter()
    it = iter(loader)
    next(it)                                       # the epoch's one index copy happens here
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.zeros(2).tolist()
    assert calls == {"tolist": 1}                  # the counters are live
    calls.clear()
    got = [next(it) for _ in range(5)]
    monkeypatch.undo()
    assert len(got) == 5 and sum(calls.values()) == 0, dict(calls)


# ---------------------------------------------------------------- CUDA

@cuda
def test_cuda_default_is_on_device_and_matches_the_cpu_values():
    ds = images(n=300, shape=(3, 32, 32))
    on = make_loader(ds, batch_size=64, shuffle=True, seed=4, device="cuda")
    off = make_loader(ds, batch_size=64, shuffle=True, seed=4, device="cpu")
    assert isinstance(on, DeviceLoader) and on.x.is_cuda
    on.set_epoch(2)
    off.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(on, off):
        assert xa.is_cuda and ya.is_cuda
        torch.testing.assert_close(xa.cpu(), xb, rtol=0, atol=1e-6)
        assert torch.equal(ya.cpu(), yb)


@cuda
@pytest.mark.parametrize("style", ["cifar", "mnist"])
def test_cuda_loader_never_syncs_and_repeats_its_augmentation(style):
    ds = images(n=1000, shape=(1 if style == "mnist" else 3, 28, 28), style=style)
    loader = make_loader(ds, batch_size=128, shuffle=True, seed=1, device="cuda")
    loader.set_epoch(1)
    it = iter(loader)
    first = [next(it)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        first += [next(it) for _ in range(5)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loader.set_epoch(1)
    again = [b for b, _ in zip(loader, range(6))]
    for (xa, ya), (xb, yb) in zip(first, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0], ds.images[:128].cuda().float() / 255)


@cuda
def test_cuda_affine_matches_the_cpu_affine():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (64, 1, 28, 28), generator=g).float() / 255
    params = (torch.rand(64, generator=g) * 30 - 15, torch.round(torch.rand(64, generator=g) * 5.6 - 2.8),
              torch.round(torch.rand(64, generator=g) * 5.6 - 2.8), torch.rand(64, generator=g) * 0.2 + 0.9)
    cpu = affine(x, *params)
    gpu = affine(x.cuda(), *(p.cuda() for p in params)).cpu()
    assert (cpu == gpu).float().mean() > 0.999          # nearest sampling may break a tie differently
