r"""The packed step statistics, by name: which slice of the device vector holds what.

A step's statistics travel as one float64 device vector, so that one copy
brings them to the host and one SUM and one MAX all-reduce give every rank the
union batch's numbers.  :class:`StatLayout` is the only place that knows where
each statistic sits; everything else reads and writes them by name, the way
``torch.return_types`` hands out packed results as ``values`` and ``indices``.

Each :class:`Field` has a size and a reduction across micro-batches and ranks:

``sum``    squared norms and counts add up (the union batch's ‖A‖_F² is the sum of the parts');
``max``    maxima take the max;
``local``  the rank's own numbers (the loss-scale check compares each rank's logits with its own
           loss), never reduced.

Fields are laid out sums first, then maxima, then local ones, so each reduction is one
contiguous slice.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Field", "StatLayout", "REDUCTIONS"]

#: how a field combines across micro-batches and ranks, in the order fields are laid out
REDUCTIONS = ("sum", "max", "local")


@dataclass(frozen=True)
class Field:
    """One named statistic combined by ``reduce``: a scalar, or a vector of ``size`` numbers."""

    name: str
    reduce: str
    size: int | None = None          # None: a scalar (0-d on the device, a float on the host)

    def __post_init__(self):
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}; got reduce={self.reduce!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"size must be an integer >= 0 or None; got size={self.size!r}")

    @property
    def width(self) -> int:
        return 1 if self.size is None else self.size


class StatLayout:
    """Named slices of a packed float64 vector; built once, read by name everywhere."""

    def __init__(self, fields: Iterable[Field]):
        ordered = sorted(fields, key=lambda f: REDUCTIONS.index(f.reduce))   # stable: keeps the given order
        self.fields: tuple[Field, ...] = tuple(ordered)
        self._slices: dict[str, slice] = {}
        start = 0
        for f in self.fields:
            if f.name in self._slices:
                raise ValueError(f"field {f.name!r} is laid out twice")
            self._slices[f.name] = slice(start, start + f.width)
            start += f.width
        self.size = start
        self._field = {f.name: f for f in self.fields}
        self._by_reduce = {r: self._span(r) for r in REDUCTIONS}

    def _span(self, reduce: str) -> slice:
        spans = [self._slices[f.name] for f in self.fields if f.reduce == reduce]
        return slice(spans[0].start, spans[-1].stop) if spans else slice(0, 0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def __contains__(self, name: str) -> bool:
        return name in self._slices

    def slice(self, name: str) -> slice:
        try:
            return self._slices[name]
        except KeyError:
            raise KeyError(f"no statistic {name!r} in this layout; it has {', '.join(self.names)}") from None

    def reduced(self, reduce: str) -> slice:
        """The contiguous slice of every field with this reduction."""
        return self._by_reduce[reduce]

    def all_reduce(self, vector: torch.Tensor) -> torch.Tensor:
        """The union over ranks: SUM on the sum fields, MAX on the max fields, local ones kept."""
        from lipschitz_lab import distributed
        if not distributed.is_distributed():
            return vector
        S, M = vector[self.reduced("sum")].clone(), vector[self.reduced("max")].clone()
        distributed.all_reduce_sum_max(S, M)
        return torch.cat([S, M, vector[self.reduced("local")]])

    # -- device side ----------------------------------------------------------------------
    def pack(self, values: dict[str, torch.Tensor], *, device, dtype=torch.float64) -> torch.Tensor:
        """One vector from named tensors (0-d, or 1-d of the field's size); nothing waits."""
        parts = []
        for f in self.fields:
            t = values[f.name].to(device=device, dtype=dtype)
            parts.append(t.reshape(f.width))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)

    def zeros(self, device, dtype=torch.float64) -> torch.Tensor:
        """A vector of this layout, all zeros, made on ``device`` (no copy from the host)."""
        return torch.zeros(self.size, dtype=dtype, device=device)

    def get(self, vector: torch.Tensor, name: str) -> torch.Tensor:
        """The field as a view of ``vector``: 0-d for a scalar field."""
        s = self.slice(name)
        return vector[s.start] if self._field[name].size is None else vector[s]

    def take(self, vector: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """A new vector of the named fields, in ``names``' order (a sub-layout's vector)."""
        return torch.cat([vector[self.slice(n)] for n in names])

    def sub(self, names: Sequence[str]) -> StatLayout:
        """The layout of :meth:`take`'s vector."""
        return StatLayout(self._field[n] for n in names)

    # -- host side ------------------------------------------------------------------------
    def unpack(self, values: Sequence[float]) -> dict[str, Any]:
        """Plain numbers by name (a float, or a list for a vector field)."""
        if len(values) != self.size:
            raise ValueError(f"a vector of {len(values)} numbers does not fit this layout of {self.size}")
        out: dict[str, Any] = {}
        for f in self.fields:
            s = self._slices[f.name]
            out[f.name] = values[s.start] if f.size is None else list(values[s])
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, StatLayout) and self.fields == other.fields

    __hash__ = None

    def __repr__(self) -> str:
        return "StatLayout(" + ", ".join(f"{f.name}[{f.width}]:{f.reduce}" for f in self.fields) + ")"
