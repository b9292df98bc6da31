"""LipschitzLR in the loops people write (issue 21): GradScaler and bf16, (B, T, V) logits with padding,
tied weights, soft targets, label smoothing, class weights, a scaled loss with no targets, momentum,
and a loop that never flushes.  Each runs the user's own loop, not the trainer."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipschitz_lab import LipschitzLR
from lipschitz_lab.errors import DivergenceError, LossScaleError
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.models import get_model
from train_helpers import batches, dataset, mlp


def _loop(model, opt, sched, crit, data, *, scaler=None, autocast=None, skip_at=None):
    got = []
    sched.subscribe(got.append)
    for i, (x_, y_) in enumerate(data):
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = crit(model(x_), y_)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            if i == skip_at:                      # an overflow: GradScaler skips this step
                next(model.parameters()).grad.view(-1)[0] = math.inf
            scaler.step(opt)
            scaler.update()
        sched.step()
        opt.zero_grad()
    sched.flush()
    return got


def _digits_run(*, scaler=None, autocast=None, skip_at=None, drop=None, n=30):
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step", scaler=scaler)
    data = [b for i, b in enumerate(batches(X, y, 64, seed=0)[:n]) if i != drop]
    return _loop(model, opt, sched, sched.wrap_loss(make_criterion("softmax_ce")), data, scaler=scaler,
                 autocast=autocast, skip_at=skip_at)


# -- 1. mixed precision -----------------------------------------------------------------------
def test_grad_scaler_rates_equal_the_fp32_rates_and_a_skipped_step_is_not_measured():
    plain = _digits_run()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10)
    scaled = _digits_run(scaler=scaler)
    assert scaler.get_scale() == 2.0 ** 18                      # it grew twice on the way
    # scaling by a power of two is exact: the same rates, to the bit
    assert [(r["lr"], r["grad_last"], r["L_strict"]) for r in scaled] == \
           [(r["lr"], r["grad_last"], r["L_strict"]) for r in plain]
    skipper = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10)
    with pytest.warns(RuntimeWarning, match="skipped .GradScaler"):
        skipped = _digits_run(scaler=skipper, skip_at=12)     # no divergence: the scaler's business
    without_12 = _digits_run(drop=12)                          # the same updates, batch 12 never seen
    assert [r["lr"] for r in skipped] == [r["lr"] for r in without_12] and len(skipped) == len(plain) - 1
    assert all(math.isfinite(r["lr"]) and math.isfinite(r["K_z"]) for r in skipped)


def test_fp16_and_bf16_autocast_track_the_fp32_rates_without_a_false_alarm():
    plain = _digits_run(n=12)
    bf16 = _digits_run(autocast=torch.bfloat16, n=12)
    fp16 = _digits_run(autocast=torch.float16, n=12, scaler=torch.amp.GradScaler("cpu"))
    for run in (bf16, fp16):
        assert len(run) == len(plain)
        for r, p in zip(run, plain):                          # bf16 keeps 8 bits: ~1 % per step
            assert r["lr"] == pytest.approx(p["lr"], rel=0.05)
            assert r["grad_last"] <= r["L_strict"]


def test_a_grad_scaler_without_scaler_is_named_and_loss_scale_is_not_suggested():
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
    with pytest.raises(LossScaleError) as err:              # the exact check: 65,536 = 2^16
        _loop(model, opt, sched, sched.wrap_loss(make_criterion("softmax_ce")), batches(X, y, 64, seed=0)[:3],
              scaler=torch.amp.GradScaler("cpu"))
    assert "scaler=" in str(err.value) and "loss_scale=" not in str(err.value)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
    with pytest.raises(LossScaleError, match=r"GradScaler.*pass scaler="):    # no targets: named first
        _loop(model, opt, sched, make_criterion("softmax_ce"), batches(X, y, 64, seed=0)[:3],
              scaler=torch.amp.GradScaler("cpu"))


# -- 2. sequences ---------------------------------------------------------------------------------
def _gpt(tie=False, V=13, T=8, seed=0):
    torch.manual_seed(seed)
    return get_model("tiny_gpt", input_shape=(T,), num_outputs=V, n_layer=1, n_embd=32, tie_weights=tie)


def _tokens(B=8, T=8, V=13, pad=3, soft=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    y[:, :pad] = -100                                  # padding: ignored by cross_entropy
    return x, y


def test_sequence_logits_with_padding_count_only_the_scored_tokens_and_strict_holds_200_steps():
    model = _gpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=13, bound="strict", recompute="step")
    crit = sched.wrap_loss(lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)))
    data = [_tokens(seed=s) for s in range(200)]
    got = _loop(model, opt, sched, crit, data)
    assert len(got) == 200
    assert {r["m"] for r in got} == {8 * (8 - 3)}               # B·T minus the padded positions
    assert all(r["grad_last"] <= r["L_strict"] * (1 + 1e-6) for r in got)
    assert max(r["grad_last"] / r["L_strict"] for r in got) > 0.05    # not vacuous


def test_without_targets_m_is_every_position_and_the_check_still_runs():
    model = _gpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=13, bound="strict", recompute="step")
    x, y = _tokens(pad=0)
    F.cross_entropy(model(x).reshape(-1, 13), y.reshape(-1)).backward()    # loss inside the user's code
    opt.step()
    with pytest.warns(RuntimeWarning, match="sees no targets"):
        sched.step()
        assert sched.last_record["m"] == 64


def test_a_tied_lm_head_is_measured_by_its_own_use_and_named():
    tied = _gpt(tie=True)
    twin = _gpt(tie=False)                                # the same weights, untied: the oracle
    twin.load_state_dict({k: v for k, v in tied.state_dict().items()}, strict=False)
    twin.transformer.wte.weight = nn.Parameter(tied.lm_head.weight.detach().clone())
    twin.lm_head.weight = nn.Parameter(tied.lm_head.weight.detach().clone())
    x, y = _tokens()
    F.cross_entropy(twin(x).reshape(-1, 13), y.reshape(-1)).backward()
    own = twin.lm_head.weight.grad.abs().max().item()
    both = (twin.lm_head.weight.grad + twin.transformer.wte.weight.grad).abs().max().item()
    opt = torch.optim.SGD(tied.parameters(), lr=0.01)
    sched = LipschitzLR(opt, tied, "softmax_ce", num_classes=13, bound="strict", recompute="step")
    crit = sched.wrap_loss(lambda out, t: F.cross_entropy(out.reshape(-1, 13), t.reshape(-1)))
    crit(tied(x), y).backward()
    opt.step()
    sched.step()
    rec = sched.last_record
    assert rec["grad_last"] == pytest.approx(own, rel=1e-5) and abs(own - both) > 1e-3 * both
    assert "lm_head" in rec["grad_layers"]


def test_soft_targets_are_checked_and_the_strict_bound_holds():
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
    crit = sched.wrap_loss(lambda out, t: F.cross_entropy(out, t))     # torch takes probabilities
    g = torch.Generator().manual_seed(0)
    data = []
    for x_, y_ in batches(X, y, 64, seed=0)[:30]:                     # mixup
        lam = float(torch.rand((), generator=g))
        perm = torch.randperm(len(y_), generator=g)
        t = lam * F.one_hot(y_, 10).float() + (1 - lam) * F.one_hot(y_[perm], 10).float()
        data.append((lam * x_ + (1 - lam) * x_[perm], t))
    got = _loop(model, opt, sched, crit, data)
    assert len(got) == len(data) and all(r["grad_last"] <= r["L_strict"] * (1 + 1e-6) for r in got)
    sched2 = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
    with pytest.raises(LossScaleError, match="3 times"):             # and the exact check reads them
        _loop(model, opt, sched2, sched2.wrap_loss(lambda out, t: 3 * F.cross_entropy(out, t)), data[:2])


# -- 4. label smoothing, class weights; 5. a scaled loss without targets; 6. momentum -------------
def _one_step(crit, *, wrap=True, loss="softmax_ce", **kw):
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, **kw)
    sched = LipschitzLR(opt, model, loss, num_classes=10, bound="strict", recompute="step",
                        eps=0.1 if loss == "label_smoothed_ce" else None)
    return _loop(model, opt, sched, sched.wrap_loss(crit) if wrap else crit, batches(X, y, 64, seed=0)[:3])


def test_label_smoothing_is_named_with_its_eps():
    with pytest.raises(LossScaleError, match=r"label_smoothed_ce.*eps=0\.1"):
        _one_step(lambda out, t: F.cross_entropy(out, t, label_smoothing=0.1))
    with pytest.raises(ValueError, match=r"loss='label_smoothed_ce', eps=0\.1"):
        _one_step(nn.CrossEntropyLoss(label_smoothing=0.1))
    assert len(_one_step(nn.CrossEntropyLoss(label_smoothing=0.1), loss="label_smoothed_ce")) == 3


def test_class_weights_get_one_clear_error():
    w = torch.linspace(0.9, 1.1, 10)
    with pytest.raises(ValueError, match=r"weight=\.\.\.\).*drop weight="):
        _one_step(nn.CrossEntropyLoss(weight=w))
    with pytest.raises(LossScaleError, match="weight="):             # a functional weight: the residual
        _one_step(lambda out, t: F.cross_entropy(out, t, weight=torch.linspace(0.2, 5.0, 10)))


def test_a_loss_times_1000_without_wrap_loss_is_caught():
    with pytest.raises(LossScaleError, match=r"reaches .* times the most the bound allows"):
        _one_step(lambda out, t: 1000 * F.cross_entropy(out, t), wrap=False)


def test_momentum_with_the_sgd_rate_warns_once_and_names_the_fix():
    with pytest.warns(RuntimeWarning, match="variant_optimizer='momentum'") as seen:
        _one_step(make_criterion("softmax_ce"), momentum=0.9)
    assert sum("momentum=0.9" in str(w.message) for w in seen) == 1


# -- 7. the last records -----------------------------------------------------------------------------
LOOP = textwrap.dedent('''
    import sys, torch
    sys.path.insert(0, "tests")
    from train_helpers import batches, dataset, mlp
    from lipschitz_lab import LipschitzLR
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
    sched.subscribe(lambda r: print("record", r["step"], flush=True))
    crit = sched.wrap_loss(torch.nn.functional.cross_entropy)
    for x_, y_ in batches(X, y, 64, seed=0)[:LAST]:
        crit(model(x_), y_).backward(); opt.step(); sched.step(); opt.zero_grad()
    ''')


def test_a_loop_that_never_flushes_gets_its_last_records_at_exit():
    out = subprocess.run([sys.executable, "-c", LOOP.replace("LAST", "28")], capture_output=True, text=True,
                         timeout=120)
    steps = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("record")]
    assert steps == list(range(28)), out.stderr            # 28 records, the last 27 delivered at exit


def test_an_error_in_the_last_records_is_raised_at_epoch_end():
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    data = batches(X, y, 64, seed=0)[:5]
    for i, (x_, y_) in enumerate(data):
        crit(model(x_ * (math.nan if i == 4 else 1.0)), y_).backward()
        opt.step()
        sched.step()                                   # no flush: step 4 is still on the device
        opt.zero_grad()
    with pytest.raises(DivergenceError, match="step 4"):
        sched.epoch_end()
