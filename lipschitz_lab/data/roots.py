"""Where the data sets' files live when no ``data_root`` is given.

:func:`default_data_root` never looks at the current directory, so a notebook
in ``notebooks/`` and a shell in the repository find the same folder:

1. ``$LIPSCHITZ_LAB_DATA``, when set;
2. the developers' offline copy, ``<checkout>/../shared/data``: only in a
   source checkout (``pyproject.toml`` beside the package) that has that
   folder; it is found from this file's location, never from the cwd;
3. ``$XDG_DATA_HOME/lipschitz-lab/data``, else ``~/.local/share/lipschitz-lab/data``
   -- the one place for everyone else.  Nothing creates it; a download does.

Inside the root each data set keeps torchvision's layout: ``MNIST/raw/``,
``cifar-10-batches-py/``, ``cifar-100-python/``, and ``cifar10-subset/``
(``train.npz`` and ``test.npz``).
"""
from __future__ import annotations

import os
from pathlib import Path

#: environment variable that points at the folder holding MNIST/, cifar-10-batches-py/, ...
DATA_ROOT_ENV = "LIPSCHITZ_LAB_DATA"

_CHECKOUT = Path(__file__).resolve().parents[2]    # .../<checkout>/lipschitz_lab/data/roots.py

#: the developers' offline copies (shared/data/README.md), beside a source checkout
DEVELOPER_DATA_ROOT = _CHECKOUT.parent / "shared" / "data"


def _in_source_checkout() -> bool:
    # an installed wheel sits in site-packages, where no pyproject.toml is beside it
    return (_CHECKOUT / "pyproject.toml").is_file()


def user_data_root() -> Path:
    """``$XDG_DATA_HOME/lipschitz-lab/data``, else ``~/.local/share/lipschitz-lab/data``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # the XDG spec: a relative XDG_DATA_HOME is invalid and is ignored
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "lipschitz-lab" / "data"


def default_data_root() -> Path:
    """The folder that holds the data sets' folders when ``data_root`` is None (see the module doc)."""
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    if _in_source_checkout() and DEVELOPER_DATA_ROOT.is_dir():
        return DEVELOPER_DATA_ROOT
    return user_data_root()
