"""Shared by the notebook and browser tests: a python3 kernelspec that is this venv's python."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def venv_kernelspec(root: Path) -> Path:
    """Write ``<root>/kernels/python3/kernel.json`` running ``sys.executable``; returns ``root``.

    Put ``root`` first on ``JUPYTER_PATH`` and every kernel named ``python3`` is
    this interpreter, whatever a user-level kernelspec says.
    """
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": False},
    }))
    return root


def jupyter_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment whose Jupyter paths live under ``tmp`` (no user config, runtime or settings)."""
    env = dict(os.environ)
    env.pop("LIPSCHITZ_LAB_QUICK", None)
    env.update({
        "JUPYTER_PATH": str(venv_kernelspec(tmp / "jupyter-data")),
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env
