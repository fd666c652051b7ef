"""An insider deletes a counter's unsent journal tail (issue 17, "The trust chain above the card").

The attack: root on the counter, the daemon stopped; drop the trigger that keeps the
journal append-only, delete the last entries (not uploaded yet), restart. Every entry
left is intact, so ``huma journal verify`` passes, and the server accepts what is
uploaded. What gives it away: the signed journal head the counter reported before the
tail was cut (``journal_tail_missing``), and a card the deleted entries wrote, once
another counter sees it (``card_chain_gap``).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from server.reconcile.models import FindingKind
from server.reconcile.observations import ReconcileConfig
from terminal.clock import Clock
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import CardWrite, JournalStore
from tests.reconcile_support import audit_db, evidence, findings  # noqa: F401 - audit_db is a fixture
from tests.test_terminal_sync import TERMINAL_ID, Rig


@pytest.fixture
def rig(tmp_path: Path, audit_db: Any, world: Any, live_server: Any) -> Any:  # noqa: F811 - fixture
    r = Rig(tmp_path, world, live_server)
    yield r
    r.close()


def _redeem(journal: JournalStore, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        journal.append(EntryKind.COMMIT, CardWrite(card_id=f"6271{i:012d}", programme="food", unit=Unit.PACKAGE,
                                                   amount=1))


def _cut_tail(path: Path, keep_seq: int) -> None:
    """What the insider does with root: drop the trigger, delete past ``keep_seq``, leave no trace in the file."""
    db = sqlite3.connect(path)
    db.executescript("DROP TRIGGER entries_no_delete;")
    db.execute("DELETE FROM upload_problems WHERE entry_id IN (SELECT entry_id FROM entries WHERE seq > ?)",
               (keep_seq,))
    db.execute("DELETE FROM entries WHERE seq > ?", (keep_seq,))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def _reconcile(app: Any, grace_s: float = 0.0) -> Any:
    from server.extensions import db
    from server.reconcile.engine import reconcile

    with app.app_context():
        return reconcile(db.write_session(), ReconcileConfig(tail_grace_s=grace_s))


def _restart(rig: Rig, tmp: Path) -> JournalStore:
    rig.journal.close()
    journal = JournalStore(tmp / "journal.sqlite", terminal_id=TERMINAL_ID, signer=rig.signer,
                           clock=Clock(force_synced=True),  # re-creates the trigger: no trace left
                           receipt_key=rig.client.receipt_key)
    rig.journal = journal
    rig.client.journal = journal
    return journal


def test_a_deleted_unsent_tail_is_found_from_the_signed_head(app, rig, tmp_path: Path) -> None:
    _redeem(rig.journal, 3)  # seq 2..4
    rig.client.round()  # head 4 reported, 4 entries uploaded
    _redeem(rig.journal, 3, first=10)  # seq 5..7: the ones the insider wants gone
    hidden_head = rig.journal.head
    rig.client.report_head()  # the counter reported its head; the upload after it never happened (link down)

    _cut_tail(rig.journal.path, keep_seq=4)
    journal = _restart(rig, tmp_path)
    assert verify_journal_file(journal.path).last_seq == 5  # 1..4 + the new BOOT: the file verifies
    report = rig.client.upload_pending()
    assert report.flagged == [] and journal.unsent_count() == 0  # the server accepted everything left

    _reconcile(app, grace_s=3600)  # the counter has not had its chance to upload yet: no finding
    assert findings(app, FindingKind.JOURNAL_TAIL_MISSING) == []
    _reconcile(app)
    tails = findings(app, FindingKind.JOURNAL_TAIL_MISSING)
    assert len(tails) == 1 and tails[0].terminal_id == TERMINAL_ID
    detail = json.loads(tails[0].detail)
    assert detail["head_seq"] == hidden_head[0] == 7
    assert detail["head_entry_sha256"] == hidden_head[1].hex()
    assert detail["stored_max_seq"] == 5 and detail["rewritten"] is False  # 1..4 + the new BOOT
    assert hidden_head[1].hex() in evidence(tails[0])

    # The counter writes on past the cut: seq 7 now exists on the server, with another hash.
    _redeem(journal, 2, first=20)
    rig.client.round()
    _reconcile(app, grace_s=3600)  # no grace for this one: the chain cannot reach the head any more
    tails = findings(app, FindingKind.JOURNAL_TAIL_MISSING)
    assert len(tails) == 1 and json.loads(tails[0].detail)["rewritten"] is True
    assert tails[0].status.value == "open"


def test_a_deleted_tail_is_found_while_the_counter_stays_below_the_head(app, rig, tmp_path: Path) -> None:
    _redeem(rig.journal, 4)  # seq 2..5
    rig.client.report_head()  # head 5 reported
    _cut_tail(rig.journal.path, keep_seq=2)
    _restart(rig, tmp_path)
    _upload_up_to(rig, 2)  # the stream ends below the head (the new BOOT at seq 3 is not sent yet)
    _reconcile(app)
    tails = findings(app, FindingKind.JOURNAL_TAIL_MISSING)
    assert len(tails) == 1
    detail = json.loads(tails[0].detail)
    assert detail["head_seq"] == 5 and detail["stored_max_seq"] == 2 and detail["rewritten"] is False


def _upload_up_to(rig: Rig, seq: int) -> None:
    batch = [e for e in rig.journal.unsent(100) if e.seq <= seq]
    from terminal.sync import UploadReport

    rig.client._upload_batch(batch, UploadReport())


def test_the_finding_resolves_when_the_tail_arrives_late(app, rig) -> None:
    _redeem(rig.journal, 2)
    rig.client.report_head()
    _reconcile(app)
    assert len(findings(app, FindingKind.JOURNAL_TAIL_MISSING)) == 1
    rig.client.upload_pending()  # it was only late, not deleted
    _reconcile(app)
    assert [f.status.value for f in findings(app, FindingKind.JOURNAL_TAIL_MISSING)] == ["dismissed"]


def test_heads_the_journal_reaches_are_pruned_but_the_highest_is_kept(app, rig) -> None:
    from sqlalchemy import select

    from server.extensions import db
    from server.reconcile.models import ReportedHead

    for _ in range(3):
        _redeem(rig.journal, 1)
        rig.client.round()
    rig.client.report_head()  # the same head again: not stored twice
    with app.app_context():
        seqs = list(db.session.scalars(select(ReportedHead.seq).where(ReportedHead.terminal_id == TERMINAL_ID)))
    assert seqs == [4]


def test_a_head_signed_by_another_key_is_refused(app, rig, world) -> None:
    import base64

    from cardlib.records.statements import sign_head
    from tests.test_terminal_support import new_signer

    forged = sign_head(new_signer(), TERMINAL_ID, 1, 99, bytes(32), dt.datetime.now(dt.UTC).timestamp())
    r = world.client.post("/api/v1/journal/heads", json={"head": base64.b64encode(forged).decode()})
    assert r.status_code in (401, 403, 404), r.get_json()
    own = sign_head(rig.signer, "T-6271-9999", 1, 99, bytes(32), dt.datetime.now(dt.UTC).timestamp())
    r = world.client.post("/api/v1/journal/heads", json={"head": base64.b64encode(own).decode()})
    assert r.status_code == 400 and r.get_json()["error"]["reason"] == "bad_head"


# ----------------------------------------------------------------------------- the card side


def test_a_deleted_tail_shows_as_a_card_chain_gap_once_another_counter_sees_the_card(app, audit_db, world) -> None:  # noqa: F811 - fixture
    """No head report needed: the card carries its slot seq, the next counter that writes it
    closes a chain whose middle link is missing (already reported before issue 17; held here)."""
    from simulator.journals import District
    from tests.reconcile_support import install, run, upload
    from tests.test_reconcile import _ms

    d = District.new(2, 2, seed=11)
    for t in d.terminals:
        t.boot(_ms(0, 30))
    t, other = d.terminals
    victim = d.cards[0]
    t.redeem(victim, _ms(1), "food", 1)  # slot 1 → 2, uploaded
    tail = t.redeem(victim, _ms(2), "food", 1)  # slot 2 → 3: the tail the insider deletes
    install(app, world, d)
    cut = range(tail[0].entry.seq, tail[-1].entry.seq + 1)
    for r in upload(world, t, t.messages(skip=cut)):
        assert r.status_code == 200, r.get_json()
    run(app)
    assert findings(app, FindingKind.CARD_CHAIN_GAP) == []  # nobody has seen the card since: silent

    other.redeem(victim, _ms(5), "food", 1)  # slot 3 → 4 at another counter
    for r in upload(world, other, other.messages()):
        assert r.status_code == 200, r.get_json()
    run(app)
    gaps = findings(app, FindingKind.CARD_CHAIN_GAP)
    assert len(gaps) == 1 and gaps[0].card_id == victim.card_id
    assert json.loads(gaps[0].detail) == {"from_seq": 2, "to_seq": 3}
    assert findings(app, FindingKind.TERMINAL_GAP) == []  # a cut *tail* leaves no gap in the terminal's chain
