"""NaN or inf ends a run as ``diverged`` at the step where it happened, with every record
before it kept, wherever it first shows (issue 10, item 5): the first step, the middle of an
epoch, an epoch's last step (where it also reaches the epoch's rate), and evaluation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipschitz_lab.models import MODELS
from lipschitz_lab.models.registry import register_model
from lipschitz_lab.runs import RunStore
from lipschitz_lab.trainer import train

STEPS_PER_EPOCH = 11           # digits: 1294 training images in batches of 128


class Poison(nn.Module):
    """NaN (or inf) activations at the ``at``-th training forward, or at every eval forward."""

    def __init__(self, at: int | None, value: float, in_eval: bool):
        super().__init__()
        self.at, self.value, self.in_eval, self.calls = at, value, in_eval, 0

    def forward(self, x):
        if not self.training:
            return x * self.value if self.in_eval else x
        self.calls += 1
        return x * self.value if self.calls == self.at else x


@pytest.fixture(scope="module", autouse=True)
def poisoned_model():
    def build(input_shape, num_outputs, *, at=None, value=math.nan, in_eval=False):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 32), nn.ReLU(),
                             Poison(at, value, in_eval), nn.Linear(32, num_outputs))
    register_model("poisoned_mlp", build)
    yield
    MODELS.pop("poisoned_mlp")


def run(tmp_path, recompute="epoch", **model_options):
    cfg = dict(dataset="digits", model="poisoned_mlp", loss="softmax_ce", batch_size=128, epochs=3,
               bound="strict", recompute=recompute, model_options=model_options)
    result = train(cfg, store=tmp_path / "s.db", progress=False)
    store = RunStore(tmp_path / "s.db")
    return result, store.get_run(result.run_id), store.records(result.run_id)


@pytest.mark.parametrize("recompute", ["epoch", "step"])
@pytest.mark.parametrize("at_step", [0, 5, STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH + 3])
def test_a_nan_ends_the_run_as_diverged_at_its_step(tmp_path, recompute, at_step):
    result, info, records = run(tmp_path, recompute, at=at_step + 1)
    assert result.status == info["status"] == "diverged"
    assert result.reason == f"step {at_step}: loss is nan"           # the loss is checked first
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(at_step)) and result.steps == at_step
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["lr"]) for r in steps)
    epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
    assert epochs == list(range(at_step // STEPS_PER_EPOCH))         # the bad step's epoch never ends


def test_an_inf_gradient_on_an_epochs_last_step_is_diverged_not_failed(tmp_path, monkeypatch):
    """The last step's statistics feed the epoch's rate (recompute="epoch"): today's trainer
    failed there with a ValueError from the rate; the step itself must be the verdict."""
    last = STEPS_PER_EPOCH - 1
    state = {"step": 0}
    original = nn.Linear.forward

    def forward(self, x):
        out = original(self, x)
        if self.out_features == 10 and self.training and out.requires_grad:
            if state["step"] == last:
                out.register_hook(lambda g: g * math.inf)
            state["step"] += 1
        return out
    monkeypatch.setattr(nn.Linear, "forward", forward)
    result, info, records = run(tmp_path)
    assert (result.status, info["status"]) == ("diverged", "diverged")
    assert result.reason.startswith(f"step {last}: gradient of ") and result.reason.endswith(("nan", "inf"))
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(last))


def test_weights_blown_up_by_the_last_update_end_in_evaluation_as_diverged(tmp_path):
    cfg = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=128, epochs=2,
               lr_policy="constant", lr=1e38, max_steps=STEPS_PER_EPOCH)
    result = train(cfg, store=tmp_path / "s.db", progress=False)
    assert result.status == "diverged", result.reason
    assert "nan" in result.reason or "inf" in result.reason


def test_a_nan_in_evaluation_is_diverged_at_the_epochs_end(tmp_path):
    result, info, records = run(tmp_path, in_eval=True)
    assert (result.status, info["status"]) == ("diverged", "diverged")
    assert result.reason == "epoch 0: val_loss is nan"
    assert len([r for r in records if r["kind"] == "step"]) == STEPS_PER_EPOCH == result.steps
    assert [r for r in records if r["kind"] == "epoch"] == []


def test_inf_activations_end_the_run_at_their_step(tmp_path):
    result, _, records = run(tmp_path, "step", at=4, value=math.inf)    # inf·0 from the ReLU: nan
    assert result.status == "diverged" and result.reason in ("step 3: loss is nan", "step 3: loss is inf")
    assert [r["step"] for r in records if r["kind"] == "step"] == [0, 1, 2]
