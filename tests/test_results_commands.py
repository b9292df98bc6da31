"""Every command printed in benchmarks/RESULTS.md still parses (issue 19): its script exists, its
flags exist, and the presets, policy names and config files it names exist.  A table is only the
output of the command above it while that command can still be run as written.

``lipschitz-lab`` commands go through the CLI's own parser (no run); a benchmark script's flags are
read from its source (``add_argument`` calls, by ast), so no script is imported or started here.
"""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
#: a command in backticks: ``.venv/bin/lipschitz-lab ...``, ``python benchmarks/x.py ...``
COMMAND = re.compile(r"`(?:cd <repo> && )?((?:\.venv/bin/)?(?:lipschitz-lab|python) [^`]+)`")


def results_commands() -> list[str]:
    text = RESULTS.read_text()
    found = []
    for cmd in COMMAND.findall(text):
        words = shlex.split(cmd.replace("...", ""))
        if words[0].endswith("python") and not (len(words) > 1 and words[1].startswith("benchmarks/")):
            continue                                        # python -c, pytest: not a benchmark command
        found.append(cmd)
    return found


def _flags(script: Path) -> set[str]:
    """Every option string of every ``add_argument`` in the script and its local helpers."""
    out: set[str] = set()
    for path in [script, *script.parent.glob("_*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                out |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return out | {"-h", "--help"}


def _names_after(words: list[str], flag: str) -> list[str]:
    if flag not in words:
        return []
    out = []
    for w in words[words.index(flag) + 1:]:
        if w.startswith("-"):
            break
        out.append(w)
    return out


def _check_policies(names: list[str]) -> None:
    from lipschitz_lab.studies.catalogue import GROUPS, catalogue
    known = set(catalogue()) | set(GROUPS) | {"all", "POLICY"}
    unknown = [n for n in names if n not in known]
    assert not unknown, f"policies not in the catalogue: {unknown}"


def check_command(cmd: str) -> None:
    words = shlex.split(cmd)
    if words[0].endswith("lipschitz-lab"):
        from lipschitz_lab.cli import build_parser
        args = build_parser().parse_args(words[1:])          # unknown flags, choices: UsageError
        if getattr(args, "preset", None) and args.command == "study":
            from lipschitz_lab.studies.spec import STUDY_PRESETS
            assert args.preset in STUDY_PRESETS, args.preset
        if getattr(args, "config", None):
            assert (ROOT / args.config).is_file(), args.config
        return
    script = ROOT / words[1]
    assert script.is_file(), f"{words[1]} does not exist"
    flags = {w.split("=")[0] for w in words[2:] if w.startswith("-")}
    assert flags <= _flags(script), f"{words[1]}: unknown flags {sorted(flags - _flags(script))}"
    _check_policies(_names_after(words, "--policies") + _names_after(words, "--policy"))


@pytest.mark.parametrize("cmd", results_commands())
def test_each_results_command_still_parses(cmd):
    check_command(cmd)


def test_results_has_commands_and_the_check_can_fail():
    assert len(results_commands()) >= 10
    for bad in (".venv/bin/lipschitz-lab study --preset no-such-study",
                "python benchmarks/bench_whatif_mnist.py --policies no-such-policy",
                "python benchmarks/bench_whatif_mnist.py --no-such-flag",
                "python benchmarks/bench_gone.py"):
        with pytest.raises((AssertionError, ValueError)):
            check_command(bad)
