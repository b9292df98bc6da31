"""What-if studies: one base config under many lr policies and seeds, compared side by side.

- :mod:`~lipschitz_lab.studies.spec` -- StudySpec, the policy catalogue, presets;
- :mod:`~lipschitz_lab.studies.runner` -- run_study: skip/resume, leases, the backends;
- :mod:`~lipschitz_lab.studies.backend` -- the interface of where runs train; its two kinds:
  :mod:`~lipschitz_lab.studies.local` (this process, a process pool) and
  :mod:`~lipschitz_lab.studies.ray_backend` (imported only for ``backend="ray"``);
- :mod:`~lipschitz_lab.studies.launch` -- one launcher's loop: leases, dispatch, outcomes;
- :mod:`~lipschitz_lab.studies.progress` -- progress(store, spec): a study's state, for a poll;
- :mod:`~lipschitz_lab.studies.results` -- the table, from the store; :mod:`~lipschitz_lab.studies.summary`
  -- its Markdown and the summary; :mod:`~lipschitz_lab.studies.instruments` -- the curvature columns.

The policies themselves (LipschitzLR and every baseline) live in :mod:`lipschitz_lab.policies`.
Names load on first use.
"""
from __future__ import annotations

from lipschitz_lab._lazy import lazy_exports

_LAZY = {
    **{n: "lipschitz_lab.studies.spec" for n in ("StudySpec", "PolicyEntry", "RunPlan", "catalogue", "select",
                                                  "GROUPS", "STUDY_PRESETS", "study_preset", "load_study")},
    **{n: "lipschitz_lab.studies.runner" for n in ("run_study", "StudyResult", "RunOutcome", "plan_study", "BACKENDS")},
    **{n: "lipschitz_lab.studies.progress" for n in ("progress", "StudyProgress")},
    **{n: "lipschitz_lab.studies.results" for n in ("study_table", "epoch_frame", "step_frame")},
    **{n: "lipschitz_lab.studies.summary" for n in ("summary_markdown", "ranking", "verdict", "table_text")},
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
