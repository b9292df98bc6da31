"""1) Build a run: device, data, model and policy.  Every config error is raised here,
before the run exists in the store."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.data import BatchLoader, DataSplits, get_dataset, make_eval_loader, make_loader
from lipschitz_lab.losses import make_criterion, task_of
from lipschitz_lab.models import check_model_data, get_model
from lipschitz_lab.policies import Policy, PolicyContext, build_policy
from lipschitz_lab.steplog import StepLog

__all__ = ["Setup", "build", "select_device"]


@dataclass
class Setup:
    config: TrainConfig
    device: torch.device
    rank: int
    world: int
    splits: DataSplits
    model: torch.nn.Module          # the module the probe, the optimizer and checkpoints see
    net: torch.nn.Module            # what the loop calls: model, or its DDP/compiled wrapper
    train_loader: BatchLoader
    eval_loaders: dict[str, BatchLoader]
    criterion: Callable             # the lab's own loss (evaluation)
    crit: Callable                  # the loss the step minimises (the policy may wrap it)
    policy: Policy
    log: StepLog                    # step records stay on the device until a flush
    amp: bool
    monitor: Any = None             # the curvature instruments of a baseline (LipschitzLR carries its own)


def select_device(preference: str = "auto") -> torch.device:
    """CUDA, then MPS, then the CPU (or exactly what was asked for)."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())   # the index DDP's device_ids needs
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA device is available")
    if preference == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(preference)


def distributed_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _data(config: TrainConfig) -> DataSplits:
    from lipschitz_lab.data import DATASETS
    from lipschitz_lab.models import MODELS
    for field, value, known in (("dataset", config.dataset, DATASETS), ("model", config.model, MODELS)):
        if value not in known:
            raise ConfigError(f"{field}={value!r}: unknown; choose one of {', '.join(sorted(known))}")
    try:
        splits = get_dataset(config.dataset, data_root=config.data_root, seed=config.seed,
                             val_fraction=config.val_fraction, augment=config.augment,
                             train_subset=config.train_subset, **config.dataset_options)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    need = task_of(config.loss)
    if splits.task != need:
        what = f"{splits.num_classes} classes" if splits.task != "regression" else "a real-valued target"
        raise ConfigError(f"loss={config.loss!r} needs a {need} data set; "
                          f"dataset={config.dataset!r} is {splits.task} with {what}")
    return splits


def _model(config: TrainConfig, splits: DataSplits, device: torch.device, world: int):
    torch.manual_seed(config.seed)
    try:
        check_model_data(config.model, splits)      # tiny_gpt on digits, mlp on text: one line naming both
        model = get_model(config.model, input_shape=splits.input_shape, num_outputs=splits.num_outputs,
                          **config.model_options)
    except ValueError as exc:       # a builder's own message (resnet20 on digits' rows) gets both names
        said = str(exc) if "dataset=" in str(exc) else \
            f"model={config.model!r}: does not take dataset={config.dataset!r}: {exc}"
        raise ConfigError(said) from None
    model = model.to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)   # the probe's hooks run eagerly, outside the graph (torch.compiler.disable)
    return model, net


def build(config: TrainConfig | dict[str, Any]) -> Setup:
    """Everything a run needs, validated; raises :class:`ConfigError` before anything is stored."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    device = select_device(config.device)
    rank, world = distributed_rank()
    splits = _data(config)
    model, net = _model(config, splits, device, world)
    try:
        train_loader = make_loader(splits.train, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                                   device=device, on_device=config.data_on_device,
                                   num_workers=config.num_workers, rank=rank, world=world)
        eval_loaders = {name: make_eval_loader(ds, device=device, on_device=config.data_on_device,
                                               num_workers=config.num_workers)
                        for name, ds in (("val", splits.val), ("test", splits.test))}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    criterion = make_criterion(config.loss, eps=config.eps)
    log = StepLog(config.flush_every)
    ctx = PolicyContext(train_loader, len(train_loader),
                        splits.num_classes if splits.task == "multiclass" else None, device, criterion, log)
    policy = build_policy(config, model, ctx)
    crit = policy.wrap_loss(criterion) if policy.wrap_loss else criterion
    monitor = _monitor(config, model, policy, criterion)
    return Setup(config, device, rank, world, splits, model, net, train_loader, eval_loaders, criterion, crit,
                 policy, log, config.amp and device.type == "cuda", monitor)


def _monitor(config: TrainConfig, model, policy, criterion):
    """λ_max, edge, dir_curv and α for a policy without LipschitzLR (``sharpness_every``)."""
    if config.sharpness_every is None or policy.lipschitz:
        return None
    if config.compile:
        raise ConfigError("sharpness_every with compile=True: the curvature instruments differentiate the "
                          "eager model twice; train without compile to measure curvature")
    from lipschitz_lab.probe.monitor import CurvatureMonitor
    return CurvatureMonitor(model, policy.optimizer, criterion, every=config.sharpness_every,
                            iters=config.sharpness_iters)
