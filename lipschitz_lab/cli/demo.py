"""``lipschitz-lab demo`` (``make demo``): the walk-through, offline, on embedded data.

1) re-derives every bound and prints the verdicts;
2) trains the same MLP on scikit-learn's digits under the paper's, the corrected and
   the strict Lipschitz rate and a constant-rate baseline: a small what-if study, so
   each run has a stable key in the run store and a second demo with the same
   settings reuses the first one's runs (and reports) instead of training them again;
3) prints a comparison with one line per rule saying what happened (its verdict:
   healthy, collapsed, blew up, not learning or diverged), and one HTML report per run.
"""
from __future__ import annotations

import sys

#: the demo's rules: (label, study policy name; see ``lipschitz-lab study --list``)
POLICIES = (
    ("lipschitz paper", "lipschitz-paper-epoch-sgd"),
    ("lipschitz corrected", "lipschitz-corrected-epoch-sgd"),
    ("lipschitz strict", "lipschitz-strict-epoch-sgd"),
    ("constant lr=0.1", "constant-0.1"),
)
#: the study the demo's runs belong to (``lipschitz-lab runs list --study demo``)
STUDY = "demo"
#: printed where there is no value (no paper claim, no bound for a constant rate)
NONE = "\u2014"


def register(sub) -> None:
    p = sub.add_parser("demo", help="the walk-through: derivations, then four learning-rate rules on digits")
    p.add_argument("--store", default=None,
                   help="run store (default: $LIPSCHITZ_LAB_STORE, else runs/lipschitz_lab.db); "
                        "reports go to reports/ beside it")
    p.add_argument("--out", metavar="DIR", help="old spelling: the store DIR/lipschitz_lab.db")
    p.add_argument("--epochs", type=int, default=8, help="epochs per run (default: 8)")
    p.set_defaults(func=run)


# -- 1) the derivations ---------------------------------------------------------------
def verdict_table(derivations: dict) -> str:
    """One line per loss: the paper's sup |dE/dz| (NONE where it makes no claim), the derived one,
    and the verdict."""
    lines = [f"{'loss':<18} {'paper sup|dE/dz|':<18} {'derived sup':<20} verdict"]
    for name, d in derivations.items():
        if d.paper_sup is None:
            verdict = "no paper claim"
        else:
            verdict = {True: "paper holds", False: "paper FAILS", None: "undecided"}[d.paper_holds]
        paper = NONE if d.paper_sup is None else str(d.paper_sup)
        lines.append(f"{name:<18} {paper:<18} {str(d.sup.value):<20} {verdict}")
    return "\n".join(lines)


# -- 2) what happened to a run -------------------------------------------------------
def explain(run: dict, steps: list[dict], epochs: list[dict]) -> str:
    """One line: the run's verdict (:func:`lipschitz_lab.runs.verdict.verdict`: healthy, collapsed,
    blew up, not learning or diverged at step N); a run that did not finish says so first.

    ``run`` is the store's run (status, reason, config), ``steps`` and ``epochs`` its records.
    """
    from lipschitz_lab.runs.verdict import verdict
    status, reason = run["status"], run.get("reason") or ""
    said = verdict([*steps, *epochs], status, reason, config=run.get("config"))
    if status in ("finished", "diverged"):
        return said.text
    return f"{status}" + (f": {reason}" if reason else "") + f"; so far {said.text}"


def _row(store, label: str, run_id: str, note: str) -> tuple[str, str]:
    """(table line, explanation) of one run, from the store's records only."""
    run = store.get_run(run_id)
    records = store.records(run_id)
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    lipschitz = any(r.get("K_z") is not None for r in steps)
    lrs = [r["lr"] for r in steps if r.get("lr") is not None]
    lr_range = f"{min(lrs):>9.3g} .. {max(lrs):<8.3g}" if lrs else f"{NONE:>9}    {'':<8}"
    final = epochs[-1] if epochs else {}
    acc = NONE if final.get("test_acc") is None else f"{final['test_acc']:.3f}"
    n = len(steps)
    over = sum(1 for r in steps if r.get("L") is not None and r.get("grad_last") is not None
               and r["grad_last"] > r["L"])
    eq1 = sum(1 for r in steps if r.get("grad_layers") and r.get("grad_last") is not None
              and r["grad_last"] >= max(r["grad_layers"].values()))
    over_s, eq1_s = (f"{over}/{n}", f"{eq1}/{n}") if lipschitz else (NONE, NONE)
    last = (epochs or steps or [{}])[-1].get("time")
    secs = NONE if last is None else f"{last:.1f}s"
    line = (f"{label:<20} {run['status']:<9} {lr_range} {acc:>8} {over_s:>9} {eq1_s:>10} {secs:>7}  "
            f"{run_id}{note}")
    return line, explain(run, steps, epochs)


def results_table(store, rows: list[tuple[str, str, str]]) -> str:
    """The comparison, read back from the store: ``rows`` are (label, run id, note)."""
    lines = [f"{'rule':<20} {'status':<9} {'lr range':<21} {'test acc':>8} {'grad>L':>9} "
             f"{'eq.1 holds':>10} {'time':>7}  run"]
    said = []
    for label, run_id, note in rows:
        line, why = _row(store, label, run_id, note)
        lines.append(line)
        said.append(f"  {label:<20} {why}")
    return "\n".join(lines + ["", "What happened:"] + said)


LEGEND = """
grad>L: steps where the measured last-layer gradient max exceeded the run's bound L.
eq.1 holds: steps where the last layer had the largest gradient of all layers (the paper's eq. 1).
collapsed: K_z = 0 means every penultimate activation is 0 (dead ReLUs after too large a step):
L = 0, so lr = 1/L is clamped at max_lr, and the network no longer learns.
The verdicts and their thresholds: lipschitz_lab/runs/verdict.py."""


# -- the command ----------------------------------------------------------------------
def demo_study(epochs: int):
    """The demo's runs as a study: stable keys, so a second demo reuses the first's runs."""
    from lipschitz_lab.studies.spec import StudySpec, select
    base = dict(dataset="digits", model="mlp", loss="softmax_ce", epochs=epochs, batch_size=64)
    return StudySpec(STUDY, base, select([name for _, name in POLICIES]), seeds=[0])


def _train(spec, store) -> dict[str, tuple[str, str]]:
    """Run the study (training only what the store lacks); policy -> (run id, note)."""
    from lipschitz_lab.studies.runner import run_study
    labels = dict((name, label) for label, name in POLICIES)

    def started(plan) -> None:
        print(f"  training {labels[plan.policy]} ...", file=sys.stderr, flush=True)

    result = run_study(spec, store, workers=1, on_start=started)
    notes = {"skipped": " (reused)", "resumed": " (resumed)", "restarted": " (restarted)"}
    return {o.policy: (o.run_id, notes.get(o.action, "")) for o in result.outcomes}


def _reports(store, runs: dict[str, tuple[str, str]]) -> None:
    from pathlib import Path

    from lipschitz_lab.ui.report import write_report
    for label, name in POLICIES:
        run_id = runs[name][0]
        path = store.artifacts(run_id).get("report")
        if path is None or not Path(path).exists():      # a reused run keeps its report
            path = write_report(store, run_id)
        print(f"{label:<20} {path}")


def run(args) -> int:
    from lipschitz_lab.runs import open_store
    from lipschitz_lab.symbolic import derive_all
    if args.epochs < 1:
        raise ValueError(f"epochs={args.epochs!r}: must be an integer >= 1")
    print("== 1) The paper's bounds, re-derived (see derivations/) ==")
    print(verdict_table(derive_all()))

    store = open_store(f"{args.out}/lipschitz_lab.db" if args.out and not args.store else args.store)
    spec = demo_study(args.epochs)
    print(f"\n== 2) digits, MLP, softmax_ce, {args.epochs} epochs, batch 64: four learning-rate rules ==")
    runs = _train(spec, store)
    print(results_table(store, [(label, *runs[name]) for label, name in POLICIES]))
    print(LEGEND)
    print(f"\nThe runs are in {store.path}, study {STUDY!r} (lipschitz-lab runs list --study {STUDY}); "
          "a second demo with the same settings reuses them.")
    try:
        import lipschitz_lab.ui.report  # noqa: F401  (bokeh)
    except ModuleNotFoundError:
        return 0
    print("\n== 3) Reports ==")
    _reports(store, runs)
    return 0
