"""`make lab` itself: JupyterLab on notebooks/, on 127.0.0.1 only, behind a token, with
the project's JupyterLab defaults installed into the venv."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
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
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except (urllib.error.URLError, OSError):     # not listening (yet)
        return 0, b""


def _other_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))          # TEST-NET-1: no packet is sent for a UDP connect
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


@pytest.mark.skipif(not (VENV / ".installed").exists(), reason="needs the venv `make test` builds")
def test_make_lab_serves_the_notebooks_on_localhost_behind_a_token(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = jupyter_env(tmp_path, LAB_TOKEN=token,
                      LAB_ARGS=f"--port={port} --ServerApp.port_retries=0 --LabApp.news_url= "
                               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    log = tmp_path / "make_lab.log"
    with open(log, "w") as out:
        server = subprocess.Popen(["make", "-s", "lab"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while _get(f"{base}/api/status?token={token}")[0] != 200:
            assert server.poll() is None, f"make lab exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"JupyterLab did not answer:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)

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
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
