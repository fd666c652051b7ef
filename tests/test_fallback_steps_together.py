"""QR and supervisor entry at one counter count against one allowance (docs/fallback.md).

The desk's limit of a step (``fallback.<step>.<programme>``) counted only that step's own FALLBACK
entries, so with ``fallback.qr.food=1`` and ``fallback.manual.food=1`` a clerk served a household
entitled to 1 package by QR and then again by a supervisor's entry: 2 packages at one counter in one
cycle. Now a step's limit caps everything this counter gave the card by fallback this cycle, both
steps together (the most permissive step is the most the desk gives; steps do not stack), read through
the journal's card index (:meth:`terminal.journal_store.JournalStore.card_programme_units`).

In-process (no pcscd): the daemon's real :class:`terminal.fallback.FallbackDesk` on a real journal.
"""

from __future__ import annotations

import re
from pathlib import Path

from cardlib.records.journal import EntryKind
from terminal.fallback import MANUAL, QR, FallbackDesk
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.fallback_support import card_and_qr, counter_with_desk
from tests.test_records_support import identity
from tests.test_terminal_caps_and_declines import Counter

CARD = identity().card_id.hex()
PASSWORD = "correct horse"
BOTH = {"fallback.qr.food": 1, "fallback.manual.food": 1}


def desk_at(tmp_path: Path, policies: dict[str, int]) -> tuple[Counter, FallbackDesk]:
    return counter_with_desk(tmp_path, policies, {"sri": PASSWORD})


def paid(c: Counter) -> list[tuple[str | None, int | None]]:
    return [(s.entry.fallback, s.entry.amount) for s in c.journal.entries() if s.entry.kind is EntryKind.FALLBACK]


def test_qr_then_supervisor_entry_pays_the_household_once(tmp_path: Path) -> None:
    c, desk = desk_at(tmp_path, BOTH)
    _, qr = card_and_qr(packages=1, issuer_cap=10)
    try:
        assert desk.qr(qr, "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
        out = desk.manual(CARD, "food", 1, "sri", PASSWORD)
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.FALLBACK_USED_UP, out
        assert (out.entitled, out.remaining, out.amount) == (1, 0, 0), out
        assert "1 already served by fallback" in (out.detail or ""), out.detail
        assert paid(c) == [(QR, 1)]
        declined = [s.entry for s in c.journal.entries() if s.entry.kind is EntryKind.DECLINED][-1]
        assert (declined.fallback, declined.approved_by, declined.decline_reason) == (
            MANUAL, "sri", "fallback_used_up")
    finally:
        c.journal.close()


def test_supervisor_entry_then_qr_pays_the_household_once(tmp_path: Path) -> None:
    c, desk = desk_at(tmp_path, BOTH)
    _, qr = card_and_qr(packages=1, issuer_cap=10)
    try:
        assert desk.manual(CARD, "food", 1, "sri", PASSWORD).status is TapStatus.ACCEPTED
        out = desk.qr(qr, "food", 1, "clerk-ani")
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.FALLBACK_USED_UP, out
        assert paid(c) == [(MANUAL, 1)]
    finally:
        c.journal.close()


def test_the_more_permissive_step_gives_only_its_own_limit_in_all(tmp_path: Path) -> None:
    # QR allows 3, supervisor entry 1: the supervisor's 1 comes off the QR's 3, and after the QR's 3
    # the supervisor can add nothing.
    c, desk = desk_at(tmp_path, {"fallback.qr.food": 3, "fallback.manual.food": 1})
    _, qr = card_and_qr(packages=5, issuer_cap=10)
    try:
        assert desk.manual(CARD, "food", 1, "sri", PASSWORD).status is TapStatus.ACCEPTED
        three = desk.qr(qr, "food", 3, "clerk-ani")
        assert (three.reason, three.entitled, three.remaining) == (DeclineReason.NOT_ENOUGH_LEFT, 3, 2), three
        two = desk.qr(qr, "food", 2, "clerk-ani")
        assert (two.status, two.amount, two.remaining) == (TapStatus.ACCEPTED, 2, 0), two
        assert desk.manual(CARD, "food", 1, "sri", PASSWORD).reason is DeclineReason.FALLBACK_USED_UP
        assert desk.qr(qr, "food", 1, "clerk-ani").reason is DeclineReason.FALLBACK_USED_UP
        assert paid(c) == [(MANUAL, 1), (QR, 2)]
    finally:
        c.journal.close()


def test_another_card_is_not_counted(tmp_path: Path) -> None:
    c, desk = desk_at(tmp_path, BOTH)
    _, qr = card_and_qr(packages=1, issuer_cap=10)
    try:
        assert desk.manual("00" * 8, "food", 1, "sri", PASSWORD).status is TapStatus.ACCEPTED  # another household
        assert desk.qr(qr, "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
    finally:
        c.journal.close()


def test_the_desk_reads_the_card_index_not_the_whole_journal(tmp_path: Path) -> None:
    # Every request used to read the whole journal (1000 entries a page) to count the step's units.
    c, desk = desk_at(tmp_path, BOTH)
    _, qr = card_and_qr(packages=1, issuer_cap=10)
    seen: list[str] = []
    try:
        c.journal._db.set_trace_callback(seen.append)
        assert desk.qr(qr, "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
        c.journal._db.set_trace_callback(None)
        selects = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "FROM temp.verified_entries" in s]
        plans = [" ".join(str(x) for x in row) for s in selects
                 for row in c.journal._db.execute("EXPLAIN QUERY PLAN " + s)]
        reads = [p for p in plans if re.search(r"\b(SCAN|SEARCH) (entries|e|c)\b", p)]
        assert reads, (plans, selects)
        # each read of the journal's rows (the daemon's verified mirror of them, docs/security.md) goes through
        # the card's index: no scan, no range of seqs
        assert all("USING INDEX verified_entries_card (card_id=?" in p for p in reads), reads
    finally:
        c.journal.close()
