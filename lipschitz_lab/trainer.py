"""The training loop: data, model, policy, records, checkpoints, divergence, stop.

``train(config)`` is the one entry point; the CLI, the panels and the studies
all call it.  Each step emits one plain record (the scheduler's, extended
with loss, accuracy and time), each epoch one epoch record; subscribers and
the run store consume the same stream.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import DataLoader

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.data import get_dataset
from lipschitz_lab.losses import TASKS, make_criterion
from lipschitz_lab.models import get_model
from lipschitz_lab.policies import PolicyContext, build_policy
from lipschitz_lab.probe import DivergenceError
from lipschitz_lab.records import Record, epoch_record, step_record
from lipschitz_lab.runs import RunStore, StoreWriter, load_checkpoint, open_store, save_checkpoint
from lipschitz_lab.runs.checkpoint import rng_state, set_rng_state

EVAL_BATCH = 512


class Stopped(Exception):
    """Raised inside the loop when the stop event is set."""


@dataclass
class Run:
    run_id: str | None
    status: str
    reason: str | None
    config: TrainConfig
    store_path: Path
    epochs: list[Record] = field(default_factory=list)
    steps: int = 0
    wall_time: float = 0.0

    @property
    def final(self) -> Record | None:
        return self.epochs[-1] if self.epochs else None


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


def check_fit(config: TrainConfig, splits) -> None:
    """The loss must suit the data set's task (bce needs two classes, ...)."""
    need = TASKS[config.loss]
    if splits.task != need:
        what = f"{splits.num_classes} classes" if splits.task != "regression" else "a real-valued target"
        raise ConfigError(f"loss={config.loss!r} needs a {need} data set; "
                          f"dataset={config.dataset!r} is {splits.task} with {what}")


def _accuracy(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor | None:
    if task == "multiclass":
        return (out.argmax(dim=1) == y).float().mean()
    if task == "binary":
        return ((out.reshape(y.shape) > 0).float() == y).float().mean()
    return None


@torch.no_grad()
def evaluate(model, loader, criterion, task: str, device) -> tuple[float | None, float | None]:
    if loader is None or len(loader.dataset) == 0:
        return None, None
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x).float()
        n = len(y)
        loss_sum += criterion(out, y).item() * n
        acc = _accuracy(out, y, task)
        correct += 0.0 if acc is None else acc.item() * n
        total += n
    model.train(was_training)
    return loss_sum / total, (correct / total if task != "regression" else None)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _share(value, rank: int, world: int):
    """Rank 0's value on every rank (the run id)."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def train(config: TrainConfig | dict, *, store: RunStore | str | os.PathLike | None = None,
          subscribers: Iterable[Callable[[Record], None]] = (), stop_event: threading.Event | None = None,
          progress: bool | None = None, resume: str | None = None, run_key: str | None = None) -> Run:
    """Train one run and return it; see :class:`~lipschitz_lab.config.TrainConfig`.

    Raises :class:`ConfigError` before any run is created when the config
    cannot work.  NaN/inf ends the run with status ``diverged``; the stop
    event ends it with ``stopped``; both keep every record.
    """
    # 1) configuration, data and model: every error here comes before a run exists
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    device = select_device(config.device)
    rank, world = _distributed()
    from lipschitz_lab.data import DATASETS
    from lipschitz_lab.models import MODELS
    if config.dataset not in DATASETS:
        raise ConfigError(f"dataset={config.dataset!r}: unknown; choose one of {', '.join(sorted(DATASETS))}")
    if config.model not in MODELS:
        raise ConfigError(f"model={config.model!r}: unknown; choose one of {', '.join(sorted(MODELS))}")
    try:
        splits = get_dataset(config.dataset, data_root=config.data_root, seed=config.seed,
                             val_fraction=config.val_fraction, augment=config.augment,
                             train_subset=config.train_subset, **config.dataset_options)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_fit(config, splits)
    torch.manual_seed(config.seed)
    try:
        model = get_model(config.model, input_shape=splits.input_shape, num_outputs=splits.num_outputs,
                          **config.model_options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model = model.to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = None
    if world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(splits.train, shuffle=True, seed=config.seed)
    order = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(splits.train, batch_size=config.batch_size, shuffle=sampler is None,
                              sampler=sampler, generator=order, num_workers=config.num_workers,
                              pin_memory=device.type == "cuda")
    eval_loaders = {name: DataLoader(ds, batch_size=EVAL_BATCH, num_workers=config.num_workers)
                    for name, ds in (("val", splits.val), ("test", splits.test))}
    criterion = make_criterion(config.loss, eps=config.eps)
    ctx = PolicyContext(train_loader, len(train_loader),
                        splits.num_classes if splits.task == "multiclass" else None, device, criterion)
    policy = build_policy(config, model, ctx)
    crit = policy.wrap_loss(criterion) if policy.wrap_loss else criterion

    # 2) the run in the store (rank 0 writes; every rank knows the id)
    store = open_store(store)
    run_id, start_epoch, step, time_offset = None, 0, 0, 0.0
    ckpt_dir = Path(store.path).parent / "checkpoints"
    if rank == 0:
        if resume:
            info = store.get_run(resume)
            run_id = resume
        else:
            run_id = store.create_run(config.to_dict(), name=config.name, study=config.study, key=run_key)
    run_id = _share(run_id, rank, world)
    ckpt_path = ckpt_dir / f"{run_id}.pt"
    if resume:
        if ckpt_path.exists():
            # on the CPU: load_state_dict copies each tensor to its parameter's device, and the
            # RNG states must stay CPU tensors
            state = load_checkpoint(ckpt_path, map_location="cpu")
            model.load_state_dict(state["model"])
            policy.optimizer.load_state_dict(state["optimizer"])
            if policy.scheduler is not None and state.get("scheduler") is not None:
                policy.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start_epoch, step, time_offset = state["epoch"] + 1, state["step"], state["time"]
            if rank == 0:
                store.truncate(run_id, after_epoch=state["epoch"])
        elif rank == 0:
            store.truncate(run_id, after_epoch=-1)
        if rank == 0:
            store.set_status(run_id, "running")

    writer = StoreWriter(store, run_id, enabled=rank == 0)
    subscribers = list(subscribers)
    sinks = [writer, *subscribers]

    def emit(record: Record) -> None:
        for sink in sinks:
            sink(record)

    def announce(status: str, reason: str | None, at_step: int, at_epoch: int) -> None:
        """Status records go to subscribers; the store keeps the status in the run's row."""
        for sink in subscribers:
            sink({"kind": "status", "status": status, "run_id": run_id, "reason": reason,
                  "step": at_step, "epoch": at_epoch})

    result = Run(run_id, "running", None, config, Path(store.path))
    announce("running", None, step, start_epoch)
    if progress is None:
        progress = rank == 0 and sys.stderr.isatty()
    t0 = time.perf_counter() - time_offset
    amp = config.amp and device.type == "cuda"
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            # 3) one epoch of training
            if sampler is not None:
                sampler.set_epoch(epoch)
            order.manual_seed(config.seed + epoch)      # the same batches after a resume
            net.train()
            if policy.on_train:
                policy.on_train()
            sums, rec = {"loss": 0.0, "acc": 0.0, "n": 0}, {}
            batches = train_loader
            if progress:
                from tqdm.auto import tqdm
                batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
            for x, y in batches:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if config.channels_last and device.type == "cuda" and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = net(x)
                    loss = crit(out.float(), y)
                loss_v = loss.item()
                if world > 1:   # every rank must see a divergence at the same step
                    flag = torch.tensor([loss_v], dtype=torch.float64, device=device)
                    torch.distributed.all_reduce(flag)
                    loss_v = loss_v if math.isfinite(flag.item()) else flag.item()
                if not math.isfinite(loss_v):
                    raise DivergenceError(f"step {step}: loss is {loss_v}")
                loss.backward()
                if config.keras_decay and policy.lipschitz:
                    for g in policy.optimizer.param_groups:
                        g["lr_scale"] = config.lr_scale / (1.0 + config.keras_decay * step)
                lr_used = policy.current_lr()
                policy.optimizer.step()
                if policy.lipschitz:
                    policy.scheduler.step()
                    rec = dict(policy.scheduler.last_record)
                elif policy.scheduler is not None and policy.per_step:
                    policy.scheduler.step()
                policy.optimizer.zero_grad(set_to_none=True)
                acc = _accuracy(out.detach().float(), y, splits.task)
                acc_v = None if acc is None else acc.item()
                if not policy.lipschitz:
                    rec = step_record(step=step, epoch=epoch, lr=lr_used, K_z=None, L=None, bound=None,
                                      grad_last=None, grad_layers=None, clamped=None)
                rec.update(loss=loss_v, acc=acc_v, time=time.perf_counter() - t0, step=step, epoch=epoch)
                emit(rec)
                sums["loss"] += loss_v * len(y)
                sums["acc"] += (acc_v or 0.0) * len(y)
                sums["n"] += len(y)
                step += 1
                if progress:
                    batches.set_postfix(loss=f"{loss_v:.3f}", lr=f"{rec['lr']:.3g}")
                if stop_event is not None and stop_event.is_set():
                    raise Stopped(f"stopped by the user at step {step}")
                if config.max_steps is not None and step >= config.max_steps:
                    break
            # 4) the epoch's end: scheduler, evaluation, record, checkpoint
            if policy.lipschitz:
                policy.scheduler.epoch_end()
            elif policy.scheduler is not None and not policy.per_step:
                policy.scheduler.step()
            if policy.on_eval:
                policy.on_eval()
            val = evaluate(model, eval_loaders["val"], criterion, splits.task, device)
            test = evaluate(model, eval_loaders["test"], criterion, splits.task, device)
            n = max(sums["n"], 1)
            erec = epoch_record(epoch=epoch, step=step, lr=rec["lr"] if sums["n"] else None,
                                train_loss=sums["loss"] / n,
                                train_acc=None if splits.task == "regression" else sums["acc"] / n,
                                val_loss=val[0], val_acc=val[1], test_loss=test[0], test_acc=test[1],
                                time=time.perf_counter() - t0, extra_steps=policy.extra_steps or None)
            for name in ("train_loss", "val_loss", "test_loss"):
                if erec[name] is not None and not math.isfinite(erec[name]):
                    raise DivergenceError(f"epoch {epoch}: {name} is {erec[name]}")
            emit(erec)
            result.epochs.append(erec)
            writer.flush()
            if config.checkpoint and rank == 0:
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": policy.optimizer.state_dict(),
                    "scheduler": policy.scheduler.state_dict() if policy.scheduler is not None else None,
                    "rng": rng_state(), "epoch": epoch, "step": step, "time": time.perf_counter() - t0})
            if config.max_steps is not None and step >= config.max_steps:
                break
        result.status = "finished"
    except DivergenceError as exc:
        result.status, result.reason = "diverged", str(exc)
    except Stopped as exc:
        result.status, result.reason = "stopped", str(exc)
    except Exception as exc:
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        result.steps, result.wall_time = step, time.perf_counter() - t0
        if policy.lipschitz:
            policy.scheduler.close()
        writer.close()
        if rank == 0:
            store.set_status(run_id, result.status, result.reason)
        announce(result.status, result.reason, step, epoch)
    return result
