"""The model registry: one name -> ``builder(input_shape, num_outputs, **options) -> nn.Module``.

Every registered model ends in an ``nn.Linear`` that is the last module in
``model.modules()``: the Lipschitz rule bounds the gradient of that layer, and
the probe finds it by walking the modules.

A model takes either feature tensors (the default) or token sequences, (B, T)
int64 (:func:`takes_tokens`, e.g. ``tiny_gpt``); :func:`check_model_data` says in
one line when a model and a data set do not fit.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from lipschitz_lab._registry import check_options, registrar

Builder = Callable[..., nn.Module]

#: name -> builder; add to it with :func:`register_model`
MODELS: dict[str, Builder] = {}


register_model = registrar(MODELS, "model")

#: builders that take (B, T) int64 tokens rather than float features
TOKEN_BUILDERS: set[Builder] = set()


def takes_tokens(builder: Builder) -> Builder:
    """Mark ``builder`` as a model of token sequences (stack it under ``@register_model``)."""
    TOKEN_BUILDERS.add(builder)
    return builder


def model_inputs(name: str) -> str:
    """``"tokens"`` for a model of token sequences, else ``"features"``."""
    return "tokens" if MODELS.get(name) in TOKEN_BUILDERS else "features"


def check_model_data(name: str, splits: Any) -> None:
    """Raise ``ValueError`` naming both when model ``name`` cannot read data set ``splits``' inputs.

    ``splits``: a :class:`~lipschitz_lab.data.DataSplits` (its ``name`` and ``inputs``).
    """
    have, want = getattr(splits, "inputs", "features"), model_inputs(name)
    if have == want:
        return
    what = {"tokens": "token sequences", "features": "feature tensors"}
    fits = sorted(n for n in MODELS if model_inputs(n) == have)
    raise ValueError(f"model={name!r} takes {what[want]} but dataset={splits.name!r} gives {what[have]}; "
                     f"choose model= one of {', '.join(fits)}, or another data set")


def get_model(name: str | nn.Module, *, input_shape: tuple[int, ...] | None = None,
              num_outputs: int | None = None, **options: Any) -> nn.Module:
    """Build the registered model ``name`` for ``input_shape`` (per example) and ``num_outputs``.

    An ``nn.Module`` instance is returned unchanged (bring your own model).
    """
    if isinstance(name, nn.Module):
        if options:
            raise ValueError(f"options {sorted(options)} cannot apply to a model instance; "
                             f"pass a registered name instead")
        return name
    if name not in MODELS:
        raise ValueError(f"unknown model name={name!r}; choose one of: {', '.join(sorted(MODELS))}")
    if input_shape is None or len(input_shape) == 0 \
            or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape must be a tuple of positive ints, got input_shape={input_shape!r}")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be an integer >= 1, got num_outputs={num_outputs!r}")

    builder = MODELS[name]
    check_options(builder, "model", name, options)
    return builder(tuple(input_shape), num_outputs, **options)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter entries (BatchNorm running statistics are buffers, not counted).

    Keras' "Total params" also counts BatchNorm's moving mean and variance; this
    matches Keras' "Trainable params" for the Keras-layout models here.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def default_model_for(splits_or_shape: Any) -> str:
    """The model the paper would use: "mnist_cnn" for 1x28x28, "resnet20" for 3x32x32, else "mlp";
    "tiny_gpt" for token sequences.

    Accepts a :class:`~lipschitz_lab.data.DataSplits` (anything with
    ``input_shape``) or a shape tuple.
    """
    if getattr(splits_or_shape, "inputs", "features") == "tokens":
        return "tiny_gpt"
    shape = tuple(getattr(splits_or_shape, "input_shape", splits_or_shape))
    if shape == (1, 28, 28):
        return "mnist_cnn"
    if shape == (3, 32, 32):
        return "resnet20"
    return "mlp"  # flattens anything, e.g. digits' 64 features or its 1x8x8 images
