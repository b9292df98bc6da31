"""Shared by the notebook and browser tests: a python3 kernelspec that is this venv's python."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def venv_kernelspec(root: Path) -> Path:
    """Write ``<root>/kernels/python3/kernel.json`` running ``sys.executable``; returns ``root``.

    Put ``root`` first on ``JUPYTER_PATH`` and every kernel named ``python3`` is
    this interpreter, whatever a user-level kernelspec says.
    """
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": False},
    }))
    return root


def jupyter_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment whose Jupyter paths live under ``tmp`` (no user config, runtime or settings)."""
    env = dict(os.environ)
    env.pop("LIPSCHITZ_LAB_QUICK", None)
    env.update({
        "JUPYTER_PATH": str(venv_kernelspec(tmp / "jupyter-data")),
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@contextlib.contextmanager
def serve_lab(tmp: Path, notebooks: Path, **env: str):
    """JupyterLab on 127.0.0.1 and a free port serving ``notebooks``, with the settings ``make lab``
    installs (jupyter/overrides.json) and ``window.jupyterapp`` exposed; yields
    ``{"url", "token", "log"}`` and always shuts it down (the server stops its kernels)."""
    import secrets
    import shutil
    import socket
    import time
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token, log = secrets.token_hex(16), tmp / "jupyter.log"
    settings = tmp / "app-settings"
    settings.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "jupyter" / "overrides.json", settings / "overrides.json")
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--ServerApp.token={token}", "--allow-root", f"--notebook-dir={notebooks}",
           "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.app_settings_dir={settings}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, cwd=notebooks, env=jupyter_env(tmp, **env), stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not start:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "log": log}
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s: the way a test ends a server it started."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


# -- what the kernel says where a person looks ------------------------------------------------------

#: a kernel message a user would see as a traceback: an error (a cell's, or a comm handler's, which
#: JupyterLab shows in its Log Console), or a traceback written to the kernel's stderr stream
_ERROR_MARKS = ('"msg_type":"error"', '"msg_type": "error"')


class KernelMessages:
    """Every kernel message the page receives over its websockets (JupyterLab's and Voilà's), kept
    when it is an error or a stderr stream with a traceback: what the Log Console, a cell or the
    page would show.  ``page.on("websocket")`` sees the frames the kernel sends."""

    def __init__(self, page):
        self.problems: list[str] = []
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
        if any(m in text for m in _ERROR_MARKS) or ('"name":"stderr"' in text.replace(" ", "")
                                                    and "Traceback" in text):
            self.problems.append(text[-2000:])


def tracebacks(log_text: str) -> list[str]:
    """Tracebacks a server's log holds (the kernels' own stderr lands there)."""
    return [part[:1500] for part in log_text.split("Traceback (most recent call last)")[1:]]


def bokeh_console_problems(console: list[tuple[str, str]]) -> list[str]:
    """Console lines that are BokehJS or jupyter_bokeh warnings, or any error."""
    return [f"{kind}: {text}" for kind, text in console
            if kind == "error" or (kind == "warning" and ("[bokeh" in text or "BokehView" in text))]
