"""Keras' defaults, so that the paper's Keras models start where Keras starts them.

- ``glorot_uniform`` kernels, zero biases: Keras' default for Conv2D and Dense.
- ``he_normal``: a normal with std ``sqrt(2 / fan_in)`` truncated at two
  standard deviations (Keras rescales the std by 1/0.8796 so that the
  *truncated* draw still has that variance).
- ``BatchNormalization``: epsilon 1e-3 and moving-average momentum 0.99;
  PyTorch's ``momentum`` is the weight of the *new* batch, so 1 - 0.99.
"""
from __future__ import annotations

import math

from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # = 1 - Keras' 0.99

_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def batch_norm(num_features: int, dims: int = 2) -> nn.Module:
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)


def he_normal_(weight) -> None:
    fan_in = weight[0].numel()  # in_channels * kh * kw, or in_features
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_keras(model: nn.Module, kernel: str) -> nn.Module:
    """Re-initialise every Conv2d/Linear with ``kernel`` ("glorot_uniform" | "he_normal")."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if kernel == "he_normal":
                he_normal_(m.weight)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
