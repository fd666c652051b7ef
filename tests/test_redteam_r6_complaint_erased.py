"""Red team r6, a dishonest clerk with write access to the counter's files: the complaint against him vanishes.

A beneficiary complains at the clerk's own counter ("the screen said paid, I got nothing",
docs/grievances.md). The complaint waits in ``grievances.sqlite`` beside the journal until a sync round
delivers it. That file is plain SQLite: nothing in it is signed, chained or counted anywhere the server
sees. The journal file's insider is a defended actor (docs/security.md "What an insider with write access
to the journal file cannot fake": marks count only with the server's signed receipt; deleted entries show
in the signed head). For complaints the same person runs one statement before the next sync:

- ``DELETE FROM grievances``: the complaint is gone, the sync sends nothing, no signed head or entry ever
  named it, so the server and the auditor never learn it existed;
- ``UPDATE grievances SET sent_at = …`` (or ``refused = …``): the counter's page says "at the server" (or
  "refused"); it is never offered again, and nothing tells the auditor either.

The stand-in server is :class:`tests.test_sync_authenticity.FakeServer` answering as the real server does
(receipt signed by the pinned key), as in tests/test_redteam_r3_fake_server_complaints.py.

The test asserts the DEFENCE: after the edit, the next sync round still delivers the complaint. Strict
xfail: the fix needs a signed trace of every complaint taken (a journal entry kind naming the complaint's
``client_ref``, so the signed head covers it and reconciliation can report a journalled complaint the
server never received), in cardlib/records/journal.py, server/upload.py and server/models.py, which are
not this red team's to edit (docs/security.md, red team round 6, known gaps).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from cardlib.records.statements import ReceiptLine, sign_receipt
from terminal.grievances import GrievanceQueue, GrievanceSender
from terminal.sync import HttpApi
from tests.test_sync_authenticity import PINNED, FakeServer, fake  # noqa: F401 - fake is a fixture
from tests.test_terminal_support import new_signer

TID = "T-6271-0606"


def _honest(_h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """What the real server answers: every complaint stored, a receipt signed by the pinned key."""
    refs = [g["client_ref"] for g in json.loads(body)["grievances"]]
    lines = [ReceiptLine(bytes.fromhex(r), n + 1, "accepted", None) for n, r in enumerate(refs)]
    receipt = sign_receipt(PINNED, TID, body, lines, now=time.time())
    return 200, {"Content-Type": "application/json"}, json.dumps(
        {"results": [{"result": "accepted"}] * len(refs), "receipt": base64.b64encode(receipt).decode()}).encode()


@pytest.fixture
def counter(tmp_path: Path, fake: FakeServer) -> Iterator[tuple[GrievanceQueue, GrievanceSender]]:  # noqa: F811
    queue = GrievanceQueue(tmp_path / "grievances.sqlite")
    fake.answer = _honest
    yield queue, GrievanceSender(HttpApi(fake.url, timeout_s=5), queue, new_signer(), TID,
                                 receipt_key=PINNED.public_key)
    queue.close()


@pytest.mark.xfail(strict=True, reason="complaints are kept outside the signed journal: one SQL statement on "
                   "grievances.sqlite erases or parks a complaint before it is sent, and no signed record names it "
                   "(fix needs a journal entry kind: cardlib/records/journal.py, server/upload.py, server/models.py)")
@pytest.mark.parametrize("edit", [
    "DELETE FROM grievances",
    "UPDATE grievances SET sent_at = '2026-12-07T10:00:00+00:00', server_id = 1",
    "UPDATE grievances SET refused = 'category'",
])
def test_a_complaint_edited_out_of_the_counter_file_still_reaches_the_server(
        counter: tuple[GrievanceQueue, GrievanceSender], fake: FakeServer, edit: str) -> None:  # noqa: F811
    queue, sender = counter
    g = queue.add("the clerk kept my Rp250,000; the screen said paid", "not_received", receipt_code="ABCD-EF23")
    # The clerk, before the next sync, with the file's permissions (the daemon keeps it open; WAL allows it).
    with sqlite3.connect(queue.path) as clerk:
        clerk.execute(edit)
    sender.send_pending()
    sent = [item["client_ref"] for _m, _p, _h, body in fake.requests for item in json.loads(body)["grievances"]]
    assert g.client_ref in sent, "the complaint never left the counter and no signed record names it"
