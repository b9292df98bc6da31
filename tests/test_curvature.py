"""probe/hessian.py, probe/curvature.py, probe/monitor.py, probe/curvature_rules.py: the curvature
instruments against the dense Hessian in float64 (torch.autograd.functional.hessian and eigvalsh),
against Lanczos (SciPy's eigsh, the race benchmark's) on the Table-1 CNN, and α against
Cockpit's own quadratic fit on a quadratic."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lipschitz_lab.probe.curvature import (CURVATURE, Sharpness, StepQuality, decode_curvature, edge,
                                           edge_limit, top_ritz)
from lipschitz_lab.probe.curvature_rules import CurvatureRate, DirectionalRate
from lipschitz_lab.probe.hessian import BatchHessian, capture_rng, hessian_at
from lipschitz_lab.probe.monitor import CurvatureMonitor

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def small_net(seed=0, bn=True, dropout=0.3):
    """Tanh (smooth: the dense Hessian is the Hessian everywhere), BatchNorm, dropout; float64."""
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 6), nn.Tanh()] + ([nn.BatchNorm1d(6)] if bn else []) + \
        ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def batch(seed=1, m=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, 4, generator=g, dtype=F64), torch.randint(0, 3, (m,), generator=g)


def dense_hessian(model, x, y, rng, weights=None):
    """The batch loss's Hessian in every parameter, as one float64 matrix (the oracle), with the
    dropout masks drawn from ``rng`` and BatchNorm's running statistics left alone."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() if weights is None else weights[n] for n, p in model.named_parameters()]
    sizes, shapes = [p.numel() for p in params], [p.shape for p in params]
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def f(flat):
        parts = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        torch.set_rng_state(rng.cpu)
        out = torch.func.functional_call(model, {**parts, **{k: b.clone() for k, b in buffers.items()}}, (x,))
        return nn.functional.cross_entropy(out, y)
    state = torch.get_rng_state()
    H = torch.autograd.functional.hessian(f, torch.cat([p.reshape(-1) for p in params]))
    torch.set_rng_state(state)
    return H


def flat(vs):
    return torch.cat([v.reshape(-1) for v in vs])


# -- Hessian-vector products ---------------------------------------------------------------
def products_and_dense():
    """The small net's batch Hessian twice: as products (``hessian_at``) and dense, same dropout masks."""
    model, (x, y) = small_net(), batch()
    rng = capture_rng()
    hvp = hessian_at(model, x, lambda z: nn.functional.cross_entropy(z, y), rng=rng)
    return hvp, dense_hessian(model, x, y, rng)


def test_products_are_the_dense_hessians_to_rounding():
    hvp, H = products_and_dense()
    v = [torch.randn_like(p) for p in hvp.params]
    # float64, ~100 parameters: both sides sum the same few terms, to ~1e-15 relative
    torch.testing.assert_close(flat(hvp(v)), H @ flat(v), rtol=1e-10, atol=1e-12)
    assert hvp.products == 1


def test_the_measuring_forward_leaves_training_alone():
    """No probe hook fires, BatchNorm's running statistics and the global RNG are as before."""
    model, (x, y) = small_net(), batch()
    calls = []
    model[-1].register_forward_hook(lambda *a: calls.append(1))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    state = torch.get_rng_state()
    hessian_at(model, x, lambda z: nn.functional.cross_entropy(z, y), rng=capture_rng())
    assert calls == [] and torch.equal(torch.get_rng_state(), state)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    model(x)
    assert calls == [1]                                  # the hook is back


# -- λ_max ----------------------------------------------------------------------------------
def test_sharpness_converges_to_the_dense_top_eigenvalue_with_batchnorm_and_dropout():
    model, (x, y) = small_net(), batch()
    rng = capture_rng()
    hvp = hessian_at(model, x, lambda z: nn.functional.cross_entropy(z, y), rng=rng)
    top = torch.linalg.eigvalsh(dense_hessian(model, x, y, rng))[-1]
    lam = Sharpness(cold_iters=30).measure(hvp)
    assert lam.dtype == F64 and lam.dim() == 0
    torch.testing.assert_close(lam, top, rtol=1e-8, atol=0)      # converged: float64 rounding
    rough = Sharpness(cold_iters=10).measure(hvp)
    assert rough <= top * (1 + 1e-12) and rough >= 0.9 * top     # a Rayleigh quotient: never above


def _quadratic(eigs, seed=0):
    torch.manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(len(eigs), len(eigs), dtype=F64))[0]
    M = Q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ Q.T
    w = torch.randn(len(eigs), dtype=F64, requires_grad=True)
    return BatchHessian(0.5 * w @ M @ w, [w])


@pytest.mark.parametrize("eigs, top", [([3.0, 1.0, 0.5, 0.0, -0.5, -2.0], 3.0),
                                       ([3.0, 1.0, 0.5, 0.0, -0.5, -8.0], 3.0),   # dominant is negative
                                       ([-1.0, -2.0, -5.0], -1.0)])              # no positive curvature
def test_sharpness_reports_the_top_eigenvalue_not_the_dominant_one(eigs, top):
    hvp = _quadratic(eigs)
    assert Sharpness(cold_iters=6).measure(hvp).item() == pytest.approx(top, rel=1e-12)   # k = n: exact
    power = Sharpness(iters=1, cold_iters=1)       # one product per call: the shifted power steps
    assert [power.measure(hvp).item() for _ in range(120)][-1] == pytest.approx(top, rel=1e-6)


def test_warm_start_and_its_state():
    hvp = _quadratic([4.0, 1.0, 0.5, -0.3, 0.2, 0.1, 3.5, 2.0])
    s = Sharpness(iters=2, cold_iters=2)
    seq = [s.measure(hvp).item() for _ in range(30)]           # 2 products each, from the last vector
    assert all(b >= a - 1e-12 for a, b in zip(seq, seq[1:])) and seq[-1] == pytest.approx(4.0, rel=1e-8)
    assert max(seq) <= 4.0 * (1 + 1e-12)
    t = Sharpness(iters=1)
    t.load_state_dict(s.state_dict())
    assert t.measure(hvp).item() == pytest.approx(4.0, rel=1e-8)


def test_lanczos_beats_power_iteration_with_as_many_products():
    hvp = _quadratic(list(np.linspace(-1.0, 10.0, 40)), seed=3)
    lanczos = Sharpness(cold_iters=8).measure(hvp).item()
    power = Sharpness(iters=1, cold_iters=1)
    power_best = max(power.measure(hvp).item() for _ in range(8))
    assert power_best < lanczos <= 10.0 * (1 + 1e-12) and lanczos > 9.5


@pytest.mark.parametrize("eigs", [[2.0], [3.0, -1.0, 0.5], [1.0, 1.0, 0.2, -4.0], [5.0, 5.0 - 1e-9, 1.0]])
def test_the_small_eigenproblem_on_the_device_is_eigh(eigs):
    Q = torch.linalg.qr(torch.randn(len(eigs), len(eigs), dtype=F64))[0]
    T = Q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ Q.T
    theta, s = top_ritz(T)
    values, vectors = torch.linalg.eigh(T)
    assert theta.item() == pytest.approx(values[-1].item(), rel=1e-13, abs=1e-13)
    torch.testing.assert_close(T @ s, theta * s, rtol=0, atol=1e-6)   # an eigenvector of the top eigenvalue


def test_sharpness_draws_from_its_own_generator():
    hvp = _quadratic([2.0, 1.0])
    state = torch.get_rng_state()
    Sharpness(cold_iters=3).measure(hvp)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_cadence_names_the_field(bad):
    with pytest.raises(ValueError, match="sharpness_every"):
        Sharpness(every=bad)


@pytest.mark.slow
def test_sharpness_agrees_with_lanczos_on_the_table1_cnn():
    from lipschitz_lab.models import get_model
    spec = importlib.util.spec_from_file_location("bench_race_curvature",
                                                  ROOT / "benchmarks" / "bench_race_curvature.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model = get_model("mnist_cnn", input_shape=(1, 28, 28), num_outputs=10)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    rng = capture_rng()
    lam = Sharpness(cold_iters=12).measure(hessian_at(model, x, lambda z: nn.functional.cross_entropy(z, y),
                                                      rng=rng))

    def loss_of():                                     # the same masks: the same Hessian
        torch.set_rng_state(rng.cpu)
        return nn.functional.cross_entropy(model(x), y)
    lanczos = bench.top_eigenvalue(loss_of, list(model.parameters()), iters=10)
    assert lam.item() == pytest.approx(lanczos, rel=0.1)
    assert lam.item() <= lanczos * (1 + 1e-3)          # a Rayleigh quotient (float32 products)


# -- dir_curv and α -------------------------------------------------------------------------
def cockpit_alpha(t, fs, dfs):
    """Cockpit's α (f-dangel/cockpit, quantities/alpha.py: _fit_quadratic, _get_alpha) with equal
    variances: least squares of f(0), f(t), f'(0), f'(t) on q(s) = m0 + m1 s + m2 s²."""
    Phi = np.array([[1, 0, 0], [1, t, t ** 2], [0, 1, 0], [0, 1, 2 * t]]).T
    mu = np.linalg.solve(Phi @ Phi.T, Phi @ np.array(fs + dfs))
    return -1.0 if mu[2] < 0 else 2 * t / (-mu[1] / mu[2]) - 1


@pytest.mark.parametrize("eta, expected", [(17 / 65, 0.0), (34 / 65, 1.0), (8.5 / 65, -0.5), (0.0, -1.0)])
def test_alpha_on_a_quadratic_by_hand_and_by_cockpits_fit(eta, expected):
    # f(w) = ½ wᵀ diag(1, 4) w at w = (1, 1): g = (1, 4), gᵀAg = 65, ‖g‖² = 17, so a step -η g
    # lands at α = η·65/17 − 1: the line minimum at η = 17/65, the other side at 34/65
    A = torch.diag(torch.tensor([1.0, 4.0], dtype=F64))
    w = torch.ones(2, dtype=F64, requires_grad=True)
    hvp = BatchHessian(0.5 * w @ A @ w, [w])
    update = [-eta * hvp.grad[0]]
    q = StepQuality().measure(hvp, update)
    assert q["alpha"].item() == pytest.approx(expected, abs=1e-12)
    if eta:
        assert q["dir_curv"].item() == pytest.approx(65 / 17, rel=1e-14)
        f = lambda v: 0.5 * float(v @ A @ v)                           # noqa: E731
        u = update[0] / update[0].norm()                               # Cockpit: along the unit step
        w0, w1 = w.detach(), w.detach() + update[0]
        fit = cockpit_alpha(float(update[0].norm()), [f(w0), f(w1)], [float(A @ w0 @ u), float(A @ w1 @ u)])
        assert q["alpha"].item() == pytest.approx(fit, abs=1e-9)


def test_alpha_is_minus_one_where_the_loss_is_concave_along_the_step():
    w = torch.ones(2, dtype=F64, requires_grad=True)
    hvp = BatchHessian(-0.5 * (w * w).sum(), [w])
    assert StepQuality().measure(hvp, [-0.1 * hvp.grad[0]])["alpha"].item() == -1.0


def test_dir_curv_is_the_dense_curvature_along_any_update():
    hvp, H = products_and_dense()
    u = [torch.randn_like(p) for p in hvp.params]
    q = StepQuality().measure(hvp, u)
    expected = flat(u) @ H @ flat(u) / (flat(u) @ flat(u))
    torch.testing.assert_close(q["dir_curv"], expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q["slope"], flat(hvp.grad) @ flat(u), rtol=1e-12, atol=1e-14)


def test_edge_and_its_limits():
    assert edge_limit() == 2.0 and edge_limit(0.9) == pytest.approx(3.8)
    assert edge_limit(0.9, nesterov=True) == pytest.approx(3.8 / 2.8)
    lam = torch.tensor(50.0, dtype=F64)
    assert edge(0.04, lam).item() == pytest.approx(2.0)
    assert edge(0.04, lam, 1e-3).item() == pytest.approx(2.00004)
    with pytest.raises(ValueError, match="momentum"):
        edge_limit(1.0)
    assert decode_curvature([1.0, 2.0, float("nan"), -1.0]) == {
        "lambda_max": 1.0, "edge": 2.0, "dir_curv": None, "alpha": -1.0}


# -- the monitor in a plain loop -----------------------------------------------------------
def _loop(model, opt, steps, mon=None, seen=None):
    crit = mon.wrap_loss(nn.functional.cross_entropy) if mon else nn.functional.cross_entropy
    for step in range(steps):
        x, y = batch(seed=10 + step)
        rng, before = capture_rng(), {n: p.detach().clone() for n, p in model.named_parameters()}
        crit(model(x), y).backward()
        opt.step()
        vec = mon.step() if mon else None
        opt.zero_grad()
        if seen is not None:
            seen.append((step, x, y, rng, before, vec))


def test_a_plain_loop_measures_at_the_weights_behind_each_step():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = CurvatureMonitor(model, opt, nn.functional.cross_entropy, every=3, iters=5, cold_iters=20)
    assert mon.limit == pytest.approx(3.8)
    seen = []
    _loop(model, opt, 7, mon, seen)
    measured = [s for s in seen if s[5] is not None]
    assert [s[0] for s in measured] == [0, 3, 6]
    after = {n: p.detach() for n, p in model.named_parameters()}
    for step, x, y, rng, before, vec in measured:
        got = CURVATURE.unpack(vec.tolist())
        top = torch.linalg.eigvalsh(dense_hessian(model, x, y, rng, before))[-1].item()
        assert got["lambda_max"] == pytest.approx(top, rel=0.1) and got["lambda_max"] <= top * (1 + 1e-9)
        assert got["edge"] == pytest.approx(0.05 * got["lambda_max"], rel=1e-15)
        if step == 6:                                          # the last step: its update is in `after`
            u = flat([after[n] - before[n] for n in before])
            H = dense_hessian(model, x, y, rng, before)
            assert got["dir_curv"] == pytest.approx((u @ H @ u / (u @ u)).item(), rel=1e-10)
    assert set(mon.last) == {"lambda_max", "lr", "slope", "curv"}


def test_the_monitor_does_not_change_the_run():
    """Same seed, same batches, with and without the monitor: the same weights, bit for bit."""
    runs = []
    for monitored in (False, True):
        model = small_net(seed=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        torch.manual_seed(7)
        _loop(model, opt, 5, CurvatureMonitor(model, opt, nn.functional.cross_entropy, every=2) if monitored
              else None)
        runs.append([p.detach().clone() for p in list(model.parameters()) + list(model.buffers())])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_a_measured_step_does_not_wait_for_the_device(monkeypatch):
    """On the CPU nothing waits, so count the calls that would: none inside a measured step."""
    calls = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def method(t, *a, _name=name, _original=original, **k):
            calls.append(_name)
            return _original(t, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, method)
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.05, dtype=F64), momentum=0.9)
    mon = CurvatureMonitor(model, opt, nn.functional.cross_entropy, every=1)
    rule = DirectionalRate()
    x, y = batch()
    mon.wrap_loss(nn.functional.cross_entropy)(model(x), y).backward()
    calls.clear()
    opt.step()
    vec = mon.step()
    rule.update(mon.last["slope"], mon.last["curv"], mon.last["lr"])
    CurvatureRate().update(mon.last["lambda_max"])
    assert calls == [] and vec is not None
    vec.tolist()
    assert calls == ["tolist"]                                  # the counter does count


# -- the rules ------------------------------------------------------------------------------
def test_curvature_rate_is_c_one_plus_mu_over_lambda_clamped_and_held():
    rule = CurvatureRate(c=1.0, momentum=0.9, weight_decay=0.01, max_lr=1.0)
    lr, code = rule.update(torch.tensor(18.99, dtype=F64))
    assert lr.item() == pytest.approx(1.9 / 19.0, rel=1e-15) and code.item() == 0
    lr, code = rule.update(torch.tensor(float("nan"), dtype=F64))       # a failed measurement: held
    assert lr.item() == pytest.approx(0.1) and code.item() == 0
    lr, code = rule.update(torch.tensor(0.5, dtype=F64))                 # 1.9/0.51 > max_lr
    assert lr.item() == 1.0 and code.item() == 2
    lr, code = rule.update(torch.tensor(-3.0, dtype=F64))                # no positive curvature
    assert lr.item() == 1.0 and code.item() == 4


def test_curvature_rate_on_a_quadratic_sits_half_way_to_the_edge():
    hvp = _quadratic([10.0, 2.0, 1.0])
    lam = Sharpness(cold_iters=200).measure(hvp)
    lr, _ = CurvatureRate().update(lam)
    assert lr.item() == pytest.approx(0.1, rel=1e-6) and edge(lr, lam).item() == pytest.approx(1.0, rel=1e-6)


def test_directional_rate_is_the_line_minimum_then_at_most_doubles():
    # on f = ½ wᵀ diag(1, 4) w at w = (1, 1), SGD's direction u = g: η* = ‖g‖²/gᵀAg = 17/65
    rule = DirectionalRate(beta=0.0, max_lr=None)
    lr, code = rule.update(torch.tensor(-0.17, dtype=F64), torch.tensor(65e-4, dtype=F64), 0.01)  # outright
    assert lr.item() == pytest.approx(17 / 65, rel=1e-14) and code.item() == 0
    lr, _ = rule.update(torch.tensor(-1.0, dtype=F64), torch.tensor(0.01, dtype=F64), 0.1)   # η* = 10
    assert lr.item() == pytest.approx(0.2)                              # capped at 2 x the rate in force
    lr, _ = rule.update(torch.tensor(-1.0, dtype=F64), torch.tensor(-5.0, dtype=F64), 0.1)   # concave
    assert lr.item() == pytest.approx(0.1)                              # fallback: the rate in force
    lr, _ = rule.update(torch.tensor(+1.0, dtype=F64), torch.tensor(5.0, dtype=F64), 0.1)    # uphill
    assert lr.item() == pytest.approx(0.1)


def test_directional_rate_smooths_numerator_and_denominator():
    rule = DirectionalRate(beta=0.5, scale=2.0, max_factor=100.0)
    rule.update(torch.tensor(-4.0, dtype=F64), torch.tensor(2.0, dtype=F64), 1.0)     # gᵀu = 4, uᵀHu = 2
    lr, _ = rule.update(torch.tensor(-2.0, dtype=F64), torch.tensor(4.0, dtype=F64), 1.0)
    # EMAs (bias factors cancel): num = .5·4·.5 + .5·2 = 2, den = .5·2·.5 + .5·4 = 2.5 → 2·2/2.5
    assert lr.item() == pytest.approx(1.6, rel=1e-14)
    state = rule.state_dict()
    other = DirectionalRate(beta=0.5, scale=2.0, max_factor=100.0)
    other.load_state_dict(state)
    assert other.update(torch.tensor(-1.0, dtype=F64), torch.tensor(1.0, dtype=F64), 1.0)[0].item() == \
        rule.update(torch.tensor(-1.0, dtype=F64), torch.tensor(1.0, dtype=F64), 1.0)[0].item()


@pytest.mark.parametrize("kwargs, field", [({"scale": 0}, "scale"), ({"beta": 1.0}, "beta"),
                                           ({"max_factor": 0.5}, "max_factor")])
def test_directional_rate_names_a_bad_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DirectionalRate(**kwargs)


def test_directional_rate_is_the_lagged_line_minimum_and_descends_a_quadratic():
    """SGD with the rule (β = 0, every step measured) sets each step's rate to the previous step's
    exact line minimum."""
    A = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=F64))
    w = torch.ones(3, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1e-3)
    rule = DirectionalRate(beta=0.0, max_factor=1e9, max_lr=None)
    losses = []
    for _ in range(20):
        loss = 0.5 * w @ A @ w
        losses.append(loss.item())
        hvp = BatchHessian(loss, [w])
        lr = opt.param_groups[0]["lr"]
        update = [-lr * hvp.grad[0]]
        q = StepQuality().measure(hvp, update)
        w.grad = hvp.grad[0].clone()
        opt.step()
        new, _ = rule.update(q["slope"], q["curv"], lr)
        opt.param_groups[0]["lr"] = new.item()
        g = hvp.grad[0]
        assert new.item() == pytest.approx((g @ g / (g @ A @ g)).item(), rel=1e-12)
    # the rate is the line minimum along the *previous* gradient: the Barzilai-Borwein step
    # (sᵀs/sᵀy), not monotone, but it converges on a quadratic
    assert losses[-1] < 1e-6 * losses[0]


def test_without_the_hook_the_loop_hands_over_the_input_and_a_later_pre_hook_sees_lambda():
    vecs, seen = [], []
    for hook in (True, False):
        model = small_net(seed=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        mon = CurvatureMonitor(model, opt, nn.functional.cross_entropy, every=2, hook=hook)
        opt.register_step_pre_hook(lambda *a, m=mon: seen.append(m.lambda_now))   # after the monitor's
        torch.manual_seed(1)
        for step in range(3):
            x, y = batch(seed=step)
            if not hook:
                mon.observe(y, inputs=x)                     # right before the forward
            out = model(x)
            if hook:
                mon.observe(y)
            nn.functional.cross_entropy(out, y).backward()
            opt.step()
            vecs.append(mon.step())
            opt.zero_grad()
    assert vecs[1] is None and vecs[4] is None
    for a, b in ((vecs[0], vecs[3]), (vecs[2], vecs[5])):
        assert torch.equal(a, b)
    assert [t is None for t in seen] == [False, True, False] * 2 and torch.equal(seen[0], vecs[0][0])

