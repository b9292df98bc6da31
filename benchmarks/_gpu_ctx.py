"""What every step of the GPU checks gets: the sizes (the GPU's, or tiny ones for --smoke) and the context."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from _gpu_loops import MODELS
from lipschitz_lab.runs import RunStore


@dataclass(frozen=True)
class Sizes:
    """How big each step is: :data:`GPU` (the checks) or :data:`SMOKE` (tiny, CPU: tests the script)."""

    batch: dict                 # model -> batch size (the paper's on the GPU)
    overhead_steps: int         # steps per timed window
    overhead_rounds: int        # windows per mode, taking turns
    overhead_warm: int          # untimed steps first
    pool: int                   # distinct batches a timing loop cycles through
    sync_models: tuple          # models of the hand-written sync windows
    sync_steps: int             # steps per sync window (the trainer's: per epoch)
    epoch_images: int           # the ResNet-20 epoch: 50,000, CIFAR-10's training set size
    epoch_batch: int
    epoch_epochs: int           # the first one compiles and tunes; the rest are the figure
    mnist_epochs: int
    compile_backend: str | None  # None: inductor; "eager": dynamo traces only (no C++ compiler on a CPU box)


GPU = Sizes(batch={model: batch for model, (_, _, batch) in MODELS.items()}, overhead_steps=64, overhead_rounds=7,
            overhead_warm=16, pool=16, sync_models=("mnist_cnn", "resnet20"), sync_steps=24, epoch_images=50_000,
            epoch_batch=128, epoch_epochs=3, mnist_epochs=20, compile_backend=None)
SMOKE = Sizes(batch={"mnist_cnn": 8, "resnet20": 2}, overhead_steps=2, overhead_rounds=2, overhead_warm=1,
              pool=2, sync_models=("mnist_cnn",), sync_steps=3, epoch_images=8, epoch_batch=4, epoch_epochs=2,
              mnist_epochs=1, compile_backend="eager")


@dataclass
class Ctx:
    out: Path
    smoke: bool
    sizes: Sizes
    device: torch.device
    store: RunStore
    results: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
