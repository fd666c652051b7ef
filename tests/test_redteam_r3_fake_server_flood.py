"""Red team round 3, a fake server that answers with a body too large to hold: the counter reads it all.

``terminal.sync.HttpApi.request`` does ``resp.read()`` with no bound. The sync thread runs inside the
counter daemon, beside the taps. Anything answering in the server's place (captive portal, DNS hijack,
rogue access point) sends a few GB to the bundle or upload request: the daemon's memory grows until
the kernel's OOM killer ends it, and the counter stops serving cards — offline service, the thing the
counter must keep doing without a server, is lost to a network attacker (and again at every restart's
first sync). The socket timeout is per read, so a slow drip also holds the sync thread for ever.
The largest legitimate answer is the bundle (a 300,000-card deny list is ~3 MB).

The test asserts the DEFENCE (an answer far beyond any legitimate size is refused with SyncError, not
read into memory); it fails while the attack works. 128 MiB here, to stay light on a shared machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from terminal.errors import SyncError
from terminal.sync import HttpApi

FLOOD = 128 * 1024 * 1024
CHUNK = b"\x00" * (1024 * 1024)


class _Flood(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/cbor")
        self.send_header("Content-Length", str(FLOOD))
        self.end_headers()
        try:
            for _ in range(FLOOD // len(CHUNK)):
                self.wfile.write(CHUNK)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the counter hung up: the defence

    do_GET = do_POST = _serve  # noqa: N815 - http.server dispatches on these names


@pytest.fixture
def flood_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_fake_servers_huge_answer_is_refused_not_read_into_memory(flood_server: str) -> None:
    api = HttpApi(flood_server, timeout_s=10)
    try:
        resp = api.request("GET", "/api/v1/bundle")
    except SyncError:
        return  # the defence
    size = len(resp.body)
    del resp
    pytest.fail(f"the counter read a {size // (1024 * 1024)} MiB answer into memory (no bound on resp.read())")
