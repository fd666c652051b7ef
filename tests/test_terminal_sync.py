"""The sync client against the real server app (waitress on 127.0.0.1, SQLite and PostgreSQL).

Faults on the wire (connection dropped after the server stored the batch, a
503 burst) come from :class:`tests.test_terminal_support.FaultProxy` in front
of the real server.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from cardlib.keys.signer import spki_der
from cardlib.records.journal import EntryKind
from terminal.clock import Clock
from terminal.enrol import load_receipt_key
from terminal.errors import TrustStoreError
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import CardWrite, JournalStore
from terminal.sync import HttpApi, SyncClient, SyncLoop, TrustStore, parse_retry_after
from tests.test_terminal_support import FaultProxy, TrustKit, enrol_terminal, new_signer, publish_bundle

TERMINAL_ID = "T-6271-0042"


def server_rows(app: Any) -> int:
    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(JournalEntryRow)))


def pinned_receipt_key(world: Any, terminal_id: str) -> Any:
    """The server receipt key as the enrolment answer (the certificate) carries it."""
    from cryptography.hazmat.primitives import serialization

    r = world.client.get(f"/api/v1/terminals/{terminal_id}/certificate")
    assert r.status_code == 200, r.get_json()
    return serialization.load_pem_public_key(r.get_json()["receipt_key"].encode())


class Rig:
    """A terminal (key, journal, trust store) enrolled on the live server, behind a fault proxy."""

    def __init__(self, tmp: Path, world: Any, live_server: Any, batch_size: int = 10) -> None:
        self.signer = new_signer()
        self.world = world
        enrol_terminal(world, TERMINAL_ID, self.signer)
        self.kit = TrustKit()
        (tmp / "root.pem").write_bytes(self.kit.root_pem())  # POST /bundles verifies under this root
        world.client.application.config["TRUST_ROOT_CERT"] = str(tmp / "root.pem")
        self.journal = JournalStore(tmp / "journal.sqlite", terminal_id=TERMINAL_ID, signer=self.signer,
                                    clock=Clock(force_synced=True))
        self.trust = TrustStore(tmp / "bundle.cose", self.kit.root.public_key)
        self.proxy = FaultProxy(live_server.host, live_server.port)
        self.receipt_key = pinned_receipt_key(world, TERMINAL_ID)  # what enrolment pins
        self.client = SyncClient(HttpApi(self.proxy.url, timeout_s=30), self.journal, self.signer,
                                 TERMINAL_ID, self.trust, batch_size=batch_size, receipt_key=self.receipt_key)
        self.loop = SyncLoop(self.client, interval_s=0.05, backoff_s=(0.05, 0.2), rng=random.Random(7))

    def taps(self, n: int) -> None:
        for i in range(n):
            self.journal.append(EntryKind.BALANCE, CardWrite(card_id=f"6271{i % 5:012d}", programme="food",
                                                             tag_uid=bytes.fromhex("04a1b2c3d4e5f6")))

    def close(self) -> None:
        self.loop.stop()
        self.proxy.close()
        self.journal.close()


@pytest.fixture
def rig(tmp_path: Path, world: Any, live_server: Any) -> Any:
    r = Rig(tmp_path, world, live_server)
    yield r
    r.close()


def test_upload_in_batches_marks_every_entry(app, rig) -> None:
    rig.taps(34)  # + BOOT = 35 entries, 4 batches of 10
    assert rig.loop.run_once() == rig.loop.interval_s
    assert rig.journal.unsent_count() == 0
    assert server_rows(app) == 35
    assert [a for _m, _p, a, _s in rig.proxy.log if _p.endswith("batches")] == ["pass"] * 4


def test_answer_lost_after_server_stored_is_retried_idempotently(app, rig) -> None:
    rig.taps(14)  # 15 entries
    rig.proxy.plan.extend(["pass", "drop"])  # the head passes; first batch: stored, answer never arrives
    delay = rig.loop.run_once()
    assert delay <= 0.05 and rig.loop.health.failures == 1
    assert "RemoteDisconnected" in rig.loop.health.last_error or "Connection" in rig.loop.health.last_error
    assert rig.journal.unsent_count() == 15  # nothing marked without an answer
    assert server_rows(app) == 10  # but the server has the first batch
    assert rig.loop.run_once() == rig.loop.interval_s
    assert rig.journal.unsent_count() == 0
    assert server_rows(app) == 15  # one row per entry, however often sent


def test_503_burst_honours_retry_after_then_uploads(app, rig) -> None:
    rig.taps(4)
    rig.proxy.retry_after = 3
    rig.proxy.plan.extend(["busy", "busy", "busy"])
    delays = [rig.loop.run_once() for _ in range(3)]
    assert delays == [3.0, 3.0, 3.0]  # Retry-After, not the (shorter) backoff
    assert rig.journal.unsent_count() == 5 and server_rows(app) == 0
    assert rig.loop.run_once() == rig.loop.interval_s
    assert rig.journal.unsent_count() == 0 and server_rows(app) == 5


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("100000") == 600.0  # capped
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_conflicting_entries_are_flagged_kept_and_not_resent(app, rig, tmp_path: Path) -> None:
    rig.taps(3)
    rig.loop.run_once()
    assert server_rows(app) == 4
    # A restored/forked journal of the same terminal: same seqs, other bytes.
    other = JournalStore(tmp_path / "forked.sqlite", terminal_id=TERMINAL_ID, signer=rig.signer,
                         clock=Clock(force_synced=True))
    other.append(EntryKind.DECLINED, CardWrite(card_id="627100000000", decline_reason="card_denied"))
    forked = SyncClient(rig.client.api, other, rig.signer, TERMINAL_ID, rig.trust, receipt_key=rig.receipt_key)
    report = forked.upload_pending()
    assert {r for _s, r, _x in report.flagged} <= {"conflict", "rejected"} and len(report.flagged) == 2
    assert other.unsent_count() == 0  # flagged entries are not offered again ...
    assert len(other.entries()) == 2  # ... and never deleted
    assert [(s, r) for s, r, _x in other.upload_problems()] == [(s, r) for s, r, _x in report.flagged]
    assert verify_journal_file(other.path).entries == 2
    assert forked.upload_pending().batches == 0
    other.close()


def test_bundle_etag_304_and_newer_version(world, rig) -> None:
    with pytest.raises(TrustStoreError):
        rig.trust.current()
    b1, data1 = rig.kit.bundle(1, terminals=(rig.signer,))
    publish_bundle(world, 1, data1)
    assert rig.client.refresh_bundle() is True
    assert rig.trust.current().bundle.version == 1
    first_check = rig.trust.checked_at
    time.sleep(0.01)
    assert rig.client.refresh_bundle() is False  # If-None-Match -> 304
    assert rig.proxy.log[-1][3] == 304 and rig.trust.checked_at > first_check
    _b2, data2 = rig.kit.bundle(2, terminals=(rig.signer,), deny_cards=(bytes(8),))
    publish_bundle(world, 2, data2)
    assert rig.client.refresh_bundle() is True
    assert rig.trust.current().bundle.version == 2 and bytes(8) in rig.trust.current().bundle.deny_cards
    # Survives a restart: the stored bundle is verified again on load.
    again = TrustStore(rig.trust.path, rig.kit.root.public_key)
    assert again.current().bundle.version == 2 and again.etag == rig.trust.etag


def test_older_tampered_or_foreign_bundles_are_refused(rig) -> None:
    _b1, data1 = rig.kit.bundle(1)
    _b2, data2 = rig.kit.bundle(2)
    assert rig.trust.install(data2, "e2") is True
    with pytest.raises(TrustStoreError, match="older"):
        rig.trust.install(data1, "e1")  # downgrade
    with pytest.raises(TrustStoreError):
        rig.trust.install(data2[:-3] + bytes(3), "x")  # tampered
    _b3, foreign = TrustKit().bundle(3)
    with pytest.raises(TrustStoreError):
        rig.trust.install(foreign, "f")  # signed under another root
    assert rig.trust.current().bundle.version == 2


def test_sync_runs_while_taps_continue(app, rig) -> None:
    rig.loop.start()
    writer = threading.Thread(target=rig.taps, args=(150,))
    writer.start()
    writer.join(60)
    deadline = time.monotonic() + 60
    while rig.journal.unsent_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    rig.loop.stop()
    assert rig.journal.unsent_count() == 0
    assert server_rows(app) == 151
    assert rig.loop.health.rounds >= 1 and rig.loop.health.failures == 0
    assert sum(1 for _m, p, _a, s in rig.proxy.log if p.endswith("batches") and s == 200) >= 16


class _CrashingClient(SyncClient):
    """Test double for a programming error inside a sync round (raises once)."""

    crashed = False

    def round(self):  # type: ignore[no-untyped-def]
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("bug in a sync round")
        return super().round()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread is killed on purpose
def test_a_crash_is_logged_and_sync_goes_on(app, rig, caplog) -> None:
    rig.taps(2)
    client = _CrashingClient(rig.client.api, rig.journal, rig.signer, TERMINAL_ID, rig.trust,
                             receipt_key=rig.receipt_key)
    dead: list[int] = []

    def on_round(_report: object) -> None:
        if not dead:
            dead.append(1)
            raise RuntimeError("bug after a round kills the thread")

    loop = SyncLoop(client, interval_s=0.05, backoff_s=(0.01, 0.05), on_round=on_round)
    with caplog.at_level(logging.ERROR, logger="terminal.sync"):
        loop.start()
        deadline = time.monotonic() + 20
        while not dead or loop._thread.is_alive():  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the sync thread should have died"
            time.sleep(0.02)
        assert loop.ensure_running() is False  # found dead: logged and restarted
        while loop.health.rounds < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        loop.stop()
    assert loop.health.crashes == 1 and loop.health.thread_restarts == 1
    assert "sync round crashed" in caplog.text and "sync thread had died" in caplog.text
    assert rig.journal.unsent_count() == 0 and server_rows(app) == 3


def test_init_then_enrol_fetches_the_certificate_after_approval(tmp_path, world, live_server, ca_key_path) -> None:
    from click.testing import CliRunner
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from huma.cli import cli
    from tests.enrol_support import chain_server_ca_to, unpin_receipt_key
    from tests.test_terminal_support import make_counter

    kit = TrustKit()
    chain_server_ca_to(kit.root, world, ca_key_path, tmp_path)
    files = make_counter(tmp_path / "c", kit, readers={}, bindings=[("acr122u", None)],
                         terminal_id="T-6271-0077", server_url=f"http://{live_server.host}:{live_server.port}")
    unpin_receipt_key(files.state)
    runner = CliRunner()
    pending = runner.invoke(cli, ["terminal", "enrol", "--profile", str(files.profile),
                                  "--code", world.enrolment_code("T-6271-0077")])
    assert pending.exit_code == 3 and "waiting for approval" in pending.output, pending.output
    printed = pending.output.split("key fingerprint (the admin approves only this key): ")[1].splitlines()[0]
    r = world.client.post("/api/v1/terminals/T-6271-0077/approve", headers=world.auth(), json={"fingerprint": printed})
    assert r.status_code == 200, r.get_json()
    done = runner.invoke(cli, ["terminal", "enrol", "--profile", str(files.profile)])
    assert done.exit_code == 0, done.output
    cert = x509.load_pem_x509_certificate((files.state / "terminal-key.cert.pem").read_bytes())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        files.signer.public_key.public_bytes(serialization.Encoding.DER, spki)


def test_enrol_use_case_without_the_cli(tmp_path, world, live_server, ca_key_path) -> None:
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import certificate_path, enrol
    from tests.enrol_support import chain_server_ca_to, unpin_receipt_key
    from tests.test_terminal_support import make_counter

    kit = TrustKit()
    chain_server_ca_to(kit.root, world, ca_key_path, tmp_path)
    files = make_counter(tmp_path / "c", kit, readers={}, bindings=[("acr122u", None)],
                         terminal_id="T-6271-0078", server_url=f"http://{live_server.host}:{live_server.port}")
    unpin_receipt_key(files.state)
    profile = load_terminal_profile(files.profile)
    assert enrol(profile, 0.0, code=world.enrolment_code("T-6271-0078")) is None  # submitted, waiting
    world.approve("T-6271-0078")
    assert enrol(profile, 0.0) == certificate_path(profile)
    assert b"BEGIN CERTIFICATE" in certificate_path(profile).read_bytes()
    assert spki_der(load_receipt_key(profile)) == spki_der(pinned_receipt_key(world, "T-6271-0078"))


def test_every_answer_of_a_sync_round_is_signed(app, rig) -> None:
    rig.taps(3)
    publish_bundle(rig.world, 1, rig.kit.bundle(1, terminals=(rig.signer,))[1])
    rig.client.round()
    rig.client.round()  # the second bundle answer is a 304
    assert rig.journal.unsent_count() == 0 and server_rows(app) == 4
    statuses = [(p, s) for _m, p, _a, s in rig.proxy.log]
    assert ("/api/v1/bundle", 304) in statuses and ("/api/v1/journal/heads", 200) in statuses
    # the answers the counter acted on carried statements by the pinned key
    assert rig.trust.version == 1 and rig.trust.checked_at > time.time() - 60
