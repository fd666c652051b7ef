"""Office PIN resets uploaded from provisioning stations, for the auditor's card page (no Flask routes).

``huma provision pin-reset`` journals each reset (:meth:`cardlib.provision.state.BatchState.pin_reset`:
event ``pin_reset``, with the card, the technician and their key id, who approved it, the PIN
epoch) in the station's ``pin-resets.jsonl`` (one JSON object a line, to read) and, signed by
the technician key that signs ``issuances.cose``, in ``pin-resets.cose`` (a CBOR sequence of
COSE_Sign1, :func:`cardlib.provision.session.sign_pin_reset_record`). ``huma server cards
upload-pin-resets FILE --technician USERNAME`` stores them here (table ``pin_resets``, migration
0018; ``signer_kid`` 0019), once each: a reset is keyed by the SHA-256 of its event's canonical
JSON, so the whole file can be uploaded again after each office day.

A ``pin-resets.cose`` is verified record by record against the technician keys trusted for
issuance files (the newest verified trust bundle, role TECHNICIAN): one forged, altered or
cut-off record, or one naming another technician key than its signer, refuses the whole file;
the signer's kid is kept (``signer_kid``). An unsigned ``pin-resets.jsonl`` (stations before
signed resets) is taken only as ``unsigned_legacy``: its resets are stored without a signer and
flagged ``unsigned`` (their content is only the uploader's word);
an unsigned reset of a station session the server already holds signed resets of is refused
(an edited copy; uploaded before the signed file, it stays beside it, flagged ``unsigned``).
Each stored reset carries the checks that need no reconciliation (:data:`FLAGS`): a PIN
epoch the card carried below one an earlier reset of the card set (an older PIN record put
back with the card password), a reset its own technician approved, and an unsigned one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, LargeBinary, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from cardlib.provision.errors import SessionError
from cardlib.provision.session import verify_pin_reset_records
from cardlib.records.cose import KeyResolver
from server.errors import ServerError
from server.models import Base
from server.types import UTC, UTCDateTime

__all__ = ["FLAGS", "MAX_LINES", "PinReset", "PinResetFileError", "UploadResult", "card_pin_resets",
           "count_pin_resets", "is_signed_pin_reset_file", "parse_pin_resets", "parse_signed_pin_resets",
           "register_pin_resets"]

#: Most resets one upload takes (an office does a few a day; the file grows for months).
MAX_LINES = 100_000
#: The checks shown beside a reset: flag → what it means.
FLAGS = {
    "epoch_back": "the card carried a PIN epoch below one an earlier reset of this card set",
    "self_approved": "approved by the technician who did it",
    "unsigned": "not signed at the station (a legacy pin-resets.jsonl): who did it is the uploader's word",
}
_HEX = {"card_id": 16, "uid": 14, "household_ref": 16, "technician_kid": 8}
_NAME_MAX = 128
_PROFILES = ("ntag", "secure")
_SESSION = re.compile(r"[0-9a-f]{1,64}")


class PinResetFileError(ServerError):
    """A PIN-reset file or record that is not a station's PIN reset: malformed, not signed by a trusted
    technician key or altered since, or unsigned without ``unsigned_legacy`` (nothing of the file is stored)."""

    code = "invalid_pin_reset_file"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class PinReset(Base):
    """One office PIN reset as the station journalled it.

    :ivar line_hash: SHA-256 of the line's canonical JSON (sorted keys), unique: an upload is idempotent.
    :ivar card_id, uid, household_ref, technician_kid: lower-case hex (8, 7, 8, 4 bytes).
    :ivar technician: the station's ``--technician``; ``approved_by`` who checked the holder's papers.
    :ivar pin_epoch: the NTAG PIN record's epoch written (None: no PIN record, or a secure card);
        ``epoch_before`` the one found on the card.
    :ivar reset_at: the station's time of the reset (``t``). :ivar uploaded_by: the person named at upload.
    :ivar signer_kid: hex kid of the technician key that signed the record (== ``technician_kid``);
        None: uploaded unsigned (legacy ``pin-resets.jsonl``).
    """

    __tablename__ = "pin_resets"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    line_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    card_id: Mapped[str] = mapped_column(String(64), index=True)
    uid: Mapped[str] = mapped_column(String(32))
    household_ref: Mapped[str] = mapped_column(String(64))
    technician: Mapped[str] = mapped_column(String(_NAME_MAX))
    technician_kid: Mapped[str] = mapped_column(String(16))
    approved_by: Mapped[str] = mapped_column(String(_NAME_MAX))
    card_profile: Mapped[str] = mapped_column(String(16))
    failures_before: Mapped[int | None] = mapped_column(Integer)
    pin_changed: Mapped[bool] = mapped_column(Boolean)
    pin_epoch: Mapped[int | None] = mapped_column(BigInteger)
    epoch_before: Mapped[int | None] = mapped_column(BigInteger)
    session_id: Mapped[str] = mapped_column(String(64))
    reset_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    uploaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    signer_kid: Mapped[str | None] = mapped_column(String(16))


@dataclass(frozen=True)
class UploadResult:
    """:ivar stored: resets new to the server. :ivar known: already stored (the same reset uploaded before).
    :ivar now_signed: of ``known``, resets stored unsigned before that this upload's signed records vouch for.
    """

    stored: list[PinReset]
    known: int
    now_signed: int = 0


def _opt_int(ev: dict[str, Any], key: str, where: str) -> int | None:
    value = ev.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise PinResetFileError(f"{where}: {key} must be a non-negative integer or null")
    return value


def _name(ev: dict[str, Any], key: str, where: str) -> str:
    value = ev.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= _NAME_MAX or not value.isprintable():
        raise PinResetFileError(f"{where}: {key} must be 1 to {_NAME_MAX} printable characters")
    return value


def parse_pin_resets(data: bytes, now: dt.datetime) -> list[dict[str, Any]]:
    """The resets of an unsigned ``pin-resets.jsonl`` file as :class:`PinReset` column values (blank
    lines skipped; ``signer_kid`` None).

    :param now: aware; a reset dated more than a day after it is refused (a station clock far ahead).
    :raises PinResetFileError: not UTF-8, a line that is not a JSON object of event ``pin_reset`` with
        the station's fields and types, or more than :data:`MAX_LINES` resets.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PinResetFileError("the file is not UTF-8 text") from exc
    out: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(out) >= MAX_LINES:
            raise PinResetFileError(f"more than {MAX_LINES} resets in one file")
        try:
            ev = json.loads(line)
        except ValueError as exc:
            raise PinResetFileError(f"line {n}: not JSON") from exc
        out.append(_row(ev, f"line {n}", now))
    return out


def is_signed_pin_reset_file(data: bytes) -> bool:
    """Whether ``data`` looks like a ``pin-resets.cose`` (starts with a tagged COSE_Sign1) rather than JSON lines."""
    return data[:1] == b"\xd2"


def parse_signed_pin_resets(data: bytes, technician_keys: KeyResolver, now: dt.datetime) -> list[dict[str, Any]]:
    """The resets of a ``pin-resets.cose`` file as :class:`PinReset` column values, each verified.

    :param technician_keys: the technician keys trusted for issuance files (``bundle.resolver(KeyRole.TECHNICIAN)``).
    :param now: as :func:`parse_pin_resets`.
    :raises PinResetFileError: a record cut off, not signed by a trusted, unrevoked technician key, altered
        since, naming another technician key than its signer, or not a station's reset (as
        :func:`parse_pin_resets`); more than :data:`MAX_LINES` records.
    """
    try:
        records = verify_pin_reset_records(data, technician_keys)
    except SessionError as exc:
        raise PinResetFileError(f"pin-resets.cose: {exc}") from exc
    if len(records) > MAX_LINES:
        raise PinResetFileError(f"more than {MAX_LINES} resets in one file")
    out = []
    for n, (ev, kid) in enumerate(records, start=1):
        row = _row(ev, f"record {n}", now)
        row["signer_kid"] = kid.hex()
        out.append(row)
    return out


def _row(ev: Any, where: str, now: dt.datetime) -> dict[str, Any]:
    """One journalled reset event as column values (``signer_kid`` None).

    :param where: names it in errors (``line 3``, ``record 3``). :raises PinResetFileError: its shape.
    """
    if not isinstance(ev, dict) or ev.get("event") != "pin_reset":
        raise PinResetFileError(f"{where}: not a pin_reset event")
    row: dict[str, Any] = {"signer_kid": None}
    for key, digits in _HEX.items():
        value = ev.get(key)
        if not isinstance(value, str) or re.fullmatch(f"[0-9a-f]{{{digits}}}", value) is None:
            raise PinResetFileError(f"{where}: {key} must be {digits} lower-case hex digits")
        row[key] = value
    row["technician"], row["approved_by"] = _name(ev, "technician", where), _name(ev, "approved_by", where)
    if ev.get("card_profile") not in _PROFILES:
        raise PinResetFileError(f"{where}: card_profile must be one of {list(_PROFILES)}")
    row["card_profile"] = ev["card_profile"]
    if not isinstance(ev.get("pin_changed"), bool):
        raise PinResetFileError(f"{where}: pin_changed must be true or false")
    row["pin_changed"] = ev["pin_changed"]
    for key in ("failures_before", "pin_epoch", "epoch_before"):
        row[key] = _opt_int(ev, key, where)
    session_id = ev.get("session_id")
    if not isinstance(session_id, str) or _SESSION.fullmatch(session_id) is None:
        raise PinResetFileError(f"{where}: session_id must be 1 to 64 lower-case hex digits")
    row["session_id"] = session_id
    t = ev.get("t")
    if not isinstance(t, int) or isinstance(t, bool) or not 0 < t <= now.timestamp() + 86400:
        raise PinResetFileError(f"{where}: t must be the reset's UNIX time, not after tomorrow")
    row["reset_at"] = dt.datetime.fromtimestamp(t, UTC)
    row["line_hash"] = hashlib.sha256(json.dumps(ev, sort_keys=True, separators=(",", ":")).encode()).digest()
    return row


def register_pin_resets(session: Session, data: bytes, person_id: int | None, now: dt.datetime, *,
                        technician_keys: KeyResolver | None = None, unsigned_legacy: bool = False) -> UploadResult:
    """Store the resets of a PIN-reset file not stored yet (all or nothing; the caller commits).

    A ``pin-resets.cose`` (:func:`is_signed_pin_reset_file`) is verified under ``technician_keys``; a
    signed reset already stored unsigned gets its ``signer_kid`` (counted in ``known`` and ``now_signed``).
    A ``pin-resets.jsonl`` is stored unsigned, and only with ``unsigned_legacy``.

    :param person_id: who uploaded it (``people.id``). :param now: aware UTC, kept as ``uploaded_at``.
    :param technician_keys: the technician keys trusted for issuance files (needed for a signed file).
    :param unsigned_legacy: the uploader takes an unsigned file (a station before signed resets) as such.
    :raises PinResetFileError: see :func:`parse_signed_pin_resets` and :func:`parse_pin_resets`; an
        unsigned file without ``unsigned_legacy``; a signed one without ``technician_keys``; an
        unsigned reset, not stored yet, of a station session the server holds signed resets of (an
        edited copy of the station's journal: red team r5, tests/test_redteam_r5_pin_reset_mix.py).
    """
    if not data.strip():
        parsed: list[dict[str, Any]] = []
    elif is_signed_pin_reset_file(data):
        if technician_keys is None:
            raise PinResetFileError("a signed pin-resets.cose needs the trusted technician keys to verify it")
        parsed = parse_signed_pin_resets(data, technician_keys, now)
    elif not unsigned_legacy:
        raise PinResetFileError("the file is not signed (pin-resets.jsonl): upload the station's pin-resets.cose, or "
                                "take an old station's unsigned file as such with --unsigned-legacy")
    else:
        parsed = parse_pin_resets(data, now)
    rows = list({r["line_hash"]: r for r in parsed}.values())
    known: dict[bytes, PinReset] = {}
    hashes = [r["line_hash"] for r in rows]
    for start in range(0, len(hashes), 500):  # bound the IN list
        known |= {bytes(p.line_hash): p for p in session.scalars(
            select(PinReset).where(PinReset.line_hash.in_(hashes[start:start + 500])))}
    stored = [PinReset(**r, uploaded_at=now, uploaded_by=person_id) for r in rows if r["line_hash"] not in known]
    unsigned_sessions = sorted({p.session_id for p in stored if p.signer_kid is None})
    for start in range(0, len(unsigned_sessions), 500):  # a session that signs has no legacy resets
        signed_session = session.scalar(select(PinReset.session_id).where(
            PinReset.session_id.in_(unsigned_sessions[start:start + 500]), PinReset.signer_kid.is_not(None)).limit(1))
        if signed_session is not None:
            raise PinResetFileError(f"session {signed_session}: the server holds resets of this station session "
                                    "signed at the station; an unsigned reset of it that is not one of them is an "
                                    "edited copy (upload the station's pin-resets.cose)")
    now_signed = 0
    for r in rows:
        old = known.get(r["line_hash"])
        if old is not None and old.signer_kid is None and r["signer_kid"] is not None:
            old.signer_kid = r["signer_kid"]  # the same event, now vouched for by its signature
            now_signed += 1
    session.add_all(stored)
    session.flush()
    return UploadResult(stored, len(rows) - len(stored), now_signed)


def card_pin_resets(session: Session, card_id: str) -> list[tuple[PinReset, list[str]]]:
    """The card's PIN resets, oldest first, each with its :data:`FLAGS` (names)."""
    rows = session.scalars(select(PinReset).where(PinReset.card_id == card_id)
                           .order_by(PinReset.reset_at, PinReset.id)).all()
    out: list[tuple[PinReset, list[str]]] = []
    highest = 0
    for r in rows:
        flags = []
        if r.epoch_before is not None and r.epoch_before < highest:
            flags.append("epoch_back")
        if r.approved_by.casefold() == r.technician.casefold():
            flags.append("self_approved")
        if r.signer_kid is None:
            flags.append("unsigned")
        highest = max(highest, r.pin_epoch or 0)
        out.append((r, flags))
    return out


def count_pin_resets(session: Session) -> int:
    """How many resets are stored (for the console's summary)."""
    return int(session.scalar(select(func.count()).select_from(PinReset)) or 0)
