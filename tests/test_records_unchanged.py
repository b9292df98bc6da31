"""The device-side statistics (issue 11) changed how a step is computed, not what it records.

``tests/data/records_before_device_stats.json`` holds the records of eleven runs
made by the trainer as it was before (commit 365808f: host floats, one sync per
step), on the CPU with fixed seeds: every bound variant, per epoch and per step,
the follow-up paper's momentum and Adam rates, mse/bce/label smoothing, the
paper's fixed run, a collapse, two divergences and a constant-rate baseline.
The same configs must give the same records today: the rates and every
statistic exactly, and the sums that moved to the device (the epoch's mean loss
and accuracy) within 1e-6 relative; the same status, and the same divergence
step and message.
"""
import json
from pathlib import Path

import pytest
import torch

from lipschitz_lab.runs import RunStore
from lipschitz_lab.trainer import train

GOLDEN = json.loads((Path(__file__).parent / "data" / "records_before_device_stats.json").read_text())
EXACT = {"lr", "lr_next", "K_z", "K_z_rate", "L", "L_rate", "L_paper", "L_corrected", "L_strict", "grad_last",
         "grad_layers", "w_max", "m", "k", "K_a", "y_norm", "loss", "clamped", "step", "epoch", "kind", "bound",
         "kz", "kz_mode", "rate_source", "lam", "K_z_frobenius", "K_z_max_abs", "variant_optimizer"}
SUMS = {"acc", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}


@pytest.fixture
def one_thread():
    """The golden runs used one thread (a matmul's summation order depends on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_records_equal_the_records_of_the_host_float_trainer(tmp_path, name, one_thread):
    case = GOLDEN[name]
    run = train(case["config"], store=tmp_path / "s.db", progress=False)
    assert (run.status, run.reason, run.steps) == (case["status"], case["reason"], case["steps"])
    got = RunStore(tmp_path / "s.db").records(run.run_id)
    assert len(got) == len(case["records"])
    for want, rec in zip(case["records"], got):
        for key, value in want.items():
            if key in EXACT:
                assert rec[key] == value, (rec["kind"], rec.get("step"), key)
            elif key in SUMS and value is not None:
                assert rec[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (rec["kind"], key)
