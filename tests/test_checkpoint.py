"""Checkpoints: atomic saves, weights_only loads, and RNG states that make a resume exact."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lipschitz_lab.runs import checkpoint
from lipschitz_lab.runs import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(8, 3))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)


def train_steps(model, opt, n: int) -> None:
    """Steps that draw from every RNG: data from numpy and python, dropout from torch."""
    for _ in range(n):
        x = torch.from_numpy(np.random.randn(16, 5)).to(torch.get_default_dtype()) * random.uniform(0.5, 1.5)
        y = torch.randint(0, 3, (16,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    # the oracle: 6 steps in one go
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model, opt = make_model()
    train_steps(model, opt, 6)
    expected = [p.detach().clone() for p in model.parameters()]

    # 3 steps, checkpoint, wreck every RNG, restore into fresh objects, 3 more steps
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model, opt = make_model()
    train_steps(model, opt, 3)
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt",
                           {"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "rng": rng_state(), "epoch": 1, "step": 3, "lr": 0.01, "bound": "paper"})
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    state = load_checkpoint(path)
    model, opt = make_model()
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    train_steps(model, opt, 3)

    assert (state["epoch"], state["step"], state["lr"], state["bound"]) == (1, 3, 0.01, "paper")
    for got, want in zip(model.parameters(), expected):
        assert torch.equal(got, want)


def test_state_dicts_round_trip(tmp_path):
    model, opt = make_model()
    train_steps(model, opt, 2)
    path = save_checkpoint(str(tmp_path / "c.pt"), {"model": model.state_dict(), "optimizer": opt.state_dict()})
    assert isinstance(path, Path)
    state = load_checkpoint(path, map_location="cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor)
    want = opt.state_dict()
    assert state["optimizer"]["param_groups"] == want["param_groups"]
    for i, slots in want["state"].items():
        for slot, value in slots.items():
            assert torch.equal(state["optimizer"]["state"][i][slot], value)


def test_load_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Path("x")}, path)  # an arbitrary class: weights_only refuses it
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": torch.tensor(2)})
    assert load_checkpoint(path)["step"].item() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_save_replaces(tmp_path):
    path = tmp_path / "last.pt"
    for step in range(3):
        save_checkpoint(path, {"step": step})
    assert load_checkpoint(path) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def draw() -> tuple:
    """Numbers from every stream, including the cached second Gaussians of python and numpy."""
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1), np.random.randn()  # leave a cached Gaussian in both
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = draw()
    assert draw() != first  # the streams do move on
    set_rng_state(load_checkpoint(path)["rng"])
    assert draw() == first


def test_rng_state_is_independent_of_later_draws():
    state = rng_state()
    first = draw()
    set_rng_state(state)
    assert draw() == first
    set_rng_state(state)  # a state can be restored twice
    assert draw() == first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_rng_state(tmp_path):
    torch.cuda.manual_seed_all(3)
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = torch.rand(4, device="cuda").tolist(), float(np.random.rand())
    set_rng_state(load_checkpoint(path)["rng"])
    assert (torch.rand(4, device="cuda").tolist(), float(np.random.rand())) == first
    # loaded straight onto the GPU (map_location="cuda"), every state still restores
    set_rng_state(load_checkpoint(path, map_location="cuda")["rng"])
    assert (torch.rand(4, device="cuda").tolist(), float(np.random.rand())) == first


def test_set_rng_state_names_missing_fields():
    with pytest.raises(ValueError, match="numpy"):
        set_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})
