"""The lab as one page: the four panels as tabs.  ``lipschitz-lab app`` serves it with Voilà.

>>> from lipschitz_lab.ui.app import app
>>> app()                       # the last line of a cell (the app's one cell)  # doctest: +SKIP

This module only lays the panels out; each panel is the one the notebooks show
(:mod:`~lipschitz_lab.ui.panel_derivation`, :mod:`~lipschitz_lab.ui.panel_training`,
:mod:`~lipschitz_lab.ui.panel_study`, :mod:`~lipschitz_lab.ui.panel_runs`), and the
tabs wire them together: a run or a study that ends in the app refreshes the Runs tab.

Why the panels arrive one by one: SymPy, torch and Bokeh take seconds to import, and
the derivations seconds to compute.  In a kernel, :func:`app` returns the tabs at
once, each with a "loading" line.  Once the page shows them, a background thread
imports and computes what each panel needs (the selected tab first), and the panel
itself is built on the kernel's event loop, where widgets belong.  The page is live
meanwhile.  Outside a kernel (tests, scripts) everything is built before :func:`app` returns.
"""
from __future__ import annotations

import html
import os
import threading
import traceback
from typing import Any

import ipywidgets as widgets

from lipschitz_lab.runs import open_store
from lipschitz_lab.ui._bridge import BOKEHJS_IN_PAGE, in_kernel, load_bokehjs, running_loop, status_html

#: the tabs, in order
TABS = ("Derivations", "Live training", "What-if study", "Runs")

#: what a tab says while its panel loads
LOADING = {"Derivations": "deriving the bounds (SymPy)…", "Live training": "loading torch and the figures…",
           "What-if study": "loading the policies…", "Runs": "reading the run store…"}

#: seconds the panels wait for the page to show the tabs before they load anyway (no page: a script)
SHOWN_WAIT_S = 5.0

#: the training panel's settings in the app: none of its own, TrainConfig's defaults (the CLI's),
#: which learn on digits in seconds; "the paper's rule" is one click away
TRAINING: dict[str, Any] = {}
#: the study panel's: a few CPU-seconds per run on digits
STUDY = dict(name="app-study", dataset="digits", model="mlp", batch_size=64, epochs=4)


def _warm(title: str) -> None:
    """Import and compute what ``title``'s panel needs (any thread: no widget is made here)."""
    if title == "Derivations":
        from lipschitz_lab.symbolic import derive
        from lipschitz_lab.ui import derivation_panel  # noqa: F401
        derive("softmax_ce")
    elif title == "Live training":
        from lipschitz_lab.choices import choices
        from lipschitz_lab.ui import training_panel  # noqa: F401
        from lipschitz_lab.ui._fields import available_devices
        choices(), available_devices()
    elif title == "What-if study":
        from lipschitz_lab.studies.spec import catalogue
        from lipschitz_lab.ui import study_panel  # noqa: F401
        catalogue()
    else:
        from lipschitz_lab.ui import runs_panel  # noqa: F401


class LabApp(widgets.VBox):
    """A title line and the four tabs.

    Args:
        store: the run store (a path or a RunStore); None: :func:`lipschitz_lab.runs.store_path`.
        selected: the tab shown first (a title or an index).
        lazy: build the panels in the background (default: inside a kernel with a running loop).
        training, study: settings for the training and the study panel (TrainConfig fields,
            and the study panel's own keywords), over :data:`TRAINING` and :data:`STUDY`.
    """

    def __init__(self, store=None, *, selected: str | int = 0, lazy: bool | None = None,
                 training: dict[str, Any] | None = None, study: dict[str, Any] | None = None):
        self.store = open_store(store)
        self.settings = {"Live training": {**TRAINING, **(training or {})}, "What-if study": {**STUDY, **(study or {})}}
        self.panels: dict[str, widgets.Widget] = {}
        self.errors: dict[str, str] = {}
        if selected not in TABS and selected not in range(len(TABS)):
            raise ValueError(f"selected={selected!r}: choose one of {', '.join(TABS)} (or 0..{len(TABS) - 1})")
        index = TABS.index(selected) if isinstance(selected, str) else int(selected)
        # one box per tab, its children replaced when the panel arrives: the tabs themselves never
        # change, so a tab clicked while the others load stays selected
        self.boxes = [widgets.VBox([widgets.HTML(f"<p class='lipschitz-loading'><i>{LOADING[t]}</i></p>")])
                      for t in TABS]
        self.tabs = widgets.Tab(children=self.boxes)
        self.tabs.titles = TABS
        self.tabs.selected_index = index
        self.tabs.observe(self._on_select, names="selected_index")
        self.header = widgets.HTML(
            "<div class='lipschitz-header'><b style='font-size:120%'>lipschitz-lab</b> · lr = 1/L from the last "
            "layer's activations (Yedida &amp; Saha, 2019) · runs go to "
            f"<code>{html.escape(str(self.store.path.resolve()))}</code></div>")
        super().__init__(children=[self.header, self.tabs])
        self.add_class("lipschitz-app")
        # BokehJS: the app's page brings it (lipschitz-lab app); in a notebook this cell loads it,
        # since the panels may be built after the cell has ended
        load_bokehjs(in_page=os.environ.get(BOKEHJS_IN_PAGE) == "1")
        self._order = [TABS[index]] + [t for t in TABS if t != TABS[index]]
        self._loop, self._thread = running_loop(), None
        if lazy is None:
            lazy = in_kernel() and self._loop is not None
        if lazy and self._loop is not None:
            # the loading starts once the page shows the tabs (the frontend counts its views),
            # so that it does not compete with drawing them
            self.tabs._view_count = 0
            self.tabs.observe(lambda change: change["new"] and self._start_loading(), names="_view_count")
            self._loop.call_later(SHOWN_WAIT_S, self._start_loading)
        else:
            for title in self._order:
                self._build(title)
        # in `lipschitz-lab app`: a page gone (closed, crashed) stops its runs and ends this kernel
        from lipschitz_lab.ui.watchdog import watch_page
        self.watch = watch_page(self.stop_runs) if in_kernel() else None

    # -- building the panels ----------------------------------------------------------
    def _start_loading(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._warm_all, args=(self._order, self._loop), daemon=True,
                                            name="lipschitz-lab-app-warm")
            self._thread.start()

    def _warm_all(self, order: list[str], loop) -> None:
        for title in order:
            try:
                _warm(title)
            except Exception:   # the build repeats the work in the loop and shows the error there
                pass
            loop.call_soon_threadsafe(self._build, title)

    def _make(self, title: str) -> widgets.Widget:
        if title == "Derivations":
            from lipschitz_lab.ui.panel_derivation import DerivationPanel
            return DerivationPanel()
        if title == "Live training":
            from lipschitz_lab.ui.panel_training import TrainingPanel
            return TrainingPanel(self.store, **self.settings[title])
        if title == "What-if study":
            from lipschitz_lab.ui.panel_study import StudyPanel
            return StudyPanel(self.store, **self.settings[title])
        from lipschitz_lab.ui.panel_runs import RunsPanel
        return RunsPanel(self.store)

    def _build(self, title: str) -> None:
        """Make ``title``'s panel and put it in its tab (on the loop: widgets are made here)."""
        try:
            panel = self._make(title)
        except Exception as exc:  # one tab failing leaves the others working
            self.errors[title] = traceback.format_exc()
            panel = widgets.HTML(status_html("failed", html.escape(f"{title}: {type(exc).__name__}: {exc}")))
        self.panels[title] = panel
        self.boxes[TABS.index(title)].children = (panel,)
        self._wire(title, panel)

    def _wire(self, title: str, panel: widgets.Widget) -> None:
        """A run or study that ends refreshes the Runs tab (once it exists)."""
        if title in ("Live training", "What-if study") and hasattr(panel, "on_done"):
            panel.on_done.append(lambda _name: self.refresh_runs())

    def refresh_runs(self) -> None:
        runs = self.panels.get("Runs")
        if runs is not None and hasattr(runs, "refresh"):
            runs.refresh()

    def _on_select(self, change: dict) -> None:
        title = TABS[change["new"]] if change["new"] is not None else None
        if title == "Runs":
            self.refresh_runs()
        elif title == "Live training" and hasattr(self.panels.get(title), "refresh_choices"):
            self.panels[title].refresh_choices()       # a loss registered since shows up

    def stop_runs(self) -> None:
        """Stop the training run and the study in flight, if any (each keeps its records)."""
        for title in ("Live training", "What-if study"):
            panel = self.panels.get(title)
            if hasattr(panel, "stop"):
                panel.stop()

    # -- for tests and scripts -------------------------------------------------------
    def ready(self) -> bool:
        """True once every tab holds its panel."""
        return len(self.panels) == len(TABS)

    def shown(self) -> list[widgets.Widget]:
        """What each tab shows now: its panel, or its loading line."""
        return [box.children[0] for box in self.boxes]



def app(store=None, **kwargs: Any) -> LabApp:
    """The whole lab as one widget; show it as the last expression of a cell."""
    return LabApp(store, **kwargs)

