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
  or reaches with another hash: a deleted unsent tail).
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

Modules: the checks are :mod:`server.reconcile.terminal_checks` and
:mod:`server.reconcile.card_checks` (their SQL building blocks :mod:`server.reconcile.sql`,
the :class:`~server.reconcile.observations.Observation` they return
:mod:`server.reconcile.observations`); :mod:`server.reconcile.findings` records the
observations as findings and holds the auditors' decisions; :mod:`server.reconcile.denylist`
turns confirmed findings into the next bundle's deny lists. This module runs a
reconciliation: :func:`observe`, :func:`reconcile`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from server.reconcile.card_checks import (
    card_forks,
    card_order,
    entitlements_exceeded,
    impossible_travel,
    revoked_cards_used,
    secure_card_counters,
)
from server.reconcile.findings import record_findings
from server.reconcile.household_checks import claims_on_replaced_cards, household_entitlements
from server.reconcile.models import ReconcileRun
from server.reconcile.observations import Observation, ReconcileConfig
from server.reconcile.sql import journal
from server.reconcile.terminal_checks import (
    chain_and_clock_steps,
    checkpoint_heads_missing,
    clock_skew,
    journal_tails,
    revoked_terminals_used,
    signature_mismatches,
    upload_evidence,
)
from server.types import utcnow

log = logging.getLogger(__name__)

__all__ = ["RunResult", "observe", "reconcile"]


@dataclass(frozen=True)
class RunResult:
    """Counts of one reconciliation run."""

    run_id: int
    entries: int
    observed: int
    new: int
    resolved: int
    by_kind: dict[str, int]


def observe(conn: Connection, cfg: ReconcileConfig | None = None) -> list[Observation]:
    """Run every check on ``conn`` (read-only) and return the anomalies found.

    Deterministic order: by check, then by the SQL's ORDER BY.
    """
    cfg = cfg or ReconcileConfig()
    out: list[Observation] = []
    chain, backwards = chain_and_clock_steps(conn, cfg)
    out += chain
    out += upload_evidence(conn, cfg)
    out += journal_tails(conn, cfg)
    out += checkpoint_heads_missing(conn, cfg)
    out += revoked_terminals_used(conn, cfg)
    out += clock_skew(conn, cfg, backwards)
    out += card_forks(conn, cfg)
    out += card_order(conn, cfg)
    out += secure_card_counters(conn, cfg)
    out += entitlements_exceeded(conn, cfg)
    out += household_entitlements(conn, cfg)
    out += revoked_cards_used(conn, cfg)
    out += claims_on_replaced_cards(conn, cfg)
    out += impossible_travel(conn, cfg)
    return out


def reconcile(session: Session, cfg: ReconcileConfig | None = None, *, verify_signatures: bool = False) -> RunResult:
    """Reconcile the whole stored journal and record the findings; commits.

    Idempotent: an anomaly seen again updates its finding's evidence and
    ``last_seen_at`` and keeps its status, reason and decider. Open findings not
    observed this time are dismissed with :data:`~server.reconcile.findings.RESOLVED_REASON` (decided_by NULL:
    the system) — except ``bad_signature`` findings when ``verify_signatures`` is off.

    :param verify_signatures: also run :func:`~server.reconcile.terminal_checks.signature_mismatches` (one Ed25519
        verification per stored entry).

    :returns: counts of this run.
    """
    now = utcnow()
    run = ReconcileRun(started_at=now, entries=0, findings_new=0, findings_seen=0, findings_resolved=0)
    session.add(run)
    session.flush()
    conn = session.connection()
    entries = conn.execute(select(func.count()).select_from(journal)).scalar_one()
    observations = observe(conn, cfg)
    if verify_signatures:
        observations += signature_mismatches(conn, cfg)
    recorded = record_findings(conn, observations, run.id, now, resolve_bad_signatures=verify_signatures)
    run.entries = entries
    run.findings_new = recorded.new
    run.findings_seen = recorded.seen
    run.findings_resolved = recorded.resolved
    run.finished_at = utcnow()
    session.commit()
    log.info(
        "reconciliation run %d: %d entries, %d findings (%d new, %d resolved)",
        run.id,
        entries,
        recorded.seen,
        run.findings_new,
        run.findings_resolved,
    )
    return RunResult(run.id, entries, recorded.seen, run.findings_new, run.findings_resolved, recorded.by_kind)
