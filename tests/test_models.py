"""Models: parameter counts against closed-form sums, shapes, and the last-Linear contract.

The oracles ``conv``/``dense``/``bn`` below count parameters from the layer
sizes alone (weights + biases; BatchNorm's gamma and beta), independently of
the module code; the literal numbers are the Keras summaries.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipschitz_lab.models import MODELS, count_parameters, default_model_for, get_model, register_model
from lipschitz_lab.models.keras_init import BN_EPS, BN_MOMENTUM
from lipschitz_lab.models.resnet import ResNetV1, ResNetV2


def conv(c_in: int, c_out: int, k: int) -> int:
    return k * k * c_in * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def bn(c: int) -> int:
    return 2 * c


def bn_buffers(model: nn.Module) -> int:
    return sum(b.numel() for name, b in model.named_buffers() if "running" in name)


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


# ---------------------------------------------------------------- counts

def test_mnist_cnn_has_the_papers_730346_parameters():
    model = get_model("mnist_cnn", input_shape=(1, 28, 28), num_outputs=10)
    # Table 1: 28 -> 26 -> 24 -> pool 12 -> 12 -> 12 -> pool 6 -> 6, flatten 128 * 6 * 6
    oracle = (conv(1, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3)
              + conv(64, 128, 3) + dense(128 * 6 * 6, 128) + bn(128) + dense(128, 10))
    assert count_parameters(model) == oracle == 730_346
    assert count_parameters(model, trainable_only=True) == 730_346


def resnet20_oracle(k: int) -> int:
    total = conv(3, 16, 3) + bn(16)
    c_in = 16
    for c_out in (16, 32, 64):
        for block in range(3):
            total += conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)
            if c_in != c_out:
                total += conv(c_in, c_out, 1)  # projection shortcut, no BN
            c_in = c_out
    return total + dense(64, k)


def test_resnet20_count_matches_keras_resnet_v1():
    model = get_model("resnet20", input_shape=(3, 32, 32), num_outputs=10)
    assert count_parameters(model) == resnet20_oracle(10) == 273_066
    # Keras' summary counts BN moving mean/variance too: 274,442 "total params"
    assert count_parameters(model) + bn_buffers(model) == 274_442


def resnet_v2_oracle(k: int, widths: tuple[int, int, int], n: int = 18) -> int:
    total = conv(3, 16, 3) + bn(16)
    c_in = 16
    for stage, (w, c_out) in enumerate(zip(widths, (64, 128, 256))):
        for block in range(n):
            preact = bn(c_in) if (stage, block) != (0, 0) else 0
            total += preact + conv(c_in, w, 1) + bn(w) + conv(w, w, 3) + bn(w) + conv(w, c_out, 1)
            if block == 0:
                total += conv(c_in, c_out, 1)
            c_in = c_out
    return total + bn(256) + dense(256, k)


@pytest.mark.parametrize("k, widths, expected", [
    (100, "he", 1_738_948),
    (10, "he", 1_715_818),
    (100, "keras", 4_964_676),
])
def test_resnet164_counts(k, widths, expected):
    model = get_model("resnet164", input_shape=(3, 32, 32), num_outputs=k, widths=widths)
    sizes = {"he": (16, 32, 64), "keras": (16, 64, 128)}[widths]
    assert count_parameters(model) == resnet_v2_oracle(k, sizes) == expected
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 1 + 54
    assert len(model.blocks) == 54  # 3 stages x 18 bottlenecks = (164 - 2) / 3 layers each


def test_mlp_count_and_linear_model():
    assert count_parameters(get_model("mlp", input_shape=(64,), num_outputs=10)) == \
        dense(64, 128) + dense(128, 64) + dense(64, 10)
    linear = get_model("mlp", input_shape=(1, 8, 8), num_outputs=3, hidden=())
    assert count_parameters(linear) == dense(64, 3)
    assert [type(m) for m in linear] == [nn.Flatten, nn.Linear]


# ---------------------------------------------------------------- shapes and the last Linear

@pytest.mark.parametrize("name, shape, k", [
    ("mlp", (64,), 10),
    ("mlp", (1, 8, 8), 1),
    ("mnist_cnn", (1, 28, 28), 10),
    ("mnist_cnn", (3, 32, 32), 1),
    ("resnet20", (3, 32, 32), 10),
    ("resnet20", (1, 28, 28), 4),
    ("resnet164", (3, 32, 32), 100),
])
def test_forward_shape_and_last_module_is_the_output_linear(name, shape, k):
    torch.manual_seed(0)
    model = get_model(name, input_shape=shape, num_outputs=k).eval()
    seen = {}
    fc = list(model.modules())[-1]
    assert isinstance(fc, nn.Linear) and fc is last_linear(model) and fc.out_features == k
    fc.register_forward_hook(lambda m, inp, out: seen.update(out=out))
    x = torch.rand(2, *shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, k)
    assert torch.equal(seen["out"], y)  # nothing after the last Linear


def test_mnist_cnn_penultimate_is_last_dropout_output():
    model = get_model("mnist_cnn", input_shape=(1, 28, 28), num_outputs=10).train()
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.2, 0.25, 0.25, 0.25]
    seen = {}
    dropouts[-1].register_forward_hook(lambda m, inp, out: seen.update(drop=out))
    last_linear(model).register_forward_hook(lambda m, inp, out: seen.update(fc_in=inp[0]))
    model(torch.rand(4, 1, 28, 28))
    assert seen["fc_in"] is seen["drop"]
    assert seen["fc_in"].shape == (4, 128)


def test_keras_batchnorm_and_he_normal_init():
    model = get_model("resnet20", input_shape=(3, 32, 32), num_outputs=10)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == BN_EPS == 1e-3 and m.momentum == BN_MOMENTUM == 0.01 for m in norms)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 64
             and m.kernel_size == (3, 3)]
    w = torch.cat([c.weight.detach().flatten() for c in convs])  # 5 x 36,864 draws
    std = math.sqrt(2 / (64 * 9))
    assert abs(float(w.std()) / std - 1) < 0.02  # Keras rescales so the truncated std is sqrt(2/fan_in)
    assert float(w.abs().max()) <= 2 * std / 0.87962566103423978 + 1e-7
    assert all(float(c.bias.detach().abs().max()) == 0 for c in convs)


def test_resnet_stride_schedule():
    model = ResNetV1((3, 32, 32), 10, depth=20)
    feats = model.blocks(model.stem(torch.rand(1, 3, 32, 32)))
    assert feats.shape == (1, 64, 8, 8)
    model = ResNetV2((3, 32, 32), 10, depth=29)
    feats = model.blocks(model.stem(torch.rand(1, 3, 32, 32)))
    assert feats.shape == (1, 256, 8, 8)


# ---------------------------------------------------------------- registry

def test_user_module_passes_through():
    mine = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert get_model(mine) is mine
    assert get_model(mine, input_shape=(4,), num_outputs=2) is mine
    with pytest.raises(ValueError, match="hidden"):
        get_model(mine, hidden=(3,))


@pytest.mark.parametrize("kwargs, needle", [
    ({"name": "vgg16", "input_shape": (3, 32, 32), "num_outputs": 10}, "name='vgg16'"),
    ({"name": "mlp", "input_shape": (64,), "num_outputs": 10, "width": 3}, "width=3"),
    ({"name": "mlp", "input_shape": (64,), "num_outputs": 10, "hidden": (0,)}, r"hidden=\(0,\)"),
    ({"name": "mlp", "input_shape": (64,), "num_outputs": 0}, "num_outputs=0"),
    ({"name": "mlp", "input_shape": None, "num_outputs": 2}, "input_shape=None"),
    ({"name": "mnist_cnn", "input_shape": (64,), "num_outputs": 10}, r"input_shape=\(64,\)"),
    ({"name": "mnist_cnn", "input_shape": (1, 6, 6), "num_outputs": 10}, "too small"),
    ({"name": "resnet164", "input_shape": (3, 32, 32), "num_outputs": 10, "widths": "wide"}, "widths='wide'"),
])
def test_bad_arguments_name_field_and_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        get_model(**kwargs)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        get_model("vgg16", input_shape=(3, 32, 32), num_outputs=10)
    assert all(name in str(info.value) for name in MODELS)


def test_register_model():
    def tiny(input_shape, num_outputs, *, width: int = 3):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width),
                             nn.ReLU(), nn.Linear(width, num_outputs))

    try:
        register_model("tiny", tiny)
        assert count_parameters(get_model("tiny", input_shape=(2, 2), num_outputs=1, width=5)) == \
            dense(4, 5) + dense(5, 1)
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny")(tiny)
    finally:
        MODELS.pop("tiny", None)


def test_default_model_for():
    class Splits:
        input_shape = (3, 32, 32)

    assert default_model_for(Splits()) == "resnet20"
    assert default_model_for((1, 28, 28)) == "mnist_cnn"
    assert default_model_for((64,)) == "mlp"
    assert default_model_for((1, 8, 8)) == "mlp"
