"""The layer-wise smoothness rule's weight norm is an upper bound of ‖W‖₂ on every step (issue
22, item 6): tr(G^k)^(1/k) against the exact spectral norm (LAPACK's SVD, float64), on weights
of mixed sign, low rank and a trained network's; it is attained where the theory says it is."""
from __future__ import annotations

import math

import pytest
import torch

from lipschitz_lab.scheduler.layerwise import SQUARINGS, weight_norm_sq


def exact_sq(W: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(W.double(), ord=2).item() ** 2


def weights():
    g = torch.Generator().manual_seed(0)
    yield "gaussian 128x64", torch.randn(128, 64, generator=g)
    yield "gaussian 10x64", torch.randn(10, 64, generator=g)
    yield "rank 1", torch.randn(50, 1, generator=g) @ torch.randn(1, 30, generator=g)
    yield "one row", torch.randn(1, 7, generator=g)
    yield "huge", torch.randn(64, 64, generator=g) * 1e30          # the traces are rescaled: no overflow
    u, _, v = torch.linalg.svd(torch.randn(64, 64, generator=g, dtype=torch.float64))
    yield "flat spectrum", u @ v.T                                   # 64 equal singular values: the worst case


@pytest.mark.parametrize("name,W", list(weights()))
def test_the_weight_norm_bounds_the_spectral_norm_from_above(name, W):
    bound, exact = weight_norm_sq(W).item(), exact_sq(W)
    rank = torch.linalg.matrix_rank(W.double()).item()
    # tr(G^k) = sum of the k-th powers of G's eigenvalues: between λ_max^k and rank·λ_max^k.  1e-12:
    # both sides are float64 sums of ~64 products (relative rounding ~1e-14 on any BLAS)
    worst = rank ** (1 / 2 ** SQUARINGS)
    assert exact * (1 - 1e-12) <= bound <= exact * worst * (1 + 1e-12), (name, bound / exact)
    if rank == 1:
        assert bound == pytest.approx(exact, rel=1e-12)                 # a single eigenvalue: exact
    if name == "flat spectrum":
        assert bound == pytest.approx(exact * 64 ** (1 / 2 ** SQUARINGS), rel=1e-9)   # the bound is attained


def test_on_a_trained_network_the_bound_is_within_one_percent():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    for _ in range(50):                       # training grows a dominant direction
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for layer in (model[0], model[2]):
        ratio = weight_norm_sq(layer.weight).item() / exact_sq(layer.weight)
        assert 1 - 1e-12 <= ratio < 1.01, ratio


def test_zero_weights_give_zero():
    zero = weight_norm_sq(torch.zeros(3, 4)).item()
    assert zero == 0.0 and not math.isnan(zero)
