"""Issue 20: caps that bound in every unit, revocation that does not exclude, every decline says why.

In-process (no pcscd): each tap runs the daemon's real :class:`terminal.tap.TapProcessor`
with a real journal on :class:`simulator.reader.ReaderEmulator` and an issued NTAG215.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from cardlib.keys.signer import cose_key
from cardlib.records.bundle import KeyState
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.claims import Entitlement, Unit
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from cardlib.records.layout import parse_image
from cardlib.transport.errors import CardRemoved, SessionLost
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.chip import Ntag21x
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.journal_store import CardWrite, JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits, cycle_at, decline_message
from terminal.screen.i18n import translations
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.fixtures.receipts import SERVER, upload_all
from tests.test_records_support import (
    CASH,
    CLINIC,
    FOOD,
    ISSUER,
    ROGUE,
    STATION,
    TERMINAL,
    UID,
    ChipTag,
    bundle,
    chip_with,
    identity,
)

DAY = 86_400
PROGRAMMES = (
    BundleProgramme(1, "food", "package", 10, 182),
    BundleProgramme(2, "cash", "rupiah", 250_000, 182),
    BundleProgramme(3, "health", "visit", 10, 182),
)
CARD_ID = identity().card_id
ROOMY = {FOOD: Entitlement(Unit.PACKAGE, 10), CASH: Entitlement(Unit.RUPIAH, 250_000),
         CLINIC: Entitlement(Unit.VISIT, 10)}
#: An issuer cap as large as the entitlement: only the terminal's caps bind.
NO_ISSUER_CAP = {FOOD: 10, CASH: 250_000, CLINIC: 10}


def fresh_bundle(policies: dict[str, int] | None = None, **changes: object) -> object:
    now = int(time.time())
    return dataclasses.replace(bundle(), programmes=PROGRAMMES, policies=policies or {}, issued_at=now - 60,
                               expires_at=now + 30 * DAY, **changes)


def chip(*, uid: bytes = UID, issuer: object = ISSUER, station: object = STATION, at: int | None = None,
         cycle: int | None = None, **overrides: object) -> Ntag21x:
    now = int(time.time()) if at is None else at
    fields = {"programmes": ROOMY, "offline_cap": NO_ISSUER_CAP, **overrides}
    card = issue_card_image(identity(uid, **fields), issuer, station,  # type: ignore[arg-type]
                            cycle=cycle_at(time.time()) if cycle is None else cycle, now=now)
    return chip_with(card.image, uid)


class Counter:
    """One counter: its journal, its request and the trust it holds."""

    def __init__(self, tmp: Path, mode: CounterMode, programme: str, *, trust_bundle: object,
                 limits: OfflineLimits | None = None, clock: float | None = None, expired: bool = False) -> None:
        self.journal = JournalStore(tmp / "journal.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                                    clock=Clock(force_synced=True), receipt_key=SERVER.public_key)
        self.request: list[object] = [programme, 1, None]
        self.bundle = trust_bundle
        self.tap = TapProcessor(
            CounterConfig("T-6271-0001", mode, limits or OfflineLimits(), caps={"": ACR122U}), self.journal,
            TERMINAL, trust=lambda: Trust(self.bundle, time.time(), expired=expired),  # type: ignore[arg-type]
            request=lambda: tuple(self.request),  # type: ignore[arg-type, return-value]
            clock=(lambda: clock) if clock is not None else time.time,
        )

    def present(self, card: Ntag21x, qty: int = 1) -> TapOutcome:
        self.request[1] = qty
        return self.tap(EmulatorConnection(ReaderEmulator(card, ReaderKind.ACR122U)), None)  # type: ignore[arg-type]

    def upload_confirmed(self) -> None:
        """What a signed upload receipt does (terminal.sync): every entry marked uploaded."""
        upload_all(self.journal)

    def last_declined(self) -> tuple[str | None, str | None]:
        e = [s.entry for s in self.journal.entries() if s.entry.kind is EntryKind.DECLINED][-1]
        return e.card_id, e.decline_reason


@pytest.fixture
def counter(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Counter] = []

    def make(*args: object, **kw: object) -> Counter:
        c = Counter(tmp_path / str(len(made)), *args, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    for i in range(4):
        (tmp_path / str(i)).mkdir()
    yield make
    for c in made:
        c.journal.close()


# ---------------------------------------------------------------- 1. caps in every unit


def test_package_cap_per_card_per_cycle_holds_across_uploads(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle({"cap.per_card_cycle.package": 2}))
    card = chip()
    assert c.present(card).status is TapStatus.ACCEPTED
    c.upload_confirmed()
    assert c.present(card).status is TapStatus.ACCEPTED
    c.upload_confirmed()  # an upload does not give the card a new allowance this cycle
    third = c.present(card)
    assert third.reason is DeclineReason.OVER_CARD_CYCLE_LIMIT, third


def test_visit_terminal_exposure_resets_only_on_a_confirmed_upload(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.CLINIC_VISIT, "health", trust_bundle=fresh_bundle({"cap.terminal_exposure.visit": 2}))
    card = chip()
    assert [c.present(card).status for _ in range(2)] == [TapStatus.ACCEPTED] * 2
    assert c.present(card).reason is DeclineReason.OVER_TERMINAL_LIMIT
    c.upload_confirmed()
    assert c.present(card).status is TapStatus.ACCEPTED


def test_visit_per_tap_cap_from_the_bundle(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.CLINIC_VISIT, "health", trust_bundle=fresh_bundle({"cap.per_tap.visit": 1}))
    assert c.present(chip(), qty=2).reason is DeclineReason.OVER_TAP_LIMIT


def test_profile_only_tightens_the_bundle(counter) -> None:  # type: ignore[no-untyped-def]
    loose = OfflineLimits(per_tap={Unit.PACKAGE: 9})
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle({"cap.per_tap.package": 1}),
                limits=loose)
    assert c.present(chip(), qty=2).reason is DeclineReason.OVER_TAP_LIMIT  # the bundle's 1 holds
    tight = OfflineLimits(per_tap={Unit.PACKAGE: 1})
    c2 = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle({"cap.per_tap.package": 5}),
                 limits=tight)
    assert c2.present(chip(), qty=2).reason is DeclineReason.OVER_TAP_LIMIT  # the profile's 1 holds


def test_issuer_cap_is_per_cycle_and_tightens_with_the_bundles_age(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle())
    card = chip(offline_cap={FOOD: 2, CASH: 250_000, CLINIC: 10})
    assert c.present(card, qty=2).status is TapStatus.ACCEPTED
    c.upload_confirmed()
    assert c.present(card).reason is DeclineReason.OVER_CARD_CYCLE_LIMIT
    old = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle())
    old.tap._trust = lambda: Trust(old.bundle, time.time() - 40 * DAY)  # type: ignore[arg-type, assignment]
    # 40 days without a confirmed bundle: the issuer's 4 shrinks to its floor (1).
    assert old.present(chip(offline_cap={FOOD: 4, CASH: 250_000, CLINIC: 10}), qty=2).reason \
        is DeclineReason.OVER_CARD_CYCLE_LIMIT


# ---------------------------------------------------------------- 2. revocation that does not exclude


def revoked_station(at: int) -> object:
    """A bundle in which the provisioning station's (terminal-role) key was revoked at ``at``."""
    b = fresh_bundle()
    kid = cose_key(STATION).kid
    keys = tuple(dataclasses.replace(k, status=KeyState.REVOKED, status_time=at) if k.kid == kid else k
                 for k in b.keys)  # type: ignore[attr-defined]
    return dataclasses.replace(b, keys=keys)  # type: ignore[type-var]


def test_state_written_before_revocation_is_served_and_replaced(counter) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=revoked_station(now - 30))
    card = chip(at=now - 120)  # its genesis state was signed 90 s before the revocation
    out = c.present(card)
    assert out.status is TapStatus.ACCEPTED, out
    assert c.present(card).status is TapStatus.ACCEPTED  # now the card carries this counter's state


def test_state_written_after_revocation_is_declined_with_its_own_reason(counter) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=revoked_station(now - 300))
    out = c.present(chip(at=now - 60))  # signed by the revoked key after its revocation
    assert out.reason is DeclineReason.REVOKED_KEY
    assert c.last_declined() == (CARD_ID.hex(), "revoked_key")


def test_revoked_state_is_served_at_the_floor_only(counter) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=revoked_station(now - 30),
                limits=OfflineLimits(per_tap={Unit.PACKAGE: 4}))
    assert c.present(chip(at=now - 120), qty=2).reason is DeclineReason.OVER_TAP_LIMIT  # floor of 4 = 1


# ---------------------------------------------------------------- 3. every decline says why


def garbled_slots() -> Ntag21x:
    """A genuine card whose two state slots are noise (the identity stays)."""
    image = bytearray(issue_card_image(identity(UID, programmes=ROOMY, offline_cap=NO_ISSUER_CAP), ISSUER, STATION,
                                       cycle=cycle_at(time.time()), now=int(time.time())).image)
    for region in parse_image(bytes(image)).slots.values():
        start = (region.first_page - 4) * 4
        image[start:start + len(region.raw)] = b"\xa5\x5a" * (len(region.raw) // 2)
    return chip_with(bytes(image), UID)


@pytest.mark.parametrize("case", ["unknown_issuer", "state_from_another_card", "card_state_invalid",
                                  "future_cycle", "card_denied"])
def test_each_cause_has_its_code_text_and_card_id(counter, case: str) -> None:  # type: ignore[no-untyped-def]
    b = fresh_bundle(deny_cards=bundle(deny_cards=(CARD_ID,)).deny_cards) if case == "card_denied" else fresh_bundle()
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=b)
    if case == "unknown_issuer":
        card = chip(issuer=ROGUE)
    elif case == "state_from_another_card":
        other = bytes.fromhex("04a1b2c3d4e5f7")
        genuine = issue_card_image(identity(UID, programmes=ROOMY, offline_cap=NO_ISSUER_CAP), ISSUER, STATION,
                                   cycle=cycle_at(time.time()), now=int(time.time()))
        card = chip_with(genuine.image, other)  # the whole image copied onto another chip
    elif case == "card_state_invalid":
        card = garbled_slots()
    elif case == "future_cycle":
        card = chip(cycle=cycle_at(time.time()) + 10)  # written by a counter a year ahead
    else:
        card = chip()
    out = c.present(card)
    reason = DeclineReason(case)
    assert out.status is TapStatus.DECLINED and out.reason is reason, out
    assert c.last_declined() == (CARD_ID.hex(), case)  # the auditor sees which card tried
    assert translations("id").gettext(decline_message(reason)) != decline_message(reason)
    assert translations("en").gettext(decline_message(reason)) == decline_message(reason)


def test_a_counter_with_a_wrong_clock_writes_nothing_but_shows_balances(counter) -> None:  # type: ignore[no-untyped-def]
    stale = fresh_bundle()
    ahead = time.time() + 400 * DAY  # far past its bundle's time in force plus the stale age
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=stale, clock=ahead)
    card = chip(valid_to=identity().valid_to)
    out = c.present(card)
    assert out.reason is DeclineReason.COUNTER_CLOCK_WRONG, out
    assert c.last_declined() == (CARD_ID.hex(), "counter_clock_wrong")
    c.tap.cfg.mode = CounterMode.BALANCE_CHECK
    assert c.present(card).status is TapStatus.BALANCE


def test_expired_bundle_stops_cash_with_its_reason(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.CASH_PAYOUT, "cash", trust_bundle=fresh_bundle(), expired=True)
    c.request[2] = "246810"
    c.request[1] = 1000
    out = c.tap(EmulatorConnection(ReaderEmulator(chip(), ReaderKind.ACR122U)), None)  # type: ignore[arg-type]
    assert out.reason is DeclineReason.BUNDLE_EXPIRED
    assert c.last_declined() == (CARD_ID.hex(), "bundle_expired")


# ---------------------------------------------------------------- 5. deferred torn writes


def test_an_old_unsettled_write_stops_pinning_the_counters_exposure(tmp_path: Path) -> None:
    class PastClock(Clock):
        def now(self):  # type: ignore[no-untyped-def]
            stamp = super().now()
            return dataclasses.replace(stamp, wall=stamp.wall - 40 * DAY)

    path = tmp_path / "journal.sqlite"
    j = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL, clock=PastClock(force_synced=True))
    j.append(EntryKind.PENDING, lambda seq: (CardWrite(card_id=CARD_ID.hex(), programme="food", unit=Unit.PACKAGE,
                                                       amount=3, slot_seq_before=1, slot_seq_after=2), b"x"))
    j.close()
    j = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL, clock=Clock(force_synced=True))
    try:  # reopened: the interrupted write is UNCERTAIN, still open
        assert j.exposure() == {Unit.PACKAGE: 3}
        cutoff = time.time() - 30 * DAY
        assert j.exposure(open_since=cutoff) == {}
        assert [w.entry.card_id for w in j.aged_open_writes(cutoff)] == [CARD_ID.hex()]
    finally:
        j.close()


# ---------------------------------------------------------------- 4. card calls that cannot hang a reader


class HangingConnection(EmulatorConnection):
    """A reader whose card stops answering after ``answers`` commands: the call blocks until the handle is closed."""

    def __init__(self, emulator: ReaderEmulator, answers: int) -> None:
        super().__init__(emulator)
        self.answers = answers
        self.closed = threading.Event()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if self.answers <= 0:
            self.closed.wait(30)
            raise CardRemoved("handle closed under a blocked call")
        self.answers -= 1
        return super().send_and_receive(apdu)

    def close(self) -> None:
        self.closed.set()


@pytest.mark.parametrize("answers", [1, 6])
def test_a_mute_card_frees_its_reader_within_the_tap_budget(counter, answers: int) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle())
    c.tap.cfg.per_call_s, c.tap.cfg.tap_budget_s = 0.3, 2.0
    conn = HangingConnection(ReaderEmulator(chip(), ReaderKind.ACR122U), answers)
    start = time.monotonic()
    try:
        out: TapOutcome | None = c.tap(conn, None)  # type: ignore[arg-type]
    except SessionLost:
        out = None  # before anything was journalled for the card: the supervisor retries
    assert time.monotonic() - start < 2.0
    assert conn.closed.is_set()  # the card handle was ended, not left to the card's lifting
    if out is not None:  # a write was under way: its outcome is unknown, resolved on the next tap
        assert out.status in (TapStatus.UNCERTAIN, TapStatus.RETRY), out


class LostAckTag(ChipTag):
    """The chip programs the last page of the write, then its ACK is lost (a reader error)."""

    writes: int = 0

    def write_pages(self, first: int, data: bytes) -> None:
        self.writes += len(data) // 4
        super().write_pages(first, data)
        raise SessionLost("reader error after WRITE")


def test_a_reader_error_after_a_write_is_read_back_never_resent() -> None:
    from cardlib.records.session import CardSession, WriteOutcome

    tag = LostAckTag(chip())
    session = CardSession(tag, fresh_bundle())  # type: ignore[arg-type]
    state = session.read_state(int(time.time()))
    pending = session.prepare_redemption(state, signer=TERMINAL, cycle=cycle_at(time.time()), amounts={FOOD: 1},
                                         terminal_id=1, terminal_seq=1, now=int(time.time()))
    result = session.commit(pending)
    sent = tag.writes
    # The whole (empty) target slot is one run; its last ACK was lost: the slot is read, not written again.
    assert session.read_image().slots[pending.slot].raw == pending.region
    assert result.outcome is WriteOutcome.COMMITTED, result
    assert tag.writes == sent
