"""Models by name: ``get_model("mlp", input_shape=(64,), num_outputs=10)``.

Registered names: ``mlp``, ``mnist_cnn`` (the paper's Table 1), ``resnet20``
(v1) and ``resnet164`` (v2), the last two in Keras' ``cifar10_resnet`` layout, and
``tiny_gpt`` (a small decoder-only transformer over token sequences).
Any ``nn.Module`` instance passes through :func:`get_model` unchanged.
"""
from lipschitz_lab.models.registry import (
    MODELS, check_model_data, count_parameters, default_model_for, get_model, model_inputs, register_model,
    takes_tokens,
)
# importing the architectures fills MODELS
from lipschitz_lab.models import mlp, mnist_cnn, resnet, tiny_gpt  # noqa: F401,E402

__all__ = ["MODELS", "check_model_data", "count_parameters", "default_model_for", "get_model", "model_inputs",
           "register_model", "takes_tokens"]
