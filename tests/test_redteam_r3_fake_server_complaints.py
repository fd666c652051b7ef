"""Red team round 3, a fake server swallowing complaints (docs/grievances.md "Delivery"; docs/security.md
"Server answers are signed"). Defended: these are regression tests.

A beneficiary's complaint against the clerk is taken at that clerk's counter and waits there until
a sync round delivers it. Whatever answers in the server's place (a captive portal, a DNS hijack, a
rogue access point; here :mod:`http.server` on 127.0.0.1) tries to make the counter forget it: an
unsigned "accepted", an unsigned or rogue-signed "rejected" (kept but never offered again), a genuine
receipt of another request (replay), a receipt naming other complaints. The counter must mark
nothing sent and park nothing; the complaint goes to the real server at the next round.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from cardlib.keys.signer import SoftwareSigner
from cardlib.records.statements import ReceiptLine, sign_receipt
from terminal.grievances import GrievanceQueue, GrievanceSender
from terminal.sync import HttpApi, UnverifiedAnswer
from tests.test_sync_authenticity import PINNED, FakeServer, fake  # noqa: F401 - fake is a fixture
from tests.test_terminal_support import new_signer

TID = "T-6271-0777"
ROGUE = new_signer()


@pytest.fixture
def counter(tmp_path: Path, fake: FakeServer) -> Iterator[tuple[GrievanceQueue, GrievanceSender]]:  # noqa: F811
    queue = GrievanceQueue(tmp_path / "grievances.sqlite")
    sender = GrievanceSender(HttpApi(fake.url, timeout_s=5), queue, new_signer(), TID, receipt_key=PINNED.public_key)
    queue.add("clerk kept my Rp250,000; the screen said paid", "not_received", receipt_code="ABCD-EF23")
    yield queue, sender
    queue.close()


def _receipt(key: SoftwareSigner, result: str, *, body_of: bytes | None = None, other_ref: bool = False,
             terminal: str = TID):  # type: ignore[no-untyped-def]
    def answer(_h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        refs = [g["client_ref"] for g in json.loads(body)["grievances"]]
        lines = [ReceiptLine(bytes(16) if other_ref else bytes.fromhex(r), 1, result,
                             "category" if result == "rejected" else None) for r in refs]
        receipt = sign_receipt(key, terminal, body_of or body, lines, now=time.time())
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"results": [{"result": result}] * len(refs), "receipt": base64.b64encode(receipt).decode()}).encode()
    return answer


def _unsigned(result: str):  # type: ignore[no-untyped-def]
    def answer(_h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        n = len(json.loads(body)["grievances"])
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"results": [{"result": result, "id": 7}] * n}).encode()
    return answer


@pytest.mark.parametrize("hostile", [
    pytest.param(lambda: _unsigned("accepted"), id="unsigned-accepted"),
    pytest.param(lambda: _unsigned("rejected"), id="unsigned-rejected"),
    pytest.param(lambda: _receipt(ROGUE, "accepted"), id="rogue-key-accepted"),
    pytest.param(lambda: _receipt(ROGUE, "rejected"), id="rogue-key-rejected"),
    pytest.param(lambda: _receipt(PINNED, "accepted", body_of=b'{"grievances": []}'), id="replayed-receipt"),
    pytest.param(lambda: _receipt(PINNED, "rejected", other_ref=True), id="names-another-complaint"),
    pytest.param(lambda: _receipt(PINNED, "accepted", terminal="T-6271-9999"), id="another-counter"),
])
def test_a_fake_server_cannot_make_the_counter_drop_a_complaint(
        counter: tuple[GrievanceQueue, GrievanceSender], fake: FakeServer, hostile) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    queue, sender = counter
    fake.answer = hostile()
    with pytest.raises(UnverifiedAnswer):
        sender.send_pending()
    [g] = queue.all()
    assert queue.unsent_count() == 1 and g.sent_at is None and g.refused is None
    fake.answer = _receipt(PINNED, "accepted")  # the real server, next round
    assert sender.send_pending() == 1 and queue.unsent_count() == 0
