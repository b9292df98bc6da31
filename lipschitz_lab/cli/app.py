"""``lipschitz-lab app``: the lab as one page in the browser, served by Voilà on this machine.

1) The page is written to a temporary folder: a notebook whose one cell calls
   :func:`lipschitz_lab.ui.app.app`, a kernelspec that is this Python, and Voilà's
   ``lab`` template without the links it has to a CDN (Font Awesome: ipywidgets'
   own bundle already carries it), with BokehJS served from the same folder.
2) Voilà serves it on 127.0.0.1 and a free port, behind a token unless --no-token;
   no notebook source shows; the kernel of a page that closes is shut down (the page
   tells Voilà as it goes; Voilà's culler ends any left without a page for --cull-after s).
3) The URL is printed, and opened in the default browser when there is one.
4) Ctrl-C (or SIGTERM) stops Voilà, which shuts its kernels down; the exit code is 0.
"""
from __future__ import annotations

import importlib.util
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import webbrowser
from pathlib import Path

from lipschitz_lab.ui.page import TEMPLATE, write_page

#: Voilà's log lines a user needs not see
NOISE = re.compile(r"is not trusted|without encryption|websocket_ping_timeout|Setting websocket_ping")
#: seconds Voilà gets to shut its kernels down after Ctrl-C before it is killed
STOP_GRACE_S = 10.0


def register(sub) -> None:
    p = sub.add_parser("app", help="the lab as a desktop app: the panels as tabs in your browser (Voila)",
                       description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only serve; print the URL to open")
    p.add_argument("--no-token", action="store_true",
                   help="no token in the URL: anyone on this machine can open the page (a trusted machine)")
    p.add_argument("--store", metavar="PATH",
                   help="run store (default: $LIPSCHITZ_LAB_STORE, else runs/lipschitz_lab.db)")
    p.add_argument("--data-root", metavar="DIR", help="the data folder the panels start with "
                                                      "(default: $LIPSCHITZ_LAB_DATA, else the usual one)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads in the page's kernel (default: $OMP_NUM_THREADS, else one fewer than "
                        "the cores, at least 1: the browser and the kernel's own thread need one)")
    p.add_argument("--cull-after", type=int, default=900, metavar="S",
                   help="shut down the kernel of a page gone for S seconds (default: 900)")
    p.set_defaults(func=run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voila_command(notebook: Path, port: int, token: str, cull_after: int) -> list[str]:
    # Voilà's main, without the import it does not need and the tracebacks of closed pages (_voila_main)
    return [sys.executable, "-m", "lipschitz_lab.cli._voila_main", str(notebook), "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", f"--Voila.token={token}",
            f"--VoilaConfiguration.template={TEMPLATE}", "--VoilaConfiguration.strip_sources=True",
            "--Voila.log_level=WARN", "--MappingKernelManager.cull_connected=False",
            f"--MappingKernelManager.cull_idle_timeout={cull_after}",
            f"--MappingKernelManager.cull_interval={max(1, min(60, cull_after // 2))}"]


def _environment(folder: Path, args, token: str) -> dict[str, str]:
    from lipschitz_lab.runs import STORE_ENV, store_path
    from lipschitz_lab.ui._bridge import BOKEHJS_IN_PAGE
    from lipschitz_lab.ui.watchdog import APP_TOKEN_ENV
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])     # a source checkout works uninstalled
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(folder / "share" / "jupyter"),
                                                      env.get("JUPYTER_PATH")) if p)
    # the kernel runs in the page's folder: give it the store and the data folder as absolute paths
    env[STORE_ENV] = str(store_path(args.store).resolve())
    if args.data_root:
        from lipschitz_lab.data import DATA_ROOT_ENV
        env[DATA_ROOT_ENV] = str(Path(args.data_root).expanduser().resolve())
    env[BOKEHJS_IN_PAGE] = "1"
    env[APP_TOKEN_ENV] = token                   # the kernel watches its page (ui/watchdog.py)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    else:
        env.setdefault("OMP_NUM_THREADS", str(kernel_threads()))
    return env


def kernel_threads(cores: int | None = None) -> int:
    """Torch's threads in the page's kernel: one core is left to the page and the kernel's main thread.

    Torch's threads spin while they wait, and a page that draws live keeps the browser busy (~0.7
    of a core here) while the kernel's main thread sends the batches: on 2 cores, the default run
    trained 1.9 times faster in the app with one torch thread than with two (benchmarks/RESULTS.md,
    "The app against the CLI"); the CLI's own run is as fast with one thread as with two."""
    return max(1, (cores or os.cpu_count() or 2) - 1)


def _forward(stream, out) -> None:
    for line in iter(stream.readline, ""):
        if not NOISE.search(line):
            out.write(line)
            out.flush()


def _wait_listening(port: int, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Voila did not listen on port {port} within {timeout:.0f} s") from None
            time.sleep(0.05)
    raise RuntimeError(f"Voila exited with code {server.returncode} before it served the page")


def open_browser(url: str) -> bool:
    """Open ``url`` in the default graphical browser; False when there is none (a server,
    ssh): a console browser would take the terminal over."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        return webbrowser.open(url, new=2)
    except webbrowser.Error:
        return False


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM: Voilà stops its loop and shuts its kernels down; killed if it lingers."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def run(args) -> int:
    if args.port and not 0 < args.port < 65536:
        raise ValueError(f"--port={args.port!r}: must be in 1..65535 (or 0: a free one)")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads={args.threads!r}: must be >= 1")
    if args.cull_after < 1:
        raise ValueError(f"--cull-after={args.cull_after!r}: must be >= 1 second")
    if importlib.util.find_spec("voila") is None:   # importing it would cost seconds: only look
        raise ValueError("the app needs Voila: pip install 'lipschitz-lab[app]' (make run installs it)") from None
    port = args.port or free_port()
    token = "" if args.no_token else secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}/" + (f"?token={token}" if token else "")
    # SIGTERM (a service manager, a test) ends the app as Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="lipschitz-lab-app-") as tmp:
        folder = Path(tmp)
        notebook = write_page(folder)
        server = subprocess.Popen(voila_command(notebook, port, token, args.cull_after), cwd=folder,
                                  env=_environment(folder, args, token), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)    # Ctrl-C reaches this process only
        threading.Thread(target=_forward, args=(server.stdout, sys.stderr), daemon=True).start()
        try:
            _wait_listening(port, server)
            print(f"lipschitz-lab app: open {url}", flush=True)
            if not args.no_browser and not open_browser(url):
                print("lipschitz-lab app: no browser to open here; open the URL above yourself", flush=True)
            print("lipschitz-lab app: Ctrl-C stops it", flush=True)
            server.wait()
            return 0 if server.returncode in (0, -signal.SIGTERM) else server.returncode
        except KeyboardInterrupt:
            print("\nlipschitz-lab app: stopping…", file=sys.stderr, flush=True)
            return 0
        except RuntimeError as exc:        # Voilà did not come up; its own log lines said why
            print(f"lipschitz-lab: error: {exc}", file=sys.stderr)
            return 1
        finally:
            _stop(server)
            signal.signal(signal.SIGTERM, previous)
