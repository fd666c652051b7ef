"""``huma terminal status``: what a clerk or technician sees at the counter, read from the daemon's own files.

The journal is written by the daemon's own code (:class:`terminal.tap.TapProcessor` on a real
:class:`terminal.journal_store.JournalStore`, issued NTAG215s on the reader emulator, the
profile, key and bundle of ``huma terminal init`` and :class:`terminal.trust.TrustStore`); the status is
read while that journal is open (the daemon running) and after it closed, and reads nothing into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path

from click.testing import CliRunner

from cardlib.keys.root import load_root_key
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from cardlib.records.statements import ReceiptLine, sign_receipt
from cardlib.type2.channel import ACR122U
from firmware_config.loader import load_terminal_profile
from firmware_config.models import CounterMode
from huma.cli import cli
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.daemon import offline_limits
from terminal.enrol import load_receipt_key
from terminal.journal_store import JournalStore
from terminal.status import counter_status
from terminal.tap import CounterConfig, TapProcessor
from terminal.trust import TrustStore
from tests.test_records_support import ISSUER, STATION
from tests.test_terminal_caps_and_declines import PROGRAMMES, chip
from tests.test_terminal_support import CounterFiles, TrustKit, make_counter, reader_toml

CAP = 5  # cap.terminal_exposure.package in the counter's bundle


def _counter(tmp_path: Path, kit: TrustKit, *, install_bundle: bool = True) -> CounterFiles:
    return make_counter(tmp_path, kit, readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                        bindings=[("virtual-acr122u", None)], programmes=("food",),
                        bundle_extra={"issuers": (ISSUER,), "terminals": (STATION,), "programmes": PROGRAMMES,
                                      "policies": {"cap.terminal_exposure.package": CAP}},
                        install_bundle=install_bundle)


def _files_digest(state: Path) -> dict[str, str]:
    """Every file of the counter's state but ``journal.sqlite-shm``: SQLite's WAL index, where every reader
    of a WAL database records its read mark (no content)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(state.iterdir())
            if p.is_file() and not p.name.endswith("-shm")}


def _status(profile: Path, *extra: str) -> str:
    result = CliRunner().invoke(cli, ["terminal", "status", "--profile", str(profile), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_status_of_a_serving_counter_and_of_a_stopped_one(tmp_path: Path) -> None:
    kit = TrustKit()
    files = _counter(tmp_path, kit)
    profile = load_terminal_profile(files.profile)
    assert profile.bundle_path is not None and profile.root_key_path is not None
    # The daemon's parts, as Daemon wires them: journal under the writer lock, the installed bundle, the tap.
    journal = JournalStore(profile.journal_path, terminal_id=profile.terminal_id, signer=files.signer,
                           clock=Clock(force_synced=True), receipt_key=load_receipt_key(profile))
    trust = TrustStore(profile.bundle_path, load_root_key(profile.root_key_path))
    tap = TapProcessor(CounterConfig(profile.terminal_id, CounterMode.MARKET_REDEMPTION, offline_limits(profile),
                                     caps={"": ACR122U}),
                       journal, files.signer, trust=trust.current, request=lambda: ("food", 1, None))
    card = chip()
    outcomes = [tap(EmulatorConnection(ReaderEmulator(card, ReaderKind.ACR122U)), None)  # type: ignore[arg-type]
                for _ in range(3)]
    assert [o.status.value for o in outcomes] == ["accepted"] * 3, outcomes
    # the server's signed receipt confirmed the BOOT and the first redemption (what terminal.sync records)
    stored = journal.entries()
    first_commit = next(s for s in stored if s.entry.kind is EntryKind.COMMIT)
    lines = [ReceiptLine(s.entry.entry_id, s.seq, "accepted") for s in (stored[0], first_commit)]
    journal.record_receipt(sign_receipt(kit.receipt, profile.terminal_id, b"{}", lines, now=time.time()))
    total = journal.head[0]
    before = _files_digest(files.state)

    st = counter_status(profile)
    assert st.terminal_id == "T-6271-0009" and st.server_url == profile.server_url
    assert st.certificate is None  # make_counter does not enrol
    assert st.daemon_running and st.daemon_pid == os.getpid()
    assert st.bundle is not None and st.bundle.version == 1 and not st.bundle.expired
    assert st.bundle.in_force_until == trust.current().bundle.in_force_until
    assert st.bundle.checked_at == trust.checked_at > 0
    assert st.clock.wrong is False and st.clock.time_mark >= journal.wall_mark() > 0
    assert st.journal is not None and st.journal.entries == total and st.journal.boots == 1
    assert st.journal.unsent == total - 2 and st.journal.refused == 0
    assert st.journal.size_bytes > 0
    assert dict(st.exposure) == {Unit.PACKAGE: 2} and dict(st.caps) == {Unit.PACKAGE: CAP}

    out = _status(files.profile)
    assert "T-6271-0009" in out and profile.server_url in out and "not enrolled yet" in out
    assert "v1, in force until" in out
    assert re.search(rf"not uploaded +{_plural(total - 2)} *\n", out), out
    assert re.search(rf"journal +{_plural(total)}, 0\.\d MB, 1 boot: ", out), out
    assert f"running (pid {os.getpid()})" in out and f"2 of {CAP}" in out and "NTP" in out
    data = json.loads(_status(files.profile, "--json"))
    assert data["journal"]["unsent"] == total - 2 and data["exposure"] == {"package": 2}
    assert data["caps"] == {"package": CAP} and data["daemon_running"] is True

    # status wrote nothing: no entry, no boot, no file of the counter's state changed
    assert journal.head[0] == total and _files_digest(files.state) == before
    journal.close()
    st = counter_status(profile)
    assert not st.daemon_running and st.daemon_pid is None
    assert st.journal is not None and st.journal.entries == total and st.journal.unsent == total - 2
    assert dict(st.exposure) == {Unit.PACKAGE: 2}
    assert "not running" in _status(files.profile)
    # upload marks written into the file by hand are not what a signed receipt confirmed: not counted
    with sqlite3.connect(profile.journal_path) as db:
        db.execute("UPDATE entries SET uploaded_at=1 WHERE uploaded_at IS NULL")
    st = counter_status(profile)
    assert st.journal is not None and st.journal.unsent == total - 2 and dict(st.exposure) == {Unit.PACKAGE: 2}
    # and left no lock behind: the daemon starts again after it
    again = JournalStore(profile.journal_path, terminal_id=profile.terminal_id, signer=files.signer,
                         receipt_key=load_receipt_key(profile))
    assert again.boot_id == 2
    again.close()
    # without the pinned server key no receipt verifies: nothing counts as uploaded, and status says why
    (files.state / "terminal-key.receipt-key.pem").unlink()
    st = counter_status(profile)
    assert st.journal is not None and not st.journal.receipt_key_pinned and st.journal.unsent == total + 1
    assert "no pinned server receipt key" in _status(files.profile)


def _plural(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"


def test_a_counter_never_started_says_so_instead_of_failing(tmp_path: Path) -> None:
    files = _counter(tmp_path, TrustKit(), install_bundle=False)
    st = counter_status(load_terminal_profile(files.profile), now=time.time())
    assert st.bundle is None and st.bundle_problem is not None and "no trust bundle installed" in st.bundle_problem
    assert st.journal is None and not st.daemon_running and st.clock.wrong is None
    assert dict(st.exposure) == {} and dict(st.caps) == {}
    out = _status(files.profile)
    assert "none: no trust bundle installed" in out and "none yet" in out and "not running" in out
    assert not (files.state / "journal.sqlite").exists()


def test_an_install_cut_short_is_reported_not_finished(tmp_path: Path) -> None:
    """Files as a daemon leaves them when it dies between saving the trust state (v2 installed) and renaming
    ``bundle.cose.new`` over ``bundle.cose``: status shows v2 and says so, and renames nothing; the daemon's
    own :class:`TrustStore` finishes it at its next start."""
    kit = TrustKit()
    files = _counter(tmp_path, kit)
    profile = load_terminal_profile(files.profile)
    assert profile.bundle_path is not None and profile.root_key_path is not None
    v1 = profile.bundle_path.read_bytes()
    signer_bundle = {"issuers": (ISSUER,), "terminals": (STATION, files.signer), "programmes": PROGRAMMES,
                     "policies": {"cap.terminal_exposure.package": CAP}}
    _b, v2 = kit.bundle(2, **signer_bundle)  # type: ignore[arg-type]
    assert TrustStore(profile.bundle_path, load_root_key(profile.root_key_path)).install(v2, None)
    profile.bundle_path.write_bytes(v1)
    new = profile.bundle_path.with_name(profile.bundle_path.name + ".new")
    new.write_bytes(v2)
    before = _files_digest(files.state)

    st = counter_status(profile)
    assert st.bundle is not None and st.bundle.version == 2 and st.bundle.unfinished_install == new
    assert _files_digest(files.state) == before and new.read_bytes() == v2 and profile.bundle_path.read_bytes() == v1
    assert "install cut short" in _status(files.profile)
    assert json.loads(_status(files.profile, "--json"))["bundle"]["unfinished_install"] == str(new)
    assert _files_digest(files.state) == before

    assert TrustStore(profile.bundle_path, load_root_key(profile.root_key_path)).version == 2  # the daemon's open
    assert not new.exists() and profile.bundle_path.read_bytes() == v2
    st = counter_status(profile)
    assert st.bundle is not None and st.bundle.version == 2 and st.bundle.unfinished_install is None
