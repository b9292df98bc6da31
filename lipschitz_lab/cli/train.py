"""``lipschitz-lab train``: one run, a per-epoch table, the run id and an HTML report."""
from __future__ import annotations

import dataclasses
import os
import sys

from lipschitz_lab.config import PRESETS, ConfigError, TrainConfig, load_config

#: flags that map one-to-one onto TrainConfig fields (flag name = field name with dashes)
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_SKIP = {"dataset_options", "model_options", "name", "study"}


def register(sub) -> None:
    p = sub.add_parser("train", help="train one run with LipschitzLR (or a baseline policy)")
    p.add_argument("--config", metavar="FILE.toml", help="read fields from a TOML file (flags override it)")
    p.add_argument("--preset", choices=None, metavar="NAME",
                   help=f"the paper's experiments: {', '.join(PRESETS)}")
    p.add_argument("--store", default=None, help="run store (default: runs/lipschitz_lab.db)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    p.add_argument("--name", help="a name for the run")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    for name, f in _FIELDS.items():
        if name in _SKIP or name == "name":
            continue
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=name, action=argparse_bool(), default=None)
        else:
            p.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                           type=_parser_for(name, f.default))
    p.set_defaults(func=run)


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


def _parser_for(name: str, default):
    kind = type(default) if default is not None else (int if name in ("fixed_after", "max_steps", "train_subset") else str)

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r}: must be {kind.__name__}") from None
    parse.__name__ = kind.__name__
    return parse


def build_config(args) -> TrainConfig:
    data: dict = {}
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
    print(f"run {result.run_id}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
    if not args.no_report:
        from lipschitz_lab.runs import RunStore
        from lipschitz_lab.ui.report import write_report
        path = write_report(RunStore(result.store_path), result.run_id)
        print(f"report: {path}")
    return 0   # finished, stopped and diverged are outcomes, recorded; a failure raised above
