"""Names a package exports but imports only on first use (PEP 562), so that importing
the package stays cheap: no torch, SymPy or Bokeh until a name that needs them is used."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, lazy: dict[str, str], namespace: dict[str, Any],
                 names: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's ``__getattr__`` and ``__dir__``: ``lazy`` maps a name to the module
    that defines it; a name, once loaded, is cached in ``namespace`` (the package's globals)."""
    def __getattr__(name: str) -> Any:
        if name in lazy:
            value = namespace[name] = getattr(importlib.import_module(lazy[name]), name)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names
    return __getattr__, __dir__
