"""Set-based reconciliation of the stored journal (docs/design.md §Journal, §Reconciliation).

Every check is one SQL statement (window functions ``LAG``/``SUM ... OVER`` and
``GROUP BY ... HAVING``) that the database executes over the whole journal; the
same SQLAlchemy Core expressions run on SQLite (≥ 3.25) and PostgreSQL. Python
only turns the *anomalous* rows the database returns into :class:`~server.reconcile.observations.Observation`
objects and upserts them as :class:`~server.reconcile.models.Finding` rows keyed
by a fingerprint, so re-running never duplicates a finding and never touches an
auditor's decision. Open findings that are no longer observed (a gap filled by a
late upload) are dismissed with the reason "resolved" by the system.

Checks (kind → what the SQL looks for):

- per terminal, over ``(terminal_id ORDER BY seq)``: ``terminal_gap`` (seq jumps),
  ``terminal_chain_break`` (prev_entry_hash ≠ LAG(entry_hash)), ``clock_backwards``
  (wall time decreasing), ``clock_skew`` (wall − monotonic offset spread within one
  boot, or wall time ahead of the server's receipt), ``revoked_terminal_used``;
  plus the upload's own evidence: ``journal_conflict``, ``rejected_entry``; and
  ``journal_tail_missing`` (a signed journal head the stored journal never reaches,
  or reaches with another hash: a deleted unsent tail); ``complaint_not_received`` (a
  ``COMPLAINT`` entry whose complaint never arrived as a grievance within ``complaint_grace_s``).
- per card, over redemptions (COMMIT/FINISHED): ``card_fork`` (one previous state
  hash with two successors, or one slot seq with two states), ``card_rollback``
  (ordered by the chip's own NTAG counter, the slot seq goes back: a genuine chip
  restored from an old dump), ``counter_backwards`` (NTAG counter lower than an
  earlier tap of the same UID: a second chip), ``card_chain_gap`` (slot seqs
  skipped: a redemption whose entry never arrived), ``entitlement_exceeded``
  (running ``SUM(amount)`` per card, programme and cycle above the entitlement,
  i.e. the remaining entitlement went negative), ``revoked_card_used``, ``blocked_card_used``
  (redemptions while the office's block of the card stood, past the clocks' skew threshold),
  ``impossible_travel`` (consecutive taps at terminals farther apart than
  ``max_speed_kmh`` allows), ``unknown_card`` (redemptions, FALLBACK above all, on a card id
  no issuance names: :mod:`server.reconcile.issuance_checks`).
- card states of revoked terminal keys (:mod:`server.reconcile.revoked_states`):
  ``revoked_key_state`` (written at or after the revocation, or backdated) and
  ``revoked_state_built_on`` (read by a redemption elsewhere after the revocation).

Clock findings never drop or discount a signed entry; they are reported only.

Modules: the checks are :mod:`server.reconcile.terminal_checks` and
:mod:`server.reconcile.card_checks` (their SQL building blocks :mod:`server.reconcile.sql`,
the :class:`~server.reconcile.observations.Observation` they return
:mod:`server.reconcile.observations`); :mod:`server.reconcile.findings` records the
observations as findings and holds the auditors' decisions; :mod:`server.reconcile.denylist`
turns confirmed findings into the next bundle's deny lists. This module runs a
reconciliation: :func:`observe`, :func:`reconcile`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, delete, exists, func, insert, or_, select, true, union, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from server.checkpoints.models import TerminalCheckpoint
from server.models import JournalConflict, RejectedEntry, TerminalStatus
from server.reconcile.card_checks import (
    blocked_cards_used,
    card_forks,
    card_order,
    entitlements_exceeded,
    impossible_travel,
    revoked_cards_used,
    secure_card_counters,
)
from server.reconcile.errors import ReconcileBusy
from server.reconcile.findings import record_findings
from server.reconcile.household_checks import claims_on_replaced_cards, household_entitlements
from server.reconcile.issuance_checks import unknown_cards
from server.reconcile.models import FindingKind, ReconcileRun, ReconcileState, RegistryChange, ReportedHead
from server.reconcile.observations import Observation, ReconcileConfig
from server.reconcile.revoked_states import revoked_key_states, revoked_states_built_on
from server.reconcile.scope import Scope
from server.reconcile.settlements import settle_torn_writes
from server.reconcile.sql import (
    built_once,
    card_profiles,
    findings,
    journal,
    json_int,
    terminal_sites,
    terminals,
)
from server.reconcile.terminal_checks import (
    chain_and_clock_steps,
    checkpoint_heads_missing,
    clock_skew,
    complaints_not_received,
    journal_tails,
    revoked_terminals_used,
    signature_mismatches,
    upload_evidence,
)
from server.types import utcnow

log = logging.getLogger(__name__)

__all__ = ["CARD_KINDS", "GLOBAL_KINDS", "TERMINAL_KINDS", "RunResult", "observe", "reconcile"]

_state = cast(Table, ReconcileState.__table__)
_changes = cast(Table, RegistryChange.__table__)


#: Kinds that depend on one terminal's whole chain: an incremental run re-examines those of the touched terminals.
TERMINAL_KINDS = frozenset({FindingKind.TERMINAL_GAP, FindingKind.TERMINAL_CHAIN_BREAK, FindingKind.CLOCK_BACKWARDS,
                            FindingKind.CLOCK_SKEW})
#: Kinds that depend on one card's (or its household's) redemptions: re-examined for the touched cards.
CARD_KINDS = frozenset({FindingKind.CARD_FORK, FindingKind.CARD_ROLLBACK, FindingKind.COUNTER_BACKWARDS,
                        FindingKind.CARD_COUNTER_REPEATED, FindingKind.CARD_CHAIN_GAP,
                        FindingKind.ENTITLEMENT_EXCEEDED, FindingKind.IMPOSSIBLE_TRAVEL,
                        FindingKind.HOUSEHOLD_OVER_ENTITLEMENT, FindingKind.CLAIM_ON_REPLACED_CARD,
                        FindingKind.UNKNOWN_CARD})
#: Kinds every run re-examines whole: they read small tables (conflicts, rejections, heads, checkpoints)
#: or start from the few revoked terminals and cards, and change without a new entry (a revocation, time).
GLOBAL_KINDS = frozenset(FindingKind) - TERMINAL_KINDS - CARD_KINDS

#: Key of the PostgreSQL advisory lock that makes runs single-flight (``pg_try_advisory_xact_lock``).
ADVISORY_LOCK_KEY = 0x68756D61_72636E31  # "humarcn1"


@dataclass(frozen=True)
class RunResult:
    """Counts of one reconciliation run.

    :ivar entries: journal entries at the run (full) or entries new since the watermark (incremental).
    :ivar mode: ``full`` or ``incremental``.
    :ivar scope: an incremental run's touched (terminals, cards, households); None for a full run.
    """

    run_id: int
    entries: int
    observed: int
    new: int
    resolved: int
    by_kind: dict[str, int]
    mode: str = "full"
    scope: tuple[int, int, int] | None = None


def observe(conn: Connection, cfg: ReconcileConfig | None = None, scope: Scope | None = None,
            present: Mapping[str, bool] | None = None) -> list[Observation]:
    """Run every check on ``conn`` and return the anomalies found.

    Writes only ``reconcile_boots``, the per-boot clock state ``clock_skew`` keeps (rebuilt, or the
    new entries folded in with ``scope``; :func:`~server.reconcile.terminal_checks.fold_boots`).

    Deterministic order: by check, then by the SQL's ORDER BY.

    :param scope: restrict the terminal and card checks to an incremental run's touched keys
        (whole chains, whole cards, whole households); the checks of :data:`GLOBAL_KINDS` run whole.
    :param present: which global checks have rows to start from (``conflicts``, ``rejected``, ``heads``,
        ``checkpoints``, ``suspect_terminals``, ``revoked_cards``: False skips the checks that start
        from that table, which would find nothing); None runs every check.
    """
    cfg = cfg or ReconcileConfig()

    def has(*names: str) -> bool:
        return present is None or any(present.get(name, True) for name in names)

    out: list[Observation] = []
    chain, backwards = chain_and_clock_steps(conn, cfg, scope)
    out += chain
    if has("conflicts", "rejected"):
        out += upload_evidence(conn, cfg)
    if has("heads"):
        out += journal_tails(conn, cfg)
    if has("checkpoints"):
        out += checkpoint_heads_missing(conn, cfg)
    out += complaints_not_received(conn, cfg)  # a global kind: time alone makes a complaint overdue
    if has("suspect_terminals"):
        out += revoked_terminals_used(conn, cfg)
    out += clock_skew(conn, cfg, backwards, scope)
    out += card_forks(conn, cfg, scope)
    out += card_order(conn, cfg, scope)
    out += secure_card_counters(conn, cfg, scope)
    out += entitlements_exceeded(conn, cfg, scope)
    out += household_entitlements(conn, cfg, scope)
    if has("revoked_cards"):
        out += revoked_cards_used(conn, cfg)
    out += blocked_cards_used(conn, cfg)  # a global kind: a block or its lift changes without a new entry
    if has("suspect_terminals"):
        out += revoked_key_states(conn, cfg)
        out += revoked_states_built_on(conn, cfg)
    out += claims_on_replaced_cards(conn, cfg, scope)
    out += impossible_travel(conn, cfg, scope)
    out += unknown_cards(conn, cfg, scope)
    return out


#: Global checks (:func:`observe`) that read nothing when a small table is empty, keyed by their name:
#: the opening statement says which have something to read (``present``).
_GLOBAL_SOURCES = ("conflicts", "rejected", "heads", "checkpoints", "suspect_terminals")


def _opening(dialect: str, margin: bool) -> Any:
    """A run's first read, one statement: its state, the watermarks, whether the registry changed beyond what an
    incremental run can scope, and what the global checks have to read.

    Columns: ``journal_id``, ``registry_change_id``, ``run_id`` of ``reconcile_state`` (NULL without a state row),
    ``run_exists``, ``mark``, ``changes_mark``, ``registry_full``, then one ``has_<source>`` flag per
    :data:`_GLOBAL_SOURCES` and ``has_revoked_cards``. Built once per (dialect, margin).

    ``mark`` is the watermark: the highest ``journal_entries.id`` this run can vouch for (every lower
    id is in the journal it reads). SQLite commits one writer at a time, in id order. PostgreSQL
    hands out ids at insert and commits in any order, so with ``margin`` the watermark stays at
    entries received before the bound ``cutoff`` (``cfg.watermark_margin_s`` before the run): an
    upload still open then with a lower id is read again by the next run. ``changes_mark`` is the
    same for ``registry_changes`` (by ``changed_at``; NULL: none, keep the state's). ``registry_full``:
    a change past the state's ``registry_change_id`` that names no card (a site, a benefit cycle):
    the run must be full. Each is one range read of ``registry_changes``' primary key. On PostgreSQL
    the statement also deletes those non-card changes (a data-modifying CTE, the snapshot it reads them in):
    the full run they cause reads what they changed, and a change still in the margin is not read again.
    """
    def build() -> Any:
        state = select(_state).where(_state.c.id == 1).subquery("state")
        runs = cast(Table, ReconcileRun.__table__)
        changes = cast(Table, RegistryChange.__table__)
        if dialect == "postgresql" and margin:
            mark = (select(journal.c.id).where(journal.c.received_at <= bindparam("cutoff"))
                    .order_by(journal.c.id.desc()).limit(1).scalar_subquery())
            changes_mark = (select(changes.c.id).where(changes.c.changed_at <= bindparam("cutoff"))
                            .order_by(changes.c.id.desc()).limit(1).scalar_subquery())
        else:
            mark = select(func.max(journal.c.id)).scalar_subquery()
            changes_mark = select(func.max(changes.c.id)).scalar_subquery()
        seen = select(state.c.registry_change_id).scalar_subquery()
        global_change = (changes.c.id > func.coalesce(seen, 0), changes.c.card_id.is_(None))
        if dialect == "postgresql":
            # Deleted as read, in this statement's snapshot: this run is full and reads what they changed. Kept
            # past the margin, a site edit would make every run full until it aged past ``cutoff``.
            gone = delete(changes).where(*global_change).returning(changes.c.id).cte("gone")
            registry_full: Any = exists(select(gone.c.id))
        else:
            registry_full = exists().where(*global_change)
        revoked = union(
            select(terminals.c.terminal_id).where(terminals.c.status == TerminalStatus.REVOKED.value),
            select(terminal_sites.c.terminal_id).where(terminal_sites.c.compromised_from.is_not(None)),
        )
        sources = {"conflicts": JournalConflict.__table__, "rejected": RejectedEntry.__table__,
                   "heads": ReportedHead.__table__, "checkpoints": TerminalCheckpoint.__table__}
        flags = [exists().select_from(sources[name]).label(f"has_{name}") for name in _GLOBAL_SOURCES[:-1]]
        flags.append(exists(revoked.subquery()).label("has_suspect_terminals"))
        flags.append(exists().where(card_profiles.c.revoked_at.is_not(None)).label("has_revoked_cards"))
        return select(
            select(state.c.journal_id).scalar_subquery().label("journal_id"),
            seen.label("registry_change_id"),
            select(state.c.run_id).scalar_subquery().label("run_id"),
            exists().where(runs.c.id == select(state.c.run_id).scalar_subquery()).label("run_exists"),
            func.coalesce(mark, 0).label("mark"),
            func.coalesce(changes_mark, seen, 0).label("changes_mark"),
            registry_full.label("registry_full"),
            *flags,
        )

    return built_once(("opening", dialect, margin), build)


def _within(scope: Scope, observations: list[Observation]) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """The open findings an incremental run may resolve: the ones it would have observed again if they held.

    Global kinds; card kinds of touched cards; along a touched terminal's chain, the gaps, breaks
    and backward steps after its ``from_seq`` (the part re-read); its clock skew of the boots read,
    or all of its clock findings when the skew check read the terminal whole (it observed some).
    A condition on ``findings`` (the members of ``detail`` read in SQL, :class:`~server.reconcile.sql.json_int`),
    built once, and its parameters: no statement of its own.
    """
    def build() -> ColumnElement[bool]:
        from_seq = (select(scope.terminals.c.from_seq).where(scope.terminals.c.terminal_id == findings.c.terminal_id)
                    .scalar_subquery())
        boot_read = exists().where(scope.boots.c.terminal_id == findings.c.terminal_id,
                                   scope.boots.c.boot_id == json_int(findings.c.detail, "boot_id"))
        again = case(
            (findings.c.kind == FindingKind.TERMINAL_GAP.value,
             json_int(findings.c.detail, "last_missing") + 1 > from_seq),
            (findings.c.kind == FindingKind.CLOCK_SKEW.value,
             or_(findings.c.terminal_id.in_(bindparam("whole", expanding=True)), boot_read)),
            else_=json_int(findings.c.detail, "seq") > from_seq,  # chain break, clock backwards: the entry's seq
        )
        return or_(
            findings.c.kind.in_(sorted(k.value for k in GLOBAL_KINDS)),
            and_(findings.c.kind.in_(sorted(k.value for k in CARD_KINDS)),
                 findings.c.card_id.in_(select(scope.cards.c.card_id))),
            and_(findings.c.kind.in_(sorted(k.value for k in TERMINAL_KINDS)),
                 findings.c.terminal_id.in_(select(scope.terminals.c.terminal_id)),
                 again == true()),
        )

    whole = sorted({o.terminal_id for o in observations if o.kind is FindingKind.CLOCK_SKEW and o.terminal_id})
    return built_once(("within",), build), {"whole": whole}


@contextmanager
def _single_flight(session: Session) -> Iterator[str | None]:
    """Hold the reconciliation lock for the run, or raise :class:`ReconcileBusy`.

    PostgreSQL: ``pg_try_advisory_xact_lock`` on the run's transaction (released when it ends);
    a second run raises at once. SQLite: the run's first statement writes ``reconcile_state``
    (``running_since``), which takes the database's write lock until the run commits (the
    transaction of :meth:`server.extensions.Database.write_session` already did, with ``BEGIN
    IMMEDIATE``); a second run waits for it up to the busy timeout, then raises.

    On PostgreSQL the same statement also turns JIT compilation off for the transaction
    (``set_config('jit', 'off', true)``, i.e. ``SET LOCAL``): an incremental run's statements read
    few rows but are planned over the whole journal, and at 1M entries their estimated cost passed
    ``jit_above_cost``: JIT compiled the touched chains' read for 0.84 s of its 0.94 s. Yields the
    setting it replaced (PostgreSQL) for a full run to put back, else None.

    :raises ReconcileBusy: another run holds it.
    """
    conn = session.connection()
    jit: str | None = None
    if conn.dialect.name == "postgresql":
        locked, jit, _ = conn.execute(select(  # evaluated in order: the setting before it is replaced
            func.pg_try_advisory_xact_lock(ADVISORY_LOCK_KEY), func.current_setting("jit"),
            func.set_config("jit", "off", True))).one()
        if not locked:
            raise ReconcileBusy("another reconciliation run is in progress")
    else:
        try:
            if conn.execute(update(_state).where(_state.c.id == 1).values(running_since=utcnow())).rowcount == 0:
                conn.execute(insert(_state).values(id=1, journal_id=0, running_since=utcnow()))
        except OperationalError as exc:
            if "locked" not in str(exc.orig):
                raise
            session.rollback()
            raise ReconcileBusy("another reconciliation run (or a long write) holds the database") from exc
    yield jit


def reconcile(
    session: Session,
    cfg: ReconcileConfig | None = None,
    *,
    verify_signatures: bool = False,
    incremental: bool = False,
    commit: bool = True,
) -> RunResult:
    """Reconcile the stored journal and record the findings; commits.

    Idempotent: an anomaly seen again updates its finding's evidence and
    ``last_seen_at`` and keeps its status, reason and decider. Open findings not
    observed this time are dismissed with :data:`~server.reconcile.findings.RESOLVED_REASON` (decided_by NULL:
    the system) — except ``bad_signature`` findings when ``verify_signatures`` is off.

    Incremental (docs/reconciliation.md §Incremental): only the terminals, cards and households
    of the entries stored since the last run's watermark are re-examined (each whole), the
    global checks run whole, and only findings of those keys (and of global kinds) may be
    resolved; the findings are the ones a full run would leave. It falls back to a full run when
    there is no usable watermark, when a registry change names no card (a site, a benefit cycle:
    ``registry_changes``, migration 0020) or with ``verify_signatures``; the cards a change names join
    the touched cards. Runs are single-flight.

    :param verify_signatures: also run :func:`~server.reconcile.terminal_checks.signature_mismatches` (one Ed25519
        verification per stored entry).
    :param incremental: re-examine only what changed since the last run (when it can).
    :param commit: False leaves the run's transaction open for the caller to commit or roll back
        (e.g. to see what a full run would record, and undo it).
    :raises ReconcileBusy: another run is in progress (nothing was done).
    :returns: counts of this run.
    """
    cfg = cfg or ReconcileConfig()
    now = utcnow()
    with _single_flight(session) as jit:
        conn = session.connection()
        dialect = conn.dialect.name
        margin = dialect == "postgresql" and cfg.watermark_margin_s > 0
        params = {"cutoff": now - dt.timedelta(seconds=cfg.watermark_margin_s)} if margin else {}
        head = conn.execute(_opening(dialect, margin), params).one()
        mark = int(head.mark)
        changes_mark = max(int(head.changes_mark), head.registry_change_id or 0)
        present = {name: bool(head._mapping[f"has_{name}"]) for name in (*_GLOBAL_SOURCES, "revoked_cards")}
        scope: Scope | None = None
        if (
            incremental
            and not verify_signatures
            and head.run_id is not None
            and head.registry_change_id is not None
            and not head.registry_full
            and head.journal_id <= mark
            and head.run_exists
        ):
            scope = Scope.since(conn, head.journal_id, head.registry_change_id)  # prunes the changes it read before
            entries = scope.new_entries
        else:
            if jit is not None and jit != "off":  # a full run plans as before (JIT as configured)
                conn.execute(select(func.set_config("jit", jit, True)))
            entries = conn.execute(select(func.count()).select_from(journal)).scalar_one()
            conn.execute(delete(_changes).where(_changes.c.id <= changes_mark))  # read whole: what they name
        run = ReconcileRun(started_at=now, entries=0, findings_new=0, findings_seen=0, findings_resolved=0)
        session.add(run)
        session.flush()
        # Settled first: a write settled as taken counts in this run's entitlement totals (server.households).
        settle_torn_writes(conn, run.id, now, scope)  # docs/reconciliation.md §Settling torn writes
        observations = observe(conn, cfg, scope, present)
        if verify_signatures:
            observations += signature_mismatches(conn, cfg)
        within, within_params = (None, None) if scope is None else _within(scope, observations)
        recorded = record_findings(conn, observations, run.id, now, resolve_bad_signatures=verify_signatures,
                                   resolve_within=within, within_params=within_params)
        if scope is not None:
            scope.drop(conn)
        values = {"journal_id": mark, "registry_change_id": changes_mark, "run_id": run.id, "running_since": None}
        if conn.execute(update(_state).where(_state.c.id == 1).values(**values)).rowcount == 0:
            conn.execute(insert(_state).values(id=1, **values))
        run.entries = entries
        run.findings_new = recorded.new
        run.findings_seen = recorded.seen
        run.findings_resolved = recorded.resolved
        run.finished_at = utcnow()
        if commit:
            session.commit()
    mode = "full" if scope is None else "incremental"
    log.info(
        "reconciliation run %d (%s): %d entries, %d findings (%d new, %d resolved)",
        run.id,
        mode,
        entries,
        recorded.seen,
        run.findings_new,
        run.findings_resolved,
    )
    return RunResult(run.id, entries, recorded.seen, run.findings_new, run.findings_resolved, recorded.by_kind,
                     mode, None if scope is None else scope.counts)
