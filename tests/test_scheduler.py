"""LipschitzLR on real training, against oracles typed here (and only here)."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from lipschitz_lab import LipschitzLR
from lipschitz_lab.bounds import learning_rate, lipschitz_bound
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.probe import DivergenceError
from lipschitz_lab.scheduler import EMAOptions
from train_helpers import batches, dataset, mlp, run


# -- data, models and the loop: tests/train_helpers.py -----------------------


def paper_softmax_lr(K_z, k, m, lam, w_max):
    """The oracle: the authors' formula, lr = 1/((k-1)·K_z/(k·m) + λ·max‖w‖)."""
    return 1.0 / ((k - 1) * K_z / (k * m) + lam * w_max)


def w_max_of(model):
    return max(p.detach().norm().item() for p in model.parameters())


# -- the paper variant against the formula ------------------------------------
def test_paper_figures_give_the_published_rate():
    L = lipschitz_bound("softmax_ce", "paper", K_z=206.695, m=128, k=10, lam=1e-3, w_max=43.257)
    lr, clamped = learning_rate(L)
    assert lr == pytest.approx(paper_softmax_lr(206.695, 10, 128, 1e-3, 43.257), rel=1e-12)
    assert lr == pytest.approx(0.668, abs=5e-4) and clamped is None


def test_paper_rate_per_step_equals_the_formula():
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-3)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, recompute="step", max_lr=None)
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    want_lr = None
    for t, (x, yb) in enumerate(batches(X, y, 64, seed=0)[:20]):
        with torch.no_grad():
            K_z = torch.relu(model[0](x)).norm().item()   # separate penultimate forward
        w_max = w_max_of(model)                           # the weights behind this gradient
        if t == 0:                                        # warm start: batch 0, initial weights
            want_lr = paper_softmax_lr(K_z, 10, len(x), 1e-3, w_max)
        crit(model(x), yb).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        rec = sched.last_record
        assert rec["lr"] == pytest.approx(want_lr, rel=1e-5)
        assert opt.param_groups[0]["lr"] == sched.get_last_lr()[0]
        assert rec["K_z"] == pytest.approx(K_z, rel=1e-5)
        assert rec["w_max"] == pytest.approx(w_max, rel=1e-6)
        assert 1.0 / rec["L_paper"] == pytest.approx(paper_softmax_lr(K_z, 10, len(x), 1e-3, w_max), rel=1e-5)
        if t > 0:       # step 0's own batch already set the warm-start rate, kept for step 1
            want_lr = 1.0 / rec["L_paper"]
        assert sched.get_last_lr()[0] == pytest.approx(want_lr, rel=1e-5)


def test_a_closure_step_records_the_rate_its_update_used():
    """optimizer.step(closure) (Lightning's way) runs the forward after the step's pre-hooks:
    step 0 updates with the optimizer's own lr, and its record says so; batch 0 sets step 1's."""
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, recompute="step")
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    recs = []
    for x, yb in batches(X, y, 64, seed=0)[:3]:
        if not recs:
            with torch.no_grad():
                K0 = torch.relu(model[0](x)).norm().item()

        def closure(x=x, yb=yb):
            opt.zero_grad()
            loss = crit(model(x), yb)
            loss.backward()
            return loss
        opt.step(closure)
        sched.step()
        recs.append(sched.last_record)
    assert recs[0]["lr"] == pytest.approx(0.1) and recs[0]["rate_source"] == "optimizer's lr"
    assert recs[1]["lr"] == pytest.approx(paper_softmax_lr(K0, 10, 64, 0.0, 0.0), rel=1e-5)
    assert recs[2]["lr"] == pytest.approx(1.0 / recs[1]["L_paper"], rel=1e-9)


def test_epoch_rate_uses_the_previous_epochs_max_K_z():
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10)      # recompute="epoch"
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    epochs = [batches(X, y, 128, seed=e) for e in range(2)]
    with torch.no_grad():
        K0 = torch.relu(model[0](epochs[0][0][0])).norm().item()
    recs0 = run(model, opt, sched, crit, epochs[:1])
    assert [r["lr"] for r in recs0] == pytest.approx([paper_softmax_lr(K0, 10, 128, 0.0, 0.0)] * len(recs0))
    K_max = max(r["K_z"] for r in recs0)
    assert sched.get_last_lr()[0] == pytest.approx(paper_softmax_lr(K_max, 10, 128, 0.0, 0.0), rel=1e-6)
    recs1 = run(model, opt, sched, crit, epochs[1:])
    assert all(r["epoch"] == 1 and r["lr"] == recs1[0]["lr"] for r in recs1)
    assert recs1[0]["lr"] == pytest.approx(paper_softmax_lr(K_max, 10, 128, 0.0, 0.0), rel=1e-6)


# -- the strict bound holds at every step of real training ---------------------
@pytest.mark.parametrize("kz", ["frobenius", "max_abs"])
@pytest.mark.parametrize("name,loss,out", [("digits", "softmax_ce", 10),
                                           ("breast_cancer", "bce", 1),
                                           ("diabetes", "mse", 1)])
def test_strict_bound_is_never_below_the_measured_gradient(name, loss, out, kz):
    X, y = dataset(name)
    model = mlp(X.shape[1], out)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, loss, num_classes=out if out > 1 else None, bound="strict",
                        kz=kz, recompute="step", max_lr=1.0)
    crit = sched.wrap_loss(make_criterion(loss))
    n_epochs = math.ceil(320 / math.ceil(len(X) / 32))
    recs = run(model, opt, sched, crit, [batches(X, y, 32, seed=e) for e in range(n_epochs)])
    assert len(recs) >= 300
    gaps = [r["L"] - r["grad_last"] for r in recs]
    worst = min(range(len(recs)), key=lambda i: gaps[i])
    assert gaps[worst] >= -1e-6 * recs[worst]["L"], recs[worst]
    # the strict bound, typed here from its derivation: |dE/dW| <= S*m*max|a| (max_abs) or
    # S*sqrt(m)*||A||_F (frobenius), the bias S*m; S = sup|dE/dz| = 1/m, (K_a + ||y||)/m for mse
    for r in recs:
        S = (r["K_a"] + r["y_norm"]) / r["m"] if loss == "mse" else 1.0 / r["m"]
        want = S * r["m"] * max(r["K_z"], 1.0) if kz == "max_abs" else \
            S * math.sqrt(r["m"]) * max(r["K_z"], math.sqrt(r["m"]))
        assert r["L"] == pytest.approx(want, rel=1e-12), r
    if kz == "max_abs" and loss != "mse":      # the check can fail: the paper's bound does, here
        assert any(r["grad_last"] > r["L_paper"] for r in recs)
    # it trained: the last epoch's loss is below the first batch's
    with torch.no_grad():
        assert make_criterion(loss)(model(X), y).item() < make_criterion(loss)(mlp(X.shape[1], out)(X), y).item()


# -- clamps, K_z = 0, divergence ------------------------------------------------
def test_zero_activations_clamp_to_max_lr_and_say_so():
    model = mlp(4, 3)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)                        # ReLU(-1) = 0: K_z = 0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=3, recompute="step", max_lr=3.0)
    recs = run(model, opt, sched, make_criterion("softmax_ce"),
               [[(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]])
    assert [(r["K_z"], r["lr"], r["clamped"]) for r in recs] == [(0.0, 3.0, "K_z=0")] * 3
    assert opt.param_groups[0]["lr"] == 3.0


@pytest.mark.parametrize("scale,want", [(1e7, "min_lr"), (1e-7, "max_lr")])
def test_clamps_are_recorded(scale, want):
    model = mlp(4, 3)
    with torch.no_grad():
        model[0].bias.zero_()                            # K_z scales with the input
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=3, min_lr=1e-4, max_lr=5.0)
    recs = run(model, opt, sched, make_criterion("softmax_ce"),
               [[(scale * torch.randn(8, 4), torch.randint(0, 3, (8,)))]])
    assert recs[0]["clamped"] == want
    assert recs[0]["lr"] == (1e-4 if want == "min_lr" else 5.0)


class Poison(nn.Module):
    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        return x * float("nan") if self.calls == self.at else x


def test_nan_activations_during_training_raise_divergence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Poison(at=4), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=3)
    data = [[(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(6)]]
    with pytest.raises(DivergenceError, match=r"^step 3: K_z is nan \(activations of layer '3'\)$"):
        run(model, opt, sched, make_criterion("softmax_ce"), data)


def test_inf_gradient_during_training_raises_divergence():
    model = mlp(4, 3)
    step = {"t": 0}
    model[2].weight.register_hook(lambda g: g + math.inf if step["t"] == 2 else g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=3, recompute="step")
    sched.subscribe(lambda rec: step.update(t=rec["step"] + 1))
    data = [[(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(6)]]
    with pytest.raises(DivergenceError, match=r"^step 2: gradient of '2.weight' is inf$"):
        run(model, opt, sched, make_criterion("softmax_ce"), data)


def test_a_step_that_grad_scaler_skips_is_not_measured():
    model = mlp(4, 3)
    step = {"t": 0}
    model[2].weight.register_hook(lambda g: g + math.inf if step["t"] == 2 else g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=3, recompute="step", scaler=scaler)
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    seen = []
    for t in range(5):
        step["t"] = t
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        scaler.scale(crit(model(x), y)).backward()
        scaler.step(opt)                 # skips optimizer.step() at t = 2 (inf gradient)
        scaler.update()
        if t == 2:
            with pytest.warns(RuntimeWarning, match="skipped .GradScaler found inf"):
                sched.step()
        else:
            unscaled = max(p.grad.abs().max().item() for p in model[2].parameters())
            sched.step()
            assert sched.last_record["grad_last"] == pytest.approx(unscaled, rel=1e-6)
        seen.append(sched.last_record["step"])
        opt.zero_grad()
    assert seen == [0, 1, 1, 2, 3]       # no record for the skipped step
    assert scaler.get_scale() == 2.0     # the scaler saw the overflow too


# -- the scheduler protocol -------------------------------------------------------
def _plain(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or type(obj) in (bool, int, float, str)


@pytest.mark.parametrize("recompute,variant", [("epoch", "sgd"), ("step", "sgd"), ("epoch", "momentum")])
def test_state_dict_resume_reproduces_the_rates(recompute, variant):
    X, y = dataset("digits")
    epochs = [batches(X, y, 128, seed=e) for e in range(4)]

    def build():
        model = mlp(64, 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9 if variant == "momentum" else 0.0,
                              weight_decay=1e-4)
        sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, recompute=recompute,
                            variant_optimizer=variant, ema=EMAOptions(bias_correction=True),
                            max_lr=1.0 if variant == "momentum" else 10.0)
        return model, opt, sched, make_criterion("softmax_ce")

    model, opt, sched, crit = build()
    run(model, opt, sched, crit, epochs, stop=(2, 5))         # 2 epochs and 5 steps
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    rest_a = run(model, opt, sched, crit, epochs, start_epoch=2, skip=5)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert _plain(ckpt["sched"]), ckpt["sched"]               # no module, hook, loader or tensor
    model, opt, sched, crit = build()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    rest_b = run(model, opt, sched, crit, epochs, start_epoch=2, skip=5)
    assert [r["lr"] for r in rest_b] == [r["lr"] for r in rest_a]
    assert [(r["step"], r["epoch"]) for r in rest_b] == [(r["step"], r["epoch"]) for r in rest_a]
    assert len({r["lr"] for r in rest_a}) > 1


def test_several_param_groups_share_the_rate():
    model = mlp(6, 3)
    opt = torch.optim.SGD([{"params": model[0].parameters()},
                           {"params": model[2].parameters(), "lr_scale": 0.5, "weight_decay": 1e-3}], lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=3, recompute="step")
    data = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(3)]
    run(model, opt, sched, make_criterion("softmax_ce"), [data[:2]])
    w_max = w_max_of(model)
    recs = run(model, opt, sched, make_criterion("softmax_ce"), [data[2:]])
    rate = sched.get_last_lr()[0]
    assert sched.get_last_lr() == [rate, 0.5 * rate]
    assert [g["lr"] for g in opt.param_groups] == [rate, 0.5 * rate]
    assert recs[-1]["lam"] == 1e-3
    assert recs[-1]["w_max"] == pytest.approx(w_max, rel=1e-6)   # the weights behind the gradient


def test_records_are_plain_and_subscribers_get_every_one():
    model = mlp(6, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "mse", bound="corrected", recompute="step")
    got, other = [], []
    stop = sched.subscribe(got.append)
    sched.subscribe(other.append)
    data = [[(torch.randn(8, 6), torch.randn(8)) for _ in range(4)]]
    run(model, opt, sched, sched.wrap_loss(make_criterion("mse")), [data[0][:2]])
    stop()
    run(model, opt, sched, sched.wrap_loss(make_criterion("mse")), [data[0][2:]])
    assert len(got) == 2 and len(other) == 4
    for rec in other:
        assert _plain(rec)
        assert rec["kind"] == "step" and rec["bound"] == "corrected" and rec["m"] == 8
        assert rec["K_a"] is not None and rec["y_norm"] is not None and rec["k"] is None
        assert {"L_paper", "L_corrected", "L_strict", "kz_mode", "w_max", "lam"} <= rec.keys()
    x, yb = data[0][3]
    assert other[3]["y_norm"] == pytest.approx(yb.norm().item(), rel=1e-6)


def test_mse_without_targets_names_y_norm():
    model = mlp(6, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "mse", bound="corrected")
    with pytest.raises(ValueError, match="y_norm"):
        run(model, opt, sched, make_criterion("mse"), [[(torch.randn(4, 6), torch.randn(4))]])


@pytest.mark.parametrize("kwargs,field", [({"bound": "loose"}, "bound"), ({"kz": "l1"}, "kz"),
                                          ({"recompute": "batch"}, "recompute"),
                                          ({"num_classes": None}, "num_classes"),
                                          ({"variant_optimizer": "lion"}, "variant_optimizer"),
                                          ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr")])
def test_bad_arguments_name_the_field(kwargs, field):
    model = mlp(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=field):
        LipschitzLR(opt, model, "softmax_ce", **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_rates_on_cuda_equal_the_cpu_rates():
    X, y = dataset("digits")
    data = [batches(X, y, 128, seed=e) for e in range(2)]
    lrs = {}
    for device in ("cpu", "cuda"):
        model = mlp(64, 10).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
        sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
        on = [[(x.to(device), t.to(device)) for x, t in epoch] for epoch in data]
        recs = run(model, opt, sched, make_criterion("softmax_ce"), on)
        assert _plain(recs[-1]) and recs[-1]["L"] >= recs[-1]["grad_last"]
        lrs[device] = [r["lr"] for r in recs]
    assert lrs["cuda"] == pytest.approx(lrs["cpu"], rel=1e-3)


# -- the authors' exact protocol ---------------------------------------------------
def test_exact_protocol_measures_in_eval_mode():
    X, y = dataset("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.BatchNorm1d(16),
                          nn.Dropout(0.25), nn.Linear(16, 10))
    fixed = batches(X, y, 128, seed=99)                      # fixed order, as the authors
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def eval_rate():
        model.eval()
        with torch.no_grad():
            K = max(model[:-1](x).norm().item() for x, _ in fixed)
        model.train()
        return paper_softmax_lr(K, 10, 128, 0.0, 0.0)

    want0 = eval_rate()
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, exact_protocol=True, loader=fixed,
                        max_lr=100.0)
    assert model.training
    with pytest.warns(RuntimeWarning, match="eval-mode K_z"):   # BatchNorm before the last layer
        recs = run(model, opt, sched, make_criterion("softmax_ce"), [batches(X, y, 128, seed=0)[:5]])
    assert {r["kz_mode"] for r in recs} == {"eval"} and recs[0]["clamped"] is None
    assert max(r["K_z"] for r in recs) > 10 * recs[0]["K_z_rate"]  # train-mode K_z vs the eval one
    assert recs[0]["lr"] == pytest.approx(want0, rel=1e-5)
    assert sched.get_last_lr()[0] == pytest.approx(eval_rate(), rel=1e-5)  # re-measured at epoch_end
    assert sched.last_measurement["kz_mode"] == "eval" and sched.last_measurement["batches"] == len(fixed)


# -- the follow-up paper's optimizers -------------------------------------------------
@pytest.mark.parametrize("variant,bias_correction", [("momentum", False), ("momentum", True),
                                                     ("rmsprop", False), ("adam", False), ("adam", True)])
def test_variant_optimizer_rates_follow_the_emas(variant, bias_correction):
    X, y = dataset("digits")
    model = mlp(64, 10)
    params, lam = model.parameters(), 1e-3
    opt = {"momentum": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=lam),
           "rmsprop": lambda: torch.optim.RMSprop(params, lr=0.01, weight_decay=lam),
           "adam": lambda: torch.optim.Adam(params, lr=0.01, weight_decay=lam)}[variant]()
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, recompute="step", variant_optimizer=variant,
                        ema=EMAOptions(bias_correction=bias_correction), min_lr=None, max_lr=None)
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    # the oracle's own L per batch, not the scheduler's: a separate penultimate forward, the
    # weights behind the gradient, and the paper's formula typed here (eq. 20 + lam*max||w||)
    Ls, recs = [], []
    for x, yb in batches(X, y, 128, seed=0)[:8]:
        with torch.no_grad():
            K_z = torch.relu(model[0](x)).norm().item()
        w_max = w_max_of(model)
        Ls.append((1.0 / paper_softmax_lr(K_z, 10, len(x), lam, w_max), lam * w_max))
        crit(model(x), yb).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        recs.append(sched.last_record)
    # the follow-up paper's EMAs over batches 0, 1, ...: step 0 runs at the warm start (batch 0),
    # step 1 too (the batch that set a rate does not set it again), step t+1 at the EMA of 0..t
    K = K1 = K2 = K_rms = 0.0
    want = []
    for t, (L, wd) in enumerate(Ls[:-1]):
        L2 = L * L - wd * wd                                  # the λ²·max‖w‖² term dropped
        K, K1, K2 = 0.9 * K + 0.1 * L, 0.9 * K1 + 0.1 * L, 0.999 * K2 + 0.001 * L2
        K_rms = 0.9 * K_rms + 0.1 * L2
        c, c2 = ((1 - 0.9 ** (t + 1)), (1 - 0.999 ** (t + 1))) if bias_correction else (1.0, 1.0)
        lr = {"momentum": c / K, "rmsprop": math.sqrt(K_rms / c + 1e-8) / L,
              "adam": (math.sqrt(K2 / c2) + 1e-8) / (K1 / c)}[variant]
        want.append(lr)
    want = want[:1] + want
    assert [r["lr"] for r in recs] == pytest.approx(want, rel=1e-5)
    assert np.std(want) > 0
