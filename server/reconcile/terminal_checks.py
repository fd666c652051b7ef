"""Checks along each terminal's journal: chain gaps and breaks, clocks, revoked keys, upload evidence, signatures,
signed journal heads the uploads never reached (a deleted tail), and journalled complaints never received.

Each check takes a read-only connection and returns :class:`~server.reconcile.observations.Observation`
objects in a deterministic order (the SQL's ORDER BY); :func:`server.reconcile.engine.observe` runs them.
The chain is the terminal's hash chain of signed entries (docs/design.md §Journal).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any
from typing import cast as typing_cast

from sqlalchemy import (
    Float,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    union,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from cardlib.records.journal import EntryKind
from server.checkpoints.models import TerminalCheckpoint
from server.grievances import Grievance
from server.models import JournalConflict, RejectedEntry, Terminal, TerminalStatus
from server.reconcile.models import FindingKind, ReconcileBoot, ReportedHead, Severity
from server.reconcile.observations import Observation, ReconcileConfig, distinct_ids
from server.reconcile.scope import Scope
from server.reconcile.sql import built_once, epoch_s, full_scan, journal, terminal_sites, terminals

__all__ = [
    "SIGNED_COLUMNS",
    "chain_and_clock_steps",
    "checkpoint_heads_missing",
    "clock_skew",
    "complaints_not_received",
    "fold_boots",
    "journal_tails",
    "revoked_terminals_used",
    "signature_mismatches",
    "upload_evidence",
]


#: Per-boot clock aggregates (migration 0017), see :func:`fold_boots`.
boots = typing_cast(Table, ReconcileBoot.__table__)

#: Rows per round trip when streaming the journal.
YIELD_PER = 2000


def chain_and_clock_steps(
    conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None
) -> tuple[list[Observation], list[Observation]]:
    """Gaps, broken links and backward clock steps along ``(terminal_id ORDER BY seq)``, in one window pass.

    One statement: ``LAG(seq)``, ``LAG(entry_hash)`` and ``LAG(wall)`` over ``PARTITION BY
    terminal_id ORDER BY seq`` (SQLite walks ``uq_journal_terminal_seq``, no sort), keeping
    the rows where a gap, a broken link or a clock step back shows; the flags say which.
    Merged because every window pass over the journal costs one full ordered walk of it
    (≈ 2.5 s per pass at 1M entries on SQLite; issue 8, docs/design.md §Reconciliation). The window carries only
    what the conditions need; the entry ids and kind of the few rows kept (and of their
    predecessor, at ``prev_seq``) are joined back through ``uq_journal_terminal_seq``
    (every column a window carries is paid for every entry: 3.7 → 3.25 s).

    :param scope: an incremental run's touched keys: only those terminals' chains, from the last
        stored entry before their first new one (the rows after it, with their LAG, are exact).
    :returns: (``terminal_gap``/``terminal_chain_break`` observations, ``clock_backwards``
        observations), each in ``(terminal_id, seq)`` order.
    """
    def build() -> Any:
        by: dict[str, Any] = {"partition_by": journal.c.terminal_id, "order_by": journal.c.seq}
        wall = epoch_s(journal.c.wall_time)
        columns = (
            journal.c.terminal_id,
            journal.c.seq,
            journal.c.prev_entry_hash,
            wall.label("wall"),
            func.lag(journal.c.seq).over(**by).label("prev_seq"),
            func.lag(journal.c.entry_hash).over(**by).label("prev_hash"),
            func.lag(wall).over(**by).label("prev_wall"),
        )
        start: Any = None  # the FROM the window joins onto (the touched terminals, PostgreSQL)
        window: Any
        if scope is None:
            window = select(*columns).subquery()
            fresh: tuple[Any, ...] = ()
        elif dialect == "postgresql":
            # Per touched terminal (LATERAL): its chain from from_seq through uq_journal_terminal_seq. As a join,
            # PostgreSQL cannot know each from_seq is near its terminal's last entry (it guesses a third of the
            # chain) and hash-joins a sequential scan of the journal (63 ms at 100k entries; this: 3.5 ms).
            touched = scope.terminals
            window = (
                select(*columns, touched.c.from_seq)
                .where(journal.c.terminal_id == touched.c.terminal_id, journal.c.seq >= touched.c.from_seq)
                .lateral()
            )
            start = touched
            fresh = (window.c.seq > window.c.from_seq,)
        else:  # from the last entry before the first new one: each later entry's LAG is the full run's
            touched = scope.terminals
            window = (
                select(*columns, touched.c.from_seq)
                .select_from(journal.join(touched, and_(touched.c.terminal_id == journal.c.terminal_id,
                                                        journal.c.seq >= touched.c.from_seq)))
                .subquery()
            )
            fresh = (window.c.seq > window.c.from_seq,)
        gap = window.c.seq - func.coalesce(window.c.prev_seq, 0) > 1
        broken = and_(window.c.seq == window.c.prev_seq + 1, window.c.prev_entry_hash != window.c.prev_hash)
        back = window.c.wall < window.c.prev_wall - cfg.clock_step_tolerance_s
        entry, previous = journal.alias("cur"), journal.alias("prev")
        return (
            select(
                window,
                entry.c.entry_id,
                entry.c.kind,
                previous.c.entry_id.label("prev_entry_id"),
                case((gap, literal(1)), else_=literal(0)).label("is_gap"),
                case((or_(gap, broken), literal(1)), else_=literal(0)).label("is_chain"),
                case((back, literal(1)), else_=literal(0)).label("is_back"),
            )
            .select_from(
                (window if start is None else start.join(window, true())).join(
                    entry, and_(entry.c.terminal_id == window.c.terminal_id, entry.c.seq == window.c.seq)
                ).outerjoin(
                    previous, and_(previous.c.terminal_id == window.c.terminal_id, previous.c.seq == window.c.prev_seq)
                )
            )
            .where(or_(gap, broken, back), *fresh)
            .order_by(window.c.terminal_id, window.c.seq)
        )

    dialect = conn.dialect.name
    rows = conn.execute(built_once(("chain_and_clock_steps", scope is None, cfg, dialect), build)).all()
    chain: list[Observation] = []
    backwards: list[Observation] = []
    for row in rows:
        if row.is_gap:
            first, last = (row.prev_seq or 0) + 1, row.seq - 1
            chain.append(
                Observation(
                    FindingKind.TERMINAL_GAP,
                    Severity.HIGH,
                    f"{row.terminal_id}|{first}|{last}",
                    f"terminal {row.terminal_id}: entries {first}..{last} missing ({last - first + 1})",
                    distinct_ids([row.prev_entry_id, row.entry_id]),
                    terminal_id=row.terminal_id,
                    detail={"first_missing": first, "last_missing": last, "count": last - first + 1},
                )
            )
        elif row.is_chain:
            chain.append(
                Observation(
                    FindingKind.TERMINAL_CHAIN_BREAK,
                    Severity.CRITICAL,
                    f"{row.terminal_id}|{row.seq}",
                    f"terminal {row.terminal_id}: seq {row.seq} does not link to seq {row.prev_seq}",
                    distinct_ids([row.prev_entry_id, row.entry_id]),
                    terminal_id=row.terminal_id,
                    detail={
                        "seq": row.seq,
                        "expected_prev_hash": row.prev_hash.hex(),
                        "prev_entry_hash": row.prev_entry_hash.hex(),
                    },
                )
            )
        if row.is_back:
            step = row.prev_wall - row.wall
            announced = row.kind == int(EntryKind.CLOCK_SET)
            backwards.append(
                Observation(
                    FindingKind.CLOCK_BACKWARDS,
                    Severity.LOW if announced else Severity.MEDIUM,
                    f"{row.terminal_id}|{row.seq}",
                    f"terminal {row.terminal_id}: clock went back {step:.0f} s "
                    f"between seq {row.prev_seq} and {row.seq}",
                    distinct_ids([row.prev_entry_id, row.entry_id]),
                    terminal_id=row.terminal_id,
                    detail={"seq": row.seq, "step_back_s": round(step, 3), "announced_by_clock_set": announced},
                )
            )
    return chain, backwards


def upload_evidence(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Conflicts and rejections the upload kept (server.upload)."""
    conflicts = JournalConflict.__table__
    rows = conn.execute(built_once(("journal_conflicts",), lambda: (
        select(
            conflicts.c.terminal_id, conflicts.c.seq, conflicts.c.entry_hash, journal.c.entry_id.label("kept_entry_id")
        )
        .select_from(conflicts.outerjoin(journal, journal.c.entry_hash == conflicts.c.existing_entry_hash))
        .order_by(conflicts.c.terminal_id, conflicts.c.seq)
    ))).all()
    out = [
        Observation(
            FindingKind.JOURNAL_CONFLICT,
            Severity.HIGH,
            row.entry_hash.hex(),
            f"terminal {row.terminal_id}: a second, different entry signed for seq {row.seq}",
            distinct_ids([row.kept_entry_id, row.entry_hash]),
            terminal_id=row.terminal_id,
            detail={"seq": row.seq, "conflicting_entry_sha256": row.entry_hash.hex()},
        )
        for row in rows
    ]
    rejected = RejectedEntry.__table__
    grouped: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for row in conn.execute(built_once(("rejected_entries",), lambda: (
        select(rejected.c.terminal_id, rejected.c.reason, rejected.c.raw_sha256).order_by(
            rejected.c.terminal_id, rejected.c.reason, rejected.c.id
        )
    ))):
        grouped[(row.terminal_id, row.reason)].append(row.raw_sha256)
    for (terminal_id, reason), shas in grouped.items():
        severity = Severity.HIGH if reason in ("bad_signature", "chain_broken", "unknown_kid") else Severity.MEDIUM
        out.append(
            Observation(
                FindingKind.REJECTED_ENTRY,
                severity,
                f"{terminal_id}|{reason}",
                f"terminal {terminal_id}: {len(shas)} uploaded entries rejected ({reason})",
                shas[: cfg.evidence_limit],
                terminal_id=terminal_id,
                detail={"reason": reason, "count": len(shas)},
            )
        )
    return out


def journal_tails(conn: Connection, cfg: ReconcileConfig, now: dt.datetime | None = None) -> list[Observation]:
    """Signed journal heads the stored journal does not reach: a deleted (or withheld) unsent tail.

    A counter reports its signed head before every upload (:mod:`server.heads`). For each
    stored head, the entry at its ``(terminal_id, seq)``:

    - is there with another hash: the chain no longer reaches the head (the tail was cut and
      the counter wrote on from the cut: ``rewritten``), reported at once;
    - is missing, and the head reached the server more than ``cfg.tail_grace_s`` ago (the
      counter has had its chance to upload): the upload stream ends below the head.

    Both are ``journal_tail_missing`` (HIGH); the evidence is the last stored entry of the
    terminal (if any) and the head's entry hash. A finding resolves itself when the missing
    entries arrive. Heads the journal reaches are pruned on receipt, so this reads few rows.

    :param now: the reconciliation instant (aware UTC); default now.
    """
    def build() -> Any:
        heads = ReportedHead.__table__
        reached = journal.alias("reached")
        latest = (select(func.max(journal.c.seq)).where(journal.c.terminal_id == heads.c.terminal_id)
                  .scalar_subquery())
        return (
            select(heads.c.terminal_id, heads.c.seq, heads.c.entry_hash, heads.c.boot_id, heads.c.received_at,
                   reached.c.entry_hash.label("stored_hash"), latest.label("stored_max_seq"))
            .select_from(heads.outerjoin(reached, and_(reached.c.terminal_id == heads.c.terminal_id,
                                                       reached.c.seq == heads.c.seq)))
            .where(or_(reached.c.entry_hash.is_(None), reached.c.entry_hash != heads.c.entry_hash))
            .order_by(heads.c.terminal_id, heads.c.seq, heads.c.entry_hash)
        )

    rows = conn.execute(built_once(("journal_tails",), build)).all()
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=cfg.tail_grace_s)
    out = []
    for row in rows:
        received = row.received_at
        if received.tzinfo is None:
            received = received.replace(tzinfo=dt.UTC)
        rewritten = row.stored_hash is not None
        if not rewritten and received > cutoff:
            continue  # the counter may still be uploading
        stored_max = row.stored_max_seq
        last_id = None
        if stored_max is not None:
            last_id = conn.execute(select(journal.c.entry_id).where(
                journal.c.terminal_id == row.terminal_id, journal.c.seq == stored_max)).scalar_one_or_none()
        how = (f"the journal holds another entry at seq {row.seq}: the chain does not reach the head"
               if rewritten else f"uploads end at seq {stored_max or 0}")
        out.append(Observation(
            FindingKind.JOURNAL_TAIL_MISSING,
            Severity.HIGH,
            f"{row.terminal_id}|{row.seq}|{row.entry_hash.hex()}",
            f"terminal {row.terminal_id}: signed head seq {row.seq} reported, {how}",
            distinct_ids([last_id, row.entry_hash]),
            terminal_id=row.terminal_id,
            detail={"head_seq": row.seq, "head_entry_sha256": row.entry_hash.hex(), "boot_id": row.boot_id,
                    "stored_max_seq": stored_max, "reported_at": received.isoformat(), "rewritten": rewritten},
        ))
    return out


def revoked_terminals_used(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Entries signed (wall time) or received after the terminal key's revocation.

    One join of the journal with ``terminals`` and ``terminal_sites``. The extra
    ``terminal_id IN (revoked or compromised terminals)`` changes no result (only those
    terminals have a non-NULL instant to compare with) but lets the database start from
    those few terminals and read only their entries through ``uq_journal_terminal_seq``,
    instead of walking the whole journal (0.9 s at 1M entries on SQLite; issue 8).
    """
    def build() -> Any:
        revoked_at = case((terminals.c.status == TerminalStatus.REVOKED.value, terminals.c.decided_at), else_=None)
        effective = func.coalesce(terminal_sites.c.compromised_from, revoked_at)
        suspect = union(
            select(terminals.c.terminal_id).where(terminals.c.status == TerminalStatus.REVOKED.value),
            select(terminal_sites.c.terminal_id).where(terminal_sites.c.compromised_from.is_not(None)),
        )
        return (
            select(journal.c.terminal_id, journal.c.seq, journal.c.entry_id, effective.label("effective"))
            .select_from(
                journal.join(terminals, terminals.c.terminal_id == journal.c.terminal_id).outerjoin(
                    terminal_sites, terminal_sites.c.terminal_id == journal.c.terminal_id
                )
            )
            .where(
                or_(journal.c.wall_time >= effective, journal.c.received_at >= revoked_at),
                journal.c.terminal_id.in_(suspect),
            )
            .order_by(journal.c.terminal_id, journal.c.seq)
        )

    rows = conn.execute(built_once(("revoked_terminals_used",), build)).all()
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        groups[row.terminal_id].append(row)
    out = []
    for terminal_id, group in groups.items():
        out.append(
            Observation(
                FindingKind.REVOKED_TERMINAL_USED,
                Severity.CRITICAL,
                terminal_id,
                f"terminal {terminal_id}: {len(group)} entries signed after its key was revoked/compromised",
                [row.entry_id for row in group][: cfg.evidence_limit],
                terminal_id=terminal_id,
                detail={
                    "count": len(group),
                    "first_seq": group[0].seq,
                    "last_seq": group[-1].seq,
                    "revoked_from": group[0].effective.isoformat()
                    if isinstance(group[0].effective, dt.datetime)
                    else str(group[0].effective),
                },
            )
        )
    return out


def fold_boots(conn: Connection, scope: Scope | None = None) -> None:
    """Bring ``reconcile_boots`` up to the journal: rebuilt whole (``scope`` None) or the new entries folded in.

    Per ``(terminal_id, boot_id)``: MIN and MAX of the offset ``wall − mono_ns / 1e9`` and MAX of
    ``wall − received_at`` (seconds, the expressions :func:`clock_skew` compares, as doubles), and
    the highest entry id folded. An incremental run reads the entries with ``id >``
    ``scope.journal_id`` only (by primary key range) and merges them with LEAST/GREATEST in one
    upsert: MIN/MAX are idempotent, so entries folded twice (PostgreSQL's watermark margin reads
    them again) change nothing, and the folded row equals the aggregate over the whole boot.
    One ``GROUP BY terminal_id, boot_id`` either way (on Citus pushed down to the shards).
    """
    rebuild, fold = built_once(("fold_boots", conn.dialect.name), lambda: _fold_statements(conn.dialect.name))
    if scope is None:
        conn.execute(delete(boots))
        conn.execute(rebuild)
        return
    conn.execute(fold, {"watermark": scope.journal_id})


def _fold_statements(dialect: str) -> tuple[Any, Any]:
    """:func:`fold_boots`' rebuild (``INSERT … SELECT`` of every boot) and fold (upsert of the entries with
    ``id >`` the bound ``journal_id``) for a dialect name (``postgresql``: LEAST/GREATEST, else SQLite's)."""
    source = full_scan._construct(journal, name="fold")
    wall = epoch_s(source.c.wall_time)
    offset = wall - cast(source.c.mono_ns, Float) / 1e9
    aggregate = select(
        source.c.terminal_id, source.c.boot_id, func.min(offset), func.max(offset),
        func.max(wall - epoch_s(source.c.received_at)), func.max(source.c.id),
    )
    names = ["terminal_id", "boot_id", "min_offset_s", "max_offset_s", "max_ahead_s", "journal_id"]
    rebuild = insert(boots).from_select(names, aggregate.group_by(source.c.terminal_id, source.c.boot_id))
    new = aggregate.where(source.c.id > bindparam("watermark")).group_by(source.c.terminal_id, source.c.boot_id)
    low: Any
    high: Any
    if dialect == "postgresql":
        stmt: Any = pg_insert(boots).from_select(names, new)
        low, high = func.least, func.greatest
    else:
        stmt = sqlite_insert(boots).from_select(names, new)
        low, high = func.min, func.max  # SQLite's two-argument scalar min()/max()
    ex = stmt.excluded
    fold = stmt.on_conflict_do_update(
        index_elements=[boots.c.terminal_id, boots.c.boot_id],
        set_={"min_offset_s": low(boots.c.min_offset_s, ex.min_offset_s),
              "max_offset_s": high(boots.c.max_offset_s, ex.max_offset_s),
              "max_ahead_s": high(boots.c.max_ahead_s, ex.max_ahead_s),
              "journal_id": high(boots.c.journal_id, ex.journal_id)})
    return rebuild, fold


def clock_skew(
    conn: Connection, cfg: ReconcileConfig, backwards: list[Observation] | None = None, scope: Scope | None = None
) -> list[Observation]:
    """Backward steps along seq; (wall − monotonic) spread per boot; entries dated in the future.

    Backward steps come from :func:`chain_and_clock_steps` (pass them as ``backwards`` when it
    already ran). The two whole-group checks are one statement: a ``GROUP BY terminal_id,
    boot_id`` (MIN/MAX of the offset, MAX of wall − received) finds the terminals with a
    group over a threshold, and only their entries (``terminal_id IN (that aggregate)``)
    go through the windows that pick the evidence rows (MIN/MAX ``OVER (PARTITION BY
    terminal_id, boot_id)``, MAX ``OVER (PARTITION BY terminal_id)``). An honest journal
    costs one aggregate pass instead of two window passes over every entry (issue 8);
    restricting whole terminals leaves every window partition unchanged, so the evidence
    is the same as over the whole journal.

    The per-boot aggregate is kept in ``reconcile_boots`` (:func:`fold_boots`): a full run
    rebuilds it from the whole journal and flags from it; an incremental run (``scope``) folds
    only the new entries into it and flags the touched boots whose folded spread is over. A
    terminal it flags is then read whole (its every boot's skew and its ``future`` maximum are
    the full run's). Spreads and maxima only grow with entries, so an unflagged touched boot has
    no skew, and a terminal's ``future`` finding cannot change unless a new entry is over: the
    ``future`` side reads only the new entries (an old entry over it flagged the terminal when it
    arrived; its finding stays as it is, not resolvable: docs/reconciliation.md §Incremental).

    Writes ``reconcile_boots`` (through :func:`fold_boots`); reads the journal.
    """
    out = list(chain_and_clock_steps(conn, cfg, scope)[1] if backwards is None else backwards)
    fold_boots(conn, scope)

    def build() -> Any:
        wall = epoch_s(journal.c.wall_time)
        offset = wall - cast(journal.c.mono_ns, Float) / 1e9
        ahead = wall - epoch_s(journal.c.received_at)
        wide = boots.c.max_offset_s - boots.c.min_offset_s > cfg.skew_threshold_s
        flagged: Any
        if scope is None:
            flagged = select(boots.c.terminal_id).where(or_(wide, boots.c.max_ahead_s > cfg.future_tolerance_s))
        else:  # only the boots new entries belong to; wall − received is per entry: only a new entry can be newly over
            b = scope.boots
            flagged = union(
                select(boots.c.terminal_id).select_from(
                    boots.join(b, and_(b.c.terminal_id == boots.c.terminal_id, b.c.boot_id == boots.c.boot_id))
                ).where(wide),
                select(journal.c.terminal_id).where(journal.c.id > bindparam("watermark"),
                                                    ahead > cfg.future_tolerance_s),
            )
        part = (journal.c.terminal_id, journal.c.boot_id)
        offsets = (
            select(
                journal.c.terminal_id,
                journal.c.boot_id,
                journal.c.seq,
                journal.c.entry_id,
                offset.label("off"),
                ahead.label("ahead"),
                func.min(offset).over(partition_by=part).label("mn"),
                func.max(offset).over(partition_by=part).label("mx"),
                func.max(case((journal.c.kind == int(EntryKind.CLOCK_SET), 1), else_=0))
                .over(partition_by=part)
                .label("set"),
                func.max(ahead).over(partition_by=journal.c.terminal_id).label("ahead_mx"),
            )
            .where(journal.c.terminal_id.in_(flagged))
            .subquery()
        )
        is_skew = and_(
            offsets.c.mx - offsets.c.mn > cfg.skew_threshold_s,
            or_(offsets.c.off == offsets.c.mn, offsets.c.off == offsets.c.mx),
        )
        is_future = and_(offsets.c.ahead == offsets.c.ahead_mx, offsets.c.ahead_mx > cfg.future_tolerance_s)
        return (
            select(offsets, case((is_skew, 1), else_=0).label("is_skew"),
                   case((is_future, 1), else_=0).label("is_future"))
            .where(or_(is_skew, is_future))
            .order_by(offsets.c.terminal_id, offsets.c.boot_id, offsets.c.seq)
        )

    skewed: dict[tuple[str, int], list[Any]] = defaultdict(list)
    future: dict[str, Any] = {}  # terminal → its first entry (by seq) at the maximum, in terminal order
    params = {} if scope is None else {"watermark": scope.journal_id}
    for row in conn.execute(built_once(("clock_skew", scope is None, cfg), build), params):
        if row.is_skew:
            skewed[(row.terminal_id, row.boot_id)].append(row)
        # ties on the maximum: the first entry is evidence enough
        if row.is_future and (row.terminal_id not in future or row.seq < future[row.terminal_id].seq):
            future[row.terminal_id] = row
    for (terminal_id, boot_id), group in skewed.items():
        spread = group[0].mx - group[0].mn
        out.append(
            Observation(
                FindingKind.CLOCK_SKEW,
                Severity.LOW if group[0].set else Severity.MEDIUM,
                f"{terminal_id}|boot|{boot_id}",
                f"terminal {terminal_id} boot {boot_id}: wall clock moved {spread:.0f} s against its monotonic clock",
                distinct_ids(row.entry_id for row in group)[:2] + distinct_ids(row.entry_id for row in group)[-1:],
                terminal_id=terminal_id,
                detail={"boot_id": boot_id, "spread_s": round(spread, 3)},
            )
        )
    for row in future.values():
        out.append(
            Observation(
                FindingKind.CLOCK_SKEW,
                Severity.MEDIUM,
                f"{row.terminal_id}|future",
                f"terminal {row.terminal_id}: entries dated up to {row.ahead:.0f} s after the server received them",
                [row.entry_id],
                terminal_id=row.terminal_id,
                detail={"ahead_s": round(row.ahead, 3), "seq": row.seq},
            )
        )
    return out


#: Stored columns that must equal the signed claims (an edited column would mislead every SQL check).
SIGNED_COLUMNS = (
    "terminal_id",
    "boot_id",
    "seq",
    "kind",
    "mono_ns",
    "clock_synced",
    "card_id",
    "tag_uid",
    "programme",
    "amount",
    "slot_seq_before",
    "slot_seq_after",
    "state_hash_prev",
    "state_hash_new",
    "ntag_counter",
    "prev_entry_hash",
)


def signature_mismatches(conn: Connection, cfg: ReconcileConfig | None = None) -> list[Observation]:
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
    keys = {terminal.terminal_id: cose_key_of(terminal) for terminal in Session(bind=conn).scalars(select(Terminal))}
    bad: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
    signed_columns = [journal.c[column] for column in SIGNED_COLUMNS]
    stmt = select(
        journal.c.entry_id, journal.c.raw, journal.c.entry_hash, journal.c.wall_time, *signed_columns
    ).order_by(journal.c.terminal_id, journal.c.seq)
    for row in conn.execute(stmt.execution_options(yield_per=YIELD_PER)):
        key = keys.get(row.terminal_id)
        problem = ""
        try:
            if key is None:
                raise RecordError(f"no key for terminal {row.terminal_id}")
            signed = verify_entry(row.raw, {key.kid: key}).entry
        except RecordError as exc:
            problem = f"signature: {exc}"
        else:
            claims = {column: getattr(signed, column) for column in SIGNED_COLUMNS}
            claims["kind"] = int(signed.kind)
            diff = [column for column in SIGNED_COLUMNS if getattr(row, column) != claims[column]]
            if entry_hash(row.raw) != row.entry_hash:
                diff.append("entry_hash")
            if row.wall_time != signed.wall_time:
                diff.append("wall_time")
            if row.entry_id != signed.entry_id:
                diff.append("entry_id")
            if diff:
                problem = "stored columns differ from the signed entry: " + ", ".join(diff)
        if problem:
            bad[row.terminal_id].append((row.entry_id, problem))
    return [
        Observation(
            FindingKind.BAD_SIGNATURE,
            Severity.CRITICAL,
            terminal_id,
            f"terminal {terminal_id}: {len(items)} stored entries do not match their signature ({items[0][1]})"[:255],
            [entry_id for entry_id, _ in items][: cfg.evidence_limit],
            terminal_id=terminal_id,
            detail={"count": len(items), "problems": sorted({p for _, p in items})[:20]},
        )
        for terminal_id, items in bad.items()
    ]


def checkpoint_heads_missing(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Scanned end-of-shift checkpoints whose signed head the terminal's stored journal passed without containing it.

    A checkpoint (:mod:`server.checkpoints`, docs/checkpoints.md) names ``(head_seq, head_hash)``.
    Once the stored journal of that terminal reaches ``head_seq`` or holds entries of a later
    boot, the entry at ``head_seq`` must be there with that hash; otherwise the journal was cut
    or rewritten after the slip was printed. CRITICAL when another entry stands at that seq
    (a rewrite), HIGH when none does. Evidence: the checkpoint's SHA-256, then the stored
    entry at that seq when there is one.
    """
    def build() -> Any:
        checkpoint = TerminalCheckpoint.__table__
        at_head = journal.alias("at_head")
        reached = (select(func.max(journal.c.seq)).where(journal.c.terminal_id == checkpoint.c.terminal_id)
                   .scalar_subquery())
        last_boot = (select(func.max(journal.c.boot_id)).where(journal.c.terminal_id == checkpoint.c.terminal_id)
                     .scalar_subquery())
        return (
            select(
                checkpoint.c.terminal_id, checkpoint.c.head_seq, checkpoint.c.head_hash, checkpoint.c.boot_id,
                checkpoint.c.message_sha256, checkpoint.c.id.label("checkpoint_id"),
                at_head.c.entry_id, at_head.c.entry_hash, reached.label("reached"), last_boot.label("last_boot"),
            )
            .select_from(checkpoint.outerjoin(at_head, and_(at_head.c.terminal_id == checkpoint.c.terminal_id,
                                                            at_head.c.seq == checkpoint.c.head_seq)))
            .where(or_(at_head.c.entry_hash.is_(None), at_head.c.entry_hash != checkpoint.c.head_hash))
            .where(or_(reached >= checkpoint.c.head_seq, last_boot > checkpoint.c.boot_id))
            .order_by(checkpoint.c.terminal_id, checkpoint.c.head_seq, checkpoint.c.id)
        )

    rows = conn.execute(built_once(("checkpoint_heads_missing",), build)).all()
    out: list[Observation] = []
    for row in rows:
        rewritten = row.entry_hash is not None
        what = "another entry stands at that seq" if rewritten else "the stored journal has no entry at that seq"
        out.append(Observation(
            FindingKind.CHECKPOINT_HEAD_MISSING,
            Severity.CRITICAL if rewritten else Severity.HIGH,
            f"{row.terminal_id}|{row.head_seq}|{row.head_hash.hex()}",
            f"terminal {row.terminal_id}: checkpointed head {row.head_seq} is not in its journal ({what})"[:255],
            distinct_ids([row.message_sha256, row.entry_id]),
            terminal_id=row.terminal_id,
            detail={"head_seq": row.head_seq, "head_hash": row.head_hash.hex(), "boot_id": row.boot_id,
                    "stored_hash": row.entry_hash.hex() if rewritten else None, "reached_seq": row.reached,
                    "last_boot": row.last_boot, "checkpoint_id": row.checkpoint_id},
        ))
    return out


def complaints_not_received(conn: Connection, cfg: ReconcileConfig, now: dt.datetime | None = None
                            ) -> list[Observation]:
    """Complaints a counter journalled (``COMPLAINT`` entries) that never reached the server as a grievance.

    A counter appends a ``COMPLAINT`` entry whose ``entry_id`` is the complaint's ``client_ref``
    (docs/card-format.md §Conventions) before it acknowledges the complaint, and sends the complaint
    in the same sync round after the journal. An entry received more than ``cfg.complaint_grace_s``
    ago with no grievance of that counter under that ``client_ref`` (``grievances.source_terminal``,
    ``grievances.client_ref``) is ``complaint_not_received`` (HIGH): the complaint was erased, parked
    or refused at the counter (docs/security.md "A complaint erased at the clerk's own counter"). It is
    withdrawn by the next run after the complaint arrives. A complaint the server refused is not stored,
    so it stays reported. Reads the entries through ``ix_journal_complaints`` (partial on the kind) and
    the grievances of those counters; evidence: the entry id.

    :param now: the reconciliation instant (aware UTC); default now.
    """
    def build() -> Any:
        return (select(journal.c.terminal_id, journal.c.seq, journal.c.entry_id, journal.c.wall_time,
                       journal.c.received_at)
                # kind as a literal, as the index's predicate is written: a bound parameter does not imply it
                .where(journal.c.kind == literal_column(str(int(EntryKind.COMPLAINT))),
                       journal.c.received_at <= bindparam("cutoff"))
                .order_by(journal.c.terminal_id, journal.c.seq))

    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=cfg.complaint_grace_s)
    rows = conn.execute(built_once(("complaints_not_received",), build), {"cutoff": cutoff}).all()
    if not rows:
        return []
    grievances = typing_cast(Table, Grievance.__table__)
    counters = sorted({row.terminal_id for row in rows})
    received = set(conn.execute(
        select(grievances.c.source_terminal, grievances.c.client_ref)
        .where(grievances.c.source_terminal.in_(counters), grievances.c.client_ref.is_not(None))).tuples())
    out = []
    for row in rows:
        ref = bytes(row.entry_id).hex()
        if (row.terminal_id, ref) in received:
            continue
        at_server = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=dt.UTC)
        out.append(Observation(
            FindingKind.COMPLAINT_NOT_RECEIVED,
            Severity.HIGH,
            f"{row.terminal_id}|{ref}",
            f"terminal {row.terminal_id}: complaint {ref} journalled at seq {row.seq} never reached the server",
            [bytes(row.entry_id)],
            terminal_id=row.terminal_id,
            detail={"client_ref": ref, "seq": row.seq, "journalled_at": row.wall_time.isoformat(),
                    "entry_received_at": at_server.isoformat(), "grace_s": cfg.complaint_grace_s},
        ))
    return out
