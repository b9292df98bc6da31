"""CIFAR ResNets built like Keras' ``cifar10_resnet.py`` example, which the paper used.

Keras' ``resnet_layer`` is Conv2D(3x3 or 1x1, "same", he_normal, **with bias**)
plus optional BatchNorm and ReLU, either conv-first (v1) or BN-ReLU-first (v2).
We follow it, including two choices a PyTorch ResNet usually makes differently:

- convolutions keep their bias even before a BatchNorm (Keras' default);
- a shortcut that changes shape is a 1x1 convolution with bias and no
  BatchNorm (a projection shortcut, He et al.'s option B, as in Keras).
  Identity shortcuts everywhere else.

Parameter counts (``count_parameters``, i.e. Keras' "trainable params";
Keras' "total params" adds BatchNorm's moving mean and variance, buffers here):

================================  ===========  =========  ============
model                             classes      ours       Keras total
================================  ===========  =========  ============
``resnet20`` (v1)                 10           273,066    274,442
``resnet164`` (v2, He widths)     100          1,738,948  1,763,172
``resnet164`` (v2, He widths)     10           1,715,818  1,740,042
``resnet164`` widths="keras"      100          4,964,676  4,995,812
================================  ===========  =========  ============

ResNet-164 has ~1.7M parameters in He et al. (2016b); that is the default.
Keras' example, read literally, widens the bottlenecks of stages 2 and 3
(see :class:`ResNetV2`) and gives ~5.0M; ``widths="keras"`` builds that.

The final pooling is global (Keras' AveragePooling2D(8) on an 8x8 map).

References: He et al., "Deep Residual Learning for Image Recognition" (2016,
v1); He et al., "Identity Mappings in Deep Residual Networks" (2016b, v2).
"""
from __future__ import annotations

import torch
from torch import nn

from lipschitz_lab.models.keras_init import batch_norm, init_keras
from lipschitz_lab.models.registry import register_model


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class BasicBlockV1(nn.Module):
    """conv-BN-ReLU-conv-BN, added to the (projected) input, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, c_out, 3, stride), batch_norm(c_out)
        self.conv2, self.bn2 = _conv(c_out, c_out, 3), batch_norm(c_out)
        self.relu = nn.ReLU()
        changes_shape = stride != 1 or c_in != c_out
        self.shortcut = _conv(c_in, c_out, 1, stride) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(self.shortcut(x) + y)


class BottleneckV2(nn.Module):
    """Pre-activation bottleneck: (BN-ReLU)-1x1, BN-ReLU-3x3, BN-ReLU-1x1, plus the shortcut.

    ``preact=False`` for the very first block, whose input was just through
    BN-ReLU in the stem (Keras skips it there).  The projection shortcut reads
    the raw input ``x``, as in Keras, not the pre-activated one.
    """

    def __init__(self, c_in: int, width: int, c_out: int, stride: int, preact: bool):
        super().__init__()
        self.pre = nn.Sequential(batch_norm(c_in), nn.ReLU()) if preact else nn.Identity()
        self.conv1 = _conv(c_in, width, 1, stride)
        self.bn2, self.conv2 = batch_norm(width), _conv(width, width, 3)
        self.bn3, self.conv3 = batch_norm(width), _conv(width, c_out, 1)
        self.relu = nn.ReLU()
        changes_shape = stride != 1 or c_in != c_out
        self.shortcut = _conv(c_in, c_out, 1, stride) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.pre(x))
        y = self.conv2(self.relu(self.bn2(y)))
        y = self.conv3(self.relu(self.bn3(y)))
        return self.shortcut(x) + y


class ResNetV1(nn.Module):
    """ResNet v1 for 32x32 images: depth = 6n + 2, 3 stages of n basic blocks, 16/32/64 filters."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, depth: int = 20):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, ...), got depth={depth!r}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(_conv(input_shape[0], 16, 3), batch_norm(16), nn.ReLU())
        blocks, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1  # downsample at each new stage
                blocks.append(BasicBlockV1(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(c_in, num_outputs)  # registered last: the probe's layer
        init_keras(self, "he_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


#: bottleneck width of each stage; every stage outputs 64, 128, 256 channels
WIDTHS = {
    "he": (16, 32, 64),     # He et al. (2016b): output = 4 x width; ResNet-164 has 1.7M parameters
    "keras": (16, 64, 128),  # Keras' example: a stage's width is the previous stage's output
}


class ResNetV2(nn.Module):
    """ResNet v2 (pre-activation bottlenecks): depth = 9n + 2, 3 stages of n blocks.

    Stage outputs are 64, 128 and 256 channels at 32x32, 16x16 and 8x8.  The
    bottleneck widths are He et al.'s 16/32/64 (``widths="he"``) or, as Keras'
    ``cifar10_resnet.py`` computes them, 16/64/128 (``widths="keras"``: its
    ``num_filters_in`` becomes the previous stage's output), which nearly
    triples the parameters at depth 164.
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, depth: int = 164,
                 widths: str = "he"):
        super().__init__()
        if (depth - 2) % 9 != 0 or depth < 11:
            raise ValueError(f"depth must be 9n + 2 (56, 110, 164, ...), got depth={depth!r}")
        if widths not in WIDTHS:
            raise ValueError(f"widths must be one of {', '.join(WIDTHS)}; got widths={widths!r}")
        n = (depth - 2) // 9
        self.stem = nn.Sequential(_conv(input_shape[0], 16, 3), batch_norm(16), nn.ReLU())
        blocks, c_in = [], 16
        for stage, (width, c_out) in enumerate(zip(WIDTHS[widths], (64, 128, 256))):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BottleneckV2(c_in, width, c_out, stride, preact=(stage, b) != (0, 0)))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(batch_norm(c_in), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_outputs)  # registered last: the probe's layer
        init_keras(self, "he_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


def _check_image_shape(input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got input_shape={input_shape!r}")


@register_model("resnet20")
def resnet20(input_shape: tuple[int, ...], num_outputs: int) -> ResNetV1:
    _check_image_shape(input_shape)
    return ResNetV1(input_shape, num_outputs, depth=20)


@register_model("resnet164")
def resnet164(input_shape: tuple[int, ...], num_outputs: int, *, widths: str = "he") -> ResNetV2:
    _check_image_shape(input_shape)
    return ResNetV2(input_shape, num_outputs, depth=164, widths=widths)
