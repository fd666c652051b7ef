"""The counter daemon on nfcpy readers: a PN532 on a serial port (nfcpy's pn532 driver over a pty
behind which a virtual NTAG sits) and nfcpy's UDP link; the profile checks that refuse an nfcpy
reader the counter could never open.

The PN532 tests need root (nfcpy only opens serial ports named directly under /dev, so the
emulator's pty is linked there).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cardlib.keys.signer import cose_key
from cardlib.records.journal import EntryKind, verify_entry
from cardlib.transport.errors import NoCard
from firmware_config.errors import ConfigInvalid
from huma.cli import main as huma_main
from simulator.nfc_udp import NfcUdpPeer
from simulator.pn532 import Pn532Emulator, Pn532Pty
from terminal.daemon import Daemon, build_daemon
from terminal.journal_audit import iter_messages, verify_journal_file
from terminal.supervisor import ReaderNamePattern, ReaderStatus, Supervisor
from tests.test_records_support import FOOD
from tests.test_terminal_daemon import bundle_kw, card, card_state, wait_results
from tests.test_terminal_support import TrustKit, make_counter

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="nfcpy's tty: path needs a link in /dev (root)")


def pn532_toml(device: str, **overrides: str) -> str:
    """A reader profile for the PN532 emulator's pty, linked as ``device``."""
    values = {"baud": "115200", "driver": '"pn532"', "channel": '"none"', **overrides}
    return f'''kind = "reader"
schema_version = 1
name = "pn532-pty"
description = "PN532 emulator on a pty"
stack = "nfcpy"
name_pattern = '\\bPN532v\\d'
pass_through = "native"
max_frame = 252
poll_interval = 0.05

[serial]
device = "{device}"
baud = {values["baud"]}
driver = {values["driver"]}

[feedback]
channel = {values["channel"]}
'''


def udp_toml(path: str) -> str:
    return f'''kind = "reader"
schema_version = 1
name = "udp-sim"
description = "nfcpy UDP link to a virtual card"
stack = "nfcpy"
name_pattern = 'IP-Stack UDP at udp:127\\.0\\.0\\.1:'
pass_through = "native"
max_frame = 252
poll_interval = 0.05

[nfcpy]
path = "{path}"

[feedback]
channel = "none"
'''


class Running:
    """A daemon in a thread of this process."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=daemon.run, name="daemon-under-test")
        self.thread.start()
        wait_results(daemon.profile.screen_port, 0)

    def reader_status(self) -> dict[str, ReaderStatus]:
        return dict(self.daemon.supervisor.health.readers)

    def wait_status(self, status: ReaderStatus, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, got in self.reader_status().items():
                if got is status:
                    return name
            time.sleep(0.05)
        raise AssertionError(f"no reader {status.value} within {timeout} s: {self.reader_status()}")

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def running() -> Iterator[Any]:
    made: list[Running] = []

    def start(profile: Path) -> Running:
        r = Running(build_daemon(profile))
        made.append(r)
        return r

    yield start
    for r in made:
        if r.thread.is_alive():
            r.stop()


def journal_kinds(files: Any) -> list[EntryKind]:
    key = cose_key(files.signer)
    return [verify_entry(m, {key.kid: key}).entry.kind for m in iter_messages(files.state / "journal.sqlite")]


@needs_root
def test_daemon_redeems_through_a_pn532_on_a_serial_port(tmp_path: Path, running: Any) -> None:
    kit = TrustKit()
    emulator = Pn532Emulator(None, persist=False)
    link = f"huma-pn532-d{os.getpid()}"
    with Pn532Pty(emulator, link=link):
        files = make_counter(tmp_path, kit, readers={"pn532-pty": pn532_toml(f"/dev/{link}")},
                             bindings=[("pn532-pty", None)], bundle_extra=bundle_kw())
        r = running(files.profile)
        name = r.wait_status(ReaderStatus.WAITING)
        assert name == f"PN532v1.6 at /dev/{link}"
        a, b = card(0), card(1)
        emulator.place(a)
        first = wait_results(files.screen_port, 1)[-1]
        time.sleep(0.5)  # resting on the reader: one presentation, one transaction
        assert len(wait_results(files.screen_port, 1)) == 1
        emulator.remove()
        emulator.place(b)
        second = wait_results(files.screen_port, 2)[-1]
        emulator.remove()
        r.stop()
    assert [first["status"], second["status"]] == ["accepted", "accepted"]
    assert first["reader"] == name and first["hand_over"] == "1 paket pangan"
    state = card_state(a, r.daemon.trust.current().bundle)
    assert state.current.claims.remaining[FOOD] == 0
    kinds = journal_kinds(files)
    assert kinds.count(EntryKind.PENDING) == 2 and kinds.count(EntryKind.COMMIT) == 2
    assert verify_journal_file(files.state / "journal.sqlite").open_writes == ()


@needs_root
def test_pn532_vanishing_and_coming_back_is_recovered_without_a_second_transaction(
        tmp_path: Path, running: Any, caplog: pytest.LogCaptureFixture) -> None:
    kit = TrustKit()
    link = f"huma-pn532-v{os.getpid()}"
    a, b = card(2), card(3)
    emulator = Pn532Emulator(None, persist=False)
    pty = Pn532Pty(emulator, link=link).start()
    try:
        files = make_counter(tmp_path, kit, readers={"pn532-pty": pn532_toml(f"/dev/{link}")},
                             bindings=[("pn532-pty", None)], bundle_extra=bundle_kw())
        with caplog.at_level(logging.INFO, logger="terminal.supervisor"):
            r = running(files.profile)
            r.wait_status(ReaderStatus.WAITING)
            emulator.place(a)
            assert wait_results(files.screen_port, 1)[-1]["status"] == "accepted"
            r.wait_status(ReaderStatus.CARD_RESTING)
            pty.stop()  # the USB-serial adapter is pulled while the served card rests on the reader
            r.wait_status(ReaderStatus.GONE)
            time.sleep(1.0)  # a few failed re-opens
            emulator = Pn532Emulator(a, persist=False)  # plugged back in, the same card still on it
            pty = Pn532Pty(emulator, link=link).start()
            r.wait_status(ReaderStatus.CARD_RESTING)
            time.sleep(1.0)
            assert len(wait_results(files.screen_port, 1)) == 1  # the resting card is not served again
            emulator.remove()
            r.wait_status(ReaderStatus.WAITING)
            emulator.place(b)
            assert wait_results(files.screen_port, 2)[-1]["status"] == "accepted"
            r.stop()
    finally:
        pty.stop()
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("not available" in m and "retrying with back-off" in m for m in messages), messages
    assert sum("not available" in m for m in messages) == 1  # logged once, not per attempt
    assert any("still on the reader" in m for m in messages)
    kinds = journal_kinds(files)
    assert kinds.count(EntryKind.COMMIT) == 2 and kinds.count(EntryKind.PENDING) == 2


def test_daemon_redeems_through_nfcpys_udp_link(tmp_path: Path, running: Any) -> None:
    kit = TrustKit()
    with NfcUdpPeer(None, persist=False) as peer:
        files = make_counter(tmp_path, kit, readers={"udp-sim": udp_toml(peer.path)},
                             bindings=[("udp-sim", None)], bundle_extra=bundle_kw())
        r = running(files.profile)
        r.wait_status(ReaderStatus.WAITING)
        chip = card(4)
        peer.place(chip)
        result = wait_results(files.screen_port, 1)[-1]
        peer.remove()
        r.stop()
    assert result["status"] == "accepted"
    assert card_state(chip, r.daemon.trust.current().bundle).current.claims.remaining[FOOD] == 0
    assert journal_kinds(files).count(EntryKind.COMMIT) == 1


@pytest.mark.parametrize(("overrides", "words"), [
    ({"driver": '"pn532"', "device": "/dev/serial/by-id/usb-FTDI-if00"}, "directly under /dev"),
    ({"baud": "9600"}, "baud 9600"),
    ({"channel": '"apdu"'}, "no LED/buzzer"),
])
def test_config_check_refuses_an_nfcpy_reader_the_counter_cannot_drive_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: dict[str, str], words: str) -> None:
    device = overrides.pop("device", "/dev/ttyUSB0")
    profile = tmp_path / "reader.toml"
    text = pn532_toml(device, **overrides)
    if overrides.get("channel") == '"apdu"':
        text += 'success = ["FF 00 40 AE 04 01 01 01 01"]\ndecline = ["FF 00 40 5D 04 02 02 03 01"]\n'
        text += 'busy = ["FF 00 40 FC 04 01 01 02 00"]\n'
    profile.write_text(text)
    assert huma_main(["config", "check", str(profile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize(("path", "words"), [
    ("tty:USB0", "needs the driver"),
    ("tty:USB0:acme", "no serial driver 'acme'"),
    ("usb:1234:5678", "no driver for USB device 1234:5678"),
    ("com:COM3:pn532", "Windows serial port"),
])
def test_config_check_refuses_an_nfcpy_path_nfcpy_cannot_open(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, words: str) -> None:
    profile = tmp_path / "reader.toml"
    profile.write_text(udp_toml(path).replace("IP-Stack UDP at udp:127\\.0\\.0\\.1:", "x"))
    assert huma_main(["config", "check", str(profile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_the_daemon_refuses_an_undrivable_reader_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kit = TrustKit()
    files = make_counter(tmp_path, kit, readers={"pn532-pty": pn532_toml("/dev/ttyUSB0")},
                         bindings=[("pn532-pty", None)], bundle_extra=bundle_kw())
    (files.root / "readers" / "pn532-pty.toml").write_text(pn532_toml("/dev/pts/3"))  # edited after set-up
    with pytest.raises(ConfigInvalid) as caught:
        build_daemon(files.profile)
    assert len(caught.value.issues) == 1 and "serial.device" in str(caught.value)
    capsys.readouterr()
    assert huma_main(["terminal", "run", "--profile", str(files.profile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/pts/3" in err, err


class _ListingBackend:
    """A reader stack that lists the given names and never has a card."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def open(self) -> object:
        return self

    def readers(self, ctx: object) -> list[str]:
        return list(self.names)

    def wait(self, ctx: object, reader: str, present: bool, timeout_s: float) -> bool:
        time.sleep(min(timeout_s, 0.05))
        return not present

    def connect(self, ctx: object, reader: str) -> Any:
        raise NoCard(reader)

    def close(self, ctx: object) -> None:
        pass

    def shutdown(self) -> None:
        pass


def test_an_entry_matching_no_reader_is_logged_once_until_it_matches(caplog: pytest.LogCaptureFixture) -> None:
    backend = _ListingBackend(["Other Reader 00"])
    sup = Supervisor([ReaderNamePattern(re.compile("^Counter Reader"))], lambda c, b: None,
                     backend=backend, scan_s=0.05)
    thread = threading.Thread(target=sup.run)
    with caplog.at_level(logging.WARNING, logger="terminal.supervisor"):
        thread.start()
        time.sleep(0.4)
        backend.names = ["Counter Reader 01"]
        time.sleep(0.3)
        backend.names = []
        time.sleep(0.3)
        sup.stop()
        thread.join(5)
    unmatched = [r.getMessage() for r in caplog.records if "matches no reader" in r.getMessage()]
    assert len(unmatched) == 2, unmatched  # once while absent, once more after it had matched and left
    assert "name pattern '^Counter Reader'" in unmatched[0] and "'Other Reader 00'" in unmatched[0]


def test_nfcpy_hands_out_each_card_kind_as_its_connection_with_a_pcsc_style_atr() -> None:
    """A Type 2 tag comes as frames (``native_channel``), an ISO-DEP card as APDUs with the ATR PC/SC
    would report (PC/SC Part 3 §3.1.3.2.3.2), so the tap tells them apart the same way on both stacks."""
    from cardlib.transport.nfcpy import NfcpyIsoDepConnection, NfcpyReader, NfcpyType2Connection
    from simulator.type4 import Type4Card, Type4UdpPeer
    from terminal.connection import type2_channel
    from terminal.secure_tap import is_secure_atr

    uid = bytes.fromhex("04a1b2c3d4e5f6")
    with Type4UdpPeer(Type4Card.blank(uid), persist=False) as peer, NfcpyReader(peer.path) as reader:
        conn = reader.poll_card()
        assert isinstance(conn, NfcpyIsoDepConnection) and is_secure_atr(conn.atr)
        assert conn.atr[:4] == bytes.fromhex("3b8" + f"{len(conn.link.ats.historical):x}" + "8001")
        conn.close()
    with NfcUdpPeer(card(5), persist=False) as peer, NfcpyReader(peer.path) as reader:
        conn2 = reader.poll_card()
        assert isinstance(conn2, NfcpyType2Connection) and not is_secure_atr(conn2.atr)
        assert type2_channel(conn2) is conn2.native_channel()
        conn2.close()
