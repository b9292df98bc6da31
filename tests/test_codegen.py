"""Generated code: current, typed-once, dtype/device-faithful, equal to SymPy's values."""
import math
import subprocess
import sys

import pytest
import sympy as sp
import torch

from lipschitz_lab import _generated, bounds
from lipschitz_lab.symbolic import derive_builtin
from lipschitz_lab.symbolic.codegen import GENERATED_PATH, generate_source


def test_generated_module_is_current():
    assert GENERATED_PATH.read_text() == generate_source(derive_builtin()), \
        "lipschitz_lab/_generated.py is stale: run `lipschitz-lab derive --codegen`"


def _sample(args):
    vals = {"K_z": 3.7, "K_a": 2.2, "y_norm": 0.9, "m": 32, "k": 10, "eps": 0.1,
            "lam": 1e-3, "w_max": 43.0, "z": -1.3, "r": 0.4, "t": 1, "y": 0.5, "c": 0.0, "lse": 2.1}
    return {a: vals[a] for a in args}


@pytest.mark.parametrize("key", sorted(_generated.FUNCTIONS, key=str))
def test_each_function_equals_its_sympy_expression(key):
    fn, args = _generated.FUNCTIONS[key]
    loss, what = key
    d = derive_builtin()
    if loss == "*":
        expr = d["softmax_ce"].weight_decay
    elif what == "dE_dz":
        expr = d[loss].derivative
    elif what == "sup":
        expr = d[loss].sup.value
    elif what == "smooth":
        expr = d[loss].smoothness.value
    elif what in d[loss].criterion:
        expr = d[loss].criterion[what]
    elif what.startswith("strict_"):
        expr = d[loss].strict_bounds[what[len("strict_"):]]
    else:
        expr = d[loss].bound(what)
    kw = _sample(args)
    ref = float(expr.rewrite(sp.exp).subs({s: kw[str(s)] for s in expr.free_symbols}))
    assert math.isclose(fn(**kw), ref, rel_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_tensors_keep_dtype_and_device(dtype, device):
    K_z = torch.tensor(5.0, dtype=dtype, device=device)
    for variant in bounds.VARIANTS:
        for kz in bounds.KZ_DEFINITIONS:
            L = bounds.lipschitz_bound("softmax_ce", variant, K_z=K_z, m=128, k=10, kz=kz,
                                       lam=1e-3, w_max=2.0)
            assert isinstance(L, torch.Tensor) and L.device.type == device and L.dtype == dtype
            if device == "cpu":
                ref = bounds.lipschitz_bound("softmax_ce", variant, K_z=5.0, m=128, k=10, kz=kz,
                                             lam=1e-3, w_max=2.0)
                assert math.isclose(L.item(), ref, rel_tol=1e-2)


def test_python_floats_give_python_floats():
    L = bounds.lipschitz_bound("bce", "strict", K_z=0.5, m=4, kz="frobenius")
    assert isinstance(L, float) and L == 1.0


def test_import_is_light():
    """Importing the package (and the bounds) loads neither SymPy nor the UI stack."""
    code = ("import sys, lipschitz_lab, lipschitz_lab.bounds; "
            "print(sorted(m for m in ('sympy','torch','bokeh','ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_loss_registry_needs_no_sympy():
    """The built-ins' criteria, tasks and gradients come from the checked-in code."""
    code = ("import sys, torch; from lipschitz_lab import losses; "
            "losses.grad_logits('softmax_ce', torch.zeros(2, 3), torch.tensor([0, 2])); "
            "print(losses.task_of('bce'), 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["binary", "False"]


@pytest.mark.parametrize("x", [-800.0, -30.0, 0.0, 1e-3, 30.0, 800.0])
def test_stable_ops_match_mpmath(x):
    """log σ and softplus, which the printer picks for log(σ(x)), log(1 - σ(x)), log(1 + e^x)."""
    import mpmath
    from lipschitz_lab import _ops
    with mpmath.workdps(40):
        softplus = float(mpmath.log1p(mpmath.exp(x)))
        log_sigmoid = float(-mpmath.log1p(mpmath.exp(-x)))
    assert math.isclose(_ops.softplus(x), softplus, rel_tol=1e-15, abs_tol=1e-300)
    assert math.isclose(_ops.log_sigmoid(x), log_sigmoid, rel_tol=1e-15, abs_tol=1e-300)
    t = torch.tensor([x], dtype=torch.float64)
    assert math.isclose(_ops.softplus(t).item(), softplus, rel_tol=1e-15, abs_tol=1e-300)
    assert math.isclose(_ops.log_sigmoid(t).item(), log_sigmoid, rel_tol=1e-15, abs_tol=1e-300)


def test_printer_uses_the_stable_forms():
    """The generated bce batch loss is finite where the naive log(σ(z)) would give inf."""
    fn, _ = _generated.FUNCTIONS[("bce", "E")]
    assert math.isclose(fn(z=-800.0, y=1.0, m=1), 800.0, rel_tol=1e-15)
    assert math.isclose(fn(z=800.0, y=0.0, m=2), 400.0, rel_tol=1e-15)
