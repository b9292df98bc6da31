"""The GPU checks' trainer runs: the ResNet-20 epoch (plain and compiled) and the paper's MNIST run.

Each goes through ``lipschitz_lab.trainer.train`` as a user's run would: data
on the device (``gpu_checks_images`` or MNIST), the config's amp,
channels_last and compile, records into the checks' run store.
"""
from __future__ import annotations

import contextlib
import functools
import math
import statistics
import threading
import time
from typing import TYPE_CHECKING
from unittest import mock

import torch

import _gpu_data as data
from lipschitz_lab.config import preset
from lipschitz_lab.data import default_data_root
from lipschitz_lab.trainer import train

if TYPE_CHECKING:
    from _gpu_ctx import Ctx


def deadline(seconds: float) -> tuple[threading.Event, callable]:
    """A stop event and a subscriber that sets it once ``seconds`` have passed (the run ends 'stopped')."""
    ev, end = threading.Event(), time.perf_counter() + seconds

    def sub(_record):
        if time.perf_counter() > end:
            ev.set()
    return ev, sub


def trained(ctx: Ctx, cfg: dict, limit_s: float) -> dict:
    """Train ``cfg``, stopped after ``limit_s``; its status, epochs and bound checks."""
    ev, sub = deadline(limit_s)
    t = time.perf_counter()
    run = train(cfg, store=ctx.store, subscribers=(sub,), stop_event=ev, progress=False)
    total = time.perf_counter() - t
    steps = ctx.store.records(run.run_id, kind="step")
    ratios = [r["grad_last"] / r["L"] for r in steps if r.get("L") and r.get("grad_last") is not None]
    prev, epochs = 0.0, []
    for e in run.epochs:
        epochs.append({"epoch": e["epoch"] + 1, "s": round(e["time"] - prev, 3), "lr": e["lr"],
                       "train_acc": e["train_acc"], "val_acc": e["val_acc"], "test_acc": e["test_acc"]})
        prev = e["time"]
    return {"status": run.status, "reason": run.reason, "steps": run.steps, "wall_s": round(run.wall_time, 2),
            "call_s": round(total, 2), "epochs": epochs, "grad_over_L_steps": sum(x > 1 for x in ratios),
            "steps_with_L": len(ratios), "max_grad_over_L": max(ratios) if ratios else None,
            "lr_range": [min(r["lr"] for r in steps), max(r["lr"] for r in steps)] if steps else None,
            "config": {k: cfg[k] for k in ("model", "bound", "recompute", "amp", "channels_last", "compile",
                                           "epochs", "batch_size", "weight_decay") if k in cfg}}


def small_run(ctx: Ctx, name: str) -> dict:
    """A short trainer run on MNIST-shaped images: 2 epochs of ``sync_steps`` batches, a flush every 8 steps."""
    b = ctx.sizes.batch["mnist_cnn"]
    return dict(dataset=data.NAME, dataset_options=dict(source=data.pick("mnist", ctx.smoke),
                                                        n_train=b * ctx.sizes.sync_steps, n_test=b),
                model="mnist_cnn", loss="softmax_ce", batch_size=b, epochs=2, bound="strict", recompute="step",
                max_lr=0.05, val_fraction=0.0, augment=True, device=ctx.device.type, data_on_device=True,
                checkpoint=False, flush_every=8, seed=0, name=name)


@contextlib.contextmanager
def compile_backend(backend: str | None):
    """``torch.compile`` with this backend while inside (None: as it is)."""
    if backend is None:
        yield
        return
    with mock.patch.object(torch, "compile", functools.partial(torch.compile, backend=backend)):
        yield


# -- the ResNet-20 epoch, plain and compiled ------------------------------------------------------
def epoch_run(ctx: Ctx, compiled: bool) -> dict:
    sz = ctx.sizes
    source = data.pick("cifar10_subset", ctx.smoke)
    cfg = dict(dataset=data.NAME, dataset_options=dict(source=source, n_train=sz.epoch_images,
                                                       n_test=min(512, sz.epoch_images)),
               model="resnet20", loss="softmax_ce", batch_size=sz.epoch_batch, epochs=sz.epoch_epochs,
               bound="strict", recompute="epoch", weight_decay=1e-3, augment=True, val_fraction=0.0, amp=True,
               channels_last=True, data_on_device=True, compile=compiled, checkpoint=False,
               device=ctx.device.type, seed=0, name=f"gpu resnet20 epoch{' compiled' if compiled else ''}")
    if compiled:
        torch._dynamo.reset()
    with compile_backend(sz.compile_backend if compiled else None):
        out = trained(ctx, cfg, 300 if compiled else 90)
    secs = [e["s"] for e in out["epochs"]]
    steady = statistics.median(secs[1:]) if len(secs) > 1 else None
    out.update(data=f"{source}: its {len(data.images(source)[0])} train images tiled to {sz.epoch_images}",
               steps_per_epoch=math.ceil(sz.epoch_images / sz.epoch_batch), epoch_s=secs, steady_epoch_s=steady,
               target_s=3.0, target_met=steady is not None and steady <= 3.0)
    if compiled and steady is not None:
        from torch._dynamo.utils import counters
        out.update(compile_s=round(secs[0] - steady, 2), graph_breaks=sum(counters["graph_break"].values()),
                   unique_graphs=counters["stats"]["unique_graphs"], backend=sz.compile_backend or "inductor")
    return out


def step_epoch(ctx: Ctx) -> dict:
    return epoch_run(ctx, compiled=False)


def step_compile(ctx: Ctx) -> dict:
    return epoch_run(ctx, compiled=True)


# -- the paper's MNIST run --------------------------------------------------------------------------
def step_mnist(ctx: Ctx) -> dict:
    if not ctx.smoke and not data.available("mnist"):
        return {"skipped": f"no MNIST under {default_data_root()} (pass --data-archive, or set $LIPSCHITZ_LAB_DATA)"}
    base = dict(checkpoint=False, device=ctx.device.type, data_on_device=True, seed=0)
    if ctx.smoke:
        base.update(dataset=data.NAME, batch_size=16,
                    dataset_options=dict(source="fake_mnist", n_train=64, n_test=32))
    paper = preset("mnist-paper", epochs=1, **base).replace(name="gpu mnist paper bound")
    strict = preset("mnist-paper", bound="strict", epochs=ctx.sizes.mnist_epochs, amp=True, channels_last=True,
                    **base).replace(name="gpu mnist strict bf16")
    return {"paper_bound": trained(ctx, paper.to_dict(), 60), "strict": trained(ctx, strict.to_dict(), 150)}
