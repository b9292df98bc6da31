"""Which module is the last layer, and the model's trainable parameters in a fixed order."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["find_last_linear", "first_tensor", "trainable_parameters"]


def find_last_linear(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose input is the penultimate activation: ``layer`` by module
    name, else the last ``nn.Linear`` in registration order."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ValueError(f"layer={layer!r} is not a module of the model; "
                             f"modules: {', '.join(n for n in modules if n)}")
        return layer, modules[layer]
    linears = [(n, mod) for n, mod in modules.items() if isinstance(mod, nn.Linear)]
    if not linears:
        raise ValueError("layer=None but the model has no nn.Linear; name the last layer with layer=...")
    return linears[-1]


def first_tensor(args: Iterable[Any]) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def trainable_parameters(model: nn.Module) -> tuple[list[str], list[nn.Parameter], list[str]]:
    """Trainable parameters in a fixed order, a tied one once, with the module that owns each."""
    names, params, owners, seen = [], [], [], set()
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
                params.append(p)
                owners.append(mod_name or "(root)")
    return names, params, owners
