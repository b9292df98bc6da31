"""benchmarks/bench_race_curvature.py: the race's "β against the measured curvature".

Its Hessian eigenvalue is checked against the dense Hessian's (torch.autograd.functional.hessian
and eigvalsh), including a loss whose dominant eigenvalue is negative; a short run on digits
checks what its rows say against the lab's own bound (Lanczos: the top eigenvalue, not the dominant one).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def curvature():
    spec = importlib.util.spec_from_file_location("bench_race_curvature", ROOT / "benchmarks" / "bench_race_curvature.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dense_top(f, x: torch.Tensor) -> float:
    H = torch.autograd.functional.hessian(f, x)
    return torch.linalg.eigvalsh(H.reshape(x.numel(), x.numel())).max().item()


@pytest.mark.parametrize("negative", [False, True])
def test_the_top_eigenvalue_is_the_dense_hessians_largest(curvature, negative):
    torch.manual_seed(0)
    Q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    # eigenvalues 3, 1, 0.5, 0, -0.5 and -2 (or -8: then the dominant one is negative)
    D = torch.tensor([3.0, 1.0, 0.5, 0.0, -0.5, -8.0 if negative else -2.0], dtype=torch.float64)
    M = Q @ torch.diag(D) @ Q.T
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def f(x):
        return 0.5 * x @ M @ x + torch.sin(x).sum() * 1e-3

    got = curvature.top_eigenvalue(lambda: f(x), [x], iters=50)
    assert got == pytest.approx(_dense_top(f, x.detach()), rel=1e-6)
    assert got == pytest.approx(3.0, abs=1e-2)


def test_a_short_run_on_digits_measures_below_the_bound(curvature, tmp_path):
    out = tmp_path / "curvature.json"
    assert curvature.main(["--preset", "digits-quick", "--policy", "lipschitz-smooth-step-sgd", "--epochs", "1",
                           "--steps", "0", "5", "--iters", "20", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 5]
    for r in rows:
        # the last layer's block is a principal submatrix: its top eigenvalue is at most the whole one's
        assert 0 < r["lam_last"] <= r["lam_all"] * (1 + 1e-3)
        # ... and at most β, the lab's bound on that block (the Hessian at this step's weights and batch)
        assert r["lam_last"] <= r["beta"] * (1 + 1e-6)
        assert r["lr*lam_all"] == pytest.approx(r["lr"] * r["lam_all"])


def test_measuring_leaves_the_run_as_it_was(curvature, tmp_path):
    """The measuring forwards are unseen by the probe: step 5's β and rate are the same
    whether step 0 was measured too or not."""
    rows = []
    for steps in (["5"], ["0", "5"]):
        out = tmp_path / f"c{len(steps)}.json"
        curvature.main(["--preset", "digits-quick", "--policy", "lipschitz-smooth-step-sgd", "--epochs", "1",
                        "--steps", *steps, "--iters", "5", "--out", str(out)])
        rows.append(json.loads(out.read_text())["rows"][-1])
    assert rows[0]["step"] == rows[1]["step"] == 5
    assert rows[0]["beta"] == rows[1]["beta"] and rows[0]["lr"] == rows[1]["lr"]


@pytest.mark.parametrize("policy", ["lipschitz-strict-epoch-sgd", "schedulefree-sgd"])
def test_the_measured_run_is_the_trainers_run(curvature, tmp_path, policy):
    """Across an epoch boundary (the per-epoch rate's renewal, Schedule-Free's train/eval), the
    script's rate at a measured step is the one the trainer's own run records at that step."""
    from lipschitz_lab.studies.spec import select, study_preset
    from lipschitz_lab.trainer import train
    spec = study_preset("digits-quick").replace(seeds=[0], policies=select([policy]), base_overrides={"epochs": 2})
    (plan,) = spec.runs()
    records = []
    train({**plan.config, "checkpoint": False}, subscribers=[records.append], progress=False)
    steps = [r for r in records if r.get("kind") == "step"]
    per_epoch = 1 + max(r["step"] for r in steps if r["epoch"] == 0)
    at = [1, per_epoch + 2]
    out = tmp_path / "c.json"
    curvature.main(["--preset", "digits-quick", "--policy", policy, "--epochs", "2",
                    "--steps", *map(str, at), "--iters", "5", "--out", str(out)])
    got = {r["step"]: r["lr"] for r in json.loads(out.read_text())["rows"]}
    want = {r["step"]: r["lr"] for r in steps if r["step"] in at}
    assert sorted(got) == at and got == pytest.approx(want, rel=1e-12)
