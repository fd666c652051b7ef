"""Fallback caps tighten with the bundle's age like a card tap's (issue 20; docs/fallback.md).

The counter's caps on a QR or supervisor entry are the card tap's caps, shrunk by the same
:meth:`terminal.policy.OfflineLimits.tightened` for the age of the trust bundle (days since it
was last confirmed current): a counter that has not synced for a month serves a fallback at the
stale floor, as it serves a card.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cardlib.records.bundle import Programme
from firmware_config.models import CounterMode
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import SECONDS_PER_DAY, DeclineReason
from terminal.tap import Trust
from tests.test_records_support import TERMINAL, bundle

CARD = "6271000000001234"
POLICIES = {"fallback.manual.pangan": 8, "cap.per_card_cycle.package": 8, "cap.terminal_exposure.package": 100,
            "fallback.manual.tunai": 250_000}
PROGRAMMES = (Programme(1, "pangan", "package", 8), Programme(2, "tunai", "rupiah", 250_000))
PASSWORD = "kunci-sri-77"
SUPERVISORS = {"sri": supervisor_hash(PASSWORD)}


def _desk(tmp: Path, age_days: float, *, expired: bool = False,
          mode: CounterMode = CounterMode.MARKET_REDEMPTION) -> FallbackDesk:
    tmp.mkdir()
    journal = JournalStore(tmp / "journal.sqlite", terminal_id="T-FB-2", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    now = time.time()
    b = dataclasses.replace(bundle(), issued_at=int(now) - 60, expires_at=int(now) + 86400,
                            programmes=PROGRAMMES, policies=POLICIES)
    trust = Trust(b, now - age_days * SECONDS_PER_DAY, expired=expired)
    return FallbackDesk(journal, lambda: trust, mode, SUPERVISORS)


def test_a_fresh_bundle_serves_the_full_cap(tmp_path: Path) -> None:
    out = _desk(tmp_path / "d", 0).manual(CARD, "pangan", 4, "sri", PASSWORD)
    assert out.status is TapStatus.ACCEPTED, out


def test_an_old_bundle_serves_a_fallback_at_the_stale_floor(tmp_path: Path) -> None:
    desk = _desk(tmp_path / "d", 40)  # past stale_days (30): every cap at a quarter
    out = desk.manual(CARD, "pangan", 4, "sri", PASSWORD)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.OVER_CARD_CYCLE_LIMIT, out
    assert "card cap 2 per cycle" in out.detail
    assert desk.manual(CARD, "pangan", 2, "sri", PASSWORD).status is TapStatus.ACCEPTED


def test_halfway_to_stale_the_cap_is_between(tmp_path: Path) -> None:
    desk = _desk(tmp_path / "d", 18)  # about halfway from fresh_days 7 to stale_days 30: 0.64 of 8 = 5
    assert desk.manual(CARD, "pangan", 6, "sri", PASSWORD).reason is DeclineReason.OVER_CARD_CYCLE_LIMIT
    assert desk.manual(CARD, "pangan", 5, "sri", PASSWORD).status is TapStatus.ACCEPTED


def test_an_expired_bundle_pays_no_cash_and_serves_at_the_floor(tmp_path: Path) -> None:
    cash = _desk(tmp_path / "c", 0, expired=True, mode=CounterMode.CASH_PAYOUT)
    assert cash.manual(CARD, "tunai", 1000, "sri", PASSWORD).reason is DeclineReason.BUNDLE_EXPIRED
    desk = _desk(tmp_path / "d", 0, expired=True)
    assert desk.manual(CARD, "pangan", 4, "sri", PASSWORD).reason is DeclineReason.OVER_CARD_CYCLE_LIMIT
