"""What a reconciliation check reports: :class:`Observation`, and the thresholds the checks use.

An observation becomes (or refreshes) a :class:`~server.reconcile.models.Finding` through
:func:`server.reconcile.findings.record_findings`, keyed by its fingerprint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cardlib.records.journal import EntryKind
from server.reconcile.models import FindingKind, Severity

__all__ = [
    "KM_PER_DEG_LAT",
    "KM_PER_DEG_LON_EQUATOR",
    "REDEMPTION_KINDS",
    "Observation",
    "ReconcileConfig",
    "distinct_ids",
]


#: Entry kinds that mean an amount was charged: a slot written (docs/design.md §Tap sequence) or a fallback
#: redemption served without a card write (docs/fallback.md), which counts against the household the same.
REDEMPTION_KINDS: tuple[int, ...] = (int(EntryKind.COMMIT), int(EntryKind.FINISHED), int(EntryKind.FALLBACK))
#: Kilometres per degree of latitude (WGS 84 mean).
KM_PER_DEG_LAT = 110.574
#: Kilometres per degree of longitude at the equator.
KM_PER_DEG_LON_EQUATOR = 111.320


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
    :ivar tail_grace_s: how long after a signed journal head reached the server the uploads
        may still stay below it before that is ``journal_tail_missing``, seconds (the counter's
        chance to upload: a few sync intervals).
    :ivar complaint_grace_s: how long after a counter's ``COMPLAINT`` journal entry reached the server the
        complaint itself may still be missing before that is ``complaint_not_received``, seconds. A sync round
        sends the complaints right after the journal, so an honest counter misses this only when the round was
        cut between the two and it stays offline: 72 hours covers a village counter that reaches the network
        every few days (docs/grievances.md); the finding is withdrawn when the complaint arrives.
    :ivar watermark_margin_s: on PostgreSQL, entries received this long before an incremental run
        are read again by the next one (an upload may commit after a run with a lower id), seconds.
    """

    max_speed_kmh: float = 60.0
    min_travel_km: float = 5.0
    ref_lat_deg: float = -1.7
    clock_step_tolerance_s: float = 1.0
    skew_threshold_s: float = 300.0
    future_tolerance_s: float = 300.0
    evidence_limit: int = 1000
    tail_grace_s: float = 3600.0
    complaint_grace_s: float = 72 * 3600.0
    watermark_margin_s: float = 120.0

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


def distinct_ids(ids: Iterable[bytes | None]) -> list[bytes]:
    """``ids`` without None and repeats, first occurrence kept (evidence lists)."""
    seen: dict[bytes, None] = {}
    for i in ids:
        if i is not None:
            seen.setdefault(i, None)
    return list(seen)
