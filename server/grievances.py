"""Grievances (issue 18): a beneficiary's complaint, linked to a receipt code, card or household (no Flask routes).

A complaint is recorded with what it is about (at least one of a receipt code ``XXXX-XXXX``
as the counter showed it, a card id, a household ref) and moves ``open`` → ``investigating``
→ ``resolved`` as auditors work through it; every change names the person and the reason and
is written to ``audit_log`` in the same transaction (docs/api.md "Grievances"). Added by
migration ``0013_grievances``.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.models import Base, Person
from server.types import UTCDateTime, utcnow

__all__ = ["Grievance", "GrievanceError", "GrievanceStatus", "change_status", "grievance_json", "receipt_entries",
           "record_grievance"]

_HEX16 = re.compile(r"[0-9a-f]{16}")
#: Longest complaint text stored, characters.
TEXT_MAX = 4000
REASON_MAX = 2000


class GrievanceStatus(str, enum.Enum):
    """Where an auditor is with a complaint."""

    OPEN = "open"
    INVESTIGATING = "investigating"
    RESOLVED = "resolved"


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
                     card_id: str | None = None, household_ref: str | None = None) -> Grievance:
    """Record a complaint as ``open`` (audited; caller commits).

    :param person: who recorded it (None: the server console).
    :raises GrievanceError: blank or too long text, a malformed link, or nothing linked.
    """
    from server.auth import audit

    text = text.strip()
    if not text or len(text) > TEXT_MAX:
        raise GrievanceError(f"text is required, at most {TEXT_MAX} characters", "text")
    links = _links(receipt_code, card_id, household_ref)
    g = Grievance(created_at=utcnow(), created_by=person.id if person else None, text=text,
                  receipt_code=links.receipt_code, card_id=links.card_id, household_ref=links.household_ref,
                  status=GrievanceStatus.OPEN.value)
    session.add(g)
    session.flush()
    audit(session, person, "grievance.recorded", f"grievance:{g.id}", receipt_code=links.receipt_code,
          card_id=links.card_id, household_ref=links.household_ref)
    return g


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
            "decided_at": g.decided_at.isoformat() if g.decided_at else None, "reason": g.reason}


def receipt_entries(session: Session, code: str) -> list[dict[str, Any]]:
    """The journal entries a receipt code names (40 bits of a hash: one, rarely more), with their household.

    Indexes new journal rows first (:func:`server.audit.receipts.index_receipts`; caller commits).

    :raises GrievanceError: not a receipt code.
    """
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
    return [{"receipt_code": normal, "entry_id": e.entry_id.hex(), "terminal_id": e.terminal_id, "seq": e.seq,
             "wall_time": e.wall_time.isoformat(), "card_id": e.card_id, "household_ref": household_ref,
             "programme": e.programme, "amount": e.amount} for e, household_ref in rows]
