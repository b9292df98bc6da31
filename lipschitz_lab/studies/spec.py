"""What a study is: one base config x a list of lr policies x seeds.

The policies come from the catalogue (:mod:`lipschitz_lab.studies.catalogue`):
:func:`~lipschitz_lab.studies.catalogue.select` picks entries by name, group or glob.

Each (policy, seed) pair is one run, named by a stable key
``study/policy/seed=S/<hash of the full config>``: run the same study twice
and the second finds the first's runs in the store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipschitz_lab.config import ConfigError, TrainConfig, key_baseline, read_toml
from lipschitz_lab.studies.catalogue import _FIELDS, _RESERVED, GROUPS, PolicyEntry, catalogue, select

__all__ = ["PolicyEntry", "RunPlan", "StudySpec", "GROUPS", "catalogue", "select",
           "STUDY_PRESETS", "study_preset", "load_study", "validate_study"]

@dataclass(frozen=True)
class RunPlan:
    """One run of a study: a policy at a seed, with its full config and its store key."""

    study: str
    policy: str
    seed: int
    config: dict[str, Any]
    key: str


def _defaults() -> dict[str, Any]:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(TrainConfig)}


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of the fields that differ from
    TrainConfig's defaults: a field added to TrainConfig later (with a default that keeps
    today's behaviour) leaves every stored run's key as it was."""
    defaults = key_baseline()       # TrainConfig's defaults, the changed ones at their old values
    changed = {k: v for k, v in config.items() if k not in defaults or v != defaults[k]}
    text = json.dumps(changed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class StudySpec:
    """A base config (TrainConfig fields) x policy entries x seeds."""

    name: str
    base: dict[str, Any]
    policies: list[PolicyEntry]
    seeds: list[int] = field(default_factory=lambda: [0])
    target_acc: float | None = None     # "epochs/time to target" in the results table

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError(f"name={self.name!r}: a study needs a non-empty name without '/'")
        self.policies = [p if isinstance(p, PolicyEntry) else PolicyEntry.from_dict(p) for p in self.policies]
        if not self.policies:
            raise ConfigError("policies=[]: a study needs at least one policy")
        names = [p.name for p in self.policies]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"policies: the name {dup[0]!r} appears twice")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                     for s in self.seeds):
            raise ConfigError(f"seeds={self.seeds!r}: need a non-empty list of integers >= 0")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={self.seeds!r}: a seed appears twice")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise ConfigError(f"target_acc={self.target_acc!r}: must be in (0, 1]")
        for key in self.base:
            if key in _RESERVED:
                raise ConfigError(f"base config field {key!r} is set by the study per run")
            if key not in _FIELDS:
                raise ConfigError(f"unknown config field {key!r}; known fields: {', '.join(sorted(_FIELDS))}")

    def runs(self) -> list[RunPlan]:
        """Every (policy, seed) run, validated; raises ConfigError before anything trains."""
        from lipschitz_lab.policies import POLICIES
        plans = []
        for entry in self.policies:
            if entry.lr_policy not in POLICIES:
                raise ConfigError(f"policy {entry.name!r}: lr_policy={entry.lr_policy!r} is unknown; "
                                  f"choose one of {', '.join(POLICIES)}")
            for seed in self.seeds:
                cfg = TrainConfig.from_dict({**self.base, **entry.overrides, "seed": seed,
                                             "name": entry.name, "study": self.name}).validate()
                config = cfg.to_dict()
                key = f"{self.name}/{entry.name}/seed={seed}/{config_hash(config)}"
                plans.append(RunPlan(self.name, entry.name, seed, config, key))
        return plans

    def replace(self, **changes) -> "StudySpec":
        """A copy with some fields changed; ``base_overrides=`` merges into the base config."""
        base_over = changes.pop("base_overrides", None) or {}
        spec = dataclasses.replace(self, **changes)
        if base_over:
            spec = dataclasses.replace(spec, base={**spec.base, **base_over})
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"study": {"name": self.name, "seeds": list(self.seeds), "target_acc": self.target_acc,
                          "policies": [p.to_dict() for p in self.policies]},
                "train": dict(self.base)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudySpec":
        """From ``{"study": {...}, "train": {...}}`` (the TOML layout, see :func:`load_study`)."""
        study = dict(data.get("study") or {})
        unknown = sorted(set(data) - {"study", "train"})
        if unknown:
            raise ConfigError(f"unknown table [{unknown[0]}]; a study file has [study] and [train]")
        allowed = {"name", "preset", "seeds", "policies", "target_acc"}
        bad = sorted(set(study) - allowed)
        if bad:
            raise ConfigError(f"unknown [study] field {bad[0]!r}; known: {', '.join(sorted(allowed))}")
        base_spec = study_preset(study["preset"]) if "preset" in study else None
        base = {**(base_spec.base if base_spec else {}), **dict(data.get("train") or {})}
        policies = _policies(study["policies"]) if "policies" in study else (
            base_spec.policies if base_spec else select("all"))
        name = study.get("name", base_spec.name if base_spec else None)
        if name is None:
            raise ConfigError("[study] name is missing: a study needs a name")
        seeds = study.get("seeds", base_spec.seeds if base_spec else [0])
        target = study.get("target_acc", base_spec.target_acc if base_spec else None)
        return cls(name, base, policies, list(seeds), target)


def validate_study(spec: StudySpec) -> list[RunPlan]:
    """Every run of ``spec``, checked as the trainer will check it, before anything trains.

    Each policy x seed config is validated, then each policy's config is built (data,
    model, optimizer, scheduler; at its first seed: a seed changes no check) and thrown
    away.  The first bad one raises :class:`ConfigError`, one line naming the policy and
    the field: ``policy 'bad': bound='paper': the paper gives no bound for loss=...``.
    Nothing is stored; the caller's RNG states are left as they were.
    """
    from lipschitz_lab.runs.checkpoint import rng_state, set_rng_state
    from lipschitz_lab.training.setup import build
    plans, first = [], {}
    for entry in spec.policies:
        try:
            got = dataclasses.replace(spec, policies=[entry]).runs()
        except ConfigError as exc:
            raise ConfigError(_in_policy(entry, str(exc), None)) from None
        plans += got
        first[entry.name] = got[0]
    saved = rng_state()
    try:
        for entry in spec.policies:
            try:
                setup = build(first[entry.name].config)
            except ValueError as exc:        # ConfigError, and the policies' own ValueErrors
                raise ConfigError(_in_policy(entry, str(exc), first[entry.name].config)) from None
            if setup.policy.lipschitz:
                setup.policy.scheduler.close()
    finally:
        set_rng_state(saved)
    return plans


def _in_policy(entry: PolicyEntry, message: str, config: dict[str, Any] | None) -> str:
    """``policy 'NAME': FIELD=VALUE: why``; a message that names no field first gets the field it
    tells the user to change (``use bound='corrected'``), else the first config field it mentions,
    else the policy's first own field."""
    message = " ".join(message.split())
    first = re.match(r"(\w+)=", message)
    if config is not None and not (first and first.group(1) in config):
        named = [f for f in re.findall(r"\b(\w+)=", message) if f in config]
        changed = [f for f in named if f"{f}={config[f]!r}" not in message]
        field_ = (changed or named or [*entry.overrides, "lr_policy"])[0]
        message = f"{field_}={config[field_]!r}: {message}"
    prefix = f"policy {entry.name!r}: "
    return message if message.startswith(prefix) else prefix + message


def _policies(items: list) -> list[PolicyEntry]:
    """A list of catalogue names/groups/globs (str) and entries (tables), in the order given."""
    if not isinstance(items, list):
        raise ConfigError(f"policies={items!r}: must be a list of names and tables")
    out: list[PolicyEntry] = []
    for item in items:
        new = select(item) if isinstance(item, str) else [PolicyEntry.from_dict(item)]
        out += [e for e in new if e.name not in {p.name for p in out}]
    return out


def load_study(path: str | Path) -> StudySpec:
    """Read a study from TOML::

        [study]
        name = "tiny"
        seeds = [0, 1]
        target_acc = 0.9
        policies = ["lipschitz-paper-epoch-sgd", "constant-*",
                    {name = "my-const", lr_policy = "constant", lr = 0.05}]
        [train]            # the base config: TrainConfig fields
        dataset = "digits"
        epochs = 2

    ``preset = "digits-quick"`` under ``[study]`` starts from a preset.
    """
    return StudySpec.from_dict(read_toml(path))


_GPT_RACE = ["lipschitz-strict-step-sgd", "lipschitz-strict-step-adam", "lipschitz-smooth-step-sgd",
             "lipschitz-smooth-step-momentum", "curvature", "transformer-baselines"]

#: the studies the CLI knows by name
STUDY_PRESETS: dict[str, dict[str, Any]] = {
    # the demo: every policy on digits with the small MLP, a few CPU-seconds per run
    "digits-quick": {
        "study": {"name": "digits-quick", "seeds": [0, 1], "target_acc": 0.9, "policies": ["all"]},
        "train": {"dataset": "digits", "model": "mlp", "batch_size": 64, "epochs": 4, "device": "cpu"},
    },
    # the benchmark (benchmarks/bench_whatif_mnist.py): the Table-1 CNN on a fixed 12,000-image MNIST subset,
    # all 10,000 test images, data where the data package looks; no augmentation (+40 % per epoch on 2 cores)
    "mnist-whatif": {
        "study": {"name": "mnist-whatif", "seeds": [0, 1], "target_acc": 0.97, "policies": ["all"]},
        "train": {"dataset": "mnist", "model": "mnist_cnn", "batch_size": 256, "epochs": 3,
                  "train_subset": 12000, "dataset_options": {"download": False}, "augment": False},
    },
    # the transformer race (issues 21, 23): tiny_gpt (d=64, 2 layers) on the shipped text corpus,
    # character level, 440 steps a run; LipschitzLR's strict, smooth and curvature rules per step against
    # nanoGPT's AdamW with warm-up and cosine, Prodigy and Schedule-Free AdamW; the curvature
    # instruments every 20 steps
    "gpt-quick": {
        "study": {"name": "gpt-quick", "seeds": [0, 1], "target_acc": 0.25, "policies": _GPT_RACE},
        "train": {"dataset": "text", "model": "tiny_gpt", "batch_size": 32, "epochs": 20, "device": "cpu",
                  "sharpness_every": 20},
    },
    # the same race on a + b mod 31 (only the answer is scored): 1,100 steps a run, ~2 min
    "gpt-quick-modadd": {
        "study": {"name": "gpt-quick-modadd", "seeds": [0, 1], "target_acc": 0.9, "policies": _GPT_RACE},
        "train": {"dataset": "modular_addition", "model": "tiny_gpt", "batch_size": 64, "epochs": 100,
                  "device": "cpu", "sharpness_every": 50},
    },
}


def study_preset(name: str) -> StudySpec:
    if name not in STUDY_PRESETS:
        raise ConfigError(f"preset={name!r}: unknown study preset; choose one of {', '.join(STUDY_PRESETS)}")
    data = STUDY_PRESETS[name]
    study = dict(data["study"])
    return StudySpec(study["name"], dict(data["train"]), _policies(study["policies"]),
                     list(study["seeds"]), study.get("target_acc"))
