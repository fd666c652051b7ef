"""An nfcpy card session ends with the reader's field off: a chip opened with PWD_AUTH is not left open.

On PC/SC the session ends with a card reset (tests/test_pcsc_session_isolation_pcsc.py). On an
nfcpy reader the counter's process owns the device (libusb claim, or the serial port) and every
session's ``close`` switches the RF field off (nfcpy ``device.mute()``: PN53x RFConfiguration
field off, RC-S380 ``switch_rf("off")``, the ``udp`` driver's RFOFF): the chip loses power and its
AUTHENTICATED state (NTAG213/215/216 datasheet §8.8). Here through nfcpy's own ``udp`` driver and
the simulator's chip, for the provisioning station's source (personalise opens the card with
PWD_AUTH) and for the counter's poll. Regression tests: this already held.
"""

from __future__ import annotations

import time

from cardlib.provision.batch import NfcpyCardSource
from cardlib.provision.card import StationContext, check_chip, personalise
from cardlib.transport.nfcpy import NfcpyReader
from cardlib.type2.tag import Type2Tag
from firmware_config.loader import find_reader_profile
from simulator.chip import ChipVariant, Ntag21x
from simulator.nfc_udp import NfcUdpPeer
from tests.provision_support import Station
from tests.test_pin_record_pcsc import CARD_ID, HOUSEHOLD, PIN_A, UID, office, station  # noqa: F401 - fixtures

#: Seconds for the RFOFF datagram to reach the peer's thread.
RFOFF_WAIT_S = 2.0


def _authenticated_after_close(chip: Ntag21x) -> bool:
    deadline = time.monotonic() + RFOFF_WAIT_S
    while chip.authenticated and time.monotonic() < deadline:
        time.sleep(0.01)
    return chip.authenticated


def test_an_nfcpy_station_session_ends_with_the_field_off(station: Station, office) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    ctx: StationContext = office[0]
    chip = station.fab.genuine(ChipVariant.NTAG215, UID)
    with NfcUdpPeer(chip, persist=False) as peer:
        source = NfcpyCardSource(peer.path, timeout_s=3.0, wait_removal=False)
        try:
            session = source.next_card()
            assert session is not None
            with session as tag:
                personalise(tag, ctx, HOUSEHOLD, CARD_ID, check_chip(tag, ctx), pin=PIN_A)
                assert chip.authenticated
            assert not _authenticated_after_close(chip), "the station left the written card authenticated"
            assert peer.chip is chip  # still in the field: only the session ended
        finally:
            source.close()


def test_an_nfcpy_counter_session_ends_with_the_field_off(station: Station, office) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    ctx: StationContext = office[0]
    chip = station.fab.genuine(ChipVariant.NTAG215, UID)
    with NfcUdpPeer(chip, persist=False) as peer:
        source = NfcpyCardSource(peer.path, timeout_s=3.0, wait_removal=False)
        try:
            session = source.next_card()
            assert session is not None
            with session as tag:
                personalise(tag, ctx, HOUSEHOLD, CARD_ID, check_chip(tag, ctx), pin=PIN_A)
        finally:
            source.close()
        profile = find_reader_profile("nfcpy-udp-sim")
        pwd = ctx.passwords.password(ctx.password_key_version, chip.uid)
        with NfcpyReader(peer.path, profile.capabilities(), name_pattern=profile.name_pattern) as reader:
            conn = reader.poll_card()
            assert conn is not None
            try:
                Type2Tag(conn.native_channel()).pwd_auth(pwd.pwd, expected_pack=pwd.pack)  # type: ignore[union-attr]
                assert chip.authenticated
            finally:
                conn.close()
            assert not _authenticated_after_close(chip), "the counter's poll left the chip authenticated"
