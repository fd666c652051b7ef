"""The fallback desk passes every cap a card tap passes (terminal/fallback.py ``_over_caps``, docs/fallback.md):
the per-tap cap and the card's units since the last confirmed upload, besides the per-cycle and terminal caps;
and a PIN programme is never served by the manual step either (a supervisor cannot stand in for the PIN)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlib.records.bundle import Programme
from cardlib.records.claims import Unit
from firmware_config.models import CounterMode
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from tests.test_records_support import TERMINAL, bundle

CARD = "6271000000004321"
PASSWORD = "kunci-sri-77"
PROGRAMMES = (Programme(1, "pangan", "package", 8), Programme(2, "tunai", "rupiah", 250_000))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[JournalStore]:
    j = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-FB-CAPS", signer=TERMINAL,
                     clock=Clock(force_synced=True))
    yield j
    j.close()


def _desk(journal: JournalStore, mode: CounterMode, policies: dict[str, int],
          limits: OfflineLimits | None = None) -> FallbackDesk:
    now = int(time.time())
    b = dataclasses.replace(bundle(), issued_at=now - 60, expires_at=now + 86400, programmes=PROGRAMMES,
                            policies=policies)
    return FallbackDesk(journal, lambda: b, mode, {"sri": supervisor_hash(PASSWORD)}, limits=limits)


def test_the_per_tap_cap_holds_at_the_fallback_desk(journal: JournalStore) -> None:
    desk = _desk(journal, CounterMode.MARKET_REDEMPTION, {"fallback.manual.pangan": 8, "cap.per_tap.package": 2})
    assert desk.manual(CARD, "pangan", 3, "sri", PASSWORD).reason is DeclineReason.OVER_TAP_LIMIT
    assert desk.manual(CARD, "pangan", 2, "sri", PASSWORD).status is TapStatus.ACCEPTED


def test_the_card_cap_since_the_last_upload_holds_at_the_fallback_desk(journal: JournalStore) -> None:
    desk = _desk(journal, CounterMode.CASH_PAYOUT, {"fallback.manual.tunai": 250_000},
                 OfflineLimits(per_card_since_sync={Unit.RUPIAH: 100_000}))
    assert desk.manual(CARD, "tunai", 100_000, "sri", PASSWORD).status is TapStatus.ACCEPTED
    out = desk.manual(CARD, "tunai", 50_000, "sri", PASSWORD)
    assert out.reason is DeclineReason.OVER_CARD_OFFLINE_LIMIT and "since the last upload" in (out.detail or "")


def test_a_supervisor_cannot_stand_in_for_the_card_pin(journal: JournalStore) -> None:
    desk = _desk(journal, CounterMode.CASH_PAYOUT, {"pin.tunai": 1, "fallback.manual.tunai": 250_000})
    out = desk.manual(CARD, "tunai", 250_000, "sri", PASSWORD)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.PIN_REQUIRED_NO_FALLBACK
    assert journal.exposure() == {}
    assert [s.entry.decline_reason for s in journal.entries() if s.entry.decline_reason] == [
        "pin_required_no_fallback"]
