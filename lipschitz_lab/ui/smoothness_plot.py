r"""What the derivation panel's second plot draws: how fast ∂E/∂z can change, against S₂.

.. math::

    S_2 = \sup_z \|\nabla^2_z E\|_2

- elementwise losses (mse, bce): :math:`|\partial^2 E/\partial z^2|` over z, torch
  autograd of the generated ∂E/∂z (:func:`lipschitz_lab.bounds.derivative`);
- softmax losses: the spectral norm of the Hessian of the generated batch loss
  (:func:`lipschitz_lab.losses.generated_criterion`) in one sample's k logits, along a
  1-D slice: the first logit z varies, the others sit at the witness's logits.

The level is :func:`lipschitz_lab.bounds.smoothness_bound`; the markers are the
derivation's witness (:mod:`lipschitz_lab.symbolic.smoothness`, computed there in
SymPy / mpmath), so a marker on its curve is a check of both.  A loss whose
derivation or generated code has no smoothness yet gets ``None`` (no plot).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from lipschitz_lab import bounds
from lipschitz_lab.symbolic import derive
from lipschitz_lab.ui.derivation_plots import PLOT_PARAMS, Z_SPAN, _combos, _z_range, grid

#: a softmax slice's parameters when the derivation gives no witness (k = 3: short logit vectors)
SLICE_DEFAULTS = {"m": 1, "k": 3, "eps": 0.1}
SLICE_POINTS = 241


def smoothness_available(name: str) -> bool:
    """The derivation has a smoothness result and the generated code its S₂."""
    d = derive(name)
    return getattr(d, "smoothness", None) is not None and (name, "smooth") in bounds.FUNCTIONS


def _s2(name: str, params: dict) -> float:
    return float(bounds.smoothness_bound(name, m=params["m"], k=params.get("k"), eps=params.get("eps")))


def _g(x: float) -> str:
    return f"{x:g}"


def elementwise_curves(name: str, zs: list[float], combos: list[dict], params: dict) -> list[list[float]]:
    """|∂²E/∂z²| on ``zs`` for each combo: one autograd pass through the generated ∂E/∂z."""
    fn, argnames = bounds.derivative(name)
    zname = str(derive(name).spec.wrt)
    out = []
    for combo in combos:
        args = {**params, **combo}
        z = torch.tensor(zs, dtype=torch.float64, requires_grad=True)
        g = fn(**{a: (z if a == zname else args[a]) for a in argnames})
        (h,) = torch.autograd.grad(torch.as_tensor(g).sum(), z, allow_unused=True)
        out.append([0.0] * len(zs) if h is None else h.abs().tolist())    # ∂E/∂z free of z: 0
    return out


def _elementwise(name: str, d, sm) -> dict[str, Any]:
    wit = sm.witness or {}
    params = dict(PLOT_PARAMS, **wit.get("params", {}))
    point = {"point": wit["point"]} if "point" in wit else None
    lo, hi = _z_range(d.spec, params, point)
    combos, extra = _combos(d.spec, params, point)
    zs = grid(lo, hi)
    curves = []
    for combo, ys in zip(combos, elementwise_curves(name, zs, combos, params)):
        label = ", ".join(f"{k} = {v:g}" for k, v in combo.items()) or "|d2E/dz2|"
        curves.append({"label": label + (" (witness)" if combo is extra else ""), "z": zs, "y": ys,
                       "dash": "dashed" if combo is extra else "solid"})
    zname = str(d.spec.wrt)
    shown = [wit] if "point" in wit else wit.get("approach", [])
    markers = [{"z": float(w["point"][zname]), "y": float(w["value"]),
                "text": ", ".join(f"{k} = {_g(v)}" for k, v in w["point"].items()) + f": {w['value']:.6g}"}
               for w in shown if lo <= float(w["point"].get(zname, lo - 1)) <= hi]
    return {"kind": "elementwise", "params": params, "z": (lo, hi), "curves": curves, "markers": markers,
            "x_label": "z", "y_label": "|∂²E/∂z²|", "what": "|∂²E/∂z²|"}


def hessian_norms(name: str, rows: torch.Tensor, label: int, eps: float | None) -> list[float]:
    """‖∇²E‖₂ at each row of logits (one sample, m = 1): the generated batch loss, torch.func."""
    from lipschitz_lab.losses import DEFAULT_EPS, generated_criterion
    criterion = generated_criterion(name, eps=DEFAULT_EPS if eps is None else eps)
    target = torch.tensor([label])

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return criterion(logits.unsqueeze(0), target)

    with warnings.catch_warnings():      # torch.func's first use imports torch's own jit decompositions
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        H = torch.func.vmap(torch.func.hessian(loss))(rows)
    return torch.linalg.eigvalsh(H).abs().amax(dim=1).tolist()


def _softmax(name: str, sm) -> dict[str, Any]:
    wit = sm.witness or {}
    params = dict(SLICE_DEFAULTS, **wit.get("params", {}))
    k, label = int(params["k"]), int(wit.get("label", 0))
    walk = wit.get("approach") or [{"logits": [0.0, 0.0] + [-10.0] * (k - 2), "spectral_norm": None}]
    z0 = float(walk[0]["logits"][0])
    lo, hi = z0 - Z_SPAN, z0 + Z_SPAN
    zs = grid(lo, hi, SLICE_POINTS)
    curves, markers = [], []
    for a in walk:
        rows = torch.tensor([[z] + [float(x) for x in a["logits"][1:]] for z in zs], dtype=torch.float64)
        ys = hessian_norms(name, rows, label, params.get("eps"))
        curves.append({"label": "logits (z, " + ", ".join(_g(x) for x in a["logits"][1:]) + ")",
                       "z": zs, "y": ys, "dash": "solid"})
        if a.get("spectral_norm") is not None:
            markers.append({"z": float(a["logits"][0]), "y": float(a["spectral_norm"]),
                            "text": f"logits ({', '.join(_g(x) for x in a['logits'])}): {a['spectral_norm']:.6g}"})
    return {"kind": "softmax", "params": params, "label": label, "z": (lo, hi), "curves": curves,
            "markers": markers, "x_label": f"z, the first of k = {k} logits (label {label})",
            "y_label": "‖∇²E‖₂", "what": "‖∇²E‖₂ along a slice of the logits"}


def smoothness_setup(name: str) -> dict[str, Any] | None:
    """What the second plot draws for one loss (module doc), or None when S₂ is not there yet."""
    if not smoothness_available(name):
        return None
    d = derive(name)
    sm = d.smoothness
    batch = d.info["batch"] if hasattr(d, "info") else "elementwise"
    s = _softmax(name, sm) if batch == "softmax" else _elementwise(name, d, sm)
    s.update(name=name, S2=_s2(name, s["params"]), method=sm.method, value=sm.value,
             tight=sm.tight, attained=sm.attained)
    if batch == "softmax":
        _drop_lookalikes(s)
    return s


def _drop_lookalikes(s: dict[str, Any], tol: float = 1e-3) -> None:
    """The limit's curves converge: one within ``tol``·S₂ of a curve already drawn would only hide
    under it (the legend would list a line nobody can see); it goes, with its marker."""
    kept, markers = [], []
    for curve, marker in zip(s["curves"], s["markers"]):
        if all(max(abs(a - b) for a, b in zip(curve["y"], c["y"])) > tol * s["S2"] for c in kept):
            kept.append(curve)
            markers.append(marker)
    s["curves"], s["markers"] = kept, markers
