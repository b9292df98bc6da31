"""`lipschitz-lab demo`: it says what happened to each rule, prints no None, honours
$LIPSCHITZ_LAB_STORE, and a second demo reuses the first one's runs."""
from __future__ import annotations

import re

import pytest

from lipschitz_lab.cli import demo
from lipschitz_lab.runs import RunStore

NONE = "\u2014"


def _steps(n: int, *, dead_from: int | None = None, lipschitz: bool = True, loss=lambda i: 2.3) -> list[dict]:
    """n step records; from ``dead_from`` on K_z = 0 and the rate sits at the max_lr clamp."""
    out = []
    for i in range(n):
        dead = dead_from is not None and i >= dead_from
        rec = {"kind": "step", "step": i, "epoch": 0, "lr": 10.0 if dead else 0.5, "loss": loss(i), "time": 0.1 * i,
               "K_z": None, "L": None, "bound": None, "grad_last": None, "grad_layers": None, "clamped": None}
        if lipschitz:
            rec.update(K_z=0.0 if dead else 3.0, L=0.0 if dead else 2.0, bound="paper", grad_last=0.1,
                       grad_layers={"0": 0.05, "2": 0.1}, clamped="K_z=0" if dead else None)
        out.append(rec)
    return out


def _epoch(epoch: int, train_loss: float, test_acc: float) -> dict:
    return {"kind": "epoch", "epoch": epoch, "step": 10 * (epoch + 1), "lr": 0.5, "train_loss": train_loss,
            "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "test_loss": 1.0, "test_acc": test_acc,
            "time": 1.0 + epoch}


def _run(store: RunStore, records: list[dict], status: str, reason: str | None = None,
         lr_policy: str = "lipschitz") -> str:
    run_id = store.create_run({"dataset": "digits", "lr_policy": lr_policy, "bound": "paper"}, name="x")
    store.append_records(run_id, records)
    store.set_status(run_id, status, reason)
    return run_id


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "store.db")


def test_the_table_explains_a_collapsed_a_diverged_and_a_healthy_run(store):
    collapsed = _run(store, _steps(10, dead_from=1) + [_epoch(0, 2.3, 0.097)], "finished")
    diverged = _run(store, _steps(16), "diverged", "step 16: loss is nan")
    diverged_at_epoch = _run(store, _steps(4), "diverged", "epoch 2: val_loss is inf")
    in_layer = _run(store, _steps(19), "diverged", "step 19: K_a is inf (output of layer '20')")
    healthy = _run(store, _steps(10, loss=lambda i: 2.0 - 0.2 * i) + [_epoch(0, 1.2, 0.8), _epoch(1, 0.4, 0.95)],
                   "finished")
    flat = _run(store, _steps(10, lipschitz=False) + [_epoch(0, 2.3, 0.1), _epoch(1, 2.31, 0.1)], "finished",
                lr_policy="constant")
    stopped = _run(store, _steps(3), "stopped", "stopped by the user at step 3")
    rows = [("collapsed", collapsed, ""), ("diverged", diverged, ""), ("diverged-e", diverged_at_epoch, ""),
            ("in-layer", in_layer, ""),
            ("healthy", healthy, " (reused)"), ("flat", flat, ""), ("stopped", stopped, "")]
    text = demo.results_table(store, rows)
    said = dict(re.findall(r"^  (\S+)\s+(.+)$", text.split("What happened:")[1], re.M))
    assert said["collapsed"] == ("collapsed: K_z \u2192 0 from step 1; K_z = 0 on 9 of 10 steps, the rate in use "
                                 "at the max_lr clamp on 9 (the paper's sup|dE/dz| is too small, so L is "
                                 "underestimated and lr = 1/L too large; the default bound strict learns)")
    assert said["diverged"].startswith("diverged at step 16 (loss is nan)")
    assert said["diverged-e"].startswith("diverged at epoch 2 (val_loss is inf)")
    assert said["in-layer"].startswith("diverged at step 19 (K_a is inf, output of layer '20')")
    assert said["healthy"] == "healthy: loss 2 \u2192 0.2; accuracy 0.500"      # the first and last tenth
    assert said["flat"] == "not learning: loss 2.3 \u2192 2.3"       # a constant rate: no k, the loss says it
    assert said["stopped"].startswith("stopped: stopped by the user at step 3; so far ")
    table = {line.split()[0]: line for line in text.split("What happened:")[0].splitlines()[1:] if line}
    assert table["collapsed"].split()[1] == "finished" and "0.097" in table["collapsed"]
    assert table["diverged"].split()[1] == "diverged" and NONE in table["diverged"]   # no epoch: no test acc
    assert table["flat"].count(NONE) == 2          # a constant rate has no bound: grad>L and eq.1 say so
    assert table["healthy"].endswith(f"{healthy} (reused)")
    assert "None" not in text


def test_a_few_dead_steps_are_not_a_collapse(store):
    falling = _steps(30, loss=lambda i: 1.0 - 0.02 * i)
    run_id = _run(store, _steps(30, dead_from=28)[:29] + falling[29:] + [_epoch(0, 1.0, 0.9)], "finished")
    text = demo.results_table(store, [("r", run_id, "")])
    assert "healthy: loss 2.3 \u2192 1.67; accuracy 0.500; K_z = 0 on 1 of 30 steps" in text


def test_the_verdicts_print_a_dash_where_the_paper_makes_no_claim():
    from lipschitz_lab.symbolic import derive_all
    text = demo.verdict_table(derive_all())
    smoothed = next(line for line in text.splitlines() if line.startswith("label_smoothed_ce"))
    assert smoothed.split()[1] == NONE and "no paper claim" in smoothed
    assert "None" not in text
    assert "paper FAILS" in next(line for line in text.splitlines() if line.startswith("softmax_ce"))


@pytest.mark.slow
def test_demo_uses_the_store_of_the_environment_and_reuses_its_runs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "elsewhere" / "store.db"
    monkeypatch.setenv("LIPSCHITZ_LAB_STORE", str(db))
    code, out, _ = cli("demo", "--epochs", "1")
    assert code == 0, out
    assert not (tmp_path / "runs").exists()                # nothing went to the default store
    store = RunStore(db)
    first = store.list_runs(study=demo.STUDY)
    assert len(first) == len(demo.POLICIES) and all(r["key"] for r in first)
    reports = sorted((db.parent / "reports").iterdir())
    assert len(reports) == len(demo.POLICIES)
    said = out.split("What happened:")[1]
    for label, _ in demo.POLICIES:
        line = next(x for x in said.splitlines() if x.strip().startswith(label))
        assert re.search(r"(healthy|collapsed|diverged at|did not learn)", line), line
    assert "None" not in out

    code, out, _ = cli("demo", "--epochs", "1")           # nothing changed: nothing trains
    assert code == 0
    assert [r["id"] for r in store.list_runs(study=demo.STUDY)] == [r["id"] for r in first]
    assert out.count("(reused)") == len(demo.POLICIES)
    assert sorted((db.parent / "reports").iterdir()) == reports

    code, out, _ = cli("demo", "--epochs", "2")           # a change trains anew, beside the old runs
    assert code == 0 and "(reused)" not in out
    assert len(store.list_runs(study=demo.STUDY)) == 2 * len(demo.POLICIES)
