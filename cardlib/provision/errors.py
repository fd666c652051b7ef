"""Errors of :mod:`cardlib.provision`: bad input rows, chips we must not issue on, session limits.

All derive from :class:`ProvisionError` (a :class:`cardlib.errors.CardlibError`).
"""

from __future__ import annotations

from cardlib.errors import CardlibError


class ProvisionError(CardlibError):
    """Root of every provisioning error."""


# ---------------------------------------------------------------- input (CSV, profile)


class RowError(ProvisionError):
    """One bad row of a households CSV.

    :ivar line: 1-based line number in the file (the header is line 1).
    :ivar column: the offending column, or "" for the whole row.
    """

    reason = "bad row"

    def __init__(self, line: int, column: str, detail: str) -> None:
        super().__init__(f"line {line}: {column + ': ' if column else ''}{self.reason}: {detail}")
        self.line = line
        self.column = column
        self.detail = detail


class MissingHouseholdRef(RowError):
    reason = "missing household reference"


class BadHouseholdRef(RowError):
    reason = "malformed household reference"


class DuplicateHouseholdRef(RowError):
    reason = "duplicate household reference"


class BadRegionCode(RowError):
    reason = "not a Kalimantan Tengah region code"


class UnknownProgramme(RowError):
    reason = "unknown programme"


class MalformedRow(RowError):
    reason = "malformed row"


class CsvError(ProvisionError):
    """The CSV as a whole is unusable (no header, wrong columns), or has bad rows.

    :ivar errors: the :class:`RowError` list, in file order (empty for header problems).
    """

    def __init__(self, message: str, errors: list[RowError] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])


class ProfileError(ProvisionError):
    """The provisioning profile (programmes, validity, caps) is malformed."""


class StationInputError(ProvisionError):
    """A station input other than the CSV and profile is unusable (password secret too short,
    malformed option value); found at start-up, before any card is touched or journalled."""


class StationKeyNotTrusted(StationInputError):
    """The trust bundle does not accept the station's terminal key (or the issuer key) as the
    read-back after issuance and every counter would: not listed, another role, or revoked.
    Found at start-up, so no card is written with genesis states nobody can verify."""


class StationIdMismatch(StationInputError):
    """``--station-id`` names another slot terminal id than the station key's own (its kid read
    big-endian, docs/card-format.md §4): genesis states would claim another station or counter
    wrote them. Found at start-up, before any card is touched."""


# ---------------------------------------------------------------- chips


class ChipRejected(ProvisionError):
    """The presented chip must not become a card (base class; subclasses name the cause).

    :ivar uid: the chip UID (7 bytes) when known.
    """

    def __init__(self, message: str, uid: bytes = b"") -> None:
        super().__init__(message)
        self.uid = uid


class CounterfeitChip(ChipRejected):
    """The NXP originality signature does not verify (non-NXP or counterfeit chip)."""


class WrongChip(ChipRejected):
    """The chip is not an NTAG215/216 or its memory is too small for the card image."""


class ChipNotBlank(ChipRejected):
    """The chip carries lock bits, a password or data we may not overwrite."""


class AlreadyIssued(ChipRejected):
    """The chip already carries a completed card (possibly of another batch)."""


class IssuanceInterrupted(ProvisionError):
    """The card session was lost mid-issuance (card left the field, reset or went mute).

    Raised from the transport's :class:`~cardlib.transport.errors.SessionLost` (of which
    :class:`~cardlib.transport.errors.CardRemoved` is one cause) and adds what provisioning
    needs to resume: the journal records the card id as ``interrupted`` at ``step``.

    :ivar uid: chip UID. :ivar card_id: the card id being issued. :ivar step: the step that was interrupted.
    """

    def __init__(self, uid: bytes, card_id: bytes, step: str) -> None:
        if card_id:
            msg = (f"card {uid.hex().upper()} removed during '{step}': present the same card again to "
                   f"finish card id {card_id.hex()} (it is recorded as incomplete)")
        else:
            msg = f"card removed during '{step}' before anything was written; present a card again"
        super().__init__(msg)
        self.uid = uid
        self.card_id = card_id
        self.step = step


class ReadBackMismatch(ProvisionError):
    """What was read back after personalisation differs from what was written."""


# ---------------------------------------------------------------- sessions


class QuotaExceeded(ProvisionError):
    """The technician's session grant allows no more cards."""


class SessionError(ProvisionError):
    """A session grant or issuance file is malformed, badly signed or not for this technician."""


class BatchStateError(ProvisionError):
    """The resumable batch state does not match this CSV or is corrupt."""
