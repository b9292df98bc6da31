"""What-if study on MNIST: the paper's Table-1 CNN under several lr policies, 2 seeds, 3 epochs.

Run: .venv/bin/python benchmarks/bench_whatif_mnist.py [--policies ...] [--workers 2]
Data: MNIST under ``default_data_root()`` ($LIPSCHITZ_LAB_DATA, else the developers'
../shared/data beside the checkout; torchvision layout), a fixed class-balanced
12,000-image training subset (validation: 6,000 images held out of the 60,000 first), tested on all
10,000 test images.  Runs go to runs/bench/whatif_mnist.db: run it again and it
skips the runs already finished.  Appends a section to benchmarks/RESULTS.md.

On 2 shared CPU cores one epoch of one run takes ~40 s of the machine, so the full
catalogue (37 policies x 2 seeds x 3 epochs) would take ~2.5 hours; the default
policies are a cut (DEFAULT_POLICIES) meant to fit ~25 minutes (30 on the shared machine), and
``--policies all`` runs everything.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from _machine import cpu_model

HERE = Path(__file__).resolve().parent

#: the cut (7 of 37): LipschitzLR with the paper's, the corrected and the strict bound (per
#: epoch, SGD, as in the paper), the paper's rate x0.1, plain SGD at 0.1 and at the follow-up
#: paper's baseline 0.01, and one parameter-free optimizer.  The LR range test (+100
#: iterations a run) and Schedule-Free were cut when the shared cores halved the speed.
DEFAULT_POLICIES = ["lipschitz-paper-epoch-sgd", "lipschitz-corrected-epoch-sgd", "lipschitz-strict-epoch-sgd",
                    "lipschitz-paper-epoch-sgd-x0.1", "constant-0.01", "constant-0.1", "prodigy"]


def _machine_line() -> str:
    import torch
    return f"{cpu_model()}, {torch.get_num_threads()} cores, torch {torch.__version__}, CPU"


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="worker processes (each gets cores/N threads)")
    ap.add_argument("--augment", action="store_true", help="the paper's augmentation (+40 %% time)")
    ap.add_argument("--store", default="runs/bench/whatif_mnist.db")
    ap.add_argument("--out", default="runs/bench/whatif_mnist", help="summary.md, table.csv, plots.html")
    ap.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    return ap.parse_args(argv)


def command(args) -> str:
    """The command line that reproduces this call (the defaults left out)."""
    cmd = "cd <repo> && .venv/bin/python benchmarks/bench_whatif_mnist.py"
    if args.policies != DEFAULT_POLICIES:
        cmd += " --policies " + " ".join(args.policies)
    for flag, value, default in (("--seeds", args.seeds, [0, 1]), ("--epochs", args.epochs, 3),
                                 ("--workers", args.workers, 2)):
        if value != default:
            cmd += f" {flag} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value))
    return cmd + (" --augment" if args.augment else "")


def section(args, spec, store, result, table, wall: float) -> list[str]:
    """The RESULTS.md section of this study, as lines."""
    from lipschitz_lab.studies.results import table_text, verdict
    from lipschitz_lab.studies.spec import catalogue
    # per-epoch cost from the runs themselves: the seconds to the last epoch's end / epochs run
    finished = table[table.diverged == 0]
    per_epoch = (finished.train_time_mean / args.epochs).mean() if len(finished) else float("nan")
    full = len(catalogue()) * len(spec.seeds) * args.epochs * per_epoch / args.workers
    # the study's own span in the store (first run created .. last run updated): right even
    # when this call skipped runs an earlier call trained
    runs = [store.find_run(p.key) for p in spec.runs()]
    stamps = [datetime.fromisoformat(r[k]) for r in runs if r for k in ("created", "updated")]
    span = (max(stamps) - min(stamps)).total_seconds() if stamps else float("nan")
    dead = [f"`{o.policy}` seed {o.seed}: {o.status} ({o.reason})" for o in result.outcomes
            if o.status not in ("finished", None)]
    lines = [
        "", f"## What-if study: MNIST Table-1 CNN, 12,000-image subset, {args.epochs} epochs, "
            f"{len(spec.seeds)} seeds (issue 6)", "",
        f"- command: `{command(args)}` (store `{args.store}`; plots in `{args.out}/plots.html`)",
        f"- machine: {_machine_line()}; {args.workers} worker processes; other processes shared the cores",
        "- data: MNIST, a fixed class-balanced 12,000-image training subset (the 6,000 validation "
        f"images are held out of the 60,000 first), the full 10,000-image test set; batch 256; augmentation "
        f"{'on (the paper)' if args.augment else 'off'}; plain SGD unless the policy brings its own optimizer",
        "- `lr min`/`lr max`: over every step record of every seed; a record's `lr` is the rate the update "
        "used, for param group 0, `lr_scale` included (defined once in `lipschitz_lab/records.py`, STEP_KEYS), "
        "so the `-x0.1`/`-x0.3`/`-x3`/`-x10` rows show the multiplied rate",
        f"- wall time: **{span / 60:.1f} min** from the first run's start to the last run's end (the "
        f"store's timestamps); this call: {wall / 60:.1f} min, {len(result.trained)} runs trained, "
        f"{result.count(action='skipped')} already in the store skipped",
        f"- the cut: one epoch of one run (training 12,000 images, evaluating 16,000) took ~{per_epoch:.0f} s "
        f"with {args.workers} runs sharing the cores; the whole "
        f"catalogue ({len(catalogue())} policies x {len(spec.seeds)} seeds x {args.epochs} epochs) would take "
        f"~{full / 3600:.1f} h, so this run has {len(spec.policies)} policies: "
        + ", ".join(f"`{p.name}`" for p in spec.policies)
        + ". The full catalogue, on digits, is in `lipschitz-lab study --preset digits-quick`.",
        "", f"**Where LipschitzLR stands:** {verdict(table)}", "", table_text(table), "",
    ]
    return lines + (["Runs that did not finish: " + "; ".join(dead) + ".", ""] if dead else [])


def main(argv=None) -> int:
    from lipschitz_lab.runs import RunStore
    from lipschitz_lab.studies.results import study_table, table_text, verdict
    from lipschitz_lab.studies.runner import run_study
    from lipschitz_lab.studies.spec import select, study_preset

    args = parse(argv)
    spec = study_preset("mnist-whatif").replace(
        seeds=args.seeds, policies=select(args.policies),
        base_overrides={"epochs": args.epochs, "augment": args.augment})
    store = RunStore(args.store)
    print(f"{len(spec.policies)} policies x {len(spec.seeds)} seeds -> {store.path}", file=sys.stderr)
    t0 = time.perf_counter()
    result = run_study(spec, store, workers=args.workers, on_outcome=lambda o: print(
        f"  {o.policy:<32} seed {o.seed} {o.action:<8} {o.status:<9} {o.wall_time:6.0f}s {o.reason or ''}",
        file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    table = study_table(store, spec)
    print(table_text(table))
    print(verdict(table))
    print(f"wall {wall:.0f} s; trained {len(result.trained)}, skipped {result.count(action='skipped')}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    try:
        from lipschitz_lab.ui.study_plots import save_study_html
        save_study_html(store, spec, out / "plots.html", table=table)
    except ImportError as exc:
        print(f"no plots: {exc}", file=sys.stderr)
    if args.no_write:
        return 0
    with open(HERE / "RESULTS.md", "a") as f:
        f.write("\n".join(section(args, spec, store, result, table, wall)))
    print(f"appended to {HERE / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
