"""What the training and study panels share: where the data are, the device, progress text.

:class:`DataFields` is the data-set menu with the folders it reads and the device menu:

- ``data folder``: the ``data_root`` of data sets that read files (mnist, cifar10, ...),
  by default :func:`lipschitz_lab.data.default_data_root`; hidden for those that need none;
- a folder for the data set's own folder option (``path`` of ``npz`` and
  ``cifar10_subset``, :func:`lipschitz_lab.data.path_option`), shown only for them;
- ``device``: the config's devices (``choices.choices()``) that this machine has.

:meth:`DataFields.check` gives the data package's one-line "which files go where"
message (:func:`lipschitz_lab.data.missing_files`, from the disk alone) before any run exists.
"""
from __future__ import annotations

import html
import math
import re
from typing import Any

import ipywidgets as widgets

LABEL_WIDTH = "110px"


def available_devices() -> list[str]:
    """``choices.choices()["device"]`` without the accelerators this machine lacks."""
    import torch

    from lipschitz_lab.choices import choices
    present = {"auto": True, "cpu": True, "cuda": torch.cuda.is_available(),
               "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    return [d for d in choices()["device"] if present.get(d, False)]


def default_data_root() -> str:
    from lipschitz_lab.data import default_data_root as root
    return str(root())


def path_option(dataset: str) -> str | None:
    """The data set's folder option (``"path"`` for npz), or None."""
    from lipschitz_lab.data import DATASETS, path_option as option
    return option(dataset) if dataset in DATASETS else None


def needs_files(dataset: str) -> bool:
    from lipschitz_lab.data import DATASETS, needs_files as needs
    return dataset in DATASETS and needs(dataset)


def _text(value: str, label: str, placeholder: str = "") -> widgets.Text:
    w = widgets.Text(value=value, description=label, placeholder=placeholder)
    w.style.description_width = LABEL_WIDTH
    return w


class DataFields:
    """The ``dataset`` and ``device`` menus and the data folders, as config fields.

    ``base``: a :class:`~lipschitz_lab.config.TrainConfig`; its values are the initial ones.
    """

    def __init__(self, base, choices: dict[str, tuple[str, ...]]):
        names = list(choices["dataset"]) + ([base.dataset] if base.dataset not in choices["dataset"] else [])
        self.dataset = widgets.Dropdown(options=names, value=base.dataset, description="data set")
        devices = available_devices()
        self.device = widgets.Dropdown(options=devices, value=base.device if base.device in devices else "cpu",
                                       description="device")
        for w in (self.dataset, self.device):
            w.style.description_width = LABEL_WIDTH
        self.data_root = _text(str(base.data_root or default_data_root()), "data folder")
        option = path_option(base.dataset)
        folder = base.dataset_options.get(option) if option else None
        self.path = _text("" if folder is None else str(folder), "npz folder", "a folder with train.npz, test.npz")
        self.dataset.observe(lambda _change: self._show(), names="value")
        self._show()

    def _show(self) -> None:
        """The folder fields only where the data set reads them (digits needs none)."""
        name = self.dataset.value
        self.data_root.layout.display = None if needs_files(name) else "none"
        option = path_option(name)
        self.path.layout.display = None if option else "none"
        self.path.description = f"{option} folder" if option and option != "path" else "npz folder"

    def config(self) -> dict[str, Any]:
        """``dataset``, ``data_root``, ``device`` and ``dataset_options`` as a run takes them."""
        name = self.dataset.value
        root = self.data_root.value.strip() if needs_files(name) else ""
        option = path_option(name)
        folder = self.path.value.strip() if option else ""
        return {"dataset": name, "data_root": root or None, "device": self.device.value,
                "dataset_options": {option: folder} if folder else {}}

    @staticmethod
    def check(cfg: dict[str, Any]) -> str | None:
        """The data package's one-line message when ``cfg``'s data set lacks its files
        (from the disk alone: nothing is created), else None."""
        from lipschitz_lab.data import DATASETS, missing_files
        name = cfg["dataset"]
        if name not in DATASETS:
            return None                   # the trainer names the unknown data set
        option = path_option(name)
        options = dict(cfg.get("dataset_options") or {})
        try:
            return missing_files(name, data_root=cfg.get("data_root"),
                                 **({option: options[option]} if option in options else {}))
        except ValueError as exc:
            return str(exc)


def int_field(label: str, value: int | None, field: str) -> widgets.Text:
    """A text field for a positive integer (``read_int`` parses it); its errors name ``field``."""
    w = widgets.Text(value="" if value is None else str(value), description=label, placeholder="none")
    w.field = field
    return w


def read_int(w: widgets.Text, *, optional: bool) -> int | None:
    """The integer typed in ``w`` ('' is None where ``optional``), else a ConfigError naming the field."""
    from lipschitz_lab.config import ConfigError
    text = w.value.strip().replace(",", "").replace("_", "")
    if not text and optional:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{w.field}={w.value!r}: need an integer >= 1" + (" or nothing" if optional else ""))
    return int(text)


#: what a curvature measurement costs, where a person decides to pay it (docs/curvature.md, "Cost")
SHARPNESS_TIP = ("λ_max of the loss's Hessian and the edge lr·λ_max every N steps (the stability figures); "
                 "each measurement costs about 10 training steps (5 Hessian-vector products). Empty or 0: off")


def every_field(label: str, value: int | None) -> widgets.Text:
    """The ``sharpness_every`` field: N steps, or nothing (off); :func:`read_every` parses it."""
    w = int_field(label, value, "sharpness_every")
    w.placeholder, w.tooltip = "off (N steps)", SHARPNESS_TIP
    return w


def read_every(w: widgets.Text) -> int | None:
    """``sharpness_every`` as typed: nothing or 0 is None (off), else an integer >= 1 (a ConfigError
    names the field otherwise)."""
    from lipschitz_lab.config import ConfigError
    if w.value.strip() in ("", "0"):
        return None
    try:
        return read_int(w, optional=True)
    except ConfigError:
        raise ConfigError(f"{w.field}={w.value!r}: need an integer >= 1 (steps), or 0 or nothing: off") from None


# -- text -------------------------------------------------------------------------------------

def inline_markdown(text: str) -> str:
    """Escape ``text`` as HTML, then render its Markdown `code` and **bold** spans."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def duration(seconds: float | None) -> str:
    """``42 s``, ``3:07`` or ``1:02:03``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def time_left(elapsed: float, done: float, total: float | None) -> str:
    """``" · ~3:07 left"`` from the pace so far; empty while the total or the pace is unknown."""
    if not total or done <= 0 or elapsed <= 0 or done >= total:
        return ""
    return f" · ~{duration(elapsed / done * max(total - done, 0))} left"
