"""The policy catalogue: every lr policy a study can name, and the groups that select them.

A *policy entry* is a name plus the config fields that make the policy, e.g.
``{"name": "lipschitz-paper-epoch-sgd", "lr_policy": "lipschitz", "bound":
"paper", "recompute": "epoch", "optimizer": "sgd"}``.  :func:`catalogue`
holds every entry the toolkit knows; :func:`select` picks entries by name,
by group (``lipschitz``, ``baselines``, ...) or by glob (``constant-*``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from lipschitz_lab.config import ConfigError, TrainConfig

__all__ = ["PolicyEntry", "GROUPS", "catalogue", "select", "LR_SCALES", "CONSTANT_LRS", "SCHEDULE_LR",
           "MOMENTUM_LRS", "SMOOTH_CS"]

#: the multiples of 1/L that ask "is 1/L near the best constant?"
LR_SCALES = (0.1, 0.3, 3.0, 10.0)
#: a constant-lr grid, 1/3 decade apart, around the usual SGD rates
CONSTANT_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: the peak rate of the decaying schedules (step, cosine, one-cycle)
SCHEDULE_LR = 0.1
# config fields a policy entry may not set: the study sets them per run
_RESERVED = ("seed", "name", "study")
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
#: a careful user's default: SGD with momentum 0.9 at a constant rate from this grid
MOMENTUM_LRS = (0.01, 0.03, 0.1)
#: lr = c/β of the smoothness bound: 1 is gradient descent's safe step, 2 the edge of stability
SMOOTH_CS = (1.0, 2.0)


@dataclass(frozen=True)
class PolicyEntry:
    """One lr policy of a study: a name and the config fields that make it."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError(f"policy name={self.name!r}: must be a non-empty string without '/'")
        for key in self.overrides:
            if key in _RESERVED:
                raise ConfigError(f"policy {self.name!r}: field {key!r} is set by the study, not by a policy")
            if key not in _FIELDS:
                raise ConfigError(f"policy {self.name!r}: unknown config field {key!r}")

    @property
    def lr_policy(self) -> str:
        return self.overrides.get("lr_policy", TrainConfig.lr_policy)

    @property
    def family(self) -> str:
        """``lipschitz`` (lr = 1/L), ``lipschitz-scaled`` (c/L, c != 1) or ``baseline``."""
        if self.lr_policy != "lipschitz":
            return "baseline"
        return "lipschitz" if float(self.overrides.get("lr_scale", 1.0)) == 1.0 else "lipschitz-scaled"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.overrides}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PolicyEntry":
        if not isinstance(data, dict) or "name" not in data:
            raise ConfigError(f"policy entry={data!r}: needs a 'name' and config fields")
        rest = {k: v for k, v in data.items() if k != "name"}
        return cls(data["name"], rest)


def _lipschitz(bound: str, recompute: str, optimizer: str, scale: float = 1.0, c: float = 1.0) -> PolicyEntry:
    name = f"lipschitz-{bound}-{recompute}-{optimizer}" + ("" if scale == 1.0 else f"-x{scale:g}") + (
        "" if c == 1.0 else f"-c{c:g}")
    over = {"lr_policy": "lipschitz", "bound": bound, "recompute": recompute, "optimizer": optimizer}
    if scale != 1.0:
        over["lr_scale"] = scale
    if c != 1.0:
        over["smooth_c"] = c
    return PolicyEntry(name, over)


def catalogue() -> dict[str, PolicyEntry]:
    """Every policy entry the toolkit knows, by name, in a fixed order."""
    entries: list[PolicyEntry] = []
    # 1) LipschitzLR: three bounds x per epoch/per step x SGD, momentum, Adam (the follow-up paper)
    for optimizer in ("sgd", "momentum", "adam"):
        for recompute in ("epoch", "step"):
            for bound in ("paper", "corrected", "strict"):
                entries.append(_lipschitz(bound, recompute, optimizer))
    # 2) what-if: the paper's rate times c
    entries += [_lipschitz("paper", "epoch", "sgd", c) for c in LR_SCALES]
    # 2b) beyond the paper: lr = c/β from the smoothness bound (c/2 of the heavy-ball limit with momentum)
    entries += [_lipschitz("smooth", "step", opt, c=c) for opt in ("sgd", "momentum") for c in SMOOTH_CS]
    entries += [_lipschitz("smooth", "epoch", "momentum")]
    # 2c) from the whole network's measured curvature (every 10 steps): c(1+μ)/λ_max, and the
    #     directional rule (GeN/CDAT-like, docs/curvature.md)
    entries += [_lipschitz("curvature", "step", opt) for opt in ("sgd", "momentum")]
    entries += [_lipschitz("directional", "step", "sgd")]
    # 3) baselines that need a rate: a constant grid and three decaying schedules, all plain SGD
    entries += [PolicyEntry(f"constant-{lr:g}", {"lr_policy": "constant", "lr": lr, "optimizer": "sgd"})
                for lr in CONSTANT_LRS]
    entries += [PolicyEntry(f"constant-momentum-{lr:g}", {"lr_policy": "constant", "lr": lr, "optimizer": "momentum"})
                for lr in MOMENTUM_LRS]
    entries += [PolicyEntry(f"{sched}-{SCHEDULE_LR:g}", {"lr_policy": sched, "lr": SCHEDULE_LR, "optimizer": "sgd"})
                for sched in ("step", "cosine", "onecycle")]
    # 4) baselines that find their own rate
    entries += [PolicyEntry("lr-range-test", {"lr_policy": "lr_range_test", "optimizer": "sgd"}),
                PolicyEntry("lr-range-test-min10", {"lr_policy": "lr_range_test_min10", "optimizer": "sgd"})]
    entries += [PolicyEntry("prodigy", {"lr_policy": "prodigy", "lr": 1.0, "optimizer": "sgd"}),
                PolicyEntry("dadapt-sgd", {"lr_policy": "dadapt_sgd", "lr": 1.0, "optimizer": "sgd"}),
                PolicyEntry("dog", {"lr_policy": "dog", "lr": 1.0, "optimizer": "sgd"}),
                # the package's README: 10-50x the usual SGD rate
                PolicyEntry("schedulefree-sgd", {"lr_policy": "schedulefree_sgd", "lr": 1.0, "optimizer": "sgd"})]
    # AGD (Bernstein et al. 2023): no hyperparameters at all (config.lr is not used)
    entries += [PolicyEntry("agd", {"lr_policy": "agd", "optimizer": "sgd"})]
    # 5) what a transformer is trained with: nanoGPT's AdamW (its shakespeare_char lr, decay 0.1 on
    #    matrices) and Schedule-Free AdamW at the package's default lr
    entries += [PolicyEntry("adamw-cosine", {"lr_policy": "adamw_cosine", "lr": 1e-3, "weight_decay": 0.1,
                                             "optimizer": "sgd"}),
                PolicyEntry("schedulefree-adamw", {"lr_policy": "schedulefree_adamw", "lr": 2.5e-3,
                                                   "optimizer": "sgd"})]
    return {e.name: e for e in entries}


#: group name -> predicate on an entry; usable wherever a policy name is
GROUPS = {
    "all": lambda e: True,
    "lipschitz": lambda e: e.lr_policy == "lipschitz",
    "lipschitz-variants": lambda e: e.family == "lipschitz",
    "lipschitz-scaled": lambda e: e.family == "lipschitz-scaled",
    "smooth": lambda e: e.overrides.get("bound") == "smooth",
    "curvature": lambda e: e.overrides.get("bound") in ("curvature", "directional"),
    "baselines": lambda e: e.family == "baseline",
    "constant": lambda e: e.lr_policy == "constant",
    "schedules": lambda e: e.lr_policy in ("step", "cosine", "onecycle"),
    "range-tests": lambda e: e.lr_policy.startswith("lr_range_test"),
    "parameter-free": lambda e: e.lr_policy in ("prodigy", "dadapt_sgd", "dog", "schedulefree_sgd",
                                                "schedulefree_adamw", "agd"),
    "transformer-baselines": lambda e: e.lr_policy in ("adamw_cosine", "prodigy", "schedulefree_adamw"),
}


def select(names: list[str] | tuple[str, ...] | str) -> list[PolicyEntry]:
    """Catalogue entries by name, group (:data:`GROUPS`) or glob; catalogue order, no duplicates."""
    if isinstance(names, str):
        names = [names]
    known = catalogue()
    chosen: set[str] = set()
    for name in names:
        if name in known:                   # a policy name wins over a group of the same name
            hits = [name]
        elif name in GROUPS:
            hits = [n for n, e in known.items() if GROUPS[name](e)]
        else:
            hits = [n for n in known if fnmatch.fnmatchcase(n, name)]
        if not hits:
            raise ConfigError(f"policies={name!r}: no policy, group or glob match; groups: {', '.join(GROUPS)}; "
                              f"{len(known)} policies, e.g. {', '.join(list(known)[:2])} "
                              "(`lipschitz-lab study --list` shows them all)")
        chosen.update(hits)
    return [e for n, e in known.items() if n in chosen]
