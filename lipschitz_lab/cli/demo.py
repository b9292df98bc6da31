"""``lipschitz-lab demo``: the main job of ``make run`` (offline, embedded data).

1) re-derives every bound and prints the verdicts;
2) trains the same MLP on scikit-learn's digits under the paper's, the
   corrected and the strict Lipschitz rate, and a constant-rate baseline;
3) prints a comparison and writes one HTML report per run.
"""
from __future__ import annotations

import time
from pathlib import Path

#: the demo's policies: (label, TrainConfig overrides)
POLICIES = (
    ("lipschitz paper", dict(lr_policy="lipschitz", bound="paper")),
    ("lipschitz corrected", dict(lr_policy="lipschitz", bound="corrected")),
    ("lipschitz strict", dict(lr_policy="lipschitz", bound="strict")),
    ("constant lr=0.1", dict(lr_policy="constant", lr=0.1)),
)


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: derivations, then a short study on digits")
    p.add_argument("--out", default="runs", help="folder for the run store and reports (default: runs)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per run (default: 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lipschitz_lab.cli.derive import summary
    from lipschitz_lab.symbolic import derive_all
    print("== 1) The paper's bounds, re-derived (see derivations/) ==")
    print(summary(derive_all()))

    from lipschitz_lab.config import TrainConfig
    from lipschitz_lab.runs import RunStore
    from lipschitz_lab.trainer import train
    out = Path(args.out)
    store = RunStore(out / "lipschitz_lab.db")
    base = TrainConfig(dataset="digits", model="mlp", loss="softmax_ce", epochs=args.epochs,
                       batch_size=64, study="demo")
    print(f"\n== 2) digits, MLP, softmax_ce, {args.epochs} epochs, batch 64: four learning-rate rules ==")
    rows = []
    for label, overrides in POLICIES:
        t0 = time.perf_counter()
        result = train(base.replace(name=label, **overrides), store=store)
        steps = store.records(result.run_id, kind="step")
        lrs = [r["lr"] for r in steps]
        over = sum(1 for r in steps if r["L"] is not None and r["grad_last"] > r["L"])
        # eq. 1: the last layer's gradient is the largest of all layers
        eq1 = sum(1 for r in steps if r["grad_layers"] and r["grad_last"] >= max(r["grad_layers"].values()))
        final = result.final or {}
        rows.append((label, result, min(lrs), max(lrs), final.get("test_acc"), over, eq1, len(steps),
                     time.perf_counter() - t0))
    print(f"{'policy':<22} {'status':<9} {'lr range':<21} {'test acc':>8} {'grad>L':>9} {'eq.1 holds':>10} "
          f"{'time':>6}")
    for label, result, lo, hi, acc, over, eq1, n, secs in rows:
        acc_s = "-" if acc is None else f"{acc:.3f}"
        over_s, eq1_s = ("-", "-") if label.startswith("constant") else (f"{over}/{n}", f"{eq1}/{n}")
        print(f"{label:<22} {result.status:<9} {lo:>9.3g} .. {hi:<8.3g} {acc_s:>8} {over_s:>9} {eq1_s:>10} "
              f"{secs:>5.1f}s")
    print("\ngrad>L: steps where the measured last-layer gradient max exceeded the run's bound L.")
    print("eq.1 holds: steps where the last layer had the largest gradient of all layers (the paper's eq. 1).")

    try:
        from lipschitz_lab.ui.report import write_report
    except ModuleNotFoundError:
        return 0
    print("\n== 3) Reports ==")
    for label, result, *_ in rows:
        print(f"{label:<22} {write_report(store, result.run_id, out / 'reports' / f'{result.run_id}.html')}")
    return 0
