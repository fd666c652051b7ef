"""Errors of :mod:`cardlib.records`: one root, one subclass per cause.

Every verification failure raises (never returns a bool). The terminal shows a
different message for each cause, and reconciliation counts them separately, so
causes are distinct classes rather than one error with a string reason.

Hierarchy::

    CardlibError
    └── RecordError
        ├── CoseError                  (cardlib.records.cose, RFC 9052)
        │   ├── MalformedCose          not a well-formed COSE_Sign1 we accept
        │   ├── UnknownKid             no key with this kid in the trust store
        │   ├── RevokedKid             the kid is known but revoked
        │   ├── AlgorithmNotAllowed    alg not whitelisted for this kid
        │   └── BadSignature           signature does not verify
        ├── ClaimsError                CBOR claims missing / extra / wrong type
        ├── LayoutError                NDEF message is not our fixed layout
        ├── UidMismatch                record genuine but signed for another chip UID
        ├── Expired                    identity past valid_to
        ├── NotYetValid                identity before valid_from
        ├── DeniedCard                 card id or UID on the deny list (carries the verified identity)
        ├── CorruptSlot                a slot is torn, empty-but-garbled or fails verification
        ├── NoValidState               neither slot holds a valid state
        ├── ForkDetected               two valid slots with equal seq and different bytes
        ├── RedemptionRefused          a redemption request the state cannot satisfy
        ├── WrongCard                  recovery data journalled for another card
        ├── CardPasswordRefused        the chip refused the card password (NAK) or its PACK differs: a clone
        └── CardPasswordUnavailable    the card names a password key version this terminal does not hold
"""

from __future__ import annotations

from typing import Literal

from cardlib.errors import CardlibError


class RecordError(CardlibError):
    """Root of every error raised by :mod:`cardlib.records`."""


class CoseError(RecordError):
    """A COSE_Sign1 message could not be accepted (RFC 9052 §4)."""


class MalformedCose(CoseError):
    """The bytes are not a COSE_Sign1 structure this verifier accepts.

    Covers CBOR decode errors, a wrong tag, a wrong array shape, headers of the
    wrong type, a header label in both buckets, an unprotected ``alg``,
    unsupported critical headers and trailing bytes.
    """


class UnknownKid(CoseError):
    """No key is known for the message's ``kid``.

    :ivar kid: the key id read from the message (bytes).
    """

    def __init__(self, kid: bytes, message: str | None = None) -> None:
        super().__init__(message or f"unknown kid {kid.hex()}")
        self.kid = kid


class RevokedKid(CoseError):
    """The ``kid`` is known but its key is revoked in the trust store.

    :ivar kid: the key id read from the message (bytes).
    """

    def __init__(self, kid: bytes, message: str | None = None) -> None:
        super().__init__(message or f"revoked kid {kid.hex()}")
        self.kid = kid


class AlgorithmNotAllowed(CoseError):
    """The protected ``alg`` is not the algorithm whitelisted for this kid."""


class BadSignature(CoseError):
    """The signature does not verify over ``Sig_structure`` (RFC 9052 §4.4)."""


class ClaimsError(RecordError):
    """A claim set is missing a claim, has an extra one, or one of the wrong type/range."""


class LayoutError(RecordError):
    """The card's NDEF message does not match the fixed Huma Betang layout."""


class UidMismatch(RecordError):
    """A genuine record signed for another chip UID (copied from another card).

    :ivar expected_uid: the UID of the tag in the field (7 bytes).
    :ivar record_uid: the UID the record was issued for (7 bytes).
    """

    def __init__(self, expected_uid: bytes, record_uid: bytes) -> None:
        super().__init__(
            "record was issued for another chip "
            f"(tag UID {expected_uid.hex()}, record UID {record_uid.hex()})"
        )
        self.expected_uid = expected_uid
        self.record_uid = record_uid


class Expired(RecordError):
    """The identity record's validity ended (today is after valid_to)."""


class NotYetValid(RecordError):
    """The identity record's valid_from lies in the future."""


#: Which deny list of the trust bundle refused a card: its card ids or its chip UIDs.
DenyEntry = Literal["card_id", "uid"]


class DeniedCard(RecordError):
    """The card id or the chip UID is on the deny list of the trust bundle.

    Raised only once the identity record (or the household QR) verified under an issuer key of the
    bundle: every attribute is the issuer's signed claim (or the UID the record was verified for), so a
    counter may show the household and journal the card from it without reading or verifying anything
    again (docs/security.md "Deny lists without waiting for a human"). The message names the entry
    that matched, never the household.

    :ivar card_id: the card id, 8 bytes, as signed.
    :ivar household_ref: the household's pseudonymous reference, 8 bytes, as signed.
    :ivar kid: key id of the issuer key the identity record or QR verified under.
    :ivar uid: the chip UID the identity record was verified for, 7 bytes (seven zero bytes,
        ``cardlib.records.secure.NO_UID``, for a secure card); None for a household QR (no chip read).
    :ivar listed: the deny list that matched: ``"card_id"`` or ``"uid"``.
    :ivar bundle_version: version of the trust bundle whose deny list refused the card.
    """

    def __init__(self, *, card_id: bytes, household_ref: bytes, kid: bytes, uid: bytes | None,
                 listed: DenyEntry, bundle_version: int) -> None:
        if listed == "uid" and uid is None:
            raise ValueError("a card refused by its chip UID names that UID")
        entry = f"chip UID {uid.hex()}" if listed == "uid" and uid is not None else f"card id {card_id.hex()}"
        super().__init__(f"{entry} is on the deny list (bundle v{bundle_version})")
        self.card_id = card_id
        self.household_ref = household_ref
        self.kid = kid
        self.uid = uid
        self.listed: DenyEntry = listed
        self.bundle_version = bundle_version


class CorruptSlot(RecordError):
    """A state slot cannot be used: torn write, garbled padding or failed verification.

    :ivar slot: ``"A"`` or ``"B"``.
    :ivar cause: the underlying error, when there is one (e.g. :class:`BadSignature`).
    """

    def __init__(self, slot: str, reason: str, cause: Exception | None = None) -> None:
        super().__init__(f"slot {slot}: {reason}")
        self.slot = slot
        self.reason = reason
        self.cause = cause


class NoValidState(RecordError):
    """Neither slot holds a valid state; the card needs re-issuance.

    :ivar problems: the :class:`CorruptSlot` errors of both slots.
    """

    def __init__(self, problems: tuple[CorruptSlot, ...]) -> None:
        super().__init__("no valid state slot: " + "; ".join(str(p) for p in problems))
        self.problems = problems


class ForkDetected(RecordError):
    """Both slots are valid, carry the same seq and differ: a clone or a replay.

    :ivar seq: the sequence number both slots claim.
    """

    def __init__(self, seq: int) -> None:
        super().__init__(f"fork: both slots carry seq {seq} with different content")
        self.seq = seq


class RedemptionRefused(RecordError):
    """A redemption that the current state cannot satisfy (unknown programme, over balance)."""


class WrongCard(RecordError):
    """A journalled pending write belongs to another card (UID or card id differ)."""


class CardPasswordRefused(RecordError):
    """PWD_AUTH with the card's derived password was refused (NAK) or answered another PACK.

    A genuine card issued with private pages always accepts its password (AUTHLIM is 0),
    so this is a chip that is not the one issued: a copy made from a dump, which cannot
    read PWD/PACK (NTAG213/215/216 datasheet §8.8.1). Terminals decline it as
    ``card_password_refused`` (docs/security.md §What the NTAG password stops).
    """


class CardPasswordUnavailable(RecordError):
    """The card's public header names a password key version this terminal does not hold."""
