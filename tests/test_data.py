"""Data sets: loaders on small files written here in the real on-disk formats.

Oracles: the arrays we write (pixels / 255, labels), exact split sizes from
round-half-up arithmetic, and per-class counts.  Nothing touches the network:
the "download" tests replace urllib's ``urlopen`` with one that raises.
"""
from __future__ import annotations

import os
import pickle
import struct
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lipschitz_lab.data import (
    DATASETS, DataSplits, DatasetNotFoundError, dataset_files, dataset_option_names, default_data_root,
    get_dataset, missing_files, needs_files, path_option, register_dataset,
)
from lipschitz_lab.data import roots
from lipschitz_lab.data.images import ImageTensorDataset
from lipschitz_lab.data.registry import DATA_ROOT_ENV, DataRequest
from lipschitz_lab.data.splits import balanced_subset, holdout
from lipschitz_lab.data.vision import CIFAR10_FILES, CIFAR100_FILES, MNIST_FILES

REPO = Path(__file__).resolve().parents[1]
# the developers' offline copies: $LIPSCHITZ_LAB_DATA, else ../shared/data beside the checkout
SHARED_DATA = Path(os.environ.get(DATA_ROOT_ENV) or REPO.parent / "shared" / "data")
SHARED_SUBSET = SHARED_DATA / "cifar10-subset"


# ---------------------------------------------------------------- writers

def write_mnist(root: Path, n_train: int = 40, n_test: int = 10, seed: int = 0):
    """The four raw IDX files in torchvision's ``MNIST/raw`` layout; labels i % 10."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        # IDX: magic 0x0000 08 (ubyte) 03 (dims), then big-endian int32 sizes
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())
        out[split] = (images, labels)
    return out


def write_cifar(root: Path, hundred: bool = False, per_batch: int = 6, n_test: int = 10, seed: int = 0):
    """Python-pickle batches as in the official CIFAR-10 / CIFAR-100 archives."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    k = 100 if hundred else 10
    key = "fine_labels" if hundred else "labels"

    def batch(name: str, n: int, offset: int):
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)  # rows: R plane, G, B
        labels = [(offset + i) % k for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        return data, labels

    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    n_per = per_batch * (5 if hundred else 1)
    train = [batch(name, n_per, i * n_per) for i, name in enumerate(names)]
    test = batch("test" if hundred else "test_batch", n_test, 0)
    meta_key = "fine_label_names" if hundred else "label_names"
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(k)]}, f)
    train_x = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([lab for _, lab in train])
    return train_x, train_y, test[0].reshape(-1, 3, 32, 32), np.array(test[1])


def write_npz(folder: Path, shape=(8, 8, 3), n_train=30, n_test=10, k=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        y = (np.arange(n) % k).astype(np.uint8)
        np.savez(folder / f"{split}.npz", x=x, y=y)
        arrays[split] = (x, y)
    return arrays


def assert_image_tensors(splits: DataSplits, shape: tuple[int, ...]):
    for part in (splits.train, splits.val, splits.test):
        if len(part) == 0:
            continue
        x, y = part[0]
        assert x.shape == shape and x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def differs_under_augmentation(ds, index: int = 0, draws: int = 8) -> bool:
    torch.manual_seed(0)
    return any(not torch.equal(ds[index][0], ds[index][0]) for _ in range(draws))


# ---------------------------------------------------------------- image datasets

@pytest.mark.parametrize("channels", [1, 2, 3])
def test_transform_path_keeps_pixels_exact(channels):
    """An identity transform (through PIL for 1 or 3 channels) changes no pixel."""
    images = torch.randint(0, 256, (4, channels, 5, 7), dtype=torch.uint8)
    targets = torch.arange(4)
    plain = ImageTensorDataset(images, targets)
    through = ImageTensorDataset(images, targets, transform=lambda img: img)
    for i in range(4):
        x, y = through[i]
        assert x.shape == (channels, 5, 7) and x.dtype == torch.float32
        torch.testing.assert_close(x, plain[i][0], rtol=0, atol=0)
        torch.testing.assert_close(x, images[i].float() / 255, rtol=0, atol=0)
        assert int(y) == i


# ---------------------------------------------------------------- MNIST

def test_mnist_reads_idx_files_exactly(tmp_path):
    written = write_mnist(tmp_path)
    s = get_dataset("mnist", data_root=tmp_path, download=False, val_fraction=0.0, augment=False)
    assert (s.task, s.num_classes, s.num_outputs, s.input_shape) == ("multiclass", 10, 10, (1, 28, 28))
    assert (len(s.train), len(s.val), len(s.test)) == (40, 0, 10)
    assert_image_tensors(s, (1, 28, 28))
    images, labels = written["train"]
    for i in (0, 17, 39):  # val_fraction=0 keeps the training set in file order
        x, y = s.train[i]
        torch.testing.assert_close(x[0], torch.from_numpy(images[i]).float() / 255, rtol=0, atol=0)
        assert int(y) == labels[i]
    x, y = s.test[3]
    torch.testing.assert_close(x[0], torch.from_numpy(written["t10k"][0][3]).float() / 255, rtol=0, atol=0)


def test_mnist_augments_train_only(tmp_path):
    write_mnist(tmp_path)
    s = get_dataset("mnist", data_root=tmp_path, download=False, val_fraction=0.25)
    aug = s.train.transform
    assert type(aug).__name__ == "RandomAffine"
    assert aug.degrees == [-15.0, 15.0] and aug.translate == (0.1, 0.1) and aug.scale == (0.9, 1.1)
    assert s.val.transform is None and s.test.transform is None
    assert differs_under_augmentation(s.train)
    assert not differs_under_augmentation(s.val) and not differs_under_augmentation(s.test)


def test_mnist_validation_is_stratified_and_subset_is_class_balanced(tmp_path):
    write_mnist(tmp_path)  # 40 train images, 4 per class
    s = get_dataset("mnist", data_root=tmp_path, download=False, val_fraction=0.25, train_subset=20)
    assert len(s.val) == 10 and Counter(s.val.targets.tolist()) == {c: 1 for c in range(10)}
    assert len(s.train) == 20 and Counter(s.train.targets.tolist()) == {c: 2 for c in range(10)}
    # 25 = 10 * 2 + 5: five classes get a third image
    s = get_dataset("mnist", data_root=tmp_path, download=False, val_fraction=0.25, train_subset=25)
    assert sorted(Counter(s.train.targets.tolist()).values()) == [2] * 5 + [3] * 5
    # the same seed picks the same images; the validation split ignores train_subset
    again = get_dataset("mnist", data_root=tmp_path, download=False, val_fraction=0.25, train_subset=25)
    assert torch.equal(s.train.images, again.train.images) and torch.equal(s.val.images, again.val.images)
    with pytest.raises(ValueError, match="train_subset=31"):
        get_dataset("mnist", data_root=tmp_path, download=False, val_fraction=0.25, train_subset=31)


def test_mnist_missing_files_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("mnist", data_root=tmp_path, download=False)
    msg = str(info.value)
    assert msg == (f"dataset='mnist': files not found: put {', '.join(MNIST_FILES)} (torchvision layout) "
                   f"in {tmp_path / 'MNIST' / 'raw'}, or set $LIPSCHITZ_LAB_DATA / data_root to the "
                   f"folder that holds MNIST/raw/; download=False")
    assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []          # the look-up created nothing


def test_mnist_names_only_the_missing_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    expected = r"put t10k-labels-idx1-ubyte \(torchvision layout\) in .*raw \(the other 3 are there\)"
    with pytest.raises(DatasetNotFoundError, match=expected):
        get_dataset("mnist", data_root=tmp_path, download=False)


@pytest.fixture
def offline(monkeypatch):
    """urllib.request.urlopen that fails like a machine without a network; records the URLs."""
    calls = []

    def urlopen(request, *args, **kwargs):
        calls.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


@pytest.mark.parametrize("name, folder, files", [
    ("mnist", "MNIST/raw", MNIST_FILES),
    ("cifar10", "cifar-10-batches-py", CIFAR10_FILES),
    ("cifar100", "cifar-100-python", CIFAR100_FILES),
])
@pytest.mark.parametrize("root_exists", [True, False])
def test_failed_download_becomes_one_clear_error(tmp_path, offline, capsys, name, folder, files, root_exists):
    root = tmp_path / "data"
    if root_exists:
        root.mkdir()
        (root / "keep.txt").write_text("the user's own file")
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset(name, data_root=root, download=True)
    msg = str(info.value)
    assert offline, "torchvision's download was not attempted"
    assert msg.startswith(f"dataset={name!r}: files not found: put {', '.join(files)} (torchvision layout) "
                          f"in {root / folder}, or set $LIPSCHITZ_LAB_DATA / data_root")
    assert msg.endswith("; the download failed (no network: [Errno -3] Temporary failure in name resolution)")
    assert "\n" not in msg and "http" not in msg
    assert "http" not in capsys.readouterr().out     # torchvision's URL trace is not shown
    # what the download created (the folder, the archive) is gone; the user's file stays
    if root_exists:
        assert [p.name for p in root.iterdir()] == ["keep.txt"]
    else:
        assert not root.exists()


def test_failed_download_keeps_files_already_there(tmp_path, offline):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-images-idx3-ubyte").unlink()
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(DatasetNotFoundError, match="put t10k-images-idx3-ubyte .*the other 3 are there"):
        get_dataset("mnist", data_root=tmp_path, download=True)
    assert sorted(p.name for p in raw.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]


# ---------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles_load_with_verify_false(tmp_path, hundred):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, hundred=hundred)
    name, k = ("cifar100", 100) if hundred else ("cifar10", 10)
    s = get_dataset(name, data_root=tmp_path, download=False, val_fraction=0.0, augment=False, verify=False)
    assert (s.num_classes, s.num_outputs, s.input_shape) == (k, k, (3, 32, 32))
    assert (len(s.train), len(s.test)) == (len(train_x), len(test_x))
    assert_image_tensors(s, (3, 32, 32))
    for i in (0, len(train_x) - 1):  # channel planes in file order: CHW, RGB
        x, y = s.train[i]
        torch.testing.assert_close(x, torch.from_numpy(train_x[i]).float() / 255, rtol=0, atol=0)
        assert int(y) == train_y[i]
    x, y = s.test[4]
    torch.testing.assert_close(x, torch.from_numpy(test_x[4]).float() / 255, rtol=0, atol=0)
    assert int(y) == test_y[4]


def test_cifar_md5_check_is_on_by_default(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="MD5.*verify=False"):
        get_dataset("cifar10", data_root=tmp_path, download=False)


def test_cifar_augments_train_only(tmp_path):
    write_cifar(tmp_path)
    s = get_dataset("cifar10", data_root=tmp_path, download=False, verify=False, val_fraction=0.2)
    names = [type(t).__name__ for t in s.train.transform.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip"]
    assert s.train.transform.transforms[0].padding == 4
    assert s.val.transform is None and s.test.transform is None
    assert differs_under_augmentation(s.train)
    assert not differs_under_augmentation(s.val)
    # stratified: 30 images, 3 per class -> 6 validation images from 6 classes
    assert len(s.val) == 6 and len(set(s.val.targets.tolist())) == 6


def test_cifar_missing_files_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("cifar10", data_root=tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert all(f in msg for f in CIFAR10_FILES)


def test_verify_must_be_bool(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(ValueError, match="verify='no'"):
        get_dataset("cifar10", data_root=tmp_path, verify="no")


# ---------------------------------------------------------------- npz

def test_npz_folder_rgb_and_grey(tmp_path):
    arrays = write_npz(tmp_path / "rgb", shape=(8, 8, 3))
    s = get_dataset("npz", path=tmp_path / "rgb", val_fraction=0.0, augment=False)
    assert (s.input_shape, s.num_classes, len(s.train), len(s.test)) == ((3, 8, 8), 3, 30, 10)
    assert_image_tensors(s, (3, 8, 8))
    x, y = s.train[5]
    expected = torch.from_numpy(arrays["train"][0][5]).permute(2, 0, 1).float() / 255  # HWC -> CHW
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert int(y) == arrays["train"][1][5]

    write_npz(tmp_path / "grey", shape=(6, 6), k=4)
    s = get_dataset("npz", data_root=tmp_path / "grey", augmentation="mnist")
    assert (s.input_shape, s.num_classes) == ((1, 6, 6), 4)
    assert type(s.train.transform).__name__ == "RandomAffine" and s.val.transform is None


def test_npz_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train.npz, test.npz"):
        get_dataset("npz", path=tmp_path / "empty")
    with pytest.raises(ValueError, match="path=None"):
        get_dataset("npz")
    folder = tmp_path / "floats"
    folder.mkdir()
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="x must be uint8"):
        get_dataset("npz", path=folder)
    write_npz(tmp_path / "ok")
    with pytest.raises(ValueError, match="augmentation='flip'"):
        get_dataset("npz", path=tmp_path / "ok", augmentation="flip")


def test_cifar10_subset_alias_uses_data_root(tmp_path):
    write_npz(tmp_path / "cifar10-subset", shape=(32, 32, 3), n_train=40, k=10)
    s = get_dataset("cifar10_subset", data_root=tmp_path, val_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (30, 10, 10, 10)


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="the offline CIFAR-10 subset is not here")
def test_shared_cifar10_subset():
    s = get_dataset("cifar10_subset", path=SHARED_SUBSET, val_fraction=0.0)
    assert (len(s.train), len(s.test), s.num_classes, s.input_shape) == (10_000, 2_000, 10, (3, 32, 32))
    assert Counter(s.train.targets.tolist()) == {c: 1000 for c in range(10)}
    assert Counter(s.test.targets.tolist()) == {c: 200 for c in range(10)}
    assert_image_tensors(s, (3, 32, 32))


# ---------------------------------------------------------------- tabular

def test_digits_splits_sizes_and_standardisation():
    s = get_dataset("digits")
    # 1797 -> test round(359.4) = 359; val round(0.1 * 1438) = 144; train 1294
    assert (len(s.train), len(s.val), len(s.test)) == (1294, 144, 359)
    assert (s.task, s.num_classes, s.num_outputs, s.input_shape) == ("multiclass", 10, 10, (64,))
    X, y = s.train.tensors
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    varying = X.std(0, unbiased=False) > 0
    torch.testing.assert_close(X.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(X[:, varying].std(0, unbiased=False), torch.ones(int(varying.sum())),
                               atol=1e-5, rtol=0)
    # stratified test split: every class within one example of 20%
    from sklearn.datasets import load_digits
    counts = Counter(load_digits().target.tolist())
    test_counts = Counter(s.test.tensors[1].tolist())
    assert all(abs(test_counts[c] - 0.2 * counts[c]) < 1 for c in counts)

    image = get_dataset("digits", image=True)
    assert image.input_shape == (1, 8, 8) and image.train[0][0].shape == (1, 8, 8)
    torch.testing.assert_close(image.train.tensors[0].reshape(-1, 64), X)


def test_breast_cancer_is_binary_with_float_targets():
    s = get_dataset("breast_cancer")
    # 569 -> test round(113.8) = 114; val round(45.5) = 46 (half up); train 409
    assert (len(s.train), len(s.val), len(s.test)) == (409, 46, 114)
    assert (s.task, s.num_classes, s.num_outputs, s.input_shape) == ("binary", 2, 1, (30,))
    y = s.train.tensors[1]
    assert y.dtype == torch.float32 and set(y.unique().tolist()) == {0.0, 1.0}
    xb, yb = next(iter(DataLoader(s.train, batch_size=8)))
    assert xb.shape == (8, 30) and yb.shape == (8,)


def test_diabetes_target_is_standardised_with_train_statistics():
    from sklearn.datasets import load_diabetes

    s = get_dataset("diabetes")
    assert (len(s.train), len(s.val), len(s.test)) == (319, 35, 88)
    assert (s.task, s.num_classes, s.num_outputs, s.input_shape) == ("regression", 0, 1, (10,))
    y = s.train.tensors[1]
    assert y.dtype == torch.float32
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-5
    # undoing the scaling gives back targets of the original data set
    raw = load_diabetes().target
    for part in (s.train, s.test):
        restored = part.tensors[1].double().numpy() * s.target_scale + s.target_mean
        assert np.abs(restored[:, None] - raw[None, :]).min(axis=1).max() < 1e-3
    assert 60 < s.target_scale < 90  # the published target std is about 77


@pytest.mark.parametrize("task, dtype, outputs", [
    ("regression", torch.float32, 1), ("binary", torch.float32, 1), ("multiclass", torch.int64, 4),
])
def test_synthetic_is_deterministic(task, dtype, outputs):
    a = get_dataset("synthetic", task=task, n=200, features=5, classes=4, seed=3)
    b = get_dataset("synthetic", task=task, n=200, features=5, classes=4, seed=3)
    c = get_dataset("synthetic", task=task, n=200, features=5, classes=4, seed=4)
    assert (a.task, a.num_outputs, a.input_shape) == (task, outputs, (5,))
    assert (len(a.train), len(a.val), len(a.test)) == (144, 16, 40)
    for part in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert a.train.tensors[1].dtype == dtype
    if task == "multiclass":
        assert set(a.train.tensors[1].tolist()) == {0, 1, 2, 3}


def test_tabular_train_subset():
    s = get_dataset("digits", train_subset=100)
    assert len(s.train) == 100 and Counter(s.train.tensors[1].tolist()) == {c: 10 for c in range(10)}
    r = get_dataset("diabetes", train_subset=50)
    assert len(r.train) == 50 and len(r.test) == 88


# ---------------------------------------------------------------- registry

def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as info:
        get_dataset("imagenet")
    msg = str(info.value)
    assert "name='imagenet'" in msg and all(n in msg for n in DATASETS)


@pytest.mark.parametrize("kwargs, needle", [
    ({"name": "digits", "colour": True}, "colour=True"),
    ({"name": "digits", "image": "yes"}, "image='yes'"),
    ({"name": "synthetic", "task": "ranking"}, "task='ranking'"),
    ({"name": "synthetic", "n": 5}, "n=5"),
    ({"name": "synthetic", "features": 0}, "features=0"),
    ({"name": "digits", "val_fraction": 1.0}, "val_fraction=1.0"),
    ({"name": "digits", "train_subset": 0}, "train_subset=0"),
    ({"name": "digits", "seed": -1}, "seed=-1"),
    ({"name": "digits", "train_subset": 5000}, "train_subset=5000"),
])
def test_bad_values_name_field_and_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        get_dataset(**kwargs)


def test_register_dataset_and_options():
    def tiny(request: DataRequest, *, n: int = 12) -> DataSplits:
        return get_dataset("synthetic", n=n, seed=request.seed)

    try:
        assert register_dataset("tiny")(tiny) is tiny
        assert get_dataset("tiny", n=20).num_outputs == 1
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("tiny", tiny)
        with pytest.raises(ValueError, match="its options: n"):
            get_dataset("tiny", m=1)
    finally:
        DATASETS.pop("tiny", None)


@pytest.fixture
def no_data_env(tmp_path, monkeypatch):
    """No $LIPSCHITZ_LAB_DATA, no developers' copy, $XDG_DATA_HOME in tmp; cwd a notebooks/ folder."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.setattr(roots, "DEVELOPER_DATA_ROOT", tmp_path / "absent")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    # a ../shared/data and a ./data beside the cwd must not matter
    (tmp_path / "shared" / "data" / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "notebooks" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks")
    return tmp_path


def test_default_data_root_ignores_the_cwd(no_data_env, monkeypatch):
    tmp_path = no_data_env
    assert default_data_root() == tmp_path / "xdg" / "lipschitz-lab" / "data"
    assert DataRequest("mnist", None, 0, 0.1, True, None, False).root() == default_data_root()
    monkeypatch.setenv("XDG_DATA_HOME", "relative/xdg")        # invalid per the XDG spec: ignored
    assert default_data_root() == Path.home() / ".local" / "share" / "lipschitz-lab" / "data"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_root() == Path.home() / ".local" / "share" / "lipschitz-lab" / "data"
    # the developers' copy beside a source checkout wins over the user folder...
    (tmp_path / "dev").mkdir()
    monkeypatch.setattr(roots, "DEVELOPER_DATA_ROOT", tmp_path / "dev")
    assert default_data_root() == (tmp_path / "dev" if roots._in_source_checkout()
                                   else Path.home() / ".local" / "share" / "lipschitz-lab" / "data")
    # ...and $LIPSCHITZ_LAB_DATA over both; data_root over everything
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert default_data_root() == tmp_path / "elsewhere"
    assert DataRequest("mnist", None, 0, 0.1, True, None, False).root() == tmp_path / "elsewhere"
    explicit = DataRequest("mnist", tmp_path / "x", 0, 0.1, True, None, False)
    assert explicit.root() == tmp_path / "x"


def test_developer_copy_is_found_from_the_package_not_the_cwd():
    assert roots.DEVELOPER_DATA_ROOT == REPO.parent / "shared" / "data"
    assert roots._in_source_checkout() == (REPO / "pyproject.toml").is_file()


@pytest.mark.parametrize("download", [False, True])
def test_notebook_lookup_creates_no_folder(no_data_env, offline, download):
    tmp_path = no_data_env
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("mnist", download=download)
    msg = str(info.value)
    assert f"in {tmp_path / 'xdg' / 'lipschitz-lab' / 'data' / 'MNIST' / 'raw'}," in msg
    assert msg.endswith("download=False" if not download else "(no network: [Errno -3] Temporary "
                        "failure in name resolution)")
    assert bool(offline) == download
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_mnist_and_cifar10_subset_load_from_the_data_env(no_data_env, monkeypatch):
    root = no_data_env / "mydata"
    written = write_mnist(root)
    arrays = write_npz(root / "cifar10-subset", shape=(32, 32, 3), n_train=20, n_test=10, k=10)
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    s = get_dataset("mnist", download=False, val_fraction=0.0, augment=False)
    torch.testing.assert_close(s.train[7][0][0], torch.from_numpy(written["train"][0][7]).float() / 255,
                               rtol=0, atol=0)
    c = get_dataset("cifar10_subset", val_fraction=0.0, augment=False)
    assert (len(c.train), len(c.test), c.input_shape) == (20, 10, (3, 32, 32))
    torch.testing.assert_close(c.test[3][0], torch.from_numpy(arrays["test"][0][3]).permute(2, 0, 1).float() / 255,
                               rtol=0, atol=0)


def test_cifar10_subset_missing_says_where(no_data_env):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("cifar10_subset")
    folder = no_data_env / "xdg" / "lipschitz-lab" / "data" / "cifar10-subset"
    assert str(info.value) == (f"dataset='cifar10_subset': files not found: put train.npz, test.npz in {folder}, "
                               f"or set path to this folder, or $LIPSCHITZ_LAB_DATA / data_root to the "
                               f"folder that holds cifar10-subset/")


def test_what_the_ui_needs_to_know():
    assert [n for n in sorted(DATASETS) if needs_files(n)] == [
        "cifar10", "cifar100", "cifar10_subset", "mnist", "npz"]
    assert not needs_files("digits") and dataset_files("digits") is None
    assert path_option("npz") == "path" and path_option("cifar10_subset") == "path"
    assert path_option("mnist") is None and path_option("synthetic") is None
    assert dataset_files("mnist").folder == "MNIST/raw" and dataset_files("mnist").names == MNIST_FILES
    assert dataset_option_names("npz") == ("path", "augmentation")
    assert dataset_option_names("synthetic") == ("task", "n", "features", "classes")
    assert dataset_option_names("mnist") == ()
    for probe in (needs_files, dataset_option_names, path_option):
        with pytest.raises(ValueError, match="name='imagenet'"):
            probe("imagenet")


def test_missing_files_is_the_loaders_message_from_the_disk_alone(no_data_env, offline):
    tmp_path = no_data_env
    before = sorted(tmp_path.rglob("*"))
    for name, kwargs in (("mnist", {}), ("cifar10", {"data_root": tmp_path / "d"}), ("cifar10_subset", {}),
                         ("npz", {"path": tmp_path / "npz"})):
        msg = missing_files(name, **kwargs)
        with pytest.raises(DatasetNotFoundError) as info:
            get_dataset(name, download=False, **kwargs)
        assert str(info.value) in (msg, msg + "; download=False"), name
    assert not offline and sorted(tmp_path.rglob("*")) == before        # no download, no folder
    assert missing_files("npz") == ("data set 'npz' needs path= a folder holding train.npz, test.npz; "
                                    "got path=None")
    assert missing_files("digits") is None and missing_files("synthetic", n=50) is None
    write_mnist(tmp_path / "d")
    write_npz(tmp_path / "npz")
    assert missing_files("mnist", data_root=tmp_path / "d") is None
    assert missing_files("npz", path=tmp_path / "npz") is None
    assert missing_files("npz", data_root=tmp_path / "npz") is None          # npz: data_root itself
    with pytest.raises(ValueError, match="no option path="):
        missing_files("mnist", path=tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="the offline MNIST is not here")
def test_shared_mnist():
    s = get_dataset("mnist", data_root=SHARED_DATA, download=False, val_fraction=0.0)
    assert (len(s.train), len(s.test)) == (60_000, 10_000)
    assert Counter(s.test.targets.tolist())[1] == 1135


# ---------------------------------------------------------------- splits

def test_holdout_sizes_and_strata():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [10, 7, 3])  # 20 examples
    keep, held = holdout(y, 0.25, rng, stratify=True)
    assert len(held) == 5 and len(keep) == 15
    assert np.intersect1d(keep, held).size == 0 and np.union1d(keep, held).size == 20
    # quotas 2.5, 1.75, 0.75: floors 2, 1, 0; two extra go to the largest remainders (0.75, 0.75)
    assert Counter(y[held].tolist()) == {0: 2, 1: 2, 2: 1}
    keep, held = holdout(y, 0.5, rng, stratify=False)
    assert len(held) == 10 and len(keep) == 10


def test_balanced_subset_needs_enough_of_each_class():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), [5, 1])
    with pytest.raises(ValueError, match="class 1"):
        balanced_subset(y, 4, rng)
    idx = balanced_subset(y, 3, rng)
    assert len(idx) == 3 and set(y[idx].tolist()) == {0, 1}
