"""A fully connected ReLU network: the smallest model the Lipschitz rule applies to."""
from __future__ import annotations

import math

from torch import nn

from lipschitz_lab.models.registry import register_model


class MLP(nn.Sequential):
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear(num_outputs).

    ``hidden=()`` gives a linear model (linear / logistic / softmax regression).
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int,
                 hidden: tuple[int, ...] = (128, 64)):
        if isinstance(hidden, int) or not all(
                isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in hidden):
            raise ValueError(f"hidden must be a sequence of positive ints, got hidden={hidden!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_outputs: int, *,
        hidden: tuple[int, ...] = (128, 64)) -> MLP:
    return MLP(input_shape, num_outputs, tuple(hidden) if isinstance(hidden, list) else hidden)
