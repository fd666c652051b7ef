"""Planted attackers in a simulated district, against the real deny-list cycle (issue 20).

``huma sim district --campaign --clones N --rollbacks N`` plays a district over days in which
each attacker holds a dump of a card taken before its first redemption and, from the second
day, presents it again and again at several counters:

- a *clone* writes the dump onto a second chip (its own NFC counter: ``counter_backwards``);
- a *rollback* writes it back onto the genuine chip (its counter rises: ``card_rollback``);
- both fork the card's signed slot chain (``card_fork``).

Every stage of the cycle is the real one or the real decision: counters decide each tap with
:func:`terminal.policy.decide` (the deny list of the bundle they hold, the offline limits,
their exposure since their last upload); they upload through ``POST /api/v1/journal/batches``
every ``upload_h`` hours (which resets their exposure) and fetch the newest bundle every
``fetch_h`` hours, verified under the keystore root; the server reconciles every
``reconcile_h`` hours (provisional denials from signed proof) and publishes every
``publish_h`` hours with :func:`server.bundles.publish_due` / ``publish_next_bundle``.

The report holds what the attackers took and the bound of docs/security.md "The exposure
that remains", computed from the same cadence and limits: taken ≤ bound must hold.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardlib.records.claims import Unit
from firmware_config.models import CounterMode
from simulator.district import FIRST_DAY, DistrictReport, SimulationError, _Uploader
from simulator.journals import (
    CYCLE,
    CYCLE_END,
    CYCLE_START,
    ENTITLEMENTS,
    District,
    SimCard,
    SimTerminal,
    registry_rows,
)
from terminal.policy import CardFacts, Exposure, OfflineLimits, ProgrammeRules, Request, decide

__all__ = ["AttackPlan", "AttackReport", "check", "exposure_bound", "run_campaign"]

HOUR_MS = 3_600_000
_ROOT_PW = b"simulated root passphrase"
_KEY_PW = b"simulated bundle key passphrase"


def _limits() -> OfflineLimits:
    """The simulated counters' limits (rupiah): one package and one payout per tap and per card between
    uploads, three of each per card and cycle at one counter."""
    return OfflineLimits(per_tap={Unit.RUPIAH: 250_000}, per_card_since_sync={Unit.RUPIAH: 400_000},
                         terminal_exposure={Unit.RUPIAH: 5_000_000}, per_card_cycle={Unit.RUPIAH: 1_200_000})


@dataclass
class AttackPlan:
    """The campaign: district size, attackers, cadence of the cycle (hours) and the counters' limits.

    :ivar counters_per_attacker: counters each attacker can reach (its home region's and others').
    :ivar visits_per_day: counter visits per attacker per day (08:00–17:00 WIB).
    """

    households: int = 200
    terminals: int = 10
    days: int = 7
    clones: int = 2
    rollbacks: int = 2
    counters_per_attacker: int = 3
    visits_per_day: int = 3
    upload_h: float = 24.0
    reconcile_h: float = 6.0
    publish_h: float = 6.0
    fetch_h: float = 24.0
    limits: OfflineLimits = field(default_factory=_limits)
    seed: int = 1


@dataclass
class AttackReport:
    """What the attackers took (rupiah, food packages, accepted visits), what stopped them, and the bound.

    :ivar taken: rupiah taken per attacker card. :ivar bound: the docs formula's rupiah per card.
    :ivar denied_at: hours from day 1 00:00 UTC at which a published bundle first denied the card.
    """

    taken: dict[str, int] = field(default_factory=dict)
    bound: dict[str, int] = field(default_factory=dict)
    packages: int = 0
    visits: int = 0
    declines: Counter[str] = field(default_factory=Counter)
    denied_at: dict[str, float] = field(default_factory=dict)
    published: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    detection_delay_h: float = 0.0

    @property
    def taken_total(self) -> int:
        """Rupiah taken by every attacker."""
        return sum(self.taken.values())

    @property
    def bound_total(self) -> int:
        """Rupiah the docs formula allows them in all."""
        return sum(self.bound.values())


def exposure_bound(plan: AttackPlan, counters: int) -> int:
    """The most one card's attacker can take (rupiah) at ``counters`` counters before every counter denies it.

    docs/security.md "The exposure that remains": detection delay W = U + R + P + F; each
    counter's exposure for the card resets only at its uploads, so at most ⌈W/U⌉ + 1 of its
    upload windows overlap the attack, each worth min(per_card_since_sync, terminal_exposure);
    and the card takes at most ``per_card_cycle`` at one counter in the cycle, uploads or not.
    """
    w = plan.upload_h + plan.reconcile_h + plan.publish_h + plan.fetch_h
    windows = math.ceil(w / plan.upload_h) + 1
    caps = [v for v in (plan.limits.per_card_since_sync.get(Unit.RUPIAH),
                        plan.limits.terminal_exposure.get(Unit.RUPIAH)) if v is not None]
    per_counter = [windows * min(caps)] if caps else []
    cycle_cap = plan.limits.per_card_cycle.get(Unit.RUPIAH)
    if cycle_cap is not None:
        per_counter.append(cycle_cap)
    if not per_counter:
        raise ValueError("no per-card or per-terminal rupiah cap: a counter's exposure is unbounded")
    return counters * min(per_counter)


@dataclass
class _Counter:
    """A simulated counter's state beyond its journal: installed deny list, exposure since its last upload."""

    t: SimTerminal
    deny_cards: frozenset[bytes] = frozenset()
    deny_uids: frozenset[bytes] = frozenset()
    fetched_ms: int = 0
    card_exposure: Counter[str] = field(default_factory=Counter)
    total_exposure: int = 0
    cycle_exposure: Counter[str] = field(default_factory=Counter)

    def denies(self, card_id: bytes, uid: bytes) -> bool:
        return card_id in self.deny_cards or uid in self.deny_uids


def _keystore(workdir: Path) -> Any:
    from cardlib.keys.keystore import KeyStore, Role

    store = KeyStore.init(workdir / "keystore", _ROOT_PW)
    root = store.root_signer(_ROOT_PW)
    store.issue(Role.BUNDLE, root, passphrase=_KEY_PW)
    store.issue(Role.ISSUER, root, passphrase=_KEY_PW)
    return store


def run_campaign(plan: AttackPlan, app: Any, admin_token: str) -> AttackReport:
    """Play the campaign through the real server (see the module doc); every event in time order.

    :param app: a :func:`server.create_app` application at head (:func:`simulator.district.open_database`).
    :raises SimulationError: the server refused what an honest simulated terminal sent.
    :raises ValueError: the plan's limits have no rupiah cap per card or per counter (no bound).
    """
    with tempfile.TemporaryDirectory(prefix="huma-campaign-") as keys_dir:
        return _run_campaign(plan, app, admin_token, Path(keys_dir))


def _run_campaign(plan: AttackPlan, app: Any, admin_token: str, keys_dir: Path) -> AttackReport:
    """:func:`run_campaign` with its key store in ``keys_dir`` (removed by the caller)."""
    from cardlib.records.bundle import Programme, verify_bundle
    from server.bundles import newest_stored_bundle, publish_due, publish_next_bundle
    from server.extensions import db
    from server.reconcile.engine import reconcile
    from simulator.registry import load_registry

    d = District.new(plan.terminals, plan.households, seed=plan.seed)
    rng = d.rng
    up = _Uploader(app, admin_token)
    for t in d.terminals:
        up.enrol(t)
    with app.app_context():
        session = db.write_session()
        load_registry(session, registry_rows(d))
        session.commit()
    counters = {t.terminal_id: _Counter(t) for t in d.terminals}
    picked = rng.sample(d.cards, min(plan.clones + plan.rollbacks, len(d.cards)))
    # (card the journal names, chip presented, dump written before each visit, counters reachable)
    attackers: list[tuple[SimCard, SimCard, SimCard, list[_Counter]]] = []
    for i, card in enumerate(picked):
        dump = card.snapshot()  # before the household's first redemption
        chip = card.clone(counter=rng.randrange(1, 4)) if i < plan.clones else card
        reach = [counters[t.terminal_id] for t in rng.sample(d.terminals, min(plan.counters_per_attacker,
                                                                                len(d.terminals)))]
        attackers.append((card, chip, dump, reach))
    day0 = int(dt.datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=dt.UTC).timestamp() * 1000)
    d.honest_day(FIRST_DAY)
    end = day0 + plan.days * 24 * HOUR_MS
    events: list[tuple[int, int, str, Any]] = []

    def every(hours: float, kind: str, payload: Any, offset_ms: int, order: int) -> None:
        when = day0 + offset_ms
        while when < end:
            events.append((when, order, kind, payload))
            when += int(hours * HOUR_MS)

    for c in counters.values():
        offset = int(rng.uniform(0.5, 1.0) * plan.upload_h * HOUR_MS)  # after day 1's queue
        every(plan.upload_h, "upload", c, offset, 0)
        every(plan.fetch_h, "fetch", c, offset + 60_000, 3)
    every(plan.reconcile_h, "reconcile", None, int(plan.reconcile_h * HOUR_MS), 1)
    every(plan.publish_h, "publish", None, int(plan.publish_h * HOUR_MS) + 15 * 60_000, 2)
    for n in range(1, plan.days):
        for a in attackers:
            for _ in range(plan.visits_per_day):
                hour = rng.uniform(1.5, 10.0)  # 08:30–17:00 WIB
                events.append((day0 + int((n * 24 + hour) * HOUR_MS), 4, "visit", a))
    heapq.heapify(events)
    report = AttackReport(taken={a[0].card_id: 0 for a in attackers})
    uploads = DistrictReport()  # upload results are not the campaign's subject
    store = _keystore(keys_dir)
    root = store.entry(store.root_kid).public_key
    programmes = [Programme(1, "food", "rupiah", ENTITLEMENTS["food"]), Programme(2, "cash", "rupiah",
                                                                                    ENTITLEMENTS["cash"])]
    rules = {p: ProgrammeRules(p, Unit.RUPIAH) for p in ENTITLEMENTS}
    mode = CounterMode.paying(Unit.RUPIAH)
    attacker_ids = {bytes.fromhex(a[0].card_id): a[0].card_id for a in attackers}
    while events:
        when, _, kind, payload = heapq.heappop(events)
        if kind == "upload":
            c = payload
            messages = [e.message for e in c.t.drain()]
            for i in range(0, len(messages), 500):
                up.upload(c.t, messages[i:i + 500], uploads)
            c.card_exposure.clear()
            c.total_exposure = 0
        elif kind == "reconcile":
            with app.app_context():
                reconcile(db.write_session())
        elif kind == "publish":
            with app.app_context():
                session = db.write_session()
                if publish_due(session, store, now=when // 1000) is not None:
                    bundle = publish_next_bundle(session, store, _KEY_PW, programmes=programmes,
                                                 now=when // 1000).bundle
                    session.commit()
                    report.published += 1
                    for raw, card_id in attacker_ids.items():
                        if raw in bundle.deny_cards and card_id not in report.denied_at:
                            report.denied_at[card_id] = (when - day0) / HOUR_MS
        elif kind == "fetch":
            c = payload
            with app.app_context():
                row = newest_stored_bundle(db.session)
                blob = None if row is None else row.blob
            if blob is not None:
                bundle = verify_bundle(blob, root)
                c.deny_cards, c.deny_uids = frozenset(bundle.deny_cards), frozenset(bundle.deny_uids)
            c.fetched_ms = when
        else:
            card, chip, dump, reach = payload
            c = reach[rng.randrange(len(reach))]
            if c.t.last_wall_ms is not None and when <= c.t.last_wall_ms:
                when = c.t.last_wall_ms + 60_000
            chip.restore(dump)
            facts = CardFacts(bytes.fromhex(card.card_id), chip.tag_uid, ENTITLEMENTS,
                              int(CYCLE_START.timestamp()), int(CYCLE_END.timestamp()), CYCLE, dict(chip.spent))
            for programme in ENTITLEMENTS:
                left = ENTITLEMENTS[programme] - chip.spent.get(programme, 0)
                decision = decide(card=facts, request=Request(mode, programme, left), programmes=rules,
                                  counter_modes=frozenset({mode}), deny=c, limits=plan.limits,
                                  exposure=Exposure({Unit.RUPIAH: c.card_exposure[card.card_id]},
                                                    {Unit.RUPIAH: c.total_exposure},
                                                    {Unit.RUPIAH: c.cycle_exposure[card.card_id]}),
                                  bundle_age_days=(when - c.fetched_ms) / 86_400_000, now=when / 1000)
                if not decision.accepted:
                    report.declines[decision.reason.value if decision.reason else "?"] += 1
                    continue
                c.t.redeem(chip, when, programme, decision.amount)
                when += 120_000
                c.card_exposure[card.card_id] += decision.amount
                c.total_exposure += decision.amount
                c.cycle_exposure[card.card_id] += decision.amount
                report.taken[card.card_id] += decision.amount
                report.packages += programme == "food"
                report.visits += 1
    with app.app_context():
        from server.audit.exports import finding_records

        report.findings = Counter(f["kind"] for f in finding_records(db.session))
    report.detection_delay_h = plan.upload_h + plan.reconcile_h + plan.publish_h + plan.fetch_h
    report.bound = {a[0].card_id: exposure_bound(plan, len(a[3])) for a in attackers}
    return report


def check(report: AttackReport) -> None:
    """:raises SimulationError: an attacker took more than the docs formula allows (the bound is wrong)."""
    over = {c: (report.taken[c], report.bound[c]) for c in report.taken if report.taken[c] > report.bound[c]}
    if over:
        raise SimulationError(f"attackers took more than the bound: {over}")


def campaign_summary(report: AttackReport) -> dict[str, Any]:
    """The campaign's figures for ``huma sim district --campaign`` (rupiah, packages, visits, hours)."""
    return {
        "attackers": len(report.taken),
        "taken_rupiah": report.taken_total,
        "bound_rupiah": report.bound_total,
        "taken_food_packages": report.packages,
        "accepted_visits": report.visits,
        "declined": dict(report.declines),
        "denied_after_h": dict(sorted(report.denied_at.items())),
        "detection_delay_h": report.detection_delay_h,
        "bundles_published": report.published,
        "findings": dict(report.findings),
    }
