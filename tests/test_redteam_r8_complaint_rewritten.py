"""Red team r8, a dishonest clerk who can write the counter's files: a complaint's words rewritten before it leaves.

Red team round 6 made each complaint a signed ``COMPLAINT`` journal entry, so one erased from
``grievances.sqlite`` is still sent as a stub and the server reports ``complaint_not_received``. The entry carries
only the complaint's id, nothing of what it says: the clerk who cannot erase a complaint against him can still
rewrite it. One ``UPDATE`` before the next sync ("the clerk kept my Rp250,000", staff conduct, card X becomes
"received everything, thank you", other, card X) and the server stores the new words as the complaint the counter
journalled: the journalled id arrives, so no finding, and the auditor reads a thank-you note. The link can be moved
too (another household's card, a receipt code of another counter's payout).

Real counter code (journal, queue, sender, sync client) against the real server app on 127.0.0.1; reconciliation
with no grace. The test asserts the DEFENCE: the rewritten complaint is not taken as the one the counter
journalled, and reconciliation names that complaint. It failed on the code before this round.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from server.reconcile.models import FindingKind
from server.reconcile.observations import ReconcileConfig
from terminal.grievances import GrievanceQueue, GrievanceSender
from terminal.sync import HttpApi
from tests.reconcile_support import incremental_then_full
from tests.test_terminal_sync import TERMINAL_ID, rig  # noqa: F401 - rig is a fixture

CARD = "6271000000000abc"
EDITS = {
    "words": "UPDATE grievances SET text = 'received everything, thank you', category = 'other'",
    "link": "UPDATE grievances SET card_id = '6271000000000def'",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_complaint_rewritten_in_the_counter_file_is_not_taken_as_the_journalled_one(
        app: Any, rig: Any, tmp_path: Path, edit: str) -> None:  # noqa: F811
    from server.extensions import db
    from server.grievances import Grievance

    queue = GrievanceQueue(tmp_path / "grievances.sqlite", journal=rig.journal)  # as terminal.daemon wires it
    rig.client.grievances = GrievanceSender(HttpApi(rig.proxy.url, timeout_s=30), queue, rig.signer, TERMINAL_ID,
                                            receipt_key=rig.receipt_key)
    try:
        honest = queue.add("nothing handed out today", "not_received", card_id=CARD)
        g = queue.add("the clerk kept my Rp250,000; the screen said paid", "staff", card_id=CARD)
        with sqlite3.connect(queue.path) as clerk:  # before the next sync, with the file's permissions
            clerk.execute(EDITS[edit] + " WHERE client_ref = ?", (g.client_ref,))
        rig.client.round()  # head, journal (with both COMPLAINT entries), then the complaints
        with app.app_context():
            stored = {r.client_ref: (r.text, r.category, r.card_id) for r in db.session.scalars(select(Grievance))}
            assert stored[honest.client_ref][0] == "nothing handed out today"  # an honest complaint goes through
            _result, found = incremental_then_full(ReconcileConfig(watermark_margin_s=0, complaint_grace_s=0))
        named = {json.loads(v[7]).get("client_ref") for v in found.values()
                 if v[0] == FindingKind.COMPLAINT_NOT_RECEIVED.value}
        rewritten = stored.get(g.client_ref)
        assert g.client_ref in named, f"the rewritten complaint was stored as journalled {rewritten}: no finding"
        assert honest.client_ref not in named
        assert rewritten is None  # the server did not file the clerk's words under the beneficiary's complaint
    finally:
        rig.client.grievances = None
        queue.close()


def test_the_id_seals_every_field_and_a_random_id_seals_nothing() -> None:
    from cardlib.records.complaint import complaint_id, new_seal, sealed, seals
    from cardlib.records.journal import new_entry_id

    seal = new_seal()
    fields = ("2026-12-07T10:00:00+00:00", "ABCD-EF23", CARD, None, "staff", "the clerk kept my Rp250,000")
    ref = complaint_id(seal, *fields)
    assert sealed(ref) and seals(ref, seal, *fields)
    for i in range(len(fields)):
        changed = list(fields)
        value = fields[i]
        changed[i] = "6271000000000def" if value is None else value + " "
        assert not seals(ref, seal, *changed), i
    assert not seals(ref, new_seal(), *fields)
    assert not sealed(new_entry_id())  # a counter of before: a random UUIDv7, taken as before
