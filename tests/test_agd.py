"""policies/agd.py: AGD's update against a hand computation, its orthogonal initialisation, what it
freezes, what it refuses, and a short run on digits through the CLI."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.policies import POLICIES, PolicyContext
from lipschitz_lab.policies.agd import AGD, agd_layers, init_orthogonal_, layer_scale

F64 = torch.float64


def test_the_update_of_a_two_layer_mlp_by_hand():
    # W1: 4x3, W2: 2x4, every gradient entry 1/2, so ‖g1‖_F = √3, ‖g2‖_F = √2;
    # G = ½(√3·√(4/3) + √2·√(2/4)) = ½(2 + 1) = 3/2, η = log((1 + √7)/2);
    # W1 moves by (η/2)·√(4/3)·(1/2)/√3 = η/6 per entry, W2 by (η/2)·√(1/2)·(1/2)/√2 = η/8
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    opt = AGD([net[0].weight, net[2].weight])
    eta = math.log((1 + math.sqrt(7)) / 2)
    assert opt.eta().item() == pytest.approx(eta, rel=1e-15)
    opt.step()
    torch.testing.assert_close(net[0].weight - before[0], torch.full((4, 3), -eta / 6, dtype=F64))
    torch.testing.assert_close(net[2].weight - before[1], torch.full((2, 4), -eta / 8, dtype=F64))


def test_a_convolution_moves_each_kernel_tap_by_the_same_norm():
    # the authors' conv rule: each tap W[:, :, i, j] normalised on its own; a zero tap stays put
    conv = nn.Conv2d(3, 6, 2, bias=False).double()
    g = torch.randn(6, 3, 2, 2, dtype=F64)
    g[:, :, 1, 1] = 0
    conv.weight.grad = g
    before = conv.weight.detach().clone()
    opt = AGD([conv.weight])
    G = layer_scale(conv.weight) * g.norm(dim=(0, 1)).sum()              # one layer: L = 1
    eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
    opt.step()
    moved = (conv.weight - before).norm(dim=(0, 1))
    expected = torch.full((2, 2), (eta * math.sqrt(6 / 3) / 2).item(), dtype=F64)   # scale √(6/3)/√(2·2)
    expected[1, 1] = 0.0
    torch.testing.assert_close(moved, expected)


@pytest.mark.parametrize("shape", [(128, 64), (10, 64), (8, 4, 3, 3), (4, 8, 3, 3)])
def test_the_initialisation_is_orthogonal_with_singular_values_sqrt_dl_over_dl1(shape):
    torch.manual_seed(0)
    w = init_orthogonal_(torch.empty(shape, dtype=F64))
    taps = w.reshape(shape[0], shape[1], -1)
    target = math.sqrt(shape[0] / shape[1]) / math.sqrt(math.prod(shape[2:]))
    for t in range(taps.shape[2]):
        s = torch.linalg.svdvals(taps[:, :, t])
        torch.testing.assert_close(s, torch.full_like(s, target))


def test_biases_and_norm_layers_are_set_and_frozen():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        net[1].weight.fill_(2.0)
    weights = agd_layers(net)
    assert [w.shape for w in weights] == [net[0].weight.shape, net[4].weight.shape]
    assert not any(p.requires_grad for p in (net[0].bias, net[1].weight, net[1].bias, net[4].bias))
    assert net[0].bias.abs().sum() == 0 and net[4].bias.abs().sum() == 0
    assert torch.equal(net[1].weight, torch.ones(4)) and net[1].bias.abs().sum() == 0


def test_a_parameter_agd_does_not_cover_is_refused_before_anything_changes():
    net = nn.Sequential(nn.Linear(4, 2), nn.Embedding(10, 4))
    bias = net[0].bias.detach().clone()
    with pytest.raises(ConfigError, match="'1.weight' of Embedding"):
        agd_layers(net)
    assert net[0].bias.requires_grad and torch.equal(net[0].bias, bias)


@pytest.mark.parametrize("fields, name", [({"weight_decay": 1e-4}, "weight_decay"),
                                          ({"optimizer": "adam"}, "optimizer")])
def test_the_policy_names_a_field_it_cannot_honour(fields, name):
    net = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=name):
        POLICIES["agd"](TrainConfig(lr_policy="agd", **fields), net, PolicyContext(None, 1, 2, "cpu", None))


def test_agd_trains_digits_from_the_cli(cli, tmp_path):
    from lipschitz_lab.runs import RunStore
    store = tmp_path / "runs.db"
    code, out, err = cli("train", "--lr-policy", "agd", "--dataset", "digits", "--epochs", "2",
                         "--store", store, "--no-report", "--no-checkpoint")
    assert code == 0, err
    runs = RunStore(store)
    (run,) = runs.list_runs()
    epochs = runs.records(run["id"], "epoch")
    assert run["status"] == "finished" and epochs[-1]["test_acc"] > 0.5       # chance: 0.1
    steps = runs.records(run["id"], "step")
    assert all(0 < r["lr"] < math.log((1 + math.sqrt(1 + 4 * 100)) / 2) for r in steps)   # η, from G
