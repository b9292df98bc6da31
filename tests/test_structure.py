"""The tree's shape (issue 15): no import cycle in lipschitz_lab/, no upward import between
layers, only ui/ imports ipywidgets or bokeh, no machine paths, small functions and modules."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lipschitz_lab"

#: the layers, lowest first (DESIGN.md); a module may import only from its own layer or below
LAYERS = [
    {"_lazy", "_registry", "errors", "records", "_ops", "_generated"},
    {"symbolic"},
    {"bounds"},
    {"losses", "distributed", "optim_variants"},
    {"probe", "steplog"},
    {"scheduler"},
    {"data", "models", "config", "runs"},
    {"policies"},
    {"choices", "training", "trainer"},
    {"studies"},
    {"ui"},
    {"cli", "__main__", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The lipschitz_lab module an import names (``pkg.name`` when that is a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """Every lipschitz_lab module ``module`` imports, at the top or inside a function."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # ``from pkg import name``: the submodule pkg.name when there is one, else pkg itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for n in names:
            if n.startswith("lipschitz_lab"):
                target = _resolve(n)
                if target and target != module:
                    out.add(target)
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    graph = {m: imports(m) for m in MODULES}
    # a package's __init__ re-exporting its own submodules is not a cycle with them
    for m in graph:
        graph[m] = {t for t in graph[m] if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
    for m in sorted(graph):
        visit(m)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_no_upward_imports():
    upward = []
    for m in MODULES:
        for t in imports(m):
            a, b = _layer(m), _layer(t)
            if a in RANK and b in RANK and RANK[b] > RANK[a]:
                upward.append(f"{m} -> {t}")
    unknown = sorted({_layer(m) for m in MODULES} - set(RANK))
    assert unknown == [], f"modules in no layer: {unknown}"
    assert upward == [], "\n".join(upward)


def test_the_cycle_check_can_fail(monkeypatch):
    monkeypatch.setitem(MODULES, "lipschitz_lab.fake_a", PKG / "fake_a.py")
    graph = {"a": {"b"}, "b": {"a"}}
    stack: list[str] = []
    found = []

    def visit(node):
        if node in stack:
            found.append(node)
            return
        stack.append(node)
        for nxt in graph[node]:
            visit(nxt)
        stack.pop()
    visit("a")
    assert found == ["a"]


def test_only_ui_imports_ipywidgets_and_bokeh():
    offenders = []
    for m, path in MODULES.items():
        if _layer(m) == "ui":
            continue
        text = path.read_text()
        if re.search(r"^\s*(from|import)\s+(ipywidgets|bokeh|jupyter_bokeh)\b", text, flags=re.M):
            offenders.append(m)
    assert offenders == []


#: an absolute path of one machine: /work/..., /home/..., /root/..., /Users/...
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|home|root|Users)/\w")


def test_no_machine_paths_in_the_tree():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in (".png", ".pt", ".npz", ".db", ".ico", ".woff", ".woff2", ".ttf") or not path.is_file():
            continue
        if name.startswith("benchmarks/gpu/"):          # raw logs of a run, kept as printed
            continue
        for i, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if MACHINE_PATH.search(line) and "MACHINE_PATH" not in line:
                hits.append(f"{name}:{i}: {line.strip()[:100]}")
    assert hits == [], "\n".join(hits)


def test_the_machine_path_check_can_fail():
    assert MACHINE_PATH.search('SHARED = Path("/work/shared/data")')
    assert MACHINE_PATH.search("open('/home/alice/x.csv')")
    assert not MACHINE_PATH.search("see ../shared/data or $LIPSCHITZ_LAB_DATA")


GENERATED = {"lipschitz_lab._generated"}


def _long_functions(limit=60):
    out = []
    for m, path in MODULES.items():
        if m in GENERATED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{m}.{node.name}: {n} lines")
    return out


def test_functions_are_under_60_lines():
    assert _long_functions() == []


def test_modules_are_under_300_lines():
    long = [f"{m}: {n}" for m, p in MODULES.items() if m not in GENERATED
            and (n := len(p.read_text().splitlines())) > 300]
    assert long == []


@pytest.mark.parametrize("limit", [5])
def test_the_size_checks_can_fail(limit):
    assert _long_functions(limit) != []
