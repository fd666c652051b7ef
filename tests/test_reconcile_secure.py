"""Reconciliation of `secure` cards' counters (docs/secure-card.md §5.1): entries without a tag UID
carry the counter the card signed; one counter in two taps is a replayed answer or a cloned key."""

from __future__ import annotations

import json

from cardlib.records.journal import EntryKind
from server.reconcile.models import FindingKind
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    audit_db,
    findings,
    install,
    run,
    upload_all,
)
from tests.test_reconcile import _ms, _two_region_district

CARD = "62710000000a0001"


def _secure_tap(t, ms: int, counter: int, kind: EntryKind = EntryKind.BALANCE, seq: int = 3):  # type: ignore[no-untyped-def]
    claims = {"card_id": CARD, "ntag_counter": counter, "slot_seq_before": seq}
    if kind is EntryKind.PENDING:
        claims |= {"programme": "food", "amount": 1, "slot_seq_after": seq + 1,
                   "state_hash_prev": bytes([seq]) * 32, "state_hash_new": bytes([seq + 1]) * 32}
        return t.append(kind, ms, **claims), t.append(EntryKind.COMMIT, ms + 900, **claims)
    return (t.append(kind, ms, **claims),)


def test_a_counter_signed_in_two_taps_is_one_finding(app, audit_db, world) -> None:  # type: ignore[no-untyped-def]  # noqa: F811 - fixture
    d, _ = _two_region_district()
    home, other = d.terminals[0], d.terminals[2]
    honest = [*_secure_tap(home, _ms(2), 5, EntryKind.PENDING), *_secure_tap(home, _ms(3), 6)]
    replay = _secure_tap(other, _ms(4), 5)  # the answer of counter 5 again, at another counter
    _secure_tap(home, _ms(5), 8)  # gaps (7 was the station, a declined tap, ...) are normal
    install(app, world, d)
    upload_all(world, d)
    run(app)
    found = findings(app, FindingKind.CARD_COUNTER_REPEATED)
    assert len(found) == 1 and found[0].card_id == CARD
    assert json.loads(found[0].detail) == {"counters": [5], "terminals": sorted({home.terminal_id, other.terminal_id})}
    assert json.loads(found[0].evidence) == [honest[0].entry.entry_id.hex(), replay[0].entry.entry_id.hex()]
    assert not findings(app, FindingKind.COUNTER_BACKWARDS)  # the NTAG check keys on the UID


def test_pending_and_commit_share_their_counter_without_a_finding(app, audit_db, world) -> None:  # type: ignore[no-untyped-def]  # noqa: F811 - fixture
    d, _ = _two_region_district()
    t = d.terminals[0]
    _secure_tap(t, _ms(2), 1, EntryKind.PENDING, seq=0)
    _secure_tap(t, _ms(3), 2, EntryKind.PENDING, seq=1)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    assert not findings(app, FindingKind.CARD_COUNTER_REPEATED)

