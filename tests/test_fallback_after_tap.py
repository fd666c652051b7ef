"""A household's card tapped and paid, then the same household served at the same counter's fallback desk.

The reverse of ``tests/test_fallback_then_tap.py``. The desk's own limit (``fallback.<step>.<programme>``)
counted only its own FALLBACK entries, so a household paid by card could be paid again by QR or
supervisor entry at the same counter in the same cycle (reconciliation finds it later). The desk
now counts this counter's card redemptions of the card this cycle (COMMIT/FINISHED and an open
write, per programme, uploaded or not) toward the step's limit and declines ``already_served_card``
(docs/fallback.md). Also: the per-cycle card cap's decline (desk and tap alike) no longer tells the
clerk a sync helps (``over_card_cycle_limit``; ``over_card_offline_limit`` is the since-sync cap).

In-process (no pcscd): the daemon's real :class:`terminal.tap.TapProcessor` and
:class:`terminal.fallback.FallbackDesk` on one real journal, an issued NTAG215 on the reader emulator.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind, JournalEntry
from terminal.fallback import MANUAL, QR
from terminal.journal_store import CardWrite
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, decline_message
from terminal.screen.i18n import translations
from tests.fallback_support import card_and_qr, counter_with_desk
from tests.test_records_support import identity
from tests.test_terminal_caps_and_declines import Counter

CARD = identity().card_id.hex()
PASSWORD = "correct horse"


def fallback_entries(c: Counter) -> list[JournalEntry]:
    return [s.entry for s in c.journal.entries() if s.entry.fallback in (QR, MANUAL)]


def test_a_qr_after_a_paid_card_tap_is_declined_already_served_card(tmp_path: Path) -> None:
    # The clerk's case: 1 package a cycle, the card tapped and paid, then the household QR at the same counter.
    c, desk = counter_with_desk(tmp_path, {"fallback.qr.food": 1})
    card, qr = card_and_qr(packages=1, issuer_cap=10)
    try:
        assert c.present(card).status is TapStatus.ACCEPTED
        c.upload_confirmed()  # uploaded or not, the payout is this cycle's
        out = desk.qr(qr, "food", 1, "clerk-ani")
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.ALREADY_SERVED_CARD, out
        assert (out.entitled, out.remaining, out.amount) == (1, 0, 0), out
        assert "1 by card" in (out.detail or ""), out.detail
        declined = fallback_entries(c)[-1]  # the signed DECLINED entry says why
        assert (declined.kind, declined.decline_reason) == (EntryKind.DECLINED, "already_served_card")
        assert not any(e.kind is EntryKind.FALLBACK for e in fallback_entries(c))
    finally:
        c.journal.close()


def test_the_supervisor_entry_after_a_paid_tap_is_declined_too(tmp_path: Path) -> None:
    c, desk = counter_with_desk(tmp_path, {"fallback.manual.food": 1}, {"sri": PASSWORD})
    card, _ = card_and_qr(packages=1, issuer_cap=10)
    try:
        assert c.present(card).status is TapStatus.ACCEPTED
        out = desk.manual(CARD, "food", 1, "sri", PASSWORD)
        assert out.reason is DeclineReason.ALREADY_SERVED_CARD, out
    finally:
        c.journal.close()


def test_card_units_come_off_the_step_limit_and_no_more(tmp_path: Path) -> None:
    c, desk = counter_with_desk(tmp_path, {"fallback.qr.food": 3})
    card, qr = card_and_qr(packages=5, issuer_cap=10)
    try:
        assert c.present(card).status is TapStatus.ACCEPTED
        three = desk.qr(qr, "food", 3, "clerk-ani")  # the step alone allows 3; 1 went by card
        assert (three.reason, three.entitled, three.remaining) == (DeclineReason.ALREADY_SERVED_CARD, 3, 2), three
        two = desk.qr(qr, "food", 2, "clerk-ani")
        assert (two.status, two.amount, two.remaining) == (TapStatus.ACCEPTED, 2, 0), two
        again = desk.qr(qr, "food", 1, "clerk-ani")  # the step's own limit is used up by card + QR
        assert again.reason is DeclineReason.ALREADY_SERVED_CARD, again
    finally:
        c.journal.close()


def test_only_the_same_cards_same_programme_counts(tmp_path: Path) -> None:
    c, desk = counter_with_desk(tmp_path, {"fallback.qr.food": 1})
    card, qr = card_and_qr(packages=1, issuer_cap=10)
    try:
        # another card paid here, and this card's open write in another programme: neither is this household's food
        c.journal.append(EntryKind.COMMIT, CardWrite(card_id="00" * 8, programme="food", unit=Unit.PACKAGE, amount=5))
        c.journal.append(EntryKind.PENDING, lambda seq: (CardWrite(card_id=CARD, programme="cash", unit=Unit.RUPIAH,
                                                                   amount=50_000, slot_seq_before=1,
                                                                   slot_seq_after=2), b"x"))
        out = desk.qr(qr, "food", 1, "clerk-ani")
        assert out.status is TapStatus.ACCEPTED, out
    finally:
        c.journal.close()


def test_an_open_card_write_counts_until_it_is_closed(tmp_path: Path) -> None:
    # A torn write (the card pulled mid-write): maybe spent, so the desk does not pay it again.
    c, desk = counter_with_desk(tmp_path, {"fallback.qr.food": 1})
    _, qr = card_and_qr(packages=1, issuer_cap=10)
    try:
        pending = c.journal.append(EntryKind.PENDING, lambda seq: (CardWrite(
            card_id=CARD, programme="food", unit=Unit.PACKAGE, amount=1, slot_seq_before=1, slot_seq_after=2), b"x"))
        assert desk.qr(qr, "food", 1, "clerk-ani").reason is DeclineReason.ALREADY_SERVED_CARD
        # the card came back: the write did not take effect (VOIDED), nothing was given by card
        from terminal.journal_store import write_of

        c.journal.append(EntryKind.VOIDED, write_of(pending))
        assert desk.qr(qr, "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
    finally:
        c.journal.close()


def test_the_query_reads_the_card_index_not_the_whole_journal(tmp_path: Path) -> None:
    c, _ = counter_with_desk(tmp_path, {})
    seen: list[str] = []
    try:
        c.journal._db.set_trace_callback(seen.append)
        c.journal.card_programme_units(CARD, 0, 1)
        c.journal._db.set_trace_callback(None)
        selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
        plans = [" ".join(str(x) for x in row) for s in selects
                 for row in c.journal._db.execute("EXPLAIN QUERY PLAN " + s)]
        assert selects and plans, seen
        scans = [p for p in plans if re.search(r"\bSCAN (?!\(subquery)", p)]  # any table or index read whole
        assert not scans, plans
        assert any("USING INDEX verified_entries_card" in p for p in plans), plans  # the mirror (security.md)
    finally:
        c.journal.close()


@pytest.mark.parametrize(("lang", "start"), [("id", "Rumah tangga ini sudah dilayani"),
                                             ("en", "This household was already served")])
def test_the_reason_reads_plainly_in_both_languages(lang: str, start: str) -> None:
    text = translations(lang).gettext(decline_message(DeclineReason.ALREADY_SERVED_CARD))
    assert text.startswith(start) and text != decline_message(DeclineReason.ALREADY_SERVED_FALLBACK), text
    assert "card" in text or "kartu" in text, text


@pytest.mark.parametrize(("lang", "start"), [("id", "Kartu ini sudah mencapai batas loket ini untuk periode"),
                                             ("en", "This card has reached this counter's limit for this period")])
def test_the_per_cycle_cap_does_not_say_a_sync_helps(lang: str, start: str) -> None:
    text = translations(lang).gettext(decline_message(DeclineReason.OVER_CARD_CYCLE_LIMIT))
    assert text.startswith(start), text
    assert "Try again after" not in text and "Coba lagi setelah" not in text, text
