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


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules(pkg: Path) -> dict[str, Path]:
    """Every module of the package at ``pkg`` by its dotted name."""
    return {_module_name(p, pkg.parent): p for p in pkg.rglob("*.py")}


MODULES = package_modules(PKG)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package's module an import names (``pkg.name`` when that is a module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, modules: dict[str, Path] = MODULES) -> set[str]:
    """Every module of the package that ``module`` imports, at the top or inside a function."""
    top = module.partition(".")[0]
    tree = ast.parse(modules[module].read_text())
    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
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
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for n in names:
            if n == top or n.startswith(top + "."):
                target = _resolve(n, modules)
                if target and target != module:
                    out.add(target)
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """The import cycles among ``modules``, by depth-first search (a package's __init__ re-exporting
    its own submodules is not a cycle with them)."""
    graph = {m: imports(m, modules) for m in modules}
    for m in graph:
        graph[m] = {t for t in graph[m] if not (m.startswith(t + ".") and modules[t].name == "__init__.py")}
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
    return cycles


def test_no_import_cycles():
    cycles = import_cycles(MODULES)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail(tmp_path):
    """The same check on a package with a planted cycle (a -> b -> c -> a, one import inside a function)."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from planted.a import A\n")
    (pkg / "a.py").write_text("from planted.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from planted import c\nB = 2\n")
    (pkg / "c.py").write_text("def late():\n    from planted.a import A\n    return A\n")
    (pkg / "d.py").write_text("import planted.a\n")                  # imports into the cycle: not one
    cycles = import_cycles(package_modules(pkg))
    assert cycles == [["planted.a", "planted.b", "planted.c", "planted.a"]]


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


#: where lines are held to 110 characters (the step path; issue 20)
SHORT_LINES = ("lipschitz_lab.scheduler", "lipschitz_lab.probe", "lipschitz_lab.steplog", "lipschitz_lab.training",
               "lipschitz_lab.records", "lipschitz_lab.bounds")


def _long_lines(limit=110):
    return [f"{m}:{i}" for m, p in MODULES.items() if m.startswith(SHORT_LINES) and m not in GENERATED
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > limit]


def test_lines_are_at_most_110_characters():
    assert _long_lines() == []


def test_the_line_check_can_fail():
    assert _long_lines(limit=60) != []


#: a packed statistics vector read by position (issue 20): the layouts name every slot instead
INDEXED = re.compile(r"(values|v|vals)\[[0-9-]")             # the grep, as written


def _indexed_reads(prefixes=("lipschitz_lab.scheduler", "lipschitz_lab.probe", "lipschitz_lab.training"),
                   modules=None):
    return [f"{m}:{i}: {line.strip()}" for m, p in (modules or MODULES).items() if m.startswith(prefixes)
            for i, line in enumerate(p.read_text().splitlines(), 1) if INDEXED.search(line)]


def test_no_statistic_is_read_by_its_position():
    assert _indexed_reads() == []


def test_the_position_check_can_fail(tmp_path):
    planted = tmp_path / "stats.py"
    planted.write_text("def beta(values):\n    return values[6] * values[-3]\n")
    found = _indexed_reads(("planted",), {"planted.stats": planted})
    assert found == ["planted.stats:2: return values[6] * values[-3]"]
