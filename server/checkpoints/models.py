"""The table of scanned end-of-shift checkpoints (migration 0012; no Flask imports)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.models import Base
from server.types import UTCDateTime, utcnow


class TerminalCheckpoint(Base):
    """A counter's signed end-of-shift checkpoint, scanned from its slip (docs/checkpoints.md).

    ``message`` keeps the COSE_Sign1 exactly as scanned (evidence; its SHA-256 makes
    re-adding the same slip idempotent); the other columns are its verified claims.
    Reconciliation reports ``checkpoint_head_missing`` when the terminal's stored journal
    has moved past ``head_seq`` without the entry ``(head_seq, head_hash)``.
    """

    __tablename__ = "terminal_checkpoints"
    __table_args__ = (Index("ix_terminal_checkpoints_head", "terminal_id", "head_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"))
    boot_id: Mapped[int] = mapped_column(BigInteger)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    first_seq: Mapped[int] = mapped_column(BigInteger)
    signed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  #: the counter's clock
    totals: Mapped[str] = mapped_column(Text)  #: JSON list of {programme, unit, count, amount}
    declined: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[bytes] = mapped_column(LargeBinary)
    message_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    added_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    kid: Mapped[bytes] = mapped_column(LargeBinary(4))
    source: Mapped[str] = mapped_column(String(16))  #: ``api`` or ``cli``
