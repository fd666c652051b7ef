"""The QR fallback's own decline reasons (docs/fallback.md): a step the bundle does not enable is
``fallback_not_enabled`` (not "nothing left"), a scan that is no household QR at all is
``not_a_household_qr`` (scan again), a QR that decodes but fails its signature stays
``card_signature_invalid``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cardlib.provision.qr import household_qr
from cardlib.records.bundle import SortedIdSet
from cardlib.records.household_label import household_label
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from firmware_config.models import CounterMode
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, qr_decodes, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.policy import DeclineReason, decline_message
from tests.fallback_support import post
from tests.test_fallback import POLICIES, PROGRAMMES, _qr_from_png, counter  # noqa: F401  (the fixture)
from tests.test_records_support import CYCLE, ISSUER, STATION, TERMINAL, bundle, identity


def _reasons(journal: JournalStore) -> list[str | None]:
    return [s.entry.decline_reason for s in journal.entries() if s.entry.kind is EntryKind.DECLINED]


def test_a_programme_without_a_qr_limit_is_not_enabled_not_used_up(tmp_path: Path) -> None:
    """A cash counter, and the bundle sets no ``fallback.qr.tunai``."""
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-FB-1", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    trust = dataclasses.replace(bundle(), issued_at=int(time.time()) - 60, expires_at=int(time.time()) + 86400,
                                programmes=PROGRAMMES, policies=POLICIES)
    desk = FallbackDesk(journal, lambda: trust, CounterMode.CASH_PAYOUT, {"sri": supervisor_hash("kunci-sri-77")})
    try:
        cash = desk.qr(_qr_from_png(), "tunai", 250_000, "clerk-ani", served=["tunai"])
        assert cash.reason is DeclineReason.FALLBACK_NOT_ENABLED
        assert _reasons(journal) == ["fallback_not_enabled"]
    finally:
        journal.close()
    assert "not enabled" in decline_message(DeclineReason.FALLBACK_NOT_ENABLED)


def test_a_scan_that_is_no_household_qr_says_scan_again(counter) -> None:  # noqa: F811
    url, journal = counter
    for junk in ("NOTAQR", "https://example.org/x", "AAAA"):
        assert not qr_decodes(junk)
        got = post(url, "/api/fallback/qr", {"qr": junk, "clerk": "clerk-ani", "programme": "pangan"})
        assert (got["status"], got["reason"]) == ("declined", "not_a_household_qr"), junk
    assert "Scan again" in decline_message(DeclineReason.NOT_A_HOUSEHOLD_QR)
    assert _reasons(journal) == ["not_a_household_qr"] * 3


def test_a_qr_that_decodes_but_is_not_signed_by_an_issuer_stays_a_signature_decline(counter) -> None:  # noqa: F811
    url, journal = counter
    now = int(time.time())
    issued = issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=now)
    forged = household_qr(issued.identity_cose, TERMINAL, now)  # a well-formed QR, signed by a non-issuer key
    assert qr_decodes(forged)
    got = post(url, "/api/fallback/qr", {"qr": forged, "clerk": "clerk-ani", "programme": "pangan"})
    assert (got["status"], got["reason"]) == ("declined", "card_signature_invalid")


def test_a_deny_listed_qr_that_verified_names_its_card_and_household(tmp_path: Path) -> None:
    """The QR verified under the bundle's issuer key before the deny list refused it: its card id and
    household are authentic, so the decline journals the card and shows the household label (as the
    NTAG tap does for a deny-listed card); a QR that did not verify still names nothing."""
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-FB-1", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    card = identity().card_id
    trust = dataclasses.replace(bundle(), issued_at=int(time.time()) - 60, expires_at=int(time.time()) + 86400,
                                programmes=PROGRAMMES, policies=POLICIES,
                                deny_cards=SortedIdSet.from_ids([card], 8))
    desk = FallbackDesk(journal, lambda: trust, CounterMode.MARKET_REDEMPTION, {})
    try:
        text = _qr_from_png()
        denied = desk.qr(text, "pangan", 1, "clerk-ani")
        assert denied.reason is DeclineReason.CARD_DENIED
        assert (denied.card_id, denied.household_ref) == (card.hex(), household_label(identity().household_ref))
        now = int(time.time())
        forged = household_qr(issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=now).identity_cose,
                              TERMINAL, now)
        refused = desk.qr(forged, "pangan", 1, "clerk-ani")
        assert refused.reason is DeclineReason.CARD_SIGNATURE_INVALID
        assert (refused.card_id, refused.household_ref) == (None, None)
        declined = [s.entry for s in journal.entries() if s.entry.kind is EntryKind.DECLINED]
        assert [(e.card_id, e.decline_reason) for e in declined] == [
            (card.hex(), "card_denied"), (None, "card_signature_invalid")]
    finally:
        journal.close()
