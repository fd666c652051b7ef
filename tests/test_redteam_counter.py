"""Red team (issue: attack what was built): a holder, a cloner and a dishonest clerk at one counter.

In-process, like tests/test_terminal_caps_and_declines.py: the daemon's real
:class:`terminal.tap.TapProcessor` and :class:`terminal.fallback.FallbackDesk` over a real journal,
cards issued onto :class:`simulator.chip.Ntag21x` (format 1 images). Each test asserts the
DEFENCE; an attack that works is kept as ``xfail(strict=True)`` with what it gains.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from cardlib.provision.qr import household_qr
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from firmware_config.models import CounterMode
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalInUse, JournalStore
from terminal.outcome import TapStatus
from terminal.policy import cycle_at
from tests.test_records_support import ISSUER, STATION, TERMINAL, identity
from tests.test_terminal_caps_and_declines import NO_ISSUER_CAP, ROOMY, Counter, chip, fresh_bundle

SUPERVISOR_PW = "kunci-sri-77"


@pytest.fixture
def counter(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Makes counters (as in tests/test_terminal_caps_and_declines.py), each with its own journal."""
    made: list[Counter] = []

    def make(*args: object, **kw: object) -> Counter:
        d = tmp_path / str(len(made))
        d.mkdir()
        c = Counter(d, *args, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.journal.close()


def _desk(c, policies: dict[str, int]) -> FallbackDesk:  # type: ignore[no-untyped-def]
    return FallbackDesk(c.journal, lambda: c.bundle, CounterMode.MARKET_REDEMPTION,
                        {"sri": supervisor_hash(SUPERVISOR_PW)})


def _qr() -> str:
    now = int(time.time())
    issued = issue_card_image(identity(programmes=ROOMY, offline_cap=NO_ISSUER_CAP), ISSUER, STATION,
                              cycle=cycle_at(time.time()), now=now)
    return household_qr(issued.identity_cose, ISSUER, now)


# ---------------------------------------------------------------- holder / cloner: a restored state


def test_same_counter_refuses_a_card_restored_to_a_state_it_already_replaced(counter) -> None:  # type: ignore[no-untyped-def]
    """Holder (format 1) or cloner with a pre-redemption dump, back at the counter that wrote the newer state.

    The counter's journal says it committed seq 1 for this card; the card (or its exact clone)
    shows the genesis state again. The counter must not pay on the older state.
    """
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle())
    card = chip()
    dump = copy.deepcopy(card)  # Flipper dump before the redemption, onto a magic chip with the UID
    first = c.present(card)
    assert first.status is TapStatus.ACCEPTED, first
    again = c.present(dump)
    assert again.status is not TapStatus.ACCEPTED, f"restored state paid again: {again}"


def test_clone_served_at_a_second_counter_is_bounded_by_the_card_cycle_cap(counter) -> None:  # type: ignore[no-untyped-def]
    """A dump at two counters (documented: detected later, bounded by per-counter caps): each counter pays once."""
    policies = {"cap.per_card_cycle.package": 1}
    a = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle(policies))
    b = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle(policies))
    card = chip()
    clone = copy.deepcopy(card)
    assert a.present(card).status is TapStatus.ACCEPTED
    assert b.present(clone).status is TapStatus.ACCEPTED  # the documented residual: one per counter
    assert a.present(card).status is not TapStatus.ACCEPTED
    assert b.present(clone).status is not TapStatus.ACCEPTED


def test_a_clerk_cannot_enter_a_quantity_below_one(counter) -> None:  # type: ignore[no-untyped-def]
    """Negative or zero quantities typed at the counter must not *raise* the card's balance."""
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle())
    card = chip()
    for qty in (0, -3):
        out = c.present(card, qty=qty)
        assert out.status is not TapStatus.ACCEPTED, out
    assert c.present(card, qty=10).status is TapStatus.ACCEPTED  # the whole entitlement, once
    assert c.present(card, qty=1).status is not TapStatus.ACCEPTED


# ---------------------------------------------------------------- dishonest clerk: the fallback ladder


def test_manual_fallback_with_invented_card_ids_is_bounded_by_the_terminal_exposure(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.MARKET_REDEMPTION, "food",
                trust_bundle=fresh_bundle({"fallback.manual.food": 1, "cap.terminal_exposure.package": 3}))
    desk = _desk(c, {})
    served = 0
    for n in range(10):
        out = desk.manual(f"62710000{n:08x}", "food", 1, "sri", SUPERVISOR_PW)
        served += out.status is TapStatus.ACCEPTED
    assert served <= 3, f"{served} packages handed out on invented card ids past a terminal exposure of 3"


def test_qr_fallback_and_card_tap_share_the_cards_cycle_cap_at_one_counter(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.MARKET_REDEMPTION, "food",
                trust_bundle=fresh_bundle({"fallback.qr.food": 1, "fallback.manual.food": 1,
                                           "cap.per_card_cycle.package": 1}))
    desk = _desk(c, {})
    got = 0
    got += desk.qr(_qr(), "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
    got += desk.manual(identity().card_id.hex(), "food", 1, "sri", SUPERVISOR_PW).status is TapStatus.ACCEPTED
    got += c.present(chip()).status is TapStatus.ACCEPTED
    assert got <= 1, f"{got} packages for one card in one cycle at one counter (cap 1)"


def test_fallback_refuses_quantities_below_one_and_unknown_supervisors(counter) -> None:  # type: ignore[no-untyped-def]
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle({"fallback.manual.food": 1}))
    desk = _desk(c, {})
    card = identity().card_id.hex()
    assert desk.manual(card, "food", -5, "sri", SUPERVISOR_PW).status is TapStatus.DECLINED
    assert desk.manual(card, "food", 1, "sri", "wrong").status is TapStatus.DECLINED
    assert desk.manual(card, "food", 1, "budi", SUPERVISOR_PW).status is TapStatus.DECLINED
    assert desk.manual(card, "food", 1, "sri", SUPERVISOR_PW).status is TapStatus.ACCEPTED
    assert desk.manual(card, "food", 1, "sri", SUPERVISOR_PW).status is TapStatus.DECLINED
    kinds = [s.entry.kind for s in c.journal.entries()]
    assert kinds.count(EntryKind.DECLINED) == 4 and kinds.count(EntryKind.FALLBACK) == 1


# ---------------------------------------------------------------- insider with root: a second daemon


def test_second_daemon_is_refused_even_after_the_lock_file_is_unlinked(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    first = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL)
    try:
        Path(str(path) + ".lock").unlink()
        with pytest.raises(JournalInUse):
            second = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL)
            second.close()
    finally:
        first.close()
