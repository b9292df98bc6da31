"""The loss registry: criteria equal the spec's own expression, grad_logits equals autograd,
and a loss registered once is known everywhere."""
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from lipschitz_lab import bounds, losses
from lipschitz_lab.bounds import LOSSES as LOSSES_IMPORTED_EARLY   # as the scheduler imports it
from lipschitz_lab.symbolic import BUILTIN_NAMES, LossSpec, finite, real_line
from lipschitz_lab.symbolic.losses import SOFTMAX_CE
from lipschitz_lab.symbolic.symbols import m, y, z

GEN = torch.Generator().manual_seed(3)
SCALES = [1.0, 30.0, 800.0]          # random, large, extreme outputs


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _batch(name, n, scale, k=5):
    """Outputs and targets; the most confident outputs get the wrong label (the hard case)."""
    if losses.task_of(name) == "multiclass":
        out = torch.randn(n, k, generator=GEN) * scale
        return out, out.argmin(dim=1).where(torch.arange(n) % 2 == 0, torch.randint(0, k, (n,), generator=GEN))
    out = torch.randn(n, 1, generator=GEN) * scale
    if losses.task_of(name) == "binary":
        return out, (out[:, 0] < 0).double()
    return out, torch.randn(n, generator=GEN) * scale


def _autograd(criterion, out, target):
    out = out.clone().requires_grad_()
    (g,) = torch.autograd.grad(criterion(out, target), out)
    return g


@pytest.fixture
def logistic():
    """The README's loss, registered for one test and forgotten after it."""
    name = losses.register(LossSpec(
        name="logistic", title="Logistic loss, y in {-1, 1}",
        loss=sp.log(1 + sp.exp(-y * z)) / m, wrt=z,
        variables=(real_line(z, "logit"), finite(y, (-1, 1), "label"))))
    yield name
    losses.unregister(name)


# -- the built-ins: torch's fused criteria equal the generated batch loss -----------------
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_criterion_equals_the_specs_expression(name, scale):
    out, target = _batch(name, 64, scale)
    ours = losses.generated_criterion(name, eps=0.2)(out, target)
    torch_ = losses.make_criterion(name, eps=0.2)(out, target)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, torch_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_grad_logits_equals_autograd(name, scale):
    out, target = _batch(name, 48, scale)
    expected = _autograd(losses.make_criterion(name, eps=0.2), out, target)
    with torch.no_grad():
        ours = losses.grad_logits(name, out, target, eps=0.2)
    assert ours.shape == out.shape and ours.dtype == out.dtype
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-15)
    # a union batch of 4x the rows: the same gradient scaled by 48 / 192
    torch.testing.assert_close(losses.grad_logits(name, out, target, m=192, eps=0.2), expected / 4,
                               rtol=1e-10, atol=1e-15)


def test_mse_is_half_of_torchs():
    """The derived E is ½·MSE: nn.MSELoss() has twice its gradient, reduction="sum" m times that."""
    out, target = _batch("mse", 10, 3.0)
    g = losses.grad_logits("mse", out, target)
    torch.testing.assert_close(_autograd(lambda o, t: F.mse_loss(o[:, 0], t), out, target), 2 * g)
    torch.testing.assert_close(_autograd(lambda o, t: F.mse_loss(o[:, 0], t, reduction="sum"), out, target),
                               2 * 10 * g)


def test_logsumexp_of_the_others_is_exact():
    Z = torch.tensor([[800.0, 800.0, -800.0], [0.0, 1e-300, -30.0], [5.0, -5.0, 700.0], [1.0, 1.0, 1.0]])
    r = losses._logsumexp_others(Z)
    for p in range(3):
        brute = torch.logsumexp(torch.cat([Z[:, :p], Z[:, p + 1:]], dim=1), dim=1)
        torch.testing.assert_close(r[:, p], brute, rtol=1e-15, atol=1e-15)   # absolute: r enters via z - r


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grad_logits_stays_on_the_device_without_syncing(dtype):
    """Meta tensors hold no data: any host read (.item(), a Python branch on a value) would fail."""
    for name in BUILTIN_NAMES:
        k = 4 if losses.task_of(name) == "multiclass" else 1
        out = torch.zeros(3, k, device="meta", dtype=dtype)
        target = torch.zeros(3, device="meta", dtype=torch.long if k > 1 else dtype)
        g = losses.grad_logits(name, out, target)
        assert g.device.type == "meta" and g.dtype == dtype and g.shape == out.shape


def test_builtins_are_listed_and_have_their_tasks():
    assert losses.loss_names()[:4] == BUILTIN_NAMES
    assert [losses.task_of(n) for n in BUILTIN_NAMES] == ["regression", "binary", "multiclass", "multiclass"]


# -- a loss registered once is usable everywhere -----------------------------------------------
def test_a_registered_loss_is_known_everywhere(logistic):
    assert losses.loss_names()[-1] == "logistic" and "logistic" in losses.LOSSES
    assert "logistic" in LOSSES_IMPORTED_EARLY and losses.TASKS["logistic"] == "binary"
    assert losses.task_of("logistic") == "binary"
    assert bounds.lipschitz_bound("logistic", "corrected", K_z=3.0, m=32) == pytest.approx(3 / 32)
    # S₂ vs autograd's second derivative on a grid: never above, reached at z = 0
    zs = torch.linspace(-30, 30, 601)
    zr = zs.detach().clone().requires_grad_()
    (d1,) = torch.autograd.grad(F.softplus(-zr).sum(), zr, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), zr)
    S2 = bounds.smoothness_bound("logistic", m=1)
    assert d2.max().item() <= S2 * (1 + 1e-12) and d2.max().item() == pytest.approx(S2, rel=1e-12)


@pytest.mark.parametrize("scale", SCALES)
def test_a_registered_losss_criterion_and_gradient(logistic, scale):
    out, target = _batch("logistic", 40, scale)
    crit = losses.make_criterion("logistic")
    # the data set's 0/1 are the spec's -1/1; an independent oracle typed from the definition
    torch.testing.assert_close(crit(out, target), F.softplus(-(2 * target - 1) * out[:, 0]).mean(),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses.grad_logits("logistic", out, target), _autograd(crit, out, target),
                               rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(crit(out, 2 * target - 1), crit(out, target))   # labels given as -1/1


def test_a_registered_softmax_loss(tmp_path):
    """A softmax spec of one's own: its generated criterion and gradient, and its task, inferred."""
    name = losses.register(SOFTMAX_CE.scaled(2))
    try:
        assert losses.task_of(name) == "multiclass"
        out, target = _batch("softmax_ce", 32, 30.0)
        crit = losses.make_criterion(name)
        torch.testing.assert_close(crit(out, target), 2 * F.cross_entropy(out, target), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(losses.grad_logits(name, out, target), _autograd(crit, out, target),
                                   rtol=1e-10, atol=1e-15)
        assert bounds.smoothness_bound(name, m=4) == pytest.approx(2 / (2 * 4))
    finally:
        losses.unregister(name)


def test_register_rejects_what_it_cannot_use():
    with pytest.raises(ValueError, match="name='bce'"):
        losses.register(LossSpec(name="bce", title="x", loss=z ** 2 / m, wrt=z, variables=(real_line(z),)))
    no_target = LossSpec(name="no_target", title="x", loss=z ** 2 / m, wrt=z, variables=(real_line(z),))
    with pytest.raises(ValueError, match="task"):
        losses.register(no_target)
    with pytest.raises(ValueError, match="task='ranking'"):
        losses.register(no_target, task="ranking")
    with pytest.raises(ValueError, match="task='multiclass'"):
        losses.register(no_target, task="multiclass")
    with pytest.raises(ValueError, match="spec"):
        losses.register("logistic")
    with pytest.raises(ValueError, match="loss='nope'"):
        losses.make_criterion("nope")
    assert "no_target" not in losses.loss_names()


# -- loading a file of losses --------------------------------------------------------------
LOSS_FILE = '''
import sympy as sp
from lipschitz_lab.symbolic import LossSpec, finite, real_line
from lipschitz_lab.symbolic.symbols import m, y, z

logistic = LossSpec(name="logistic", title="Logistic loss, y in {-1, 1}",
                    loss=sp.log(1 + sp.exp(-y * z)) / m, wrt=z,
                    variables=(real_line(z, "logit"), finite(y, (-1, 1), "label")))
'''


def test_load_loss_module(tmp_path):
    path = tmp_path / "my_losses.py"
    path.write_text(LOSS_FILE)
    try:
        assert losses.load_loss_module(path) == ["logistic"]
        assert losses.task_of("logistic") == "binary"
    finally:
        losses.unregister("logistic")
    with pytest.raises(ValueError, match="missing.py"):
        losses.load_loss_module(tmp_path / "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="empty.py"):
        losses.load_loss_module(empty)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="broken.py.*boom"):
        losses.load_loss_module(broken)


def test_derive_loss_module_cli(cli, tmp_path):
    import json
    path = tmp_path / "my_losses.py"
    path.write_text(LOSS_FILE)
    try:
        code, out, err = cli("derive", "--loss-module", path, "--loss", "logistic", "--json")
        assert code == 0 and "registered logistic" in err
        data = json.loads(out)["logistic"]
        assert sp.simplify(sp.sympify(data["smoothness_bound"]) - sp.sympify("1/(4*m)")) == 0
        assert data["paper_rate_witness"] is None and data["labels"] == [-1, 1]
    finally:
        losses.unregister("logistic")
    code, _, err = cli("derive", "--loss-module", tmp_path / "nope.py")
    assert code == 2 and "nope.py" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["softmax_ce", "label_smoothed_ce"])
def test_the_generated_softmax_criterion_ignores_negative_targets_as_torch_does(name):
    """Padding (torch's ignore_index -100, or a -1 pad): not a term of the mean, as in F.cross_entropy."""
    from lipschitz_lab.losses import generated_criterion
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, dtype=torch.float64, generator=g)
    y = torch.randint(0, 5, (12,), generator=g)
    y[[1, 4, 7]] = -100
    want = F.cross_entropy(z, y, label_smoothing=0.1 if name == "label_smoothed_ce" else 0.0)
    assert generated_criterion(name, eps=0.1)(z, y).item() == pytest.approx(want.item(), rel=1e-12)
    y[4] = -1
    kept = y >= 0
    want = F.cross_entropy(z[kept], y[kept], label_smoothing=0.1 if name == "label_smoothed_ce" else 0.0)
    assert generated_criterion(name, eps=0.1)(z, y).item() == pytest.approx(want.item(), rel=1e-12)
