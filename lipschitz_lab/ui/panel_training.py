"""The live training panel: pick a run's settings, press Start, watch K_z, lr and the bound.

>>> from lipschitz_lab.ui import training_panel
>>> training_panel(dataset="digits", epochs=5)          # the last line of a cell  # doctest: +SKIP

Threads (docs/architecture.md, "Threads in the notebook"):

1. Start builds the config from the widgets and runs :func:`~lipschitz_lab.trainer.train`
   in a ``threading.Thread``.
2. The thread only puts plain records on the :class:`~lipschitz_lab.ui._bridge.Bridge`'s queue.
3. One function, :meth:`TrainingPanel._apply`, applies them to the Bokeh sources and the
   widgets on the kernel's event loop, in batches of about 0.5 s.
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

from lipschitz_lab.config import PAPER_RULE, TrainConfig
from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.verdict import Tally
from lipschitz_lab.ui._bridge import Bridge, BridgedPanel, load_bokehjs, running_loop
from lipschitz_lab.ui._fields import DataFields, read_every, read_int
from lipschitz_lab.ui._training_parts import (DROPDOWNS, INTEGERS, OPTIONAL_INTEGERS, dataset_task, make_controls,
                                              progress_text, run_name, running_text, widget_value)
from lipschitz_lab.ui.bokeh_widget import OneWayBokeh
from lipschitz_lab.ui.figures import RunFigures
from lipschitz_lab.ui.report import as_store

Record = dict[str, Any]

def _choices() -> dict[str, tuple[str, ...]]:
    from lipschitz_lab.choices import choices
    return choices()


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
        self.controls = make_controls(base, self.data)
        self.refresh_choices(choices)
        self.data.data_root.layout.width = "530px"
        self.data.path.layout.width = "530px"

        self.start_button = widgets.Button(description="Start", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.paper_button = widgets.Button(description="the paper's rule", icon="book",
                                           tooltip="bound paper, recomputed per epoch (Yedida & Saha, 2019)")
        self.start_button.on_click(self.start)
        self.stop_button.on_click(self.stop)
        self.paper_button.on_click(lambda _b: self.use(**PAPER_RULE))
        self.data.dataset.observe(lambda _c: self._fit_loss(), names="value")
        self.status = widgets.HTML(value="<b>ready</b>: press Start")
        self.counter = widgets.HTML(value="step 0")
        self.status.add_class("lipschitz-status")
        self.counter.add_class("lipschitz-counter")

        self.figures = RunFigures()
        load_bokehjs()
        self.plot = OneWayBokeh(self.figures.layout)

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
        self._tally = Tally()                # the run's verdict so far (runs/verdict.py)
        self._said: tuple[str, str] | None = None   # the verdict kind and the edge line the status shows
        self._running = False

        grid = widgets.GridBox(list(self.controls.values()),
                               layout=widgets.Layout(grid_template_columns="repeat(3, 270px)"))
        bar = widgets.HBox([self.start_button, self.stop_button, self.paper_button, self.counter],
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

    def use(self, **values: Any) -> None:
        """Set widgets by config field (the paper's rule button: bound and recompute)."""
        for name, value in values.items():
            self.controls[name].value = widget_value(name, value)

    def _fit_loss(self) -> None:
        """A data set of another task gets a loss that suits it (MNIST after breast_cancer: not bce)."""
        from lipschitz_lab.losses import task_of
        task, loss = dataset_task(self.data.dataset.value), self.controls["loss"]
        if task is None or task_of(loss.value) == task:
            return
        fits = [name for name in loss.options if task_of(name) == task]
        if fits:
            loss.value = fits[0]

    def config(self) -> dict[str, Any]:
        """The config a Start would train: the defaults, overridden by the widgets (a ConfigError
        names a field typed wrong)."""
        cfg = dict(self.defaults)
        cfg.update({name: read_int(w, optional=False) if name in INTEGERS else
                    read_every(w) if name in OPTIONAL_INTEGERS else w.value for name, w in self.controls.items()})
        data = self.data.config()
        same_set = data["dataset"] == self.defaults.get("dataset", TrainConfig.dataset)
        options = dict(self.defaults.get("dataset_options") or {}) if same_set else {}
        cfg.update(data, dataset_options={**options, **data["dataset_options"]})
        cfg.setdefault("name", None)
        cfg["name"] = cfg["name"] or run_name(cfg)
        return cfg

    # -- buttons --------------------------------------------------------------------
    def start(self, _button: widgets.Button | None = None) -> None:
        """Start a run in a background thread (a second Start while one runs does nothing)."""
        if self._active:
            return
        self.refresh_choices()
        self.run_id = self.run = self.error = None
        try:
            cfg = self._cfg = self.config()
        except ValueError as exc:            # a field typed wrong: one line naming it
            self._refuse(str(exc))
            return
        missing = self.data.check(cfg)
        if missing:                          # nothing is created: say which files go where
            self._refuse(missing)
            return
        self._active = True
        self._per_epoch = None
        self._tally = Tally(max_lr=cfg.get("max_lr"))
        self._said = None                    # the verdict kind and edge line the status line shows
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

    def _refuse(self, message: str) -> None:
        """Nothing starts: the message, and no step line of an earlier run under it."""
        self.error = message
        self.counter.value = ""
        self._set_status("error", html.escape(message))

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
        for r in batch:      # first: the running status says the steps per epoch, so the first rows thin
            if r.get("kind") == "status":
                self._on_status(r)
        steps = [r for r in batch if r.get("kind") == "step"]
        epochs = [r for r in batch if r.get("kind") == "epoch"]
        self.figures.add_steps(steps)
        self.figures.add_epochs(epochs)
        if epochs and self._per_epoch is None:
            # the first epoch tells the steps per epoch, hence the run's length: thin to fit
            last = epochs[-1]
            self._per_epoch = max(1, round(int(last["step"]) / (int(last["epoch"]) + 1)))
            self.figures.plan(self.total_steps())
        self._tally.add(r for r in batch if r.get("kind") in ("step", "epoch"))
        if steps:
            self._show_progress(steps[-1])
            self._show_verdict()
        for r in batch:
            if r.get("kind") == "panel":
                self._on_panel(r)

    def total_steps(self) -> int | None:
        """The run's length in steps, once known (max_steps caps it)."""
        cap = self._cfg.get("max_steps")
        full = self._per_epoch * int(self._cfg.get("epochs", 1)) if self._per_epoch else None
        return min(x for x in (cap, full) if x) if (cap or full) else None

    def _show_progress(self, r: Record) -> None:
        self.counter.value = progress_text(r, self.total_steps(), self._cfg.get("epochs"))

    def _show_verdict(self) -> None:
        """While running, the status line says a run gone wrong as soon as its records show it, and how
        often the rate crossed the edge of stability (a run with sharpness_every: runs/edge.py)."""
        said, edge = self._tally.verdict(config=self._cfg), self._tally.edge.text()
        if self._active and self._running and (said.kind, edge) != self._said:
            self._said = (said.kind, edge)
            text = running_text(self.run_id, self._cfg)
            more = "" if said.kind == "healthy" else f" · {html.escape(said.text)}"
            self._set_status("running", text + more + (f" · {html.escape(edge)}" if edge else ""))

    def _on_status(self, r: Record) -> None:
        self.run_id = r.get("run_id") or self.run_id
        if r.get("steps_per_epoch") and self._per_epoch is None:
            self._per_epoch = int(r["steps_per_epoch"])
            self.figures.plan(self.total_steps())
        self._running = r["status"] == "running"
        if self._running:
            self._said = None
            self._show_verdict()
        else:
            reason = f" · {html.escape(r['reason'])}" if r.get("reason") else ""
            self._set_status(r["status"], f"run <code>{self.run_id}</code> at step {r.get('step')}{reason}")

    def _on_panel(self, r: Record) -> None:
        event = r["event"]
        if event == "done":
            final = self.figures.epochs.data.get("val_acc") or []
            acc = f" · val_acc {final[-1]:.4f}" if len(final) and not math.isnan(final[-1]) else ""
            said = self._tally.verdict(r["status"], r.get("reason"), config=self._cfg)
            reason = f" · {html.escape(r['reason'])}" if r.get("reason") and said.kind != "diverged" else ""
            edge = self._tally.edge.text()
            self._set_status(r["status"], f"run <code>{r['run_id']}</code> · {r['steps']} steps in "
                                          f"{r['wall_time']:.1f} s{acc}{reason} · {html.escape(said.text)}"
                                          + (f" · {html.escape(edge)}" if edge else ""), said.kind)
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
