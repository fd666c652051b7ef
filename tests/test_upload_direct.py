"""A lone small upload stored without a session (server.upload.store_extension_direct, issue 21).

When no other upload waits to share a commit, a batch that plainly extends its terminal's chain is
stored on the request's connection by the driver alone; anything else (a fork, a replay, an entry id
stored under another terminal) falls back to the classifier (server.upload.store_entries) with the
same results as before, on SQLite and PostgreSQL, and nothing is stored twice or acknowledged unstored.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import func, select

from cardlib.records.journal import JournalEntry, sign_entry


def _results(r: Any) -> list[str]:
    return [x["result"] for x in r.get_json()["results"]]


def _direct(app: Any) -> int:
    group = app.extensions.get("huma.group_commit")
    return 0 if group is None else int(group.direct)


def _rows(app: Any, terminal_id: str) -> int:
    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(JournalEntryRow)
                                     .where(JournalEntryRow.terminal_id == terminal_id)) or 0)


def test_a_lone_extension_is_stored_directly_and_receipted(app: Any, world: Any) -> None:
    from cardlib.records.statements import verify_receipt
    from server.receipts import receipt_signer

    t = world.enrol("T-DIRECT-1")
    assert world.upload(t, [t.append().message]).status_code == 200  # inserts the entries' cycle: not direct
    before = _direct(app)
    batch = [t.append() for _ in range(3)]
    r = world.upload(t, [s.message for s in batch])
    assert r.status_code == 200 and _results(r) == ["accepted"] * 3
    assert _direct(app) == before + 1
    with app.app_context():
        receipt = verify_receipt(base64.b64decode(r.get_json()["receipt"]), receipt_signer(app).public_key)
    assert [line.result for line in receipt.lines] == ["accepted"] * 3
    assert [line.entry_id for line in receipt.lines] == [s.entry.entry_id for s in batch]
    assert _rows(app, t.terminal_id) == 4
    # the same batch again: no plain extension any more; the classifier answers duplicate, stores nothing
    again = world.upload(t, [s.message for s in batch])
    assert again.status_code == 200 and _results(again) == ["duplicate"] * 3
    assert _direct(app) == before + 1 and _rows(app, t.terminal_id) == 4


def test_a_fork_of_a_stored_entry_is_a_conflict_not_a_direct_store(app: Any, world: Any) -> None:
    t = world.enrol("T-DIRECT-2")
    assert world.upload(t, [t.append().message]).status_code == 200
    assert world.upload(t, [t.append().message, t.append().message]).status_code == 200
    before = _direct(app)
    last = t.entries[-1]
    forged = sign_entry(JournalEntry(**{**last.entry.__dict__, "amount": 99}), t.private_key, t.kid)
    r = world.upload(t, [forged.message])
    assert r.status_code == 409 and _results(r) == ["conflict"]
    assert _direct(app) == before and _rows(app, t.terminal_id) == 3


def test_an_entry_id_stored_by_another_terminal_leaves_the_rest_accepted_once(app: Any, world: Any) -> None:
    """PostgreSQL's statement inserts the first row and skips the reused id (then the classifier counts
    the first accepted, ``stored_already``); SQLite rolls both back and the classifier stores the first:
    the same answer on both, each row stored once."""
    a = world.enrol("T-DIRECT-3")
    b = world.enrol("T-DIRECT-4")
    assert world.upload(a, [a.append().message]).status_code == 200
    assert world.upload(b, [b.append().message]).status_code == 200
    stolen = a.entries[0].entry.entry_id
    batch = [b.append(), b.append(entry_id=stolen)]
    r = world.upload(b, [s.message for s in batch])
    assert r.status_code == 409 and _results(r) == ["accepted", "conflict"]
    assert _rows(app, b.terminal_id) == 2 and _rows(app, a.terminal_id) == 1
    again = world.upload(b, [s.message for s in batch])
    assert _results(again) == ["duplicate", "conflict"] and _rows(app, b.terminal_id) == 2
