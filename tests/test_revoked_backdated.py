"""A stolen terminal key must not gain from "revocation that does not exclude" (issue 20; docs/security.md).

The thief signs a state with the revoked key and a time before the revocation R. The NTAG card
keeps the state it was written on in its other slot: when that predecessor was written at or
after R (or later than the thief's claimed time), the thief's state was written after R whatever
its time says, and the counter declines it ``revoked_key``.
"""

from __future__ import annotations

import time
from pathlib import Path

from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.chip import Ntag21x
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.test_records_support import STATION, TERMINAL
from tests.test_terminal_caps_and_declines import chip, fresh_bundle, revoked_station


def _processor(tmp: Path, name: str, signer: object, bundle: object, clock: float | None = None) -> TapProcessor:
    tmp.mkdir()
    journal = JournalStore(tmp / "journal.sqlite", terminal_id=name, signer=signer,  # type: ignore[arg-type]
                           clock=Clock(force_synced=True))
    return TapProcessor(
        CounterConfig(name, CounterMode.MARKET_REDEMPTION, OfflineLimits(), caps={"": ACR122U}), journal,
        signer, trust=lambda: Trust(bundle, time.time()),  # type: ignore[arg-type]
        request=lambda: ("food", 1, None),  # type: ignore[arg-type, return-value]
        clock=(lambda: clock) if clock is not None else time.time,
    )


def _present(p: TapProcessor, card: Ntag21x) -> TapOutcome:
    return p(EmulatorConnection(ReaderEmulator(card, ReaderKind.ACR122U)), None)  # type: ignore[arg-type]


def test_state_backdated_by_the_stolen_key_is_declined(tmp_path: Path) -> None:
    now = int(time.time())
    revoked_at = now - 300
    card = chip(at=now - 600)  # genesis by the station key, before its revocation
    good = _processor(tmp_path / "good", "T-6271-0001", TERMINAL, revoked_station(revoked_at))
    assert _present(good, card).status is TapStatus.ACCEPTED  # served at the floor; now this counter's state
    # The thief holds the station key and a bundle of before the revocation; his clock says R - 100 s.
    thief = _processor(tmp_path / "thief", "T-THIEF", STATION, fresh_bundle(), clock=revoked_at - 100)
    assert _present(thief, card).status is TapStatus.ACCEPTED  # signed "before R", on a state written after R
    other = _processor(tmp_path / "other", "T-6271-0003", TERMINAL, revoked_station(revoked_at))
    out = _present(other, card)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.REVOKED_KEY, out
    assert _present(good, card).reason is DeclineReason.REVOKED_KEY
    for p in (good, thief, other):
        p.journal.close()


def test_a_clock_behind_before_the_revocation_is_not_a_backdating(tmp_path: Path) -> None:
    """A predecessor newer than the state but still before R proves a wrong clock, not a write after R."""
    now = int(time.time())
    revoked_at = now - 300
    card = chip(at=now - 600)
    early = _processor(tmp_path / "early", "T-6271-0001", TERMINAL, revoked_station(revoked_at), clock=now - 400)
    assert _present(early, card).status is TapStatus.ACCEPTED  # its state: now - 400, before R
    station = _processor(tmp_path / "station", "T-STATION", STATION, fresh_bundle(), clock=now - 450)
    assert _present(station, card).status is TapStatus.ACCEPTED  # before R, its clock 50 s behind
    other = _processor(tmp_path / "other", "T-6271-0003", TERMINAL, revoked_station(revoked_at))
    out = _present(other, card)
    assert out.status is TapStatus.ACCEPTED, out  # served at the floor, as any state of before R
    for p in (early, station, other):
        p.journal.close()
