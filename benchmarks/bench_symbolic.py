"""Cold time to derive every loss and generate its code; import time of the package.

Run: .venv/bin/python benchmarks/bench_symbolic.py
Each figure is measured in a fresh interpreter (cold: no SymPy cache, no bytecode of ours warmed).
"""
from __future__ import annotations

import platform
import statistics
import subprocess
import sys

DERIVE = ("import time; t=time.perf_counter(); "
          "from lipschitz_lab.symbolic import derive_all; "
          "from lipschitz_lab.symbolic.codegen import generate_source; "
          "generate_source(derive_all()); print(time.perf_counter()-t)")
IMPORT = ("import time; t=time.perf_counter(); import lipschitz_lab, lipschitz_lab.bounds; "
          "print(time.perf_counter()-t)")
IMPORT_TORCH = ("import time; t=time.perf_counter(); import torch; "
                "print(time.perf_counter()-t)")


def measure(code: str, repeats: int = 3) -> float:
    return statistics.median(float(subprocess.check_output([sys.executable, "-c", code]))
                             for _ in range(repeats))


if __name__ == "__main__":
    d = measure(DERIVE)
    i = measure(IMPORT, 5)
    t = measure(IMPORT_TORCH, 3)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"cold derive + codegen, all losses: {d:.2f} s (target < 5 s)")
    print(f"import lipschitz_lab + bounds:      {i * 1000:.1f} ms")
    print(f"import torch (for scale):           {t * 1000:.0f} ms")
