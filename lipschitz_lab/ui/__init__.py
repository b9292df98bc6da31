"""ipywidgets + Bokeh panels and HTML reports: the only layer that imports either.

Exports load on first use, so ``import lipschitz_lab.ui`` stays cheap:

- :func:`training_panel` -- Start/Stop a run and watch K_z, lr and the bound live
- :func:`derivation_panel` -- each loss's derivation, the paper's claim and |dE/dz| over z
- :func:`runs_panel` -- browse the run store and overlay runs
- :func:`write_report` -- one self-contained HTML file per run
- :func:`study_panel` -- what-if studies: policies compared side by side
- :class:`OneWayBokeh` -- a Bokeh layout in a notebook, drawn by the kernel (no messages back)
- :class:`LabApp` -- all four panels as tabs: the page ``lipschitz-lab app`` serves
  (``lipschitz_lab.ui.app.app()``; the module ``ui.app`` keeps that name)
"""
from __future__ import annotations

from lipschitz_lab._lazy import lazy_exports

_LAZY = {
    "training_panel": "lipschitz_lab.ui.panel_training",
    "TrainingPanel": "lipschitz_lab.ui.panel_training",
    "derivation_panel": "lipschitz_lab.ui.panel_derivation",
    "DerivationPanel": "lipschitz_lab.ui.panel_derivation",
    "runs_panel": "lipschitz_lab.ui.panel_runs",
    "RunsPanel": "lipschitz_lab.ui.panel_runs",
    "write_report": "lipschitz_lab.ui.report",
    "study_panel": "lipschitz_lab.ui.panel_study",     # the what-if study panel
    "StudyPanel": "lipschitz_lab.ui.panel_study",
    "LabApp": "lipschitz_lab.ui.app",                   # the desktop app's page
    "OneWayBokeh": "lipschitz_lab.ui.bokeh_widget",     # a Bokeh layout as a widget the kernel writes
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
