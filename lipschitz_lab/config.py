"""Training configuration: one dataclass, validated before anything runs.

Every field carries the reason for its default.  Bad values raise
:class:`ConfigError` naming the field and the value; the CLI prints it as one
line with exit code 2.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipschitz_lab.bounds import KZ_DEFINITIONS
from lipschitz_lab.optim_variants import OPTIMIZERS

#: where a run trains: "auto" picks cuda, then mps, then the cpu
DEVICES = ("auto", "cpu", "cuda", "mps")


class ConfigError(ValueError):
    """A configuration value that cannot work; names the field and the value."""


@dataclass
class TrainConfig:
    # -- what to train ---------------------------------------------------------
    dataset: str = "digits"          # offline, bundled with scikit-learn: runs anywhere
    model: str = "mlp"               # the smallest model that fits every data set
    loss: str = "softmax_ce"         # the paper's main case (eq. 20)
    eps: float = 0.1                 # label smoothing, for loss="label_smoothed_ce" only
    # -- how the rate is chosen -------------------------------------------------
    lr_policy: str = "lipschitz"     # "lipschitz", a baseline (constant, step, cosine, onecycle, ...) or a study's
    optimizer: str = "sgd"           # the paper uses plain SGD; momentum/rmsprop/adam are the follow-up's
    bound: str = "strict"            # a rigorous bound: learns where the paper's (PAPER_RULE) collapses
    kz: str = "frobenius"            # the authors' code; "max_abs" is the paper's text
    recompute: str = "step"          # each batch's own bound; the paper recomputes once per epoch
    exact_protocol: bool = False     # the authors' extra eval pass per epoch (costly, BatchNorm trap)
    fixed_after: int | None = None   # the paper's "fixed" run: compute the rate once, after this many epochs
    lr_scale: float = 1.0            # what-if: multiply 1/L (0.1, 0.3, 3, 10)
    smooth_c: float = 1.0            # c of lr = c/beta (smooth), c/lambda_max (curvature); 1: GD's safe step
    measure_beta: bool = False       # record the smoothness beta for any bound (a few matvecs per step)
    smooth_layerwise: bool = False   # bound="smooth": a rate per Linear layer (an exploration, docs/smoothness.md)
    sharpness_every: int | None = None  # λ_max, edge, dir_curv, α every N steps: ~1.8 steps a product (RESULTS.md)
    sharpness_iters: int = 5         # Lanczos steps per measurement: 5 read ~98 % of λ_max (docs/curvature.md)
    keras_decay: float = 0.0         # the authors' Keras `decay`: lr/(1 + decay*iterations); 0 = off
    lr: float = 0.01                 # baselines' rate (the follow-up paper's SGD baseline)
    min_lr: float = 1e-6             # clamps guard against K_z -> 0 or an exploding K_z
    max_lr: float = 10.0             # the authors' histories never exceed ~3; 10 catches the BN trap
    # -- data and loop ----------------------------------------------------------
    batch_size: int = 32             # m; small data sets need small batches for enough steps
    epochs: int = 10                 # digits: > 0.9 validation accuracy in seconds on a CPU
    weight_decay: float = 0.0        # lam; enters L as lam * w_max
    seed: int = 0
    val_fraction: float = 0.1
    augment: bool = True             # the paper's augmentation for image data sets
    train_subset: int | None = None  # a fixed class-balanced subset (CPU-sized studies)
    data_root: str | None = None     # where mnist/cifar files live
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    # -- machinery --------------------------------------------------------------
    device: str = "auto"             # cuda, then mps, then cpu
    amp: bool = False                # bf16 autocast on CUDA only
    channels_last: bool = False      # CUDA conv nets only
    num_workers: int = 0             # data loader workers; 0 is fastest for small sets
    max_steps: int | None = None     # stop after this many steps (smoke tests, quick studies)
    checkpoint: bool = True          # a checkpoint every epoch, for resume
    flush_every: int = 32            # steps between record deliveries (1: wait for the device every step)
    data_on_device: bool | None = None  # in-memory data sets on the GPU, augmented there; None: on CUDA only
    compile: bool = False            # torch.compile the model (the probe's hooks run outside the graph)
    name: str | None = None
    study: str | None = None

    def validate(self) -> "TrainConfig":
        def need(cond: bool, fld: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{fld}={getattr(self, fld)!r}: {msg}")
        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "must be an integer >= 1")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "must be an integer >= 1")
        from lipschitz_lab.scheduler import BOUNDS, RECOMPUTE
        for fld, choices in (("optimizer", OPTIMIZERS), ("bound", BOUNDS), ("kz", KZ_DEFINITIONS),
                             ("recompute", RECOMPUTE), ("device", DEVICES)):
            need(getattr(self, fld) in choices, fld, f"must be one of {', '.join(choices)}")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.lr_scale > 0, "lr_scale", "must be > 0")
        need(self.keras_decay >= 0, "keras_decay", "must be >= 0")
        need(self.max_lr > 0, "max_lr", "must be > 0")
        need(self.min_lr > 0, "min_lr", "must be > 0")
        need(self.min_lr <= self.max_lr, "min_lr", f"must be <= max_lr={self.max_lr!r}")
        need(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        need(0 <= self.eps < 1, "eps", "must be in [0, 1)")
        need(self.fixed_after is None or self.fixed_after >= 1, "fixed_after", "must be >= 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1")
        need(isinstance(self.flush_every, int) and self.flush_every >= 1, "flush_every", "must be an integer >= 1")
        need(self.smooth_c > 0, "smooth_c", "must be > 0")
        need(self.sharpness_every is None or (isinstance(self.sharpness_every, int) and self.sharpness_every >= 1),
             "sharpness_every", "must be an integer >= 1 or None")
        need(isinstance(self.sharpness_iters, int) and self.sharpness_iters >= 1, "sharpness_iters",
             "must be an integer >= 1")
        need(self.train_subset is None or self.train_subset >= 1, "train_subset", "must be >= 1")
        from lipschitz_lab.losses import loss_names
        need(self.loss in loss_names(), "loss", f"must be one of {', '.join(loss_names())}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}; known fields: {', '.join(sorted(names))}")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


#: the paper's rule (Yedida & Saha, 2019): its bound, recomputed once per epoch; one flag
#: (``lipschitz-lab train --paper``) or one click (the app's "the paper's rule") away
PAPER_RULE: dict[str, Any] = {"bound": "paper", "recompute": "epoch"}

#: TrainConfig's defaults before they were made to learn (the paper's rule, 5 epochs of 64).
#: Run keys hash the fields that differ from :func:`key_baseline`, which keeps these values, so
#: every run stored before the change keeps its key (a study still skips it).  Never edit them.
LEGACY_DEFAULTS: dict[str, Any] = {**PAPER_RULE, "epochs": 5, "batch_size": 64}


def key_baseline() -> dict[str, Any]:
    """The values run keys are hashed against: TrainConfig's defaults, with :data:`LEGACY_DEFAULTS`
    for the fields whose default changed since keys were introduced."""
    return {**TrainConfig().to_dict(), **LEGACY_DEFAULTS}


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; an unreadable or invalid file is a :class:`ConfigError` naming it."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"config={str(p)!r}: cannot read the file ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config={str(p)!r}: not valid TOML ({exc})") from None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of config fields (a ``[train]`` table or top-level keys)."""
    data = read_toml(path)
    return data.get("train", data)


#: the paper's experiments (section 7); full runs need a GPU
PRESETS: dict[str, dict[str, Any]] = {
    "mnist-paper": dict(dataset="mnist", model="mnist_cnn", loss="softmax_ce", batch_size=256,
                        epochs=20, weight_decay=0.0, augment=True, bound="paper", recompute="epoch"),
    "cifar10-resnet20-fixed": dict(dataset="cifar10", model="resnet20", loss="softmax_ce", batch_size=128,
                                   epochs=300, weight_decay=1e-3, augment=True, bound="paper",
                                   recompute="epoch", fixed_after=1),
    "cifar10-resnet20-adaptive": dict(dataset="cifar10", model="resnet20", loss="softmax_ce", batch_size=128,
                                      epochs=300, weight_decay=1e-3, augment=True, bound="paper",
                                      recompute="epoch"),
    "cifar100-resnet164": dict(dataset="cifar100", model="resnet164", loss="softmax_ce", batch_size=128,
                               epochs=300, weight_decay=1e-4, augment=True, bound="paper", recompute="epoch"),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r}: unknown; choose one of {', '.join(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})
