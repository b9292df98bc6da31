"""The study panel: pick lr policies, Launch, watch the comparison curves fill in.

>>> from lipschitz_lab.ui.study_panel import study_panel
>>> study_panel(dataset="digits", epochs=3)            # the last line of a cell  # doctest: +SKIP

Threads (docs/architecture.md, "Threads in the notebook"):

1. Launch builds a :class:`~lipschitz_lab.studies.spec.StudySpec` from the widgets and runs
   :func:`~lipschitz_lab.studies.runner.run_study` in a background thread (its runs in
   this process, or in ``workers`` spawned processes).
2. A second background thread polls the run store (every ``poll`` seconds) for the
   records of the study's runs and only queues them, as plain dicts, on a
   :class:`~lipschitz_lab.ui._bridge.Bridge`.  Polling the store, rather than
   subscribing, sees runs in worker processes the same way as runs in this one.
3. One function, :meth:`StudyPanel._apply`, updates the Bokeh sources and the
   widgets on the kernel's event loop, in batches of about 0.2 s.
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
from typing import Any

import ipywidgets as widgets
import pandas as pd
from jupyter_bokeh import BokehModel

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.runs import RunStore
from lipschitz_lab.studies.spec import StudySpec, catalogue, select
from lipschitz_lab.ui._bridge import Bridge, BridgedPanel, load_bokehjs, running_loop
from lipschitz_lab.ui.report import as_store
from lipschitz_lab.ui.study_plots import StudyFigures

Record = dict[str, Any]

#: the policies selected when the panel opens: the paper's rate against a few baselines
DEFAULT_SELECTION = ("lipschitz-paper-epoch-sgd", "lipschitz-corrected-epoch-sgd", "constant-0.1",
                     "onecycle-0.1", "prodigy")


class StudyPanel(BridgedPanel, widgets.VBox):
    """A policy multi-select, seeds, Launch/Stop, a status line, and the live comparison figures.

    ``base`` are :class:`~lipschitz_lab.config.TrainConfig` fields shared by every run.
    """

    def __init__(self, store: RunStore | str | None = None, *, name: str = "panel-study",
                 policies: list[str] | tuple[str, ...] = DEFAULT_SELECTION, seeds: tuple[int, ...] = (0,),
                 workers: int = 1, target_acc: float | None = None, poll: float = 0.5, **base: Any):
        TrainConfig.from_dict(base)                      # unknown fields fail here, naming the field
        self.store = as_store(store)
        self.base, self.name, self.target_acc, self.poll = dict(base), name, target_acc, poll
        self.catalogue = catalogue()
        chosen = [p.name for p in select(list(policies))]
        self.selector = widgets.SelectMultiple(options=list(self.catalogue), value=tuple(chosen),
                                               rows=12, description="policies")
        self.seeds = widgets.Text(value=", ".join(str(s) for s in seeds), description="seeds")
        self.workers = widgets.BoundedIntText(value=workers, min=1, max=64, description="workers")
        for w in (self.selector, self.seeds, self.workers):
            w.style.description_width = "70px"
        self.selector.layout.width = "420px"
        self.launch_button = widgets.Button(description="Launch", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.launch_button.on_click(self.launch)
        self.stop_button.on_click(self.stop)
        self.status = widgets.HTML(value="<b>ready</b>: pick policies, press Launch")
        self.progress = widgets.HTML(value="")
        self.plot_box = widgets.Box()

        self.spec: StudySpec | None = None
        self.figures: StudyFigures | None = None
        self.result = None                    # the runner's StudyResult once the study ends
        self.table: pd.DataFrame | None = None  # the results table, read from the store at the end
        self.error: str | None = None
        self._threads: list[threading.Thread] = []
        self._stop_event: threading.Event | None = None
        self._bridge: Bridge | None = None
        self._active = False
        self._epochs: dict[str, list[dict]] = {}     # run_id -> epoch rows seen so far
        self._steps: dict[str, list[dict]] = {}      # run_id -> step rows seen so far
        self._runs: dict[str, dict] = {}             # run_id -> {policy, seed, status}
        load_bokehjs()

        controls = widgets.VBox([self.seeds, self.workers,
                                 widgets.HBox([self.launch_button, self.stop_button])])
        super().__init__(children=[widgets.HBox([self.selector, controls]), self.status, self.progress,
                                   self.plot_box])
        self.add_class("lipschitz-study-panel")

    # -- the study ------------------------------------------------------------------
    def select(self, names: list[str]) -> None:
        """Select policies by name, group or glob (what a click in the multi-select does)."""
        self.selector.value = tuple(p.name for p in select(list(names)))

    def build_spec(self) -> StudySpec:
        """The study a Launch would run (raises ConfigError naming a bad field)."""
        try:
            seeds = [int(s) for s in self.seeds.value.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"seeds={self.seeds.value!r}: need integers, e.g. '0, 1'") from None
        if not self.selector.value:
            raise ConfigError("policies=(): select at least one policy")
        spec = StudySpec(self.name, dict(self.base), [self.catalogue[n] for n in self.selector.value],
                         seeds, self.target_acc)
        spec.runs()                                     # every config validated now, in the cell
        return spec

    @property
    def running(self) -> bool:
        return self._active

    # -- buttons --------------------------------------------------------------------
    def launch(self, _button: widgets.Button | None = None) -> None:
        """Start the study in a background thread (a second Launch while one runs does nothing)."""
        if self._active:
            return
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
        self.plot_box.children = (BokehModel(self.figures.layout),)
        self._active = True
        self.launch_button.disabled, self.stop_button.disabled = True, False
        n = len(self.spec.policies) * len(self.spec.seeds)
        self._set_status("running", f"study <code>{self.spec.name}</code>: {n} runs…")
        self._stop_event = threading.Event()
        self._bridge = Bridge(self._apply, running_loop())
        done = threading.Event()
        study = threading.Thread(target=self._work, args=(self.spec, self.workers.value, done),
                                 name="lipschitz-lab-study", daemon=True)
        poller = threading.Thread(target=self._poll, args=(self.spec, done),
                                  name="lipschitz-lab-study-poll", daemon=True)
        self._threads = [study, poller]
        study.start()
        poller.start()

    def stop(self, _button: widgets.Button | None = None) -> None:
        """Stop the runs in flight after their batch; start no more."""
        if self._stop_event is not None and self._active:
            self._stop_event.set()
            self.stop_button.disabled = True
            self._set_status("running", "stopping…")

    # -- background threads: they only queue ---------------------------------------------
    def _work(self, spec: StudySpec, workers: int, done: threading.Event) -> None:
        from lipschitz_lab.studies.runner import run_study
        bridge = self._bridge
        try:
            result = run_study(spec, self.store.path, workers=workers, stop_event=self._stop_event,
                               on_outcome=lambda o: bridge.put({"kind": "outcome", "policy": o.policy,
                                                                "seed": o.seed, "action": o.action,
                                                                "status": o.status, "run_id": o.run_id}))
        except Exception as exc:  # the thread must report, not die silently
            done.set()
            bridge.put({"kind": "panel", "event": "failed", "message": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()})
            return
        self.result = result
        done.set()                          # the poller makes its last sweep, then reports "done"

    def _poll(self, spec: StudySpec, done: threading.Event) -> None:
        store = RunStore(self.store.path)   # this thread's own connection
        plans = spec.runs()
        seen: dict[str, tuple[int, int, str]] = {}      # run_id -> (steps, epochs, status) already queued
        finished: set[str] = set()
        while True:
            last = done.is_set()
            for plan in plans:
                run = store.find_run(plan.key)
                if run is None or run["id"] in finished:
                    continue
                rid = run["id"]
                n_steps, n_epochs, status = seen.get(rid, (0, 0, None))
                steps = store.records(rid, "step")
                epochs = store.records(rid, "epoch")
                if len(steps) < n_steps or len(epochs) < n_epochs:   # a resume truncated: start over
                    self._bridge.put({"kind": "reset", "run_id": rid})
                    n_steps = n_epochs = 0
                rows = [{"kind": "step", "run_id": rid, "step": r.get("step"), "lr": r.get("lr")}
                        for r in steps[n_steps:]]
                rows += [{"kind": "epoch", "run_id": rid, "epoch": r.get("epoch"), "val_acc": r.get("val_acc"),
                          "test_acc": r.get("test_acc")} for r in epochs[n_epochs:]]
                if rows or run["status"] != status:
                    self._bridge.put({"kind": "run", "run_id": rid, "policy": plan.policy, "seed": plan.seed,
                                      "status": run["status"], "rows": rows})
                seen[rid] = (len(steps), len(epochs), run["status"])
                if run["status"] != "running":
                    finished.add(rid)
            if last:
                break
            done.wait(self.poll)
        store.close()
        result = self.result
        self._bridge.put({"kind": "panel", "event": "done",
                          "trained": len(result.trained) if result else 0,
                          "skipped": result.count(action="skipped") if result else 0,
                          "stopped": result.count(status="stopped") if result else 0,
                          "not_started": result.count(action="not started") if result else 0,
                          "stop_requested": self._stop_event is not None and self._stop_event.is_set(),
                          "wall_time": result.wall_time if result else 0.0})

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
            elif kind == "outcome" and r.get("run_id") in self._runs:
                self._runs[r["run_id"]]["status"] = r["status"]
            elif kind == "panel":
                self._on_panel(r)
        if changed:
            self._redraw()

    def _frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        epochs = [{"policy": meta["policy"], "seed": meta["seed"], "run_id": rid, **row}
                  for rid, meta in self._runs.items() for row in self._epochs.get(rid, [])]
        steps = [{"policy": meta["policy"], "seed": meta["seed"], "run_id": rid, **row}
                 for rid, meta in self._runs.items() for row in self._steps.get(rid, [])]
        ecols = ["policy", "seed", "run_id", "epoch", "val_acc", "test_acc"]
        scols = ["policy", "seed", "run_id", "step", "lr"]
        e = pd.DataFrame(epochs, columns=ecols + ["kind"]).drop(columns="kind")
        s = pd.DataFrame(steps, columns=scols + ["kind"]).drop(columns="kind")
        for col in ("val_acc", "test_acc"):
            e[col] = pd.to_numeric(e[col], errors="coerce")
        s["lr"] = pd.to_numeric(s["lr"], errors="coerce")
        return e, s

    def _redraw(self) -> None:
        epochs, steps = self._frames()
        self.figures.set_epochs(epochs)
        self.figures.set_steps(steps)
        counts: dict[str, int] = {}
        for meta in self._runs.values():
            counts[meta["status"]] = counts.get(meta["status"], 0) + 1
        total = len(self.spec.policies) * len(self.spec.seeds)
        self.progress.value = f"{len(self._runs)}/{total} runs started · " + " · ".join(
            f"{k} {v}" for k, v in sorted(counts.items()))

    def _on_panel(self, r: Record) -> None:
        if r["event"] == "done":
            from lipschitz_lab.studies.results import study_table, verdict
            table = study_table(self.store, self.spec)
            self.table = table
            self.figures.set_table(table)
            text = html.escape(verdict(table)) if len(table) else "no runs"
            if r.get("stop_requested"):
                self._set_status("stopped", f"{r.get('stopped', 0)} runs stopped, {r.get('not_started', 0)} not "
                                            f"started, {r['trained']} trained, {r['wall_time']:.1f} s · Launch "
                                            f"again to resume (finished runs are skipped)")
            else:
                self._set_status("finished", f"{r['trained']} trained, {r['skipped']} already in the store, "
                                             f"{r['wall_time']:.1f} s · {text}")
        else:
            self.error = r["message"]
            self._set_status("failed", html.escape(r["message"]))
        self._active = False
        self.launch_button.disabled, self.stop_button.disabled = False, True

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
