"""Bokeh documents opened in headless Chromium, and what BokehJS drew there.

Shared by tests/test_figures.py, test_report.py and test_derivation_panel.py.
Reads the BokehJS views (``Bokeh.index``): each plot's frame and legends in
CSS pixels, each axis's range and the ticks and labels it drew, and the
colours on a plot's canvas.  A missing /usr/bin/chromium is a failure, not a skip.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from bokeh.embed import file_html
from bokeh.resources import INLINE

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "figures"

#: every plot: title, visibility, frame and element boxes, legends, axes with their ticks
DESCRIBE = """() => {
  const plots = [];
  const children = (v, type) => [...Bokeh.index.query((x) => x.parent === v && type(x.model))];
  for (const v of Bokeh.index.all_views()) {
    if (v.model.type != "Figure" && v.model.type != "Plot") continue;
    const f = v.frame.bbox, r = v.el.getBoundingClientRect();
    const legends = children(v, (m) => m.type == "Legend").filter((c) => c.bbox).map((c) => (
      {box: [c.bbox.x0, c.bbox.y0, c.bbox.x1, c.bbox.y1], items: c.model.items.length}));
    const axes = children(v, (m) => m.ticker !== undefined && m.formatter !== undefined).map((a) => {
      const [s, e] = a.computed_bounds;
      const t = a.model.ticker.get_ticks(s, e, a.ranges[0], a.loc);
      return {dim: a.dimension, type: a.model.type, start: s, end: e, major: Array.from(t.major),
              labels: a.model.formatter.doFormat(Array.from(t.major), a).map(String)};
    });
    plots.push({id: v.model.id, title: v.model.title.text, visible: v.model.visible,
                frame: [f.x0, f.y0, f.x1, f.y1], el: [r.left, r.top, r.right, r.bottom], legends, axes});
  }
  return plots;
}"""

#: pixels of plot ``id``'s canvas inside its frame near each colour in ``colors`` (within ``tol`` per channel);
#: ``x`` (data units) restricts the count to the one-pixel column there
COLOR_COUNTS = """([id, colors, tol, x]) => {
  const v = Bokeh.index.query_one((q) => q.model.id == id);
  const f = v.frame.bbox;
  const layer = v.canvas_view.compose();
  const k = layer.canvas.width / v.canvas_view.bbox.width;
  let x0 = f.x0, w = f.width;
  if (x != null) { x0 = Math.round(v.frame.x_scale.compute(x)) - 1; w = 3; }
  const data = layer.ctx.getImageData(Math.round(x0 * k), Math.round((f.y0 + 1) * k),
                                      Math.round(w * k), Math.round((f.height - 2) * k)).data;
  const counts = colors.map(() => 0);
  for (let i = 0; i < data.length; i += 4) {
    colors.forEach((c, j) => {
      if (Math.abs(data[i] - c[0]) <= tol && Math.abs(data[i + 1] - c[1]) <= tol &&
          Math.abs(data[i + 2] - c[2]) <= tol) counts[j] += 1;
    });
  }
  return counts;
}"""


def write_html(model, path: Path, title: str = "lipschitz-lab test") -> Path:
    """``model`` (a layout, or a Document) as a self-contained HTML file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(file_html(model, INLINE, title), encoding="utf-8")
    return path


@contextlib.contextmanager
def chromium():
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class BokehPage:
    """One HTML file open in a page; ``console`` holds every console line and page error."""

    def __init__(self, browser, path: Path, width: int = 1600, height: int = 1000):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_function(
            "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents.every((d) => d.is_idle)",
            timeout=60_000)

    def bokeh_problems(self) -> list[str]:
        """Console warnings and errors from BokehJS, and page errors."""
        return [c for c in self.console if c.startswith("pageerror")
                or (c.split(":")[0] in ("warning", "error") and "bokeh" in c.lower())]

    def plots(self) -> dict[str, dict]:
        """Every plot BokehJS drew, by title."""
        return {p["title"]: p for p in self.page.evaluate(DESCRIBE)}

    def color_counts(self, plot_id: str, colors: list[tuple[int, int, int]], tol: int = 30,
                     x: float | None = None) -> list[int]:
        return self.page.evaluate(COLOR_COUNTS, [plot_id, [list(c) for c in colors], tol, x])

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        out = ARTIFACTS / name
        self.page.screenshot(path=str(out), full_page=full_page)
        return out

    def close(self) -> None:
        self.page.close()


def hex_rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4))


def y_axis(plot: dict) -> dict:
    (axis,) = [a for a in plot["axes"] if a["dim"] == 1]
    return axis


def x_axis(plot: dict) -> dict:
    (axis,) = [a for a in plot["axes"] if a["dim"] == 0]
    return axis


def disjoint(a: list[float], b: list[float]) -> bool:
    """Two boxes [x0, y0, x1, y1] share no area."""
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
