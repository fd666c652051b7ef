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

The test asserts the DEFENCE: after the edit, the next sync round still delivers the complaint's id. It
failed (strict xfail) until every complaint became a signed journal entry (``EntryKind.COMPLAINT``, its
``entry_id`` the complaint's ``client_ref``, covered by the signed head) and the sender began each round by
holding the file to what is signed: a "sent"/"refused" mark needs the server's kept receipt, and a
journalled complaint missing from the file is put back (its text lost). The server's side, a journalled
complaint it never receives: ``complaint_not_received`` (tests/test_reconcile_complaints.py).
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
from terminal.grievances import ERASED_TEXT, GrievanceQueue, GrievanceSender
from terminal.journal_store import JournalStore
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
    signer = new_signer()
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id=TID, signer=signer)
    queue = GrievanceQueue(tmp_path / "grievances.sqlite", journal=journal)  # as terminal.daemon wires it
    fake.answer = _honest
    yield queue, GrievanceSender(HttpApi(fake.url, timeout_s=5), queue, signer, TID, receipt_key=PINNED.public_key)
    queue.close()
    journal.close()


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
    kept = {q.client_ref: q for q in queue.all()}
    assert kept[g.client_ref].sent_at is not None  # now with the server's receipt beside the mark
    if edit.startswith("DELETE"):
        assert kept[g.client_ref].text.startswith(ERASED_TEXT[:20])  # the words are lost, the id is not


def test_an_honest_counter_sends_each_complaint_once(counter: tuple[GrievanceQueue, GrievanceSender],
                                                      fake: FakeServer) -> None:  # noqa: F811
    """The receipt kept beside a mark proves it: later rounds send nothing again."""
    queue, sender = counter
    g = queue.add("nothing handed out", "not_received", receipt_code="ABCD-EF23")
    assert sender.send_pending() == 1
    assert sender.send_pending() == 0
    assert queue.recheck(PINNED.public_key, TID) == (0, 0)
    assert [item["client_ref"] for _m, _p, _h, body in fake.requests
            for item in json.loads(body)["grievances"]] == [g.client_ref]


def test_a_forged_receipt_does_not_park_a_complaint(counter: tuple[GrievanceQueue, GrievanceSender],
                                                     fake: FakeServer) -> None:  # noqa: F811
    """A receipt signed by another key, or the server's receipt for another complaint, proves nothing."""
    queue, sender = counter
    other = queue.add("first", "other", receipt_code="ABCD-EF23")
    sender.send_pending()
    (real,) = [bytes(r) for (r,) in sqlite3.connect(queue.path).execute(
        "SELECT receipt FROM grievances WHERE client_ref = ?", (other.client_ref,))]
    g = queue.add("second", "staff", receipt_code="ABCD-EF23")
    forged = sign_receipt(new_signer(), TID, b"{}", [ReceiptLine(bytes.fromhex(g.client_ref), 9, "accepted", None)],
                          now=time.time())
    for receipt in (real, forged):
        with sqlite3.connect(queue.path) as clerk:
            clerk.execute("UPDATE grievances SET sent_at = '2026-12-07T10:00:00+00:00', server_id = 9, receipt = ?"
                          " WHERE client_ref = ?", (receipt, g.client_ref))
        fake.requests.clear()
        assert sender.send_pending() == 1
        assert [item["client_ref"] for _m, _p, _h, body in fake.requests
                for item in json.loads(body)["grievances"]] == [g.client_ref]
