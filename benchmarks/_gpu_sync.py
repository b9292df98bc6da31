"""Host syncs during training steps: a guard that makes one raise, and a census that counts them.

On CUDA the guard is ``torch.cuda.set_sync_debug_mode("error")`` (the census:
``"warn"``, each warning's Python stack kept).  On the CPU nothing waits for a
device, so the Tensor methods that would (``SYNCING``) raise or count instead,
as tests/test_no_sync.py does.  ``StepLog.flush`` is exempt from the guard: the
claim (issue 11) is no sync *between* flushes; the census counts inside flushes
apart.

:func:`step_sync` runs the windows: the hand-written loop (:mod:`_gpu_loops`) with
its batches from a DeviceLoader, and the trainer's own steps and batches.
"""
from __future__ import annotations

import collections
import contextlib
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import torch

import _gpu_data as data
from _gpu_loops import MODELS, MODES, Loop
from _gpu_train import small_run
from lipschitz_lab.data import make_loader
from lipschitz_lab.data.images import ImageTensorDataset
from lipschitz_lab.data.loader import DeviceLoader
from lipschitz_lab.steplog import StepLog
from lipschitz_lab.trainer import train

if TYPE_CHECKING:
    from _gpu_ctx import Ctx

SYNCING = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")
PACKAGE = str(Path(__file__).resolve().parents[1] / "lipschitz_lab")


class HostSync(RuntimeError):
    """A syncing Tensor method ran while the CPU guard was armed."""


def where(frames) -> str:
    """The innermost frame in lipschitz_lab/ (else the innermost one), as ``path:line in function``."""
    frames = list(frames)
    ours = [f for f in frames if f.filename.startswith(PACKAGE)] or frames[-1:]
    if not ours:
        return "?"
    f = ours[-1]
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


class SyncGuard:
    """``with guard.installed(): ... with guard.armed(): step()``: a host sync in ``step`` raises
    (``count=False``) or is counted by ``guard.bucket`` and location (``count=True``)."""

    def __init__(self, cuda: bool, *, count: bool = False):
        self.cuda, self.count = cuda, count
        self.depth, self.in_flush, self.bucket = 0, 0, "other"
        self.counts: collections.Counter[str] = collections.Counter()

    def _cuda_mode(self) -> None:
        if self.cuda:
            on = self.depth > 0 and (self.count or not self.in_flush)
            torch.cuda.set_sync_debug_mode(("warn" if self.count else "error") if on else 0)

    def _hit(self, what: str, frames) -> None:
        bucket = "flush" if self.in_flush else self.bucket
        self.counts[f"{bucket}: {what} at {where(frames)}"] += 1

    def _on_warning(self, message, *args, **kwargs) -> None:
        if "synchroniz" in str(message):             # CUDA's sync debug mode "warn"
            self._hit("CUDA sync", traceback.extract_stack()[:-1])

    def _method(self, name: str, original):
        def method(t, *a, **k):
            if self.depth and not self.in_flush and not self.count:
                raise HostSync(f"Tensor.{name}() between two flushes")
            if self.depth and self.count:
                self._hit(f"Tensor.{name}()", traceback.extract_stack()[:-1])
            return original(t, *a, **k)
        return method

    @contextlib.contextmanager
    def installed(self):
        """Patch what the guard needs (undone on exit)."""
        saved = {}
        guard, flush = self, StepLog.flush

        def guarded_flush(log, *a, **k):
            guard.in_flush += 1
            guard._cuda_mode()
            try:
                return flush(log, *a, **k)
            finally:
                guard.in_flush -= 1
                guard._cuda_mode()
        StepLog.flush = guarded_flush
        if not self.cuda:
            for name in SYNCING:
                saved[name] = getattr(torch.Tensor, name)
                setattr(torch.Tensor, name, self._method(name, saved[name]))
        with warnings.catch_warnings():
            if self.cuda and self.count:
                warnings.simplefilter("always")
                warnings.showwarning = self._on_warning
            try:
                yield self
            finally:
                StepLog.flush = flush
                for name, original in saved.items():
                    setattr(torch.Tensor, name, original)
                self.depth = 0
                self._cuda_mode()

    @contextlib.contextmanager
    def armed(self, bucket: str = "step"):
        self.depth += 1
        old, self.bucket = self.bucket, bucket
        self._cuda_mode()
        try:
            yield
        finally:
            self.depth -= 1
            self.bucket = old
            self._cuda_mode()


def verdict(fn) -> dict:
    """Run ``fn()`` (which arms a guard around its steps): pass, or the first sync and where it was."""
    try:
        steps = fn()
    except (HostSync, RuntimeError) as exc:
        text = str(exc)
        if not isinstance(exc, HostSync) and "synchroniz" not in text:
            raise
        return {"pass": False, "error": text.splitlines()[0][:300],
                "at": where(traceback.extract_tb(exc.__traceback__))}
    return {"pass": True, "steps": steps}


# -- the windows ------------------------------------------------------------------------------
def sync_loop(ctx: Ctx, model: str, mode: str) -> dict:
    """The hand-written loop, batches from a DeviceLoader: ``sync_steps`` steps armed (after step 0)."""
    b, n = ctx.sizes.batch[model], ctx.sizes.sync_steps
    source = data.pick(MODELS[model][1], ctx.smoke)
    x, y, _, _ = data.images(source)
    x, y = data.tile(x, y, (n + 1) * b)
    ds = ImageTensorDataset(x, y, augmentation=data.SOURCES[source][2])
    loader = make_loader(ds, batch_size=b, shuffle=True, seed=0, device=ctx.device, on_device=True)
    loop = Loop(model, mode, ctx.device, flush_every=10**6)      # no flush inside the window
    guard = SyncGuard(ctx.cuda)

    def steps() -> int:
        it = iter(loader)
        loop.step(*next(it))                  # step 0: the warm start, its entry flushed at once
        with guard.installed():
            for _ in range(n):
                with guard.armed():
                    loop.step(*next(it))
            with guard.armed():
                loop.end_window()             # the per-epoch rate, on the device too
        return n
    try:
        return verdict(steps)
    finally:
        loop.close()


@contextlib.contextmanager
def armed_trainer(guard: SyncGuard):
    """Arm ``guard`` around the trainer's steps (after step 0) and each batch after an epoch's first."""
    import lipschitz_lab.trainer as trainer_mod
    step, iterate = trainer_mod.train_step, DeviceLoader.__iter__

    def checked_step(setup, session, *args, **kwargs):
        with guard.armed("step") if session.step > 0 else contextlib.nullcontext():
            return step(setup, session, *args, **kwargs)

    def checked_iter(loader):
        it = iterate(loader)
        batch = next(it, None)                # the epoch's order: one index copy per epoch
        while batch is not None:
            yield batch
            with guard.armed("loader"):
                batch = next(it, None)
    with mock.patch.object(trainer_mod, "train_step", checked_step), \
            mock.patch.object(DeviceLoader, "__iter__", checked_iter):
        yield


def sync_trainer(ctx: Ctx) -> dict:
    guard = SyncGuard(ctx.cuda)

    def steps() -> int:
        with guard.installed(), armed_trainer(guard):
            run = train(small_run(ctx, "gpu sync window"), store=ctx.store, progress=False)
        if run.status != "finished":
            raise RuntimeError(f"the sync-window run ended {run.status}: {run.reason}")
        return run.steps
    return verdict(steps)


def sync_census(ctx: Ctx) -> dict:
    """Every sync of a short trainer run, by where it happened (CUDA "warn" mode; the CPU: host reads)."""
    guard = SyncGuard(ctx.cuda, count=True)
    with guard.installed(), armed_trainer(guard), guard.armed("other"):
        run = train(small_run(ctx, "gpu sync census"), store=ctx.store, progress=False)
    buckets: dict[str, int] = {}
    for key, n in guard.counts.items():
        bucket = key.split(":", 1)[0]
        buckets[bucket] = buckets.get(bucket, 0) + n
    return {"what": "CUDA syncs" if ctx.cuda else "host reads of CPU tensors (no device here: not syncs)",
            "status": run.status, "steps": run.steps, "epochs": len(run.epochs), "by_bucket": buckets,
            "per_step_between_flushes": (buckets.get("step", 0) + buckets.get("loader", 0)) / max(run.steps, 1),
            "where": dict(guard.counts.most_common(15))}


def step_sync(ctx: Ctx) -> dict:
    loops = {f"{m}/{mode}": sync_loop(ctx, m, mode) for m in ctx.sizes.sync_models for mode in MODES
             if mode != "sgd"}
    out = {"loops": loops, "trainer": sync_trainer(ctx), "census": sync_census(ctx),
           "checked_by": "torch.cuda.set_sync_debug_mode('error')" if ctx.cuda
           else "syncing Tensor methods patched to raise (CPU)"}
    out["pass"] = all(v["pass"] for v in loops.values()) and out["trainer"]["pass"]
    return out
