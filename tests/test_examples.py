"""The README's plain-loop example runs and its strict bound holds."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_plain_loop_example():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "plain_loop.py")],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = re.findall(r"loss ([\d.]+)\s+lr ([\d.]+).*grad_last ([\d.]+) <= L ([\d.]+)", out)
    assert len(rows) == 5
    assert float(rows[-1][0]) < float(rows[0][0])                     # it learns
    assert all(float(g) <= float(L) for _, _, g, L in rows)           # strict bound held
