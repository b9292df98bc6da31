"""Shared plumbing of the name -> builder registries (data sets, models)."""
from __future__ import annotations

import inspect
from typing import Any, Callable


def registrar(table: dict[str, Callable], kind: str):
    """A ``register(name, builder=None, *, replace=False)`` function for ``table``."""
    def register(name: str, builder: Callable | None = None, *, replace: bool = False):
        """Register ``builder`` under ``name``; without ``builder``, return a decorator."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got name={name!r}")

        def add(fn: Callable) -> Callable:
            if name in table and not replace:
                raise ValueError(f"{kind} name={name!r} is already registered; pass replace=True")
            table[name] = fn
            return fn

        return add if builder is None else add(builder)
    return register


def check_options(builder: Callable, kind: str, name: str, options: dict[str, Any]) -> None:
    """Every option must be one of the builder's keyword-only parameters (or it takes **kw)."""
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    own = [p.name for p in params.values() if p.kind is p.KEYWORD_ONLY]
    for key in options:
        if not takes_any and key not in own:
            choices = ", ".join(own) if own else "none"
            raise ValueError(f"{kind} {name!r} has no option {key}={options[key]!r}; its options: {choices}")
