"""3) One training step, one epoch, and 4) the epoch's end.

A step never waits for the device: the loss and the accuracy stay tensors,
folded into the step's entry of the :class:`~lipschitz_lab.steplog.StepLog`
beside the scheduler's numbers; the epoch's loss and accuracy are summed on the
device.  The log decodes the entries every ``flush_every`` steps and at the
epoch's end, and raises :class:`~lipschitz_lab.errors.DivergenceError` at the
first step whose loss, K_z, K_a or gradient maxima are NaN or inf.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lipschitz_lab.data.sequence import flatten_tokens, token_correct
from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.probe.curvature import CURVATURE, decode_curvature, edge
from lipschitz_lab.records import Record, epoch_record, step_record
from lipschitz_lab.steplog import Part
from lipschitz_lab.training.session import Session
from lipschitz_lab.training.setup import Setup

__all__ = ["Stopped", "EpochSums", "train_step", "evaluate", "close_schedule_epoch", "end_epoch"]


class Stopped(Exception):
    """Raised inside the loop when the stop event is set."""


class EpochSums:
    """The epoch's loss and correct predictions, summed on the device (read once, at its end)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.n = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        self.loss += loss.detach().double() * n
        if correct is not None:
            self.correct += correct
        self.n += n


def correct_count(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor | None:
    """How many predictions are right, as a float64 device tensor (None for regression).
    (B, T, V) logits: over the tokens not ignored, in sequences' worth (``token_correct``)."""
    if out.dim() == 3 and y.dim() == 2:
        return token_correct(out, y)
    if task == "multiclass":
        return (out.argmax(dim=1) == y).sum().double()
    if task == "binary":
        return ((out.reshape(y.shape) > 0).to(y.dtype) == y).sum().double()
    return None


def _loss_part(step: int):
    """The ``loss`` segment's decoder: the loss, or the divergence it shows."""
    def decode(values: list[float]) -> Part:
        (loss,) = values                             # the segment holds one number
        return Part({"loss": loss}, None if math.isfinite(loss) else f"step {step}: loss is {loss}")
    return decode


def _correct_part(values: list[float]) -> Part:
    (correct,) = values or [None]                    # one number, or none without labels
    return Part({"correct": correct})


def _curvature_part(values: list[float]) -> Part:
    return Part(decode_curvature(values) if values else dict.fromkeys(CURVATURE.names))


def compose_step(host: dict[str, Any], parts: dict[str, Part]) -> Record:
    """The step's record, in one place: the scheduler's ``schedule`` part (a Lipschitz policy) or
    the baseline's rate, then the trainer's loss, accuracy and time."""
    schedule = parts.get("schedule")
    if schedule is not None:
        record = dict(schedule.fields)
    else:
        record = step_record(step=host["step"], epoch=host["epoch"], lr=host["lr"], K_z=None, L=None,
                             bound=None, grad_last=None, grad_layers=None, clamped=None)
    correct = parts["correct"].fields["correct"]
    record.update(loss=parts["loss"].fields["loss"], acc=None if correct is None else correct / host["n"],
                  time=host["time"], step=host["step"], epoch=host["epoch"])
    curvature = parts.get("curvature")
    if curvature is not None:          # a baseline's instruments; edge with the rate its update used
        lam = curvature.fields["lambda_max"]
        record.update(curvature.fields, edge_limit=host["edge_limit"],
                      edge=None if lam is None or record["lr"] is None else edge(record["lr"], lam,
                                                                                  host["weight_decay"]))
    return record


def train_step(setup: Setup, session: Session, x: torch.Tensor, y: torch.Tensor, epoch: int,
               sums: EpochSums) -> None:
    """Forward, backward, update, and the step's entry in the log (no host sync)."""
    config, policy, log, device = setup.config, setup.policy, setup.log, setup.device
    if config.channels_last and device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    log.open(compose_step, step=session.step, epoch=epoch)
    if setup.monitor is not None:
        setup.monitor.observe(y)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.amp):
        out = setup.net(x)
        loss = setup.crit(*flatten_tokens(out.float(), y))    # (B, T, V) -> (B*T, V)
    log.add("loss", [loss.detach()], _loss_part(session.step), priority=0)
    loss.backward()
    if config.keras_decay and policy.lipschitz:
        for g in policy.optimizer.param_groups:
            g["lr_scale"] = config.lr_scale / (1.0 + config.keras_decay * session.step)
    lr_used = None if policy.lipschitz else policy.current_lr()
    policy.optimizer.step()
    if policy.scheduler is not None and (policy.lipschitz or policy.per_step):
        policy.scheduler.step()
    if setup.monitor is not None:
        curv = setup.monitor.step()
        log.add("curvature", [curv] if curv is not None else [], _curvature_part,
                weight_decay=config.weight_decay, edge_limit=setup.monitor.limit)
    policy.optimizer.zero_grad(set_to_none=True)
    correct = correct_count(out.detach().float(), y, setup.splits.task)
    sums.add(loss, correct, len(y))
    log.add("correct", [correct] if correct is not None else [], _correct_part, lr=lr_used, n=len(y),
            time=session.elapsed())
    log.close_entry()
    session.step += 1


@torch.no_grad()
def evaluate(model, loader, criterion, task: str, device) -> tuple[float | None, float | None]:
    """Mean loss and accuracy over ``loader``, summed on the device and read once."""
    if loader is None or len(loader.dataset) == 0:
        return None, None
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x).float()
        loss_sum += criterion(*flatten_tokens(out, y)).double() * len(y)
        c = correct_count(out, y, task)
        if c is not None:
            correct += c
        total += len(y)
    model.train(was_training)
    loss_v, correct_v = torch.stack([loss_sum, correct]).tolist()
    return loss_v / total, (correct_v / total if task != "regression" else None)


def close_schedule_epoch(setup: Setup) -> None:
    """Deliver the epoch's step records (raises DivergenceError at the first bad step), end
    the scheduler's epoch and put the policy in evaluation mode (Schedule-Free's average)."""
    policy = setup.policy
    setup.log.flush(wait=True)
    if policy.lipschitz:
        policy.scheduler.epoch_end()
    elif policy.scheduler is not None and not policy.per_step:
        policy.scheduler.step()
    if policy.on_eval:
        policy.on_eval()


def end_epoch(setup: Setup, session: Session, epoch: int, sums: EpochSums) -> Record:
    """Deliver the epoch's step records, close the scheduler's epoch, evaluate, emit the epoch record."""
    policy, task = setup.policy, setup.splits.task
    close_schedule_epoch(setup)
    val = evaluate(setup.model, setup.eval_loaders["val"], setup.criterion, task, setup.device)
    test = evaluate(setup.model, setup.eval_loaders["test"], setup.criterion, task, setup.device)
    n = max(sums.n, 1)
    loss_sum, correct = torch.stack([sums.loss, sums.correct]).tolist()
    last = setup.log.last
    erec = epoch_record(epoch=epoch, step=session.step,
                        lr=last["lr"] if sums.n and last is not None else None,
                        train_loss=loss_sum / n, train_acc=None if task == "regression" else correct / n,
                        val_loss=val[0], val_acc=val[1], test_loss=test[0], test_acc=test[1],
                        time=session.elapsed(), extra_steps=policy.extra_steps or None)
    for name in ("train_loss", "val_loss", "test_loss"):
        if erec[name] is not None and not math.isfinite(erec[name]):
            raise DivergenceError(f"epoch {epoch}: {name} is {erec[name]}")
    for sink in setup.log.sinks:
        sink(erec)
    session.writer.flush()
    return erec
