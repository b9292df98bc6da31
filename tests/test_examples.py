"""The examples run: the README's plain loop (its strict bound holds), the Lightning module
(every update uses the scheduler's 1/L, and the probe sits on the last Linear) and the GPT loop."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_plain_loop_example():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "plain_loop.py")],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = re.findall(r"loss ([\d.]+)\s+lr ([\d.]+).*grad_last ([\d.]+) <= L ([\d.]+)", out)
    assert len(rows) == 5
    assert float(rows[-1][0]) < float(rows[0][0])                     # it learns
    assert all(float(g) <= float(L) for _, _, g, L in rows)           # strict bound held


def _load_example(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_module_example_trains_at_the_schedulers_rate():
    pytest.importorskip("lightning")
    from torch import nn

    example = _load_example("lightning_module")
    model = example.main(epochs=2, max_steps=40)
    records = model.records
    assert len(records) == 40
    # the rate each update used, read off the optimizer, is the one LipschitzLR recorded ...
    assert model.lr_used == [r["lr"] for r in records]
    # ... and that is 1/L: the first from the first batch, then each step's from the step before
    assert records[0]["rate_source"] == "warm start" and records[0]["L_rate"] == records[0]["L"]
    for before, r in zip(records, records[1:]):
        assert r["clamped"] is None and r["L_rate"] == before["L"]
        assert r["lr"] == pytest.approx(1 / r["L_rate"], rel=1e-12)
    # the gradient it recorded is the one the update used (Lightning had not zeroed it yet)
    assert model.grad_seen == [r["grad_last"] for r in records]
    assert all(r["grad_last"] <= r["L"] for r in records)                 # the strict bound held
    # the probe sits on the model's last Linear
    probe = model.lr_schedulers().probe
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert probe.layer is last and probe.layer_name == name == "net.2"
    assert sum(model.losses[-10:]) < sum(model.losses[:10])              # it learns


def test_the_gpt_loop_example_learns_with_grad_scaler_accumulation_and_the_loss_in_forward():
    """examples/gpt_loop.py: tied weights, autocast, a GradScaler, two micro-batches, the loss inside
    forward (observe); m counts every token of both micro-batches and the strict bound holds."""
    example = _load_example("gpt_loop")
    out = example.main(steps=12)
    records = out["records"]
    assert len(records) == 12 and {r["m"] for r in records} == {example.ACCUM * example.BATCH * 32}
    assert all(r["grad_last"] <= r["L_strict"] * (1 + 1e-6) for r in records)
    assert "gpt.lm_head" in records[-1]["grad_layers"]              # the tied layer, by its own name
    assert out["val_after"] < out["val_before"]
