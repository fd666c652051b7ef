"""A counter believes only signed server answers (issue 17, "The trust chain above the card").

The attacks: something between the counter and the server (a captive portal, a
DNS hijack, a rogue access point, an ``http://`` URL) answers in the server's
place. A fake server here is :mod:`http.server` on 127.0.0.1; it answers what a
real server would, but unsigned, signed by another key, or for other entries.
The counter must mark nothing uploaded (its exposure keeps counting), park
nothing, and a bare 304 must not make an old trust bundle look fresh.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cardlib.keys.signer import SoftwareSigner
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind, verify_entry
from cardlib.records.statements import FRESHNESS_HEADER, ReceiptLine, sign_freshness, sign_receipt
from terminal.clock import Clock
from terminal.errors import SyncError
from terminal.journal_store import CardWrite, JournalStore
from terminal.sync import HttpApi, SyncClient, TrustStore
from tests.test_terminal_support import TrustKit, new_signer

TID = "T-6271-0777"
#: The server receipt key the counter pinned at enrolment.
PINNED = new_signer()

Answer = Callable[[BaseHTTPRequestHandler, bytes], tuple[int, dict[str, str], bytes]]


class FakeServer:
    """A one-route-per-method HTTP server on 127.0.0.1 whose answers the test writes.

    :ivar answer: ``(handler, request body) -> (status, headers, body)``.
    :ivar requests: ``(method, path, headers, body)`` of every request.
    """

    def __init__(self) -> None:
        self.answer: Answer = lambda _h, _b: (404, {}, b"")
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                      body))
                status, headers, data = fake.answer(self, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve  # noqa: N815 - http.server dispatches on these names

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


class Counter:
    """A counter's journal, trust store and sync client aimed at the fake server."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.signer = new_signer()
        self.kit = TrustKit()
        self.journal = JournalStore(tmp / "journal.sqlite", terminal_id=TID, signer=self.signer,
                                    clock=Clock(force_synced=True))
        self.trust = TrustStore(tmp / "bundle.cose", self.kit.root.public_key)
        self.client = SyncClient(HttpApi(url, timeout_s=5), self.journal, self.signer, TID, self.trust,
                                 receipt_key=PINNED.public_key)

    def redeem(self, n: int) -> None:
        for i in range(n):
            self.journal.append(EntryKind.COMMIT, CardWrite(card_id=f"6271{i:012d}", programme="food",
                                                            unit=Unit.PACKAGE, amount=1))


@pytest.fixture
def counter(tmp_path: Path, fake: FakeServer) -> Iterator[Counter]:
    c = Counter(tmp_path, fake.url)
    yield c
    c.journal.close()


def _results(body: bytes, result: str, reason: str | None = None) -> list[dict[str, Any]]:
    entries = [verify_entry(base64.b64decode(e), lambda kid: _any_key(kid)) for e in json.loads(body)["entries"]]
    return [{"index": i, "result": result, "status": 200, "entry_id": s.entry.entry_id.hex(), "seq": s.entry.seq,
             **({"reason": reason} if reason else {})} for i, s in enumerate(entries)]


_KEYS: dict[bytes, Any] = {}


def _any_key(kid: bytes) -> Any:
    return _KEYS[kid]


def _know(signer: SoftwareSigner) -> None:
    from cardlib.keys.signer import cose_key

    _KEYS[signer.kid] = cose_key(signer)


def _unsigned_answer(result: str, reason: str | None = None) -> Answer:
    def answer(_h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        results = _results(body, result, reason)
        status = 200 if result in ("accepted", "duplicate") else 422
        return status, {"Content-Type": "application/json"}, json.dumps(
            {"terminal_id": TID, "results": results, "counts": {result: len(results)}}).encode()
    return answer


def _signed_answer(key: SoftwareSigner, *, other_body: bytes | None = None, drop_last: bool = False,
                   other_terminal: bool = False) -> Answer:
    """A receipt signed by ``key``: for this request, or for ``other_body``, or missing the last entry."""
    def answer(_h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        results = _results(body, "accepted")
        signed = results[:-1] if drop_last else results
        receipt = sign_receipt(key, "T-6271-9999" if other_terminal else TID, other_body or body,
                               [ReceiptLine(bytes.fromhex(r["entry_id"]), r["seq"], r["result"]) for r in signed],
                               now=time.time())
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"terminal_id": TID, "results": results, "receipt": base64.b64encode(receipt).decode()}).encode()
    return answer


def test_unsigned_accepted_marks_nothing_and_exposure_stays(counter: Counter, fake: FakeServer) -> None:
    _know(counter.signer)
    counter.redeem(3)
    before = counter.journal.exposure()
    assert before == {Unit.PACKAGE: 3}
    fake.answer = _unsigned_answer("accepted")
    with pytest.raises(SyncError):
        counter.client.upload_pending()
    assert counter.journal.unsent_count() == 4  # BOOT + 3 COMMITs, none marked
    assert counter.journal.exposure() == before


@pytest.mark.parametrize("how", ["wrong key", "other request", "other terminal", "missing an entry"])
def test_receipts_that_do_not_cover_the_entries_mark_nothing_they_do_not_cover(
        counter: Counter, fake: FakeServer, how: str) -> None:
    _know(counter.signer)
    counter.redeem(2)
    fake.answer = {
        "wrong key": _signed_answer(new_signer()),
        "other request": _signed_answer(PINNED, other_body=b'{"entries": []}'),
        "other terminal": _signed_answer(PINNED, other_terminal=True),
        "missing an entry": _signed_answer(PINNED, drop_last=True),
    }[how]
    with pytest.raises(SyncError):
        counter.client.upload_pending()
    marked = 3 - counter.journal.unsent_count()
    assert marked == 0
    assert counter.journal.exposure() == {Unit.PACKAGE: 2}


def test_a_valid_receipt_marks_exactly_what_it_covers(counter: Counter, fake: FakeServer) -> None:
    _know(counter.signer)
    counter.redeem(2)
    fake.answer = _signed_answer(PINNED)
    report = counter.client.upload_pending()
    assert report.marked == 3 and counter.journal.unsent_count() == 0
    assert counter.journal.exposure() == {}


def test_unsigned_rejected_parks_nothing(counter: Counter, fake: FakeServer) -> None:
    _know(counter.signer)
    counter.redeem(2)
    fake.answer = _unsigned_answer("rejected", "bad_signature")
    with pytest.raises(SyncError):
        counter.client.upload_pending()
    assert counter.journal.upload_problems() == []
    assert counter.journal.unsent_count() == 3  # offered again on the next sync


def test_a_bare_304_does_not_make_the_bundle_fresh(counter: Counter, fake: FakeServer) -> None:
    _b, data = counter.kit.bundle(1)
    counter.trust.install(data, "etag-1")
    counter.trust.confirm(now=time.time() - 20 * 86400)  # last confirmed 20 days ago
    aged = counter.trust.checked_at
    fake.answer = lambda _h, _b: (304, {"ETag": '"etag-1"'}, b"")
    with pytest.raises(SyncError):
        counter.client.refresh_bundle()
    assert counter.trust.checked_at == aged
    # A 200 with the same bytes but no freshness statement is no confirmation either.
    fake.answer = lambda _h, _b: (200, {"ETag": '"etag-1"', "Content-Type": "application/cose"}, data)
    with pytest.raises(SyncError):
        counter.client.refresh_bundle()
    assert counter.trust.checked_at == aged


def test_a_replayed_freshness_statement_does_not_make_the_bundle_fresh(counter: Counter, fake: FakeServer) -> None:
    _b, data = counter.kit.bundle(1)
    counter.trust.install(data, "etag-1")
    counter.trust.confirm(now=time.time() - 20 * 86400)
    aged = counter.trust.checked_at
    old = sign_freshness(PINNED, b"\x00" * 16, 1, hashlib.sha256(data).digest(), now=time.time())
    header = base64.urlsafe_b64encode(old).rstrip(b"=").decode()
    fake.answer = lambda _h, _b: (304, {"ETag": '"etag-1"', FRESHNESS_HEADER: header}, b"")
    with pytest.raises(SyncError):
        counter.client.refresh_bundle()
    assert counter.trust.checked_at == aged

    def answer(h: BaseHTTPRequestHandler, _b: bytes) -> tuple[int, dict[str, str], bytes]:
        nonce = bytes.fromhex(h.headers["Huma-Nonce"])
        fresh = sign_freshness(PINNED, nonce, 1, hashlib.sha256(data).digest(), now=time.time())
        return 304, {"ETag": '"etag-1"', FRESHNESS_HEADER: base64.urlsafe_b64encode(fresh).decode()}, b""

    fake.answer = answer
    assert counter.client.refresh_bundle() is False
    assert counter.trust.checked_at > aged + 19 * 86400  # answered our nonce: confirmed now


@pytest.mark.parametrize("url", ["http://huma.kalteng.example/api/v1", "http://10.0.0.5:8080",
                                 "http://[2001:db8::1]/"])
def test_plain_http_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        HttpApi(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:5000", "http://127.8.9.10", "http://localhost:80",
                                 "http://[::1]:8080", "https://huma.kalteng.example/api/v1"])
def test_loopback_and_https_are_allowed(url: str) -> None:
    HttpApi(url)
