"""The app's kernel ends itself when its page is gone.

Closing the page sends Voilà a shutdown beacon (:mod:`lipschitz_lab.ui.page`), but a browser
may not deliver it (a renderer busy drawing a live run, a crash, a laptop lid), and Voilà's
culler cannot help while a run is training: every record the run streams counts as kernel
activity.  So the kernel asks the server, every :data:`POLL_S` seconds, how many websocket
connections it has (``GET /api/kernels/<id>``); once it has had one and then none for
:data:`GONE_AFTER_S` seconds it stops its runs (each keeps its records, status "stopped") and
asks Voilà to shut it down.  Only inside ``lipschitz-lab app``, which gives the kernel the
server's token in :data:`APP_TOKEN_ENV`.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.parse
import urllib.request
from typing import Callable

__all__ = ["APP_TOKEN_ENV", "POLL_S", "GONE_AFTER_S", "PageWatch", "watch_page"]

#: the app's token, for the kernel's own requests to its server (set by ``lipschitz-lab app``)
APP_TOKEN_ENV = "LIPSCHITZ_LAB_APP_TOKEN"
POLL_S = 5.0
GONE_AFTER_S = 20.0


def _kernel_id() -> str | None:
    try:
        from ipykernel.connect import get_connection_file
        found = re.search(r"kernel-([0-9a-f-]+)\.json$", get_connection_file())
    except Exception:            # not in a kernel
        return None
    return found.group(1) if found else None


def _server() -> str | None:
    port = os.environ.get("VOILA_APP_PORT") or os.environ.get("SERVER_PORT")
    base = os.environ.get("VOILA_BASE_URL") or "/"
    return f"http://127.0.0.1:{port}{base}" if port else None


class PageWatch(threading.Thread):
    """Calls ``on_gone`` and shuts the kernel down once its page has been gone ``gone_after_s``."""

    def __init__(self, on_gone: Callable[[], None], server: str, kernel: str, token: str, *,
                 poll_s: float = POLL_S, gone_after_s: float = GONE_AFTER_S):
        super().__init__(name="lipschitz-lab-page-watch", daemon=True)
        self.on_gone, self.server, self.kernel = on_gone, server, kernel
        self.query = "?" + urllib.parse.urlencode({"token": token}) if token else ""
        self.poll_s, self.gone_after_s = poll_s, gone_after_s
        self.gone = threading.Event()

    def connections(self) -> int | None:
        """The kernel's websocket connections, as the server counts them (None: no answer)."""
        try:
            with urllib.request.urlopen(f"{self.server}api/kernels/{self.kernel}{self.query}", timeout=10) as r:
                return int(json.loads(r.read()).get("connections", 0))
        except Exception:
            return None

    def run(self) -> None:
        seen, since = False, None
        while not self.gone.is_set():
            n = self.connections()
            if n:
                seen, since = True, None
            elif n == 0 and seen:
                since = since or time.monotonic()
                if time.monotonic() - since >= self.gone_after_s:
                    self.gone.set()
            if not self.gone.is_set():
                time.sleep(self.poll_s)
        try:
            self.on_gone()
        finally:
            request = urllib.request.Request(f"{self.server}voila/api/shutdown/{self.kernel}{self.query}",
                                             data=b"", method="POST")
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except Exception:    # the server is gone too: nothing left to ask
                pass


def watch_page(on_gone: Callable[[], None]) -> PageWatch | None:
    """Start watching (inside ``lipschitz-lab app`` only; None elsewhere)."""
    kernel, server = _kernel_id(), _server()
    if APP_TOKEN_ENV not in os.environ or kernel is None or server is None:
        return None
    watch = PageWatch(on_gone, server, kernel, os.environ[APP_TOKEN_ENV])
    watch.start()
    return watch
