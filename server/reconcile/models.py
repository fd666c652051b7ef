"""Tables of reconciliation and audit (no Flask imports).

Added by migration ``0002_reconcile``; imported by :mod:`server.models` so that
``Base.metadata`` (Alembic's target and the schema check) holds them.

Every table that describes a card is keyed by ``card_id`` first, so on a
distributed PostgreSQL (Citus) ``journal_entries``, ``card_profiles``,
``card_entitlements`` and the card findings can be distributed on ``card_id``
and co-located (docs/reconciliation.md).
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    Enum,
    Float,
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
from sqlalchemy.orm import Mapped, mapped_column

from server.models import Base, JournalEntryRow, _enum
from server.types import UTCDateTime, utcnow


class FindingKind(str, enum.Enum):
    """What reconciliation found (stable, machine-readable)."""

    TERMINAL_GAP = "terminal_gap"  #: seqs missing from a terminal's chain
    TERMINAL_CHAIN_BREAK = "terminal_chain_break"  #: prev_entry_hash is not the previous entry's hash
    JOURNAL_CONFLICT = "journal_conflict"  #: same entry id / (terminal, seq) with other content
    REJECTED_ENTRY = "rejected_entry"  #: an uploaded entry failed verification
    BAD_SIGNATURE = "bad_signature"  #: a stored entry no longer verifies (re-verification)
    REVOKED_TERMINAL_USED = "revoked_terminal_used"  #: entries signed after the key's revocation
    CARD_FORK = "card_fork"  #: two states from one previous state, or one slot seq twice (clone/replay)
    CARD_ROLLBACK = "card_rollback"  #: genuine chip (counter rising) whose slot state went back (old dump)
    COUNTER_BACKWARDS = "counter_backwards"  #: NTAG NFC counter lower than before for the same UID
    CARD_COUNTER_REPEATED = "card_counter_repeated"  #: a secure card's signed counter in two taps (replay, cloned key)
    CARD_CHAIN_GAP = "card_chain_gap"  #: slot seqs skipped: a redemption whose entry is missing
    ENTITLEMENT_EXCEEDED = "entitlement_exceeded"  #: total per cycle above the entitlement
    REVOKED_CARD_USED = "revoked_card_used"  #: redemption after the card was revoked
    IMPOSSIBLE_TRAVEL = "impossible_travel"  #: same card at distant terminals too quickly
    CLOCK_BACKWARDS = "clock_backwards"  #: wall time decreasing along a terminal's seq
    CLOCK_SKEW = "clock_skew"  #: wall clock drifting/stepping within one boot, or ahead of the server
    CHECKPOINT_HEAD_MISSING = "checkpoint_head_missing"  #: a scanned shift checkpoint's head not in the journal
    JOURNAL_TAIL_MISSING = "journal_tail_missing"  #: a signed journal head the uploads never reached
    HOUSEHOLD_OVER_ENTITLEMENT = "household_over_entitlement"  #: one household over its entitlement across cards
    CLAIM_ON_REPLACED_CARD = "claim_on_replaced_card"  #: a redemption on a card after its household got a newer one
    REVOKED_KEY_STATE = "revoked_key_state"  #: a card state a revoked key wrote at/after its revocation
    REVOKED_STATE_BUILT_ON = "revoked_state_built_on"  #: a later redemption read a revoked key's state
    UNKNOWN_CARD = "unknown_card"  #: redemptions on a card id no issuance or registry row names
    COMPLAINT_NOT_RECEIVED = "complaint_not_received"  #: a journalled complaint the server never received
    BLOCKED_CARD_USED = "blocked_card_used"  #: redemption after the office blocked the card (reported lost)


class Severity(str, enum.Enum):
    """How urgently an auditor should look."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class FindingStatus(str, enum.Enum):
    """Life cycle of a finding; only a person moves it out of ``open`` (reason required)."""

    OPEN = "open"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"


def _enum32(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class CardProfile(Base):
    """Audit facts about a card not carried by the registry: region and revocation.

    ``region`` is a Kemendagri code (``"62.71"``); ``revoked_at`` the instant from
    which a redemption with this card is a finding.
    """

    __tablename__ = "card_profiles"
    __table_args__ = (
        # the run's opening statement asks whether any card is revoked without reading every profile (0020)
        Index("ix_card_profiles_revoked", "revoked_at", postgresql_where=text("revoked_at IS NOT NULL"),
              sqlite_where=text("revoked_at IS NOT NULL")),
    )

    card_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str | None] = mapped_column(String(16))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: pseudonymous household reference, 16 hex digits, from the identity record (migration 0010).
    household_ref: Mapped[str | None] = mapped_column(String(16), index=True, default=None)
    revoke_reason: Mapped[str | None] = mapped_column(String(255))


class BenefitCycle(Base):
    """A benefit cycle: redemptions with ``starts_at <= wall_time < ends_at`` belong to it."""

    __tablename__ = "benefit_cycles"

    cycle_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class CardEntitlement(Base):
    """Issuer-granted amount per card, programme and cycle (rupiah, units or visits).

    ``programme`` is the code the journal carries (the trust bundle's programme name,
    e.g. ``"pangan"``); ``cycle_id`` is ``str(cycle_of(...))`` (e.g. ``"20261"``,
    docs/card-format.md §conventions). ``programme_id`` (card identity key 4) and
    ``unit`` (``package``/``rupiah``/``visit``) are set when the row comes from a
    verified identity record (migration 0004), else NULL.
    """

    __tablename__ = "card_entitlements"

    card_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    programme: Mapped[str] = mapped_column(String(32), primary_key=True)
    cycle_id: Mapped[str] = mapped_column(ForeignKey("benefit_cycles.cycle_id"), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    programme_id: Mapped[int | None] = mapped_column(Integer)
    unit: Mapped[str | None] = mapped_column(String(16))


class TerminalSite(Base):
    """Where a terminal stands, and (optionally) since when its key must be treated as compromised.

    ``compromised_from`` may be earlier than the registry's revocation instant
    (``terminals.decided_at``): a key stolen on Tuesday morning and revoked that
    afternoon makes every entry signed since the morning suspect.
    """

    __tablename__ = "terminal_sites"

    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"), primary_key=True)
    region: Mapped[str | None] = mapped_column(String(16))
    lat: Mapped[float | None] = mapped_column(Float)  #: degrees, WGS 84
    lon: Mapped[float | None] = mapped_column(Float)  #: degrees, WGS 84
    compromised_from: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Finding(Base):
    """One reconciliation result.

    ``fingerprint`` (SHA-256 hex of kind + subject key) makes re-runs idempotent:
    the same anomaly updates its row (evidence, last_seen) instead of adding one.
    ``evidence`` is a JSON list of entry ids (hex, 32 chars) of ``journal_entries``
    or, for conflicts/rejections, of the raw bytes' SHA-256 (64 hex chars).
    """

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[FindingKind] = mapped_column(_enum32(FindingKind), index=True)
    severity: Mapped[Severity] = mapped_column(_enum(Severity))
    card_id: Mapped[str | None] = mapped_column(String(64), index=True)
    terminal_id: Mapped[str | None] = mapped_column(String(64), index=True)
    summary: Mapped[str] = mapped_column(String(255))
    evidence: Mapped[str] = mapped_column(Text)  # JSON list of hex ids
    detail: Mapped[str] = mapped_column(Text)  # JSON object
    status: Mapped[FindingStatus] = mapped_column(_enum(FindingStatus), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_run_id: Mapped[int | None] = mapped_column(BigInteger)


class ReportedHead(Base):
    """A journal head a counter signed and reported (:mod:`server.heads`, migration 0009).

    One row per distinct ``(terminal_id, seq, entry_hash)`` reported; a head the stored
    journal reaches (an entry at ``seq`` with that hash) is pruned when a higher one
    arrives, so the table holds each terminal's highest head plus the heads the uploads
    have not reached yet: those are the ``journal_tail_missing`` candidates.
    ``message`` is the signed COSE_Sign1 as received (evidence); ``signed_at`` the
    counter's claimed time, ``received_at`` the server's.
    """

    __tablename__ = "journal_heads"
    __table_args__ = (UniqueConstraint("terminal_id", "seq", "entry_hash", name="uq_journal_heads_head"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"))
    boot_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    signed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    message: Mapped[bytes] = mapped_column(LargeBinary)


class ReconcileRun(Base):
    """One execution of :func:`server.reconcile.reconcile` (for the audit trail and the UI)."""

    __tablename__ = "reconcile_runs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entries: Mapped[int] = mapped_column(BigInteger, default=0)
    findings_new: Mapped[int] = mapped_column(Integer, default=0)
    findings_seen: Mapped[int] = mapped_column(Integer, default=0)
    findings_resolved: Mapped[int] = mapped_column(Integer, default=0)


class ReconcileState(Base):
    """The reconciliation watermark and single-flight row: one row, ``id`` 1 (docs/reconciliation.md §Incremental).

    :ivar journal_id: every ``journal_entries.id`` at or below this was in the journal the last
        run read (an incremental run reads the cards and terminals of the entries above it).
    :ivar registry_change_id: every ``registry_changes.id`` at or below this was read by the last run (NULL:
        none yet, the next run is full); an incremental run reads the registry changes above it.
    :ivar running_since: when the run in progress started (NULL: none); on SQLite its write takes
        the database's write lock for the run (single flight).
    """

    __tablename__ = "reconcile_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    journal_id: Mapped[int] = mapped_column(BigInteger, default=0)
    registry_change_id: Mapped[int | None] = mapped_column(BigInteger)
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    running_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RegistryChange(Base):
    """One change to a table the checks read besides the journal, appended by a trigger (migration 0020).

    Written on INSERT, UPDATE and DELETE of ``cards``, ``card_profiles`` and ``card_entitlements`` (the
    card id; for a profile also its household, before and after an update) and of ``terminal_sites``
    and ``benefit_cycles`` (``card_id`` NULL: not card-keyed). An incremental run adds the cards named
    past its watermark to its touched cards, and runs full for a NULL (docs/reconciliation.md §Incremental).

    :ivar changed_at: the writing transaction's start (PostgreSQL's watermark margin, as the journal's ``received_at``).
    """

    __tablename__ = "registry_changes"
    __table_args__ = ({"sqlite_autoincrement": True},)  # ids never reused after the log is pruned empty

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    card_id: Mapped[str | None] = mapped_column(String(64))
    household_ref: Mapped[str | None] = mapped_column(String(16))
    table_name: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.current_timestamp())


class ReconcileBoot(Base):
    """Clock aggregates of one boot of one terminal, folded from the journal entries read so far (migration 0017).

    ``clock_skew`` (:mod:`server.reconcile.terminal_checks`) flags a boot whose spread of
    wall − monotonic offset exceeds the threshold, and a terminal whose entries are dated after
    their receipt. A full run rebuilds this table from the whole journal; an incremental run
    folds only the entries above the watermark into it (MIN/MAX: folding an entry twice changes
    nothing, so PostgreSQL's re-read margin is harmless) and compares the result instead of
    re-reading the touched boots whole (docs/reconciliation.md §Incremental). On Citus:
    distributed by ``terminal_id``, co-located with ``journal_entries`` (docs/scaling.md).

    :ivar min_offset_s: lowest ``wall_time − mono_ns / 1e9`` of the boot's entries, seconds.
    :ivar max_offset_s: highest of the same.
    :ivar max_ahead_s: highest ``wall_time − received_at``, seconds (an entry dated in the future).
    :ivar journal_id: highest ``journal_entries.id`` folded in.
    """

    __tablename__ = "reconcile_boots"

    terminal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    boot_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    min_offset_s: Mapped[float] = mapped_column(Float)
    max_offset_s: Mapped[float] = mapped_column(Float)
    max_ahead_s: Mapped[float] = mapped_column(Float)
    journal_id: Mapped[int] = mapped_column(BigInteger)


#: Each card's taps in time order (card history, travel and counter checks).
#: Declared here, on D's table, because migration 0002 creates it.
ix_journal_card_time = Index("ix_journal_card_time", JournalEntryRow.card_id, JournalEntryRow.wall_time)
#: One boot of one terminal (an incremental run's clock-skew aggregate reads only the boots of new entries).
ix_journal_terminal_boot = Index("ix_journal_terminal_boot", JournalEntryRow.terminal_id, JournalEntryRow.boot_id)
