"""A Bokeh layout as an ipywidget that only the kernel writes to.

jupyter_bokeh's ``BokehModel`` syncs both ways.  Every change BokehJS makes to its own
copy of the document comes back to the kernel as a message: each DataRange1d it fits
after a stream (two per figure, twice a second in the live panel), each zoom, each
legend click.  The kernel handles each one on its main thread, the thread the training
thread shares the GIL with, and builds a deserializer over every model in the document
to do so (``list(document.models)``, ~1,000 models for the training panel): the app's
run spent more time there than training.  A browser-side range of a model the kernel has
replaced since cannot even be resolved: ``UnknownReferenceError: can't resolve reference``
in JupyterLab's Log Console, and ``failed to validate Line.line_color ... Value(...)`` for
a glyph the browser re-styled.

No panel reads anything back from the browser (no Python callback on a Bokeh model), so
:class:`OneWayBokeh` drops those messages on arrival: the kernel draws, the browser shows,
and what a person does to a plot (zoom, pan, hide a line) stays in the page.

jupyter_bokeh's ``combine_events`` (queue the browser's events while the kernel is busy) is
left off: it needs the kernel's idle status, which Voilà's widget manager does not give a view
(BokehJS then warns "BokehView cannot combine events because Kernel idle status cannot be
determined" and sends each event anyway), and in JupyterLab a notebook closed while its kernel
lives on leaves its idle handler sending on the closed widget ("Cannot send" in the console).
"""
from __future__ import annotations

from typing import Any

from jupyter_bokeh import BokehModel

__all__ = ["OneWayBokeh"]


class OneWayBokeh(BokehModel):
    """``jupyter_bokeh.BokehModel`` without the browser-to-kernel direction."""

    #: browser events dropped since the widget was made (the tests read it)
    dropped = 0

    def _sync_model(self, _model: BokehModel, content: dict[str, Any], _buffers: list[Any]) -> None:
        if content.get("event") == "jsevent":
            self.dropped += 1
