"""Reconciliation scenarios on SQLite and PostgreSQL with real signed journals through the real upload.

Each fraud is made by the simulator the way a fraudster would (a second chip, an
old dump written back, deleted journal rows, a stolen key, a stepped clock) and
must be found with the right kind and exactly the right evidence; an honest day
must produce no finding at all.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import func, select

from server.extensions import db
from server.models import AuditLog, JournalEntryRow, PersonRole
from server.reconcile.denylist import deny_list_candidates, deny_sets
from server.reconcile.engine import reconcile
from server.reconcile.findings import decide_finding
from server.reconcile.models import FindingKind, FindingStatus, TerminalSite
from simulator.journals import ENTITLEMENTS, District, SimCard
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    audit_db,
    enrol,
    evidence,
    findings,
    install,
    run,
    upload,
    upload_all,
)

UTC = dt.timezone.utc
DAY = dt.date(2026, 3, 2)


def _ms(h: int, m: int = 0, day: dt.date = DAY) -> int:
    """True time, ms since the epoch, at h:m UTC on ``day``."""
    return int(dt.datetime(day.year, day.month, day.day, h, m, tzinfo=UTC).timestamp() * 1000)


def _kinds(app) -> set[str]:
    return {f.kind.value for f in findings(app) if f.status is FindingStatus.OPEN}


def _two_region_district() -> tuple[District, SimCard]:
    """Terminal T-0000 in Palangka Raya, T-0001 in Pangkalan Bun (≈ 260 km), T-0002 in Palangka Raya."""
    d = District.new(3, 4, seed=7, regions=["62.71", "62.01"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    return d, d.cards[0]


def test_honest_day_produces_no_findings(app, audit_db, world):
    d = District.new(6, 60, seed=3)
    d.honest_day(DAY)
    d.honest_day(DAY + dt.timedelta(days=1))  # second day: nothing left to redeem, balance checks only
    install(app, world, d)
    upload_all(world, d)
    result = run(app)
    n = sum(len(t.entries) for t in d.terminals)
    assert result.entries == n and n > 200
    assert findings(app) == [], [f.summary for f in findings(app)]
    assert result.observed == 0 and result.new == 0


def test_cloned_card_redeemed_at_two_offline_terminals(app, audit_db, world):
    d, card = _two_region_district()
    t_home, t_far = d.terminals[0], d.terminals[1]
    clone = card.clone(counter=3)  # a magic NTAG loaded from a dump; its counter is its own
    _, genuine = t_home.redeem(card, _ms(2), "food", ENTITLEMENTS["food"])
    cloned_pending, cloned = t_far.redeem(clone, _ms(2, 40), "food", ENTITLEMENTS["food"])
    genuine2_pending, genuine2 = t_home.redeem(card, _ms(4), "cash", ENTITLEMENTS["cash"])
    install(app, world, d)
    upload_all(world, d)
    run(app)

    fork = findings(app, FindingKind.CARD_FORK)
    assert len(fork) == 1 and fork[0].card_id == card.card_id
    assert evidence(fork[0]) == {genuine.entry.entry_id.hex(), cloned.entry.entry_id.hex()}
    assert json.loads(fork[0].detail)["terminals"] == sorted([t_home.terminal_id, t_far.terminal_id])

    travel = findings(app, FindingKind.IMPOSSIBLE_TRAVEL)
    # There (260 km in 40 min) and back (80 min): two impossible journeys.
    assert [evidence(f) for f in travel] == [{genuine.entry.entry_id.hex(), cloned_pending.entry.entry_id.hex()},
                                             {cloned.entry.entry_id.hex(), genuine2_pending.entry.entry_id.hex()}]
    assert all(json.loads(f.detail)["km"] > 100 for f in travel)

    ctr = findings(app, FindingKind.COUNTER_BACKWARDS)
    # The first entry of the clone's tap (its PENDING) is where the counter is seen to fall.
    assert len(ctr) == 1 and evidence(ctr[0]) == {genuine.entry.entry_id.hex(), cloned_pending.entry.entry_id.hex()}

    over = findings(app, FindingKind.ENTITLEMENT_EXCEEDED)
    assert len(over) == 1
    detail = json.loads(over[0].detail)
    assert (detail["programme"], detail["entitled"], detail["total"]) == ("food", 150_000, 300_000)
    assert detail["first_over_entry_id"] == cloned.entry.entry_id.hex()
    assert genuine2.entry.entry_id.hex() not in evidence(over[0])  # cash stayed within its entitlement
    # Not a rollback: the two chips' counters are not one chip's sessions.
    assert findings(app, FindingKind.CARD_ROLLBACK) == []


def test_card_restored_from_an_old_dump(app, audit_db, world):
    d, card = _two_region_district()
    t = d.terminals[0]
    dump = card.snapshot()
    _, first = t.redeem(card, _ms(2), "food", ENTITLEMENTS["food"])
    card.restore(dump)  # genuine chip, old slot written back; the NFC counter keeps rising
    _, replayed = t.redeem(card, _ms(2, 1, DAY + dt.timedelta(days=1)), "food", ENTITLEMENTS["food"])
    install(app, world, d)
    upload_all(world, d)
    run(app)

    rollback = findings(app, FindingKind.CARD_ROLLBACK)
    assert len(rollback) == 1 and rollback[0].card_id == card.card_id
    assert evidence(rollback[0]) == {first.entry.entry_id.hex(), replayed.entry.entry_id.hex()}
    assert json.loads(rollback[0].detail)["steps"][0]["from_seq"] == 2
    fork = findings(app, FindingKind.CARD_FORK)
    assert [f.card_id for f in fork] == [card.card_id]
    assert findings(app, FindingKind.COUNTER_BACKWARDS) == []  # same chip: counter never fell
    assert findings(app, FindingKind.IMPOSSIBLE_TRAVEL) == []  # same counter


def test_terminal_with_a_deleted_journal_range(app, audit_db, world):
    d, card = _two_region_district()
    t, other = d.terminals[0], d.terminals[2]
    victim = d.cards[1]
    victim.region = "62.71"
    other.redeem(victim, _ms(1), "cash", 100_000)  # victim slot 1 → 2 at the other terminal
    t.redeem(card, _ms(2), "food", 150_000)  # seq 2, 3
    hidden = t.redeem(victim, _ms(2, 10), "cash", 100_000)  # seq 4, 5: slot 2 → 3, deleted below
    t.redeem(card, _ms(2, 20), "cash", 250_000)  # seq 6, 7
    other.redeem(victim, _ms(3), "food", 150_000)  # slot 3 → 4
    install(app, world, d)
    deleted = range(4, 6)
    for term in d.terminals:
        for r in upload(world, term, term.messages(skip=deleted if term is t else None)):
            assert r.status_code == 200, r.get_json()
    run(app)

    gaps = findings(app, FindingKind.TERMINAL_GAP)
    assert len(gaps) == 1 and gaps[0].terminal_id == t.terminal_id
    assert json.loads(gaps[0].detail) == {"first_missing": 4, "last_missing": 5, "count": 2}
    assert evidence(gaps[0]) == {t.entries[2].entry.entry_id.hex(), t.entries[5].entry.entry_id.hex()}
    chain = findings(app, FindingKind.CARD_CHAIN_GAP)
    assert len(chain) == 1 and chain[0].card_id == victim.card_id
    assert json.loads(chain[0].detail) == {"from_seq": 2, "to_seq": 3}
    assert findings(app, FindingKind.TERMINAL_CHAIN_BREAK) == []

    # The missing rows arrive late (they were hidden, not destroyed): the gaps resolve themselves.
    for r in upload(world, t, [m.message for m in hidden]):
        assert r.status_code == 200, r.get_json()
    second = run(app)
    assert second.observed == 0
    assert {f.status for f in findings(app)} == {FindingStatus.DISMISSED}
    assert all(f.reason.startswith("resolved") and f.decided_by is None for f in findings(app))


def test_revoked_terminal_still_uploading(app, audit_db, world):
    d, card = _two_region_district()
    t = d.terminals[0]
    t.redeem(d.cards[2], _ms(1), "food", 150_000)  # before the theft: fine
    after = [t.redeem(card, _ms(3), "food", 150_000), t.redeem(d.cards[3], _ms(3, 5), "cash", 250_000)]
    install(app, world, d)
    with app.app_context():  # the field office reports the key stolen at 02:00
        session = db.write_session()
        session.get(TerminalSite, t.terminal_id).compromised_from = dt.datetime.fromtimestamp(_ms(2) / 1000, UTC)
        session.commit()
    upload_all(world, d)  # the thief's entries arrive before the admin revokes
    r = world.client.post(f"/api/v1/terminals/{t.terminal_id}/revoke", headers=world.auth())
    assert r.status_code == 200
    late = t.redeem(d.cards[1], _ms(5), "food", 150_000)
    refused = upload(world, t, [m.message for m in late])
    assert refused[0].status_code == 403 and refused[0].get_json()["error"]["code"] == "terminal_revoked"
    run(app)

    used = findings(app, FindingKind.REVOKED_TERMINAL_USED)
    assert len(used) == 1 and used[0].terminal_id == t.terminal_id
    assert evidence(used[0]) == {e.entry.entry_id.hex() for pair in after for e in pair}
    assert json.loads(used[0].detail)["first_seq"] == 4


def test_clock_that_went_backwards(app, audit_db, world):
    d, card = _two_region_district()
    t = d.terminals[0]
    t.redeem(d.cards[2], _ms(2), "food", 150_000)
    before = t.redeem(d.cards[3], _ms(2, 5), "food", 150_000)[1]
    t.step_clock(-2 * 3600_000)  # RTC battery flat, time jumps back two hours
    after = t.redeem(card, _ms(2, 10), "food", 150_000)[0]
    install(app, world, d)
    upload_all(world, d)
    run(app)

    back = findings(app, FindingKind.CLOCK_BACKWARDS)
    assert len(back) == 1 and back[0].terminal_id == t.terminal_id
    assert evidence(back[0]) == {before.entry.entry_id.hex(), after.entry.entry_id.hex()}
    assert json.loads(back[0].detail)["step_back_s"] == pytest.approx(2 * 3600 - 5 * 60 + 0.9, abs=0.01)
    skew = findings(app, FindingKind.CLOCK_SKEW)
    assert [f.terminal_id for f in skew] == [t.terminal_id]
    # Reported, never a reason to drop: every signed entry is stored and counted.
    with app.app_context():
        n = db.session.scalar(select(func.count()).select_from(JournalEntryRow)
                              .where(JournalEntryRow.terminal_id == t.terminal_id))
    assert n == len(t.entries)
    assert _kinds(app) == {"clock_backwards", "clock_skew"}


def test_rerun_is_idempotent_and_confirmed_clones_feed_the_deny_list(app, audit_db, world):
    d, card = _two_region_district()
    clone = card.clone(counter=2)
    d.terminals[0].redeem(card, _ms(2), "food", 150_000)
    d.terminals[1].redeem(clone, _ms(2, 30), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    first = run(app)
    before = {(f.fingerprint, f.id) for f in findings(app)}
    assert first.new == len(before) > 0
    fork = findings(app, FindingKind.CARD_FORK)[0]
    with app.app_context():
        from server.models import Person

        session = db.write_session()
        admin = session.scalars(select(Person).where(Person.role == PersonRole.ADMIN)).one()
        decide_finding(session, fork.id, admin, FindingStatus.CONFIRMED, "two chips, one UID: seized clone")
        session.commit()
    second = run(app)
    assert second.new == 0 and second.observed == first.observed
    assert {(f.fingerprint, f.id) for f in findings(app)} == before
    assert findings(app, FindingKind.CARD_FORK)[0].status is FindingStatus.CONFIRMED
    with app.app_context():
        candidates = deny_list_candidates(db.session)
        log = db.session.execute(select(func.count()).select_from(AuditLog)
                                 .where(AuditLog.action == "finding.confirmed")).scalar_one()
    assert [c.card_id for c in candidates] == [card.card_id]
    assert candidates[0].tag_uids == (card.tag_uid,) and candidates[0].finding_ids == (fork.id,)
    deny_cards, deny_uids = deny_sets(candidates)  # what the next trust bundle carries
    assert bytes.fromhex(card.card_id) in deny_cards and card.tag_uid in deny_uids and len(deny_cards) == 1
    assert log == 1


def test_decide_requires_a_reason(app, audit_db, world):
    from server.reconcile.errors import InvalidDecision

    d, card = _two_region_district()
    d.terminals[0].redeem(card, _ms(2), "food", 150_000)
    d.terminals[1].redeem(card.clone(), _ms(2, 30), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    fid = findings(app)[0].id
    with app.app_context():
        from server.models import Person

        session = db.write_session()
        admin = session.scalars(select(Person)).first()
        with pytest.raises(InvalidDecision):
            decide_finding(session, fid, admin, FindingStatus.DISMISSED, "   ")
        with pytest.raises(InvalidDecision):
            decide_finding(session, fid, admin, FindingStatus.OPEN, "reopen")


def test_reconcile_is_set_based_sql(app, audit_db, world):
    """The checks run as window-function statements in the database, not row loops in Python."""
    from sqlalchemy import event

    d, card = _two_region_district()
    d.terminals[0].redeem(card, _ms(2), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    statements: list[str] = []
    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", lambda c, cur, s, *a: statements.append(s))
        reconcile(db.write_session())
    sql = "\n".join(statements).lower()
    assert sql.count("lag(") >= 8 and "over (partition by" in sql and "having count(distinct" in sql
    assert len(statements) < 40  # a fixed number of statements, independent of the journal size


def test_bench_smoke_honest_journal_uploads_and_reconciles_clean(tmp_path):
    """bench/bench_reconcile.py at a tiny size: every entry accepted, no findings (keeps the bench honest)."""
    from bench.bench_reconcile import run_one

    out = run_one("sqlite", 400, seed=2)
    assert out["entries"] == out["accepted"] == out["stored"] > 300
    assert out["findings"] == 0 and out["ed25519_floor_s"] > 0 and out["reconcile_s"] > 0


def test_an_edited_column_is_caught_by_re_verification(app, audit_db, world):
    """An operator lowering a stored amount (to hide an overdraft) contradicts the signed bytes."""
    from sqlalchemy import update

    d, card = _two_region_district()
    t = d.terminals[0]
    _, commit = t.redeem(card, _ms(2), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    assert run(app).observed == 0
    with app.app_context():
        session = db.write_session()
        session.execute(update(JournalEntryRow).where(JournalEntryRow.entry_id == commit.entry.entry_id)
                        .values(amount=1000))
        session.commit()
        result = reconcile(db.write_session(), verify_signatures=True)
    assert result.by_kind == {"bad_signature": 1}
    bad = findings(app, FindingKind.BAD_SIGNATURE)[0]
    assert evidence(bad) == {commit.entry.entry_id.hex()} and bad.terminal_id == t.terminal_id
    assert "amount" in bad.summary
    # A plain run (no re-verification) keeps that finding open.
    run(app)
    assert findings(app, FindingKind.BAD_SIGNATURE)[0].status is FindingStatus.OPEN


def test_clock_ahead_of_the_server_is_reported_not_dropped(app, audit_db, world):
    d, card = _two_region_district()
    t = d.terminals[0]
    t.step_clock(int(dt.datetime.now(UTC).timestamp() * 1000) - _ms(0) + 3 * 86400_000)  # 3 days ahead of now
    _, commit = t.redeem(card, _ms(2), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    skew = [f for f in findings(app, FindingKind.CLOCK_SKEW) if json.loads(f.detail).get("ahead_s")]
    assert len(skew) == 1 and skew[0].terminal_id == t.terminal_id
    assert 2.9 * 86400 < json.loads(skew[0].detail)["ahead_s"] < 3.1 * 86400
    assert evidence(skew[0]) <= {e.entry.entry_id.hex() for e in t.entries}


def test_clock_skew_is_reported_for_the_stepped_boot_only(app, audit_db, world):
    """One boot with a stepped clock among clean boots and clean terminals: one clock_skew, its evidence from that boot.

    The skew check aggregates per (terminal, boot) before it picks evidence rows, so the
    terminal's later, clean boot and the other terminals must stay silent.
    """
    d, card = _two_region_district()
    t, other = d.terminals[0], d.terminals[2]
    first = [t.entries[-1]]  # the BOOT entry of boot 1
    first += t.redeem(d.cards[2], _ms(2), "food", 150_000)
    t.step_clock(3600_000)  # an hour ahead, no CLOCK_SET: wall − monotonic moves within boot 1
    first += t.redeem(d.cards[3], _ms(2, 10), "food", 150_000)
    boot1 = t.boot_id
    t.boot(_ms(3))  # boot 2: the offset is constant again (still an hour off, but not moving)
    t.redeem(card, _ms(3, 10), "food", 150_000)
    other.redeem(d.cards[1], _ms(2, 30), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    run(app)

    skew = findings(app, FindingKind.CLOCK_SKEW)
    assert [(f.terminal_id, json.loads(f.detail).get("boot_id")) for f in skew] == [(t.terminal_id, boot1)]
    assert json.loads(skew[0].detail)["spread_s"] == pytest.approx(3600, abs=0.01)
    assert evidence(skew[0]) <= {e.entry.entry_id.hex() for e in first}
    assert _kinds(app) == {"clock_skew"}


def test_entitlement_exceeded_only_for_the_programme_over_its_entitlement(app, audit_db, world):
    """Two cards, two programmes: only the (card, programme) whose running total went over is a finding.

    The check sums per (card, programme, cycle) first and runs the running-sum window
    only for cards with an exceeded group; the evidence and the first entry over must
    be those of the whole journal.
    """
    d, card = _two_region_district()
    t = d.terminals[0]
    _, c1 = t.redeem(card, _ms(2), "food", ENTITLEMENTS["food"] - 1000)
    t.redeem(card, _ms(2, 5), "cash", ENTITLEMENTS["cash"])  # exactly the entitlement: fine
    _, c2 = t.redeem(card, _ms(2, 10), "food", 1000)  # exactly used up
    _, c3 = t.redeem(card, _ms(2, 20), "food", 500)  # over
    t.redeem(d.cards[1], _ms(2, 30), "food", ENTITLEMENTS["food"])
    install(app, world, d)
    upload_all(world, d)
    run(app)

    over = findings(app, FindingKind.ENTITLEMENT_EXCEEDED)
    assert [f.card_id for f in over] == [card.card_id]
    detail = json.loads(over[0].detail)
    assert (detail["programme"], detail["total"]) == ("food", ENTITLEMENTS["food"] + 500)
    assert detail["first_over_entry_id"] == c3.entry.entry_id.hex()
    assert json.loads(over[0].evidence) == [c1.entry.entry_id.hex(), c2.entry.entry_id.hex(),
                                            c3.entry.entry_id.hex()]


def test_counter_falling_twice_is_one_finding_in_time_order(app, audit_db, world):
    """A clone tapped twice between taps of the genuine chip: one counter_backwards finding, two drops.

    The summary names the first drop in time and the evidence lists both drops in time
    order (the order of the window over the chip's taps), whatever order the database
    would pick for rows of one card and UID.
    """
    d, card = _two_region_district()
    t_home, t_far = d.terminals[0], d.terminals[2]  # same town: no travel finding
    for _ in range(10):
        card.session()  # the genuine chip has been read ten times before
    clone = card.clone(counter=3)
    g1 = t_home.balance(card, _ms(2))
    first_from = card.ntag_counter  # at least 11
    c1 = t_far.balance(clone, _ms(2, 30))  # counter 4: first drop
    g2 = t_home.balance(card, _ms(3))
    c2 = t_far.balance(clone, _ms(3, 30))  # counter 5: second drop
    install(app, world, d)
    upload_all(world, d)
    run(app)

    ctr = findings(app, FindingKind.COUNTER_BACKWARDS)
    assert len(ctr) == 1 and json.loads(ctr[0].detail)["drops"] == 2
    assert f"fell from {first_from} to 4 " in ctr[0].summary
    assert json.loads(ctr[0].evidence) == [e.entry.entry_id.hex() for e in (g1, c1, g2, c2)]
