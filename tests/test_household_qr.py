"""The household QR on the card body (docs/fallback.md): our encoder against the independent
MOSIP ``claim169`` decoder, our verifier against tampering, the PNG read back by zxing-cpp."""

from __future__ import annotations

import time

import claim169
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cardlib.keys.signer import SoftwareSigner, raw_public_bytes
from cardlib.provision.qr import household_qr, qr_png
from cardlib.records.errors import DeniedCard
from cardlib.records.household_qr import (
    HouseholdQrError,
    b45decode,
    b45encode,
    household_qr_text,
    verify_household_qr,
)
from cardlib.records.issuance import issue_card_image
from tests.test_checkpoint_server import decode_qr
from tests.test_records_support import CYCLE, ISSUER, NOW, ROGUE, STATION, bundle, identity


def test_base45_matches_rfc_9285_examples() -> None:
    # RFC 9285 §4.3 examples.
    assert b45encode(b"AB") == "BB8"
    assert b45encode(b"Hello!!") == "%69 VD92EX0"
    assert b45encode(b"base-45") == "UJCLQE7W581"
    assert b45decode("QED8WEX0") == b"ietf!"
    with pytest.raises(HouseholdQrError):
        b45decode("GGW")  # 65535 + 1 overflows two bytes
    with pytest.raises(HouseholdQrError):
        b45decode("ab")  # lowercase is outside the alphabet


def test_the_independent_claim169_decoder_verifies_our_qr() -> None:
    ident = identity()
    text = household_qr_text(ident, ISSUER, NOW)
    result = claim169.decode_with_ed25519(text, raw_public_bytes(ISSUER.public_key), validate_timestamps=False)
    assert result.is_verified()
    assert result.claim169.id == ident.card_id.hex()
    assert result.claim169.location_code == "62.71"
    assert result.claim169.country_of_issuance == "IDN"
    assert result.claim169.full_name is None and result.claim169.date_of_birth is None  # no person data
    assert result.cwt_meta.subject == ident.household_ref.hex()
    assert result.cwt_meta.issued_at == NOW
    # Another key does not verify it.
    with pytest.raises(claim169.Claim169Exception):
        claim169.decode_with_ed25519(text, raw_public_bytes(ROGUE.public_key), validate_timestamps=False)


def test_an_es256_issuer_key_verifies_with_claim169_too() -> None:
    issuer = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
    text = household_qr_text(identity(), issuer, int(time.time()))
    result = claim169.decode_with_ecdsa_p256(text, raw_public_bytes(issuer.public_key))
    assert result.is_verified() and result.claim169.id == identity().card_id.hex()


def test_our_verifier_accepts_ours_and_refuses_forgeries_expiry_and_denied_cards() -> None:
    ident = identity()
    text = household_qr_text(ident, ISSUER, NOW)
    qr = verify_household_qr(" " + text + "\n", bundle(), NOW)
    assert (qr.card_id, qr.household_ref, qr.region) == (ident.card_id, ident.household_ref, "62.71")
    with pytest.raises(HouseholdQrError, match="signature"):
        verify_household_qr(household_qr_text(ident, ROGUE, NOW), bundle(), NOW)
    with pytest.raises(HouseholdQrError, match="signature"):
        verify_household_qr(text, bundle(revoked=(ISSUER,)), NOW)
    with pytest.raises(HouseholdQrError, match="signature"):  # a terminal key is not an issuer key
        verify_household_qr(household_qr_text(ident, STATION, NOW), bundle(), NOW)
    with pytest.raises(HouseholdQrError, match="validity"):
        verify_household_qr(text, bundle(), qr.expires_at)
    with pytest.raises(DeniedCard):
        verify_household_qr(text, bundle(deny_cards=(ident.card_id,)), NOW)
    flipped = b45decode(text)
    with pytest.raises(HouseholdQrError):
        verify_household_qr(b45encode(flipped[:-1] + bytes([flipped[-1] ^ 1])), bundle(), NOW)
    with pytest.raises(HouseholdQrError):
        verify_household_qr("NOT A QR", bundle(), NOW)


def test_the_provisioning_png_decodes_to_the_same_text() -> None:
    issued = issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=NOW)
    text = household_qr(issued.identity_cose, ISSUER, NOW)
    png = qr_png(text)
    assert decode_qr(png) == [text]
    assert verify_household_qr(decode_qr(png)[0], bundle(), NOW).card_id == identity().card_id
