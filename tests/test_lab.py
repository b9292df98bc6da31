"""`make lab` itself: JupyterLab on notebooks/, on 127.0.0.1 only, behind a token, with
the project's JupyterLab defaults installed into the venv, and a printed URL that logs in."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ui_helpers import jupyter_env

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"

pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    status, _, body = _open(url)
    return status, body


def _open(url: str) -> tuple[int, str, bytes]:
    """(status, the URL after redirects, body); a fresh opener each time, so no cookie is kept."""
    try:
        with urllib.request.build_opener(urllib.request.HTTPCookieProcessor()).open(url, timeout=5) as r:
            return r.status, r.geturl(), r.read()
    except urllib.error.HTTPError as err:
        return err.code, url, b""
    except (urllib.error.URLError, OSError):     # not listening (yet)
        return 0, url, b""


def _other_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))          # TEST-NET-1: no packet is sent for a UDP connect
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


#: the URL a user copies from `make lab`'s output: the token in full, never JupyterLab's "?token=..."
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9A-Za-z_-]+)")
needs_venv = pytest.mark.skipif(not (VENV / ".installed").exists(), reason="needs the venv `make test` builds")


@contextlib.contextmanager
def _make_lab(tmp_path, port: int, **env):
    """`make -s lab` in its own process group; yields a function that returns its output so far."""
    env = jupyter_env(tmp_path, LAB_ARGS=f"--port={port} --ServerApp.port_retries=0 --LabApp.news_url= "
                                         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", **env)
    log = tmp_path / "make_lab.log"
    with open(log, "w") as out:
        server = subprocess.Popen(["make", "-s", "lab"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def output() -> str:
        assert server.poll() is None, f"make lab exited with {server.returncode}:\n{log.read_text()[-3000:]}"
        return log.read_text()
    try:
        yield output
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)


def _printed_url(output, deadline: float) -> re.Match:
    """The first URL with a token that `make lab` printed, once the server answers on it."""
    while True:
        text = output()
        found = URL.search(text)
        if found and _open(found[0])[0] == 200:
            return found
        assert time.monotonic() < deadline, f"no URL with a token that answers in:\n{text[-3000:]}"
        time.sleep(0.5)


@needs_venv
def test_make_lab_prints_the_url_with_its_token_and_that_url_logs_in(tmp_path):
    port = _free_port()
    with _make_lab(tmp_path, port) as output:
        found = _printed_url(output, time.monotonic() + 150)
        assert int(found[1]) == port and len(found[2]) >= 32      # a token JupyterLab made, in full
        # the URL as printed, and nothing else, opens the lab (a login would end on /login)
        status, final, body = _open(found[0])
        assert status == 200 and urllib.parse.urlparse(final).path == "/lab", final
        assert b"JupyterLab" in body
        assert urllib.parse.urlparse(_open(f"http://127.0.0.1:{port}/lab")[1]).path == "/login"
        assert _get(f"http://127.0.0.1:{port}/api/status?token={found[2]}")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/api/status")[0] in (401, 403)


@needs_venv
def test_make_lab_serves_the_notebooks_on_localhost_behind_a_token(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    with _make_lab(tmp_path, port, LAB_TOKEN=token) as output:
        found = _printed_url(output, time.monotonic() + 150)
        assert found[0] == f"{base}/lab?token={token}"              # the chosen token, printed in full

        # the token is required
        assert _get(f"{base}/api/status")[0] in (401, 403)
        assert _get(f"{base}/api/status?token={secrets.token_hex(16)}")[0] in (401, 403)
        # the notebooks are what it serves
        status, body = _get(f"{base}/api/contents?token={token}")
        names = {item["name"] for item in json.loads(body)["content"]}
        assert status == 200 and {"01_derivations.ipynb", "02_live_training.ipynb", "03_what_if_lr.ipynb",
                                  "04_paper_experiments.ipynb"} <= names, names
        # bound to the loopback interface only
        other = _other_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
        # the project's defaults are installed where JupyterLab reads them, and are served
        installed = VENV / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
        assert json.loads(installed.read_text()) == json.loads((ROOT / "jupyter" / "overrides.json").read_text())
        status, body = _get(f"{base}/lab/api/settings/@jupyterlab/notebook-extension:tracker?token={token}")
        assert json.loads(body)["schema"]["properties"]["autoStartDefaultKernel"]["default"] is True
