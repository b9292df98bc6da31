"""Parts of the training panel: its controls, a run's name, its status and progress lines, and a
data set's task."""
from __future__ import annotations

import functools
import html
import math
from typing import Any

import ipywidgets as widgets

from lipschitz_lab.config import TrainConfig
from lipschitz_lab.ui._fields import LABEL_WIDTH, duration, every_field, int_field, time_left
from lipschitz_lab.ui.figures import number

Record = dict[str, Any]

#: the widgets, by config field; the menus' choices are choices.choices(), read live
DROPDOWNS = ("model", "loss", "lr_policy", "optimizer", "bound", "kz", "recompute")
NUMBERS = ("weight_decay", "min_lr", "max_lr")
#: integers typed as text: "2.5" is refused in one line naming the field (an IntText would read 25)
INTEGERS = ("batch_size", "epochs")
#: integers where nothing (or 0) means off: the curvature instruments every N steps
OPTIONAL_INTEGERS = ("sharpness_every",)
LABELS = {"model": "model", "loss": "loss", "lr_policy": "policy", "optimizer": "optimizer", "bound": "bound",
          "kz": "K_z definition", "recompute": "recompute", "batch_size": "batch size m", "epochs": "epochs",
          "weight_decay": "weight decay λ", "min_lr": "min lr", "max_lr": "max lr",
          "sharpness_every": "sharpness every"}


def make_controls(base: TrainConfig, data) -> dict[str, widgets.ValueWidget]:
    """One widget per config field, by field name, set to ``base``'s values (the menus hold
    only their value until ``refresh_choices`` fills them)."""
    controls: dict[str, widgets.ValueWidget] = {"dataset": data.dataset}
    for name in DROPDOWNS:
        controls[name] = widgets.Dropdown(options=[getattr(base, name)], value=getattr(base, name),
                                          description=LABELS[name])
    controls["device"] = data.device
    for name in INTEGERS:
        controls[name] = int_field(LABELS[name], getattr(base, name), name)
    for name in NUMBERS:
        controls[name] = widgets.FloatText(value=getattr(base, name), description=LABELS[name])
    controls["sharpness_every"] = every_field(LABELS["sharpness_every"], base.sharpness_every)
    for w in controls.values():
        w.style.description_width = LABEL_WIDTH
        w.layout.width = "260px"
    return controls



def widget_value(name: str, value: Any) -> Any:
    """A config value as its widget holds it (the integers are typed as text; None is empty)."""
    if name in INTEGERS or name in OPTIONAL_INTEGERS:
        return "" if value is None else str(value)
    return value


def run_name(cfg: dict[str, Any]) -> str:
    """What ``runs list`` calls a run started here:
    ``"digits mlp softmax_ce · lipschitz strict/step (panel)"``."""
    c = {**TrainConfig().to_dict(), **cfg}
    detail = f"{c['bound']}/{c['recompute']}" if c["lr_policy"] == "lipschitz" else f"lr={c['lr']:g}"
    return f"{c['dataset']} {c['model']} {c['loss']} · {c['lr_policy']} {detail} (panel)"


def dataset_task(name: str) -> str | None:
    """multiclass, binary or regression: what a loss must suit (None: cannot tell without its files)."""
    from lipschitz_lab.ui._fields import needs_files
    if needs_files(name):
        return "multiclass"                      # the image data sets are classification
    try:
        return _built_task(name)
    except Exception:                            # a data set of one's own that needs options
        return None


@functools.lru_cache(maxsize=None)
def _built_task(name: str) -> str:
    from lipschitz_lab.data import get_dataset
    return get_dataset(name, augment=False, download=False).task


def running_text(run_id: str | None, cfg: dict[str, Any]) -> str:
    """``run r-… · digits / mlp / softmax_ce / lipschitz strict, per step · cpu``."""
    c = {**TrainConfig().to_dict(), **cfg}          # the run's config, not the widgets' now
    rule = f" {c['bound']}, per {c['recompute']}" if c["lr_policy"] == "lipschitz" else ""
    sharp = f" / λ_max every {c['sharpness_every']} steps" if c.get("sharpness_every") else ""
    what = f"{c['dataset']} / {c['model']} / {c['loss']} / {c['lr_policy']}{rule}{sharp}"
    return (f"run <code>{run_id}</code> · {what}"
            f" · {html.escape(str(c['device']))}")


def progress_text(r: Record, total: int | None, epochs: int | None) -> str:
    """``step 120/940 · epoch 2/10 · 0:12 elapsed · ~1:20 left · lr 0.0123``."""
    step = int(r["step"]) + 1
    elapsed = number(r.get("time"))
    of = f"/{total:,}" if total else ""
    clock = "" if math.isnan(elapsed) else f" · {duration(elapsed)} elapsed{time_left(elapsed, step, total)}"
    lr = number(r.get("lr"))
    return f"step <b>{step}</b>{of} · epoch {int(r['epoch']) + 1}/{epochs}{clock} · lr {lr:.4g}"
