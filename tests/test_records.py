"""Claims, layout and every verification rejection of a card (docs/card-format.md §3-5)."""

from __future__ import annotations

import datetime as dt

import cbor2
import pytest

from cardlib.keys.signer import sign1_with
from cardlib.records.claims import (
    Entitlement,
    IdentityClaims,
    PinMismatch,
    PinVerifier,
    SlotClaims,
    Unit,
    state_hash,
)
from cardlib.records.errors import (
    BadSignature,
    ClaimsError,
    CorruptSlot,
    DeniedCard,
    Expired,
    ForkDetected,
    LayoutError,
    NotYetValid,
    NoValidState,
    RevokedKid,
    UidMismatch,
    UnknownKid,
)
from cardlib.records.layout import CardLayout, SlotName, build_image, parse_image
from cardlib.records.session import CardSession, slot_aad
from tests.test_records_support import (
    CASH,
    CYCLE,
    FOOD,
    ISSUER,
    NOW,
    OTHER_UID,
    ROGUE,
    STATION,
    TERMINAL,
    UID,
    ChipTag,
    bundle,
    chip_with,
    identity,
    issue,
)

DAY = 86_400


def session_for(image: bytes, uid: bytes = UID, **bundle_kw: object) -> tuple[CardSession, ChipTag]:
    tag = ChipTag(chip_with(image, uid))
    return CardSession(tag, bundle(**bundle_kw)), tag  # type: ignore[arg-type]


def slot_cose(seq: int, prev: bytes, *, signer=TERMINAL, uid: bytes = UID, id_cose: bytes, remaining=None) -> bytes:
    claims = SlotClaims(
        seq=seq, cycle=CYCLE, remaining=remaining or {FOOD: 1, CASH: 100_000, 3: 4},
        terminal_id=17, terminal_seq=seq, time=NOW, nfc_counter=5, prev_hash=prev,
    )
    return sign1_with(signer, claims.to_cbor(), slot_aad(uid, state_hash(id_cose)))


# --------------------------------------------------------------------------- claims


def test_identity_claims_round_trip_and_size() -> None:
    ident = identity()
    encoded = ident.to_cbor()
    assert IdentityClaims.from_cbor(encoded) == ident
    assert len(encoded) == 83  # docs/card-format.md §3 budget


def test_slot_claims_worst_case_size_bounds_every_state() -> None:
    per_cycle = {FOOD: 1, CASH: 250_000, 3: 4}
    bound = SlotClaims.max_encoded_size((FOOD, CASH, 3), per_cycle)
    small = SlotClaims(seq=0, cycle=0, remaining={FOOD: 0, CASH: 0, 3: 0}, terminal_id=0,
                       terminal_seq=0, time=0, nfc_counter=0, prev_hash=bytes(8))
    assert len(small.to_cbor()) < bound == 63  # slot format 2 (docs/card-format.md §4.1): pad to a page


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda m: m.pop(1), "missing card id"),
        (lambda m: m.__setitem__(11, 0), "extra key"),
        (lambda m: m.__setitem__(0, 2), "future version"),
        (lambda m: m.__setitem__(1, "6271"), "card id as text"),
        (lambda m: m.__setitem__(1, b"\x00" * 7), "card id 7 bytes"),
        (lambda m: m.__setitem__(3, "62-71"), "bad region code"),
        (lambda m: m.__setitem__(4, {1: [9, 1]}), "unknown unit"),
        (lambda m: m.__setitem__(4, {1: [1, -1]}), "negative entitlement"),
        (lambda m: m.__setitem__(5, True), "bool date"),
        (lambda m: m.__setitem__(6, 1), "valid_to before valid_from"),
        (lambda m: m.__setitem__(7, {5: 1}), "cap for a programme the card is not in"),
        (lambda m: m.__setitem__(9, [12, b"\x00"]), "short PIN verifier"),
        (lambda m: m.__setitem__(10, b"\x04" + bytes(32)), "uncompressed card key"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_identity_claims_strict_decode(mutate: object, why: str) -> None:
    claims = cbor2.loads(identity().to_cbor())
    assert callable(mutate)
    mutate(claims)
    with pytest.raises(ClaimsError):
        IdentityClaims.from_cbor(cbor2.dumps(claims))


@pytest.mark.parametrize(
    "payload",
    [
        cbor2.dumps([1, 2]),
        cbor2.dumps({0: 1}),
        b"\xa1\x00\x01\x00",  # trailing byte
        cbor2.dumps({0: 1, 1: 1, 2: 1, 3: {1: "x"}, 4: 1, 5: 1, 6: 1, 7: 1, 8: bytes(8)}),
        cbor2.dumps({0: 1, 1: 2**32, 2: 1, 3: {}, 4: 1, 5: 1, 6: 1, 7: 1, 8: bytes(8)}),
        cbor2.dumps({0: 1, 1: 1, 2: 1, 3: {}, 4: 1, 5: 1, 6: 1, 7: 2**24, 8: bytes(8)}),
        cbor2.dumps({0: 1, 1: 1, 2: 1, 3: {}, 4: 1, 5: 1, 6: 1, 7: 1, 8: bytes(9)}),
    ],
)
def test_slot_claims_strict_decode(payload: bytes) -> None:
    with pytest.raises(ClaimsError):
        SlotClaims.from_cbor(payload)


def test_pin_verifier_checks_the_pin() -> None:
    ident = identity()
    assert ident.pin is not None
    ident.pin.check("246810", ident.card_id, ident.uid)
    with pytest.raises(PinMismatch):
        ident.pin.check("246811", ident.card_id, ident.uid)
    with pytest.raises(ClaimsError):
        ident.pin.check("12345", ident.card_id, ident.uid)
    # the same PIN gives another verifier on another card (salt = card id ‖ UID)
    other = PinVerifier.derive("246810", ident.card_id, OTHER_UID, 12)
    assert PinVerifier.derive("246810", ident.card_id, UID, 12).verifier == ident.pin.verifier
    assert len(other.verifier) == 2


# --------------------------------------------------------------------------- layout


def test_default_card_fits_ntag215_with_page_aligned_slots() -> None:
    card = issue()
    lay = card.layout
    assert (lay.identity_len, lay.slot_len) == (164, 144)
    assert lay.image_len == 493 <= 496
    lay.check_fits(496)
    assert lay.identity_pages == range(8, 49)
    assert lay.slot_pages(SlotName.A) == range(52, 88)
    assert lay.slot_pages(SlotName.B) == range(91, 127)
    image = parse_image(card.image)
    assert image.identity == card.identity_cose
    assert image.slots[SlotName.A].raw.startswith(card.genesis_cose)
    assert not any(image.slots[SlotName.B].raw)


def test_layout_too_big_for_the_chip() -> None:
    with pytest.raises(LayoutError):
        CardLayout(252, 252).check_fits(496)
    with pytest.raises(LayoutError):
        CardLayout(162, 144)


@pytest.mark.parametrize(
    "offset, value",
    [(0, 0x01), (1, 0x80), (4, 0xD4), (8, ord("X")), (4 + 12 + 164, 0x00), (492, 0x00)],
    ids=["tlv type", "tlv length form", "record flags", "record type", "slot A header", "terminator"],
)
def test_parse_rejects_foreign_layouts(offset: int, value: int) -> None:
    image = bytearray(issue().image)
    image[offset] = value
    with pytest.raises(LayoutError):
        parse_image(bytes(image))


def test_identity_padding_must_be_zero() -> None:
    card = issue(region="62")  # 3 bytes shorter: the identity payload carries 3 padding bytes
    assert card.layout.identity_len - len(card.identity_cose) == 3
    parse_image(card.image)
    image = bytearray(card.image)
    image[16 + len(card.identity_cose) + 1] = 0x01
    with pytest.raises(LayoutError):
        parse_image(bytes(image))


# --------------------------------------------------------------------------- verification


def test_valid_card_verifies_in_three_commands() -> None:
    session, tag = session_for(issue().image)
    state = session.read_state(NOW)
    assert state.current.name is SlotName.A and state.current.claims.seq == 0
    assert state.empty == (SlotName.B,) and state.problems == ()
    assert state.target is SlotName.B
    assert tag.commands == 3  # pages 0-10 (UID, CC, public header), then pages 11-127


def test_T_record_copied_onto_another_uid_is_uid_mismatch() -> None:
    """A genuine card image written onto a different chip fails with UidMismatch."""
    session, _ = session_for(issue().image, uid=OTHER_UID)
    with pytest.raises(UidMismatch) as info:
        session.read_state(NOW)
    assert info.value.record_uid == UID and info.value.expected_uid == OTHER_UID


def test_tampered_identity_is_bad_signature() -> None:
    card = issue()
    image = bytearray(card.image)
    image[16 + 20] ^= 0x01  # inside the identity payload claims
    session, _ = session_for(bytes(image))
    with pytest.raises(BadSignature):
        session.read_state(NOW)


def test_identity_signed_by_a_terminal_key_is_unknown_issuer() -> None:
    """Roles are separate: a terminal key cannot sign an identity."""
    from cardlib.records.issuance import issue_card_image

    card = issue_card_image(identity(), TERMINAL, STATION, cycle=CYCLE, now=NOW)
    session, _ = session_for(card.image)
    with pytest.raises(UnknownKid):
        session.read_state(NOW)


def test_identity_signed_by_revoked_issuer() -> None:
    session, _ = session_for(issue().image, revoked=(ISSUER,))
    with pytest.raises(RevokedKid):
        session.read_state(NOW)


def test_expired_and_not_yet_valid() -> None:
    session, _ = session_for(issue().image)
    with pytest.raises(Expired):
        session.read_state(int(dt.datetime(2031, 2, 1, tzinfo=dt.timezone.utc).timestamp()))
    with pytest.raises(NotYetValid):
        session.read_state(int(dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc).timestamp()))
    # last valid day still passes
    session.read_state(int(dt.datetime(2031, 1, 31, 23, 0, tzinfo=dt.timezone.utc).timestamp()))


def test_denied_card_and_denied_uid() -> None:
    card_id = identity().card_id
    for kw in ({"deny_cards": (card_id,)}, {"deny_uids": (UID,)}):
        session, _ = session_for(issue().image, **kw)
        with pytest.raises(DeniedCard):
            session.read_state(NOW)


def _with_slots(a: bytes | None, b: bytes | None) -> bytes:
    card = issue()
    return build_image(card.layout, card.identity_cose, a, b)


def test_slot_signed_by_unknown_key_newer_than_valid_one_is_refused() -> None:
    """An unverifiable *newer* state must not be silently rolled back to the older one."""
    card = issue()
    rogue = slot_cose(1, state_hash(card.genesis_cose), signer=ROGUE, id_cose=card.identity_cose)
    session, _ = session_for(_with_slots(card.genesis_cose, rogue))
    with pytest.raises(UnknownKid):
        session.read_state(NOW)


def test_slot_signed_by_unknown_key_older_than_valid_one_is_reported() -> None:
    card = issue()
    good = slot_cose(5, bytes(8), id_cose=card.identity_cose)
    rogue = slot_cose(1, bytes(8), signer=ROGUE, id_cose=card.identity_cose)
    session, _ = session_for(_with_slots(good, rogue))
    state = session.read_state(NOW)
    assert state.current.claims.seq == 5
    assert len(state.problems) == 1 and isinstance(state.problems[0].cause, UnknownKid)


def test_only_slot_signed_by_unknown_key() -> None:
    card = issue()
    rogue = slot_cose(1, bytes(8), signer=ROGUE, id_cose=card.identity_cose)
    session, _ = session_for(_with_slots(rogue, None))
    with pytest.raises(UnknownKid):
        session.read_state(NOW)


def test_slot_from_another_card_fails_and_the_valid_slot_is_used() -> None:
    card = issue()
    foreign = slot_cose(7, bytes(8), uid=OTHER_UID, id_cose=card.identity_cose)
    session, _ = session_for(_with_slots(card.genesis_cose, foreign))
    state = session.read_state(NOW)
    assert state.current.name is SlotName.A
    assert isinstance(state.problems[0], CorruptSlot)
    assert isinstance(state.problems[0].cause, BadSignature)


def test_torn_slot_is_corrupt_and_the_other_is_used() -> None:
    card = issue()
    newer = slot_cose(1, state_hash(card.genesis_cose), id_cose=card.identity_cose)
    image = bytearray(_with_slots(card.genesis_cose, newer))
    b_off = card.layout.slot_offset(SlotName.B)
    image[b_off + 40 : b_off + 44] = b"\xde\xad\xbe\xef"
    session, _ = session_for(bytes(image))
    state = session.read_state(NOW)
    assert state.current.name is SlotName.A
    assert state.problems[0].slot == "B"


def test_garbage_in_slot_padding_is_corrupt() -> None:
    card = issue()
    image = bytearray(card.image)
    image[card.layout.slot_offset(SlotName.A) + card.layout.slot_len - 1] = 0x55
    image_b = build_image(card.layout, card.identity_cose, None, card.genesis_cose)
    # A is corrupt, but the same genesis state is intact in B
    image2 = bytearray(image_b)
    image2[card.layout.slot_offset(SlotName.A) : card.layout.slot_offset(SlotName.A) + card.layout.slot_len] = (
        image[card.layout.slot_offset(SlotName.A) : card.layout.slot_offset(SlotName.A) + card.layout.slot_len]
    )
    session, _ = session_for(bytes(image2))
    state = session.read_state(NOW)
    assert state.current.name is SlotName.B and state.problems[0].slot == "A"


def test_equal_seq_different_content_is_a_fork() -> None:
    card = issue()
    prev = state_hash(card.genesis_cose)
    one = slot_cose(1, prev, id_cose=card.identity_cose, remaining={FOOD: 0, CASH: 250_000, 3: 4})
    two = slot_cose(1, prev, id_cose=card.identity_cose, remaining={FOOD: 1, CASH: 0, 3: 4})
    session, _ = session_for(_with_slots(one, two))
    with pytest.raises(ForkDetected) as info:
        session.read_state(NOW)
    assert info.value.seq == 1


def test_equal_seq_identical_content_is_fine() -> None:
    card = issue()
    session, _ = session_for(_with_slots(card.genesis_cose, card.genesis_cose))
    state = session.read_state(NOW)
    assert state.current.name is SlotName.A and state.other is not None


def test_no_valid_slot() -> None:
    card = issue()
    session, _ = session_for(_with_slots(None, None))
    with pytest.raises(NoValidState):
        session.read_state(NOW)
    image = bytearray(card.image)
    image[card.layout.slot_offset(SlotName.A) + 30] ^= 0xFF
    session, _ = session_for(bytes(image))
    with pytest.raises(NoValidState):
        session.read_state(NOW)


def test_slot_claiming_more_than_the_entitlement_is_corrupt() -> None:
    card = issue()
    greedy = slot_cose(3, bytes(8), id_cose=card.identity_cose, remaining={FOOD: 5, CASH: 0, 3: 0})
    session, _ = session_for(_with_slots(card.genesis_cose, greedy))
    state = session.read_state(NOW)
    assert state.current.claims.seq == 0 and state.problems[0].slot == "B"


def test_balance_check_never_writes() -> None:
    session, tag = session_for(issue().image)
    before = tag.chip.memory
    for _ in range(3):
        session.read_state(NOW)
    assert tag.chip.memory == before
    assert all(entry.startswith("3a") for entry in tag.log)  # FAST_READ only
