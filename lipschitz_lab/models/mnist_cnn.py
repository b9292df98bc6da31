"""The MNIST network of Yedida & Saha (2019), Table 1, with Keras semantics.

Keras "valid" padding is no padding and "same" for a 3x3 kernel is padding 1.
For 1x28x28 inputs the feature maps are 28 -> 26 -> 24 -> 12 (pool) -> 12 -> 12
-> 6 (pool) -> 6, so Flatten gives 128 * 6 * 6 = 4608 features and the network
has 730,346 parameters with 10 outputs.  The input of the last Linear (the
penultimate activation the Lipschitz bound uses) is the last Dropout's output.
"""
from __future__ import annotations

from torch import nn

from lipschitz_lab.models.keras_init import batch_norm, init_keras
from lipschitz_lab.models.registry import register_model


class MnistCNN(nn.Sequential):
    """Conv32-Conv32-Pool-Drop-Conv64-Conv64-Pool-Drop-Conv128-Drop-Dense128-BN-Drop-Dense."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int):
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (channels, height, width), got input_shape={input_shape!r}")
        c, h, w = input_shape
        # two valid 3x3 convs take 4 pixels, each pool halves (floor)
        fh, fw = (h - 4) // 2 // 2, (w - 4) // 2 // 2
        if fh < 1 or fw < 1:
            raise ValueError(f"input_shape={input_shape!r} is too small: height and width must be >= 8")
        super().__init__(
            nn.Conv2d(c, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(128 * fh * fw, 128), nn.ReLU(),
            batch_norm(128, dims=1),
            nn.Dropout(0.25),
            nn.Linear(128, num_outputs),
        )
        init_keras(self, "glorot_uniform")


@register_model("mnist_cnn")
def mnist_cnn(input_shape: tuple[int, ...], num_outputs: int) -> MnistCNN:
    return MnistCNN(input_shape, num_outputs)
