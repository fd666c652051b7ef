"""Grievances (issue 18): a beneficiary's complaint, linked to a receipt code, card or household (no Flask routes).

A complaint is recorded with what it is about (at least one of a receipt code ``XXXX-XXXX``
as the counter showed it, a card id, a household ref) and moves ``open`` → ``investigating``
→ ``resolved`` as auditors work through it; every change names the person and the reason and
is written to ``audit_log`` in the same transaction (docs/api.md "Grievances"). Added by
migration ``0013_grievances``; a complaint taken at a counter (docs/grievances.md) also keeps its
category, the counter that sent it, the counter's own id for it (a resent one is stored once) and
when the counter took it (migration ``0014_grievance_sources``).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.models import Base, Person
from server.types import UTCDateTime, utcnow

__all__ = [
    "Grievance",
    "GrievanceCategory",
    "GrievanceError",
    "GrievanceStatus",
    "change_status",
    "find_from_counter",
    "grievance_json",
    "receipt_entries",
    "record_grievance",
]

_HEX16 = re.compile(r"[0-9a-f]{16}")
#: Longest complaint text stored, characters.
TEXT_MAX = 4000
REASON_MAX = 2000


class GrievanceStatus(str, enum.Enum):
    """Where an auditor is with a complaint."""

    OPEN = "open"
    INVESTIGATING = "investigating"
    RESOLVED = "resolved"


class GrievanceCategory(str, enum.Enum):
    """What a complaint is about, as the counter's form offers it (docs/grievances.md)."""

    NOT_RECEIVED = "not_received"
    WRONG_AMOUNT = "wrong_amount"
    CARD_PROBLEM = "card_problem"
    STAFF = "staff"
    OTHER = "other"


#: Allowed moves: a resolved complaint may be taken up again (``investigating``), with a reason.
TRANSITIONS = {
    GrievanceStatus.OPEN: {GrievanceStatus.INVESTIGATING, GrievanceStatus.RESOLVED},
    GrievanceStatus.INVESTIGATING: {GrievanceStatus.OPEN, GrievanceStatus.RESOLVED},
    GrievanceStatus.RESOLVED: {GrievanceStatus.INVESTIGATING},
}


class GrievanceError(ValueError):
    """A complaint or status change that cannot be recorded. ``field`` names the bad input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Grievance(Base):
    """One complaint. ``decided_by``/``decided_at``/``reason``: the last status change (all are in audit_log)."""

    __tablename__ = "grievances"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    text: Mapped[str] = mapped_column(Text)
    receipt_code: Mapped[str | None] = mapped_column(String(9), index=True)
    card_id: Mapped[str | None] = mapped_column(String(64), index=True)
    household_ref: Mapped[str | None] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=GrievanceStatus.OPEN.value)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(16))
    #: The counter that took the complaint (None: recorded through the API or the console).
    source_terminal: Mapped[str | None] = mapped_column(String(64), index=True)
    #: The counter's own id of the complaint (32 hex digits): unique per counter, so a resend is stored once.
    client_ref: Mapped[str | None] = mapped_column(String(32))
    #: When the counter took it (its clock; the server's time is ``created_at``).
    counter_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("uq_grievances_source_ref", "source_terminal", "client_ref", unique=True),)


@dataclass(frozen=True)
class Links:
    """What a complaint is about, checked: ``receipt_code`` normalised ``XXXX-XXXX``, 16-hex ids."""

    receipt_code: str | None
    card_id: str | None
    household_ref: str | None


def _links(receipt_code: str | None, card_id: str | None, household_ref: str | None) -> Links:
    from server.audit.receipts import normalise_code

    code = None
    if receipt_code:
        code = normalise_code(receipt_code)
        if code is None:
            raise GrievanceError(f"receipt code {receipt_code[:20]!r} is not XXXX-XXXX", "receipt_code")
    for value, name in ((card_id, "card_id"), (household_ref, "household_ref")):
        if value and not _HEX16.fullmatch(value):
            raise GrievanceError(f"{name} is not 16 lower-case hex digits", name)
    if not (code or card_id or household_ref):
        raise GrievanceError("a complaint names a receipt code, a card or a household", "receipt_code")
    return Links(code, card_id or None, household_ref or None)


def record_grievance(session: Session, person: Person | None, text: str, *, receipt_code: str | None = None,
                     card_id: str | None = None, household_ref: str | None = None, category: str | None = None,
                     source_terminal: str | None = None, client_ref: str | None = None,
                     counter_time: dt.datetime | None = None) -> Grievance:
    """Record a complaint as ``open`` (audited; caller commits).

    A receipt code that names one redemption the server holds also links that redemption's card
    and household when the complaint does not name them (docs/grievances.md).

    :param person: who recorded it (None: the server console or a counter, ``source_terminal``).
    :param category: a :class:`GrievanceCategory` value, or None.
    :param source_terminal: the counter that took it; with ``client_ref`` (32 hex digits) a resend
        of the same complaint is found by :func:`find_from_counter` before this is called.
    :param counter_time: when the counter took it (aware).
    :raises GrievanceError: blank or too long text, a malformed link, nothing linked, an unknown category.
    """
    from server.auth import audit

    text = text.strip()
    if not text or len(text) > TEXT_MAX:
        raise GrievanceError(f"text is required, at most {TEXT_MAX} characters", "text")
    if "\x00" in text:
        raise GrievanceError("text contains a NUL character (U+0000)", "text")
    if category is not None and category not in {c.value for c in GrievanceCategory}:
        raise GrievanceError(f"category is one of {[c.value for c in GrievanceCategory]}", "category")
    links = _links(receipt_code, card_id, household_ref)
    card, household = links.card_id, links.household_ref
    if links.receipt_code and not (card and household):
        found = {(e["card_id"], e["household_ref"]) for e in receipt_entries(session, links.receipt_code)}
        if len(found) == 1:
            [(found_card, found_household)] = found
            card = card or found_card
            household = household or found_household
    g = Grievance(created_at=utcnow(), created_by=person.id if person else None, text=text,
                  receipt_code=links.receipt_code, card_id=card, household_ref=household,
                  status=GrievanceStatus.OPEN.value, category=category, source_terminal=source_terminal,
                  client_ref=client_ref, counter_time=counter_time)
    session.add(g)
    session.flush()
    audit(session, person, "grievance.recorded", f"grievance:{g.id}", receipt_code=links.receipt_code,
          card_id=card, household_ref=household, category=category, terminal_id=source_terminal,
          counter_time=counter_time.isoformat() if counter_time else None)
    return g


def find_from_counter(session: Session, terminal_id: str, client_ref: str) -> Grievance | None:
    """The complaint counter ``terminal_id`` sent before under its id ``client_ref``, if any."""
    return session.scalars(select(Grievance).where(Grievance.source_terminal == terminal_id,
                                                   Grievance.client_ref == client_ref)).one_or_none()


def change_status(session: Session, grievance_id: int, person: Person | None, status: GrievanceStatus,
                  reason: str) -> Grievance:
    """Move a complaint to ``status`` with a reason (audited with the previous status; caller commits).

    :raises LookupError: no such complaint.
    :raises GrievanceError: blank reason, or a move :data:`TRANSITIONS` does not allow.
    """
    from server.auth import audit

    reason = reason.strip()
    if not reason or len(reason) > REASON_MAX:
        raise GrievanceError(f"a reason is required, at most {REASON_MAX} characters", "reason")
    g = session.get(Grievance, grievance_id)
    if g is None:
        raise LookupError(f"no grievance {grievance_id}")
    before = GrievanceStatus(g.status)
    if status not in TRANSITIONS[before]:
        raise GrievanceError(f"grievance {grievance_id} is {before.value}: it cannot become {status.value}", "status")
    g.status, g.reason, g.decided_at = status.value, reason, utcnow()
    g.decided_by = person.id if person else None
    audit(session, person, "grievance.status", f"grievance:{g.id}", before=before.value, after=status.value,
          reason=reason)
    return g


def grievance_json(g: Grievance) -> dict[str, Any]:
    """The API's JSON shape of a complaint."""
    return {"id": g.id, "created_at": g.created_at.isoformat(), "created_by": g.created_by, "text": g.text,
            "receipt_code": g.receipt_code, "card_id": g.card_id, "household_ref": g.household_ref,
            "status": g.status, "decided_by": g.decided_by,
            "decided_at": g.decided_at.isoformat() if g.decided_at else None, "reason": g.reason,
            "category": g.category, "source_terminal": g.source_terminal,
            "counter_time": g.counter_time.isoformat() if g.counter_time else None}


def receipt_entries(session: Session, code: str) -> list[dict[str, Any]]:
    """The journal entries a receipt code names (40 bits of a hash: one, rarely more), with their household.

    Each is a dict: ``receipt_code``, ``entry_id`` (hex), ``terminal_id``, ``seq``, ``wall_time`` (ISO 8601
    UTC), ``card_id``, ``household_ref``, ``programme``, ``amount``, ``fallback`` (``"qr"`` or ``"manual"``
    for a redemption served without a card write, docs/fallback.md, else None) and ``approved_by`` (who let
    that fallback through, else None).

    Indexes new journal rows first (:func:`server.audit.receipts.index_receipts`; caller commits).

    :raises GrievanceError: not a receipt code.
    """
    from server.audit.entries import fallback_of
    from server.audit.models import ReceiptCode
    from server.audit.receipts import index_receipts, normalise_code
    from server.models import JournalEntryRow
    from server.reconcile.models import CardProfile

    normal = normalise_code(code)
    if normal is None:
        raise GrievanceError("not a receipt code XXXX-XXXX", "code")
    index_receipts(session)
    j = JournalEntryRow
    rows = session.execute(
        select(j, CardProfile.household_ref)
        .join(ReceiptCode, ReceiptCode.journal_id == j.id)
        .outerjoin(CardProfile, CardProfile.card_id == j.card_id)
        .where(ReceiptCode.code == normal).order_by(j.wall_time, j.terminal_id, j.seq)).all()
    out = []
    for e, household_ref in rows:
        step, approver = fallback_of(e.raw) or (None, None)
        out.append({"receipt_code": normal, "entry_id": e.entry_id.hex(), "terminal_id": e.terminal_id, "seq": e.seq,
                    "wall_time": e.wall_time.isoformat(), "card_id": e.card_id, "household_ref": household_ref,
                    "programme": e.programme, "amount": e.amount, "fallback": step, "approved_by": approver or None})
    return out
