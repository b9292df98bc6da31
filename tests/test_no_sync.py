"""No host sync per step (issue 11): between two flushes of the record log, a training step
calls none of the methods that make the host wait for the device.

On the CPU nothing waits, so the test counts the calls themselves: ``Tensor.item``,
``tolist``, ``__float__``, ``__int__``, ``__bool__``, ``__index__``, ``cpu`` and
``numpy`` are patched to count while a step runs, and not while the log flushes.
On CUDA (when a device is lent) the same steps run under
``torch.cuda.set_sync_debug_mode("error")``.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from lipschitz_lab import LipschitzLR
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.scheduler import EMAOptions
from lipschitz_lab.steplog import StepLog
from train_helpers import batches, dataset, mlp

SYNCING = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


class SyncCounter:
    """Counts the syncing Tensor methods while ``active`` and not inside a StepLog flush."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.active = False
        self._flushing = 0
        for name in SYNCING:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))
        flush = StepLog.flush

        def counted_flush(log, *a, **k):
            self._flushing += 1
            try:
                return flush(log, *a, **k)
            finally:
                self._flushing -= 1
        monkeypatch.setattr(StepLog, "flush", counted_flush)

    def _wrap(self, name, original):
        def method(t, *a, **k):
            if self.active and not self._flushing:
                self.calls.append(name)
            return original(t, *a, **k)
        return method

    @contextlib.contextmanager
    def counting(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.01, weight_decay=1e-4),
              "momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
              "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, weight_decay=1e-4),
              "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3)}


@pytest.mark.parametrize("loss,bound,recompute,variant", [
    ("softmax_ce", "paper", "epoch", "sgd"), ("softmax_ce", "strict", "step", "sgd"),
    ("softmax_ce", "corrected", "step", "momentum"), ("softmax_ce", "strict", "step", "adam"),
    ("softmax_ce", "strict", "step", "rmsprop"), ("softmax_ce", "smooth", "step", "momentum"),
    ("mse", "corrected", "step", "sgd"), ("bce", "strict", "epoch", "sgd")])
def test_lipschitz_lr_steps_make_no_host_sync_between_flushes(monkeypatch, loss, bound, recompute, variant):
    name = {"softmax_ce": "digits", "mse": "diabetes", "bce": "breast_cancer"}[loss]
    X, y = dataset(name)
    model = mlp(X.shape[1], 10 if loss == "softmax_ce" else 1)
    opt = OPTIMIZERS[variant](model.parameters())
    sched = LipschitzLR(opt, model, loss, num_classes=10 if loss == "softmax_ce" else None, bound=bound,
                        recompute=recompute, variant_optimizer=variant, ema=EMAOptions(),
                        flush_every=1000)
    crit = sched.wrap_loss(make_criterion(loss))
    got = []
    sched.subscribe(got.append)
    counter = SyncCounter(monkeypatch)
    data = batches(X, y, 32, seed=0)
    steps = 0
    for epoch in range(2):
        for x_, y_ in data[:30]:
            with counter.counting():                 # the whole step, the loss-scale checks included
                crit(model(x_), y_).backward()
                opt.step()
                sched.step()
                opt.zero_grad()
            steps += 1
        with counter.counting():   # delivers the epoch's records (the flush's one wait, not counted),
            sched.epoch_end()      # then the per-epoch rate, on the device too
    # Adam keeps its step count in a CPU tensor and reads it with .item() (on CUDA too, where it is
    # no device sync): count what the same loop does with no scheduler, and require nothing more
    assert counter.calls == _baseline(monkeypatch, X, y, variant, loss), sorted(set(counter.calls))
    sched.flush()                                    # and the records are all there, in order
    assert [r["step"] for r in got] == list(range(steps))
    assert sched.log.delivered == steps


def _baseline(monkeypatch, X, y, variant, loss) -> list[str]:
    """The syncs of the same steps without LipschitzLR (the optimizer's own)."""
    model = mlp(X.shape[1], 10 if loss == "softmax_ce" else 1)
    opt = OPTIMIZERS[variant](model.parameters())
    crit = make_criterion(loss)
    counter = SyncCounter(monkeypatch)
    for epoch in range(2):
        for x_, y_ in batches(X, y, 32, seed=0)[:30]:
            with counter.counting():
                crit(model(x_), y_).backward()
                opt.step()
                opt.zero_grad()
    return counter.calls


def test_the_trainers_step_makes_no_host_sync_between_flushes(monkeypatch, tmp_path):
    from lipschitz_lab.training import steps as steps_mod
    from lipschitz_lab.trainer import train
    counter = SyncCounter(monkeypatch)
    original = steps_mod.train_step

    def counted(*a, **k):
        with counter.counting():
            return original(*a, **k)
    monkeypatch.setattr(steps_mod, "train_step", counted)
    monkeypatch.setattr("lipschitz_lab.trainer.train_step", counted)
    run = train(dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=64, epochs=2, bound="strict",
                     recompute="step", flush_every=8), store=tmp_path / "s.db", progress=False)
    assert run.status == "finished" and run.steps == 2 * 21
    assert counter.calls == [], sorted(set(counter.calls))


def test_the_counter_sees_a_sync():
    """The check can fail: a step that reads the loss with .item() is counted."""
    mp = pytest.MonkeyPatch()
    try:
        counter = SyncCounter(mp)
        with counter.counting():
            torch.ones(2).sum().item()
            float(torch.ones(()))
        assert counter.calls == ["item", "__float__"]
    finally:
        mp.undo()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_steps_raise_nothing_under_sync_debug_mode_error():
    X, y = dataset("digits")
    model = mlp(64, 10).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, fused=True, momentum=0.9)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step",
                        flush_every=1000)
    crit = sched.wrap_loss(make_criterion("softmax_ce"))
    data = [(x_.cuda(), y_.cuda()) for x_, y_ in batches(X, y, 64, seed=0)]
    x_, y_ = data[0]
    crit(model(x_), y_).backward(); opt.step(); sched.step(); opt.zero_grad()   # noqa: E702 (flushed at once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x_, y_ in data[1:]:
            crit(model(x_), y_).backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(sched.flush()) == len(data) - 1


def test_flush_every_one_delivers_every_record_at_once():
    X, y = dataset("digits")
    model = mlp(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, flush_every=1)
    got = []
    sched.subscribe(got.append)
    crit = sched.wrap_loss(nn.functional.cross_entropy)
    for i, (x_, y_) in enumerate(batches(X, y, 64, seed=0)[:5]):
        crit(model(x_), y_).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        assert [r["step"] for r in got] == list(range(i + 1))
