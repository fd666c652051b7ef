"""The counter's HTTP client reads no answer past its size cap and no request past its deadline.

terminal/http_client.py. A fake server on 127.0.0.1 answers each test its own way; the
128 MiB flood with a Content-Length is tests/test_redteam_r3_fake_server_flood.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from terminal.errors import SyncError
from terminal.http_client import AnswerTooLarge, DeadlinePassed, HttpApi

Serve = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Serve], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(how: Serve) -> str:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the counter hung up
                    how(self)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _chunked(handler: BaseHTTPRequestHandler, pieces: int, size: int, pause: float = 0.0) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for _ in range(pieces):
        handler.wfile.write(b"%x\r\n" % size + b"\x00" * size + b"\r\n")
        handler.wfile.flush()
        time.sleep(pause)
    handler.wfile.write(b"0\r\n\r\n")


def test_an_answer_within_the_cap_is_read_whole(serve: Callable[[Serve], str]) -> None:
    url = serve(lambda h: _chunked(h, 4, 1000))
    resp = HttpApi(url, max_bytes=4000).request("GET", "/api/v1/bundle")
    assert resp.status == 200 and resp.body == b"\x00" * 4000


def test_a_chunked_answer_past_the_cap_is_refused_without_a_length_announced(serve: Callable[[Serve], str]) -> None:
    url = serve(lambda h: _chunked(h, 100, 1000))
    with pytest.raises(AnswerTooLarge, match="longer than 4000 bytes"):
        HttpApi(url, max_bytes=4000).request("GET", "/api/v1/bundle")


def test_an_answer_cut_short_of_its_length_is_an_error_not_a_shorter_body(serve: Callable[[Serve], str]) -> None:
    def cut(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"\x00" * 10)
        h.close_connection = True

    url = serve(cut)
    with pytest.raises(SyncError, match="IncompleteRead"):
        HttpApi(url).request("GET", "/api/v1/bundle")


def test_a_slow_drip_ends_at_the_deadline_though_every_read_is_quick(serve: Callable[[Serve], str]) -> None:
    """One byte every 0.1 s: each read is far within the 2 s socket timeout, the request is not."""
    url = serve(lambda h: _chunked(h, 1000, 1, pause=0.1))
    start = time.monotonic()
    with pytest.raises(DeadlinePassed):
        HttpApi(url, timeout_s=2.0, deadline_s=1.0).request("GET", "/api/v1/bundle")
    assert time.monotonic() - start < 5.0  # a bound far above the deadline: no timing claim, only "it ended"


def test_a_slow_link_that_keeps_the_minimum_rate_gets_past_the_base_deadline(serve: Callable[[Serve], str]) -> None:
    """16 KiB every 0.5 s (32 KiB/s, four times MIN_RATE) for 4 s: twice the 2 s base, still read whole."""
    url = serve(lambda h: _chunked(h, 8, 16 * 1024, pause=0.5))
    resp = HttpApi(url, timeout_s=4.0, deadline_s=2.0).request("GET", "/api/v1/bundle")
    assert len(resp.body) == 8 * 16 * 1024


def test_a_drip_inside_the_headers_ends_at_the_deadline(serve: Callable[[Serve], str]) -> None:
    def drip_headers(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(1000):
            h.wfile.write(b"X")
            h.wfile.flush()
            time.sleep(0.1)

    url = serve(drip_headers)
    with pytest.raises(SyncError):
        HttpApi(url, timeout_s=2.0, deadline_s=1.0).request("GET", "/api/v1/bundle")
