"""``lipschitz-lab lr``: the learning rate 1/L for given statistics."""
from __future__ import annotations


def _number(field: str, kind=float):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{field} must be a number; got {field}={text!r}") from None
    parse.__name__ = "number"  # argparse says: invalid number value
    return parse


def register(sub) -> None:
    p = sub.add_parser("lr", help="compute lr = 1/L from K_z and friends")
    p.add_argument("--loss", required=True, help="mse, bce, softmax_ce or label_smoothed_ce")
    p.add_argument("--bound", default="paper", help="paper, corrected or strict (default: paper)")
    p.add_argument("--kz", type=_number("kz"), required=True, help="K_z, the penultimate activation bound")
    p.add_argument("--kz-definition", default="frobenius", help="frobenius or max_abs (strict only)")
    p.add_argument("--batch-size", "-m", type=_number("batch-size"), required=True, help="m")
    p.add_argument("--classes", "-k", type=_number("classes"), help="k (softmax losses)")
    p.add_argument("--ka", type=_number("ka"), help="K_a, the output bound (mse)")
    p.add_argument("--y-norm", type=_number("y-norm"), help="y_norm, the target bound (mse)")
    p.add_argument("--eps", type=_number("eps"), help="label smoothing (label_smoothed_ce)")
    p.add_argument("--weight-decay", type=_number("weight-decay"), default=0.0, help="lam")
    p.add_argument("--max-weight-norm", type=_number("max-weight-norm"), default=0.0, help="w_max")
    p.add_argument("--verbose", "-v", action="store_true", help="also print L")
    p.set_defaults(func=run)


def run(args) -> int:
    from lipschitz_lab.bounds import bound_inputs, learning_rate, lipschitz_bound
    flags = {"k": "classes", "K_a": "ka", "y_norm": "y-norm", "eps": "eps"}
    given = {"k": args.classes, "K_a": args.ka, "y_norm": args.y_norm, "eps": args.eps}
    for name in bound_inputs(args.loss):
        if given[name] is None:
            raise ValueError(f"--{flags[name]} is required for loss {args.loss!r}")
    if args.batch_size <= 0 or args.batch_size != int(args.batch_size):
        raise ValueError(f"batch-size must be a positive integer; got batch-size={args.batch_size:g}")
    if args.classes is not None and (args.classes < 2 or args.classes != int(args.classes)):
        raise ValueError(f"classes must be an integer >= 2; got classes={args.classes:g}")
    if args.kz == 0:
        raise ValueError("kz = 0 gives L = 0 and an infinite learning rate; K_z must be > 0")
    k = int(args.classes) if args.classes is not None else None
    L = lipschitz_bound(args.loss, args.bound, K_z=args.kz, m=int(args.batch_size), k=k,
                        K_a=args.ka, y_norm=args.y_norm, eps=args.eps, lam=args.weight_decay,
                        w_max=args.max_weight_norm, kz=args.kz_definition)
    if L <= 0:
        raise ValueError(f"L = {L:g} is not positive for these inputs (bound={args.bound}); "
                         "no learning rate follows")
    lr, _ = learning_rate(L)
    print(f"L = {L:.6g}\nlr = {lr:.3f}" if args.verbose else f"{lr:.3f}")
    return 0
