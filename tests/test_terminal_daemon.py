"""The whole counter daemon (``huma terminal run``) on a private pcscd with virtual cards on two slots.

In-process (:class:`terminal.daemon.Daemon` in a thread) where the test needs
to look inside (feedback counters, logs); as a real subprocess where the
process itself is the subject (SIGTERM, SIGKILL, pcscd restart).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cardlib.keys.signer import cose_key
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.claims import Programme as CardProgramme
from cardlib.records.claims import Unit as CardUnit
from cardlib.records.journal import EntryKind, verify_entry
from cardlib.records.session import CardSession
from cardlib.sim.chip import Ntag21x
from huma.cli import cli
from terminal.daemon import Daemon, build_daemon
from terminal.journal import iter_messages, verify_journal_file
from terminal.tap import terminal_number
from tests.test_records_support import FOOD, ISSUER, STATION, ChipTag
from tests.test_terminal_support import TrustKit, make_counter, reader_toml
from tests.test_terminal_tap import issued_chip

pytestmark = pytest.mark.pcsc

PROGRAMMES = (BundleProgramme(1, "food", "package", 1), BundleProgramme(2, "cash", "rupiah", 250_000),
              BundleProgramme(3, "health", "visit", 4))
UIDS = [bytes.fromhex(f"04a1b2c3d4e5{i:02x}") for i in range(8)]


def card(i: int, **overrides: Any) -> Ntag21x:
    """Household ``i``'s card: its own UID and card id."""
    return issued_chip(UIDS[i], card_id=bytes.fromhex(f"62710000000010{i:02x}"), **overrides)


def bundle_kw() -> dict[str, Any]:
    return dict(issuers=(ISSUER,), terminals=(STATION,), programmes=PROGRAMMES, policies={"pin.cash": 1})


def screen_results(port: int, after: int = 0) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state?after={after}", timeout=5) as r:
        return list(json.loads(r.read())["results"])


def wait_results(port: int, n: int, timeout: float = 20.0, after: int = 0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = screen_results(port, after)
        except OSError:
            got = []
        if len(got) >= n:
            return got
        assert time.monotonic() < deadline, f"only {len(got)} of {n} results: {got}"
        time.sleep(0.02)


def card_state(chip: Ntag21x, kit_bundle: Any) -> Any:
    """Read a virtual card in-process (no reader) and verify it under the bundle."""
    if chip.removed:
        chip.reinsert()
    chip.field_on()
    return CardSession(ChipTag(chip), kit_bundle).read_state(int(time.time()))


class InProcess:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=daemon.run, name="daemon-under-test")
        self.thread.start()
        wait_results(daemon.profile.screen_port, 0)

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def kit() -> TrustKit:
    return TrustKit()


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Any]:
    made: list[InProcess] = []

    def start(profile: Path) -> InProcess:
        d = InProcess(build_daemon(profile))
        made.append(d)
        return d

    yield start
    for d in made:
        if d.thread.is_alive():
            d.stop()


def test_daemon_redeems_on_two_slots_declines_and_stops_cleanly(tmp_path, kit, in_process, present_card) -> None:
    files = make_counter(tmp_path, kit, readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                         bindings=[("virtual-acr122u", None)], bundle_extra=bundle_kw())
    d = in_process(files.profile)
    a, b = card(0), card(1)
    port = files.screen_port
    with present_card(a, slot=0):
        r1 = wait_results(port, 1)[-1]
    with present_card(b, slot=1):
        r2 = wait_results(port, 2)[-1]
    with present_card(a, slot=1):
        r3 = wait_results(port, 3)[-1]
    assert [r["status"] for r in (r1, r2, r3)] == ["accepted", "accepted", "declined"]
    assert (r1["headline"], r1["hand_over"], r1["remaining"]) == ("DITERIMA", "1 paket pangan", "0 paket pangan")
    assert r3["reason"] == "Jatah periode ini sudah habis."
    assert {r1["reader"], r2["reader"]} == {"Virtual PCD 00 00", "Virtual PCD 00 01"}
    d.stop()
    # The card's slot names this terminal by its key id (docs/card-format.md §conventions).
    bundle = d.daemon.trust.current().bundle
    state = card_state(a, bundle)
    assert state.current.claims.terminal_id == terminal_number(cose_key(files.signer).kid)
    assert state.current.claims.remaining[FOOD] == 0
    result = CliRunner().invoke(cli, ["journal", "verify", str(files.state / "journal.sqlite")])
    assert result.exit_code == 0 and "OK" in result.output, result.output
    kinds = [verify_entry(m, {cose_key(files.signer).kid: cose_key(files.signer)}).entry
             for m in iter_messages(files.state / "journal.sqlite")]
    assert [e.kind for e in kinds].count(EntryKind.COMMIT) == 2
    assert [e.decline_reason for e in kinds if e.kind is EntryKind.DECLINED] == ["nothing_left"]


ESCAPE_LEDS = '''
[feedback]
channel = "escape"
success = ["E0 00 00 29 01 02", "E0 00 00 28 01 0A"]
decline = ["E0 00 00 29 01 01", "E0 00 00 28 01 32"]
busy = ["E0 00 00 29 01 03"]
'''


def test_AP_3_failing_led_and_buzzer_never_fail_or_delay_a_redemption(
        tmp_path, kit, in_process, present_card, caplog) -> None:
    # Slot 0: LED pseudo-APDUs a Part 3 reader does not know (answers 6A 81).
    # Slot 1: escape commands through SCardControl, which vpcd refuses like a CCID
    # driver without escape enabled.
    readers = {
        "virtual-part3-apdu": reader_toml("virtual-part3-apdu", pass_through="part3"),
        "virtual-part3-escape": reader_toml("virtual-part3-escape", pass_through="part3", feedback=ESCAPE_LEDS,
                                            extra="escape_control_code = 0x42000DAC"),
    }
    files = make_counter(tmp_path, kit, readers=readers, bundle_extra=bundle_kw(),
                         bindings=[("virtual-part3-apdu", " 00$"), ("virtual-part3-escape", " 01$")])
    d = in_process(files.profile)
    port = files.screen_port
    chips = [card(i) for i in range(4)]
    latencies = []
    with caplog.at_level(logging.DEBUG, logger="terminal.feedback"):
        for n, (chip, slot) in enumerate([(chips[0], 0), (chips[1], 1), (chips[2], 0), (chips[3], 1),
                                          (chips[0], 0), (chips[1], 1)], start=1):
            with present_card(chip, slot=slot, kind="part3"):
                t0 = time.time()
                r = wait_results(port, n)[-1]
                latencies.append(r["at"] - t0)
            assert r["status"] == ("accepted" if n <= 4 else "declined"), r
        deadline = time.monotonic() + 5
        while d.daemon.feedback.failures < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert d.daemon.feedback.failures == 6 and d.daemon.feedback.sent == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "LED/buzzer" in r.getMessage()]
    assert sorted(w.args[0] for w in warnings) == ["Virtual PCD 00 00", "Virtual PCD 00 01"]  # once per reader
    assert any("SCardControl" in w.getMessage() for w in warnings)
    assert max(latencies) < 1.0, latencies
    d.stop()
    assert verify_journal_file(files.state / "journal.sqlite").open_writes == ()
