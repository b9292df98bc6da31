"""``lipschitz-lab study``: run a what-if study, print its table, write its summary (and plots)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from lipschitz_lab.runs.leases import LEASE_TTL_S
from lipschitz_lab.studies.backends import BACKENDS, backend_class   # no torch, no ray: cheap to import


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
    p.add_argument("--workers", type=int, help="runs at once: worker processes for the local backend (default 1: "
                   "this process); a cap for ray (default: as many as the cluster fits)")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="where runs train: local (this machine, the default) or ray (needs lipschitz-lab[ray])")
    p.add_argument("--address", metavar="ADDR", help="ray only: 'auto', 'ray://host:port' "
                   "(default: a local Ray cluster started for this command)")
    p.add_argument("--cpus-per-run", type=int, default=1, metavar="N", help="ray only: CPUs each run asks for")
    p.add_argument("--lease-timeout", type=float, default=LEASE_TTL_S, metavar="S",
                   help=f"seconds this launch may go silent before another launch takes its runs over "
                        f"(default {LEASE_TTL_S:g})")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for runs that another launch of this study is training")
    p.add_argument("--retry-failed", action="store_true",
                   help="train the runs the store holds failed again, from their checkpoints (default: "
                        "a failed run keeps its error and is skipped)")
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
    _positive("--cpus-per-run", args.cpus_per_run)
    if args.address is not None and args.backend != "ray":
        raise ValueError(f"--address={args.address!r}: only --backend ray connects to an address")
    if not args.no_run:
        backend_class(args.backend)        # a missing ray says so in one line, before anything prints
    if not args.lease_timeout > 0:
        raise ValueError(f"--lease-timeout={args.lease_timeout!r}: must be > 0 seconds")
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
    if args.list:
        return _list()
    from lipschitz_lab.runs import open_store
    from lipschitz_lab.studies.results import study_table, summary_markdown, table_text

    spec = build_spec(args)
    if args.no_run:
        plans = spec.runs()
    else:                                   # every policy x seed built and checked: one line, exit 2
        from lipschitz_lab.studies.spec import validate_study
        plans = validate_study(spec)
    store = open_store(args.store)
    print(f"study {spec.name!r}: {len(spec.policies)} policies x {len(spec.seeds)} seeds = {len(plans)} runs "
          f"-> {store.path}", file=sys.stderr)
    wall = None if args.no_run else _train(args, spec, store, len(plans))
    table = study_table(store, spec)
    print(table_text(table) if len(table) else "no runs of this study in the store")
    if args.out:
        _write_out(Path(args.out), store, spec, table, summary_markdown(table, spec, wall_time=wall))
    return 0


def _train(args, spec, store, total: int) -> float:
    """Run the study with a progress bar on stderr; returns the wall time."""
    from lipschitz_lab.studies.runner import run_study
    t0 = time.perf_counter()
    with StudyBar(store, spec, total) as bar:
        result = run_study(spec, store, workers=args.workers, backend=args.backend, address=args.address,
                           cpus_per_run=args.cpus_per_run, lease_timeout_s=args.lease_timeout,
                           wait=not args.no_wait, on_outcome=bar.outcome, retry_failed=args.retry_failed,
                           validate=False)
    wall = time.perf_counter() - t0
    startup = f" ({result.startup_s:.1f}s of it starting {result.backend})" if result.startup_s >= 0.05 else ""
    print(f"trained {len(result.trained)}, skipped {result.count(action='skipped')}, "
          f"held elsewhere {result.count(action='held')} in {wall:.1f}s{startup}", file=sys.stderr)
    return wall


def _write_out(out: Path, store, spec, table, summary: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary)
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


def outcome_line(o, said: str = "") -> str:
    """One finished run: policy, seed, what this launch did, its status, time, why, and its verdict."""
    extra = f" ({o.note})" if o.note else ""
    reason = f": {o.reason}" if o.reason and o.status != "finished" else ""
    return (f"{o.policy:<36} seed {o.seed}  {o.action:<11} {o.status or '-':<9} "
            f"{o.wall_time:6.1f}s{reason}{extra}" + (f" · {said}" if said else ""))


class StudyBar:
    """The study's progress on stderr: a tqdm bar (runs settled out of total, ETA from the
    store's :func:`~lipschitz_lab.studies.progress.progress`) on a terminal, plain lines
    otherwise; a line per finished run either way."""

    def __init__(self, store, spec, total: int, stream=None):
        self.store, self.spec, self.total, self.settled = store, spec, total, 0
        self.stream = stream or sys.stderr
        self.bar = None
        if self.stream.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=spec.name, unit="run", file=self.stream, dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def _eta(self) -> str:
        from lipschitz_lab.studies.progress import format_seconds, progress
        state = progress(self.store, self.spec)
        return "" if state.eta_s is None or state.finished else f"ETA {format_seconds(state.eta_s)}"

    def outcome(self, o) -> None:
        self.settled += 1
        eta = self._eta()
        if getattr(o, "run_id", None):
            from lipschitz_lab.runs.verdict import run_verdict
            o_line = outcome_line(o, run_verdict(self.store, o.run_id).kind)
        else:
            o_line = outcome_line(o)
        if self.bar is None:
            tail = f"  {eta}" if eta else ""
            print(f"[{self.settled}/{self.total}] {o_line}{tail}", file=self.stream, flush=True)
            return
        self.bar.write(f"  {o_line}", file=self.stream)
        self.bar.set_postfix_str(eta, refresh=False)
        self.bar.update(1)

    def __enter__(self) -> "StudyBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
