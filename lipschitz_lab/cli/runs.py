"""``lipschitz-lab runs list|show|export``: the run store from the shell."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

#: printed where a field does not apply (a bound for a constant-rate run) or is missing
NONE = "\u2014"


def register(sub) -> None:
    p = sub.add_parser("runs", help="list, show or export runs in the store")
    p.add_argument("--store", default=None,
                   help="run store (default: $LIPSCHITZ_LAB_STORE, else runs/lipschitz_lab.db)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="one line per run")
    ls.add_argument("--study", help="only runs of this study")
    ls.add_argument("--status", help="only runs with this status")
    show = actions.add_parser("show", help="a run's status, verdict, config and epochs")
    show.add_argument("run_id")
    exp = actions.add_parser("export", help="a run's records as CSV")
    exp.add_argument("run_id")
    exp.add_argument("--kind", default="step", choices=("step", "epoch"))
    exp.add_argument("--out", "-o", required=True, help="CSV file to write (its folder must exist)")
    p.set_defaults(func=run)


def _store(args):
    from lipschitz_lab.runs import open_store
    return open_store(args.store)


def bound_of(config: dict) -> str:
    """The run's bound variant, or NONE when its rate is not 1/L (a baseline policy)."""
    from lipschitz_lab.config import TrainConfig
    if config.get("lr_policy", TrainConfig.lr_policy) != "lipschitz":
        return NONE
    return config.get("bound") or NONE


def summary(store, run: dict) -> tuple[str, str]:
    """(final accuracy, verdict) of a stored run: validation accuracy (test without a validation
    split) of its last epoch, and :func:`~lipschitz_lab.runs.verdict.verdict` of its records."""
    from lipschitz_lab.runs.verdict import verdict
    records = store.records(run["id"])
    epochs = [r for r in records if r.get("kind") == "epoch"]
    last = epochs[-1] if epochs else {}
    acc = last.get("val_acc") if last.get("val_acc") is not None else last.get("test_acc")
    said = verdict(records, run["status"], run.get("reason"), config=run["config"])
    return (NONE if acc is None else f"{acc:.3f}"), said.kind


def _list(store, args) -> int:
    runs = store.list_runs(study=args.study, status=args.status)
    print(f"{'run id':<26} {'status':<9} {'dataset':<14} {'model':<10} {'policy':<18} {'bound':<9} "
          f"{'val_acc':>7}  {'verdict':<12} name")
    for r in runs:
        c = r["config"]
        acc, kind = summary(store, r)
        print(f"{r['id']:<26} {r['status']:<9} {c.get('dataset') or NONE:<14} {c.get('model') or NONE:<10} "
              f"{c.get('lr_policy') or NONE:<18} {bound_of(c):<9} {acc:>7}  {kind:<12} {r['name'] or ''}")
    return 0


def _show(store, args) -> int:
    """A run as a person reads it: what it is, how it ended, its settings and its epochs."""
    from lipschitz_lab.cli.train import print_table
    from lipschitz_lab.runs.verdict import run_verdict
    r = store.get_run(args.run_id)
    study = f"  (study {r['study']})" if r["study"] else ""
    print(f"run {r['id']}" + (f"  {r['name']}" if r["name"] else "") + study)
    reason = f" ({r['reason']})" if r.get("reason") else ""
    print(f"status:   {r['status']}{reason}, created {r['created']}")
    print(f"verdict:  {run_verdict(store, r['id'], r)}")
    from lipschitz_lab.runs.edge import edge_line
    edge = edge_line(store.records(args.run_id, kind="step"))
    if edge:
        print(f"{edge.replace('edge: ', 'edge:     ', 1)}")
    for name, path in (r.get("artifacts") or {}).items():
        print(f"{name + ':':<9} {path}")
    print("config:   " + ", ".join(f"{k}={v}" for k, v in r["config"].items() if v not in (None, {}, "")))
    epochs = store.records(args.run_id, kind="epoch")
    if epochs:
        print()
        print_table(SimpleNamespace(epochs=epochs))
    return 0


def _export(store, args) -> int:
    out = Path(args.out)
    folder = out.parent
    if not folder.is_dir():        # as cp does: write into a folder that exists, create none
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"out={args.out!r}: the folder {str(folder)!r} {what}; create it first")
    store.get_run(args.run_id)     # an unknown id is named before anything is written
    path = store.export_csv(args.run_id, out, kind=args.kind)
    print(f"wrote {path}")
    return 0


def run(args) -> int:
    store = _store(args)
    if args.action == "list":
        return _list(store, args)
    if args.action == "show":
        return _show(store, args)
    return _export(store, args)
