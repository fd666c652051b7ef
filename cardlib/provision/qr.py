"""The household QR printed on the card body at issuance (docs/fallback.md, docs/card-format.md §Household QR).

:func:`household_qr` makes the signed Claim 169 text (:mod:`cardlib.records.household_qr`) from the
identity record the station just wrote and read back, and a PNG for the card printer.
"""

from __future__ import annotations

import io

from cardlib.keys.signer import Signer
from cardlib.provision.errors import StationInputError
from cardlib.records.claims import IdentityClaims
from cardlib.records.cose import parse_sign1_layout
from cardlib.records.household_label import household_label
from cardlib.records.household_qr import household_qr_text

__all__ = ["QR_SCALE", "household_qr", "qr_file_name", "qr_png"]

#: Pixels per QR module (a 300 dpi card printer: ~0.5 mm modules).
QR_SCALE = 6


def household_qr(identity_cose: bytes, issuer: Signer, issued_at: int) -> str:
    """The QR text for an issued card, from its identity record's exact bytes.

    :param identity_cose: the identity COSE_Sign1 as read back from the card.
    :param issuer: the issuer key (the one that signed ``identity_cose``).
    :param issued_at: UNIX seconds.
    :raises StationInputError: the identity record cannot be parsed.
    """
    layout = parse_sign1_layout(identity_cose)
    if layout is None:
        raise StationInputError("identity record is not a COSE_Sign1 this station made")
    return household_qr_text(IdentityClaims.from_cbor(layout[3]), issuer, issued_at)


def qr_file_name(household_ref: bytes, card_id: bytes) -> str:
    """The PNG name of a card's household QR in ``provision batch --qr-dir``: ``HB-9F3C2A1B-<card id>.png``.

    The household label (as printed on slips, :func:`cardlib.records.household_label.household_label`)
    sorts and finds the card body's print by household; the card id (16 hex digits) makes it unique.

    :param household_ref: 8 bytes. :param card_id: 8 bytes.
    """
    return f"{household_label(household_ref)}-{card_id.hex()}.png"


def qr_png(text: str, scale: int = QR_SCALE) -> bytes:
    """A PNG of ``text`` as a QR code (alphanumeric mode, error correction M, 4-module quiet zone).

    :raises StationInputError: segno (the ``terminal`` extra) is not installed.
    """
    try:
        import segno
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise StationInputError("making the QR PNG needs segno (pip install huma-betang[terminal])") from None
    buf = io.BytesIO()
    segno.make_qr(text, error="m").save(buf, kind="png", scale=scale, border=4)
    return buf.getvalue()
