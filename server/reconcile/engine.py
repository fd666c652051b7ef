"""Set-based reconciliation of the stored journal (docs/design.md §Journal, §Reconciliation).

Every check is one SQL statement (window functions ``LAG``/``SUM ... OVER`` and
``GROUP BY ... HAVING``) that the database executes over the whole journal; the
same SQLAlchemy Core expressions run on SQLite (≥ 3.25) and PostgreSQL. Python
only turns the *anomalous* rows the database returns into :class:`Observation`
objects and upserts them as :class:`~server.reconcile.models.Finding` rows keyed
by a fingerprint, so re-running never duplicates a finding and never touches an
auditor's decision. Open findings that are no longer observed (a gap filled by a
late upload) are dismissed with the reason "resolved" by the system.

Checks (kind → what the SQL looks for):

- per terminal, over ``(terminal_id ORDER BY seq)``: ``terminal_gap`` (seq jumps),
  ``terminal_chain_break`` (prev_entry_hash ≠ LAG(entry_hash)), ``clock_backwards``
  (wall time decreasing), ``clock_skew`` (wall − monotonic offset spread within one
  boot, or wall time ahead of the server's receipt), ``revoked_terminal_used``;
  plus the upload's own evidence: ``journal_conflict``, ``rejected_entry``.
- per card, over redemptions (COMMIT/FINISHED): ``card_fork`` (one previous state
  hash with two successors, or one slot seq with two states), ``card_rollback``
  (ordered by the chip's own NTAG counter, the slot seq goes back: a genuine chip
  restored from an old dump), ``counter_backwards`` (NTAG counter lower than an
  earlier tap of the same UID: a second chip), ``card_chain_gap`` (slot seqs
  skipped: a redemption whose entry never arrived), ``entitlement_exceeded``
  (running ``SUM(amount)`` per card, programme and cycle above the entitlement,
  i.e. the remaining entitlement went negative), ``revoked_card_used``,
  ``impossible_travel`` (consecutive taps at terminals farther apart than
  ``max_speed_kmh`` allows).

Clock findings never drop or discount a signed entry; they are reported only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    and_,
    case,
    cast,
    distinct,
    func,
    literal,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import Alias

from cardlib.records.bundle import CARD_ID_LENGTH, UID_LENGTH, SortedIdSet
from cardlib.records.journal import EntryKind
from server.models import Card, JournalConflict, JournalEntryRow, Person, RejectedEntry, Terminal, TerminalStatus
from server.reconcile.errors import FindingNotFound, InvalidDecision
from server.reconcile.models import (
    BenefitCycle,
    CardEntitlement,
    CardProfile,
    Finding,
    FindingKind,
    FindingStatus,
    ReconcileRun,
    Severity,
    TerminalSite,
)
from server.types import utcnow

log = logging.getLogger(__name__)

__all__ = [
    "REDEMPTION_KINDS",
    "DenyCandidate",
    "Observation",
    "ReconcileConfig",
    "RunResult",
    "decide_finding",
    "deny_list_candidates",
    "deny_sets",
    "observe",
    "reconcile",
]

#: Entry kinds that mean a slot was written and an amount charged (docs/design.md §Tap sequence).
REDEMPTION_KINDS: tuple[int, ...] = (int(EntryKind.COMMIT), int(EntryKind.FINISHED))
#: Kilometres per degree of latitude (WGS 84 mean).
KM_PER_DEG_LAT = 110.574
#: Kilometres per degree of longitude at the equator.
KM_PER_DEG_LON_EQUATOR = 111.320
#: Finding kinds that make a card a deny-list candidate once an auditor confirms them.
DENY_KINDS = frozenset({FindingKind.CARD_FORK, FindingKind.CARD_ROLLBACK, FindingKind.COUNTER_BACKWARDS,
                        FindingKind.IMPOSSIBLE_TRAVEL, FindingKind.REVOKED_CARD_USED,
                        FindingKind.ENTITLEMENT_EXCEEDED})
#: Rows per round trip when streaming the journal.
YIELD_PER = 2000
#: The reason recorded when an open finding is no longer observed.
RESOLVED_REASON = "resolved: no longer observed by reconciliation run {run}"


@dataclass(frozen=True)
class ReconcileConfig:
    """Thresholds (units in the names).

    :ivar max_speed_kmh: fastest plausible travel between two counters, km/h
        (rivers and dirt roads in Kalteng: 60 km/h is generous).
    :ivar min_travel_km: distances below this are "the same place", km.
    :ivar ref_lat_deg: latitude of the province, degrees (equirectangular distance:
        error < 0.5 % within a province, no trigonometry needed in SQL).
    :ivar clock_step_tolerance_s: wall-time decrease tolerated along seq, seconds.
    :ivar skew_threshold_s: spread of (wall − monotonic) within one boot, seconds.
    :ivar future_tolerance_s: how far an entry may be dated after its receipt, seconds.
    :ivar evidence_limit: most entry ids stored in one finding's evidence.
    """

    max_speed_kmh: float = 60.0
    min_travel_km: float = 5.0
    ref_lat_deg: float = -1.7
    clock_step_tolerance_s: float = 1.0
    skew_threshold_s: float = 300.0
    future_tolerance_s: float = 300.0
    evidence_limit: int = 1000

    @property
    def km_per_deg_lon(self) -> float:
        """Kilometres per degree of longitude at :attr:`ref_lat_deg`."""
        return KM_PER_DEG_LON_EQUATOR * math.cos(math.radians(self.ref_lat_deg))


@dataclass
class Observation:
    """An anomaly as found by one check (before it becomes a finding).

    :ivar key: identifies the anomaly within its kind (terminal + range, card...);
        with the kind it makes the finding's fingerprint.
    :ivar evidence: entry ids (16 bytes) or raw SHA-256s (32 bytes), in order.
    """

    kind: FindingKind
    severity: Severity
    key: str
    summary: str
    evidence: list[bytes] = field(default_factory=list)
    card_id: str | None = None
    terminal_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of ``kind|key``."""
        return hashlib.sha256(f"{self.kind.value}|{self.key}".encode()).hexdigest()


@dataclass(frozen=True)
class RunResult:
    """Counts of one reconciliation run."""

    run_id: int
    entries: int
    observed: int
    new: int
    resolved: int
    by_kind: dict[str, int]


@dataclass(frozen=True)
class DenyCandidate:
    """A card an auditor confirmed as cloned/abused: goes on the next bundle's deny list.

    :ivar tag_uids: chip UIDs seen with the card (7 bytes on NTAG).
    :ivar finding_ids: the confirmed findings that put it here.
    """

    card_id: str
    tag_uids: tuple[bytes, ...]
    finding_ids: tuple[int, ...]


# ----------------------------------------------------------------------------- SQL helpers


class epoch_s(FunctionElement[float]):  # noqa: N801 - SQL function style
    """Seconds since 1970-01-01T00:00Z of a timestamp column, as a float (both dialects)."""

    type = Float()
    inherit_cache = True
    name = "epoch_s"


@compiles(epoch_s, "sqlite")
def _epoch_sqlite(element: epoch_s, compiler: SQLCompiler, **kw: Any) -> str:
    # UTCDateTime stores UTC text on SQLite; julianday() parses it (23 µs resolution).
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


@compiles(epoch_s, "postgresql")
def _epoch_pg(element: epoch_s, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)}) AS DOUBLE PRECISION)"


J = JournalEntryRow.__table__
T = Terminal.__table__
TS = TerminalSite.__table__
CP = CardProfile.__table__
CE = CardEntitlement.__table__
BC = BenefitCycle.__table__
F = Finding.__table__

_REDEEMED = and_(J.c.kind.in_(REDEMPTION_KINDS), J.c.card_id.is_not(None))


class full_scan(Alias):  # noqa: N801 - SQL construct style
    """An alias of a table that SQLite reads by a full table scan (``NOT INDEXED``); a plain alias elsewhere.

    For the per-card statements: walking ``ix_journal_card_time`` visits the journal's
    rows in card order, i.e. one random row lookup per entry (rows are stored in upload
    order), which costs more than reading the table in order and sorting (issue 8:
    e.g. 1.8 s → 1.0 s for a GROUP BY card at 1M entries). PostgreSQL chooses for itself.
    """

    inherit_cache = True


@compiles(full_scan, "sqlite")
def _full_scan_sqlite(element: full_scan, compiler: SQLCompiler, **kw: Any) -> str:
    text = compiler.visit_alias(element, **kw)
    return f"{text} NOT INDEXED" if kw.get("asfrom") else text


#: ``journal_entries`` for statements that read every card's entries (see :class:`full_scan`).
JS = full_scan._construct(J, name="journal_scan")
_REDEEMED_S = and_(JS.c.kind.in_(REDEMPTION_KINDS), JS.c.card_id.is_not(None))


def _hex(ids: Iterable[bytes | None]) -> list[str]:
    return [i.hex() for i in ids if i is not None]


def _dedup(ids: Iterable[bytes | None]) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for i in ids:
        if i is not None:
            seen.setdefault(i, None)
    return list(seen)


# ----------------------------------------------------------------------------- terminal checks


def _terminal_pass(conn: Connection, cfg: ReconcileConfig) -> tuple[list[Observation], list[Observation]]:
    """Gaps, broken links and backward clock steps along ``(terminal_id ORDER BY seq)``, in one window pass.

    One statement: ``LAG(seq)``, ``LAG(entry_hash)`` and ``LAG(wall)`` over ``PARTITION BY
    terminal_id ORDER BY seq`` (SQLite walks ``uq_journal_terminal_seq``, no sort), keeping
    the rows where a gap, a broken link or a clock step back shows; the flags say which.
    Merged because every window pass over the journal costs one full ordered walk of it
    (≈ 2.5 s per pass at 1M entries on SQLite; issue 8, docs/design.md §Reconciliation). The window carries only
    what the conditions need; the entry ids and kind of the few rows kept (and of their
    predecessor, at ``prev_seq``) are joined back through ``uq_journal_terminal_seq``
    (every column a window carries is paid for every entry: 3.7 → 3.25 s).

    :returns: (``terminal_gap``/``terminal_chain_break`` observations, ``clock_backwards``
        observations), each in ``(terminal_id, seq)`` order.
    """
    by = {"partition_by": J.c.terminal_id, "order_by": J.c.seq}
    wall = epoch_s(J.c.wall_time)
    w = select(
        J.c.terminal_id, J.c.seq, J.c.prev_entry_hash, wall.label("wall"),
        func.lag(J.c.seq).over(**by).label("prev_seq"),
        func.lag(J.c.entry_hash).over(**by).label("prev_hash"),
        func.lag(wall).over(**by).label("prev_wall"),
    ).subquery()
    gap = w.c.seq - func.coalesce(w.c.prev_seq, 0) > 1
    broken = and_(w.c.seq == w.c.prev_seq + 1, w.c.prev_entry_hash != w.c.prev_hash)
    back = w.c.wall < w.c.prev_wall - cfg.clock_step_tolerance_s
    cur, prev = J.alias("cur"), J.alias("prev")
    rows = conn.execute(select(w, cur.c.entry_id, cur.c.kind, prev.c.entry_id.label("prev_entry_id"),
                               case((gap, literal(1)), else_=literal(0)).label("is_gap"),
                               case((or_(gap, broken), literal(1)), else_=literal(0)).label("is_chain"),
                               case((back, literal(1)), else_=literal(0)).label("is_back"))
                        .select_from(w.join(cur, and_(cur.c.terminal_id == w.c.terminal_id, cur.c.seq == w.c.seq))
                                     .outerjoin(prev, and_(prev.c.terminal_id == w.c.terminal_id,
                                                           prev.c.seq == w.c.prev_seq)))
                        .where(or_(gap, broken, back)).order_by(w.c.terminal_id, w.c.seq)).all()
    chain: list[Observation] = []
    backwards: list[Observation] = []
    for r in rows:
        if r.is_gap:
            first, last = (r.prev_seq or 0) + 1, r.seq - 1
            chain.append(Observation(
                FindingKind.TERMINAL_GAP, Severity.HIGH, f"{r.terminal_id}|{first}|{last}",
                f"terminal {r.terminal_id}: entries {first}..{last} missing ({last - first + 1})",
                _dedup([r.prev_entry_id, r.entry_id]), terminal_id=r.terminal_id,
                detail={"first_missing": first, "last_missing": last, "count": last - first + 1}))
        elif r.is_chain:
            chain.append(Observation(
                FindingKind.TERMINAL_CHAIN_BREAK, Severity.CRITICAL, f"{r.terminal_id}|{r.seq}",
                f"terminal {r.terminal_id}: seq {r.seq} does not link to seq {r.prev_seq}",
                _dedup([r.prev_entry_id, r.entry_id]), terminal_id=r.terminal_id,
                detail={"seq": r.seq, "expected_prev_hash": r.prev_hash.hex(),
                        "prev_entry_hash": r.prev_entry_hash.hex()}))
        if r.is_back:
            step = r.prev_wall - r.wall
            announced = r.kind == int(EntryKind.CLOCK_SET)
            backwards.append(Observation(
                FindingKind.CLOCK_BACKWARDS, Severity.LOW if announced else Severity.MEDIUM,
                f"{r.terminal_id}|{r.seq}",
                f"terminal {r.terminal_id}: clock went back {step:.0f} s between seq {r.prev_seq} and {r.seq}",
                _dedup([r.prev_entry_id, r.entry_id]), terminal_id=r.terminal_id,
                detail={"seq": r.seq, "step_back_s": round(step, 3), "announced_by_clock_set": announced}))
    return chain, backwards


def _terminal_chain(conn: Connection, cfg: ReconcileConfig | None = None) -> list[Observation]:
    """Gaps and broken links along ``(terminal_id ORDER BY seq)`` (the first half of :func:`_terminal_pass`)."""
    return _terminal_pass(conn, cfg or ReconcileConfig())[0]


def _upload_evidence(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Conflicts and rejections the upload kept (server.upload)."""
    jc = JournalConflict.__table__
    rows = conn.execute(
        select(jc.c.terminal_id, jc.c.seq, jc.c.entry_hash, J.c.entry_id.label("kept_entry_id"))
        .select_from(jc.outerjoin(J, J.c.entry_hash == jc.c.existing_entry_hash))
        .order_by(jc.c.terminal_id, jc.c.seq)).all()
    out = [Observation(
        FindingKind.JOURNAL_CONFLICT, Severity.HIGH, r.entry_hash.hex(),
        f"terminal {r.terminal_id}: a second, different entry signed for seq {r.seq}",
        _dedup([r.kept_entry_id, r.entry_hash]), terminal_id=r.terminal_id,
        detail={"seq": r.seq, "conflicting_entry_sha256": r.entry_hash.hex()}) for r in rows]
    re_ = RejectedEntry.__table__
    grouped: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for r in conn.execute(select(re_.c.terminal_id, re_.c.reason, re_.c.raw_sha256)
                          .order_by(re_.c.terminal_id, re_.c.reason, re_.c.id)):
        grouped[(r.terminal_id, r.reason)].append(r.raw_sha256)
    for (terminal_id, reason), shas in grouped.items():
        severity = Severity.HIGH if reason in ("bad_signature", "chain_broken", "unknown_kid") else Severity.MEDIUM
        out.append(Observation(
            FindingKind.REJECTED_ENTRY, severity, f"{terminal_id}|{reason}",
            f"terminal {terminal_id}: {len(shas)} uploaded entries rejected ({reason})",
            shas[: cfg.evidence_limit], terminal_id=terminal_id, detail={"reason": reason, "count": len(shas)}))
    return out


def _revoked_terminals(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Entries signed (wall time) or received after the terminal key's revocation.

    One join of the journal with ``terminals`` and ``terminal_sites``. The extra
    ``terminal_id IN (revoked or compromised terminals)`` changes no result (only those
    terminals have a non-NULL instant to compare with) but lets the database start from
    those few terminals and read only their entries through ``uq_journal_terminal_seq``,
    instead of walking the whole journal (0.9 s at 1M entries on SQLite; issue 8).
    """
    revoked_at = case((T.c.status == TerminalStatus.REVOKED.value, T.c.decided_at), else_=None)
    effective = func.coalesce(TS.c.compromised_from, revoked_at)
    suspect = union(select(T.c.terminal_id).where(T.c.status == TerminalStatus.REVOKED.value),
                    select(TS.c.terminal_id).where(TS.c.compromised_from.is_not(None)))
    rows = conn.execute(
        select(J.c.terminal_id, J.c.seq, J.c.entry_id, effective.label("effective"))
        .select_from(J.join(T, T.c.terminal_id == J.c.terminal_id)
                     .outerjoin(TS, TS.c.terminal_id == J.c.terminal_id))
        .where(or_(J.c.wall_time >= effective, J.c.received_at >= revoked_at), J.c.terminal_id.in_(suspect))
        .order_by(J.c.terminal_id, J.c.seq)).all()
    groups: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        groups[r.terminal_id].append(r)
    out = []
    for terminal_id, rs in groups.items():
        out.append(Observation(
            FindingKind.REVOKED_TERMINAL_USED, Severity.CRITICAL, terminal_id,
            f"terminal {terminal_id}: {len(rs)} entries signed after its key was revoked/compromised",
            [r.entry_id for r in rs][: cfg.evidence_limit], terminal_id=terminal_id,
            detail={"count": len(rs), "first_seq": rs[0].seq, "last_seq": rs[-1].seq,
                    "revoked_from": rs[0].effective.isoformat() if isinstance(rs[0].effective, dt.datetime)
                    else str(rs[0].effective)}))
    return out


def _clocks(conn: Connection, cfg: ReconcileConfig,
            backwards: list[Observation] | None = None) -> list[Observation]:
    """Backward steps along seq; (wall − monotonic) spread per boot; entries dated in the future.

    Backward steps come from :func:`_terminal_pass` (pass them as ``backwards`` when it
    already ran). The two whole-group checks are one statement: a ``GROUP BY terminal_id,
    boot_id`` (MIN/MAX of the offset, MAX of wall − received) finds the terminals with a
    group over a threshold, and only their entries (``terminal_id IN (that aggregate)``)
    go through the windows that pick the evidence rows (MIN/MAX ``OVER (PARTITION BY
    terminal_id, boot_id)``, MAX ``OVER (PARTITION BY terminal_id)``). An honest journal
    costs one aggregate pass instead of two window passes over every entry (issue 8);
    restricting whole terminals leaves every window partition unchanged, so the evidence
    is the same as over the whole journal.
    """
    out = list(_terminal_pass(conn, cfg)[1] if backwards is None else backwards)
    wall = epoch_s(J.c.wall_time)
    offset = (wall - cast(J.c.mono_ns, Float) / 1e9)
    ahead = wall - epoch_s(J.c.received_at)
    flagged = (select(J.c.terminal_id).group_by(J.c.terminal_id, J.c.boot_id)
               .having(or_(func.max(offset) - func.min(offset) > cfg.skew_threshold_s,
                           func.max(ahead) > cfg.future_tolerance_s)))
    part = (J.c.terminal_id, J.c.boot_id)
    o = select(
        J.c.terminal_id, J.c.boot_id, J.c.seq, J.c.entry_id, offset.label("off"), ahead.label("ahead"),
        func.min(offset).over(partition_by=part).label("mn"),
        func.max(offset).over(partition_by=part).label("mx"),
        func.max(case((J.c.kind == int(EntryKind.CLOCK_SET), 1), else_=0)).over(partition_by=part).label("set"),
        func.max(ahead).over(partition_by=J.c.terminal_id).label("ahead_mx"),
    ).where(J.c.terminal_id.in_(flagged)).subquery()
    is_skew = and_(o.c.mx - o.c.mn > cfg.skew_threshold_s, or_(o.c.off == o.c.mn, o.c.off == o.c.mx))
    is_future = and_(o.c.ahead == o.c.ahead_mx, o.c.ahead_mx > cfg.future_tolerance_s)
    skewed: dict[tuple[str, int], list[Any]] = defaultdict(list)
    future: dict[str, Any] = {}  # terminal → its first entry (by seq) at the maximum, in terminal order
    for r in conn.execute(select(o, case((is_skew, 1), else_=0).label("is_skew"),
                                 case((is_future, 1), else_=0).label("is_future"))
                          .where(or_(is_skew, is_future)).order_by(o.c.terminal_id, o.c.boot_id, o.c.seq)):
        if r.is_skew:
            skewed[(r.terminal_id, r.boot_id)].append(r)
        # ties on the maximum: the first entry is evidence enough
        if r.is_future and (r.terminal_id not in future or r.seq < future[r.terminal_id].seq):
            future[r.terminal_id] = r
    for (terminal_id, boot_id), rs in skewed.items():
        spread = rs[0].mx - rs[0].mn
        out.append(Observation(
            FindingKind.CLOCK_SKEW, Severity.LOW if rs[0].set else Severity.MEDIUM, f"{terminal_id}|boot|{boot_id}",
            f"terminal {terminal_id} boot {boot_id}: wall clock moved {spread:.0f} s against its monotonic clock",
            _dedup(r.entry_id for r in rs)[:2] + _dedup(r.entry_id for r in rs)[-1:],
            terminal_id=terminal_id, detail={"boot_id": boot_id, "spread_s": round(spread, 3)}))
    for r in future.values():
        out.append(Observation(
            FindingKind.CLOCK_SKEW, Severity.MEDIUM, f"{r.terminal_id}|future",
            f"terminal {r.terminal_id}: entries dated up to {r.ahead:.0f} s after the server received them",
            [r.entry_id], terminal_id=r.terminal_id, detail={"ahead_s": round(r.ahead, 3), "seq": r.seq}))
    return out


# ----------------------------------------------------------------------------- card checks


def _forks(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """One previous state with ≥ 2 successors, or one slot seq with ≥ 2 states (clone or replay)."""
    by_prev = (select(JS.c.card_id, JS.c.state_hash_prev).where(_REDEEMED_S)
               .group_by(JS.c.card_id, JS.c.state_hash_prev)
               .having(func.count(distinct(JS.c.state_hash_new)) > 1).subquery())
    by_seq = (select(JS.c.card_id, JS.c.slot_seq_after).where(_REDEEMED_S)
              .group_by(JS.c.card_id, JS.c.slot_seq_after)
              .having(func.count(distinct(JS.c.state_hash_new)) > 1).subquery())
    cols = (J.c.card_id, J.c.entry_id, J.c.terminal_id, J.c.seq, J.c.wall_time, J.c.slot_seq_before,
            J.c.slot_seq_after, J.c.state_hash_prev)
    q = union(
        select(*cols).select_from(J.join(by_prev, and_(by_prev.c.card_id == J.c.card_id,
                                                       by_prev.c.state_hash_prev == J.c.state_hash_prev)))
        .where(_REDEEMED),
        select(*cols).select_from(J.join(by_seq, and_(by_seq.c.card_id == J.c.card_id,
                                                      by_seq.c.slot_seq_after == J.c.slot_seq_after)))
        .where(_REDEEMED),
    ).subquery()
    groups: dict[str, list[Any]] = defaultdict(list)
    for r in conn.execute(select(q).order_by(q.c.card_id, q.c.slot_seq_before, q.c.wall_time, q.c.terminal_id)):
        groups[r.card_id].append(r)
    out = []
    for card_id, rs in groups.items():
        points = sorted({r.slot_seq_before for r in rs if r.slot_seq_before is not None})
        out.append(Observation(
            FindingKind.CARD_FORK, Severity.CRITICAL, card_id,
            f"card {card_id}: slot state forked at seq {', '.join(map(str, points))} "
            f"({len(rs)} redemptions at {len({r.terminal_id for r in rs})} terminals) — clone or replay",
            _dedup(r.entry_id for r in rs)[: cfg.evidence_limit], card_id=card_id,
            detail={"fork_seqs": points, "terminals": sorted({r.terminal_id for r in rs})}))
    return out


def _card_order(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Rollback (by NTAG counter), counter backwards (by time) and slot-seq gaps."""
    out: list[Observation] = []
    # Rollback: the chip's own counter orders its sessions; the slot seq must not go back.
    by_ctr = {"partition_by": (JS.c.card_id, JS.c.tag_uid),
              "order_by": (JS.c.ntag_counter, JS.c.wall_time, JS.c.terminal_id, JS.c.seq)}
    w = select(
        JS.c.card_id, JS.c.entry_id, JS.c.wall_time, JS.c.ntag_counter, JS.c.slot_seq_before,
        func.lag(JS.c.slot_seq_after).over(**by_ctr).label("prev_after"),
        func.lag(JS.c.wall_time).over(**by_ctr).label("prev_wall"),
        func.lag(JS.c.ntag_counter).over(**by_ctr).label("prev_ctr"),
        func.lag(JS.c.entry_id).over(**by_ctr).label("prev_entry_id"),
    ).where(_REDEEMED_S, JS.c.ntag_counter.is_not(None)).subquery()
    groups: dict[str, list[Any]] = defaultdict(list)
    for r in conn.execute(select(w).where(w.c.slot_seq_before < w.c.prev_after, w.c.wall_time > w.c.prev_wall,
                                          w.c.ntag_counter > w.c.prev_ctr)
                          .order_by(w.c.card_id, w.c.ntag_counter)):
        groups[r.card_id].append(r)
    for card_id, rs in groups.items():
        out.append(Observation(
            FindingKind.CARD_ROLLBACK, Severity.HIGH, card_id,
            f"card {card_id}: same chip (counter rising) but slot seq went back "
            f"from {rs[0].prev_after} to {rs[0].slot_seq_before} — restored from an old dump",
            _dedup(x for r in rs for x in (r.prev_entry_id, r.entry_id))[: cfg.evidence_limit], card_id=card_id,
            detail={"steps": [{"from_seq": r.prev_after, "to_seq": r.slot_seq_before,
                               "ntag_counter": r.ntag_counter} for r in rs]}))

    # Counter backwards: by wall time, a genuine UID's counter never decreases.
    # Partitioned by (card_id, tag_uid): a clone carries the card's signed identity, so both
    # chips share the card id; keying by card id keeps the window shard-local on Citus.
    by_time = {"partition_by": (JS.c.card_id, JS.c.tag_uid), "order_by": (JS.c.wall_time, JS.c.terminal_id, JS.c.seq)}
    w = select(
        JS.c.card_id, JS.c.tag_uid, JS.c.entry_id, JS.c.terminal_id, JS.c.ntag_counter, JS.c.wall_time, JS.c.seq,
        func.lag(JS.c.ntag_counter).over(**by_time).label("prev_ctr"),
        func.lag(JS.c.entry_id).over(**by_time).label("prev_entry_id"),
        func.lag(JS.c.terminal_id).over(**by_time).label("prev_terminal"),
    ).where(JS.c.card_id.is_not(None), JS.c.tag_uid.is_not(None), JS.c.ntag_counter.is_not(None)).subquery()
    groups = defaultdict(list)
    for r in conn.execute(select(w).where(w.c.ntag_counter < w.c.prev_ctr)
                          # drops of one chip in the window's (time) order: the first drop is the summary
                          .order_by(w.c.card_id, w.c.tag_uid, w.c.wall_time, w.c.terminal_id, w.c.seq)):
        groups[f"{r.card_id}|{r.tag_uid.hex()}"].append(r)
    for key, rs in groups.items():
        out.append(Observation(
            FindingKind.COUNTER_BACKWARDS, Severity.HIGH, key,
            f"card {rs[0].card_id} UID {rs[0].tag_uid.hex()}: NFC counter fell from {rs[0].prev_ctr} to "
            f"{rs[0].ntag_counter} ({rs[0].prev_terminal} → {rs[0].terminal_id}) — a second chip",
            _dedup(x for r in rs for x in (r.prev_entry_id, r.entry_id))[: cfg.evidence_limit],
            card_id=rs[0].card_id, detail={"tag_uid": rs[0].tag_uid.hex(), "drops": len(rs)}))

    # Slot-seq gap: consecutive known states of a card must join up.
    by_seq = {"partition_by": JS.c.card_id, "order_by": (JS.c.slot_seq_before, JS.c.slot_seq_after, JS.c.wall_time)}
    w = select(
        JS.c.card_id, JS.c.entry_id, JS.c.slot_seq_before,
        func.lag(JS.c.slot_seq_after).over(**by_seq).label("prev_after"),
        func.lag(JS.c.entry_id).over(**by_seq).label("prev_entry_id"),
    ).where(_REDEEMED_S, JS.c.slot_seq_before.is_not(None)).subquery()
    for r in conn.execute(select(w).where(w.c.slot_seq_before > w.c.prev_after).order_by(w.c.card_id)):
        out.append(Observation(
            FindingKind.CARD_CHAIN_GAP, Severity.MEDIUM, f"{r.card_id}|{r.prev_after}|{r.slot_seq_before}",
            f"card {r.card_id}: slot seq {r.prev_after} → {r.slot_seq_before}: "
            f"{r.slot_seq_before - r.prev_after} redemption(s) without a journal entry",
            _dedup([r.prev_entry_id, r.entry_id]), card_id=r.card_id,
            detail={"from_seq": r.prev_after, "to_seq": r.slot_seq_before}))
    return out


def _entitlements(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Running total per card, programme and cycle against the entitlement (remaining never negative).

    One statement: a ``GROUP BY card_id, programme, cycle_id`` sums the redemptions and
    keeps the groups whose total exceeds the entitlement (``LEFT JOIN card_entitlements``,
    missing = 0) of cards that have entitlements, and only the redemptions of those cards
    (``card_id IN (that aggregate)``) go through the running-sum window (``SUM(amount)
    OVER (... ORDER BY wall_time, terminal_id, seq)``) that picks the evidence. An honest
    journal costs one aggregate pass where the window over every redemption cost a sorted
    window pass (issue 8); whole cards are kept, so every (card, programme, cycle)
    partition and its running sum are the same as over the whole journal.
    """
    part = (J.c.card_id, J.c.programme, BC.c.cycle_id)
    entitled = func.coalesce(CE.c.amount, 0)
    in_cycle = J.join(BC, and_(J.c.wall_time >= BC.c.starts_at, J.c.wall_time < BC.c.ends_at))
    g = (select(JS.c.card_id, JS.c.programme, BC.c.cycle_id, func.sum(JS.c.amount).label("total"))
         .select_from(JS.join(BC, and_(JS.c.wall_time >= BC.c.starts_at, JS.c.wall_time < BC.c.ends_at)))
         .where(_REDEEMED_S).group_by(JS.c.card_id, JS.c.programme, BC.c.cycle_id).subquery())
    over = (select(g.c.card_id)
            .select_from(g.outerjoin(CE, and_(CE.c.card_id == g.c.card_id, CE.c.programme == g.c.programme,
                                              CE.c.cycle_id == g.c.cycle_id)))
            .where(g.c.total > entitled, g.c.card_id.in_(select(CE.c.card_id).distinct())))
    w = select(
        J.c.card_id, J.c.programme, BC.c.cycle_id, J.c.entry_id, J.c.amount, entitled.label("entitled"),
        J.c.wall_time, J.c.terminal_id, J.c.seq,
        # PostgreSQL's SUM(bigint) is numeric: cast back so both databases return int.
        cast(func.sum(J.c.amount).over(partition_by=part, order_by=(J.c.wall_time, J.c.terminal_id, J.c.seq)),
             BigInteger).label("running"),
        cast(func.sum(J.c.amount).over(partition_by=part), BigInteger).label("total"),
    ).select_from(
        in_cycle.outerjoin(CE, and_(CE.c.card_id == J.c.card_id, CE.c.programme == J.c.programme,
                                    CE.c.cycle_id == BC.c.cycle_id))
    ).where(_REDEEMED, J.c.card_id.in_(over)).subquery()  # ``over`` only keeps cards with entitlements
    groups: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for r in conn.execute(select(w).where(w.c.total > w.c.entitled)
                          .order_by(w.c.card_id, w.c.programme, w.c.cycle_id, w.c.running,
                                    w.c.wall_time, w.c.terminal_id, w.c.seq)):  # ties: the window's order
        groups[(r.card_id, r.programme, r.cycle_id)].append(r)
    out = []
    for (card_id, programme, cycle_id), rs in groups.items():
        first_over = next(r for r in rs if r.running > r.entitled)
        out.append(Observation(
            FindingKind.ENTITLEMENT_EXCEEDED, Severity.HIGH, f"{card_id}|{programme}|{cycle_id}",
            f"card {card_id}: {programme} in cycle {cycle_id}: {rs[0].total} redeemed of {rs[0].entitled} "
            f"(remaining {rs[0].entitled - rs[0].total})",
            [r.entry_id for r in rs][: cfg.evidence_limit], card_id=card_id,
            detail={"programme": programme, "cycle_id": cycle_id, "entitled": rs[0].entitled,
                    "total": rs[0].total, "first_over_entry_id": first_over.entry_id.hex()}))
    return out


def _revoked_cards(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Redemptions at or after a card's revocation.

    One join of the journal with ``card_profiles``. The extra ``card_id IN (revoked
    cards)`` changes no result (the join already needs ``revoked_at``) but makes SQLite
    start from the few revoked cards and read their entries through
    ``ix_journal_card_time``, where it walked every entry in card order looking up each
    card's profile (1.6 s → 0.01 s at 1M entries; issue 8).
    """
    groups: dict[str, list[Any]] = defaultdict(list)
    revoked = select(CP.c.card_id).where(CP.c.revoked_at.is_not(None))
    for r in conn.execute(select(J.c.card_id, J.c.entry_id, CP.c.revoked_at)
                          .select_from(J.join(CP, CP.c.card_id == J.c.card_id))
                          .where(_REDEEMED, CP.c.revoked_at.is_not(None), J.c.wall_time >= CP.c.revoked_at,
                                 J.c.card_id.in_(revoked))
                          .order_by(J.c.card_id, J.c.wall_time, J.c.terminal_id, J.c.seq)):
        groups[r.card_id].append(r)
    return [Observation(
        FindingKind.REVOKED_CARD_USED, Severity.CRITICAL, card_id,
        f"card {card_id}: {len(rs)} redemptions after its revocation",
        [r.entry_id for r in rs][: cfg.evidence_limit], card_id=card_id,
        detail={"count": len(rs), "revoked_at": str(rs[0].revoked_at)}) for card_id, rs in groups.items()]


def _travel(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Consecutive taps of one card at terminals too far apart for the time between them.

    One window pass over the card's taps at sited terminals (``PARTITION BY card_id ORDER
    BY wall_time, terminal_id, seq``) carries only ``LAG`` of the terminal, the raw wall
    time and the entry id; both terminals' coordinates come from joining
    ``terminal_sites`` on them afterwards (its primary key, so the same values the
    window's ``lat``/``LAG(lat)`` gave) and the seconds are computed outside the window,
    on the rows it returns. Fewer window columns and no ``julianday()`` inside the window:
    each one was paid for every tap (issue 8).
    """
    by = {"partition_by": JS.c.card_id, "order_by": (JS.c.wall_time, JS.c.terminal_id, JS.c.seq)}
    w = select(
        JS.c.card_id, JS.c.entry_id, JS.c.terminal_id, JS.c.wall_time, JS.c.seq,
        func.lag(JS.c.terminal_id).over(**by).label("p_terminal"),
        func.lag(JS.c.wall_time).over(**by).label("p_wall"),
        func.lag(JS.c.entry_id).over(**by).label("p_entry_id"),
    ).select_from(JS.join(TS, TS.c.terminal_id == JS.c.terminal_id)).where(
        JS.c.card_id.is_not(None), TS.c.lat.is_not(None), TS.c.lon.is_not(None)).subquery()
    c, p = TS.alias("c_site"), TS.alias("p_site")
    at_s = epoch_s(w.c.wall_time)
    p_at_s = epoch_s(w.c.p_wall)
    dy = (c.c.lat - p.c.lat) * KM_PER_DEG_LAT
    dx = (c.c.lon - p.c.lon) * cfg.km_per_deg_lon
    d2 = dx * dx + dy * dy
    reach = (at_s - p_at_s) * (cfg.max_speed_kmh / 3600.0)
    rows = conn.execute(select(w.c.card_id, w.c.entry_id, w.c.terminal_id, w.c.p_terminal, w.c.p_entry_id,
                               at_s.label("at_s"), p_at_s.label("p_at_s"), d2.label("d2"))
                        .select_from(w.join(c, c.c.terminal_id == w.c.terminal_id)
                                     .join(p, p.c.terminal_id == w.c.p_terminal))
                        .where(w.c.terminal_id != w.c.p_terminal, d2 > cfg.min_travel_km ** 2, d2 > reach * reach)
                        # ties on the seconds in the window's order
                        .order_by(w.c.card_id, at_s, w.c.wall_time, w.c.terminal_id, w.c.seq)).all()
    out = []
    for r in rows:
        km = math.sqrt(r.d2)
        minutes = (r.at_s - r.p_at_s) / 60.0
        out.append(Observation(
            FindingKind.IMPOSSIBLE_TRAVEL, Severity.HIGH, f"{r.card_id}|{r.p_entry_id.hex()}|{r.entry_id.hex()}",
            f"card {r.card_id}: {r.p_terminal} → {r.terminal_id}, {km:.0f} km in {minutes:.0f} min",
            [r.p_entry_id, r.entry_id], card_id=r.card_id, terminal_id=r.terminal_id,
            detail={"km": round(km, 1), "minutes": round(minutes, 1), "from_terminal": r.p_terminal,
                    "to_terminal": r.terminal_id}))
    return out


# ----------------------------------------------------------------------------- run


def observe(conn: Connection, cfg: ReconcileConfig | None = None) -> list[Observation]:
    """Run every check on ``conn`` (read-only) and return the anomalies found.

    Deterministic order: by check, then by the SQL's ORDER BY.
    """
    cfg = cfg or ReconcileConfig()
    out: list[Observation] = []
    chain, backwards = _terminal_pass(conn, cfg)
    out += chain
    out += _upload_evidence(conn, cfg)
    out += _revoked_terminals(conn, cfg)
    out += _clocks(conn, cfg, backwards)
    out += _forks(conn, cfg)
    out += _card_order(conn, cfg)
    out += _entitlements(conn, cfg)
    out += _revoked_cards(conn, cfg)
    out += _travel(conn, cfg)
    return out


#: Stored columns that must equal the signed claims (an edited column would mislead every SQL check).
_SIGNED_COLUMNS = ("terminal_id", "boot_id", "seq", "kind", "mono_ns", "clock_synced", "card_id", "tag_uid",
                   "programme", "amount", "slot_seq_before", "slot_seq_after", "state_hash_prev",
                   "state_hash_new", "ntag_counter", "prev_entry_hash")


def observe_signatures(conn: Connection, cfg: ReconcileConfig | None = None) -> list[Observation]:
    """Re-verify every stored entry against its terminal's key and compare the columns to the signed claims.

    The SQL checks read the decoded columns; this pass proves those columns are
    what the terminal signed (an operator editing ``amount`` or ``card_id`` is
    caught). It is the one row-by-row pass (Ed25519 cannot run in SQL): streamed,
    flat memory, cost ≈ one Ed25519 verification per entry.
    """
    from cardlib.records.errors import RecordError
    from cardlib.records.journal import entry_hash, verify_entry
    from server.upload import cose_key_of

    cfg = cfg or ReconcileConfig()
    keys = {t.terminal_id: cose_key_of(t) for t in Session(bind=conn).scalars(select(Terminal))}
    bad: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
    cols = [J.c[c] for c in _SIGNED_COLUMNS]
    stmt = select(J.c.entry_id, J.c.raw, J.c.entry_hash, J.c.wall_time, *cols).order_by(J.c.terminal_id, J.c.seq)
    for row in conn.execute(stmt.execution_options(yield_per=YIELD_PER)):
        key = keys.get(row.terminal_id)
        problem = ""
        try:
            if key is None:
                raise RecordError(f"no key for terminal {row.terminal_id}")
            e = verify_entry(row.raw, {key.kid: key}).entry
        except RecordError as exc:
            problem = f"signature: {exc}"
        else:
            claims = {c: getattr(e, c) for c in _SIGNED_COLUMNS}
            claims["kind"] = int(e.kind)
            diff = [c for c in _SIGNED_COLUMNS if getattr(row, c) != claims[c]]
            if entry_hash(row.raw) != row.entry_hash:
                diff.append("entry_hash")
            if row.wall_time != e.wall_time:
                diff.append("wall_time")
            if row.entry_id != e.entry_id:
                diff.append("entry_id")
            if diff:
                problem = "stored columns differ from the signed entry: " + ", ".join(diff)
        if problem:
            bad[row.terminal_id].append((row.entry_id, problem))
    return [Observation(
        FindingKind.BAD_SIGNATURE, Severity.CRITICAL, terminal_id,
        f"terminal {terminal_id}: {len(items)} stored entries do not match their signature ({items[0][1]})"[:255],
        [i for i, _ in items][: cfg.evidence_limit], terminal_id=terminal_id,
        detail={"count": len(items), "problems": sorted({p for _, p in items})[:20]})
        for terminal_id, items in bad.items()]


def _upsert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Finding)
    if dialect == "sqlite":
        return sqlite.insert(Finding)
    raise NotImplementedError(f"findings upsert not implemented for {dialect}")


def reconcile(session: Session, cfg: ReconcileConfig | None = None, *,
              verify_signatures: bool = False) -> RunResult:
    """Reconcile the whole stored journal and record the findings; commits.

    Idempotent: an anomaly seen again updates its finding's evidence and
    ``last_seen_at`` and keeps its status, reason and decider. Open findings not
    observed this time are dismissed with :data:`RESOLVED_REASON` (decided_by NULL:
    the system) — except ``bad_signature`` findings when ``verify_signatures`` is off.

    :param verify_signatures: also run :func:`observe_signatures` (one Ed25519
        verification per stored entry).

    :returns: counts of this run.
    """
    now = utcnow()
    run = ReconcileRun(started_at=now, entries=0, findings_new=0, findings_seen=0, findings_resolved=0)
    session.add(run)
    session.flush()
    conn = session.connection()
    entries = conn.execute(select(func.count()).select_from(J)).scalar_one()
    observations = observe(conn, cfg)
    if verify_signatures:
        observations += observe_signatures(conn, cfg)
    by_fp: dict[str, Observation] = {}
    for o in observations:
        by_fp.setdefault(o.fingerprint, o)
    existing: set[str] = set()
    fps = list(by_fp)
    for i in range(0, len(fps), 500):
        existing |= set(conn.execute(select(F.c.fingerprint).where(F.c.fingerprint.in_(fps[i:i + 500]))).scalars())
    rows = [{
        "fingerprint": fp, "kind": o.kind.value, "severity": o.severity.value, "card_id": o.card_id,
        "terminal_id": o.terminal_id, "summary": o.summary[:255], "evidence": json.dumps(_hex(o.evidence)),
        "detail": json.dumps(o.detail, sort_keys=True, default=str), "status": FindingStatus.OPEN.value,
        "first_seen_at": now, "last_seen_at": now, "last_run_id": run.id,
    } for fp, o in by_fp.items()]
    if rows:
        ins = _upsert(session)
        stmt = ins.on_conflict_do_update(
            index_elements=[F.c.fingerprint],
            set_={c: ins.excluded[c] for c in ("severity", "summary", "evidence", "detail", "last_seen_at",
                                              "last_run_id")})
        for i in range(0, len(rows), 500):
            conn.execute(stmt, rows[i:i + 500])
    resolved = conn.execute(
        update(F).where(F.c.status == FindingStatus.OPEN.value,
                        or_(F.c.last_run_id.is_(None), F.c.last_run_id != run.id),
                        *(() if verify_signatures else (F.c.kind != FindingKind.BAD_SIGNATURE.value,)))
        .values(status=FindingStatus.DISMISSED.value, reason=RESOLVED_REASON.format(run=run.id),
                decided_at=now)).rowcount
    run.entries = entries
    run.findings_new = len(set(by_fp) - existing)
    run.findings_seen = len(by_fp)
    run.findings_resolved = resolved or 0
    run.finished_at = utcnow()
    by_kind: dict[str, int] = defaultdict(int)
    for o in by_fp.values():
        by_kind[o.kind.value] += 1
    session.commit()
    log.info("reconciliation run %d: %d entries, %d findings (%d new, %d resolved)",
             run.id, entries, len(by_fp), run.findings_new, run.findings_resolved)
    return RunResult(run.id, entries, len(by_fp), run.findings_new, run.findings_resolved, dict(by_kind))


def decide_finding(session: Session, finding_id: int, person: Person, status: FindingStatus, reason: str) -> Finding:
    """Confirm or dismiss a finding, with a reason, logged in the audit log (caller commits).

    :raises FindingNotFound: no such finding.
    :raises InvalidDecision: ``status`` is ``open`` or ``reason`` is blank.
    """
    from server.auth import audit

    if status is FindingStatus.OPEN:
        raise InvalidDecision("a finding can be confirmed or dismissed, not reopened by hand")
    reason = reason.strip()
    if not reason:
        raise InvalidDecision("a reason is required", field="reason")
    finding = session.get(Finding, finding_id)
    if finding is None:
        raise FindingNotFound(f"no finding {finding_id}")
    before = finding.status.value
    finding.status = status
    finding.reason = reason
    finding.decided_by = person.id
    finding.decided_at = utcnow()
    audit(session, person, f"finding.{status.value}", f"finding:{finding_id}", kind=finding.kind.value,
          before=before, reason=reason, card_id=finding.card_id, terminal_id=finding.terminal_id)
    return finding


def deny_list_candidates(session: Session) -> list[DenyCandidate]:
    """Cards with a *confirmed* clone/fraud finding, for the next trust bundle's deny list.

    The chip UIDs come from the card registry and from every journal entry of the
    card (a clone may carry the genuine UID; both lists are needed: docs/design.md §Deny lists).
    """
    rows = session.execute(
        select(F.c.card_id, F.c.id).where(F.c.status == FindingStatus.CONFIRMED.value,
                                          F.c.kind.in_([k.value for k in DENY_KINDS]),
                                          F.c.card_id.is_not(None))
        .order_by(F.c.card_id, F.c.id)).all()
    findings: dict[str, list[int]] = defaultdict(list)
    for card_id, fid in rows:
        findings[card_id].append(fid)
    if not findings:
        return []
    uids: dict[str, set[bytes]] = defaultdict(set)
    ids = sorted(findings)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for card_id, uid in session.execute(
                select(J.c.card_id, J.c.tag_uid).where(J.c.card_id.in_(chunk), J.c.tag_uid.is_not(None))
                .distinct()):
            uids[card_id].add(uid)
        for card_id, uid in session.execute(select(Card.card_id, Card.tag_uid).where(Card.card_id.in_(chunk))):
            uids[card_id].add(uid)
    return [DenyCandidate(c, tuple(sorted(uids[c])), tuple(findings[c])) for c in ids]


def deny_sets(candidates: Iterable[DenyCandidate]) -> tuple[SortedIdSet, SortedIdSet]:
    """The deny lists of the next trust bundle (cardlib/records/bundle.py claims 6 and 7).

    Card ids in the journal are the hex of the 8-byte card id (docs/design.md §What is on the card); UIDs are
    kept when 7 bytes (NTAG21x), the width the bundle carries.

    :returns: (deny_cards, deny_uids), sorted and unique.
    :raises ValueError: a card id that is not 16 hex digits.
    """
    cards: set[bytes] = set()
    uids: set[bytes] = set()
    for c in candidates:
        raw = bytes.fromhex(c.card_id)
        if len(raw) != CARD_ID_LENGTH:
            raise ValueError(f"card id {c.card_id!r} is not {CARD_ID_LENGTH} bytes of hex")
        cards.add(raw)
        uids.update(u for u in c.tag_uids if len(u) == UID_LENGTH)
    return SortedIdSet.from_ids(cards, CARD_ID_LENGTH), SortedIdSet.from_ids(uids, UID_LENGTH)


def evidence_entries(session: Session, finding: Finding) -> Sequence[Any]:
    """The journal rows named by a finding's evidence (entry ids), in time order."""
    ids = [bytes.fromhex(h) for h in json.loads(finding.evidence) if len(h) == 32]
    if not ids:
        return []
    return session.execute(select(J).where(J.c.entry_id.in_(ids)).order_by(J.c.wall_time, J.c.terminal_id,
                                                                             J.c.seq)).all()
