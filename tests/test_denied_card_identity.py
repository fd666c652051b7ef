"""A deny-listed card or household QR is named from the identity that verified, never from a second look.

:class:`cardlib.records.errors.DeniedCard` is raised only after the identity record (or the household
QR) verified under an issuer key of the bundle, and carries that verified identity: card id, household
reference, issuer kid, the chip UID it was verified for, which deny-list entry matched and the bundle
version. The counter names the household and journals the card from it, so the fallback desk never
verifies a QR a second time against a bundle with an emptied deny list, and the NTAG tap never re-reads
the identity record it already verified (docs/security.md "Deny lists", docs/fallback.md).

Each raise site is tested: the household QR (:func:`verify_household_qr`), the NTAG card session
(deny list by card id and by UID) and the secure card identity (:func:`verify_secure_identity`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cardlib.keys.signer import cose_key
from cardlib.records import household_qr as household_qr_module
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.bundle import SortedIdSet, TrustBundle
from cardlib.records.claims import IdentityClaims
from cardlib.records.cose import UnknownKid
from cardlib.records.errors import DeniedCard
from cardlib.records.household_label import household_label
from cardlib.records.household_qr import HouseholdQrError, household_qr_text, verify_household_qr
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from cardlib.records.secure import NO_UID, issue_secure_records, verify_secure_identity
from cardlib.records.session import CardSession
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.secure_card import SecureCardConnection
from terminal import fallback
from terminal.clock import Clock
from terminal.fallback import FallbackDesk
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.supervisor import ReaderNamePattern
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.secure_tap_support import CARD_KEYS, issue_secure, trust_bundle
from tests.secure_tap_support import HOUSEHOLD as SECURE_HOUSEHOLD
from tests.test_records_support import (
    CYCLE,
    ISSUER,
    NOW,
    ROGUE,
    STATION,
    TERMINAL,
    UID,
    ChipTag,
    bundle,
    chip_with,
    identity,
)
from tests.test_terminal_caps_and_declines import chip, counter, fresh_bundle  # noqa: F401  (counter: the fixture)

CARD = identity().card_id
HOUSEHOLD = identity().household_ref
ISSUER_KID = cose_key(ISSUER).kid


def _secure_identity_cose() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    claims = identity(NO_UID, pin=None, card_public_key=point)
    identity_cose, _ = issue_secure_records(claims, ISSUER, STATION, cycle=CYCLE, now=NOW - 86400, station_id=17)
    return identity_cose


# ---------------------------------------------------------------- every raise site carries the verified identity


def test_a_denied_household_qr_carries_the_card_household_and_issuer_it_verified_under() -> None:
    text = household_qr_text(identity(), ISSUER, NOW)
    with pytest.raises(DeniedCard) as caught:
        verify_household_qr(text, bundle(deny_cards=(CARD,)), NOW)
    denied = caught.value
    assert (denied.card_id, denied.household_ref, denied.kid) == (CARD, HOUSEHOLD, ISSUER_KID)
    assert (denied.uid, denied.listed, denied.bundle_version) == (None, "card_id", 1)  # a QR reads no chip
    assert CARD.hex() in str(denied) and HOUSEHOLD.hex() not in str(denied)  # the message names no household


@pytest.mark.parametrize("listed", ["card_id", "uid"])
def test_a_denied_ntag_card_carries_the_identity_verified_for_its_chip(listed: str) -> None:
    image = issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=NOW - 86400).image
    trust = bundle(deny_cards=(CARD,)) if listed == "card_id" else bundle(deny_uids=(UID,))
    with pytest.raises(DeniedCard) as caught:
        CardSession(ChipTag(chip_with(image, UID)), trust).read_state(NOW)
    denied = caught.value
    assert (denied.card_id, denied.household_ref, denied.kid, denied.uid) == (CARD, HOUSEHOLD, ISSUER_KID, UID)
    assert (denied.listed, denied.bundle_version) == (listed, 1)
    assert (UID.hex() if listed == "uid" else CARD.hex()) in str(denied)


def test_a_denied_secure_card_carries_its_verified_identity() -> None:
    with pytest.raises(DeniedCard) as caught:
        verify_secure_identity(_secure_identity_cose(), bundle(deny_cards=(CARD,)), NOW)
    denied = caught.value
    assert (denied.card_id, denied.household_ref, denied.kid) == (CARD, HOUSEHOLD, ISSUER_KID)
    assert (denied.uid, denied.listed, denied.bundle_version) == (NO_UID, "card_id", 1)


def test_the_deny_list_is_looked_at_only_after_the_signature_verified() -> None:
    """A forgery naming a denied card is refused for its signature: a DeniedCard always names a genuine card."""
    denied = bundle(deny_cards=(CARD,), deny_uids=(UID,))
    with pytest.raises(HouseholdQrError, match="signature"):
        verify_household_qr(household_qr_text(identity(), ROGUE, NOW), denied, NOW)
    forged = issue_card_image(identity(), ROGUE, STATION, cycle=CYCLE, now=NOW - 86400).image
    with pytest.raises(UnknownKid):
        CardSession(ChipTag(chip_with(forged, UID)), denied).read_state(NOW)
    rogue_bundle = dataclasses.replace(denied, keys=tuple(k for k in denied.keys if k.kid != ISSUER_KID))
    with pytest.raises(UnknownKid):
        verify_secure_identity(_secure_identity_cose(), rogue_bundle, NOW)


# ---------------------------------------------------------------- the callers name it from the error alone


def test_the_fallback_desk_names_a_denied_qr_from_one_verification(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The desk verifies the scanned text once, against the deny list in force, and names the card from it.

    Before, it verified the text a second time against the bundle with an emptied deny list to learn whose
    card it was: a second verification path with a weakened deny list. A recording wrapper around the real
    verifier counts the calls and the deny list each one was given.
    """
    seen: list[int] = []

    def recording(text: str, trust: TrustBundle, now: int) -> household_qr_module.HouseholdQr:
        seen.append(len(trust.deny_cards))
        return verify_household_qr(text, trust, now)

    monkeypatch.setattr(fallback, "verify_household_qr", recording)
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-FB-1", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    now = int(time.time())
    trust = dataclasses.replace(bundle(), issued_at=now - 60, expires_at=now + 86400,
                                programmes=(BundleProgramme(1, "pangan", "package", 1, 182),),
                                policies={"fallback.qr.pangan": 1}, deny_cards=SortedIdSet.from_ids([CARD], 8))
    desk = FallbackDesk(journal, lambda: trust, CounterMode.MARKET_REDEMPTION, {})
    try:
        out = desk.qr(household_qr_text(identity(), ISSUER, now), "pangan", 1, "clerk-ani")
        assert out.reason is DeclineReason.CARD_DENIED
        assert (out.card_id, out.household_ref) == (CARD.hex(), household_label(HOUSEHOLD))
        declined = [s.entry for s in journal.entries() if s.entry.kind is EntryKind.DECLINED]
        assert [(e.card_id, e.decline_reason, e.fallback) for e in declined] == [(CARD.hex(), "card_denied", "qr")]
    finally:
        journal.close()
    assert seen == [1], "the QR was verified more than once, or against an emptied deny list"


def test_the_tap_names_a_denied_card_without_reading_its_identity_again(counter,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The NTAG tap decodes the identity record once (verified), and the decline names card and household.

    Before, ``denied_household`` and ``unverified_card_id`` decoded the identity record again from the
    image after the DeniedCard. A recording wrapper around the real decoder counts the decodes.
    """
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle(
        deny_cards=bundle(deny_cards=(CARD,)).deny_cards))
    card = chip()
    decodes: list[bytes] = []
    real = IdentityClaims.from_cbor.__func__  # type: ignore[attr-defined]

    def recording(cls: type[IdentityClaims], payload: bytes) -> IdentityClaims:
        decodes.append(payload)
        return real(cls, payload)

    monkeypatch.setattr(IdentityClaims, "from_cbor", classmethod(recording))
    out = c.present(card)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.CARD_DENIED, out
    assert (out.card_id, out.household_ref) == (CARD.hex(), household_label(HOUSEHOLD))
    assert c.last_declined() == (CARD.hex(), "card_denied")
    assert len(decodes) == 1, f"the identity record was decoded {len(decodes)} times"


def test_the_secure_tap_names_a_denied_card_and_its_household(tmp_path: Path) -> None:
    """A deny-listed secure card is declined ``card_denied`` naming its card id and household.

    Before, the secure tap journalled the decline with an empty card id and showed no household,
    although the DeniedCard carried both, verified (so an auditor could not tell whose blocked card
    was presented, and the clerk could not say which household to send to the office).
    """
    card, issued = issue_secure()
    denied = dataclasses.replace(trust_bundle(), deny_cards=SortedIdSet.from_ids([issued.card_id], 8))
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-6271-0002", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    config = CounterConfig("T-6271-0002", CounterMode.MARKET_REDEMPTION, OfflineLimits(), caps={"": ACR122U},
                           card_passwords=CARD_KEYS)
    p = TapProcessor(config, journal, TERMINAL, trust=lambda: Trust(denied, time.time()),  # type: ignore[arg-type]
                     request=lambda: ("food", 1, None))  # type: ignore[arg-type, return-value]
    try:
        out = p(SecureCardConnection(card), ReaderNamePattern(re.compile(".")))
    finally:
        card.field_off()
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.CARD_DENIED, out
    assert (out.card_id, out.household_ref) == (issued.card_id.hex(),
                                                household_label(SECURE_HOUSEHOLD.household_ref)), out
    last = journal.entries()[-1].entry
    assert (last.kind, last.card_id, last.decline_reason) == (EntryKind.DECLINED, issued.card_id.hex(), "card_denied")
    journal.close()
