"""Revocation that does not exclude, on the `secure` (Type 4) card (issue 20; docs/security.md).

As on NTAG: a card whose state a terminal key wrote before that key's revocation is served,
under the stale floor of every cap, and the tap replaces the state with this counter's; a
state signed at or after the revocation is declined ``revoked_key``. Through the virtual
secure card, in-process (its genesis state is signed by the station key, a terminal-role key).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cardlib.keys.signer import cose_key
from cardlib.records.bundle import KeyState
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.secure_card import SecureCard, SecureCardConnection
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.secure_tap_support import CARD_KEYS, issue_secure, trust_bundle
from tests.test_records_support import STATION, TERMINAL


def _station_revoked(at: int | None) -> object:
    b = trust_bundle()
    if at is None:
        return b
    kid = cose_key(STATION).kid
    keys = tuple(dataclasses.replace(k, status=KeyState.REVOKED, status_time=at) if k.kid == kid else k
                 for k in b.keys)  # type: ignore[attr-defined]
    return dataclasses.replace(b, keys=keys)  # type: ignore[type-var]


def _counter(tmp: Path, b: object, request: list[object], limits: OfflineLimits | None = None) -> TapProcessor:
    tmp.mkdir(exist_ok=True)
    journal = JournalStore(tmp / "journal.sqlite", terminal_id="T-6271-0002", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    return TapProcessor(CounterConfig("T-6271-0002", CounterMode.CLINIC_VISIT, limits or OfflineLimits(),
                                      caps={"": ACR122U}, card_passwords=CARD_KEYS), journal, TERMINAL,
                        trust=lambda: Trust(b, time.time()),  # type: ignore[arg-type]
                        request=lambda: tuple(request))  # type: ignore[arg-type, return-value]


def _tap(p: TapProcessor, card: SecureCard) -> TapOutcome:
    try:
        return p(SecureCardConnection(card), None)  # type: ignore[arg-type]
    finally:
        card.field_off()


def test_state_written_before_revocation_is_served_and_replaced(tmp_path: Path) -> None:
    card, _ = issue_secure()  # genesis state signed by the station key 60 s ago
    p = _counter(tmp_path, _station_revoked(int(time.time()) - 30), ["health", 1, None])
    out = _tap(p, card)
    assert out.status is TapStatus.ACCEPTED, out
    assert _tap(p, card).status is TapStatus.ACCEPTED  # the card now carries this counter's state
    assert [e.entry.kind for e in p.journal.entries()][1:] == [EntryKind.PENDING, EntryKind.COMMIT] * 2
    p.journal.close()


def test_state_written_after_revocation_is_declined(tmp_path: Path) -> None:
    card, issued = issue_secure()
    p = _counter(tmp_path, _station_revoked(int(time.time()) - 300), ["health", 1, None])
    out = _tap(p, card)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.REVOKED_KEY, out
    last = p.journal.entries()[-1].entry
    assert (last.kind, last.card_id, last.decline_reason) == (EntryKind.DECLINED, issued.card_id.hex(), "revoked_key")
    p.journal.close()


def test_revoked_state_is_served_at_the_floor_only(tmp_path: Path) -> None:
    caps = OfflineLimits(per_tap={Unit.VISIT: 4})
    card, _ = issue_secure()
    fresh = _counter(tmp_path / "a", _station_revoked(None), ["health", 2, None], caps)
    assert _tap(fresh, card).status is TapStatus.ACCEPTED  # 2 visits within a per-tap cap of 4
    fresh.journal.close()
    card, _ = issue_secure()
    p = _counter(tmp_path / "b", _station_revoked(int(time.time()) - 30), ["health", 2, None], caps)
    out = _tap(p, card)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.OVER_TAP_LIMIT, out  # floor of 4 = 1
    p.journal.close()
