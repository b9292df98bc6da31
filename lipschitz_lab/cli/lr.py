"""``lipschitz-lab lr``: the learning rate 1/L for given statistics.

``--kz-value`` is the number K_z; ``--kz`` names the K_z definition, as in ``train``.
``--kz NUMBER`` (the old spelling of ``--kz-value``) still works, with a note.
"""
from __future__ import annotations

import argparse
import sys

from lipschitz_lab.cli import LaterHelp


def _number(field: str, kind=float):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{field} must be a number; got {field}={text!r}") from None
    parse.__name__ = "number"  # argparse says: invalid number value
    return parse


def _one_of(field: str, meaning: str, default: str | None = None) -> LaterHelp:
    def text() -> str:
        from lipschitz_lab.choices import choices
        tail = f"; default: {default}" if default else ""
        return f"{meaning}; one of: {', '.join(choices()[field])}{tail}"
    return LaterHelp(text)


def register(sub) -> None:
    p = sub.add_parser("lr", help="compute lr = 1/L from K_z and friends",
                       description="The learning rate lr = 1/L for given batch statistics, "
                                   "printed with three decimals (-v also prints L).")
    p.add_argument("--loss", required=True, help=_one_of("loss", "the loss E"))
    p.add_argument("--loss-module", action="append", metavar="PATH", default=[],
                   help="a Python file that registers losses of your own (repeatable)")
    p.add_argument("--bound", default="paper", help=_one_of("bound", "which bound L", "paper"))
    p.add_argument("--kz-value", "--K-z", dest="kz_value", type=_number("kz-value"), metavar="K_Z",
                   help="K_z, the penultimate activation bound (a number)")
    p.add_argument("--kz", "--kz-definition", dest="kz", default=None, metavar="DEFINITION",
                   help=_one_of("kz", "the K_z definition (matters for --bound strict)", "frobenius"))
    p.add_argument("--batch-size", "-m", type=_number("batch-size"), required=True, help="m, the batch size")
    p.add_argument("--classes", "-k", type=_number("classes"), help="k, the number of classes (softmax losses)")
    p.add_argument("--ka", type=_number("ka"), help="K_a, the output bound (mse)")
    p.add_argument("--y-norm", type=_number("y-norm"), help="y_norm, the target bound (mse)")
    p.add_argument("--eps", type=_number("eps"), help="label smoothing (label_smoothed_ce)")
    p.add_argument("--weight-decay", type=_number("weight-decay"), default=0.0,
                   help="lambda, the weight decay (L grows by lambda * w_max)")
    p.add_argument("--max-weight-norm", type=_number("max-weight-norm"), default=0.0,
                   help="w_max, the largest weight norm")
    p.add_argument("--verbose", "-v", action="store_true", help="also print L")
    p.set_defaults(func=run)


def _kz_args(args: argparse.Namespace) -> tuple[float, str]:
    """(K_z, definition) from ``--kz-value`` and ``--kz``; ``--kz NUMBER`` is the old spelling."""
    # the list choices()["kz"] is, read where it is defined: choices() imports torch
    from lipschitz_lab.bounds import KZ_DEFINITIONS
    value, definition = args.kz_value, args.kz
    if definition is not None and definition not in KZ_DEFINITIONS:
        try:
            number = float(definition)
        except ValueError:
            raise ValueError(f"kz={definition!r}: must be one of {', '.join(KZ_DEFINITIONS)} (the K_z "
                             "definition); the value of K_z goes in --kz-value") from None
        if value is not None:
            raise ValueError(f"kz={definition!r}: K_z is already given by --kz-value {value:g}")
        print(f"lipschitz-lab: note: --kz {definition} as a number is deprecated; use --kz-value "
              f"{definition} (--kz names the K_z definition, as in train)", file=sys.stderr)
        value, definition = number, None
    if value is None:
        raise ValueError("kz-value is required: K_z, the penultimate activation bound (--kz-value NUMBER)")
    if value <= 0:
        raise ValueError(f"kz-value={value:g}: K_z must be > 0 (K_z = 0 gives L = 0 and an infinite "
                         "learning rate)")
    return value, definition or "frobenius"


def run(args) -> int:
    from lipschitz_lab.bounds import bound_inputs, learning_rate, lipschitz_bound
    if args.loss_module:
        from lipschitz_lab.cli.train import load_loss_modules
        load_loss_modules(args.loss_module)
    kz_value, kz_definition = _kz_args(args)
    flags = {"k": "classes", "K_a": "ka", "y_norm": "y-norm", "eps": "eps"}
    given = {"k": args.classes, "K_a": args.ka, "y_norm": args.y_norm, "eps": args.eps}
    for name in bound_inputs(args.loss):
        if given[name] is None:
            raise ValueError(f"--{flags[name]} is required for loss {args.loss!r}")
    if args.batch_size <= 0 or args.batch_size != int(args.batch_size):
        raise ValueError(f"batch-size must be a positive integer; got batch-size={args.batch_size:g}")
    if args.classes is not None and (args.classes < 2 or args.classes != int(args.classes)):
        raise ValueError(f"classes must be an integer >= 2; got classes={args.classes:g}")
    k = int(args.classes) if args.classes is not None else None
    L = lipschitz_bound(args.loss, args.bound, K_z=kz_value, m=int(args.batch_size), k=k,
                        K_a=args.ka, y_norm=args.y_norm, eps=args.eps, lam=args.weight_decay,
                        w_max=args.max_weight_norm, kz=kz_definition)
    if L <= 0:
        raise ValueError(f"L = {L:g} is not positive for these inputs (bound={args.bound}); "
                         "no learning rate follows")
    lr, _ = learning_rate(L)
    print(f"L = {L:.6g}\nlr = {lr:.3f}" if args.verbose else f"{lr:.3f}")
    return 0
