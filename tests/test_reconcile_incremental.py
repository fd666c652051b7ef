"""Incremental reconciliation leaves exactly the findings a full run would (issue 21), on SQLite and PostgreSQL.

A seeded random loop (bounded: a few districts) plants the frauds of tests/test_reconcile.py at
random: clones redeemed at other counters, cards restored from old dumps, clocks stepped back,
journal ranges withheld (uploaded rounds later, or never), over-spending, households of two
cards. Each district's journals reach the server in several rounds through the real signed
upload; after every round an incremental run records its findings, then a full run is made in
the same transaction and rolled back: it must find nothing new, resolve nothing, and leave every
finding (kind, key, severity, status, reason, detail, evidence) as the incremental run left it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from typing import Any

import pytest
from sqlalchemy import update

from server.extensions import db
from server.reconcile.engine import reconcile
from server.reconcile.errors import ReconcileBusy
from server.reconcile.models import CardProfile, TerminalSite
from server.reconcile.observations import ReconcileConfig
from server.registry import cycles_between, ensure_cycles
from simulator.journals import CYCLE_ID, ENTITLEMENTS, District, SimCard, SimTerminal
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    audit_db,
    incremental_then_full,
    install,
    upload,
)

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
#: Exact watermark in tests (uploads here are seconds apart; see ReconcileConfig.watermark_margin_s).
CFG = ReconcileConfig(watermark_margin_s=0)
SEEDS = (11, 12, 13)
ROUNDS = 4
YEAR_MS = 365 * 86_400_000


def _ms(minutes: float) -> int:
    return int(DAY.timestamp() * 1000 + minutes * 60_000)


def _plant(d: District, rng: random.Random) -> None:
    """A day of taps with anomalies planted at random, in time order."""
    clones: list[tuple[SimCard, SimCard]] = []
    dumps: dict[str, SimCard] = {}
    minute = 0.0
    for t in d.terminals:
        t.boot(_ms(-30))
    for i in range(60):
        minute += rng.uniform(1, 25)
        t = rng.choice(d.terminals)
        if i == 30:  # at least one clock step per district
            t.step_clock(-180 * 60_000)
        if i == 20:  # a boot whose clock is a year ahead (dated after receipt, no skew within it), and at
            ahead = t  # i == 40 a boot set right: later rounds bring entries after the future-dated ones
            ahead.step_clock(YEAR_MS)
            ahead.boot(_ms(minute))
        if i == 40:
            ahead.step_clock(-YEAR_MS)
            ahead.boot(_ms(minute))
        card = rng.choice(d.cards)
        roll = rng.random()
        if roll < 0.08:
            t.step_clock(-rng.choice((40, 90, 180)) * 60_000)  # a flat RTC battery
            continue
        if roll < 0.14:
            clone = card.clone(counter=rng.randrange(0, 10))
            clones.append((card, clone))
            card = clone
        elif roll < 0.2 and clones:
            card = rng.choice(clones)[1]
        elif roll < 0.26:
            dumps[card.card_id] = card.snapshot()
        elif roll < 0.32 and card.card_id in dumps:
            card.restore(dumps[card.card_id])
        if rng.random() < 0.15:
            t.balance(card, _ms(minute))
            continue
        programme = rng.choice(sorted(ENTITLEMENTS))
        amount = rng.choice((ENTITLEMENTS[programme], ENTITLEMENTS[programme] // 2))
        t.redeem(card, _ms(minute), programme, amount)


def _rounds(t: SimTerminal, rng: random.Random) -> list[list[bytes]]:
    """The terminal's entries split into :data:`ROUNDS` uploads; a random range comes late or never."""
    entries = list(t.entries)
    cuts = sorted(rng.randrange(0, len(entries) + 1) for _ in range(ROUNDS - 1))
    bounds = [0, *cuts, len(entries)]
    out: list[list[bytes]] = [[e.message for e in entries[a:b]] for a, b in itertools.pairwise(bounds)]
    if len(entries) > 4 and rng.random() < 0.6:  # a withheld range: late, or deleted for good
        first = rng.randrange(1, len(entries) - 2)
        held = entries[first:first + rng.randrange(1, 3)]
        held_messages = {e.message for e in held}
        out = [[m for m in batch if m not in held_messages] for batch in out]
        late = rng.randrange(1, ROUNDS + 1)
        if late < ROUNDS:
            out[late].extend(e.message for e in held)
    return out


def _households(d: District) -> None:
    """Cards 0 and 1 are one household, 2 and 3 another (re-issued cards both in use)."""
    session = db.write_session()
    for ref, cards in (("HH-A", d.cards[0:2]), ("HH-B", d.cards[2:4])):
        session.execute(update(CardProfile).where(CardProfile.card_id.in_([c.card_id for c in cards]))
                        .values(household_ref=ref))
    session.commit()


def _revoke(d: District) -> None:
    """Terminal 0's key is compromised from 3 h into the day: its states are read by the others before and after."""
    session = db.write_session()
    session.get(TerminalSite, d.terminals[0].terminal_id).compromised_from = DAY + dt.timedelta(hours=3)
    session.commit()


def _office_blocks(d: District, r: int) -> None:
    """Blocks placed and lifted between upload rounds, dated inside the day (``blocked_card_used``, run whole).

    Round 1: card 5 blocked from 2 h and card 6 from 1 h into the day; round 2: card 6's block lifted at 4 h.
    """
    from sqlalchemy import select

    from server.auth import create_person
    from server.card_blocks import BlockReason, block_card, unblock_card
    from server.models import Person, PersonRole

    session = db.write_session()
    if r == 1:
        office = create_person(session, "office", "a long enough password", PersonRole.AUDITOR)
        block_card(session, d.cards[5].card_id, BlockReason.LOST, person=office, now=DAY + dt.timedelta(hours=2))
        block_card(session, d.cards[6].card_id, BlockReason.STOLEN, person=office, now=DAY + dt.timedelta(hours=1))
    elif r == 2:
        office = session.scalars(select(Person).where(Person.username == "office")).one()
        unblock_card(session, d.cards[6].card_id, person=office, reason="found", now=DAY + dt.timedelta(hours=4))
    session.commit()


@pytest.mark.parametrize("seed", SEEDS)
def test_incremental_run_leaves_the_findings_of_a_full_run(app, audit_db, world, seed):  # noqa: F811
    rng = random.Random(seed)
    d = District.new(4, 10, seed=seed, regions=["62.71", "62.01"])
    _plant(d, rng)
    install(app, world, d)
    with app.app_context():
        _households(d)
        session = db.write_session()  # the year-ahead clock's cycles: their upload would make a run full
        ensure_cycles(session, cycles_between(DAY, DAY + dt.timedelta(days=400)))
        session.commit()
        _revoke(d)
    plans = {t.terminal_id: _rounds(t, rng) for t in d.terminals}
    modes = []
    kinds: set[str] = set()
    for r in range(ROUNDS + 1):  # the last round uploads nothing
        with app.app_context():
            _office_blocks(d, r)
        for t in d.terminals:
            batch = plans[t.terminal_id][r] if r < ROUNDS else []
            for resp in upload(world, t, batch) if batch else ():
                assert resp.status_code == 200, resp.get_json()
        with app.app_context():
            result, incremental = incremental_then_full(CFG)
            modes.append(result.mode)
        kinds |= {v[0] for v in incremental.values()}
    assert modes[0] == "full" and set(modes[1:]) == {"incremental"}
    assert {"card_fork", "terminal_gap", "clock_backwards", "clock_skew", "revoked_key_state",
            "revoked_state_built_on", "blocked_card_used"} <= kinds, kinds


def test_second_run_is_refused_while_one_holds_the_lock(app, audit_db, world, db_url):  # noqa: F811
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite: the second run waits on the write lock (BEGIN IMMEDIATE) up to the busy timeout")
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(db_url)
    try:
        with app.app_context():
            first = db.write_session()
            reconcile(first, CFG, commit=False)  # holds the advisory lock until its transaction ends
            with Session(engine) as second, pytest.raises(ReconcileBusy):
                reconcile(second, CFG)
            first.rollback()
            with Session(engine) as third:
                assert reconcile(third, CFG).mode == "full"
    finally:
        engine.dispose()


def test_jit_is_off_in_an_incremental_run_only(app, audit_db, world, db_url):  # noqa: F811
    """PostgreSQL: an incremental run turns JIT off for its transaction; a full run keeps the setting it found."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's jit setting")
    from sqlalchemy import text

    with app.app_context():
        session = db.write_session()
        before = session.execute(text("SHOW jit")).scalar_one()
        assert reconcile(session, CFG, commit=False).mode == "full"
        assert session.execute(text("SHOW jit")).scalar_one() == before
        session.commit()
        session = db.write_session()
        assert reconcile(session, CFG, incremental=True, commit=False).mode == "incremental"
        assert session.execute(text("SHOW jit")).scalar_one() == "off"
        session.rollback()
        assert session.execute(text("SHOW jit")).scalar_one() == before


def test_a_registry_edit_that_keeps_every_total_is_seen_by_the_next_incremental_run(app, audit_db, world):  # noqa: F811
    """A card moved between two households of the same size, then two cards' entitlements swapped: counts, sums
    and extremes of the registry stay as they were (what the reference digest compared), no entry arrives, and the
    next incremental run must still leave the findings a full run leaves (registry_changes, migration 0020)."""
    from server.reconcile.models import CardEntitlement

    d = District.new(2, 4, seed=5, regions=["62.71"])
    t = d.terminals[0]
    t.boot(_ms(-30))
    for i, card in enumerate(d.cards[:2]):  # household A's two cards take the whole food package each
        t.redeem(card, _ms(10 + i), "food", ENTITLEMENTS["food"])
    t.redeem(d.cards[2], _ms(20), "cash", ENTITLEMENTS["cash"])
    t.redeem(d.cards[3], _ms(21), "cash", ENTITLEMENTS["cash"] // 2)
    install(app, world, d)
    with app.app_context():
        _households(d)
        session = db.write_session()  # card 1's cash entitlement is half the others'
        session.get(CardEntitlement, (d.cards[1].card_id, "cash", CYCLE_ID)).amount = ENTITLEMENTS["cash"] // 2
        session.commit()
    for resp in upload(world, t, t.messages()):
        assert resp.status_code == 200, resp.get_json()

    def incremental_as_full() -> tuple[str, dict[str, tuple[Any, ...]]]:
        with app.app_context():
            result, incremental = incremental_then_full(CFG)
        return result.mode, incremental

    mode, before = incremental_as_full()
    assert mode == "full" and "household_over_entitlement" in {v[0] for v in before.values()}
    with app.app_context():  # cards 1 and 2 change households: HH-A {0, 2}, HH-B {1, 3}, two cards each as before
        session = db.write_session()
        for card, ref in ((d.cards[1], "HH-B"), (d.cards[2], "HH-A")):
            session.execute(update(CardProfile).where(CardProfile.card_id == card.card_id).values(household_ref=ref))
        session.commit()
    mode, moved = incremental_as_full()
    assert mode == "incremental" and moved != before
    with app.app_context():  # cards 1 and 2 swap cash entitlements: card 2 took more than its half
        session = db.write_session()
        for card, amount in ((d.cards[1], ENTITLEMENTS["cash"]), (d.cards[2], ENTITLEMENTS["cash"] // 2)):
            session.get(CardEntitlement, (card.card_id, "cash", CYCLE_ID)).amount = amount
        session.commit()
    mode, swapped = incremental_as_full()
    assert mode == "incremental" and "entitlement_exceeded" in {v[0] for v in swapped.values()} - \
        {v[0] for v in moved.values()}
