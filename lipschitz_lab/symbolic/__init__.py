"""The symbolic layer: losses, derivations, suprema, verdicts, rendering, codegen.

>>> from lipschitz_lab.symbolic import derive
>>> d = derive("softmax_ce")
>>> d.paper_holds, d.corrected_bound
(False, K_z/m)
"""
from __future__ import annotations

from lipschitz_lab.symbolic.derivation import Derivation, derive_spec
from lipschitz_lab.symbolic.domain import Var, finite, interval, real_line
from lipschitz_lab.symbolic.losses import BUILTIN
from lipschitz_lab.symbolic.spec import LossSpec

LOSS_SPECS: dict[str, LossSpec] = {spec.name: spec for spec in BUILTIN}


BUILTIN_NAMES = tuple(spec.name for spec in BUILTIN)


def register_loss(spec: LossSpec) -> LossSpec:
    """Add a loss; ``derive(spec.name)`` then treats it like the built-in ones.

    This is the symbolic half only: :func:`lipschitz_lab.losses.register` also
    generates its numeric functions and criterion, so that training knows it.
    """
    if not isinstance(spec, LossSpec):
        raise ValueError(f"spec must be a LossSpec; got spec={spec!r}")
    if not spec.name.isidentifier():
        raise ValueError(f"loss name must be an identifier, got name={spec.name!r}")
    if spec.name in BUILTIN_NAMES:
        raise ValueError(f"name={spec.name!r} is a built-in loss; give yours another name")
    LOSS_SPECS[spec.name] = spec
    return spec


def unregister_loss(name: str) -> None:
    """Forget a registered loss (built-ins stay)."""
    if name in BUILTIN_NAMES:
        raise ValueError(f"name={name!r} is a built-in loss and cannot be removed")
    LOSS_SPECS.pop(name, None)


_CACHE: dict[int, tuple[LossSpec, Derivation]] = {}


def _derive_cached(spec: LossSpec) -> Derivation:
    hit = _CACHE.get(id(spec))
    if hit is None or hit[0] is not spec:
        hit = _CACHE[id(spec)] = (spec, derive_spec(spec))
    return hit[1]


def derive(loss: str | LossSpec) -> Derivation:
    """The derivation for a loss name or a :class:`LossSpec` (cached)."""
    if isinstance(loss, LossSpec):
        return _derive_cached(loss)
    if loss not in LOSS_SPECS:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_SPECS)}")
    return _derive_cached(LOSS_SPECS[loss])


def derive_all() -> dict[str, Derivation]:
    """Every loss: the built-ins, then the registered ones."""
    return {name: derive(name) for name in LOSS_SPECS}


def derive_builtin() -> dict[str, Derivation]:
    """The built-in losses only: what ``_generated.py`` and ``derivations/`` hold."""
    return {name: derive(name) for name in BUILTIN_NAMES}


__all__ = ["BUILTIN_NAMES", "Derivation", "LossSpec", "LOSS_SPECS", "Var", "derive", "derive_all",
           "derive_builtin", "finite", "interval", "real_line", "register_loss", "unregister_loss"]
