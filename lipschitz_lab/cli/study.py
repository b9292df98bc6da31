"""``lipschitz-lab study``: run a what-if study, print its table, write its summary (and plots)."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("study", help="compare lr policies on one config (what-if study)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help="a study preset (digits-quick, mnist-whatif)")
    src.add_argument("--config", metavar="FILE.toml", help="a study file: [study] and [train] tables")
    src.add_argument("--list", action="store_true", help="list the presets, policies and groups, and exit")
    p.add_argument("--policies", nargs="+", metavar="NAME",
                   help="only these policies: names, groups (lipschitz, baselines, ...) or globs ('constant-*')")
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="the seeds (default: the study's)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the study's)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop each run after N steps (smoke runs)")
    p.add_argument("--target", type=float, metavar="ACC", help="target validation accuracy for the table")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1: this process)")
    p.add_argument("--store", metavar="PATH", help="the run store (default $LIPSCHITZ_LAB_STORE or runs/lipschitz_lab.db)")
    p.add_argument("--out", metavar="DIR", help="write summary.md, table.csv and plots.html into DIR")
    p.add_argument("--no-run", action="store_true", help="only report what the store already holds")
    p.set_defaults(func=run)


def _positive(field: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{field}={value!r}: must be an integer >= 1")


def build_spec(args):
    """The study of ``args``: a preset or a TOML file, with the command line's overrides."""
    from lipschitz_lab.studies.spec import load_study, select, study_preset
    spec = study_preset(args.preset) if args.preset else load_study(args.config)
    _positive("--epochs", args.epochs)
    _positive("--max-steps", args.max_steps)
    _positive("--workers", args.workers)
    if args.target is not None and not 0 < args.target <= 1:
        raise ValueError(f"--target={args.target!r}: must be in (0, 1]")
    base = {}
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.max_steps is not None:
        base["max_steps"] = args.max_steps
    changes = {}
    if args.seeds:
        changes["seeds"] = list(args.seeds)
    if args.policies:
        changes["policies"] = select(args.policies)
    if args.target is not None:
        changes["target_acc"] = args.target
    return spec.replace(base_overrides=base, **changes)


def _list() -> int:
    from lipschitz_lab.studies.spec import GROUPS, STUDY_PRESETS, catalogue
    print("presets: " + ", ".join(STUDY_PRESETS))
    print("groups:  " + ", ".join(GROUPS))
    for name, entry in catalogue().items():
        over = ", ".join(f"{k}={v}" for k, v in entry.overrides.items())
        print(f"  {name:<36} {over}")
    return 0


def run(args) -> int:
    import os

    if args.list:
        return _list()
    from lipschitz_lab.runs import open_store
    from lipschitz_lab.studies.results import study_table, summary_markdown, table_text
    from lipschitz_lab.studies.runner import run_study

    spec = build_spec(args)
    store = open_store(args.store)
    plans = spec.runs()
    print(f"study {spec.name!r}: {len(spec.policies)} policies x {len(spec.seeds)} seeds = {len(plans)} runs "
          f"-> {store.path}", file=sys.stderr)
    wall = None
    if not args.no_run:
        t0 = time.perf_counter()

        def report(o) -> None:
            extra = f" ({o.note})" if o.note else ""
            reason = f": {o.reason}" if o.reason and o.status != "finished" else ""
            print(f"  {o.policy:<36} seed {o.seed}  {o.action:<9} {o.status or '-':<9} "
                  f"{o.wall_time:6.1f}s{reason}{extra}", file=sys.stderr, flush=True)

        result = run_study(spec, store, workers=args.workers, on_outcome=report)
        wall = time.perf_counter() - t0
        print(f"trained {len(result.trained)}, skipped {result.count(action='skipped')} "
              f"in {wall:.1f}s", file=sys.stderr)
    table = study_table(store, spec)
    print(table_text(table) if len(table) else "no runs of this study in the store")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(summary_markdown(table, spec, wall_time=wall))
        table.to_csv(out / "table.csv", index=False)
        written = ["summary.md", "table.csv"]
        try:
            from lipschitz_lab.ui.study_plots import save_study_html
        except ImportError as exc:   # bokeh missing: the text results still stand
            print(f"no plots: {exc}", file=sys.stderr)
        else:
            save_study_html(store, spec, out / "plots.html", table=table)
            written.append("plots.html")
        print(f"wrote {', '.join(written)} to {out}/", file=sys.stderr)
    return 0
