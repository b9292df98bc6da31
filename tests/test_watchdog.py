"""ui/watchdog.py against a fake Voilà: the kernel stops its runs and asks for its shutdown once
its page has been gone long enough, and not before a page ever connected."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lipschitz_lab.ui.watchdog import PageWatch, watch_page


class FakeVoila:
    def __init__(self, connections: list[int]):
        self.connections, self.gets, self.posts = list(connections), [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.gets.append(self.path)
                n = outer.connections.pop(0) if len(outer.connections) > 1 else outer.connections[0]
                body = json.dumps({"id": "k", "connections": n}).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                outer.posts.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def voila(request):
    fake = FakeVoila(request.param)
    yield fake
    fake.close()


@pytest.mark.parametrize("voila", [[0, 1, 1, 0]], indirect=True)
def test_a_page_gone_stops_the_runs_and_shuts_the_kernel_down(voila):
    stopped = []
    watch = PageWatch(lambda: stopped.append(time.monotonic()), voila.url, "abc-123", "s3cret",
                      poll_s=0.05, gone_after_s=0.3)
    t0 = time.monotonic()
    watch.start()
    watch.join(10)
    assert not watch.is_alive() and len(stopped) == 1
    assert stopped[0] - t0 >= 0.3                              # gone for gone_after_s first
    assert voila.gets[0] == "/api/kernels/abc-123?token=s3cret"
    assert voila.posts == ["/voila/api/shutdown/abc-123?token=s3cret"]


@pytest.mark.parametrize("voila", [[0]], indirect=True)
def test_a_page_that_never_connected_is_left_to_the_culler(voila):
    stopped = []
    watch = PageWatch(lambda: stopped.append(1), voila.url, "abc", "", poll_s=0.05, gone_after_s=0.1)
    watch.start()
    time.sleep(1.0)
    assert watch.is_alive() and stopped == [] and voila.posts == []
    assert len(voila.gets) >= 5 and voila.gets[0] == "/api/kernels/abc"
    watch.gone.set()                                           # end the thread (it then asks)


def test_outside_the_app_nothing_is_watched(monkeypatch):
    monkeypatch.delenv("LIPSCHITZ_LAB_APP_TOKEN", raising=False)
    assert watch_page(lambda: None) is None
