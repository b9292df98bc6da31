"""benchmarks/gpu_checks.py in smoke mode (tiny sizes, fake images, the CPU): the prepared GPU
script runs every step end to end, so a lent GPU's few minutes are not lost to a broken script.

The nested pytest step is left out here (it would run pytest inside pytest); the script's own
``--smoke`` run includes it as ``--collect-only``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = "env,sync,overhead,recipes,epoch,mnist,compile"


@pytest.mark.slow
def test_gpu_checks_smoke_runs_every_step(tmp_path):
    p = subprocess.run([sys.executable, "benchmarks/gpu_checks.py", "--smoke", "--out", str(tmp_path),
                        "--only", STEPS], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert sorted(results) == sorted(STEPS.split(","))
    failed = {name: r["error"] for name, r in results.items() if "error" in r}
    assert not failed, failed
    # the sync windows ran and found no host read between flushes (on the CPU: patched methods)
    sync = results["sync"]
    assert sync["pass"] and len(sync["loops"]) == 3 and sync["trainer"]["steps"] == 6
    assert sync["census"]["per_step_between_flushes"] == 0
    # every loop of the overhead comparison was timed in every round
    for model in ("mnist_cnn", "resnet20"):
        modes = results["overhead"][model]["modes"]
        assert set(modes) == {"sgd", "lipschitz_epoch", "lipschitz_step", "smooth_step"}
        assert all(len(m["ms_all"]) == 2 for m in modes.values())
    # the trainer's runs finished, the compiled one through dynamo (backend "eager" on the CPU)
    assert results["epoch"]["status"] == results["compile"]["status"] == "finished"
    assert len(results["epoch"]["epoch_s"]) == 2 and results["compile"]["unique_graphs"] >= 1
    assert results["mnist"]["strict"]["status"] == "finished"
    # the recipes: each timed with and without LipschitzLR; on the CPU nothing but the reads of a
    # float rate (for-loop SGD, foreach Adam: one per step with a per-step rate, none per epoch)
    recipes = results["recipes"]["recipes"]
    assert set(recipes) == {"fused_sgd", "plain_sgd", "adam_unfused", "fp16_gradscaler", "bf16"}
    for name, r in recipes.items():
        if name != "fp16_gradscaler":
            own = r["census_none"]["syncs_per_step"]       # Adam reads its step count itself
            assert r["ms_with"] > 0 and r["census_epoch"]["syncs_per_step"] == own, (name, r)
    summary = (tmp_path / "summary.md").read_text()
    for heading in ("## No host sync per step", "## Probe + LipschitzLR cost", "## The recipes", "## ResNet-20 epoch",
                    "## The paper's MNIST run"):
        assert heading in summary
    assert "Not measured" not in summary


@pytest.fixture(scope="module")
def gpu_checks():
    """The script as a module (it puts benchmarks/ on sys.path for its helpers)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_checks
    return gpu_checks


def test_gpu_checks_refuses_to_run_without_a_gpu_or_smoke(gpu_checks, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run for minutes")
    assert gpu_checks.main(["--out", str(tmp_path)]) == 2
    assert "--smoke" in capsys.readouterr().err


def test_gpu_checks_rejects_an_unknown_step(gpu_checks, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_checks.parse(["--smoke", "--out", str(tmp_path), "--only", "env,nonsense"])
    assert exc.value.code == 2 and "nonsense" in capsys.readouterr().err


def test_tile_repeats_the_images_in_order(gpu_checks):
    import _gpu_data
    x = torch.arange(3, dtype=torch.uint8).reshape(3, 1, 1, 1)
    tx, ty = _gpu_data.tile(x, torch.tensor([0, 1, 2]), 7)
    assert tx.flatten().tolist() == [0, 1, 2, 0, 1, 2, 0] and ty.tolist() == [0, 1, 2, 0, 1, 2, 0]
