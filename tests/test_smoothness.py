"""The smoothness bound measured live (issue 12, item 2): β = S₂·σ_max([A, 1])² bounds the
top eigenvalue of the last layer's loss Hessian on every step, and lr = c/β is a safe step.

Oracles: the Hessian's top eigenvalue by Hessian-vector-product power iteration with
autograd (float64), σ_max by torch.linalg.matrix_norm(ord=2), and the descent lemma checked
by evaluating the loss after the step."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

from lipschitz_lab import LipschitzLR
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.scheduler import SmoothOptions
from train_helpers import batches, dataset, mlp

CASES = [("digits", "softmax_ce", 10), ("breast_cancer", "bce", 1), ("diabetes", "mse", 1)]


def last_layer_loss(A, y, loss):
    """E(W, b) for the batch's penultimate activations A, as a function of the last layer alone."""
    crit = make_criterion(loss)
    return lambda W, b: crit(A @ W.T + b, y)


def hessian_top_eigenvalue(A, y, W, b, loss, v=None, iters=25):
    """λ_max of ∂²E/∂(W, b)² by power iteration on Hessian-vector products (float64 autograd),
    warm-started from ``v``; returns (λ, v)."""
    f = last_layer_loss(A.double(), y if loss == "softmax_ce" else y.double(), loss)
    W, b = W.detach().double(), b.detach().double()
    v = (torch.ones_like(W), torch.ones_like(b)) if v is None else v
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum((t * t).sum().item() for t in v))
        v = tuple(t / norm for t in v)
        _, hv = torch.autograd.functional.hvp(f, (W, b), v)
        lam = sum((h * t).sum().item() for h, t in zip(hv, v))      # Rayleigh quotient (H is PSD)
        v = hv
    return lam, v


def dense_hessian_top_eigenvalue(A, y, W, b, loss) -> float:
    """λ_max of ∂²E/∂(W, b)², the dense Hessian by autograd in float64, by eigvalsh: exact to rounding."""
    f = last_layer_loss(A.double(), y if loss == "softmax_ce" else y.double(), loss)
    W, b = W.detach().double(), b.detach().double()
    shapes = (W.shape, b.shape)

    def flat(theta):
        return f(theta[:W.numel()].reshape(shapes[0]), theta[W.numel():].reshape(shapes[1]))
    H = torch.autograd.functional.hessian(flat, torch.cat([W.reshape(-1), b.reshape(-1)]), vectorize=True)
    return torch.linalg.eigvalsh((H + H.T) / 2)[-1].item()


#: how close β comes to the dense λ_max somewhere along the run (non-vacuity), per loss: ½·MSE's
#: Hessian is (1/m)·[A, 1]ᵀ[A, 1] exactly, so β is tight up to the power iteration's σ_max; BCE's
#: S₂ = 1/(4m) is met at p = ½ (the first steps); softmax's 1/(2m) is Gershgorin's, ~5x loose at init
TIGHT = {"mse": 0.95, "bce": 0.5, "softmax_ce": 0.1}


@pytest.mark.parametrize("name,loss,k", CASES)
def test_the_hessians_top_eigenvalue_never_exceeds_beta(name, loss, k):
    X, y = dataset(name)
    model = mlp(X.shape[1], k)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, loss, num_classes=k if k > 1 else None, bound="smooth", recompute="step",
                        max_lr=10.0)
    crit = sched.wrap_loss(make_criterion(loss))
    ratios = []
    for x_, y_ in [b for e in range(3) for b in batches(X, y, 32, seed=e)][:30]:
        with torch.no_grad():
            A = model[:-1](x_)
            B = torch.cat([A, torch.ones(len(A), 1)], dim=1).double()
            sigma = torch.linalg.matrix_norm(B, ord=2).item()
        lam = dense_hessian_top_eigenvalue(A, y_, model[-1].weight, model[-1].bias, loss)
        crit(model(x_), y_).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        rec = sched.last_record
        assert lam <= rec["beta"] * (1 + 1e-9), (rec["step"], lam, rec["beta"])
        if loss == "mse":                       # the theory's equality: λ_max = σ_max([A, 1])²/m
            assert lam == pytest.approx(sigma * sigma / len(x_), rel=1e-9)
        ratios.append(lam / rec["beta"])
    assert max(ratios) > TIGHT[loss], max(ratios)


def test_the_hessian_check_can_fail():
    """A β that is too small (the Rayleigh-quotient σ_max the bound used to undershoot with) is caught."""
    X, y = dataset("diabetes")
    model = mlp(X.shape[1], 1)
    x_, y_ = batches(X, y, 32, seed=0)[0]
    with torch.no_grad():
        A = model[:-1](x_)
        B = torch.cat([A, torch.ones(len(A), 1)], dim=1).double()
    lam = dense_hessian_top_eigenvalue(A, y_, model[-1].weight, model[-1].bias, "mse")
    sigma_low = torch.linalg.matrix_norm(B, ord=2).item() * (1 - 1e-4)
    assert lam > sigma_low ** 2 / len(x_) * (1 + 1e-9)


@pytest.mark.parametrize("name,loss,k", CASES)
def test_sigma_max_tracks_the_spectral_norm_and_frobenius_bounds_it(name, loss, k):
    X, y = dataset(name)
    gaps = []
    for method in ("power", "frobenius"):
        model = mlp(X.shape[1], k)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = LipschitzLR(opt, model, loss, num_classes=k if k > 1 else None, bound="smooth",
                            recompute="step", smooth=SmoothOptions(sigma=method))
        crit = sched.wrap_loss(make_criterion(loss))
        for t, (x_, y_) in enumerate(batches(X, y, 32, seed=0)[:12]):
            with torch.no_grad():
                A = model[:-1](x_)
                B = torch.cat([A, torch.ones(len(A), 1)], dim=1).double()
                sigma = torch.linalg.matrix_norm(B, ord=2).item()
            crit(model(x_), y_).backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            got = sched.last_record["sigma_max"]
            assert got >= sigma * (1 - 1e-9)              # both are upper bounds, on every step
            if method == "power":                         # ... and the power one is close
                assert got <= sigma * 1.05
                gaps.append(got / sigma - 1)
    assert statistics.median(gaps) < 1e-2                 # 4 warm-started steps a batch


@pytest.mark.parametrize("momentum,c", [(0.0, 1.0), (0.0, 2.0), (0.9, 1.0)])
def test_the_smooth_rate_is_c_over_beta_with_the_heavy_ball_limit(momentum, c):
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="smooth", recompute="step",
                        smooth=SmoothOptions(c=c), variant_optimizer="momentum" if momentum else "sgd",
                        max_lr=100.0)
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    for x_, y_ in batches(X, y, 64, seed=0)[:6]:
        crit(model(x_), y_).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        rec = sched.last_record
        # 2(1+μ)/β scaled by c/2; S₂ = 1/(2m) for softmax-CE, typed here
        beta = rec["sigma_max"] ** 2 / (2 * rec["m"])
        assert rec["beta"] == pytest.approx(beta, rel=1e-12)
        if rec["step"] >= 1:
            assert rec["lr_next"] == pytest.approx(c * (1 + momentum) / beta, rel=1e-9)
        assert rec["lr_smooth"] == pytest.approx(c * (1 + momentum) / beta, rel=1e-9)


@pytest.mark.parametrize("name,loss,k", CASES)
def test_a_step_of_one_over_beta_on_the_last_layer_never_increases_the_loss(name, loss, k):
    """The descent lemma: E(W - ∇E/β) <= E(W) - |∇E|²/(2β) for a β-smooth E."""
    X, y = dataset(name)
    model = mlp(X.shape[1], k)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, loss, num_classes=k if k > 1 else None, bound="smooth", recompute="step",
                        measure_beta=True)
    crit = sched.wrap_loss(make_criterion(loss))
    for x_, y_ in batches(X, y, 32, seed=3)[:20]:
        crit(model(x_), y_).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        beta = sched.last_record["beta"]
        with torch.no_grad():
            A = model[:-1](x_).double()
        f = last_layer_loss(A, y_ if loss == "softmax_ce" else y_.double(), loss)
        W = model[-1].weight.detach().double().requires_grad_()
        b = model[-1].bias.detach().double().requires_grad_()
        E = f(W, b)
        gW, gb = torch.autograd.grad(E, (W, b))
        with torch.no_grad():
            after = f(W - gW / beta, b - gb / beta).item()
        g2 = (gW * gW).sum().item() + (gb * gb).sum().item()
        assert after <= E.item() - g2 / (2 * beta) + 1e-12


# -- the layer-wise rule (scheduler/layerwise.py) ------------------------------------------
def _block_top_eigenvalue(model, x, y, loss, layer, iters=40):
    """λ_max of the Hessian of E in one Linear layer's (W, b), the rest fixed (HVP power iteration)."""
    from torch.func import functional_call
    names = [f"{layer}.weight", f"{layer}.bias"]
    fixed = {n: p.detach().double() for n, p in model.named_parameters()}
    crit = make_criterion(loss)
    model64 = model.double()

    def f(W, b):
        return crit(functional_call(model64, {**fixed, names[0]: W, names[1]: b}, (x.double(),)),
                    y if loss == "softmax_ce" else y.double())
    v = (torch.ones_like(fixed[names[0]]), torch.ones_like(fixed[names[1]]))
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum((t * t).sum().item() for t in v))
        v = tuple(t / norm for t in v)
        _, hv = torch.autograd.functional.hvp(f, (fixed[names[0]], fixed[names[1]]), v)
        lam = sum((h * t).sum().item() for h, t in zip(hv, v))
        v = hv
    model.float()
    return lam


@pytest.mark.slow
def test_each_layers_beta_bounds_the_hessian_block_of_that_layer():
    X, y = dataset("digits")
    torch.manual_seed(0)
    def net():
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    model, oracle = net(), net()       # the oracle's forwards must not reach the probe's hooks
    opt = torch.optim.SGD([{"params": m.parameters()} for m in model if isinstance(m, nn.Linear)], lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="smooth", recompute="step",
                        smooth=SmoothOptions(layerwise=True))
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    worst = {}
    for x_, y_ in batches(X, y, 64, seed=0)[:15]:
        oracle.load_state_dict(model.state_dict())
        lams = {name: _block_top_eigenvalue(oracle, x_, y_, "softmax_ce", name) for name in ("0", "2", "4")}
        crit(model(x_), y_).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        betas = sched.last_record["beta_layers"]
        for name, lam in lams.items():
            assert lam <= betas[name] * (1 + 1e-6), (name, lam, betas[name])
            worst[name] = max(worst.get(name, 0.0), lam / betas[name])
    assert min(worst.values()) > 1e-4                      # not vacuous
    rates = [float(g["lr"]) for g in opt.param_groups]    # one rate per layer, c/β_ℓ
    assert len(set(rates)) == 3


def test_the_layerwise_rule_refuses_what_it_does_not_cover():
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    opt = torch.optim.SGD(cnn.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"layer '0' is Conv2d"):
        LipschitzLR(opt, cnn, "softmax_ce", num_classes=3, bound="smooth", recompute="step",
                    smooth=SmoothOptions(layerwise=True))
    model = mlp(6, 3)
    with pytest.raises(ValueError, match="one param group per Linear layer"):
        LipschitzLR(torch.optim.SGD(model.parameters(), lr=0.1), model, "softmax_ce", num_classes=3,
                    bound="smooth", recompute="step", smooth=SmoothOptions(layerwise=True))
    with pytest.raises(ValueError, match="renewed every step"):
        LipschitzLR(torch.optim.SGD(model.parameters(), lr=0.1), model, "softmax_ce", num_classes=3,
                    bound="strict", smooth=SmoothOptions(layerwise=True))
