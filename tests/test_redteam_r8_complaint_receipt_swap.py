"""Red team r8, a dishonest clerk with write access to the counter's files: a complaint parked by the journal's receipt.

Since red team round 6 a "sent" mark in ``grievances.sqlite`` counts only with "the server's receipt kept beside
it (verified under the pinned key, naming that complaint)" (docs/grievances.md), and a complaint whose mark does
not verify is sent again. But the counter's complaint id *is* the ``entry_id`` of its signed ``COMPLAINT`` journal
entry, and the journal upload that carried that entry came back with a receipt by the same pinned key, for the
same terminal, naming that id ``accepted``. The journal keeps that receipt (``upload_receipts``, readable by whoever
reads the journal file). Copied into the complaint's row as its proof, it passed the re-check: the complaint was
never sent, and the counter's page said "at the server".

What still caught it: the server's ``complaint_not_received`` (72 h later). What the clerk gained over a plain
``DELETE`` (red team round 6): no stub with "erased" in its text is sent, nothing on the counter's own page shows it.

Real counter code (journal, queue, sender, sync client) against the real server app on 127.0.0.1.
The test asserts the DEFENCE: after the swap, the next round still delivers the complaint. It failed on the code
before this round (the mark was believed).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import select

from terminal.grievances import GrievanceQueue, GrievanceSender
from terminal.sync import HttpApi
from tests.test_terminal_sync import TERMINAL_ID, rig  # noqa: F401 - rig is a fixture


def _stored_refs(app: Any) -> set[str]:
    from server.extensions import db
    from server.grievances import Grievance

    with app.app_context():
        return {r for (r,) in db.session.execute(select(Grievance.client_ref)) if r}


def test_the_journal_upload_receipt_does_not_park_a_complaint(app: Any, rig: Any, tmp_path: Path) -> None:  # noqa: F811
    queue = GrievanceQueue(tmp_path / "grievances.sqlite", journal=rig.journal)  # as terminal.daemon wires it
    sender = GrievanceSender(HttpApi(rig.proxy.url, timeout_s=30), queue, rig.signer, TERMINAL_ID,
                             receipt_key=rig.receipt_key)
    try:
        g = queue.add("the clerk kept my Rp250,000; the screen said paid", "staff", card_id="6271000000000abc")
        rig.client.report_head()
        rig.client.upload_pending()  # the journal, with the COMPLAINT entry, reaches the server (a cut round)
        with sqlite3.connect(rig.journal.path) as files:  # the clerk reads what the journal keeps
            receipts = [bytes(m) for (m,) in files.execute("SELECT message FROM upload_receipts")]
        assert receipts
        with sqlite3.connect(queue.path) as clerk:
            clerk.execute("UPDATE grievances SET sent_at = '2026-12-07T10:00:00+00:00', server_id = 2, receipt = ?"
                          " WHERE client_ref = ?", (receipts[-1], g.client_ref))
        sender.send_pending()
        assert g.client_ref in _stored_refs(app), "the complaint never left the counter"
        kept = {q.client_ref: q for q in queue.all()}
        assert kept[g.client_ref].text.startswith("the clerk kept my")
    finally:
        queue.close()
