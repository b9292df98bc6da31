"""``lipschitz-lab train``: one run, a per-epoch table, the run id and an HTML report."""
from __future__ import annotations

import dataclasses
import functools
import os
import sys

from lipschitz_lab.cli import LaterHelp
from lipschitz_lab.config import PRESETS, ConfigError, TrainConfig, load_config

#: flags that map one-to-one onto TrainConfig fields (flag name = field name with dashes)
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_SKIP = {"dataset_options", "model_options", "name", "study"}

#: what a TrainConfig field means, where its comment in config.py says why its default is
#: what it is rather than what the field is; every other flag's help is its comment
MEANINGS = {
    "dataset": "the data set to train on",
    "model": "the architecture; K_z is measured at its last nn.Linear",
    "loss": "the loss E whose Lipschitz bound L sets lr = 1/L (--loss-module adds your own)",
    "lr_policy": "how the rate is chosen: lipschitz (lr = 1/L) or a baseline schedule or optimizer",
    "optimizer": "the update rule; with lipschitz, the follow-up paper's rate for it",
    "bound": "which bound sets the rate: paper (as published), corrected (the derived supremum), "
             "strict (a rigorous bound on the last layer's gradient), smooth (lr = c/beta, from the "
             "smoothness supremum S2), curvature (lr = c/lambda_max of the whole network's Hessian) or "
             "directional (the minimum of the quadratic along the step)",
    "kz": "the K_z definition: frobenius (||A||_F of the penultimate activations) or max_abs (max |a|)",
    "recompute": "when lr = 1/L is recomputed",
    "lr": "the rate of the baseline policies (lipschitz sets its own, 1/L)",
    "min_lr": "the smallest rate lipschitz may set",
    "max_lr": "the largest rate lipschitz may set (K_z = 0 gives L = 0 and this rate)",
    "batch_size": "m, the examples per step",
    "epochs": "passes over the training set",
    "weight_decay": "lambda, the L2 weight decay; L grows by lambda * max||w||",
    "seed": "seeds the weights, the splits and the batch order",
    "val_fraction": "share of the training set held out for validation",
    "device": "where to train",
}


#: what a field whose default is None does then (help says this, never "default: None")
NONE_MEANS = {
    "data_root": "$LIPSCHITZ_LAB_DATA, else ~/.local/share/lipschitz-lab/data",
    "fixed_after": "none (recomputed all run long)",
    "train_subset": "none (the whole training split)",
    "max_steps": "none (every epoch to the end)",
    "sharpness_every": "never (curvature rules: every 10 steps)",
    "data_on_device": "on CUDA only",
}


def register(sub) -> None:
    p = sub.add_parser("train", help="train one run with LipschitzLR (or a baseline policy)",
                       description="Train one run and record it in the run store. Every flag from "
                                   "--dataset on is a field of TrainConfig (lipschitz_lab/config.py); "
                                   "--config reads them from a TOML file and flags override it.")
    p.add_argument("--config", metavar="FILE.toml", help="read fields from a TOML file (flags override it)")
    p.add_argument("--preset", metavar="NAME", help=f"the paper's experiments: {', '.join(PRESETS)}")
    p.add_argument("--loss-module", action="append", metavar="PATH", default=[],
                   help="a Python file that registers losses of your own, loaded before the config "
                        "is checked (repeatable)")
    p.add_argument("--store", default=None,
                   help="run store (default: $LIPSCHITZ_LAB_STORE, else runs/lipschitz_lab.db)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    p.add_argument("--name", help="a name for the run")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument("--paper", action="store_true",
                   help="the paper's rule: --bound paper --recompute epoch (a --bound or --recompute flag "
                        "still wins)")
    for name, f in _FIELDS.items():
        if name in _SKIP:
            continue
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool", bool, "bool | None"):     # None: the config's own default (auto)
            p.add_argument(flag, dest=name, action=argparse_bool(), default=None, help=_help_for(name))
        else:
            p.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                           type=_parser_for(name, f), help=_help_for(name))
    p.set_defaults(func=run)


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


@functools.lru_cache(maxsize=1)
def field_comments() -> dict[str, str]:
    """Each TrainConfig field's comment in config.py (why its default is what it is)."""
    import ast
    import inspect
    import io
    import tokenize

    from lipschitz_lab import config
    source = inspect.getsource(config)
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    cls = next(node for node in ast.parse(source).body
               if isinstance(node, ast.ClassDef) and node.name == TrainConfig.__name__)
    return {node.target.id: comments[node.end_lineno] for node in cls.body
            if isinstance(node, ast.AnnAssign) and node.end_lineno in comments}


def _help_for(name: str) -> LaterHelp:
    """The flag's help, built when help is shown: what it means, its choices, its default and why."""
    def text() -> str:
        from lipschitz_lab.choices import choices
        why = field_comments().get(name)
        parts = [MEANINGS.get(name) or why or ""]
        options = choices().get(name)
        if options:
            parts.append(f"one of: {', '.join(options)}")
        default = _FIELDS[name].default
        default = None if default is dataclasses.MISSING else default
        shown = NONE_MEANS.get(name, default) if default is None else default
        parts.append(f"default: {shown}" + (f" ({why})" if why and name in MEANINGS else ""))
        return "; ".join(p for p in parts if p)
    return LaterHelp(text)


def _parser_for(name: str, f: dataclasses.Field):
    """Parse the flag's text as the field's type (``int | None`` -> int); errors name the field."""
    if f.default is not None and f.default is not dataclasses.MISSING:
        kind = type(f.default)
    else:
        annotation = str(f.type)
        kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r}: must be {kind.__name__}") from None
    parse.__name__ = kind.__name__
    return parse


def load_loss_modules(paths) -> None:
    """Import each file of loss definitions (``--loss-module``), naming what it registered."""
    for path in paths:
        from lipschitz_lab.losses import load_loss_module
        names = load_loss_module(path)
        print(f"registered {', '.join(names) or 'no loss'} from {path}", file=sys.stderr)


def build_config(args) -> TrainConfig:
    load_loss_modules(getattr(args, "loss_module", None) or [])
    data: dict = {}
    if getattr(args, "paper", False):
        from lipschitz_lab.config import PAPER_RULE
        data.update(PAPER_RULE)
    if args.preset:
        if args.preset not in PRESETS:
            raise ConfigError(f"preset={args.preset!r}: unknown; choose one of {', '.join(PRESETS)}")
        data.update(PRESETS[args.preset])
    if args.config:
        data.update(load_config(args.config))
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    return TrainConfig.from_dict(data).validate()
def print_table(run, out=None) -> None:
    out = out or sys.stdout
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    print(f"{'epoch':>5} {'lr':>10} {'train_loss':>11} {'train_acc':>9} {'val_loss':>9} {'val_acc':>8} "
          f"{'test_acc':>8} {'time_s':>7}", file=out)
    for e in run.epochs:
        print(f"{e['epoch'] + 1:>5} {f(e['lr'], '.4g'):>10} {f(e['train_loss'], '.4f'):>11} "
              f"{f(e['train_acc'], '.4f'):>9} {f(e['val_loss'], '.4f'):>9} {f(e['val_acc'], '.4f'):>8} "
              f"{f(e['test_acc'], '.4f'):>8} {f(e['time'], '.1f'):>7}", file=out)


def _init_distributed(config: TrainConfig) -> bool:
    """Under torchrun: NCCL when the run trains on CUDA (one GPU per process), else gloo."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    import torch
    import torch.distributed as dist
    from lipschitz_lab.trainer import select_device
    if select_device(config.device).type == "cuda":
        local, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local >= count:
            raise ConfigError(f"LOCAL_RANK={local}: this machine has {count} CUDA device(s) and NCCL needs one "
                              f"per process; start at most {count} per node (torchrun --nproc_per_node={count}) "
                              f"or train on the CPU (--device cpu, gloo)")
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    return True


def run(args) -> int:
    from lipschitz_lab.trainer import train
    config = build_config(args)
    if args.name:
        config.name = args.name
    distributed = _init_distributed(config)
    try:
        import torch.distributed as dist
        rank = dist.get_rank() if distributed else 0
        result = train(config, store=args.store, resume=args.resume)
        if distributed:
            dist.barrier()   # every rank is done before any tears the group down
    finally:
        if distributed:
            dist.destroy_process_group()
    if rank != 0:
        return 0
    print_table(result)
    from lipschitz_lab.runs import RunStore
    from lipschitz_lab.runs.verdict import run_verdict
    store = RunStore(result.store_path)
    if not args.no_report:
        from lipschitz_lab.ui.report import write_report
        print(f"report: {write_report(store, result.run_id)}")
    from lipschitz_lab.runs.edge import edge_line
    edge = edge_line(store.records(result.run_id, "step"))     # with --sharpness-every only
    if edge:
        print(edge)
    # the last line: how it ended, and what happened (healthy, collapsed, blew up, ...)
    said = run_verdict(store, result.run_id)
    print(f"run {result.run_id}: " + (str(said) if said.kind == result.status
                                       else f"{result.status} · {said}"))
    return 0   # finished, stopped and diverged are outcomes, recorded; a failure raised above
