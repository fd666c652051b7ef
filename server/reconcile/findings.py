"""Findings: recording a run's observations, an auditor's decision on one, and the entries it names.

A finding is keyed by its observation's fingerprint, so re-running reconciliation never
duplicates one and never touches an auditor's decision (docs/design.md §Reconciliation).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from server.models import Person
from server.reconcile.denylist import PROOF_KINDS
from server.reconcile.errors import FindingNotFound, InvalidDecision
from server.reconcile.models import Finding, FindingKind, FindingStatus
from server.reconcile.observations import Observation
from server.reconcile.sql import findings, journal
from server.types import utcnow

__all__ = ["REOPENED_REASON", "RESOLVED_REASON", "RecordedFindings", "decide_finding", "evidence_entries",
           "record_findings"]


#: The reason recorded when an open finding is no longer observed.
RESOLVED_REASON = "resolved: no longer observed by reconciliation run {run}"
#: The reason a dismissed proof finding is reopened with when its anomaly grew (red team r6).
REOPENED_REASON = "reopened by reconciliation run {run}: new evidence after it was dismissed"


def _extent(kind: str, detail: Mapping[str, Any]) -> dict[str, int]:
    """How much of its anomaly a proof finding's detail shows: counts that only grow with new evidence.

    ``card_fork``: forked redemptions, fork points, terminals; ``counter_backwards``: drops;
    ``card_rollback``: steps; ``card_counter_repeated``: repeated counters and terminals.
    """
    def size(key: str) -> int | None:
        value = detail.get(key)
        if isinstance(value, list):
            return len(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    keys = {FindingKind.CARD_FORK.value: ("redemptions", "fork_seqs", "terminals"),
            FindingKind.COUNTER_BACKWARDS.value: ("drops",),
            FindingKind.CARD_ROLLBACK.value: ("steps",),
            FindingKind.CARD_COUNTER_REPEATED.value: ("counters", "terminals")}.get(kind, ())
    return {k: n for k in keys if (n := size(k)) is not None}


def _grew(kind: str, before: str | None, after: Mapping[str, Any]) -> bool:
    """Whether ``after`` shows more of the anomaly than the stored ``before`` (a count present in both rose)."""
    try:
        old = json.loads(before or "{}")
    except ValueError:
        return False
    if not isinstance(old, dict):
        return False
    was, now = _extent(kind, old), _extent(kind, after)
    return any(now[k] > was[k] for k in now.keys() & was.keys())


def _hex_ids(ids: Iterable[bytes | None]) -> list[str]:
    return [i.hex() for i in ids if i is not None]


@dataclass(frozen=True)
class RecordedFindings:
    """What :func:`record_findings` did: distinct findings observed, new ones, open ones resolved, count per kind."""

    seen: int
    new: int
    resolved: int
    by_kind: dict[str, int]


def _upsert(conn: Connection) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Finding)
    if dialect == "sqlite":
        return sqlite.insert(Finding)
    raise NotImplementedError(f"findings upsert not implemented for {dialect}")


def record_findings(
    conn: Connection,
    observations: Iterable[Observation],
    run_id: int,
    now: dt.datetime,
    *,
    resolve_bad_signatures: bool,
    resolve_within: ColumnElement[bool] | None = None,
    within_params: Mapping[str, Any] | None = None,
) -> RecordedFindings:
    """Upsert one finding per distinct fingerprint and resolve the open ones not observed this run (not committed).

    An anomaly seen again updates its finding's evidence and ``last_seen_at`` and keeps its
    status, reason and decider, except a proof finding (:data:`~server.reconcile.denylist.PROOF_KINDS`)
    a person dismissed whose anomaly grew since the last run (more forked redemptions, counter drops,
    rollback steps, repeated card counters): it is reopened, first seen now (so it denies again),
    with :data:`REOPENED_REASON` (red team r6: else a card stayed fork-blind after one dismissal).
    Open findings not observed in run ``run_id`` are dismissed
    with :data:`RESOLVED_REASON` (decided_by NULL: the system) — except ``bad_signature``
    findings unless ``resolve_bad_signatures`` (the signatures were re-verified this run).

    :param now: the run's start (aware), stored as first/last seen and decision time.
    :param resolve_within: an incremental run's condition on ``findings`` rows: only open findings
        it holds for (the keys the run re-examined) may be resolved; None: every open finding.
    :param within_params: values of ``resolve_within``'s bound parameters.
    """
    by_fp: dict[str, Observation] = {}
    for observation in observations:
        by_fp.setdefault(observation.fingerprint, observation)
    existing: set[str] = set()
    reopen: list[str] = []  # person-dismissed proof findings whose anomaly grew: seen anew (they deny again)
    fps = list(by_fp)
    for i in range(0, len(fps), 500):
        for fp, status, decided_by, detail in conn.execute(
                select(findings.c.fingerprint, findings.c.status, findings.c.decided_by, findings.c.detail)
                .where(findings.c.fingerprint.in_(fps[i : i + 500]))):
            existing.add(fp)
            o = by_fp[fp]
            if (o.kind in PROOF_KINDS and status == FindingStatus.DISMISSED.value and decided_by is not None
                    and _grew(o.kind.value, detail, o.detail)):
                reopen.append(fp)
    rows = [
        {
            "fingerprint": fp,
            "kind": observation.kind.value,
            "severity": observation.severity.value,
            "card_id": observation.card_id,
            "terminal_id": observation.terminal_id,
            "summary": observation.summary[:255],
            "evidence": json.dumps(_hex_ids(observation.evidence)),
            "detail": json.dumps(observation.detail, sort_keys=True, default=str),
            "status": FindingStatus.OPEN.value,
            "first_seen_at": now,
            "last_seen_at": now,
            "last_run_id": run_id,
        }
        for fp, observation in by_fp.items()
    ]
    if rows:
        ins = _upsert(conn)
        stmt = ins.on_conflict_do_update(
            index_elements=[findings.c.fingerprint],
            set_={
                c: ins.excluded[c] for c in ("severity", "summary", "evidence", "detail", "last_seen_at", "last_run_id")
            },
        )
        for i in range(0, len(rows), 500):
            conn.execute(stmt, rows[i : i + 500])
    for i in range(0, len(reopen), 500):  # the earlier decision stays in the audit log (finding.dismissed)
        conn.execute(update(findings).where(findings.c.fingerprint.in_(reopen[i : i + 500])).values(
            status=FindingStatus.OPEN.value, first_seen_at=now, reason=REOPENED_REASON.format(run=run_id),
            decided_by=None, decided_at=None))
    resolved = conn.execute(
        update(findings)
        .where(
            findings.c.status == FindingStatus.OPEN.value,
            or_(findings.c.last_run_id.is_(None), findings.c.last_run_id != run_id),
            *(() if resolve_bad_signatures else (findings.c.kind != FindingKind.BAD_SIGNATURE.value,)),
            *(() if resolve_within is None else (resolve_within,)),
        )
        .values(status=FindingStatus.DISMISSED.value, reason=RESOLVED_REASON.format(run=run_id), decided_at=now),
        dict(within_params or {}),
    ).rowcount
    by_kind: dict[str, int] = defaultdict(int)
    for observation in by_fp.values():
        by_kind[observation.kind.value] += 1
    return RecordedFindings(
        seen=len(by_fp), new=len(set(by_fp) - existing), resolved=resolved or 0, by_kind=dict(by_kind)
    )


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
    audit(
        session,
        person,
        f"finding.{status.value}",
        f"finding:{finding_id}",
        kind=finding.kind.value,
        before=before,
        reason=reason,
        card_id=finding.card_id,
        terminal_id=finding.terminal_id,
    )
    return finding


def evidence_entries(session: Session, finding: Finding) -> Sequence[Any]:
    """The journal rows named by a finding's evidence (entry ids), in time order."""
    ids = [bytes.fromhex(h) for h in json.loads(finding.evidence) if len(h) == 32]
    if not ids:
        return []
    return session.execute(
        select(journal)
        .where(journal.c.entry_id.in_(ids))
        .order_by(journal.c.wall_time, journal.c.terminal_id, journal.c.seq)
    ).all()
