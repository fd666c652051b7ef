"""A counter whose clock jumped ahead recovers at its next sync (docs/security.md §Caps, clocks and unsettled writes).

An RTC or NTP glitch ahead, within the bundle's plausible window, raises the never-lowered time
mark and the journal's newest wall time; once the clock is put right every tap is
``counter_clock_wrong`` until real time catches up. The server's time in a freshness statement
that verifies under the pinned server key and answers the counter's own nonce puts both right
(:meth:`terminal.trust.TrustStore.set_server_time`); a forged or replayed statement does not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from cardlib.records.statements import FRESHNESS_HEADER, sign_freshness
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from terminal.errors import SyncError
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.sync import HttpApi, SyncClient
from terminal.tap import CLOCK_BACK_TOLERANCE_S, CounterConfig, TapProcessor, Trust
from terminal.trust import TrustStore
from tests.test_counter_clock_floor import SetClock, _present
from tests.test_records_support import ISSUER, STATION, TERMINAL
from tests.test_sync_authenticity import PINNED, FakeServer
from tests.test_terminal_caps_and_declines import PROGRAMMES, chip, fresh_bundle
from tests.test_terminal_support import TrustKit, enrol_terminal, new_signer, publish_bundle

DAY = 86_400
TID = "T-6271-0001"


def _card(n: int) -> Any:
    """Household ``n``'s fresh card (each tap here a different household: a card is served once)."""
    return chip(uid=bytes.fromhex("04a1b2c3d4e5") + bytes([n]), card_id=bytes.fromhex("62710000000020") + bytes([n]))


class GlitchCounter:
    """A cash counter (trust store, journal, taps, sync client) whose clock the test sets."""

    def __init__(self, tmp: Path, url: str, receipt_key: Any, kit: TrustKit | None = None) -> None:
        self.t0 = time.time()
        self.offset = 0.0
        self.kit = kit or TrustKit()
        _b, self.data = self.kit.bundle(1, issuers=(ISSUER,), terminals=(STATION, TERMINAL), programmes=PROGRAMMES)
        self.wall = SetClock(0.0)
        self.store = TrustStore(tmp / "bundle.cose", self.kit.root.public_key, clock=self.now)
        assert self.store.install(self.data, None)
        self.journal = JournalStore(tmp / "j.sqlite", terminal_id=TID, signer=TERMINAL, clock=self.wall)
        self.tap = TapProcessor(CounterConfig(TID, CounterMode.CASH_PAYOUT, OfflineLimits(), caps={"": ACR122U}),
                                self.journal, TERMINAL, trust=lambda: self.store.current(),
                                request=lambda: ("cash", 50_000, None), clock=self.now)
        self.client = SyncClient(HttpApi(url, timeout_s=30), self.journal, TERMINAL, TID, self.store,
                                 receipt_key=receipt_key)

    def now(self) -> float:
        return time.time() + self.offset

    def set_clock(self, offset: float) -> None:
        self.offset = self.wall.offset = offset

    def glitch_then_put_right(self) -> None:
        """The clock jumps 5 days ahead, a card is served, the clock is put right: taps are refused."""
        self.set_clock(5 * DAY)
        assert _present(self.tap, _card(1)).status is TapStatus.ACCEPTED
        assert self.store.current().mark >= self.t0 + 5 * DAY - 60
        assert self.journal.wall_mark() >= self.t0 + 5 * DAY - 60
        self.set_clock(0.0)
        out = _present(self.tap, _card(2))
        assert out.reason is DeclineReason.COUNTER_CLOCK_WRONG, out

    def floor(self) -> dict[str, Any]:
        return json.loads(self.store.path.with_name(self.store.path.name + ".floor.json").read_text())


@pytest.fixture
def live_counter(tmp_path: Path, world: Any, live_server: Any) -> Iterator[GlitchCounter]:
    from tests.test_terminal_sync import pinned_receipt_key

    enrol_terminal(world, TID, TERMINAL)
    kit = TrustKit()
    (tmp_path / "root.pem").write_bytes(kit.root_pem())
    world.client.application.config["TRUST_ROOT_CERT"] = str(tmp_path / "root.pem")
    c = GlitchCounter(tmp_path, f"http://{live_server.host}:{live_server.port}", pinned_receipt_key(world, TID), kit)
    publish_bundle(world, 1, c.data)
    yield c
    c.journal.close()


def test_a_sync_with_the_server_puts_a_clock_mark_run_ahead_right(live_counter: GlitchCounter,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    c = live_counter
    c.glitch_then_put_right()
    ahead = c.journal.wall_mark()
    with caplog.at_level(logging.WARNING, logger="terminal.trust"):
        assert c.client.refresh_bundle() is False  # the real server: same bundle, fresh signed time
    assert any("clock mark lowered from" in r.getMessage() for r in caplog.records)
    trust = c.store.current()
    assert abs(trust.mark - time.time()) < 120 and trust.journal_ignored_upto == ahead
    assert _present(c.tap, _card(3)).status is TapStatus.ACCEPTED  # served again, no waiting 5 days
    assert c.journal.wall_mark() == ahead  # the journal still holds the entry from the future ...
    floor = c.floor()  # ... and the floor record says it is no floor, across a restart
    assert floor["time_mark"] < c.t0 + DAY and floor["journal_mark_ignored_upto"] == ahead
    again = TrustStore(c.store.path, c.kit.root.public_key, clock=c.now).current()
    assert again.mark < c.t0 + DAY and again.raised(c.journal.wall_mark()).mark < c.t0 + DAY


def test_an_honest_sync_changes_nothing(live_counter: GlitchCounter, caplog: pytest.LogCaptureFixture) -> None:
    c = live_counter
    assert _present(c.tap, _card(4)).status is TapStatus.ACCEPTED
    before = c.store.current().mark
    with caplog.at_level(logging.WARNING, logger="terminal.trust"):
        assert c.client.refresh_bundle() is False
        assert c.client.refresh_bundle() is False
    assert not [r for r in caplog.records if r.name == "terminal.trust"]
    trust = c.store.current()
    assert trust.mark >= before and trust.journal_ignored_upto == 0.0
    assert "journal_mark_ignored_upto" not in c.floor()
    assert _present(c.tap, _card(5)).status is TapStatus.ACCEPTED


@pytest.fixture
def fake_counter(tmp_path: Path) -> Iterator[tuple[GlitchCounter, FakeServer]]:
    fake = FakeServer()
    c = GlitchCounter(tmp_path, fake.url, PINNED.public_key)
    yield c, fake
    c.journal.close()
    fake.close()


def _statement(signer: Any, nonce: bytes, data: bytes, at: float) -> str:
    raw = sign_freshness(signer, nonce, 1, hashlib.sha256(data).digest(), now=at)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("how", ["replayed", "other key", "other bundle", "unsigned 304"])
def test_a_forged_or_replayed_server_time_lowers_nothing(fake_counter: tuple[GlitchCounter, FakeServer],
                                                          how: str) -> None:
    c, fake = fake_counter
    c.glitch_then_put_right()
    mark, floor = c.store.current().mark, c.floor()

    def answer(h: BaseHTTPRequestHandler, _b: bytes) -> tuple[int, dict[str, str], bytes]:
        nonce = bytes.fromhex(h.headers["Huma-Nonce"])
        header = {"replayed": lambda: _statement(PINNED, b"\x00" * 16, c.data, time.time()),  # an old answer
                  "other key": lambda: _statement(new_signer(), nonce, c.data, time.time()),
                  "other bundle": lambda: _statement(PINNED, nonce, c.data + b"x", time.time()),
                  "unsigned 304": lambda: ""}[how]()
        return 304, {FRESHNESS_HEADER: header} if header else {}, b""

    fake.answer = answer
    with pytest.raises(SyncError):
        c.client.refresh_bundle()
    assert c.store.current().mark >= mark and c.floor() == floor
    assert _present(c.tap, _card(6)).reason is DeclineReason.COUNTER_CLOCK_WRONG

    def genuine(h: BaseHTTPRequestHandler, _b: bytes) -> tuple[int, dict[str, str], bytes]:
        return 304, {FRESHNESS_HEADER: _statement(PINNED, bytes.fromhex(h.headers["Huma-Nonce"]), c.data,
                                                  time.time())}, b""

    fake.answer = genuine  # the pinned key, this request's nonce, the held bundle: put right
    assert c.client.refresh_bundle() is False
    assert _present(c.tap, _card(7)).status is TapStatus.ACCEPTED


def test_a_journal_mark_at_or_below_the_ignored_time_raises_no_mark() -> None:
    b = fresh_bundle()
    now = time.time()
    trust = Trust(b, now, mark=now, journal_ignored_upto=now + 5 * DAY)  # type: ignore[arg-type]
    assert trust.raised(now + 5 * DAY).mark == now  # the entry written while the clock was ahead
    assert trust.raised(now + 5 * DAY + 1).mark == now + 5 * DAY + 1  # real time passed it: a floor again
    assert CLOCK_BACK_TOLERANCE_S < 5 * DAY
