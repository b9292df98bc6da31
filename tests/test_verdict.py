"""runs/verdict.py: one run of each kind, the thresholds at their edges, the live tally equal to the
verdict of the whole record list, and what the verdict is shown as in a study table.  The CLI's
last line and `runs list`/`show` are in test_cli.py, the report's header in test_report.py, the
panels' status lines in test_ui_panels.py and test_browser.py."""
from __future__ import annotations

import hashlib

import pytest

from lipschitz_lab.runs.verdict import (BLOWUP_FACTOR, CHANCE_MARGIN, COLLAPSE_SHARE, KINDS, PAPER_HINT, Tally,
                                        kinds_summary, verdict)


def steps(losses, *, dead=(), k=10, lr=0.5, max_lr=10.0) -> list[dict]:
    """Step records with these losses; steps in ``dead`` have K_z = 0 and the rate at max_lr."""
    return [{"kind": "step", "step": i, "epoch": 0, "loss": loss, "k": k,
             "K_z": 0.0 if i in dead else 3.0, "clamped": "K_z=0" if i in dead else None,
             "lr": max_lr if i in dead else lr} for i, loss in enumerate(losses)]


def epoch(acc: float, train_loss: float = 1.0) -> dict:
    return {"kind": "epoch", "epoch": 0, "step": 10, "val_acc": acc, "test_acc": acc, "train_loss": train_loss}


FALLING = [2.3 - 0.02 * i for i in range(100)]


def test_one_run_of_each_kind():
    healthy = verdict(steps(FALLING) + [epoch(0.9)], "finished")
    assert healthy.kind == "healthy" and healthy.text == "healthy: loss 2.21 \u2192 0.41; accuracy 0.900"

    dead = range(30, 100)                                    # K_z = 0 from step 30 to the end
    collapsed = verdict(steps([2.3] * 100, dead=dead) + [epoch(0.1)], "finished")
    assert collapsed.kind == "collapsed" and collapsed.step == 30
    assert collapsed.text == ("collapsed: K_z \u2192 0 from step 30; K_z = 0 on 70 of 100 steps, the rate in use "
                              "at the max_lr clamp on 70")

    rise = [2.3] * 10 + [2.3 * 500] + [50.0] * 89           # a 500-fold peak, never back, no NaN
    blew = verdict(steps(rise) + [epoch(0.1, train_loss=60.0)], "finished")
    assert blew.kind == "blew up" and blew.step == 10
    assert blew.text == "blew up: the loss rose 500-fold (2.3 \u2192 1.15e+03 at step 10), no value NaN"

    flat = verdict(steps([2.3] * 100) + [epoch(0.1 + CHANCE_MARGIN)], "finished")   # at chance + the margin
    assert flat.kind == "not learning" and flat.text == "not learning: accuracy 0.150, chance 0.100"

    diverged = verdict(steps(FALLING[:16]), "diverged", "step 16: loss is nan (output of layer '2')")
    assert diverged.kind == "diverged" and diverged.step == 16
    assert diverged.text == "diverged at step 16 (loss is nan, output of layer '2')"
    failed = verdict([], "failed", "KeyError: 'lr'")          # an error before the first step
    assert failed.kind == "too short" and failed.text == "too short to judge: 0 steps; failed: KeyError: 'lr'"
    assert {v.kind for v in (healthy, collapsed, blew, flat, diverged, failed)} == set(KINDS)


def test_the_thresholds_at_their_edges():
    # collapsed: K_z = 0 on COLLAPSE_SHARE of the steps, or on the last one; a few dead steps are not
    n = 100
    half = set(range(int(COLLAPSE_SHARE * n)))
    assert verdict(steps(FALLING, dead=half) + [epoch(0.9)]).kind == "collapsed"
    assert verdict(steps(FALLING, dead=set(range(int(COLLAPSE_SHARE * n) - 1))) + [epoch(0.9)]).kind == "healthy"
    assert verdict(steps(FALLING, dead={99}) + [epoch(0.9)]).kind == "collapsed"
    # blew up: BLOWUP_FACTOR-fold, and not learning at the end; a spike it recovered from is noted
    spike = [2.3] * 10 + [2.3 * BLOWUP_FACTOR * 1.01] + [2.3 - 0.02 * i for i in range(89)]
    assert verdict(steps(spike) + [epoch(0.1)]).kind == "blew up"
    recovered = verdict(steps(spike) + [epoch(0.9)])
    assert recovered.kind == "healthy" and "a 10-fold loss spike at step 10, recovered" in recovered.text
    below = [2.3] * 10 + [2.3 * BLOWUP_FACTOR * 0.99] + [2.3] * 89
    assert verdict(steps(below) + [epoch(0.1)]).kind == "not learning"
    # not learning: within the margin of chance; just above it is learning
    assert verdict(steps([2.3] * 100) + [epoch(0.1 + CHANCE_MARGIN + 0.01)]).kind == "healthy"
    # without classes (regression, a baseline): the loss must fall by 5 %
    no_k = [{**r, "k": None} for r in steps([1.0] * 50 + [0.96] * 50)]
    assert verdict(no_k).kind == "not learning" and verdict(no_k, classes=10).kind == "not learning"
    assert verdict([{**r, "k": None} for r in steps(FALLING)]).kind == "healthy"
    assert verdict(steps([2.3] * 3)).kind == "too short"     # three steps: too early to say anything


def test_the_live_tally_equals_the_verdict_of_the_whole_run():
    records = steps([2.3] * 10 + [1e4] + [2.3 - 0.001 * i for i in range(489)], dead=set(range(300, 500)))
    records += [epoch(0.1)]
    tally = Tally()
    for i in range(0, len(records), 37):                     # batches, as the panel's bridge applies them
        tally.add(records[i:i + 37])
    assert tally.verdict("finished") == verdict(records, "finished")


def test_the_papers_rule_gets_its_explanation_only_when_it_went_wrong():
    paper = {"lr_policy": "lipschitz", "bound": "paper", "max_lr": 10.0}
    bad = verdict(steps([2.3] * 100, dead=range(100)), "finished", config=paper)
    assert bad.text.endswith(f"({PAPER_HINT})")
    assert PAPER_HINT not in verdict(steps(FALLING) + [epoch(0.9)], config=paper).text
    assert PAPER_HINT not in verdict(steps([2.3] * 100, dead=range(100)), config={**paper, "bound": "strict"}).text
    # the clamp is the run's own max_lr: a rate of 10 is not at a clamp of 100
    assert "clamp" not in verdict(steps([2.3] * 100, dead=range(100)), config={**paper, "max_lr": 100.0}).text


def test_a_study_cell_says_all_agree_or_counts_worst_first():
    assert kinds_summary(["healthy", "healthy"]) == "healthy"
    assert kinds_summary(["healthy", "collapsed", "diverged"]) == "diverged 1/3, collapsed 1/3, healthy 1/3"


def test_the_default_change_keeps_every_stored_runs_key():
    """Keys hash what differs from key_baseline(), whose changed fields keep their old values: a config
    with TrainConfig's old defaults (the paper's rule, 5 epochs of 64) still hashes as the empty diff."""
    from lipschitz_lab.config import LEGACY_DEFAULTS, TrainConfig
    from lipschitz_lab.studies.spec import config_hash
    old = TrainConfig(**LEGACY_DEFAULTS).to_dict()
    assert config_hash(old) == hashlib.sha256(b"{}").hexdigest()[:12]
    assert config_hash(TrainConfig().to_dict()) != config_hash(old)          # the new defaults: a new run


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_named_once_in_the_docs(kind):
    import lipschitz_lab.runs.verdict as module
    assert f"**{kind}**" in module.__doc__
