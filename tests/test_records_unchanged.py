"""What a step records does not depend on how the step is computed, and not on the machine.

1. **The same run, two code paths.**  LipschitzLR keeps its statistics on the device and
   decodes its records in batches; ``tests/reference_step.py`` is the host-float step it
   replaced (every number a Python float, read at once).  Both run in the same loop on the
   same tensors, so they must agree **exactly** on any CPU: the BLAS-dependent numbers
   (activations, gradients) are their shared input, not what is compared.  Twelve configs:
   every bound and both K_z definitions, per epoch and per step, the follow-up paper's
   momentum, RMSprop and Adam rates, mse/bce/label smoothing, the fixed run, the smooth rate
   with and without momentum, a collapse and a divergence.
2. **The historical trainer.**  ``tests/data/records_before_device_stats.json`` holds the
   records of eleven runs of the trainer before the device statistics (commit 365808f, on the
   CI machine).  Another CPU rounds a float32 matmul differently (a review's AVX-512 machine:
   ``grad_last`` 0.051160555 against 0.051160552 at step 0), and training amplifies the
   difference (``ATEN_CPU_CAPABILITY=default`` here moved an RMSprop run's step-22 gradient by
   70 %).  So only what no rounding moves is compared exactly (status, reason, steps, the
   divergence step), and the first step's statistics, one forward and backward from the seeded
   weights, to rel 1e-6: about 8 float32 ulps, where the measured differences are 1-2 ulps.
   Setting one thread (``one_thread``) fixes the summation order on this machine only; it
   does not make a run portable.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.runs import RunStore
from lipschitz_lab.trainer import train
from lipschitz_lab.training.setup import build
from reference_step import ReferenceLR

GOLDEN = json.loads((Path(__file__).parent / "data" / "records_before_device_stats.json").read_text())

BASE = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=128, epochs=2, kz="frobenius",
            recompute="epoch", bound="paper", min_lr=1e-6, max_lr=10.0, optimizer="sgd", flush_every=1)
#: the trainer's own configs (its data, model and LipschitzLR), every field that matters explicit
CASES = {
    "paper_epoch": dict(BASE, max_lr=0.5, weight_decay=1e-4),
    "strict_step_max_abs": dict(BASE, bound="strict", recompute="step", kz="max_abs"),
    "momentum_step": dict(BASE, bound="corrected", recompute="step", optimizer="momentum", weight_decay=1e-3,
                          max_lr=1.0),
    "adam_step": dict(BASE, bound="strict", recompute="step", optimizer="adam", weight_decay=1e-3),
    "rmsprop_epoch": dict(BASE, bound="strict", optimizer="rmsprop", weight_decay=1e-3),
    "mse_step": dict(BASE, dataset="diabetes", loss="mse", batch_size=32, bound="corrected", recompute="step"),
    "bce_epoch": dict(BASE, dataset="breast_cancer", loss="bce", batch_size=32, bound="strict"),
    "ls_ce_fixed": dict(BASE, loss="label_smoothed_ce", epochs=3, bound="corrected", fixed_after=1),
    "paper_collapses": dict(BASE, batch_size=64),
    "scaled_diverges": dict(BASE, batch_size=64, epochs=3, lr_scale=60.0, max_lr=1000.0, recompute="step"),
    "smooth_step": dict(BASE, bound="smooth", recompute="step"),
    "smooth_momentum_epoch": dict(BASE, bound="smooth", optimizer="momentum", weight_decay=1e-4),
}


def _pair(name):
    """The trainer's setup for a case, and a reference step on the same model and optimizer."""
    cfg = CASES[name]
    setup = build(cfg)
    sched, opt = setup.policy.scheduler, setup.policy.optimizer
    momentum = 0.9 if cfg["optimizer"] == "momentum" else 0.0
    ref = ReferenceLR(setup.model, opt, cfg["loss"], k=setup.splits.num_classes, bound=cfg["bound"], kz=cfg["kz"],
                      recompute=cfg["recompute"], fixed_after=cfg.get("fixed_after"), min_lr=cfg["min_lr"],
                      max_lr=cfg["max_lr"], variant=cfg["optimizer"], momentum=momentum)
    return setup, ref, sched, opt


def _same(got, want, where):
    for key, value in want.items():
        assert got[key] == value, (*where, key, got[key], value)   # exact: same inputs, same float math


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_device_step_records_what_the_host_float_step_computes(name):
    setup, ref, sched, opt = _pair(name)
    got, compared = [], 0
    sched.subscribe(got.append)
    for epoch in range(CASES[name]["epochs"]):
        setup.train_loader.set_epoch(epoch)
        for x_, y_ in setup.train_loader:
            ref.observe(y_)
            setup.crit(setup.model(x_), y_).backward()      # the wrapped criterion: the scheduler observes
            ref.before_step()
            opt.step()
            want = ref.step()
            try:
                sched.step()                     # flush_every=1: the record, or the divergence, now
            except DivergenceError as exc:
                bad = [v for v in (want["K_z"], ref.stats["K_a"], want["grad_last"], want["w_max"])
                       if not math.isfinite(v)]
                assert bad and f"step {want['step']}" in str(exc)      # the first non-finite step
                assert compared == want["step"] and name == "scaled_diverges"
                return
            _same(got[-1], want, (name, want["step"]))
            compared += 1
            opt.zero_grad()
        sched.epoch_end()
        ref.epoch_end()
    assert compared == len(got) > 10 and name != "scaled_diverges"
    if name == "paper_collapses":
        assert sum(r["K_z"] == 0 for r in got) > 10         # the collapse is among what was compared


def test_the_oracle_can_fail():
    """A reference that differs in one number (the weight decay it reads) is caught."""
    setup, ref, sched, opt = _pair("paper_epoch")
    ref._lam = lambda: 2e-4
    x_, y_ = next(iter(setup.train_loader))
    setup.crit(setup.model(x_), y_).backward()
    ref.observe(y_)
    ref.before_step()
    opt.step()
    want = ref.step()
    sched.step()
    with pytest.raises(AssertionError):
        _same(sched.last_record, want, ("paper_epoch", 0))


@pytest.fixture
def one_thread():
    """One thread fixes a matmul's summation order on this machine; it does not make a run portable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: step-0 statistics of the historical trainer: float32 numbers from one forward and backward
FIRST_STEP = ("lr", "K_z", "L", "L_paper", "L_corrected", "L_strict", "grad_last", "w_max", "K_z_frobenius",
              "K_z_max_abs", "loss", "K_a", "y_norm")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_the_trainer_keeps_the_historical_outcomes(tmp_path, name, one_thread):
    case = GOLDEN[name]
    config = {"recompute": "epoch", "bound": "paper", "batch_size": 64, "epochs": 5, "kz": "frobenius",
              **case["config"]}           # the defaults of the time, explicit: today's may differ
    run = train(config, store=tmp_path / "s.db", progress=False)
    assert (run.status, run.reason, run.steps) == (case["status"], case["reason"], case["steps"])
    got = RunStore(tmp_path / "s.db").records(run.run_id)
    assert [r["kind"] for r in got] == [r["kind"] for r in case["records"]]
    first, want = got[0], case["records"][0]
    for key in FIRST_STEP:
        if want.get(key) is None:
            assert first.get(key) is None, key
        else:
            assert first[key] == pytest.approx(want[key], rel=1e-6, abs=1e-12), key
    assert first.get("clamped") == want.get("clamped") and first.get("m") == want.get("m")
