"""S₂ (the smoothness supremum) and the paper-rate witness, against autograd in float64.

The expected S₂ values are typed here only as oracles; the engine computes them.
"""
import json

import pytest
import sympy as sp
import torch
from torch.autograd.functional import hessian

from lipschitz_lab import bounds
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.symbolic import BUILTIN_NAMES, derive, derive_builtin
from lipschitz_lab.symbolic.domain import finite, real_line
from lipschitz_lab.symbolic.functions import sigmoid
from lipschitz_lab.symbolic.supremum import supremum_abs
from lipschitz_lab.symbolic.symbols import m, r, t, z

GEN = torch.Generator().manual_seed(12)
EXPECTED = {"mse": 1 / m, "bce": 1 / (4 * m), "softmax_ce": 1 / (2 * m), "label_smoothed_ce": 1 / (2 * m)}
SOFTMAX = ("softmax_ce", "label_smoothed_ce")


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_engine_derives_S2(name):
    sm = derive(name).smoothness
    assert sp.simplify(sm.value - EXPECTED[name]) == 0
    assert sm.tight
    for mm in (1, 7, 128):
        assert bounds.smoothness_bound(name, m=mm, k=10, eps=0.1) == pytest.approx(
            float(EXPECTED[name].subs(m, mm)), rel=1e-15)


def test_derive_json_has_smoothness_bound_for_every_loss(cli):
    code, out, _ = cli("derive", "--json")
    assert code == 0
    data = json.loads(out)
    for name in BUILTIN_NAMES:
        assert sp.simplify(sp.sympify(data[name]["smoothness_bound"], locals={"m": m}) - EXPECTED[name]) == 0
        assert data[name]["smoothness"]["method"]
    assert data["softmax_ce"]["paper_rate_witness"]["steps"]["frobenius"]["loss_after"] > \
        data["softmax_ce"]["paper_rate_witness"]["loss_before"]


def test_a_family_of_critical_points_is_not_skipped():
    """σ(z - r)(1 - σ(z - r)) is critical along z = r; its sup 1/4 lies on that family."""
    f = sigmoid(z - r) * (1 - sigmoid(z - r)) / m
    sup = supremum_abs(f, [real_line(z), real_line(r), finite(t, (0, 1))])
    assert sp.simplify(sup.value - 1 / (4 * m)) == 0 and sup.attained


def _batch_hessian_norm(name, logits, labels, eps=0.2):
    crit = make_criterion(name, eps=eps)
    H = hessian(lambda Z: crit(Z, labels), logits, vectorize=True)
    n = logits.numel()
    return torch.linalg.eigvalsh(H.reshape(n, n)).abs().max().item()


@pytest.mark.parametrize("scale", [1.0, 4.0, 30.0, 800.0])    # random, large, extreme logits
@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("name", SOFTMAX)
def test_softmax_hessian_never_exceeds_S2(name, k, scale):
    mm = 3
    S2 = bounds.smoothness_bound(name, m=mm, k=k, eps=0.2)
    for _ in range(5):
        logits = torch.randn(mm, k, generator=GEN) * scale
        labels = torch.randint(0, k, (mm,), generator=GEN)
        assert _batch_hessian_norm(name, logits, labels) <= S2 * (1 + 1e-12)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("name", SOFTMAX)
def test_softmax_S2_is_approached(name, k):
    """Two equal logits, the rest far below: autograd's Hessian norm tends to S₂."""
    mm = 2
    S2 = bounds.smoothness_bound(name, m=mm, k=k, eps=0.2)
    norms = []
    for far in (5.0, 10.0, 40.0):
        logits = torch.full((mm, k), -far)
        logits[:, :2] = 0.0
        norms.append(_batch_hessian_norm(name, logits, torch.zeros(mm, dtype=torch.long)))
    assert norms == sorted(norms) and norms[-1] == pytest.approx(S2, rel=1e-12)


@pytest.mark.parametrize("name", SOFTMAX)
def test_softmax_witness_logits_check_out_with_autograd(name):
    wit = derive(name).smoothness.witness
    for step in wit["approach"]:
        logits = torch.tensor([step["logits"]], dtype=torch.float64)
        label = torch.tensor([wit["label"]])
        eps = wit["params"].get("eps", 0.1)
        assert _batch_hessian_norm(name, logits, label, eps=eps) == pytest.approx(step["spectral_norm"], rel=1e-9)
    assert wit["approach"][-1]["spectral_norm"] == pytest.approx(wit["S2"], rel=1e-12)


@pytest.mark.parametrize("name", ["mse", "bce"])
def test_elementwise_second_derivative_grid(name):
    """d²E/dz² by autograd on a grid (large and extreme z included): <= S₂, reached."""
    zs = torch.cat([torch.linspace(-40, 40, 401), torch.tensor([-800.0, 800.0, 1e-9])])
    mm = zs.numel()
    S2 = bounds.smoothness_bound(name, m=mm)
    best = 0.0
    for label in (0.0, 1.0):
        y = torch.full((mm,), label)
        H = hessian(lambda Z: make_criterion(name)(Z, y), zs, vectorize=True)
        off = H - torch.diag(torch.diagonal(H))
        assert off.abs().max().item() == 0.0          # one output per sample: diagonal
        best = max(best, torch.diagonal(H).abs().max().item())
    assert best <= S2 * (1 + 1e-12)
    assert best == pytest.approx(S2, rel=1e-12)


def _realise(name, wit):
    A = torch.tensor(wit["A"], dtype=torch.float64)
    W = torch.tensor(wit["W"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(wit["b"], dtype=torch.float64, requires_grad=True)
    if "labels" in wit:
        target = torch.tensor(wit["labels"])
    else:
        target = torch.tensor(wit["targets"], dtype=torch.float64)
    return A, W, b, target


@pytest.mark.parametrize("name", ["mse", "bce", "softmax_ce"])
def test_one_step_at_the_papers_rate_raises_the_loss(name):
    """The engine's batch, redone in torch: autograd gradient, one step at 1/L_paper, loss up."""
    wit = derive(name).paper_rate_witness
    assert wit is not None
    A, W, b, target = _realise(name, wit)
    crit = make_criterion(name)
    Z = A @ W.T + b
    before = crit(Z, target)
    gW, gb = torch.autograd.grad(before, (W, b))
    mm = A.shape[0]
    stats = {"k": wit["params"]["k"]} if name == "softmax_ce" else {}
    if name == "mse":       # K_a = ‖z‖₂ and y_norm = ‖y‖₂ of the batch, as the scheduler measures
        stats.update(K_a=Z.detach().norm().item(), y_norm=target.norm().item())
    assert before.item() == pytest.approx(wit["loss_before"], rel=1e-12)
    for kz, K_z in (("frobenius", A.norm().item()), ("max_abs", A.abs().max().item())):
        L = bounds.lipschitz_bound(name, "paper", K_z=K_z, m=mm, **stats)
        with torch.no_grad():
            after = crit(A @ (W - gW / L).T + (b - gb / L), target).item()
        assert after > before.item()
        assert after == pytest.approx(wit["steps"][kz]["loss_after"], rel=1e-9)
        assert 1 / L == pytest.approx(wit["steps"][kz]["lr"], rel=1e-12)


def test_no_paper_rate_no_witness():
    assert derive("label_smoothed_ce").paper_rate_witness is None
    assert all(derive_builtin()[n].paper_rate_witness for n in ("mse", "bce", "softmax_ce"))
