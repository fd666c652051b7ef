"""Shared builders for the secure-profile counter and provisioning tests (no tests here).

Cards are made the way the station makes them (:func:`cardlib.provision.secure.personalise_secure`
on the virtual card's APDUs, in-process), with the records test keys: ISSUER signs
identities, STATION genesis states, TERMINAL is the counter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from cardlib.provision.card import StationContext
from cardlib.provision.households import Household
from cardlib.provision.profile import Profile
from cardlib.provision.secure import SecureIssuedCard, personalise_secure, pin_reset_point
from cardlib.records.access import CardPasswordKeys
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.claims import Entitlement, Unit
from cardlib.secure import SecureCardSession
from cardlib.transport import Connection
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.harness import PcscdHarness, reader_name
from simulator.secure_card import SecureCard, SecureCardConnection, SecureVpcdCard
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.policy import OfflineLimits
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.fixtures.pcsc import wait_for_card
from tests.test_records_support import ISSUER, STATION, TERMINAL, bundle

PIN = "246810"
PIN_RESET_KEY = ec.derive_private_key(0x5EC0DE, ec.SECP256R1())
PROGRAMMES = (
    BundleProgramme(1, "food", "package", 1, 182),
    BundleProgramme(2, "cash", "rupiah", 250_000, 182),
    BundleProgramme(3, "health", "visit", 4, 182),
)
PROFILE = Profile(programmes={1: Entitlement(Unit.PACKAGE, 1), 2: Entitlement(Unit.RUPIAH, 250_000),
                              3: Entitlement(Unit.VISIT, 4)},
                  offline_cap={1: 1, 2: 250_000, 3: 4}, valid_days=5 * 365)
#: The card-access key ring counters hold: version 1 is the station's password secret (docs/secure-card.md §5.5).
CARD_KEYS = CardPasswordKeys({1: bytes(16)}, 1)
HOUSEHOLD = Household(1, bytes.fromhex("b6b6b6b6b6b6b6b6"), "62.71", (1, 2, 3))


def trust_bundle() -> object:
    """The records test bundle with the counter's programmes and the PIN rule for cash."""
    now = int(time.time())  # a bundle of today: a counter refuses to write far past its bundle's time
    return dataclasses.replace(bundle(), programmes=PROGRAMMES, policies={"pin.cash": 1}, issued_at=now - 60,
                               expires_at=now + 30 * 86400)


def station() -> StationContext:
    return StationContext(issuer=ISSUER, station=STATION, station_id=None, trust=trust_bundle(),  # type: ignore[arg-type]
                          profile=PROFILE, password_secret=bytes(16))


def issue_secure(path: Path | None = None, *, card_id: bytes = bytes.fromhex("62710000000a0001"),
                 pin_required: bool = False) -> tuple[SecureCard, SecureIssuedCard]:
    """A blank virtual secure card personalised by the station code, in-process."""
    card = SecureCard(path)
    session = SecureCardSession(SecureCardConnection(card))
    ctx = station()
    issued = personalise_secure(session, ctx, HOUSEHOLD, card_id, pin=PIN,
                                pin_reset_key=pin_reset_point(ctx, PIN_RESET_KEY.public_key()),
                                pin_required=pin_required, now=int(time.time()) - 60)
    card.field_off()
    if path is not None:
        card.save()
    return card, issued


def processor(tmp: Path, mode: CounterMode, request: list[object]) -> TapProcessor:
    """A counter's tap processor (journal in *tmp*) asking ``request`` = [programme, qty, pin]."""
    journal = JournalStore(tmp / "journal.sqlite", terminal_id="T-6271-0002", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    b = trust_bundle()
    config = CounterConfig("T-6271-0002", mode, OfflineLimits(), caps={"": ACR122U}, card_passwords=CARD_KEYS)
    return TapProcessor(config, journal, TERMINAL,
                        trust=lambda: Trust(b, time.time()),  # type: ignore[arg-type]
                        request=lambda: tuple(request))  # type: ignore[arg-type, return-value]


class SecureSlot:
    """Puts a virtual secure card on a slot of the private pcscd and connects to it through PC/SC."""

    def __init__(self, harness: PcscdHarness, slot: int = 0) -> None:
        self.harness = harness
        self.slot = slot
        self.server: SecureVpcdCard | None = None
        self.conn: Connection | None = None
        self._removals = 0

    @contextlib.contextmanager
    def present(self, card: SecureCard, *, connect: bool = True) -> Iterator[Connection | None]:
        """The card on the slot (PC/SC sees it) for the block; with *connect*, a PC/SC connection to it."""
        from cardlib.transport.pcsc import connect as pcsc_connect

        if card.removed:
            card.reinsert(card.faults)
        self._removals = self.harness.removal_events(self.slot)
        self.server = SecureVpcdCard(card, self.harness.port(self.slot)).start()
        try:
            self.server.wait_connected()
            wait_for_card(reader_name(self.slot), present=True)
            self.conn = pcsc_connect(reader_name(self.slot)) if connect else None
            yield self.conn
        finally:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            self.server.stop()
            self.server = None
            wait_for_card(reader_name(self.slot), present=False)
            self.harness.wait_removal_seen(self.slot, self._removals)


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
