"""The curvature instruments and rules inside LipschitzLR and the trainer (issue 23, round 2): λ_max
against the dense Hessian in float64 in a plain loop, edge = lr·λ_max, ``bound="curvature"`` sets
lr = c(1+μ)/λ_max and holds it between measurements, the directional rule moves at most 2x, and the
trainer records the instruments for a baseline too."""
from __future__ import annotations

import copy

import pytest
import torch

from lipschitz_lab import LipschitzLR
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.runs import RunStore
from lipschitz_lab.trainer import train
from train_helpers import batches, dataset, mlp


def dense_top_eigenvalue(model, x, y) -> float:
    """λ_max of the batch loss's Hessian in every parameter: dense, float64, eigvalsh."""
    twin = copy.deepcopy(model).double()
    twin._forward_hooks.clear()
    for m in twin.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    names = [n for n, _ in twin.named_parameters()]
    shapes = [p.shape for _, p in twin.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in twin.parameters()])
    crit = make_criterion("softmax_ce")

    def loss(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = s.numel()
            params[n] = theta[i:i + k].reshape(s)
            i += k
        return crit(torch.func.functional_call(twin, params, (x.double(),)), y)
    H = torch.autograd.functional.hessian(loss, flat0, vectorize=True)
    return torch.linalg.eigvalsh((H + H.T) / 2)[-1].item()


def _loop(bound, *, momentum=0.0, steps=12, every=4):
    X, y = dataset("digits")
    model = mlp(64, 10, hidden=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound=bound, recompute="step",
                        sharpness_every=every, variant_optimizer="momentum" if momentum else "sgd")
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    got, dense = [], {}
    sched.subscribe(got.append)
    for i, (x_, y_) in enumerate(batches(X, y, 64, seed=0)[:steps]):
        crit(model(x_), y_).backward()
        if i % every == 0:
            dense[i] = dense_top_eigenvalue(model, x_, y_)      # the weights behind this gradient
        opt.step()
        sched.step()
        opt.zero_grad()
    sched.close()
    return got, dense


def test_lambda_max_agrees_with_the_dense_hessian_and_edge_is_lr_times_it():
    got, dense = _loop("strict")
    measured = [r for r in got if r["lambda_max"] is not None]
    assert [r["step"] for r in measured] == sorted(dense) == [0, 4, 8]
    for r in measured:
        assert r["lambda_max"] == pytest.approx(dense[r["step"]], rel=0.10)
        assert r["lambda_max"] <= dense[r["step"]] * (1 + 1e-9)        # Lanczos reads it from below
        assert r["edge"] == pytest.approx(r["lr"] * r["lambda_max"], rel=1e-12)
    assert all(r["lambda_max"] is None and r["edge_limit"] == 2.0 for r in got if r["step"] % 4)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_curvature_rule_is_c_one_plus_mu_over_lambda_max_held_between_measurements(momentum):
    got, dense = _loop("curvature", momentum=momentum)
    for r in got:
        anchor = got[r["step"] - r["step"] % 4]                       # the last measured step
        assert r["lr"] == pytest.approx((1 + momentum) / anchor["lambda_max"], rel=1e-12)
        assert r["rate_source"] == "curvature"
    assert got[0]["edge"] == pytest.approx(1 + momentum) and got[0]["edge_limit"] == 2 * (1 + momentum)


def test_the_directional_rule_moves_at_most_twice_per_measurement():
    got, _ = _loop("directional", steps=16)
    lrs = [r["lr"] for r in got]
    assert got[0]["rate_source"] == "curvature" and got[1]["rate_source"] == "directional"
    for a, b in zip(lrs, lrs[1:]):                    # the first sample too: it follows the warm start
        assert a / 2 * (1 - 1e-12) <= b <= 2 * a * (1 + 1e-12)


def test_a_curvature_rule_without_wrap_loss_says_what_it_needs():
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="curvature", recompute="step")
    x_, y_ = batches(X, y, 64, seed=0)[0]
    make_criterion("softmax_ce")(model(x_), y_).backward()
    opt.step()
    with pytest.raises(ValueError, match="wrap_loss"):
        sched.step()


def test_the_trainer_records_the_instruments_for_a_baseline_and_a_curvature_policy(tmp_path):
    for cfg in (dict(lr_policy="constant", lr=0.1, optimizer="momentum"), dict(bound="curvature"),
                dict(lr_policy="agd")):                       # AGD's groups have no lr: its own η
        run = train(dict(dataset="digits", epochs=1, max_steps=9, sharpness_every=4, sharpness_iters=3, **cfg),
                    store=tmp_path / "s.db", progress=False)
        steps = RunStore(tmp_path / "s.db").records(run.run_id, kind="step")
        assert run.status == "finished" and len(steps) == 9
        measured = [r for r in steps if r["lambda_max"] is not None]
        assert [r["step"] for r in measured] == [0, 4, 8]
        assert all(r["edge"] == pytest.approx(r["lr"] * r["lambda_max"]) for r in measured)
        assert {r["edge_limit"] for r in steps} == {3.8 if "optimizer" in cfg else 2.0}


def test_a_sequence_model_measures_its_curvature_through_the_trainer(tmp_path):
    """(B, T, V) logits: the measuring forward flattens them as the loss does, and attention's
    second derivative comes from the math kernel (the fused ones have none)."""
    for cfg in (dict(bound="curvature"), dict(lr_policy="prodigy", lr=1.0)):
        run = train(dict(dataset="text", model="tiny_gpt", batch_size=8, epochs=1, max_steps=4,
                         sharpness_every=2, sharpness_iters=2, device="cpu", **cfg),
                    store=tmp_path / "s.db", progress=False)
        steps = RunStore(tmp_path / "s.db").records(run.run_id, kind="step")
        assert run.status == "finished", run.reason
        assert [r["step"] for r in steps if r["lambda_max"] is not None] == [0, 2]
