"""The study panel: pick lr policies, Launch, watch the comparison curves fill in.

>>> from lipschitz_lab.ui.panel_study import study_panel
>>> study_panel(dataset="digits", epochs=3)            # the last line of a cell  # doctest: +SKIP

Threads (docs/architecture.md, "Threads in the notebook"):

1. Launch builds a :class:`~lipschitz_lab.studies.spec.StudySpec` from the widgets and runs
   :func:`~lipschitz_lab.studies.runner.run_study` in a background thread (on the chosen
   backend: this process, ``workers`` spawned processes, or a Ray cluster).
2. A second background thread polls the run store (:func:`~lipschitz_lab.ui._bridge.poll_study`)
   for the records and the progress of the study's runs and only queues them on a
   :class:`~lipschitz_lab.ui._bridge.Bridge`: it sees runs in other processes, or machines, alike.
3. One function, :meth:`StudyPanel._apply`, updates the Bokeh sources and the
   widgets on the kernel's event loop, in batches of about 0.5 s.
4. Stop sets the study's stop event: runs in flight stop after their batch
   (status "stopped", resumable by launching again) and no new run starts.

No cell ever joins a thread.  Tests and scripts without a running loop call
:meth:`StudyPanel.wait` and then :meth:`StudyPanel.flush`.
"""
from __future__ import annotations

import html
import threading
import time
import traceback
from typing import Any, Callable

import ipywidgets as widgets
import pandas as pd

from lipschitz_lab.choices import choices
from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.runs import RunStore
from lipschitz_lab.studies.spec import StudySpec, catalogue, select, validate_study
from lipschitz_lab.ui._bridge import Bridge, BridgedPanel, load_bokehjs, poll_study, running_loop
from lipschitz_lab.ui._fields import (LABEL_WIDTH, DataFields, duration, every_field, inline_markdown, int_field,
                                     read_every, read_int)
from lipschitz_lab.ui._study_parts import (DEFAULT_SELECTION, backends, hint, lines, policy_selector,
                                           results_html)
from lipschitz_lab.ui.bokeh_widget import OneWayBokeh
from lipschitz_lab.ui.report import as_store
from lipschitz_lab.ui.study_plots import StudyFigures

Record = dict[str, Any]

class StudyPanel(BridgedPanel, widgets.VBox):
    """A policy multi-select, the data and run length, seeds, the backend, Launch/Stop, a status
    line, the progress, and the live comparison figures.

    ``base`` are :class:`~lipschitz_lab.config.TrainConfig` fields shared by every run (the
    widgets' values override theirs).  ``on_done`` callables get the study's name when it ends.
    """

    def __init__(self, store: RunStore | str | None = None, *, name: str = "panel-study",
                 policies: list[str] | tuple[str, ...] = DEFAULT_SELECTION, seeds: tuple[int, ...] = (0,),
                 workers: int = 1, target_acc: float | None = None, poll: float = 0.5, **base: Any):
        cfg = TrainConfig.from_dict(base)                # unknown fields fail here, naming the field
        self.store = as_store(store)
        self.base, self.name, self.target_acc, self.poll = dict(base), name, target_acc, poll
        self.catalogue = catalogue()
        self.selector = policy_selector(self.catalogue, policies)
        self.data = DataFields(cfg, choices())
        models = list(choices()["model"])
        self.model = widgets.Dropdown(options=models + ([cfg.model] if cfg.model not in models else []),
                                      value=cfg.model, description="model")
        self.epochs = int_field("epochs", cfg.epochs, "epochs")
        self.max_steps = int_field("max steps", cfg.max_steps, "max_steps")
        self.batch_size = int_field("batch size m", cfg.batch_size, "batch_size")
        self.sharpness = every_field("sharpness every", cfg.sharpness_every)   # the instruments' columns
        self.seeds = widgets.Text(value=", ".join(str(s) for s in seeds), description="seeds")
        self.backend = widgets.Dropdown(options=list(backends()), value="local", description="backend")
        self.address = widgets.Text(value="", description="Ray address", placeholder="auto, ray://host:10001")
        self.workers = widgets.BoundedIntText(value=workers, min=1, max=256, description="workers")
        self.backend.observe(lambda _c: self._show_address(), names="value")
        self._show_address()
        fields = [self.data.dataset, self.model, self.data.device, self.epochs, self.max_steps, self.batch_size,
                  self.sharpness, self.seeds, self.backend, self.address, self.workers]
        for w in fields + [self.data.data_root, self.data.path]:
            w.style.description_width = LABEL_WIDTH
            w.layout.width = "300px"
        self.launch_button = widgets.Button(description="Launch", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.launch_button.on_click(self.launch)
        self.stop_button.on_click(self.stop)
        # the status line, the progress line, and at the end each policy's accuracy and verdict
        self.status, self.progress, self.outcomes = lines("<b>ready</b>: pick policies, press Launch")
        self.plot_box = widgets.Box()

        self.spec: StudySpec | None = None
        self.figures: StudyFigures | None = None
        self.result = None                    # the runner's StudyResult once the study ends
        self.table: pd.DataFrame | None = None  # the results table, read from the store at the end
        self.error: str | None = None
        self.on_done: list[Callable[[str], None]] = []
        self._threads: list[threading.Thread] = []
        self._stop_event: threading.Event | None = None
        self._bridge: Bridge | None = None
        self._active = False
        self._t0 = 0.0
        self._epochs: dict[str, list[dict]] = {}     # run_id -> epoch rows seen so far
        self._steps: dict[str, list[dict]] = {}      # run_id -> step rows seen so far
        self._runs: dict[str, dict] = {}             # run_id -> {policy, seed, status}
        load_bokehjs()

        grid = widgets.GridBox(fields, layout=widgets.Layout(grid_template_columns="repeat(2, 310px)"))
        controls = widgets.VBox([grid, self.data.data_root, self.data.path,
                                 widgets.HBox([self.launch_button, self.stop_button])])
        picker = widgets.VBox([self.selector, hint()])
        super().__init__(children=[widgets.HBox([picker, controls]), self.status, self.progress, self.outcomes,
                                   self.plot_box])
        self.add_class("lipschitz-study-panel")

    def _show_address(self) -> None:
        self.address.layout.display = None if self.backend.value == "ray" else "none"

    # -- the study ------------------------------------------------------------------
    def select(self, names: list[str]) -> None:
        """Select policies by name, group or glob (what a click in the multi-select does)."""
        self.selector.value = tuple(p.name for p in select(list(names)))

    def base_config(self) -> dict[str, Any]:
        """The config every run shares: ``base``, overridden by the widgets."""
        data = self.data.config()
        options = dict(self.base.get("dataset_options") or {}) if data["dataset"] == self.base.get(
            "dataset", TrainConfig.dataset) else {}
        return {**self.base, **data, "dataset_options": {**options, **data["dataset_options"]},
                "model": self.model.value, "epochs": read_int(self.epochs, optional=False),
                "max_steps": read_int(self.max_steps, optional=True),
                "batch_size": read_int(self.batch_size, optional=False),
                "sharpness_every": read_every(self.sharpness)}

    def build_spec(self) -> StudySpec:
        """The study a Launch would run (raises ConfigError naming a bad field)."""
        try:
            seeds = [int(s) for s in self.seeds.value.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"seeds={self.seeds.value!r}: need integers, e.g. '0, 1'") from None
        if not self.selector.value:
            raise ConfigError("policies=(): select at least one policy")
        if self.backend.value == "ray" and not self.address.value.strip():
            raise ConfigError("address='': give the Ray cluster's address ('auto', 'ray://host:10001')")
        base = self.base_config()
        missing = self.data.check(base)
        if missing:
            raise ConfigError(missing)
        spec = StudySpec(self.name, base, [self.catalogue[n] for n in self.selector.value], seeds, self.target_acc)
        validate_study(spec)              # every policy's config built and checked now: one line if bad
        return spec

    # -- buttons --------------------------------------------------------------------
    def launch(self, _button: widgets.Button | None = None) -> None:
        """Start the study in a background thread (a second Launch while one runs does nothing)."""
        if self._active:
            return
        self.progress.value = self.outcomes.value = ""   # nothing of an earlier study stays
        try:
            self.spec = self.build_spec()
        except ConfigError as exc:
            self.error = str(exc)
            self._set_status("error", html.escape(str(exc)))
            return
        self.error, self.result = None, None
        self._epochs, self._steps, self._runs = {}, {}, {}
        self.figures = StudyFigures([p.name for p in self.spec.policies],
                                    {p.name: p.family for p in self.spec.policies}, width=820, height=300)
        self.plot_box.children = (OneWayBokeh(self.figures.layout),)
        self._active, self._t0 = True, time.monotonic()
        self.launch_button.disabled, self.stop_button.disabled = True, False
        n = len(self.spec.policies) * len(self.spec.seeds)
        self._set_status("running", f"study <code>{html.escape(self.spec.name)}</code>: {n} runs on "
                                    f"{html.escape(self.backend.value)}…")
        self._stop_event = threading.Event()
        self._bridge = Bridge(self._apply, running_loop())
        done = threading.Event()
        where = {"workers": self.workers.value, "backend": self.backend.value,
                 "address": self.address.value.strip() or None}
        self._threads = [threading.Thread(target=self._work, args=(self.spec, where, done),
                                          name="lipschitz-lab-study", daemon=True),
                         threading.Thread(target=poll_study, args=(self.store.path, self.spec, self._bridge.put,
                                                                   done, self.poll),
                                          name="lipschitz-lab-study-poll", daemon=True)]
        for t in self._threads:
            t.start()
        self._in_flight()

    def stop(self, _button: widgets.Button | None = None) -> None:
        """Stop the runs in flight after their batch; start no more."""
        if self._stop_event is not None and self._active:
            self._stop_event.set()
            self.stop_button.disabled = True
            self._set_status("running", "stopping…")

    # -- background threads: they only queue ---------------------------------------------
    def _work(self, spec: StudySpec, where: dict, done: threading.Event) -> None:
        from lipschitz_lab.studies.runner import run_study
        bridge = self._bridge
        try:
            self.result = run_study(spec, self.store.path, stop_event=self._stop_event, **where)
        except Exception as exc:  # the thread must report, not die silently
            bridge.put({"kind": "panel", "event": "failed", "message": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()})
        finally:
            done.set()                      # the poller makes its last sweep, then reports "done"

    # -- the loop side: the one function that touches Bokeh and the widgets ----------------
    def _apply(self, batch: list[Record]) -> None:
        changed = False
        for r in batch:
            kind = r.get("kind")
            if kind == "run":
                rid = r["run_id"]
                self._runs[rid] = {"policy": r["policy"], "seed": r["seed"], "status": r["status"]}
                self._steps.setdefault(rid, []).extend(x for x in r["rows"] if x["kind"] == "step")
                self._epochs.setdefault(rid, []).extend(x for x in r["rows"] if x["kind"] == "epoch")
                changed = True
            elif kind == "reset":
                self._steps[r["run_id"]], self._epochs[r["run_id"]] = [], []
            elif kind == "progress" and self._active:
                self.progress.value = (f"{html.escape(r['line'])} · {duration(time.monotonic() - self._t0)} "
                                       "elapsed")
            elif kind == "panel":
                self._on_panel(r)
        if changed:
            self._redraw()

    def _frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        cols = {"epoch": ["epoch", "val_acc", "test_acc"], "step": ["step", "lr"]}
        frames = []
        for kind, rows in (("epoch", self._epochs), ("step", self._steps)):
            data = [{"policy": meta["policy"], "seed": meta["seed"], "run_id": rid, **row}
                    for rid, meta in self._runs.items() for row in rows.get(rid, [])]
            f = pd.DataFrame(data, columns=["policy", "seed", "run_id", *cols[kind], "kind"]).drop(columns="kind")
            for col in cols[kind][1:]:
                f[col] = pd.to_numeric(f[col], errors="coerce")
            frames.append(f)
        return frames[0], frames[1]

    def _redraw(self) -> None:
        epochs, steps = self._frames()
        self.figures.set_epochs(epochs)
        self.figures.set_steps(steps)

    def _on_panel(self, r: Record) -> None:
        result = self.result
        if r["event"] == "done" and self.error is None:
            from lipschitz_lab.studies.results import study_table, verdict
            self.table = table = study_table(self.store, self.spec)
            self.figures.set_table(table)
            trained = len(result.trained) if result else 0
            wall = f"{result.wall_time:.1f} s" if result else "?"
            if self._stop_event is not None and self._stop_event.is_set():
                self._set_status("stopped", f"{result.count(status='stopped') if result else 0} runs stopped, "
                                            f"{result.count(action='not started') if result else 0} not started, "
                                            f"{trained} trained, {wall} · Launch again to resume (finished "
                                            "runs are skipped)")
            else:
                text = inline_markdown(verdict(table)) if len(table) else "no runs"
                self.outcomes.value = results_html(table)
                skipped = result.count(action="skipped") if result else 0
                self._set_status("finished", f"{trained} trained, {skipped} already in the store, {wall} · {text}")
        elif r["event"] == "failed":
            self.error = r["message"]
            self._set_status("failed", html.escape(r["message"]))
            return                              # the poller's "done" follows and ends the study
        self._active = False
        self.launch_button.disabled, self.stop_button.disabled = False, True
        for fn in self.on_done:
            fn(self.spec.name)

    # -- for tests and scripts (never inside a notebook cell) ------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Join the study's threads (True when both have ended).  Not in a notebook cell:
        the kernel's loop would stall, and with it the live figures."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


def study_panel(store: RunStore | str | None = None, **kwargs: Any) -> StudyPanel:
    """The study panel; show it as the last expression of a cell."""
    return StudyPanel(store, **kwargs)
