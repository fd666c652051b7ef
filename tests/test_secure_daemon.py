"""Secure cards through the counter daemon (docs/secure-card.md §7.1): through pcscd + vpcd and
through nfcpy's UDP link, and the daemon's identify hook, which must tell an ISO-DEP card by what
it answers and never send it Type 2 reads.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import pytest

from cardlib.keys.signer import cose_key
from cardlib.records.journal import EntryKind, verify_entry
from cardlib.transport import Connection
from cardlib.type2.channel import ACR122U
from simulator.secure_card import SecureCardConnection
from simulator.type4 import Type4Card, Type4Connection, Type4UdpPeer
from simulator.vpcd import VpcdCard
from terminal.daemon import card_uid
from terminal.journal_audit import iter_messages
from terminal.supervisor import ReaderNamePattern, ReaderStatus, Supervisor
from tests.secure_tap_support import CARD_KEYS, issue_secure
from tests.test_terminal_daemon import InProcess, bundle_kw, screen_results, wait_health, wait_results
from tests.test_terminal_nfcpy import Running, udp_toml
from tests.test_terminal_support import TrustKit, make_counter, reader_toml

ANY = ReaderNamePattern(re.compile("."))


class Recording(Connection):
    """A connection that keeps every APDU sent (to assert none is a Type 2 read)."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        return self.inner.send_and_receive(apdu)

    def close(self) -> None:
        self.inner.close()

    @property
    def reader_name(self) -> str:
        return self.inner.reader_name

    @property
    def atr(self) -> bytes:
        return self.inner.atr


def test_identify_tells_a_secure_card_by_its_identity_never_by_type2_reads() -> None:
    card, _ = issue_secure()
    card.field_on()
    conn = Recording(SecureCardConnection(card))
    key = card_uid({"": ACR122U}, conn, ANY)
    assert [a[:2] for a in conn.sent] == [bytes.fromhex("00a4"), bytes.fromhex("80ca")]  # SELECT, GET DATA identity
    assert key == hashlib.sha256(card._p.identity or b"").digest()
    # A new activation with another random UID is the same card; another card is not.
    other, _ = issue_secure(card_id=bytes.fromhex("62710000000a0002"))
    other.field_on()
    assert card_uid({}, SecureCardConnection(card), ANY) == key
    assert card_uid({}, SecureCardConnection(other), ANY) != key


def test_identify_tells_another_iso_dep_card_by_the_readers_uid() -> None:
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    conn = Recording(Type4Connection(Type4Card.blank(uid)))
    assert card_uid({"": ACR122U}, conn, ANY) == uid
    assert conn.sent[-1] == bytes.fromhex("ffca000000") and not any(a[:2] == b"\xff\xb0" for a in conn.sent)


def _commits(files: Any) -> list[Any]:
    key = cose_key(files.signer)
    return [verify_entry(m, {key.kid: key}).entry for m in iter_messages(files.state / "journal.sqlite")]


def with_card_keys(files: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter's profile names the card-password key ring (``paths.card_keys``) to prove itself to secure cards."""
    from cardlib.records.access import save_password_keys
    from terminal.keys import CARD_KEYS_PASSPHRASE_ENV

    save_password_keys(files.state / "card-keys.json", CARD_KEYS, b"card keys passphrase")
    monkeypatch.setenv(CARD_KEYS_PASSPHRASE_ENV, "card keys passphrase")
    text = files.profile.read_text()
    line = 'bundle = "../state/bundle.cose"\n'
    assert line in text
    files.profile.write_text(text.replace(line, line + 'card_keys = "../state/card-keys.json"\n'))


@pytest.mark.pcsc
def test_daemon_serves_a_secure_card_through_pcscd_and_a_reattach_is_no_second_tap(
        tmp_path: Path, pcscd_service: Any, reader_name: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = TrustKit()
    files = make_counter(tmp_path, kit, readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                         bindings=[("virtual-acr122u", None)], bundle_extra=bundle_kw())
    with_card_keys(files, monkeypatch)
    from terminal.daemon import build_daemon

    d = InProcess(build_daemon(files.profile))
    port = files.screen_port
    card, issued = issue_secure(tmp_path / "c.secure.json")
    try:
        served = VpcdCard(card, pcscd_service.port(0), frontend=card).start()
        try:
            first = wait_results(port, 1)[-1]
            assert first["status"] == "accepted", first
            pcscd_service.restart(down_for=1.0)  # the card is reset and re-reported while it rests
            wait_health(port, lambda h: h["pcsc_restarts"] >= 1 and h["pcsc"] == "up"
                        and h["readers"].get(reader_name(0)) == ReaderStatus.CARD_RESTING.value)
            time.sleep(1.5)
            assert len(screen_results(port)) == 1
        finally:
            served.stop()
        sup = d.daemon.supervisor
        assert isinstance(sup, Supervisor) and sum(w.resting_at_attach for w in sup._watchers.values()) == 1
    finally:
        d.stop()
    entries = _commits(files)
    commits = [e for e in entries if e.kind is EntryKind.COMMIT]
    assert len(commits) == 1 and commits[0].card_id == issued.card_id.hex() and commits[0].tag_uid is None


def test_daemon_serves_a_secure_card_through_nfcpys_udp_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nfcpy's ISO-DEP connection reports a PC/SC-style ATR, so the tap takes the secure path."""
    kit = TrustKit()
    card, issued = issue_secure()
    with Type4UdpPeer(None, persist=False) as peer:
        files = make_counter(tmp_path, kit, readers={"udp-sim": udp_toml(peer.path)},
                             bindings=[("udp-sim", None)], bundle_extra=bundle_kw())
        with_card_keys(files, monkeypatch)
        from terminal.daemon import build_daemon

        r = Running(build_daemon(files.profile))
        try:
            r.wait_status(ReaderStatus.WAITING)
            peer.place_card(card)
            result = wait_results(files.screen_port, 1)[-1]
            time.sleep(0.5)  # resting: no second transaction
            assert len(screen_results(files.screen_port)) == 1
            peer.remove()
        finally:
            r.stop()
    assert result["status"] == "accepted", result
    commits = [e for e in _commits(files) if e.kind is EntryKind.COMMIT]
    assert len(commits) == 1 and commits[0].card_id == issued.card_id.hex()
    assert card.seq == 1 and card.counter >= 1
