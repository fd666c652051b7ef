"""The private pcscd harness: real pcscd + vpcd + virtual NTAG, read through pyscard."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from smartcard.Exceptions import CardConnectionException
from smartcard.System import readers

from simulator.chip import ChipVariant, FaultPlan, Ntag21x
from simulator.harness import PcscdHarness
from tests.fixtures.pcsc import wait_for_card

UID = bytes.fromhex("04A1B2C3D4E5F6")
GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]

pytestmark = pytest.mark.pcsc


@contextlib.contextmanager
def _connect(name: str) -> Iterator[Any]:
    """A pyscard connection to reader ``name`` (by name, never index), released at exit."""
    (reader,) = [r for r in readers() if str(r) == name]
    conn = reader.createConnection()
    try:
        conn.connect()
        yield conn
    finally:
        conn.release()  # before any pcscd restart, or __del__ fails later


def _pcscd_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_private_pcscd_is_isolated(pcscd_service: PcscdHarness) -> None:
    assert pcscd_service.mode == "private", "unshare failed; harness fell back to the shared system pcscd"
    assert str(pcscd_service.socket_path).startswith(str(pcscd_service.workdir))
    names = [str(r) for r in readers()]
    assert names == [pcscd_service.reader_name(0), pcscd_service.reader_name(1)]
    assert all(p not in (35963, 35964) for p in pcscd_service.ports)


def test_uid_and_pages_through_pcscd(present_card, reader_name) -> None:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    chip.poke(4, bytes.fromhex("DEADBEEF"))
    with present_card(chip, slot=1):
        with _connect(reader_name(1)) as conn:
            assert bytes(conn.getATR()).hex().upper() == "3B8F8001804F0CA0000003060300030000000068"
            data, sw1, sw2 = conn.transmit(GET_UID)
            assert (bytes(data), sw1, sw2) == (UID, 0x90, 0x00)
            data, sw1, sw2 = conn.transmit([0xFF, 0xB0, 0x00, 0x03, 0x10])
            assert bytes(data) == bytes.fromhex("E1103E00 DEADBEEF 00000000 00000000")
            assert (sw1, sw2) == (0x90, 0x00)
            # write a page, read it back through the direct-transmit path (D4 42 30 05)
            _, sw1, sw2 = conn.transmit([0xFF, 0xD6, 0x00, 0x05, 0x04, 1, 2, 3, 4])
            assert (sw1, sw2) == (0x90, 0x00)
            data, sw1, sw2 = conn.transmit([0xFF, 0x00, 0x00, 0x00, 0x04, 0xD4, 0x42, 0x30, 0x05])
            assert bytes(data[:3]) == bytes.fromhex("D54300") and bytes(data[3:7]) == bytes([1, 2, 3, 4])
    assert chip.page(5) == bytes([1, 2, 3, 4])


def test_card_file_keeps_memory_between_taps(present_card, reader_name, tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    chip.poke(chip.layout.cfg1_page, bytes.fromhex("10050000"))  # NFC_CNT_EN
    chip.save(path)
    for tap in range(1, 3):
        with present_card(path):
            with _connect(reader_name(0)) as conn:
                _, sw1, _ = conn.transmit([0xFF, 0xD6, 0x00, 0x10, 0x04, tap, tap, tap, tap])
                assert sw1 == 0x90
                conn.transmit([0xFF, 0xB0, 0x00, 0x04, 0x10])
    card = Ntag21x.load(path)
    assert card.page(0x10) == bytes([2, 2, 2, 2])
    assert card.nfc_counter == 2  # one per tap (RF session), not per READ


def test_PC_4_pcscd_foreground_no_autoexit_and_card_reconnects(
    pcscd_service: PcscdHarness, present_card, reader_name
) -> None:
    """PC-4: pcscd must not exit when idle; the virtual card comes back with vpcd."""
    pid = pcscd_service.pid
    assert pid is not None
    argv = _pcscd_cmdline(pid)
    assert "--foreground" in argv
    assert not {"--auto-exit", "-x"} & set(argv)

    chip = Ntag21x.blank(ChipVariant.NTAG213, UID)
    with present_card(chip) as card:
        with _connect(reader_name(0)) as conn:
            assert bytes(conn.transmit(GET_UID)[0]) == UID

        pcscd_service.restart(down_for=0.5)  # vpcd goes away and comes back
        assert pcscd_service.pid not in (None, pid)
        wait_for_card(reader_name(0), present=True)
        assert card.running, "card thread must survive the vpcd restart"
        with _connect(reader_name(0)) as conn:
            data, sw1, sw2 = conn.transmit(GET_UID)
            assert (bytes(data), sw1, sw2) == (UID, 0x90, 0x00)


def test_transmit_fails_when_card_torn_away(present_card, reader_name) -> None:
    """Removal after N commands: command N+1 never gets an answer, earlier pages are written."""
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    with present_card(chip, faults=FaultPlan(remove_after_commands=2)):
        with _connect(reader_name(0)) as conn:
            for page in (4, 5):
                _, sw1, _ = conn.transmit([0xFF, 0xD6, 0x00, page, 0x04, 9, 9, 9, 9])
                assert sw1 == 0x90
            with pytest.raises(CardConnectionException):
                conn.transmit([0xFF, 0xD6, 0x00, 6, 0x04, 9, 9, 9, 9])
    assert chip.removed
    assert chip.page(5) == bytes([9] * 4) and chip.page(6) == bytes(4)


def test_next_card_after_a_mid_apdu_removal_is_seen(present_card, reader_name) -> None:
    """pcscd 1.9.9 misses a card that arrives before its poller saw the torn one leave."""
    torn = Ntag21x.blank(ChipVariant.NTAG215, UID)
    with present_card(torn, faults=FaultPlan(remove_after_commands=0)):
        with _connect(reader_name(0)) as conn, pytest.raises(CardConnectionException):
            conn.transmit([0xFF, 0xB0, 0x00, 0x04, 0x10])
    other = Ntag21x.blank(ChipVariant.NTAG213, bytes.fromhex("04112233445566"))
    with present_card(other), _connect(reader_name(0)) as conn:
        assert bytes(conn.transmit(GET_UID)[0]) == other.uid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_pcscd_dies_with_the_process_that_started_it_even_on_sigkill(tmp_path: Path) -> None:
    """No orphaned private pcscd: PR_SET_PDEATHSIG stops it when its parent is SIGKILLed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys, time\n"
              "from simulator.harness import PcscdHarness\n"
              f"h = PcscdHarness(slots=2, workdir={str(tmp_path / 'pcscd')!r}, isolation='private').start()\n"
              "print(h.pid, flush=True)\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _alive(pid) and "pcscd" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"pcscd {pid} outlived the SIGKILLed process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        assert parent.stdout is not None
        parent.stdout.close()
