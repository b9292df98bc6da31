"""What a LipschitzLR checkpoint says about its configuration, and older checkpoints read as new ones."""
from __future__ import annotations

from typing import Any

__all__ = ["config_of", "upgrade_state"]


def config_of(sched) -> dict[str, Any]:
    """The settings a resume should match (a differing one is warned about, not refused)."""
    rule = sched.rule
    return {"loss": rule.loss, "bound": rule.bound, "kz": rule.kz, "recompute": sched.recompute,
            "fixed_after": sched.fixed_after, "num_classes": rule.num_classes, "eps": rule.eps,
            "min_lr": rule.min_lr, "max_lr": rule.max_lr, "loss_scale": rule.loss_scale,
            "exact_protocol": sched.exact_protocol, "variant_optimizer": rule.variant_optimizer,
            "layer": sched.probe.layer_name}


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state_dict written before the probe's statistics had names: its epoch maxima were a
    list (``epoch_max``, ``epoch_flags``) and the power iteration's vector sat at the top."""
    if "probe" in state:
        return state
    flags = state.get("epoch_flags") or [False, False]
    probe = {"epoch": {"values": state.get("epoch_max"),
                       "flags": {"has_K_a": bool(flags[0]), "has_y": bool(flags[1]), "has_sigma": True,
                                 "has_counted": False}},
             "power_v": state.get("power_v")}
    return {**state, "probe": probe, "layerwise": state.get("layerwise")}
