"""The command line: derive, lr, and one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest
import sympy as sp

PAPER_CIFAR = ["lr", "--loss", "softmax_ce", "--kz", "206.695", "--classes", "10", "--batch-size",
               "128", "--weight-decay", "1e-3", "--max-weight-norm", "43.257"]


def test_derive_json(cli):
    code, out, _ = cli("derive", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"mse", "bce", "softmax_ce", "label_smoothed_ce"}
    for name in ("mse", "bce", "softmax_ce"):
        assert data[name]["paper_holds"] is False and data[name]["witness"]
        sp.sympify(data[name]["paper_bound"]), sp.sympify(data[name]["corrected_bound"])
    assert data["label_smoothed_ce"]["paper_bound"] is None
    assert sp.simplify(sp.sympify(data["softmax_ce"]["corrected_bound"]) - sp.sympify("K_z/m")) == 0


def test_lr_paper_and_corrected(cli):
    code, out, _ = cli(*PAPER_CIFAR, "--bound", "paper")
    assert code == 0 and out.strip() == "0.668"
    code, out, _ = cli(*PAPER_CIFAR, "--bound", "corrected")
    assert code == 0 and out.strip() == "0.603"   # 1/(206.695/128 + 1e-3*43.257)
    code, out, _ = cli("lr", "--loss", "mse", "--kz", "2", "--ka", "3", "--y-norm", "1", "-m", "8",
                       "--bound", "corrected")
    assert code == 0 and out.strip() == "1.000"   # 1/(2*(3+1)/8)


@pytest.mark.parametrize("argv,field", [
    (["lr", "--loss", "nope", "--kz", "1", "-m", "2"], "loss"),
    (["lr", "--loss", "softmax_ce", "--kz", "1", "-m", "0", "-k", "10"], "batch-size"),
    (["lr", "--loss", "softmax_ce", "--kz", "1", "-m", "-5", "-k", "10"], "batch-size"),
    (["lr", "--loss", "softmax_ce", "--kz", "1", "-m", "8", "-k", "1"], "classes"),
    (["lr", "--loss", "softmax_ce", "--kz", "abc", "-m", "8", "-k", "3"], "kz"),
    (["lr", "--loss", "softmax_ce", "--kz", "0", "-m", "8", "-k", "3"], "kz"),
    (["lr", "--loss", "mse", "--kz", "1", "-m", "8"], "ka"),
    (["derive", "--loss", "hinge"], "hinge"),
])
def test_bad_input_is_one_line_exit_2(cli, argv, field):
    code, out, err = cli(*argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in err


def test_console_script_and_module_entry(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lipschitz_lab", *PAPER_CIFAR],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "0.668"
    bad = subprocess.run([sys.executable, "-m", "lipschitz_lab", "lr", "--loss", "x", "--kz", "1", "-m", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_derive_write(cli, tmp_path):
    code, _, _ = cli("derive", "--write", tmp_path)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bce.md", "label_smoothed_ce.md", "mse.md", "softmax_ce.md"]
