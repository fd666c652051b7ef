"""The programme dashboard's numbers: one function per panel, plain SQL through SQLAlchemy 2.0 (no Flask).

Definitions (docs/dashboard.md):

- a **household** is ``card_profiles.household_ref`` (from the card's verified identity
  record); a card without one (loaded before migration 0010) counts as its own household.
  A re-issued card serves the same household, so a household is counted once however
  many cards it holds;
- **expected** in a cycle: households with at least one ``card_entitlements`` row for it;
- **collected**: expected households with at least one redemption (COMMIT, FINISHED or FALLBACK
  entry, or a torn write settled as taken: :func:`server.households.redemption_taken`) dated inside the cycle by
  any of their cards; its **day** is the WIB (UTC+7) date of the household's first one. The
  not-yet-collected list may narrow both to one programme (expected: entitled to it; collected:
  redeemed it);
- a card is **blocked** when the newest stored trust bundle denies it (counters refuse it) and
  **revoked** when ``card_profiles.revoked_at`` is set (replaced by a re-issue, abandoned, or an
  auditor's decision); the not-yet-collected list names a household's other cards as the ones to bring;
- a household's **region** is its card's region code; reports group by its prefix at a
  :class:`server.regions.Level`;
- **throughput**: per terminal, households served divided by the hours (WIB clock
  hours) in which it served at least one;
- **terminal health**: per counter, last upload received (``journal_entries.received_at``), its age,
  the newest entry's own time. Provisioning stations (terminal id ``S-…``, docs/keys-and-provisioning.md)
  upload no journal and are listed apart (:func:`stations`).

Every query takes the cycle's bounds from ``benefit_cycles``, so a cycle is a half year
in the province calendar (:func:`cardlib.records.claims.cycle_bounds`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import cbor2
from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select
from sqlalchemy.orm import QueryableAttribute, Session

from cardlib.records.bundle import CARD_ID_LENGTH, SortedIdSet
from cardlib.records.cose import parse_sign1_layout
from server.errors import ConfigurationError
from server.households import redemption_taken
from server.models import JournalEntryRow, PublishedBundle, Terminal, TerminalStatus
from server.reconcile.models import BenefitCycle, CardEntitlement, CardProfile, TerminalSite
from server.regions import Level, prefix_length
from server.types import UTC

#: Hours without an upload after which a terminal is shown as ``stale`` / ``offline``.
STALE_AFTER = dt.timedelta(hours=6)
OFFLINE_AFTER = dt.timedelta(hours=24)
#: Terminal id prefix of provisioning stations (docs/keys-and-provisioning.md "Enrolling a provisioning station").
STATION_PREFIX = "S-"
#: Rows of a not-collected page.
PAGE = 200


class CycleNotFound(LookupError):
    """No ``benefit_cycles`` row for the asked cycle id (or none at all)."""


#: Why a pending household's card will not serve: on the newest bundle's deny list, or revoked.
DENIED, REVOKED = "denied", "revoked"


@dataclass(frozen=True)
class Cycle:
    """:ivar cycle_id: e.g. ``"20262"``. :ivar starts_at: aware UTC. :ivar ends_at: aware UTC, exclusive."""

    cycle_id: str
    starts_at: dt.datetime
    ends_at: dt.datetime


@dataclass(frozen=True)
class RegionProgress:
    """Households expected and collected in one region; ``amounts`` redeemed per programme (its unit)."""

    region: str | None
    expected: int
    collected: int

    @property
    def share(self) -> float:
        """Collected / expected, 0.0 .. 1.0 (0.0 with nothing expected)."""
        return self.collected / self.expected if self.expected else 0.0


@dataclass(frozen=True)
class Throughput:
    """One terminal's pace: households served, hours with at least one, peak in one hour.

    :ivar peak: households served in the busiest hour. :ivar peak_hour: that WIB clock hour as
        ``YYYY-MM-DD HH`` text (:func:`wib_hour`; the earliest of equally busy hours).
    """

    terminal_id: str
    region: str | None
    households: int
    active_hours: int
    peak: int
    peak_hour: str = ""

    @property
    def per_hour(self) -> float:
        """Households per active hour."""
        return self.households / self.active_hours if self.active_hours else 0.0

    @property
    def peak_span(self) -> str:
        """The busiest hour as WIB wall time, ``2026-03-02 08:00–09:00 WIB`` (``–`` when not known)."""
        if len(self.peak_hour) != 13:
            return "\u2013"
        day, hour = self.peak_hour[:10], int(self.peak_hour[11:])
        return f"{day} {hour:02d}:00\u2013{hour + 1:02d}:00 WIB"


@dataclass(frozen=True)
class TerminalHealth:
    """:ivar last_sync: newest upload received, aware UTC or ``None`` (never uploaded).
    :ivar status: ``ok``, ``stale``, ``offline`` or ``never``."""

    terminal_id: str
    region: str | None
    enrolment: str
    last_sync: dt.datetime | None
    last_entry: dt.datetime | None
    entries: int
    offline_for: dt.timedelta | None
    status: str


@dataclass(frozen=True)
class Station:
    """An enrolled provisioning station. :ivar enrolment: ``approved`` or ``revoked``."""

    terminal_id: str
    enrolment: str


@dataclass(frozen=True)
class PendingHousehold:
    """An expected household without a redemption in the cycle.

    :ivar card_ids: the cards a counter still serves (sorted): the ones to bring.
    :ivar blocked: the household's other cards, card id → :data:`DENIED` or :data:`REVOKED`.
    """

    household: str
    region: str | None
    card_ids: tuple[str, ...]
    blocked: Mapping[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- SQL pieces


def _household() -> ColumnElement[str]:
    """A household's key: its reference, else (no reference stored) the card id."""
    # never NULL: a NULL reference falls back to the (non-NULL) card id
    household: ColumnElement[str] = func.coalesce(CardProfile.household_ref,  # type: ignore[arg-type]
                                                  CardProfile.card_id)
    return household


def _prefix(level: Level) -> ColumnElement[str]:
    return func.substr(CardProfile.region, 1, prefix_length(level))


def wib_day(session: Session, column: ColumnElement[dt.datetime] | QueryableAttribute[dt.datetime]
            ) -> ColumnElement[str]:
    """SQL for the WIB calendar date of a UTC timestamp column, as ``YYYY-MM-DD`` text."""
    if session.get_bind().dialect.name == "sqlite":  # stored as UTC text (server.types.UTCDateTime)
        return func.strftime("%Y-%m-%d", column, "+7 hours")
    return func.to_char(func.timezone("Asia/Jakarta", column), "YYYY-MM-DD")


def wib_hour(session: Session, column: ColumnElement[dt.datetime] | QueryableAttribute[dt.datetime]
             ) -> ColumnElement[str]:
    """SQL for the WIB clock hour of a UTC timestamp column, as ``YYYY-MM-DD HH`` text."""
    if session.get_bind().dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d %H", column, "+7 hours")
    return func.to_char(func.timezone("Asia/Jakarta", column), "YYYY-MM-DD HH24")


def cycles(session: Session) -> list[Cycle]:
    """Every cycle, newest first."""
    return [Cycle(c.cycle_id, c.starts_at, c.ends_at) for c in
            session.scalars(select(BenefitCycle).order_by(BenefitCycle.cycle_id.desc()))]


def listed_cycles(session: Session, shown: Cycle, now: dt.datetime | None = None) -> list[Cycle]:
    """The cycles a page offers, newest first: every cycle that has started by ``now``, the next one, and ``shown``.

    Entitlements are issued ahead (an issuance file may carry years of cycles); a cycle that
    starts after the next one has nothing to show yet, so it is left out unless it is ``shown``.

    :param shown: the cycle the page displays (kept in the list, so the selection stays visible).
    :param now: aware UTC (default: the current time).
    """
    now = now or dt.datetime.now(UTC)
    every = cycles(session)  # newest first
    upcoming = [c for c in every if c.starts_at > now]
    keep = {c.cycle_id for c in every if c.starts_at <= now} | {shown.cycle_id}
    if upcoming:
        keep.add(upcoming[-1].cycle_id)  # the soonest one
    return [c for c in every if c.cycle_id in keep]


def current_cycle(session: Session, cycle_id: str | None = None, now: dt.datetime | None = None) -> Cycle:
    """The asked cycle, else the one containing ``now``, else the newest that started.

    :raises CycleNotFound: ``cycle_id`` unknown, or no cycle at all.
    """
    if cycle_id is not None:
        row = session.get(BenefitCycle, cycle_id)
        if row is None:
            raise CycleNotFound(f"no cycle {cycle_id!r}")
        return Cycle(row.cycle_id, row.starts_at, row.ends_at)
    now = now or dt.datetime.now(UTC)
    all_cycles = cycles(session)  # newest first
    if not all_cycles:
        raise CycleNotFound("no benefit cycle is registered yet")
    for c in all_cycles:
        if c.starts_at <= now:
            return c  # the running one, else the newest that has ended
    return all_cycles[-1]  # every cycle is in the future: the first


def _expected(cycle: Cycle) -> Select[tuple[str, str | None]]:
    """Distinct (household, region code) expected in ``cycle``."""
    cp, ce = CardProfile, CardEntitlement
    return (select(_household().label("household"), cp.region.label("region"))
            .join(ce, ce.card_id == cp.card_id).where(ce.cycle_id == cycle.cycle_id).distinct())


def _first_redemption(cycle: Cycle, programme: str | None = None) -> Select[tuple[str, dt.datetime]]:
    """Per household: its first redemption inside ``cycle`` (of ``programme``, else of any)."""
    j, cp = JournalEntryRow, CardProfile
    stmt = (select(_household().label("household"), func.min(j.wall_time).label("first"))
            .join(cp, cp.card_id == j.card_id)
            .where(redemption_taken(), j.wall_time >= cycle.starts_at, j.wall_time < cycle.ends_at)
            .group_by(_household()))
    return stmt.where(j.programme == programme) if programme else stmt


# ----------------------------------------------------------------------------- panels


def progress(session: Session, cycle: Cycle, level: Level = Level.REGENCY,
             within: str | None = None) -> list[RegionProgress]:
    """Households expected and collected per region at ``level`` (``within``: only codes under it).

    :returns: sorted by region code; a card without a region is ``None``, last.
    """
    expected = _expected(cycle).subquery()
    done = _first_redemption(cycle).subquery()
    region = func.substr(expected.c.region, 1, prefix_length(level))
    stmt = (select(region.label("region"), func.count(func.distinct(expected.c.household)),
                   func.count(func.distinct(done.c.household)))
            .select_from(expected.outerjoin(done, done.c.household == expected.c.household))
            .group_by(region))
    if within:
        stmt = stmt.where(expected.c.region.like(f"{_like(within)}%", escape="\\"))
    rows = [RegionProgress(r, int(e), int(c)) for r, e, c in session.execute(stmt).tuples()]
    return sorted(rows, key=lambda p: (p.region is None, p.region or ""))


def totals(rows: list[RegionProgress]) -> RegionProgress:
    """The sum of region rows (one household is in one region)."""
    return RegionProgress(None, sum(r.expected for r in rows), sum(r.collected for r in rows))


def per_day(session: Session, cycle: Cycle, within: str | None = None) -> list[tuple[str, int]]:
    """Households collected per WIB day (the day of each household's first redemption), in date order."""
    j, cp = JournalEntryRow, CardProfile
    first = (select(_household().label("household"), func.min(j.wall_time).label("first"))
             .join(cp, cp.card_id == j.card_id)
             .where(redemption_taken(), j.wall_time >= cycle.starts_at, j.wall_time < cycle.ends_at))
    if within:
        first = first.where(cp.region.like(f"{_like(within)}%", escape="\\"))
    sub = first.group_by(_household()).subquery()
    day = wib_day(session, sub.c.first)
    stmt = select(day, func.count()).group_by(day).order_by(day)
    return [(str(d), int(n)) for d, n in session.execute(stmt).tuples()]


def amounts(session: Session, cycle: Cycle, within: str | None = None) -> list[tuple[str, str | None, int]]:
    """Total redeemed per programme in ``cycle``: ``(programme, unit, amount)``; unit from the entitlements."""
    j, cp, ce = JournalEntryRow, CardProfile, CardEntitlement
    unit = (select(func.max(ce.unit)).where(ce.programme == j.programme, ce.cycle_id == cycle.cycle_id)
            .scalar_subquery())
    stmt = (select(j.programme, unit, func.sum(j.amount))
            .where(redemption_taken(), j.wall_time >= cycle.starts_at, j.wall_time < cycle.ends_at)
            .group_by(j.programme).order_by(j.programme))
    if within:
        stmt = stmt.join(cp, cp.card_id == j.card_id).where(cp.region.like(f"{_like(within)}%", escape="\\"))
    return [(str(p or ""), u, int(a or 0)) for p, u, a in session.execute(stmt).tuples()]


def programmes(session: Session, cycle: Cycle) -> list[str]:
    """Programme codes with an entitlement in ``cycle`` (what ``?programme=`` may name), sorted."""
    ce = CardEntitlement
    return list(session.scalars(select(ce.programme).where(ce.cycle_id == cycle.cycle_id).distinct()
                                .order_by(ce.programme)))


def denied_cards(session: Session) -> SortedIdSet:
    """The card deny list of the newest stored trust bundle (empty when none is published).

    Read from the server's own stored copy without verifying it again (it was verified and
    signed when published); it only marks cards on the dashboard.

    :raises ConfigurationError: the stored bundle does not decode (a damaged database).
    """
    from server.bundles import newest_stored_bundle

    row = newest_stored_bundle(session)
    if row is None:
        return SortedIdSet(b"", CARD_ID_LENGTH)
    try:
        outer = cbor2.loads(bytes(row.blob))
        parts = parse_sign1_layout(outer[1])
        if parts is None:
            raise ValueError("not this project's COSE_Sign1 layout")
        return SortedIdSet(cbor2.loads(parts[3])[6], CARD_ID_LENGTH)
    except (cbor2.CBORDecodeError, ValueError, EOFError, KeyError, IndexError, TypeError) as exc:
        raise ConfigurationError(f"stored trust bundle v{row.version} does not decode: {exc}") from exc


def pending(session: Session, cycle: Cycle, within: str | None = None, *, offset: int = 0,
            limit: int | None = PAGE, programme: str | None = None) -> list[PendingHousehold]:
    """Expected households without a redemption in ``cycle``, by region code then household.

    :param within: a region code prefix (``62.71`` or ``62.71.01``); ``None``: everywhere.
    :param limit: rows (``None``: all, for the CSV export).
    :param programme: a programme code: households entitled to it that have not redeemed it
        (``None``: households that have redeemed nothing).
    :raises ConfigurationError: see :func:`denied_cards`.
    """
    cp, ce = CardProfile, CardEntitlement
    done = _first_redemption(cycle, programme).subquery()
    household = _household()
    # a revoked card's id carries a "!" through the aggregate
    marked = case((cp.revoked_at.is_(None), cp.card_id), else_=cp.card_id + literal("!"))
    stmt = (select(household, cp.region, _joined(session, marked))
            .join(ce, ce.card_id == cp.card_id)
            .outerjoin(done, done.c.household == household)
            .where(ce.cycle_id == cycle.cycle_id, done.c.household.is_(None))
            .group_by(household, cp.region).order_by(cp.region, household).offset(offset))
    if programme:
        stmt = stmt.where(ce.programme == programme)
    if limit is not None:
        stmt = stmt.limit(limit)
    if within:
        stmt = stmt.where(cp.region.like(f"{_like(within)}%", escape="\\"))
    denied = denied_cards(session)
    out = []
    for h, r, ids in session.execute(stmt).tuples():
        usable, blocked = [], {}
        for marked_id in sorted(set(str(ids).split(" "))):
            card_id = marked_id.rstrip("!")
            if _in(denied, card_id):
                blocked[card_id] = DENIED
            elif marked_id.endswith("!"):
                blocked[card_id] = REVOKED
            else:
                usable.append(card_id)
        out.append(PendingHousehold(h, r, tuple(usable), blocked))
    return out


def _in(ids: SortedIdSet, card_id: str) -> bool:
    """Whether hex ``card_id`` is in ``ids`` (an id that is not hex of the width never is)."""
    try:
        raw = bytes.fromhex(card_id)
    except ValueError:
        return False
    return len(raw) == CARD_ID_LENGTH and raw in ids


def _joined(session: Session, column: ColumnElement[str]) -> ColumnElement[str]:
    """SQL aggregate joining a group's values with spaces (group_concat / string_agg)."""
    if session.get_bind().dialect.name == "sqlite":
        return func.group_concat(column, " ")
    return func.string_agg(column, " ")


def iter_pending(session: Session, cycle: Cycle, within: str | None = None,
                 programme: str | None = None) -> Iterator[PendingHousehold]:
    """Every pending household (the CSV export); ``programme`` as in :func:`pending`."""
    yield from pending(session, cycle, within, limit=None, programme=programme)


def throughput(session: Session, cycle: Cycle, within: str | None = None) -> list[Throughput]:
    """Households served per terminal and active WIB hour in ``cycle``, fastest first."""
    j, ts = JournalEntryRow, TerminalSite
    hour = wib_hour(session, j.wall_time)
    where = [redemption_taken(), j.wall_time >= cycle.starts_at, j.wall_time < cycle.ends_at]
    if within:
        where.append(ts.region.like(f"{_like(within)}%", escape="\\"))
    per_hour = (select(j.terminal_id, hour.label("hour"), func.count(func.distinct(j.card_id)).label("n"))
                .outerjoin(ts, ts.terminal_id == j.terminal_id).where(and_(*where))
                .group_by(j.terminal_id, hour).subquery())
    served = (select(j.terminal_id, func.count(func.distinct(j.card_id)).label("n"))
              .outerjoin(ts, ts.terminal_id == j.terminal_id).where(and_(*where))
              .group_by(j.terminal_id).subquery())
    ranked = select(per_hour.c.terminal_id, per_hour.c.hour, per_hour.c.n,
                    func.count().over(partition_by=per_hour.c.terminal_id).label("hours"),
                    func.row_number().over(partition_by=per_hour.c.terminal_id,
                                           order_by=(per_hour.c.n.desc(), per_hour.c.hour)).label("rank")).subquery()
    stmt = (select(ranked.c.terminal_id, ts.region, served.c.n, ranked.c.hours, ranked.c.n, ranked.c.hour)
            .join(served, served.c.terminal_id == ranked.c.terminal_id)
            .outerjoin(ts, ts.terminal_id == ranked.c.terminal_id)
            .where(ranked.c.rank == 1))
    rows = [Throughput(t, r, int(n), int(h), int(p), str(hr))
            for t, r, n, h, p, hr in session.execute(stmt).tuples()]
    return sorted(rows, key=lambda t: (-t.per_hour, t.terminal_id))


def terminal_health(session: Session, now: dt.datetime | None = None,
                    within: str | None = None, *, include_stations: bool = False) -> list[TerminalHealth]:
    """Every enrolled (approved or revoked) counter with its last upload, oldest sync first.

    :param include_stations: also list provisioning stations (:data:`STATION_PREFIX`; they upload no
        journal, so they show as ``never``); the dashboard leaves them out (:func:`stations`).
    """
    now = now or dt.datetime.now(UTC)
    j, t, ts = JournalEntryRow, Terminal, TerminalSite
    stats = (select(j.terminal_id, func.max(j.received_at).label("sync"), func.max(j.wall_time).label("entry"),
                    func.count().label("n")).group_by(j.terminal_id).subquery())
    stmt = (select(t.terminal_id, t.status, ts.region, stats.c.sync, stats.c.entry, stats.c.n)
            .outerjoin(ts, ts.terminal_id == t.terminal_id)
            .outerjoin(stats, stats.c.terminal_id == t.terminal_id)
            .where(t.status.in_([TerminalStatus.APPROVED, TerminalStatus.REVOKED])))
    if not include_stations:
        stmt = stmt.where(~t.terminal_id.startswith(STATION_PREFIX, autoescape=True))
    if within:
        stmt = stmt.where(ts.region.like(f"{_like(within)}%", escape="\\"))
    out = []
    from server.types import UTCDateTime

    to_utc = UTCDateTime().process_result_value
    dialect = session.get_bind().dialect
    for terminal_id, status, region, sync, entry, n in session.execute(stmt).tuples():
        # subquery MAX() loses the column type on SQLite (text comes back): convert it
        sync_at = to_utc(_as_datetime(sync), dialect) if sync is not None else None
        entry_at = to_utc(_as_datetime(entry), dialect) if entry is not None else None
        age = now - sync_at if sync_at else None
        health = ("never" if age is None else "offline" if age >= OFFLINE_AFTER
                  else "stale" if age >= STALE_AFTER else "ok")
        out.append(TerminalHealth(terminal_id, region, status.value, sync_at, entry_at, int(n or 0), age, health))
    order = {"never": 0, "offline": 1, "stale": 2, "ok": 3}
    return sorted(out, key=lambda h: (order[h.status], h.last_sync or dt.datetime.min.replace(tzinfo=UTC),
                                      h.terminal_id))


def stations(session: Session) -> list[Station]:
    """Every enrolled (approved or revoked) provisioning station (:data:`STATION_PREFIX`), by id."""
    t = Terminal
    stmt = (select(t.terminal_id, t.status)
            .where(t.status.in_([TerminalStatus.APPROVED, TerminalStatus.REVOKED]),
                   t.terminal_id.startswith(STATION_PREFIX, autoescape=True))
            .order_by(t.terminal_id))
    return [Station(i, status.value) for i, status in session.execute(stmt).tuples()]


def newest_bundle_version(session: Session) -> int | None:
    """Version of the newest published trust bundle (what a synced counter holds)."""
    return session.scalar(select(func.max(PublishedBundle.version)))


def _as_datetime(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _like(prefix: str) -> str:
    """``prefix`` with LIKE's wildcards escaped (a region code has none, but a query parameter may)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

