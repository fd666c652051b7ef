"""A card session shares nothing with other PC/SC clients (docs/security.md §Card sessions on a shared PC/SC service).

The counter and the provisioning station open every card with PWD_AUTH. The chip stays
AUTHENTICATED until its RF session ends, so a second PC/SC client on the same machine (a clerk's
own program) must get no handle on the reader while that session is open, and the session must
end with a card reset, also when the process holding it dies. These tests run the real pcscd +
vpcd; the "clerk" is a second PC/SC context (another client of the same pcscd), the dead process
a real child process killed with SIGKILL. The after-the-tap half is in
tests/test_redteam_r3_piggyback_pcsc.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smartcard import scard

from cardlib.provision.batch import PcscCardSource
from cardlib.provision.card import StationContext, check_chip, personalise
from cardlib.transport import CountingConnection
from cardlib.transport.errors import ReaderBusy
from cardlib.transport.pcsc import SCARD_E_SHARING_VIOLATION, PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U, channel_for
from cardlib.type2.errors import Nak
from cardlib.type2.tag import Type2Tag
from simulator.chip import ChipVariant, Ntag21x
from terminal.outcome import TapStatus
from tests.provision_support import Station
from tests.test_pin_record_pcsc import CARD_ID, HOUSEHOLD, PIN_A, UID, _issue, office, station  # noqa: F401 - fixtures

pytestmark = pytest.mark.pcsc

WRITE = 0xA2
NTAG215_PWD_PAGE = 133  # datasheet §8.5: PWD
#: ACR122U direct transmit of a PWD_AUTH frame: FF 00 00 00 Lc D4 42 1B (cardlib/type2/channel.py).
PWD_AUTH_THRU = bytes.fromhex("d4421b")


def _clerk_writes(reader: str, page: int, data: bytes) -> bool:
    """The clerk's own PC/SC client: connect, one WRITE of ``page``; True when the chip took it."""
    with PcscContext() as ctx:
        clerk = PcscConnection(ctx, reader)
        try:
            tag = Type2Tag(channel_for(clerk, ACR122U, clerk.reconnect), atr=clerk.atr)
            try:
                tag.channel.transceive(bytes((WRITE, page)) + data)
                return True
            except Nak:
                return False
        finally:
            clerk.close()


def _shared_connect(reader: str) -> int:
    """A plain shared ``SCardConnect`` from another context, released at once: its return code."""
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS
    try:
        hr, hcard, _ = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_SHARED,
                                          scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if hr == scard.SCARD_S_SUCCESS:
            scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
        return int(hr) & 0xFFFFFFFF
    finally:
        scard.SCardReleaseContext(ctx)


class _ProbeAfterAuth(CountingConnection):
    """The counter's connection; right after its PWD_AUTH, another client tries the reader (once)."""

    def __init__(self, inner: PcscConnection) -> None:
        super().__init__(inner)
        self.probes: list[int] = []
        self.busy: list[bool] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        answer = super().send_and_receive(apdu)
        if PWD_AUTH_THRU in bytes(apdu) and not self.probes:
            self.probes.append(_shared_connect(self.reader_name))
            try:
                PcscConnection(PcscContext(), self.reader_name, owns_context=True, busy_wait_s=0.1).close()
                self.busy.append(False)
            except ReaderBusy:
                self.busy.append(True)
        return answer


def test_no_other_client_reaches_the_reader_while_the_chip_is_authenticated(  # type: ignore[no-untyped-def]
        present_card, reader_name, station: Station, office) -> None:  # noqa: F811
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    counter.pin = PIN_A
    with present_card(chip), PcscContext() as pctx:
        conn = _ProbeAfterAuth(PcscConnection(pctx, reader))
        try:
            outcome = counter.tap(conn, None)
            authenticated_at_end = chip.authenticated
            tap_commands = conn.commands
        finally:
            conn.close()
        assert not chip.authenticated, "the tap ended with the chip still authenticated"
        assert conn.commands == tap_commands, "the reset at the end of the tap is no card command of it"
    assert outcome.status is TapStatus.ACCEPTED
    assert authenticated_at_end, "the probe ran at no authenticated moment: the test proves nothing"
    assert conn.probes == [SCARD_E_SHARING_VIOLATION], f"a shared SCardConnect mid-tap returned {conn.probes}"
    assert conn.busy == [True]


def test_a_client_holding_the_reader_gets_no_card_session_served(present_card, reader_name) -> None:  # type: ignore[no-untyped-def]
    chip = Station().fab.genuine(ChipVariant.NTAG215, UID)
    reader = reader_name(0)
    with present_card(chip):
        hr, other = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        assert hr == scard.SCARD_S_SUCCESS
        hr, hcard, _ = scard.SCardConnect(other, reader, scard.SCARD_SHARE_SHARED,
                                          scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        assert hr == scard.SCARD_S_SUCCESS
        try:
            with PcscContext() as pctx:
                start = time.monotonic()
                with pytest.raises(ReaderBusy):
                    PcscConnection(pctx, reader, busy_wait_s=0.2)
                waited = time.monotonic() - start
        finally:
            scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
            scard.SCardReleaseContext(other)
        with PcscContext() as pctx:  # the holder let go: the next presentation is served
            PcscConnection(pctx, reader).close()
    assert 0.2 <= waited < 5.0


_HOLD_AUTHENTICATED = """
import sys, time
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U, channel_for
from cardlib.type2.tag import Type2Tag
conn = PcscConnection(PcscContext(), sys.argv[1])
tag = Type2Tag(channel_for(conn, ACR122U, conn.reconnect), atr=conn.atr)
tag.pwd_auth(bytes.fromhex(sys.argv[2]), expected_pack=bytes.fromhex(sys.argv[3]))
print("authenticated", flush=True)
time.sleep(60)
"""


def test_a_process_killed_mid_session_leaves_the_chip_locked(  # type: ignore[no-untyped-def]
        present_card, reader_name, station: Station, office) -> None:  # noqa: F811
    ctx, _ = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    pwd = ctx.passwords.password(ctx.password_key_version, chip.uid)
    taken = None
    with present_card(chip), subprocess.Popen(
            [sys.executable, "-c", _HOLD_AUTHENTICATED, reader, pwd.pwd.hex(), pwd.pack.hex()],
            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent, env=os.environ.copy(),
            text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "authenticated"
            assert chip.authenticated
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:  # pcscd notices the dead client on its socket
                try:
                    taken = _clerk_writes(reader, NTAG215_PWD_PAGE, b"\xde\xad\xbe\xef")
                    break
                except ReaderBusy:
                    time.sleep(0.1)
        finally:
            if child.poll() is None:
                child.kill()
    assert taken is False, f"after the session's process died the clerk's WRITE of PWD was taken={taken}"


def test_the_provisioning_station_leaves_a_written_card_locked(  # type: ignore[no-untyped-def]
        present_card, reader_name, station: Station, office) -> None:  # noqa: F811
    ctx: StationContext = office[0]
    reader = reader_name(0)
    chip: Ntag21x = station.fab.genuine(ChipVariant.NTAG215, UID)
    with present_card(chip):
        source = PcscCardSource(reader, ACR122U, timeout_s=5.0, wait_removal=False)
        try:
            session = source.next_card()
            assert session is not None
            with session as tag:
                personalise(tag, ctx, HOUSEHOLD, CARD_ID, check_chip(tag, ctx), pin=PIN_A)
                assert chip.authenticated
        finally:
            source.close()
        assert not chip.authenticated
        assert _clerk_writes(reader, NTAG215_PWD_PAGE, b"\xde\xad\xbe\xef") is False
