"""SQLAlchemy 2.0 typed models (no Flask imports).

The Alembic migrations in :mod:`server.migrations` are the schema's source of
truth; ``tests/test_server_schema.py`` checks that these models and the migrated
schema agree. Timestamps are :class:`server.types.UTCDateTime` (aware UTC in and out).
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from server.types import UTCDateTime, utcnow


class Base(DeclarativeBase):
    """Declarative base of every server table."""


class PersonRole(str, enum.Enum):
    """What a person may do (checked per endpoint)."""

    ADMIN = "admin"
    TECHNICIAN = "technician"
    AUDITOR = "auditor"
    MANAGER = "manager"  #: reads the programme dashboard only (issue 19)


class TerminalStatus(str, enum.Enum):
    """Life cycle of an enrolled terminal key."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    REVOKED = "revoked"


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Person(Base):
    """An admin, technician or auditor who logs in."""

    __tablename__ = "people"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[PersonRole] = mapped_column(_enum(PersonRole))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


#: One login per name in any case (``Auditor`` is ``auditor``); names are stored lower-cased (migration 0005).
Index("uq_people_username_lower", func.lower(Person.username), unique=True)


class ApiToken(Base):
    """A bearer token issued at login; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class AuditLog(Base):
    """One row per change made by a person (who, what, on which object, when)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON text
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Terminal(Base):
    """A counter terminal: its CSR, key, certificate and status."""

    __tablename__ = "terminals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[TerminalStatus] = mapped_column(_enum(TerminalStatus))
    csr_der: Mapped[bytes] = mapped_column(LargeBinary)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # SubjectPublicKeyInfo DER
    kid: Mapped[bytes] = mapped_column(LargeBinary(4), unique=True)
    certificate_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))


class Card(Base):
    """A card issuance reported by provisioning."""

    __tablename__ = "cards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    card_id: Mapped[str] = mapped_column(String(64), unique=True)
    tag_uid: Mapped[bytes] = mapped_column(LargeBinary(10))
    kid: Mapped[bytes] = mapped_column(LargeBinary(4))
    technician_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: ``issued`` or ``abandoned`` (cardlib.provision.session.IssuanceStatus; migration 0003).
    status: Mapped[str] = mapped_column(String(16), default="issued", server_default="issued")
    #: card id this card replaces (a lost card), from the signed issuance file.
    reissue_of: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    #: provisioning session (16 bytes) of the issuance file that reported it.
    session_id: Mapped[bytes | None] = mapped_column(LargeBinary(16), default=None)


class CardBlock(Base):
    """A card reported lost, stolen or damaged at the office, denied from the next bundle (server.card_blocks).

    At most one standing block per card (``lifted_at`` NULL); a lifted one is kept as history (migration 0023).
    The blocker's role is kept as it was at block time (migration 0025).
    """

    __tablename__ = "card_blocks"
    __table_args__ = (
        Index("uq_card_blocks_standing", "card_id", unique=True, postgresql_where=text("lifted_at IS NULL"),
              sqlite_where=text("lifted_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    card_id: Mapped[str] = mapped_column(String(64), index=True)
    #: ``lost``, ``stolen`` or ``damaged`` (server.card_blocks.BlockReason).
    reason: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    blocked_by: Mapped[int] = mapped_column(ForeignKey("people.id"))
    #: The blocker's role when the block was placed: decides who may lift it (migration 0025).
    blocked_by_role: Mapped[PersonRole] = mapped_column(_enum(PersonRole), server_default="auditor")
    blocked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    lifted_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    lifted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lift_reason: Mapped[str | None] = mapped_column(Text)


class JournalEntryRow(Base):
    """One verified terminal journal entry (the exact signed bytes are kept in ``raw``)."""

    __tablename__ = "journal_entries"
    __table_args__ = (
        UniqueConstraint("terminal_id", "seq", name="uq_journal_terminal_seq"),
        # card_id lookups use ix_journal_card_time (card_id, wall_time), see server.reconcile.models.
        # /audit/declines: one reason's entries newest first, by key (server.audit.decline_views); only
        # DECLINED entries carry a reason, so the index holds only them.
        Index("ix_journal_decline_reason", "decline_reason", "wall_time", "id",
              postgresql_where=text("decline_reason IS NOT NULL"), sqlite_where=text("decline_reason IS NOT NULL")),
        # complaint_not_received (server.reconcile.terminal_checks): the few COMPLAINT entries (kind 12), every run.
        Index("ix_journal_complaints", "terminal_id", "seq", postgresql_where=text("kind = 12"),
              sqlite_where=text("kind = 12")),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    entry_id: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"))
    boot_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[int] = mapped_column(Integer)
    wall_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    mono_ns: Mapped[int] = mapped_column(BigInteger)
    clock_synced: Mapped[bool] = mapped_column(Boolean)
    card_id: Mapped[str | None] = mapped_column(String(64))
    tag_uid: Mapped[bytes | None] = mapped_column(LargeBinary(10))
    programme: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    slot_seq_before: Mapped[int | None] = mapped_column(BigInteger)
    slot_seq_after: Mapped[int | None] = mapped_column(BigInteger)
    state_hash_prev: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    state_hash_new: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    ntag_counter: Mapped[int | None] = mapped_column(Integer)
    prev_entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    batch_id: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: A DECLINED entry's signed reason code (claim 20, a :class:`cardlib.records.declines.DeclineReason`
    #: value or an unknown code of a newer counter), copied at upload from the verified entry; NULL otherwise.
    decline_reason: Mapped[str | None] = mapped_column(String(32))


class JournalConflict(Base):
    """A signed entry that reuses a stored entry id or (terminal, seq) with other content.

    The stored original is never overwritten; this row keeps the newcomer as evidence
    and stays ``flagged`` until an auditor dismisses it.
    """

    __tablename__ = "journal_conflicts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(64))
    entry_id: Mapped[bytes] = mapped_column(LargeBinary(16))
    seq: Mapped[int] = mapped_column(BigInteger)
    existing_entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    flagged: Mapped[bool] = mapped_column(Boolean, default=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class RejectedEntry(Base):
    """An entry from an authenticated batch that failed verification (kept as evidence).

    ``reason`` is one of :class:`server.upload.RejectReason`.
    """

    __tablename__ = "rejected_entries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(64))
    raw_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PublishedBundle(Base):
    """A published trust bundle as stored: its signed bytes (opaque here), version, expiry and SHA-256 (the ETag).

    The signed document itself is :class:`cardlib.records.bundle.TrustBundle`.
    """

    __tablename__ = "trust_bundles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, unique=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


# Reconciliation/audit tables (migration 0002), so Base.metadata is complete.
from server.audit import models as _audit_models  # noqa: E402,F401
from server.reconcile import models as _reconcile_models  # noqa: E402,F401
