"""The probe against independent oracles: a separate forward that captures the
penultimate activation, and torch.autograd.grad for the gradient maxima."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipschitz_lab.losses import make_criterion
from lipschitz_lab.probe import DivergenceError, Probe, find_last_linear


def mlp(d=6, h=16, out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, out))


def small_cnn():
    # the Table-1 shape in miniature: conv, flatten, Dense, BatchNorm, Dropout, Dense
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 12), nn.BatchNorm1d(12), nn.Dropout(0.25), nn.Linear(12, 5))


def oracle(model, x, y, loss, seed):
    """K_z, K_a, m and per-module gradient maxima by a separate computation."""
    torch.manual_seed(seed)                      # same dropout mask as the probed forward
    A = model[:-1](x)
    out = model[-1](A)
    E = make_criterion(loss)(out, y)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(E, list(model.parameters()))
    per_module: dict[str, float] = {}
    for n, g in zip(names, grads):
        mod = n.rsplit(".", 1)[0]
        per_module[mod] = max(per_module.get(mod, 0.0), g.abs().max().item())
    return {"K_z_frobenius": torch.linalg.norm(A.reshape(A.shape[0], -1)).item(),
            "K_z_max_abs": A.abs().max().item(), "K_a": out.norm().item(), "m": A.shape[0],
            "grad_layers": per_module,
            "w_max": max(p.norm().item() for p in model.parameters())}


def probed(model, x, y, loss, seed):
    with Probe(model) as probe:
        torch.manual_seed(seed)
        out = model(x)
        make_criterion(loss)(out, y).backward()
        stats = probe.read()
    model.zero_grad(set_to_none=True)
    return probe, stats


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_statistics_equal_a_direct_computation(kind, device):
    if kind == "mlp":
        model, x, y, last = mlp(), torch.randn(20, 6), torch.randint(0, 3, (20,)), "2"
    else:
        model, x, y, last = small_cnn(), torch.rand(24, 1, 8, 8), torch.randint(0, 5, (24,)), "7"
    model, x, y = model.to(device).train(), x.to(device), y.to(device)
    want = oracle(model, x, y, "softmax_ce", seed=5)
    probe, got = probed(model, x, y, "softmax_ce", seed=5)
    assert probe.layer_name == last
    assert got["m"] == want["m"]
    for key in ("K_z_frobenius", "K_z_max_abs", "K_a", "w_max"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert got["grad_layers"].keys() == want["grad_layers"].keys()
    for name, g in want["grad_layers"].items():
        assert got["grad_layers"][name] == pytest.approx(g, rel=1e-5), name
    assert got["grad_last"] == pytest.approx(want["grad_layers"][last], rel=1e-5)


def test_targets_give_y_norm():
    model = mlp(out=1)
    x, y = torch.randn(10, 6), torch.randn(10)
    with Probe(model) as probe:
        out = model(x)
        probe.observe_targets(y)
        make_criterion("mse")(out, y).backward()
        stats = probe.read()
    assert stats["y_norm"] == pytest.approx(y.norm().item(), rel=1e-6)
    assert stats["K_a"] == pytest.approx(out.detach().norm().item(), rel=1e-6)


def test_layer_by_name_and_bad_names():
    model = mlp()
    assert find_last_linear(model)[0] == "2"
    assert find_last_linear(model, "0")[0] == "0"
    x = torch.randn(7, 6)
    with Probe(model, layer="0") as probe:    # K_z is then the input itself
        model(x).sum().backward()
        stats = probe.read()
    assert stats["K_z_frobenius"] == pytest.approx(x.norm().item(), rel=1e-6)
    assert stats["grad_last"] == pytest.approx(model[0].weight.grad.abs().max().item(), rel=1e-6)
    with pytest.raises(ValueError, match="layer='fc9'"):
        Probe(model, layer="fc9")
    with pytest.raises(ValueError, match="no nn.Linear"):
        Probe(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_union_of_two_forwards_before_one_read():
    # gradient accumulation: two micro-batches measure as their union batch
    model = mlp()
    x1, x2 = torch.randn(5, 6), torch.randn(9, 6)
    with Probe(model) as probe:
        model(x1).sum().backward()
        model(x2).sum().backward()
        stats = probe.read()
    A = torch.relu(model[0](torch.cat([x1, x2])))
    assert stats["m"] == 14
    assert stats["K_z_frobenius"] == pytest.approx(A.norm().item(), rel=1e-5)
    assert stats["K_z_max_abs"] == pytest.approx(A.abs().max().item(), rel=1e-6)


def test_epoch_running_max_and_reset():
    model = mlp()
    probe = Probe(model)
    seen = []
    for scale in (1.0, 3.0, 2.0):
        model(scale * torch.ones(4, 6)).sum().backward()
        seen.append(probe.read())
        model.zero_grad()
    assert probe.epoch_max["K_z_frobenius"] == max(s["K_z_frobenius"] for s in seen)
    assert probe.epoch_max["K_z_max_abs"] == max(s["K_z_max_abs"] for s in seen)
    done = probe.reset_epoch()
    assert done["m"] == 4 and probe.epoch_max == {}
    probe.detach()


def test_keeps_only_scalars_and_skips_validation_forwards():
    model = mlp()
    probe = Probe(model)
    model(torch.randn(50, 6)).sum().backward()
    held = [v for v in vars(probe.sums).values() if isinstance(v, torch.Tensor)]   # the step's sums
    assert held and all(t.dim() == 0 and not t.requires_grad for t in held)
    probe.read()
    with torch.no_grad():
        model(torch.randn(50, 6))              # a validation forward: not measured
    assert probe.read() is None
    probe.detach()


def test_detach_removes_the_hook():
    model = mlp()
    with Probe(model) as probe:
        assert len(model[2]._forward_hooks) == 1
    assert len(model[2]._forward_hooks) == 0
    model(torch.randn(3, 6)).sum().backward()
    assert probe.read() is None


class Poison(nn.Module):
    """Puts NaN into the activations on a chosen call."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        return x * float("nan") if self.calls == self.at else x


def test_nan_activations_raise_naming_step_and_quantity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Poison(at=2), nn.Linear(8, 2))
    probe = Probe(model)
    for step in (36, 37):
        model(torch.randn(3, 4)).sum().backward()
        if step == 36:
            probe.read(step=step)
    with pytest.raises(DivergenceError, match=r"step 37: K_z is nan \(activations of layer '3'\)"):
        probe.read(step=37)
    assert issubclass(DivergenceError, FloatingPointError)


def test_inf_gradient_raises_naming_the_parameter():
    model = mlp()
    probe = Probe(model)
    model(torch.randn(3, 6)).sum().backward()
    model[2].weight.grad[0, 0] = math.inf
    with pytest.raises(DivergenceError, match=r"step 5: gradient of '2.weight' is inf"):
        probe.read(step=5)


def test_measure_is_an_eval_pass_with_the_max_over_batches():
    model = small_cnn()
    model.train()
    xs = [torch.rand(16, 1, 8, 8) for _ in range(3)] + [torch.rand(5, 1, 8, 8)]
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in xs]
    probe = Probe(model)
    model(xs[0]).sum().backward()             # a training step in flight is left alone
    got = probe.measure(loader)
    assert model.training
    model.eval()
    with torch.no_grad():
        A = [model[:-1](x) for x in xs]
    assert got["K_z_frobenius"] == pytest.approx(max(a.norm().item() for a in A), rel=1e-5)
    assert got["K_z_max_abs"] == pytest.approx(max(a.abs().max().item() for a in A), rel=1e-6)
    assert got["m"] == 16 and got["batches"] == 4 and got["y_norm"] is None
    model.train()
    assert probe.read()["m"] == 16
