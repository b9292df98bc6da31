"""The live training panel: pick a run's settings, press Start, watch K_z, lr and the bound.

>>> from lipschitz_lab.ui import training_panel
>>> training_panel(dataset="digits", epochs=5)          # the last line of a cell  # doctest: +SKIP

Threads (docs/architecture.md, "Threads in the notebook"):

1. Start builds the config from the widgets and runs :func:`~lipschitz_lab.trainer.train`
   in a ``threading.Thread``.
2. The thread only puts plain records on the :class:`~lipschitz_lab.ui._bridge.Bridge`'s queue.
3. One function, :meth:`TrainingPanel._apply`, applies them to the Bokeh sources and the
   widgets on the kernel's event loop, in batches of about 0.2 s.
4. Stop sets the trainer's ``stop_event``; the run ends within one batch, status "stopped".

No cell ever joins the thread.  Tests and scripts without a running loop call
:meth:`TrainingPanel.wait` and then :meth:`TrainingPanel.flush`.
"""
from __future__ import annotations

import html
import math
import threading
import traceback
from typing import Any, Callable

import ipywidgets as widgets
from jupyter_bokeh import BokehModel

from lipschitz_lab.config import TrainConfig
from lipschitz_lab.runs import RunStore
from lipschitz_lab.ui._bridge import Bridge, BridgedPanel, load_bokehjs, running_loop
from lipschitz_lab.ui._fields import LABEL_WIDTH, DataFields, duration, time_left
from lipschitz_lab.ui.figures import RunFigures, number
from lipschitz_lab.ui.report import as_store

Record = dict[str, Any]

#: the widgets, by config field; the menus' choices are choices.choices(), read live
DROPDOWNS = ("model", "loss", "lr_policy", "optimizer", "bound", "kz", "recompute")
NUMBERS = ("batch_size", "epochs", "weight_decay", "min_lr", "max_lr")
LABELS = {"model": "model", "loss": "loss", "lr_policy": "policy", "optimizer": "optimizer", "bound": "bound",
          "kz": "K_z definition", "recompute": "recompute", "batch_size": "batch size m", "epochs": "epochs",
          "weight_decay": "weight decay λ", "min_lr": "min lr", "max_lr": "max lr"}


def _choices() -> dict[str, tuple[str, ...]]:
    from lipschitz_lab.choices import choices
    return choices()


def run_name(cfg: dict[str, Any]) -> str:
    """What ``runs list`` calls a run started here: ``"lipschitz strict (panel)"``."""
    policy = cfg.get("lr_policy", "lipschitz")
    detail = cfg.get("bound", "paper") if policy == "lipschitz" else f"lr={cfg.get('lr', 0.01):g}"
    return f"{policy} {detail} (panel)"


class TrainingPanel(BridgedPanel, widgets.VBox):
    """Controls, a status line, a progress line and the live figures of one run at a time.

    ``defaults`` are :class:`~lipschitz_lab.config.TrainConfig` fields: those with a
    widget set its initial value, the others (``max_steps``, ``seed``, ...) go to
    every run unchanged.  ``on_done`` callables get the run id when a run ends.
    """

    def __init__(self, store: RunStore | str | None = None, **defaults: Any):
        base = TrainConfig.from_dict(defaults)          # unknown fields fail here, naming the field
        self.store = as_store(store)
        self.defaults = dict(defaults)
        choices = _choices()
        self.data = DataFields(base, choices)
        self.controls: dict[str, widgets.ValueWidget] = {"dataset": self.data.dataset}
        for name in DROPDOWNS:
            self.controls[name] = widgets.Dropdown(options=[getattr(base, name)], value=getattr(base, name),
                                                   description=LABELS[name])
        self.controls["device"] = self.data.device
        for name in NUMBERS:
            kind = widgets.IntText if name in ("batch_size", "epochs") else widgets.FloatText
            self.controls[name] = kind(value=getattr(base, name), description=LABELS[name])
        for w in self.controls.values():
            w.style.description_width = LABEL_WIDTH
            w.layout.width = "260px"
        self.refresh_choices(choices)
        self.data.data_root.layout.width = "530px"
        self.data.path.layout.width = "530px"

        self.start_button = widgets.Button(description="Start", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.start_button.on_click(self.start)
        self.stop_button.on_click(self.stop)
        self.status = widgets.HTML(value="<b>ready</b>: press Start")
        self.counter = widgets.HTML(value="step 0")
        self.status.add_class("lipschitz-status")
        self.counter.add_class("lipschitz-counter")

        self.figures = RunFigures()
        load_bokehjs()
        self.plot = BokehModel(self.figures.layout)

        self.run_id: str | None = None
        self.run = None                     # the trainer's Run once it returns
        self.error: str | None = None       # the last ConfigError / failure, as shown
        self.on_done: list[Callable[[str | None], None]] = []
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        self._bridge: Bridge | None = None
        self._active = False
        self._cfg: dict[str, Any] = {}
        self._per_epoch: int | None = None   # steps per epoch, once known

        grid = widgets.GridBox(list(self.controls.values()),
                               layout=widgets.Layout(grid_template_columns="repeat(3, 270px)"))
        bar = widgets.HBox([self.start_button, self.stop_button, self.counter],
                           layout=widgets.Layout(align_items="center"))
        super().__init__(children=[grid, self.data.data_root, self.data.path, bar, self.status, self.plot])
        self.add_class("lipschitz-training-panel")

    # -- the config -----------------------------------------------------------------
    def refresh_choices(self, choices: dict[str, tuple[str, ...]] | None = None) -> None:
        """Read the menus' choices again (a loss registered since shows up); values stay."""
        choices = choices or _choices()
        for name in DROPDOWNS:
            w = self.controls[name]
            value = w.value
            options = list(choices[name]) + ([value] if value not in choices[name] else [])
            if list(w.options) != options:
                w.options = options
                w.value = value

    def config(self) -> dict[str, Any]:
        """The config a Start would train: the defaults, overridden by the widgets."""
        cfg = dict(self.defaults)
        cfg.update({name: w.value for name, w in self.controls.items()})
        data = self.data.config()
        same_set = data["dataset"] == self.defaults.get("dataset", TrainConfig.dataset)
        options = dict(self.defaults.get("dataset_options") or {}) if same_set else {}
        cfg.update(data, dataset_options={**options, **data["dataset_options"]})
        cfg.setdefault("name", None)
        cfg["name"] = cfg["name"] or run_name(cfg)
        return cfg

    @property
    def running(self) -> bool:
        return self._active

    # -- buttons --------------------------------------------------------------------
    def start(self, _button: widgets.Button | None = None) -> None:
        """Start a run in a background thread (a second Start while one runs does nothing)."""
        if self._active:
            return
        self.refresh_choices()
        cfg = self._cfg = self.config()
        self.run_id = self.run = self.error = None
        missing = self.data.check(cfg)
        if missing:                          # nothing is created: say which files go where
            self.error = missing
            self._set_status("error", html.escape(missing))
            return
        self._active = True
        self._per_epoch = None
        self.figures.reset()
        self.figures.plan(cfg.get("max_steps"))
        self.counter.value = "step 0"
        self._set_status("running", "starting…")
        self.start_button.disabled, self.stop_button.disabled = True, False
        self._stop_event = threading.Event()
        # the loop of the thread that pressed Start: the kernel's, in a notebook
        self._bridge = Bridge(self._apply, running_loop())
        self._thread = threading.Thread(target=self._work, args=(cfg, self._stop_event, self._bridge),
                                        name="lipschitz-lab-train", daemon=True)
        self._thread.start()
        self._in_flight()

    def stop(self, _button: widgets.Button | None = None) -> None:
        """Ask the run to stop; it ends after the batch in progress."""
        if self._stop_event is not None and self._active:
            self._stop_event.set()
            self.stop_button.disabled = True
            self._set_status("running", "stopping after this batch…")

    # -- the training thread: it only queues -------------------------------------------
    def _work(self, cfg: dict, stop_event: threading.Event, bridge: Bridge) -> None:
        from lipschitz_lab.trainer import train
        try:
            run = train(cfg, store=self.store, subscribers=(bridge.put,), stop_event=stop_event, progress=False)
        except ValueError as exc:     # ConfigError and the like: bad input, named in one line
            bridge.put({"kind": "panel", "event": "error", "message": str(exc)})
        except Exception as exc:  # the thread must report, not die silently
            bridge.put({"kind": "panel", "event": "failed", "message": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()})
        else:
            self.run = run
            bridge.put({"kind": "panel", "event": "done", "status": run.status, "reason": run.reason,
                        "run_id": run.run_id, "steps": run.steps, "wall_time": run.wall_time})

    # -- the loop side: the one function that touches Bokeh and the widgets ----------------
    def _apply(self, batch: list[Record]) -> None:
        steps = [r for r in batch if r.get("kind") == "step"]
        epochs = [r for r in batch if r.get("kind") == "epoch"]
        self.figures.add_steps(steps)
        self.figures.add_epochs(epochs)
        if epochs and self._per_epoch is None:
            # the first epoch tells the steps per epoch, hence the run's length: thin to fit
            last = epochs[-1]
            self._per_epoch = max(1, round(int(last["step"]) / (int(last["epoch"]) + 1)))
            self.figures.plan(self.total_steps())
        if steps:
            self._show_progress(steps[-1])
        for r in batch:
            kind = r.get("kind")
            if kind == "status":
                self._on_status(r)
            elif kind == "panel":
                self._on_panel(r)

    def total_steps(self) -> int | None:
        """The run's length in steps, once known (max_steps caps it)."""
        cap = self._cfg.get("max_steps")
        full = self._per_epoch * int(self._cfg.get("epochs", 1)) if self._per_epoch else None
        return min(x for x in (cap, full) if x) if (cap or full) else None

    def _show_progress(self, r: Record) -> None:
        """``step 120/940 · epoch 2/10 · 0:12 elapsed · ~1:20 left · lr 0.0123``."""
        step, total = int(r["step"]) + 1, self.total_steps()
        elapsed = number(r.get("time"))
        of = f"/{total:,}" if total else ""
        clock = "" if math.isnan(elapsed) else f" · {duration(elapsed)} elapsed{time_left(elapsed, step, total)}"
        self.counter.value = (f"step <b>{step}</b>{of} · epoch {int(r['epoch']) + 1}/{self._cfg.get('epochs')}"
                              f"{clock} · lr {number(r.get('lr')):.4g}")

    def _on_status(self, r: Record) -> None:
        self.run_id = r.get("run_id") or self.run_id
        if r.get("steps_per_epoch") and self._per_epoch is None:
            self._per_epoch = int(r["steps_per_epoch"])
            self.figures.plan(self.total_steps())
        if r["status"] == "running":
            cfg = {**TrainConfig().to_dict(), **self._cfg}    # the run's, not the widgets' now
            self._set_status("running", f"run <code>{self.run_id}</code> · {cfg['dataset']} / {cfg['model']}"
                                        f" / {cfg['loss']} / {cfg['lr_policy']} · {html.escape(cfg['device'])}")
        else:
            reason = f" · {html.escape(r['reason'])}" if r.get("reason") else ""
            self._set_status(r["status"], f"run <code>{self.run_id}</code> at step {r.get('step')}{reason}")

    def _on_panel(self, r: Record) -> None:
        event = r["event"]
        if event == "done":
            final = self.figures.epochs.data.get("val_acc") or []
            acc = f" · val_acc {final[-1]:.4f}" if len(final) and not math.isnan(final[-1]) else ""
            reason = f" · {html.escape(r['reason'])}" if r.get("reason") else ""
            self._set_status(r["status"], f"run <code>{r['run_id']}</code> · {r['steps']} steps in "
                                          f"{r['wall_time']:.1f} s{acc}{reason}")
        else:  # "error" (bad config: no run was created) or "failed"
            self.error = r["message"]
            self._set_status("error" if event == "error" else "failed", html.escape(r["message"]))
        self._active = False
        self.start_button.disabled, self.stop_button.disabled = False, True
        for fn in self.on_done:
            fn(self.run_id)

    # -- for tests and scripts (never inside a notebook cell) ------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Join the training thread (True when it has ended).  Not in a notebook cell:
        the kernel's loop would stall, and with it the live figures."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True


def training_panel(store: RunStore | str | None = None, **defaults: Any) -> TrainingPanel:
    """The live training panel; show it as the last expression of a cell."""
    return TrainingPanel(store, **defaults)
