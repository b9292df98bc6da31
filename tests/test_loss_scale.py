"""A user's own loss: a scale the bound was not derived for ends in one clear error, and
``loss_scale`` makes the strict bound hold again (issue 10, item 1).

The oracle of the check is the generated dE/dz (lipschitz_lab.losses.grad_logits);
these tests use torch's own criteria, written as a user would, and autograd."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipschitz_lab import LipschitzLR
from lipschitz_lab.bounds import lipschitz_bound
from lipschitz_lab.errors import LossScaleError
from lipschitz_lab.losses import make_criterion
from train_helpers import batches, dataset, mlp, run

K = {"digits": 10, "breast_cancer": None, "diabetes": None}
LOSS = {"digits": "softmax_ce", "breast_cancer": "bce", "diabetes": "mse"}


def build(name, **kwargs):
    X, y = dataset(name)
    model = mlp(X.shape[1], K[name] or 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, LOSS[name], num_classes=K[name], bound="strict", recompute="step",
                        max_lr=1.0, **kwargs)
    return X, y, model, opt, sched


def mse_fn(out, y):                       # nn.MSELoss() as a function: twice ½·MSE
    return F.mse_loss(out.reshape(y.shape), y)


def bce_sum(out, y):
    return F.binary_cross_entropy_with_logits(out.reshape(y.shape), y, reduction="sum")


def ce_times_3(out, y):
    return 3 * F.cross_entropy(out, y)


# -- the one-line error ------------------------------------------------------------------
@pytest.mark.parametrize("name,crit,scale", [("diabetes", mse_fn, "2"), ("digits", ce_times_3, "3"),
                                             ("breast_cancer", bce_sum, "32")])
def test_a_scaled_loss_ends_in_one_line_naming_the_scale_and_both_fixes(name, crit, scale):
    X, y, model, opt, sched = build(name)
    with pytest.raises(LossScaleError) as err:
        run(model, opt, sched, sched.wrap_loss(crit), [batches(X, y, 32, seed=0, drop_last=True)[:3]])
    msg = str(err.value)
    assert "\n" not in msg and f"{scale} times" in msg
    assert f"lipschitz_lab.losses.make_criterion({LOSS[name]!r})" in msg and f"loss_scale={scale}" in msg


@pytest.mark.parametrize("criterion,match", [(nn.MSELoss(), "2 times"), (nn.MSELoss(reduction="sum"), "m times")])
def test_a_torch_criterion_with_a_known_reduction_is_checked_before_the_first_step(criterion, match):
    _, _, model, opt, sched = build("diabetes")
    with pytest.raises(LossScaleError, match=match):
        sched.wrap_loss(criterion)
    assert sched.step_index == 0


@pytest.mark.parametrize("name,crit", [("digits", nn.CrossEntropyLoss()), ("digits", F.cross_entropy),
                                       ("breast_cancer", make_criterion("bce")), ("diabetes", make_criterion("mse"))])
def test_the_derived_loss_passes_the_check(name, crit):
    X, y, model, opt, sched = build(name)
    recs = run(model, opt, sched, sched.wrap_loss(crit), [batches(X, y, 32, seed=0)[:4]])
    assert len(recs) == 4 and all(r["loss_scale"] == 1.0 for r in recs)


def _accumulate(X, y, model, opt, sched, crit, micro, divide, steps):
    """Gradient accumulation: ``micro`` forwards per optimizer step, each loss divided or not."""
    data = batches(X, y, 16, seed=1, drop_last=True)
    records = []
    for t in range(steps):
        for x_, y_ in data[t * micro:(t + 1) * micro]:
            loss = crit(model(x_), y_)
            (loss / micro if divide else loss).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        records.append(sched.last_record)
    return records


def test_accumulation_divided_by_the_micro_batches_is_the_union_mean_and_passes():
    X, y, model, opt, sched = build("digits")
    recs = _accumulate(X, y, model, opt, sched, sched.wrap_loss(F.cross_entropy), 4, True, 8)
    assert [r["m"] for r in recs] == [64] * 8                 # the union of 4 micro-batches of 16
    assert all(r["grad_last"] <= r["L_strict"] for r in recs)


def test_accumulation_without_the_division_raises_naming_4():
    X, y, model, opt, sched = build("digits")
    with pytest.raises(LossScaleError, match=r"4 times.*loss_scale=4"):
        _accumulate(X, y, model, opt, sched, sched.wrap_loss(F.cross_entropy), 4, False, 3)


def test_the_check_runs_again_later_in_the_run():
    X, y, model, opt, sched = build("digits")
    data = batches(X, y, 16, seed=2, drop_last=True)
    crit = sched.wrap_loss(lambda o, t: F.cross_entropy(o, t) * (1.0 if state["t"] < 60 else 2.0))
    state = {"t": 0}
    with pytest.raises(LossScaleError, match="2 times") as err:
        for t in range(110):
            state["t"] = t
            x_, y_ = data[t % len(data)]
            crit(model(x_), y_).backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        sched.flush()
    assert state["t"] >= 60 and "step 100" not in str(err.value)   # caught at the check of step 100


# -- with loss_scale the strict bound holds again ------------------------------------------
@pytest.mark.parametrize("name,crit,scale", [("digits", ce_times_3, 3.0), ("breast_cancer", bce_sum, 32.0),
                                             ("diabetes", mse_fn, 2.0)])
def test_with_loss_scale_the_strict_bound_holds_on_every_step(name, crit, scale):
    X, y, model, opt, sched = build(name, loss_scale=scale)
    n_batches = len(batches(X, y, 32, seed=0, drop_last=True))
    epochs = [batches(X, y, 32, seed=e, drop_last=True) for e in range(math.ceil(300 / n_batches))]
    recs = run(model, opt, sched, sched.wrap_loss(crit), epochs)
    assert len(recs) >= 300
    assert all(r["loss_scale"] == scale for r in recs)
    worst = max(recs, key=lambda r: r["grad_last"] / r["L_strict"])
    assert worst["grad_last"] <= worst["L_strict"] * (1 + 1e-6), worst
    # the bound in the record is the derived loss's strict bound times the scale (λ = 0 here)
    params = {"k": 10} if name == "digits" else ({"K_a": None, "y_norm": None} if name == "diabetes" else {})
    for r in recs[:20]:
        if name == "diabetes":
            params = {"K_a": r["K_a"], "y_norm": r["y_norm"]}
        plain = lipschitz_bound(LOSS[name], "strict", K_z=r["K_z"], m=r["m"], kz="frobenius", **params)
        assert r["L_strict"] == pytest.approx(scale * plain, rel=1e-12)


def test_nn_mseloss_with_loss_scale_2_trains_within_the_bound():
    """A user's nn.MSELoss() (module, reduction="mean"): accepted with loss_scale=2, and the
    measured gradient (autograd, through .grad) stays under the scaled strict bound."""
    X, y, model, opt, sched = build("diabetes", loss_scale=2.0)
    crit = sched.wrap_loss(nn.MSELoss())
    recs = []
    for x_, y_ in batches(X, y, 32, seed=0)[:10]:
        crit(model(x_), y_.unsqueeze(1)).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        recs.append(sched.last_record)
    assert all(r["grad_last"] <= r["L_strict"] for r in recs)
