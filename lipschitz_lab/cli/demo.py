"""``lipschitz-lab demo``: the main job of ``make run`` (offline, embedded data)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: derivations, then a short study on digits")
    p.add_argument("--out", default="runs", help="folder for the run store and reports (default: runs)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's own)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lipschitz_lab.cli.derive import summary
    from lipschitz_lab.symbolic import derive_all
    print("== 1) The paper's bounds, re-derived ==")
    print(summary(derive_all()))
    try:
        from lipschitz_lab.demo import run_demo
    except ModuleNotFoundError:
        return 0
    print("\n== 2) A short what-if study on digits ==")
    return run_demo(out=args.out, epochs=args.epochs)
