"""Shared builders for the secure card tests (no tests here): issuer key, personalised virtual cards, records."""

from __future__ import annotations

from pathlib import Path

import ndef
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cardlib.records.claims import SlotClaims
from cardlib.records.cose import sign1
from cardlib.secure import SecureCardSession, compress_point, terminal_card_key
from cardlib.transport import Connection
from simulator.secure_card import SecureCard, SecureCardConnection, SecureFaultPlan, TearPoint

CARD_ID = bytes.fromhex("0102030405060708")
PIN = "246810"
ISSUER_KEY = ec.derive_private_key(0x1551E5, ec.SECP256R1())
ISSUER_POINT = ISSUER_KEY.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
TERMINAL_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
TERMINAL_KID = bytes.fromhex("00000003")
#: The card-access key (version 1 of the ring counters hold) and this card's terminal key (docs/secure-card.md §5.5).
ACCESS_KEY = bytes(range(32))
CARD_TERMINAL_KEY = terminal_card_key(ACCESS_KEY, CARD_ID)
#: The public NDEF view: what the card is and where to check a balance, nothing personal.
NDEF_MESSAGE = b"".join(ndef.message_encoder([
    ndef.UriRecord("https://huma.example.id/saldo"),
    ndef.TextRecord("Kartu Huma Betang - cek saldo di kantor kecamatan", "id"),
]))


def slot_record(seq: int, remaining: int = 150_000) -> bytes:
    """A terminal-signed slot record (docs/card-format.md §4) with *seq*."""
    claims = SlotClaims(seq=seq, cycle=20261, remaining={1: 2, 2: remaining}, terminal_id=3, terminal_seq=seq,
                        time=1_772_352_000 + seq, nfc_counter=0, prev_hash=bytes(8))
    return sign1(claims.to_cbor(), TERMINAL_KEY, TERMINAL_KID)


def identity_record(card_public_key: bytes) -> bytes:
    """An identity record naming the card key (claim 10); signed with a test key, the bytes are what matter."""
    import cbor2

    claims = cbor2.dumps({0: 1, 1: CARD_ID, 2: bytes(8), 3: "62.71", 4: {1: [1, 2], 2: [2, 150_000]},
                          5: 20_000, 6: 21_000, 7: {1: 2, 2: 150_000}, 8: bytes(7), 10: card_public_key})
    return sign1(claims, TERMINAL_KEY, bytes.fromhex("00000001"))


def personalised_card(path: Path | None = None, *, pin_required: bool = False, seq: int = 0,
                      lock: bool = True) -> tuple[SecureCard, bytes]:
    """A virtual secure card personalised through its APDUs; returns it and its compressed public key."""
    card = SecureCard(path)
    session = SecureCardSession(SecureCardConnection(card))
    session.select()
    point = session.generate_key()
    session.personalise(card_id=CARD_ID, issuer_key=ISSUER_POINT, pin=PIN, pin_required=pin_required,
                        ndef_message=NDEF_MESSAGE, identity=identity_record(compress_point(point)),
                        genesis_state=slot_record(seq), genesis_seq=seq, terminal_key=(1, CARD_TERMINAL_KEY),
                        lock=lock)
    card.field_off()
    if path is not None:
        card.save()
    return card, compress_point(point)


def prove(session: SecureCardSession, key: bytes, pin: str | None = None) -> None:
    """What a counter does before VERIFY or UPDATE STATE: SELECT, state, INTERNAL and EXTERNAL AUTHENTICATE."""
    session.verify_card(key, CARD_ID)
    session.external_authenticate(CARD_TERMINAL_KEY, CARD_ID, pin=pin)


class InProcessTear:
    """:class:`cardlib.secure.conformance.TearInjector` for an in-process virtual card."""

    def __init__(self, card: SecureCard) -> None:
        self.card = card

    def arm(self, after: int, commit: bool) -> None:
        self.card.arm(SecureFaultPlan(after, TearPoint.AFTER_COMMIT if commit else TearPoint.BEFORE_COMMIT))

    def reconnect(self) -> Connection:
        self.card.reinsert()
        return SecureCardConnection(self.card)
