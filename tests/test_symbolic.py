"""The symbolic engine against independent oracles: torch autograd, sympy.diff, grids."""
import math

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from lipschitz_lab import bounds
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.symbolic import LOSS_SPECS, derive, derive_all
from lipschitz_lab.symbolic.losses import BCE
from lipschitz_lab.symbolic.symbols import K_a, K_z, eps, k, m, y_norm

GEN = torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def float64():
    """Oracles run in float64; the default is restored for the rest of the suite."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _logits(n, k, scale):
    return torch.randn(n, k, generator=GEN) * scale


def _softmax_reduced(logits, labels, p):
    """(z, r, t) coordinates of unit p: r = logsumexp of the other logits."""
    others = torch.cat([logits[:, :p], logits[:, p + 1:]], dim=1)
    return logits[:, p], torch.logsumexp(others, dim=1), (labels == p).double()


# -- generated dE/dz against torch autograd of the real criterion -----------------
@pytest.mark.parametrize("scale", [1.0, 30.0, 800.0])   # random, large, extreme logits
@pytest.mark.parametrize("loss", ["softmax_ce", "label_smoothed_ce"])
def test_softmax_derivatives_match_autograd(loss, scale):
    n, k = 64, 7
    logits = _logits(n, k, scale).requires_grad_()
    labels = torch.randint(0, k, (n,), generator=GEN)
    eps_v = 0.2
    E = make_criterion(loss, eps=eps_v)(logits, labels)
    (grad,) = torch.autograd.grad(E, logits)
    fn, args = bounds.derivative(loss)
    for p in range(k):
        z, r, t = _softmax_reduced(logits.detach(), labels, p)
        kw = {"z": z, "r": r, "t": t, "m": n, "k": k, "eps": eps_v}
        ours = fn(**{a: kw[a] for a in args})
        torch.testing.assert_close(ours, grad[:, p], rtol=1e-10, atol=1e-14)
        assert torch.isfinite(ours).all()


@pytest.mark.parametrize("scale", [1.0, 40.0, 800.0])
def test_bce_derivative_matches_autograd(scale):
    n = 50
    z = (torch.randn(n, generator=GEN) * scale).requires_grad_()
    y = torch.randint(0, 2, (n,), generator=GEN).double()
    # adversarial: the most confident logits get the wrong label
    y[z.detach().abs().argsort()[-10:]] = (z.detach()[z.detach().abs().argsort()[-10:]] < 0).double()
    (grad,) = torch.autograd.grad(make_criterion("bce")(z, y), z)
    fn, _ = bounds.derivative("bce")
    torch.testing.assert_close(fn(z=z.detach(), y=y, m=n), grad, rtol=1e-10, atol=1e-14)


def test_mse_derivative_matches_autograd():
    n = 40
    z = (torch.randn(n, generator=GEN) * 5).requires_grad_()
    y = torch.randn(n, generator=GEN) * 5
    (grad,) = torch.autograd.grad(make_criterion("mse")(z, y), z)
    fn, _ = bounds.derivative("mse")
    torch.testing.assert_close(fn(z=z.detach(), y=y, m=n), grad, rtol=1e-12, atol=0)


# -- the derivative against sympy.diff of the plain exp form ------------------
@pytest.mark.parametrize("name", list(LOSS_SPECS))
def test_derivative_equals_sympy_diff_of_exp_form(name):
    d = derive(name)
    spec = d.spec
    plain = sp.diff(spec.loss.rewrite(sp.exp), spec.wrt)   # independent path: no custom functions
    ours = d.derivative.rewrite(sp.exp)
    rng = np.random.default_rng(1)
    for _ in range(20):
        point = {s: sp.Float(rng.normal() * 3) for s in plain.free_symbols}
        for s in point:
            if str(s) == "t":
                point[s] = int(rng.integers(0, 2))
            if str(s) in ("m", "k"):
                point[s] = int(rng.integers(2, 50))
            if str(s) == "eps":
                point[s] = sp.Float(rng.uniform(0, 1))
        assert abs(float(plain.subs(point)) - float(ours.subs(point))) < 1e-12


# -- suprema: never exceeded on a dense grid, approached arbitrarily closely ----
def _grid_max(name, **params):
    fn, args = bounds.derivative(name)
    if name == "mse":
        zs = torch.linspace(-params["K_a"], params["K_a"], 401)
        ys = torch.linspace(-params["y_norm"], params["y_norm"], 401)
        Z, Y = torch.meshgrid(zs, ys, indexing="ij")
        return fn(z=Z, y=Y, m=params["m"]).abs().max().item()
    zs = torch.cat([torch.linspace(-60, 60, 2001), torch.tensor([-1e4, -700.0, 700.0, 1e4])])
    if name == "bce":
        return max(fn(z=zs, y=y, m=params["m"]).abs().max().item() for y in (0.0, 1.0))
    best = 0.0
    for t in (0.0, 1.0):
        for r in (-1e4, -30.0, 0.0, 30.0, 1e4):
            kw = {"z": zs, "r": torch.full_like(zs, r), "t": t, **params}
            best = max(best, fn(**{a: kw[a] for a in args}).abs().max().item())
    return best


@pytest.mark.parametrize("name,params", [
    ("mse", {"K_a": 2.5, "y_norm": 1.5, "m": 4}),
    ("bce", {"m": 8}),
    ("softmax_ce", {"m": 16, "k": 10}),
    ("label_smoothed_ce", {"m": 2, "k": 5, "eps": 0.3}),
])
def test_supremum_bounds_and_is_approached(name, params):
    sup = bounds.supremum(name, **params)
    grid = _grid_max(name, **params)
    assert grid <= sup * (1 + 1e-12)
    assert grid >= sup * (1 - 1e-9)          # reached at the box corner / extreme logits


def test_suprema_values():
    d = derive_all()
    assert sp.simplify(d["mse"].sup.value - (K_a + y_norm) / m) == 0
    assert sp.simplify(d["bce"].sup.value - 1 / m) == 0
    assert sp.simplify(d["softmax_ce"].sup.value - 1 / m) == 0
    assert sp.simplify(d["label_smoothed_ce"].sup.value - (1 - eps / k) / m) == 0
    assert d["mse"].sup.attained and not d["bce"].sup.attained


# -- verdicts are computed ------------------------------------------------------
@pytest.mark.parametrize("factor", [3, sp.Rational(1, 4)])
def test_scaling_a_loss_scales_its_supremum(factor):
    scaled = derive(BCE.scaled(factor))
    assert sp.simplify(scaled.sup.value - factor / m) == 0
    assert sp.simplify(scaled.corrected_bound - factor * K_z / m) == 0


def test_verdict_flips_when_the_claim_is_true():
    from dataclasses import replace
    honest = derive(replace(BCE, name="bce_honest", paper_bound=K_z / m))
    assert honest.paper_holds is True and honest.witness is None
    loose = derive(replace(BCE, name="bce_loose", paper_bound=3 * K_z / m))
    assert loose.paper_holds is True
    tight_wrong = derive(replace(BCE, name="bce_wrong", paper_bound=K_z * 99 / (100 * m)))
    assert tight_wrong.paper_holds is False
    assert tight_wrong.witness["derivative"] > tight_wrong.witness["paper_value"]


@pytest.mark.parametrize("name", ["mse", "bce", "softmax_ce"])
def test_paper_fails_and_witness_checks_out_with_autograd(name):
    """The witness (found at m = 1) realised in a batch of M copies: autograd's dE/dz there
    beats the paper's value at m = M, and equals the engine's value scaled by 1/M."""
    d = derive(name)
    assert d.paper_holds is False
    w = d.witness
    pt, prm = w["point"], w["params"]
    assert prm["m"] == 1
    M = 4                                              # the batch the witness is realised in
    if name == "softmax_ce":
        kk = prm["k"]
        # realise (z, r, t) as a real k-logit vector: unit 0 has z, the others share r
        row = torch.full((kk,), pt["r"] - math.log(kk - 1))
        row[0] = pt["z"]
        logits = row.repeat(M, 1).requires_grad_()
        label = torch.full((M,), 0 if pt["t"] == 1 else 1)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, label), logits)
        value = g[0, 0].item()
        claim = bounds.lipschitz_bound(name, "paper", K_z=1.0, m=M, k=kk)     # L / K_z
    else:
        z = torch.full((M,), float(pt["z"]), requires_grad=True)
        (g,) = torch.autograd.grad(make_criterion(name)(z, torch.full((M,), float(pt["y"]))), z)
        value = g[0].item()
        extra = {"K_a": prm["K_a"], "y_norm": prm["y_norm"]} if name == "mse" else {}
        claim = bounds.lipschitz_bound(name, "paper", K_z=1.0, m=M, **extra)
        if name == "mse":
            assert abs(pt["z"]) <= prm["K_a"] and abs(pt["y"]) <= prm["y_norm"]
    assert abs(value) > claim
    assert abs(value) * M == pytest.approx(abs(w["derivative"]), rel=1e-12)
    assert abs(value) / claim == pytest.approx(w["ratio"], rel=1e-12)


def test_paper_points_reproduce_the_papers_values():
    assert sp.simplify(derive("bce").paper_point_value - 1 / (2 * m)) == 0
    assert sp.simplify(derive("softmax_ce").paper_point_value - (k - 1) / (k * m)) == 0


def test_weight_decay_term_and_the_papers_cifar10_rate():
    assert sp.simplify(derive("softmax_ce").weight_decay - sp.Symbol("lam", nonnegative=True)
                       * sp.Symbol("w_max", nonnegative=True)) == 0
    L = bounds.lipschitz_bound("softmax_ce", "paper", K_z=206.695, m=128, k=10, lam=1e-3, w_max=43.257)
    assert round(1 / L, 3) == 0.668


def test_strict_bound_holds_for_adversarial_batches():
    """The strict bound vs the true max |dE/dW| of a last layer, with autograd."""
    for trial in range(30):
        n, d_in, kk = 16, 5, 4
        A = torch.randn(n, d_in, generator=GEN) * (trial + 1)
        W = (torch.randn(kk, d_in, generator=GEN) * 3).requires_grad_()
        bias = torch.zeros(kk, requires_grad=True)
        logits = A @ W.T + bias
        labels = logits.detach().argmin(dim=1)       # the worst labels
        E = F.cross_entropy(logits, labels)
        gW, gb = torch.autograd.grad(E, (W, bias))
        grad_max = max(gW.abs().max().item(), gb.abs().max().item())
        for kz, K in (("max_abs", A.abs().max().item()), ("frobenius", A.norm().item())):
            L = bounds.lipschitz_bound("softmax_ce", "strict", K_z=K, m=n, k=kk, kz=kz)
            assert grad_max <= L


def test_a_users_loss_gets_the_same_treatment():
    """A loss of one's own, derived and generated at run time (losses.register)."""
    from lipschitz_lab import losses
    from lipschitz_lab.symbolic import LossSpec, finite, real_line
    from lipschitz_lab.symbolic.symbols import y, z
    spec = LossSpec(name="logistic_pm1", title="logistic", loss=sp.log(1 + sp.exp(-y * z)) / m,
                    wrt=z, variables=(real_line(z), finite(y, (-1, 1))))
    try:
        assert losses.register(spec) == "logistic_pm1"
        assert bounds.lipschitz_bound("logistic_pm1", "corrected", K_z=3.0, m=32) == 3 / 32
        fn, _ = bounds.derivative("logistic_pm1")
        zt = torch.linspace(-30, 30, 101, requires_grad=True)
        yt = torch.where(torch.arange(101) % 2 == 0, 1.0, -1.0)
        (g,) = torch.autograd.grad(F.softplus(-yt * zt).mean(), zt)
        torch.testing.assert_close(fn(z=zt.detach(), y=yt, m=101), g)
    finally:
        losses.unregister("logistic_pm1")
    assert "logistic_pm1" not in bounds.loss_names()


@pytest.mark.parametrize("name", ["softmax_ce", "label_smoothed_ce"])
def test_the_softmax_supremum_holds_for_any_target_distribution(name):
    """Soft targets (issue 21): sup over t in [0, 1] equals sup over t in {0, 1}, by the engine; and
    autograd on random logits and random probability targets never exceeds it."""
    import torch
    import torch.nn.functional as F
    from lipschitz_lab.symbolic import derive_spec
    from lipschitz_lab.symbolic.losses import LABEL_SMOOTHED_CE, SOFTMAX_CE
    from lipschitz_lab.symbolic.soft_targets import soft_target_supremum
    from lipschitz_lab.symbolic.symbols import eps, k, m
    spec = {"softmax_ce": SOFTMAX_CE, "label_smoothed_ce": LABEL_SMOOTHED_CE}[name]
    soft = soft_target_supremum(spec).value
    assert sp.simplify(soft - derive_spec(spec).sup.value) == 0
    bound = float(soft.subs({m: 1, k: 7, eps: 0.1}))
    g = torch.Generator().manual_seed(0)
    z = (20 * torch.randn(4000, 7, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.softmax(5 * torch.randn(4000, 7, generator=g, dtype=torch.float64), dim=1)
    smoothing = 0.1 if name == "label_smoothed_ce" else 0.0
    F.cross_entropy(z, target, label_smoothing=smoothing, reduction="sum").backward()
    worst = z.grad.abs().max().item()
    assert worst <= bound * (1 + 1e-12) and worst > 0.9 * bound        # attained in the limit


def test_soft_targets_need_a_target_indicator():
    from lipschitz_lab.symbolic.losses import MSE
    from lipschitz_lab.symbolic.soft_targets import soft_variables
    with pytest.raises(ValueError, match="no target indicator"):
        soft_variables(MSE)
