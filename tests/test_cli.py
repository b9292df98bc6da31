"""The command line: derive, lr, and one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest
import sympy as sp

PAPER_CIFAR = ["lr", "--loss", "softmax_ce", "--kz-value", "206.695", "--classes", "10", "--batch-size",
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
    code, out, _ = cli("lr", "--loss", "mse", "--kz-value", "2", "--ka", "3", "--y-norm", "1", "-m", "8",
                       "--bound", "corrected")
    assert code == 0 and out.strip() == "1.000"   # 1/(2*(3+1)/8)


@pytest.mark.parametrize("argv,field", [
    (["lr", "--loss", "nope", "--kz-value", "1", "-m", "2"], "loss"),
    (["lr", "--loss", "softmax_ce", "--kz-value", "1", "-m", "0", "-k", "10"], "batch-size"),
    (["lr", "--loss", "softmax_ce", "--kz-value", "1", "-m", "-5", "-k", "10"], "batch-size"),
    (["lr", "--loss", "softmax_ce", "--kz-value", "1", "-m", "8", "-k", "1"], "classes"),
    (["lr", "--loss", "softmax_ce", "--kz-value", "abc", "-m", "8", "-k", "3"], "kz-value"),
    (["lr", "--loss", "softmax_ce", "--kz-value", "0", "-m", "8", "-k", "3"], "kz-value"),
    (["lr", "--loss", "softmax_ce", "--kz", "abc", "-m", "8", "-k", "3"], "kz='abc'"),
    (["lr", "--loss", "softmax_ce", "-m", "8", "-k", "3"], "kz-value"),
    (["lr", "--loss", "softmax_ce", "--kz", "2", "--kz-value", "2", "-m", "8", "-k", "3"], "kz"),
    (["lr", "--loss", "mse", "--kz-value", "1", "-m", "8"], "ka"),
    (["derive", "--loss", "hinge"], "hinge"),
    (["train", "--dataset", "nope", "--epochs", "1"], "dataset='nope'"),
    (["train", "--loss-module", "no_such_file.py"], "no_such_file.py"),
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
    bad = subprocess.run([sys.executable, "-m", "lipschitz_lab", "lr", "--loss", "x", "--kz-value", "1", "-m", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_derive_write(cli, tmp_path):
    code, _, _ = cli("derive", "--write", tmp_path)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bce.md", "label_smoothed_ce.md", "mse.md", "softmax_ce.md"]


# -- help ------------------------------------------------------------------------------------
def _help(capsys, *argv) -> str:
    from lipschitz_lab.cli import main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())      # argparse wraps lines: unwrap them


def test_train_help_lists_every_choice_and_says_what_each_flag_means(capsys):
    import dataclasses

    from lipschitz_lab.cli.train import MEANINGS, _SKIP, field_comments
    from lipschitz_lab.choices import choices
    from lipschitz_lab.config import TrainConfig
    text = _help(capsys, "train")
    options_text = text.split("options:", 1)[1]
    for field, options in choices().items():
        flag = f"--{field.replace('_', '-')} {field.upper()} "
        after = options_text.split(flag, 1)[1]          # this flag's help comes first, with its choices
        assert after.split("one of: ", 1)[1].startswith(", ".join(options) + ";"), (flag, options)
    comments = field_comments()
    assert comments["bound"].startswith("a rigorous bound")            # read from config.py itself
    assert "default: $LIPSCHITZ_LAB_DATA" in text and "default: None" not in text
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        meaning = MEANINGS.get(f.name) or comments.get(f.name)
        assert meaning, f"--{f.name}: no meaning in cli/train.py MEANINGS and no comment in config.py"
        assert " ".join(meaning.split()) in text, f.name
    assert "``" not in text


def test_top_level_help_has_no_markup_and_lists_every_command(capsys):
    from lipschitz_lab.cli import SUBCOMMANDS
    text = _help(capsys)
    assert "``" not in text and "lipschitz-lab command" in text
    for name in SUBCOMMANDS:
        assert f" {name} " in text


def test_a_subcommand_module_that_does_not_import_fails_loudly(monkeypatch):
    from lipschitz_lab import cli as cli_module
    monkeypatch.setattr(cli_module, "SUBCOMMANDS", (*cli_module.SUBCOMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli_module.build_parser()


def test_lr_help_lists_the_losses_bounds_and_kz_definitions(capsys):
    from lipschitz_lab.choices import choices
    text = _help(capsys, "lr")
    for field in ("loss", "bound", "kz"):
        assert f"one of: {', '.join(choices()[field])}" in text


# -- lr: --kz-value is the number, --kz the definition (as in train) -------------------------------
def test_lr_kz_value_and_the_old_spelling(cli):
    code, out, err = cli(*PAPER_CIFAR)
    assert code == 0 and err == ""
    old = [("--kz" if a == "--kz-value" else a) for a in PAPER_CIFAR]
    code, out_old, err = cli(*old)
    assert code == 0 and out_old == out
    assert "deprecated" in err and "--kz-value 206.695" in err and len(err.strip().splitlines()) == 1
    # --kz names the definition: the strict bound differs between frobenius and max_abs
    base = ["lr", "--loss", "softmax_ce", "--kz-value", "4", "-m", "16", "-k", "10", "--bound", "strict", "-v"]
    rates = {d: cli(*base, "--kz", d)[1] for d in ("frobenius", "max_abs")}
    assert rates["frobenius"] != rates["max_abs"]
    assert cli(*base)[1] == rates["frobenius"]                             # the default, as in train


# -- runs ------------------------------------------------------------------------------------------
@pytest.fixture
def store_with_runs(tmp_path):
    from lipschitz_lab.runs import RunStore
    store = RunStore(tmp_path / "store.db")
    ids = {}
    for policy in ("lipschitz", "constant", "prodigy"):
        ids[policy] = store.create_run({"dataset": "digits", "model": "mlp", "lr_policy": policy, "bound": "paper"},
                                       name=policy)
        store.append_records(ids[policy], [{"kind": "step", "step": 0, "epoch": 0, "lr": 0.1}])
        store.set_status(ids[policy], "finished")
    return store, ids


def test_runs_list_shows_a_bound_only_for_lipschitz_runs(cli, store_with_runs):
    store, ids = store_with_runs
    code, out, _ = cli("runs", "--store", store.path, "list")
    assert code == 0
    head, *rows = out.splitlines()
    at = head.index("bound")
    bound = {line.split()[-1]: line[at:].split()[0] for line in rows}
    assert bound == {"lipschitz": "paper", "constant": "\u2014", "prodigy": "\u2014"}
    assert head.split()[-3:] == ["val_acc", "verdict", "name"]


def test_runs_export_refuses_a_missing_folder_as_cp_does(cli, store_with_runs, tmp_path):
    store, ids = store_with_runs
    target = tmp_path / "no" / "such" / "dir" / "x.csv"
    code, _, err = cli("runs", "--store", store.path, "export", ids["constant"], "-o", target)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(target.parent) in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "no").exists()                                   # no folder was created
    code, out, _ = cli("runs", "--store", store.path, "export", ids["constant"], "-o", tmp_path / "x.csv")
    assert code == 0 and (tmp_path / "x.csv").read_text().startswith("kind,step,epoch,lr")


def test_runs_honour_the_store_in_the_environment(cli, store_with_runs, monkeypatch):
    store, ids = store_with_runs
    monkeypatch.setenv("LIPSCHITZ_LAB_STORE", str(store.path))
    code, out, _ = cli("runs", "list")
    assert code == 0 and all(run_id in out for run_id in ids.values())


# -- train --loss-module ------------------------------------------------------------------------------
MY_LOSSES = """
import sympy as sp

from lipschitz_lab.symbolic import LossSpec, finite, real_line
from lipschitz_lab.symbolic.symbols import m, y, z

# a logistic loss with labels in {-1, +1}
logistic = LossSpec(name="logistic", title="Logistic loss, y in {-1, 1}",
                    loss=sp.log(1 + sp.exp(-y * z)) / m, wrt=z,
                    variables=(real_line(z, "logit"), finite(y, (-1, 1), "label")))
"""


@pytest.mark.slow
def test_train_with_a_loss_module_of_ones_own(tmp_path):
    (tmp_path / "my_losses.py").write_text(MY_LOSSES)
    db = tmp_path / "store.db"

    def train(*flags):
        return subprocess.run([sys.executable, "-m", "lipschitz_lab", "train", "--dataset", "breast_cancer",
                               "--epochs", "1", "--store", str(db), "--no-report", "--device", "cpu", *flags],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)

    out = train("--loss-module", "my_losses.py", "--loss", "logistic")       # the default bound: strict
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered logistic from my_losses.py" in out.stderr
    from lipschitz_lab.runs import RunStore
    (run,) = RunStore(db).list_runs()
    assert run["status"] == "finished" and run["config"]["loss"] == "logistic"
    steps = RunStore(db).records(run["id"], kind="step")
    assert steps and all(r["L"] > 0 and r["lr"] > 0 and r["grad_last"] <= r["L"] for r in steps)
    # the paper has no bound for it: one line that says which to use
    bad = train("--loss-module", "my_losses.py", "--loss", "logistic", "--bound", "paper")
    assert bad.returncode == 2 and "bound" in bad.stderr.splitlines()[-1] and "Traceback" not in bad.stderr
    # without the module the loss is unknown, in one line naming it
    bad = train("--loss", "logistic")
    assert bad.returncode == 2 and "logistic" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert len(RunStore(db).list_runs()) == 1                   # refused before any run was recorded


# -- verdicts: the last line of train, runs list and runs show --------------------------------------
def test_train_ends_with_its_verdict_and_the_papers_rule_is_one_flag(cli, tmp_path):
    """The defaults learn on digits; --paper (its bound, per epoch) collapses the MLP, and the last
    line says so, and why."""
    db = tmp_path / "store.db"
    flags = ("--epochs", "2", "--store", db, "--no-report", "--device", "cpu")
    code, out, _ = cli("train", *flags)
    assert code == 0 and out.splitlines()[-1].endswith(tuple("0123456789")), out
    assert " finished · healthy: loss " in out.splitlines()[-1]
    code, out, _ = cli("train", "--paper", *flags)
    last = out.splitlines()[-1]
    assert code == 0 and ": finished · collapsed: K_z \u2192 0 from step " in last, out
    assert "the paper's sup|dE/dz| is too small" in last
    from lipschitz_lab.runs import RunStore
    default, paper = RunStore(db).list_runs()
    assert (paper["config"]["bound"], paper["config"]["recompute"]) == ("paper", "epoch")
    assert (default["config"]["bound"], default["config"]["recompute"]) == ("strict", "step")

    code, out, _ = cli("runs", "--store", db, "list")
    head, *rows = out.splitlines()
    kinds = [line[head.index("verdict"):head.index(" name")].strip() for line in rows]
    assert code == 0 and kinds == ["healthy", "collapsed"], out
    code, out, _ = cli("runs", "--store", db, "show", paper["id"])
    assert code == 0 and "{" not in out, out                                # read as text, not JSON
    assert f"run {paper['id']}" in out and "verdict:  collapsed" in out and "bound=paper" in out
    assert out.rstrip().splitlines()[-1].split()[0] == "2"                 # the epoch table ends it


def test_train_with_sharpness_every_says_how_often_the_rate_crossed_the_edge(cli, tmp_path):
    """bound=curvature sets lr = 1/λ_max at each measured step: edge = lr·λ_max = 1, below SGD's 2."""
    db = tmp_path / "store.db"
    code, out, _ = cli("train", "--bound", "curvature", "--sharpness-every", "3", "--max-steps", "7",
                       "--epochs", "1", "--store", db, "--no-report", "--device", "cpu")
    line = "edge: below 2 on all 3 measured steps; median lr·λ_max 1"
    assert code == 0 and out.splitlines()[-2] == line, out               # just above the verdict
    from lipschitz_lab.runs import RunStore
    (run,) = RunStore(db).list_runs()
    code, out, _ = cli("runs", "--store", db, "show", run["id"])
    assert code == 0 and line.replace("edge: ", "edge:     ") in out.splitlines(), out


def test_a_model_that_cannot_take_the_data_names_both(cli, tmp_path):
    code, _, err = cli("train", "--dataset", "digits", "--model", "resnet20", "--store", tmp_path / "s.db")
    (line,) = err.strip().splitlines()
    assert code == 2 and "model='resnet20'" in line and "dataset='digits'" in line, err
