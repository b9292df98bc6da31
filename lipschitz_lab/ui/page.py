"""The app's page, written for Voilà: a one-cell notebook, a kernelspec that is this Python,
and Voilà's ``lab`` template without its CDN links, with BokehJS served from its own folder
(ipywidgets' bundle already carries Font Awesome).  ``lipschitz-lab app`` serves it."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

__all__ = ["TEMPLATE", "write_page"]

#: the Voilà template written beside the notebook (Voilà's "lab", offline)
TEMPLATE = "lipschitz-lab"
#: BokehJS bundles the page loads from its own folder (bokeh.resources.INLINE's, less TeX)
BOKEHJS = ("bokeh", "bokeh-gl", "bokeh-widgets", "bokeh-tables")
CELL = "from lipschitz_lab.ui.app import app\n\napp()"

#: closing the page shuts its kernel down (Voilà's own page leaves that to the culler): a
#: beacon to Voilà's shutdown handler, authenticated by the page's token or XSRF cookie,
#: sent once, on beforeunload or pagehide (whichever comes first; fetch with keepalive when
#: the beacon is refused)
ON_CLOSE = """<script>
(function () {
  var sent = false;
  function shutdown() {
    var el = document.getElementById("jupyter-config-data");
    if (sent || !el) return;
    var cfg = JSON.parse(el.textContent), query = new URLSearchParams();
    if (!cfg.kernelId) return;
    var token = new URLSearchParams(location.search).get("token");
    var xsrf = document.cookie.match(/(?:^|; )_xsrf=([^;]*)/);
    if (token) query.set("token", token);
    if (xsrf) query.set("_xsrf", decodeURIComponent(xsrf[1]));
    var url = cfg.baseUrl + "voila/api/shutdown/" + cfg.kernelId + "?" + query;
    sent = navigator.sendBeacon(url);
    if (!sent) { fetch(url, {method: "POST", keepalive: true}); sent = true; }
  }
  window.addEventListener("beforeunload", shutdown);   // the first a closing tab fires
  window.addEventListener("pagehide", shutdown);       // and the one a navigation always fires
})();
</script>"""


#: Voilà 0.5.13 (the latest) bundles JupyterLab 4.2.5's core packages, and jupyterlab_widgets 3.0.17 (which
#: ipywidgets 8.1.9 requires) was built against 4.6: webpack says so once per shared package as the widget
#: manager loads ("Unsatisfied version 4.2.5 ... of shared singleton module @jupyterlab/...", 13 lines).
#: The packages are singletons without a strict version, so the one copy the page has is used and every
#: widget works; a person opening the console would only see noise.  Exactly those lines are dropped.
QUIET_VERSION_SKEW = """<script>
(function () {
  var skew = new RegExp("^(Unsatisfied version \\\\S+ from \\\\S+ of shared singleton module @jupyterlab/" +
                        "|No satisfying version \\\\(\\\\S+\\\\) of shared module @jupyterlab/)");
  var warn = console.warn.bind(console);
  console.warn = function (first) {
    if (typeof first === "string" && skew.test(first)) return;
    warn.apply(null, arguments);
  };
})();
</script>"""

#: a page whose server has stopped says so (its buttons would do nothing): every few seconds it asks
#: the server for a small static file; once that fails twice, a banner covers the top of the page
ON_SERVER_GONE = """<script>
(function () {
  var misses = 0, shown = false;
  var probe = (document.currentScript && document.currentScript.dataset.probe) || location.href;
  function check() {
    fetch(probe, {method: "HEAD", cache: "no-store"}).then(function () { misses = 0; }, function () {
      misses += 1;
      if (misses < 2 || shown) return;
      shown = true;
      var div = document.createElement("div");
      div.className = "lipschitz-server-gone";
      div.textContent = "The app's server has stopped, so this page no longer works (its runs are in the " +
                        "run store). Start it again (make run) and open the URL it prints.";
      div.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:10000;padding:10px 16px;" +
                          "background:#d62728;color:white;font:bold 14px sans-serif";
      document.body.appendChild(div);
    });
  }
  setInterval(check, 2000);
})();
</script>"""


def write_page(folder: Path) -> Path:
    """The notebook, the kernelspec and the template under ``folder``; returns the notebook."""
    share = folder / "share" / "jupyter"
    # 1) a kernel that is this interpreter, whatever kernelspecs the user has
    spec = share / "kernels" / "lipschitz-lab"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lipschitz-lab", "language": "python"}))
    # 2) Voilà's lab template, its CDN links dropped, BokehJS from its own static folder
    from bokeh.util.paths import bokehjs_path
    template = share / "voila" / "templates" / TEMPLATE
    (template / "static").mkdir(parents=True)
    links = _cdn_links(_lab_template())
    for name in BOKEHJS:
        shutil.copy(Path(bokehjs_path()) / "js" / f"{name}.min.js", template / "static")
    (template / "conf.json").write_text(json.dumps({"base_template": "lab"}))
    (template / "index.html.j2").write_text(_child_template(links))
    # 3) the notebook: one cell, no source shown
    nb = folder / "lipschitz-lab.ipynb"
    nb.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "app", "metadata": {}, "outputs": [],
                   "source": CELL}],
        "metadata": {"kernelspec": {"name": "lipschitz-lab", "display_name": "lipschitz-lab", "language": "python"},
                     "title": "lipschitz-lab"},
        "nbformat": 4, "nbformat_minor": 5}))
    return nb


def _lab_template() -> str:
    """The text of Voilà's installed lab/index.html.j2 (wherever Jupyter's data paths put it)."""
    from jupyter_core.paths import jupyter_path
    for root in jupyter_path("voila"):
        path = Path(root) / "templates" / "lab" / "index.html.j2"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError("Voila's lab template (voila/templates/lab/index.html.j2) is not installed: "
                            "pip install 'lipschitz-lab[app]'")


def _cdn_links(text: str) -> list[str]:
    """The stylesheet links of a template that leave this machine."""
    return re.findall(r"<link[^>]+href=\"https?://[^\"]+\"[^>]*>", text)


def _child_template(links: list[str]) -> str:
    drop = "".join(f" | replace({json.dumps(link)}, '')" for link in links)
    scripts = "\n".join(f'<script src="{{{{ resources.base_url }}}}voila/templates/{TEMPLATE}/static/{name}.min.js">'
                        "</script>" for name in BOKEHJS)
    return ("{%- extends 'lab/index.html.j2' -%}\n"
            "{%- block notebook_css -%}\n"
            f"{QUIET_VERSION_SKEW}\n{{{{ super(){drop} }}}}\n{scripts}\n{ON_CLOSE}\n"
            + ON_SERVER_GONE.replace("<script>", '<script data-probe="{{ resources.base_url }}'
                                     f'voila/templates/{TEMPLATE}/static/bokeh-tables.min.js">', 1) + "\n"
            "<style>.lipschitz-app { padding: 0 16px; }</style>\n"
            "{%- endblock notebook_css -%}\n")
