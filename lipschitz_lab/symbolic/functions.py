"""Two SymPy functions that keep derivatives readable and generated code stable.

``sigmoid(x)`` and ``logsumexp(x, y)`` differentiate into each other, print as
the paper writes them, rewrite to ``exp`` for limits and ``solve``, and print to
numerically stable calls in generated code (``torch.sigmoid`` /
``torch.logaddexp``), so that extreme logits give exact 0 and 1, not nan.
"""
from __future__ import annotations

import sympy as sp


class sigmoid(sp.Function):  # noqa: N801  (named as in the paper: g(z))
    r"""The logistic function :math:`\sigma(x) = 1/(1+e^{-x})`."""

    nargs = 1

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.Rational(1, 2)
        if x is sp.oo:
            return sp.S.One
        if x is sp.S.NegativeInfinity:
            return sp.S.Zero

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        return self.args[0].is_real or None

    def _latex(self, printer):
        return r"\sigma\left(%s\right)" % printer._print(self.args[0])


class logsumexp(sp.Function):  # noqa: N801
    r""":math:`\log(e^{x} + e^{y})`, the softmax normaliser of two logit groups."""

    nargs = 2

    def fdiff(self, argindex=1):
        x, y = self.args
        return sigmoid(x - y) if argindex == 1 else sigmoid(y - x)

    def _eval_rewrite_as_exp(self, x, y, **kwargs):
        return sp.log(sp.exp(x) + sp.exp(y))

    def _eval_is_real(self):
        return (self.args[0].is_real and self.args[1].is_real) or None

    def _latex(self, printer):
        x, y = (printer._print(arg) for arg in self.args)
        return r"\log\left(e^{%s} + e^{%s}\right)" % (x, y)
