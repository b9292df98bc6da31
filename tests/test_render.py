"""Rendering: the committed derivations/ match the code; LaTeX and JSON are well formed."""
from pathlib import Path

import pytest
import sympy as sp

from lipschitz_lab.symbolic import BUILTIN_NAMES, LOSS_SPECS, derive, derive_builtin
from lipschitz_lab.symbolic.render import readme_table, to_json, to_latex, to_markdown

ROOT = Path(__file__).resolve().parents[1]
DERIVATIONS = ROOT / "derivations"
README_BEGIN = "<!-- lipschitz-lab derive --table: begin -->\n"
README_END = "<!-- lipschitz-lab derive --table: end -->"


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_committed_markdown_is_current(name):
    path = DERIVATIONS / f"{name}.md"
    assert path.exists(), f"{path} missing: run `lipschitz-lab derive --write derivations/`"
    assert path.read_text() == to_markdown(derive(name)), f"{path} is stale"


def test_markdown_shows_claim_supremum_verdict_witness_and_final_L():
    md = to_markdown(derive("softmax_ce"))
    for needle in ("## Steps", "Published bound (eq. 20)", "Derived", "## Verdict", "**fails**",
                   "Witness: at", "final, corrected", "lr = 0.668"):
        assert needle in md


@pytest.mark.parametrize("name", list(LOSS_SPECS))
def test_latex_parses_as_aligned_block(name):
    tex = to_latex(derive(name))
    assert tex.startswith(r"\begin{aligned}") and tex.endswith(r"\end{aligned}")
    assert tex.count(r"\\") >= 2


def test_json_bounds_are_sympy_parsable_in_the_project_symbols():
    names = {"K_z", "K_a", "y_norm", "m", "k", "lam", "w_max", "eps"}
    for name in LOSS_SPECS:
        js = to_json(derive(name))
        for key in ("paper_bound", "corrected_bound"):
            if js[key] is not None:
                assert {str(s) for s in sp.sympify(js[key]).free_symbols} <= names


def test_markdown_shows_smoothness_and_the_step_witness():
    md = to_markdown(derive("softmax_ce"))
    for needle in ("## Smoothness", "Gershgorin", "$S_2 = \\frac{1}{2 m}$", "spectral norm",
                   "## One gradient step at the paper's rate", "E before the step", "E after"):
        assert needle in md
    assert "The paper gives no rate" in to_markdown(derive("label_smoothed_ce"))


def test_readme_table_is_what_the_engine_prints():
    """README's "What the derivations find": every cell between the markers comes from derive()."""
    text = (ROOT / "README.md").read_text()
    assert README_BEGIN in text and README_END in text, "README lost its table markers"
    block = text[text.index(README_BEGIN) + len(README_BEGIN):text.index(README_END)]
    assert block.rstrip("\n") == readme_table(derive_builtin()).rstrip("\n"), \
        "README's table is stale: paste `lipschitz-lab derive --table` between the markers"


def test_readme_table_cells_follow_the_derivation():
    """The table is built from the derivation's fields, so a changed verdict shows up in it."""
    from dataclasses import replace
    d = derive_builtin()
    flipped = dict(d, bce=replace(d["bce"], paper_holds=True))
    row = next(line for line in readme_table(flipped).splitlines() if line.startswith("| `bce`"))
    assert "| holds |" in row
    assert readme_table(flipped) != readme_table(d)


def test_json_has_smoothness_and_the_step_witness():
    for name in BUILTIN_NAMES:
        js = to_json(derive(name))
        assert {str(s) for s in sp.sympify(js["smoothness_bound"]).free_symbols} <= {"m", "k", "eps"}
        assert js["smoothness"]["tight"] is True and js["smoothness"]["witness"]
        assert js["batch"] in ("elementwise", "softmax")
    assert to_json(derive("softmax_ce"))["paper_rate_witness"]["steps"]["frobenius"]["loss_after"] > \
        to_json(derive("softmax_ce"))["paper_rate_witness"]["loss_before"]
    assert to_json(derive("label_smoothed_ce"))["paper_rate_witness"] is None
