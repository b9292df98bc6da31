"""bounds.py: validation names the field, clamps are reported, K_z = 0 is never used."""
import math

import pytest

from lipschitz_lab.bounds import bound_inputs, learning_rate, lipschitz_bound


def test_paper_formula_softmax():
    # the paper's formula (eq. 20 + weight decay), typed here only as an oracle
    K_z, m, k, lam, w = 17.0, 64, 10, 1e-4, 3.0
    L = lipschitz_bound("softmax_ce", "paper", K_z=K_z, m=m, k=k, lam=lam, w_max=w)
    assert math.isclose(L, (k - 1) * K_z / (k * m) + lam * w, rel_tol=1e-15)


@pytest.mark.parametrize("kwargs,field", [
    ({"K_z": -1.0, "m": 4, "k": 3}, "K_z"),
    ({"K_z": float("nan"), "m": 4, "k": 3}, "K_z"),
    ({"K_z": 1.0, "m": 0, "k": 3}, "m"),
    ({"K_z": 1.0, "m": 2.5, "k": 3}, "m"),
    ({"K_z": 1.0, "m": 4, "k": 1}, "k"),
    ({"K_z": 1.0, "m": 4}, "k"),
    ({"K_z": 1.0, "m": 4, "k": 3, "lam": -1.0}, "lam"),
    ({"K_z": "a", "m": 4, "k": 3}, "K_z"),
])
def test_bad_inputs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        lipschitz_bound("softmax_ce", "paper", **kwargs)


def test_unknown_names():
    with pytest.raises(ValueError, match="loss"):
        lipschitz_bound("hinge", K_z=1.0, m=1)
    with pytest.raises(ValueError, match="bound"):
        lipschitz_bound("bce", "loose", K_z=1.0, m=1)
    with pytest.raises(ValueError, match="no bound|gives no bound"):
        lipschitz_bound("label_smoothed_ce", "paper", K_z=1.0, m=1, k=3, eps=0.1)


def test_inputs():
    assert bound_inputs("mse") == ("K_a", "y_norm")
    assert bound_inputs("bce") == ()
    assert bound_inputs("softmax_ce") == ("k",)


def test_learning_rate_clamps_and_kz_zero():
    assert learning_rate(2.0) == (0.5, None)
    assert learning_rate(0.01, max_lr=10.0) == (10.0, "max_lr")
    assert learning_rate(1e9, min_lr=1e-6) == (1e-6, "min_lr")
    L = lipschitz_bound("softmax_ce", "paper", K_z=0.0, m=8, k=10)
    assert learning_rate(L, max_lr=5.0) == (5.0, "K_z=0")
    with pytest.raises(ValueError, match="K_z = 0"):
        learning_rate(L)
    with pytest.raises(ValueError, match="finite"):
        learning_rate(float("nan"))


def test_negative_paper_mse_bound_is_clamped_and_reported():
    L = lipschitz_bound("mse", "paper", K_z=2.0, m=4, K_a=1.0, y_norm=3.0)
    assert L < 0
    assert learning_rate(L, max_lr=0.5) == (0.5, "L<0")
    with pytest.raises(ValueError, match="negative"):
        learning_rate(L)


def test_smoothness_bound_validates_like_the_bounds():
    from lipschitz_lab.bounds import smoothness_bound
    with pytest.raises(ValueError, match="m"):
        smoothness_bound("bce", m=0)
    with pytest.raises(ValueError, match="m"):
        smoothness_bound("softmax_ce", m=2.5)
    with pytest.raises(ValueError, match="loss"):
        smoothness_bound("hinge", m=1)
    assert smoothness_bound("bce", m=4) < smoothness_bound("softmax_ce", m=4) < smoothness_bound("mse", m=4)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_smoothness_bound_answers_on_the_tensors_device(device):
    """A tensor in gives a tensor out, on its device (meta: no host sync is possible)."""
    import torch
    from lipschitz_lab.bounds import smoothness_bound
    for kwargs in ({"m": torch.tensor(8.0, device=device)},
                   {"m": 8, "k": torch.tensor(10.0, device=device)}):   # k unused by S2: still a tensor
        S2 = smoothness_bound("softmax_ce", **kwargs)
        assert isinstance(S2, torch.Tensor) and S2.device.type == device
        if device == "cpu":
            assert S2.item() == smoothness_bound("softmax_ce", m=8)
