"""``lipschitz-lab derive``: the derivations as a summary, JSON, Markdown files, a table or code."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("derive", help="derive every bound symbolically and check the paper")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by loss name")
    p.add_argument("--write", metavar="DIR", help="write one Markdown file per loss into DIR")
    p.add_argument("--table", action="store_true",
                   help="print the README's table of findings (Markdown)")
    p.add_argument("--codegen", action="store_true",
                   help="regenerate lipschitz_lab/_generated.py (the built-in losses)")
    p.add_argument("--loss", action="append", help="only this loss (repeatable)")
    p.add_argument("--loss-module", action="append", metavar="PATH", default=[],
                   help="a Python file that registers losses of your own (repeatable)")
    p.set_defaults(func=run)


def _selected(args) -> dict:
    from lipschitz_lab.symbolic import LOSS_SPECS, derive, derive_all
    if not args.loss:
        return derive_all()
    for name in args.loss:
        if name not in LOSS_SPECS:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_SPECS)}")
    return {name: derive(name) for name in args.loss}


def summary(derivations: dict) -> str:
    lines = [f"{'loss':<18} {'paper sup|dE/dz|':<18} {'derived sup':<20} {'S2':<10} verdict"]
    for name, d in derivations.items():
        verdict = {True: "paper holds", False: "paper FAILS", None: "no paper claim"}[d.paper_holds]
        lines.append(f"{name:<18} {str(d.paper_sup):<18} {str(d.sup.value):<20} "
                     f"{str(d.smoothness.value):<10} {verdict}")
    return "\n".join(lines)


def run(args) -> int:
    if args.loss_module:
        from lipschitz_lab.losses import load_loss_module
        for path in args.loss_module:
            print(f"registered {', '.join(load_loss_module(path))} from {path}", file=sys.stderr)
    from lipschitz_lab.symbolic import render
    derivations = _selected(args)
    if args.codegen:
        from lipschitz_lab.symbolic import derive_builtin
        from lipschitz_lab.symbolic.codegen import write_generated
        print(f"wrote {write_generated(derive_builtin())}", file=sys.stderr)
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name, d in derivations.items():
            (out / f"{name}.md").write_text(render.to_markdown(d))
        print(f"wrote {len(derivations)} files to {out}/", file=sys.stderr)
    if args.json:
        print(json.dumps({name: render.to_json(d) for name, d in derivations.items()}, indent=2))
    elif args.table:
        print(render.readme_table(derivations))
    elif not args.write and not args.codegen:
        print(summary(derivations))
    return 0
