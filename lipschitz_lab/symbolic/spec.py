"""A loss, as the symbolic engine sees it: one short definition."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp

from lipschitz_lab.symbolic.domain import Var


@dataclass(frozen=True)
class LossSpec:
    """Everything the engine needs to derive a loss's Lipschitz bound.

    ``loss`` is the batch loss E as a function of one last-layer
    pre-activation ``wrt`` (it carries the paper's 1/m).  ``variables`` are
    the inputs of dE/dz and their domains; the supremum is taken over all of
    them.  ``paper_bound`` is L as published (None if the paper has none);
    ``paper_point`` is where the paper evaluated the derivative, if it did.
    ``inputs`` are the parameters a user supplies besides K_z and m.

    ``batch`` says how a batch of network outputs maps onto the loss's
    coordinates (:mod:`lipschitz_lab.symbolic.binding`): ``"elementwise"``
    (one output z per sample, target y) or ``"softmax"`` (k logits per sample;
    unit p has z = z_p, r = log-sum-exp of the others, t = [y = p]).  None
    infers it: a loss in r is a softmax loss.
    """

    name: str
    title: str
    loss: sp.Expr
    wrt: sp.Symbol
    variables: tuple[Var, ...]
    inputs: tuple[str, ...] = ()
    paper_bound: sp.Expr | None = None
    paper_equation: str | None = None
    paper_point: dict | None = None
    quotient: bool = False          # also derive the Lipschitz quotient of eq. 8
    notes: tuple[str, ...] = field(default_factory=tuple)
    batch: str | None = None        # "elementwise" | "softmax"; None: inferred

    def __post_init__(self):
        if self.batch not in (None, "elementwise", "softmax"):
            raise ValueError(f"batch must be 'elementwise' or 'softmax'; got batch={self.batch!r}")

    def scaled(self, factor) -> "LossSpec":
        """The same loss multiplied by ``factor`` (its bound must scale too)."""
        return replace(self, name=f"{self.name}_x{factor}", loss=sp.sympify(factor) * self.loss,
                       paper_bound=None, paper_point=None)
