"""``lipschitz-lab runs list|show|export``: the run store from the shell."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("runs", help="list, show or export runs in the store")
    p.add_argument("--store", default=None, help="run store (default: runs/lipschitz_lab.db)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="one line per run")
    ls.add_argument("--study", help="only runs of this study")
    ls.add_argument("--status", help="only runs with this status")
    show = actions.add_parser("show", help="a run's config, status and epochs")
    show.add_argument("run_id")
    exp = actions.add_parser("export", help="a run's records as CSV")
    exp.add_argument("run_id")
    exp.add_argument("--kind", default="step", choices=("step", "epoch"))
    exp.add_argument("--out", "-o", required=True, help="CSV file to write")
    p.set_defaults(func=run)


def _store(args):
    from lipschitz_lab.runs import open_store
    return open_store(args.store)


def run(args) -> int:
    store = _store(args)
    if args.action == "list":
        runs = store.list_runs(study=args.study, status=args.status)
        print(f"{'run id':<26} {'status':<9} {'dataset':<14} {'model':<10} {'policy':<10} {'bound':<9} name")
        for r in runs:
            c = r["config"]
            print(f"{r['id']:<26} {r['status']:<9} {c.get('dataset', '-'):<14} {c.get('model', '-'):<10} "
                  f"{c.get('lr_policy', '-'):<10} {c.get('bound', '-'):<9} {r['name'] or ''}")
        return 0
    if args.action == "show":
        r = store.get_run(args.run_id)
        print(json.dumps({k: r[k] for k in ("id", "name", "study", "status", "reason", "created",
                                             "artifacts", "config")}, indent=2, default=str))
        for e in store.records(args.run_id, kind="epoch"):
            print(json.dumps(e))
        return 0
    path = store.export_csv(args.run_id, args.out, kind=args.kind)
    print(f"wrote {path}")
    return 0
