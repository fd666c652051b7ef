"""Issue 20: deferred torn writes are settled by reconciliation and released from the counter's exposure.

A torn card write the card could not settle (it moved ≥ 2 states on elsewhere: ``deferred``)
used to pin the counter's exposure until the caps' stale age. Now the server decides it from
the card's later states in the uploaded journals, signs the decision into the upload receipt,
and the counter releases the write when the settlement reaches it (docs/reconciliation.md
§Settling torn writes). Layers: the journal store's exposure, the receipt's claim 6, the
server's decision, and the whole loop through real taps and the live server.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from sqlalchemy import select

from cardlib.keys.signer import cose_key
from cardlib.records.claims import Unit
from cardlib.records.cose import verify1
from cardlib.records.journal import EntryKind
from cardlib.records.statements import (
    RECEIPT_AAD,
    ReceiptLine,
    Settlement,
    SettlementOutcome,
    StatementError,
    sign_receipt,
    verify_receipt,
)
from firmware_config.models import CounterMode
from simulator.chip import FaultPlan, Ntag21x
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.errors import SettlementRefused
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import CardWrite, JournalStore, StoredEntry, write_of
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.sync import HttpApi, SyncClient, TrustStore, UnverifiedAnswer
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.fixtures.receipts import settle
from tests.fixtures.receipts import upload_all as signed_upload_all
from tests.test_records_support import STATION, TERMINAL
from tests.test_sync_authenticity import PINNED, TID, FakeServer, _know, _results
from tests.test_terminal_caps_and_declines import chip, fresh_bundle
from tests.test_terminal_support import TrustKit, enrol_terminal, new_signer

CARD = "6271000000000001"
FOREVER = (0.0, 4_000_000_000.0)


def deferred_write(j: JournalStore, card: str = CARD, amount: int = 3) -> StoredEntry:
    """A PENDING torn by the card leaving, then re-presented after moving on elsewhere (``deferred``)."""
    p = j.append(EntryKind.PENDING, lambda seq: (CardWrite(
        card_id=card, programme="food", unit=Unit.PACKAGE, amount=amount, slot_seq_before=4, slot_seq_after=5,
        state_hash_prev=b"\x04" * 32, state_hash_new=b"\x05" * 32), b"x"))
    j.append(EntryKind.UNCERTAIN, write_of(p))
    j.append(EntryKind.UNCERTAIN, write_of(p), note="deferred")
    return p


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    j = JournalStore(tmp_path / "journal.sqlite", terminal_id=TID, signer=new_signer(), clock=Clock(force_synced=True),
                     receipt_key=PINNED.public_key)
    yield j
    j.close()


def upload_all(j: JournalStore) -> None:
    """Every entry marked uploaded by a receipt the pinned key signed."""
    signed_upload_all(j, key=PINNED)


def record(j: JournalStore, settlements: list[Settlement]) -> int:
    """``settlements`` recorded from a receipt the pinned key signed that carries them."""
    return settle(j, settlements, key=PINNED)


# ---------------------------------------------------------------- the journal store's exposure


def test_a_write_settled_as_not_taken_counts_nothing_at_once(journal: JournalStore) -> None:
    p = deferred_write(journal)
    upload_all(journal)
    assert journal.exposure() == {Unit.PACKAGE: 3}  # uploaded but open: maybe spent, so counted
    assert journal.card_cycle_exposure(CARD, *FOREVER) == {Unit.PACKAGE: 3}
    assert [w.seq for w in journal.awaiting_settlement()] == [p.seq]
    settled = Settlement(p.entry.entry_id, p.seq, SettlementOutcome.VOIDED)
    assert record(journal, [settled]) == 1
    assert journal.exposure() == {}
    assert journal.exposure(CARD) == {}
    assert journal.card_cycle_exposure(CARD, *FOREVER) == {}
    assert journal.open_write(CARD) is None  # the card's next tap starts afresh, no recovery
    assert journal.aged_open_writes(time.time() + 1) == []
    assert journal.awaiting_settlement() == []
    assert journal.settlements() == {p.entry.entry_id: SettlementOutcome.VOIDED}
    assert record(journal, [settled]) == 0  # idempotent


def test_a_write_settled_as_taken_counts_as_spent_like_a_commit(journal: JournalStore) -> None:
    p = deferred_write(journal)
    record(journal, [Settlement(p.entry.entry_id, p.seq, SettlementOutcome.FINISHED)])
    assert journal.exposure() == {Unit.PACKAGE: 3}  # like a COMMIT not yet uploaded
    upload_all(journal)
    assert journal.exposure() == {}  # like an uploaded COMMIT
    # The card's cycle keeps it, past the stale age too (a COMMIT never ages out).
    assert journal.card_cycle_exposure(CARD, *FOREVER, open_since=time.time() + 60) == {Unit.PACKAGE: 3}
    assert journal.open_write(CARD) is None


def test_a_settlement_for_a_write_the_counter_closed_itself_changes_nothing(journal: JournalStore) -> None:
    p = deferred_write(journal)
    journal.append(EntryKind.FINISHED, write_of(p))  # the card came back and showed it
    assert journal.card_cycle_exposure(CARD, *FOREVER) == {Unit.PACKAGE: 3}
    assert record(journal, [Settlement(p.entry.entry_id, p.seq, SettlementOutcome.FINISHED)]) == 0
    assert journal.card_cycle_exposure(CARD, *FOREVER) == {Unit.PACKAGE: 3}  # once, not twice
    assert journal.settlements() == {}


@pytest.mark.parametrize("how", ["unknown entry", "not a card write", "other seq", "other outcome later"])
def test_a_settlement_the_journal_cannot_match_is_refused_and_changes_nothing(journal: JournalStore,
                                                                              how: str) -> None:
    p = deferred_write(journal)
    upload_all(journal)
    good = Settlement(p.entry.entry_id, p.seq, SettlementOutcome.VOIDED)
    boot = journal.entries()[0]
    if how == "other outcome later":
        record(journal, [good])
        before = journal.settlements()
        bad = Settlement(p.entry.entry_id, p.seq, SettlementOutcome.FINISHED)
    else:
        before = {}
        bad = {
            "unknown entry": Settlement(b"\x00" * 16, p.seq, SettlementOutcome.VOIDED),
            "not a card write": Settlement(boot.entry.entry_id, boot.seq, SettlementOutcome.VOIDED),
            "other seq": Settlement(p.entry.entry_id, p.seq + 1, SettlementOutcome.VOIDED),
        }[how]
    exposure = journal.exposure()
    with pytest.raises(SettlementRefused):
        record(journal, [good, bad] if how != "other outcome later" else [bad])
    assert journal.settlements() == before
    assert journal.exposure() == exposure


# ---------------------------------------------------------------- the receipt's claim 6


def test_a_receipt_without_settlements_is_the_version_1_receipt() -> None:
    line = ReceiptLine(b"\x01" * 16, 1, "accepted")
    plain = sign_receipt(PINNED, TID, b"{}", [line], now=1)
    key = cose_key(PINNED)
    assert set(cbor2.loads(verify1(plain, {key.kid: key}, external_aad=RECEIPT_AAD).payload)) == {1, 2, 3, 4, 5}
    assert verify_receipt(plain, PINNED.public_key).settlements == ()
    s = Settlement(b"\x02" * 16, 7, SettlementOutcome.VOIDED)
    assert verify_receipt(sign_receipt(PINNED, TID, b"{}", [line], now=1, settlements=[s]),
                          PINNED.public_key).settlements == (s,)


@pytest.mark.parametrize("line", [[b"\x02" * 15, 7, "voided"], [b"\x02" * 16, 0, "voided"],
                                  [b"\x02" * 16, 7, "maybe"], [b"\x02" * 16, 7], "voided"])
def test_a_malformed_settlement_line_fails_the_receipt(line: object) -> None:
    from cardlib.keys.signer import sign1_with

    payload = cbor2.dumps({1: 1, 2: TID, 3: b"\x00" * 32, 4: 1, 5: [], 6: [line]}, canonical=True)
    with pytest.raises(StatementError):
        verify_receipt(sign1_with(PINNED, payload, RECEIPT_AAD), PINNED.public_key)


# ---------------------------------------------------------------- forged settlements reach the counter


def _answer_with(settle: Any, *, key: Any = PINNED, terminal: str = TID) -> Any:
    """A receipt by ``key`` for ``terminal`` accepting the request, with ``settle(entries)`` as claim 6."""
    def answer(_h: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        results = _results(body, "duplicate")
        lines = [ReceiptLine(bytes.fromhex(r["entry_id"]), r["seq"], r["result"]) for r in results]
        receipt = sign_receipt(key, terminal, body, lines, now=time.time(), settlements=settle(results))
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"results": results, "receipt": base64.b64encode(receipt).decode()}).encode()
    return answer


@pytest.mark.parametrize("how", ["good", "bad signature", "wrong terminal", "entry the counter lacks",
                                 "entry the request did not carry"])
def test_a_forged_settlement_is_refused_and_changes_nothing(tmp_path: Path, how: str) -> None:
    fake = FakeServer()
    signer = new_signer()
    _know(signer)
    j = JournalStore(tmp_path / "journal.sqlite", terminal_id=TID, signer=signer, clock=Clock(force_synced=True),
                     receipt_key=PINNED.public_key)
    try:
        p = deferred_write(j)
        other = deferred_write(j, card="6271000000000002")
        upload_all(j)
        client = SyncClient(HttpApi(fake.url, timeout_s=5), j, signer, TID,
                            TrustStore(tmp_path / "bundle.cose", TrustKit().root.public_key),
                            receipt_key=PINNED.public_key, batch_size=1)  # one write per probe

        def named(results: list[dict[str, Any]]) -> list[Settlement]:
            return [Settlement(bytes.fromhex(r["entry_id"]), r["seq"], SettlementOutcome.VOIDED) for r in results]

        fake.answer = {
            "good": _answer_with(named),
            "bad signature": _answer_with(named, key=new_signer()),
            "wrong terminal": _answer_with(named, terminal="T-6271-9999"),
            "entry the counter lacks": _answer_with(lambda r: [Settlement(b"\x07" * 16, 3,
                                                                          SettlementOutcome.VOIDED)]),
            "entry the request did not carry": _answer_with(lambda r: [Settlement(
                other.entry.entry_id, other.seq, SettlementOutcome.VOIDED)]),
        }[how]
        if how == "good":
            assert client.settle_open_writes() == 2  # one request per write (batch_size=1)
            assert j.settlements() == {p.entry.entry_id: SettlementOutcome.VOIDED,
                                       other.entry.entry_id: SettlementOutcome.VOIDED}
            assert j.exposure() == {}
            return
        expected = SettlementRefused if how.startswith("entry") else UnverifiedAnswer
        with pytest.raises(expected):
            client.settle_open_writes()
        assert j.settlements() == {}
        assert j.exposure() == {Unit.PACKAGE: 6}
    finally:
        j.close()
        fake.close()


# ---------------------------------------------------------------- the server's decision


H = {n: bytes([n]) * 32 for n in range(1, 40)}
PENDING, UNCERTAIN, COMMIT = EntryKind.PENDING, EntryKind.UNCERTAIN, EntryKind.COMMIT


def _write(t: Any, card: str, before: int, prev: bytes, new: bytes, *kinds: EntryKind) -> list[Any]:
    claims = {"card_id": card, "programme": "food", "amount": 1, "slot_seq_before": before,
              "slot_seq_after": before + 1, "state_hash_prev": prev, "state_hash_new": new}
    return [t.append(kind=k, **claims) for k in kinds]


def _settled(app: Any) -> dict[tuple[str, int], str]:
    from server.extensions import db
    from server.reconcile.settlements import WriteSettlement

    with app.app_context():
        return {(r.terminal_id, r.seq): r.outcome for r in db.session.scalars(select(WriteSettlement))}


def _reconcile(app: Any, **kw: Any) -> None:
    from server.extensions import db
    from server.reconcile.engine import reconcile

    with app.app_context():
        reconcile(db.write_session(), **kw)


def test_reconciliation_settles_each_torn_write_from_the_cards_later_states(app, world) -> None:
    t1, t2 = world.enrol("T-6271-0101"), world.enrol("T-6271-0102")
    torn = {card: _write(t1, card, 4, H[4], H[5], PENDING, UNCERTAIN)[0]
            for card in ("C-took", "C-not", "C-later", "C-fork", "C-unknown")}
    _write(t2, "C-took", 5, H[5], H[6], PENDING, COMMIT)  # the card's seq 6 chains to the torn state: it took effect
    _write(t2, "C-not", 4, H[4], H[25], PENDING, COMMIT)  # another state 5 landed on the card: it did not
    _write(t2, "C-not", 5, H[25], H[26], PENDING, COMMIT)
    _write(t2, "C-fork", 5, H[5], H[6], PENDING, COMMIT)  # two later states that disagree: a fork, left to the auditor
    _write(t2, "C-fork", 5, H[35], H[36], PENDING, COMMIT)
    for t in (t1, t2):
        assert world.upload(t, [e.message for e in t.entries]).status_code == 200
    _reconcile(app)
    seq = {card: e.entry.seq for card, e in torn.items()}
    assert _settled(app) == {("T-6271-0101", seq["C-took"]): "finished", ("T-6271-0101", seq["C-not"]): "voided"}
    _reconcile(app)  # a settlement is decided once
    assert len(_settled(app)) == 2
    # Evidence that arrives later is settled by the next (incremental) run.
    late = _write(t2, "C-later", 5, H[5], H[6], PENDING)
    assert world.upload(t2, [e.message for e in late]).status_code == 200
    _reconcile(app, incremental=True)
    assert _settled(app)[("T-6271-0101", seq["C-later"])] == "finished"
    # The receipt of a request that carries a torn write's PENDING holds its settlement, signed.
    from server.receipts import receipt_signer

    probe = [torn["C-took"].message, torn["C-unknown"].message]
    r = world.upload(t1, probe)
    assert r.status_code == 200 and {x["result"] for x in r.get_json()["results"]} == {"duplicate"}
    receipt = verify_receipt(base64.b64decode(r.get_json()["receipt"]), receipt_signer(app).public_key)
    assert receipt.settlements == (Settlement(torn["C-took"].entry.entry_id, seq["C-took"],
                                              SettlementOutcome.FINISHED),)


# ---------------------------------------------------------------- the whole loop: taps, sync, reconcile


class Counter:
    """A counter's tap processor, journal and sync client against the live server."""

    def __init__(self, tmp: Path, world: Any, live_server: Any, terminal_id: str, key: Any,
                 policies: dict[str, int]) -> None:
        from tests.test_terminal_sync import pinned_receipt_key

        tmp.mkdir()
        enrol_terminal(world, terminal_id, key)
        self.journal = JournalStore(tmp / "journal.sqlite", terminal_id=terminal_id, signer=key,
                                    clock=Clock(force_synced=True))
        self.bundle = fresh_bundle(policies)
        self.request: list[object] = ["food", 1, None]
        self.tap = TapProcessor(
            CounterConfig(terminal_id, CounterMode.MARKET_REDEMPTION, OfflineLimits(), caps={"": _acr122u()}),
            self.journal, key, trust=lambda: Trust(self.bundle, time.time()),  # type: ignore[arg-type]
            request=lambda: tuple(self.request),  # type: ignore[arg-type, return-value]
        )
        self.sync = SyncClient(HttpApi(f"http://{live_server.host}:{live_server.port}", timeout_s=30),
                               self.journal, key, terminal_id,
                               TrustStore(tmp / "bundle.cose", TrustKit().root.public_key),
                               receipt_key=pinned_receipt_key(world, terminal_id))

    def present(self, card: Ntag21x, faults: FaultPlan | None = None) -> TapOutcome:
        card.reinsert(faults)
        return self.tap(EmulatorConnection(ReaderEmulator(card, ReaderKind.ACR122U)), None)  # type: ignore[arg-type]


def _acr122u() -> Any:
    from cardlib.type2.channel import ACR122U

    return ACR122U


def test_an_honest_card_is_served_once_the_settlement_of_a_deferred_write_arrives(
        app, world, live_server, tmp_path: Path) -> None:
    here = Counter(tmp_path / "here", world, live_server, "T-6271-0001", TERMINAL,
                   {"cap.terminal_exposure.package": 1})
    there = Counter(tmp_path / "there", world, live_server, "T-6271-0002", STATION, {})
    try:
        torn_card = chip()
        honest = chip(uid=bytes.fromhex("04a1b2c3d4e5f7"), card_id=bytes.fromhex("6271000000005678"))
        first = here.present(torn_card, FaultPlan(remove_after_write_bytes=60))  # pulled mid-write
        assert first.status is TapStatus.UNCERTAIN, first
        for _ in range(3):  # the card moves three states on at another counter
            assert there.present(torn_card).status is TapStatus.ACCEPTED
        back = here.present(torn_card)
        assert back.status is TapStatus.UNCERTAIN, back  # recovery cannot tell: deferred
        assert [e.note for e in here.journal.entries()][-1] == "deferred"
        assert here.present(honest).reason is DeclineReason.OVER_TERMINAL_LIMIT  # the torn write pins the cap

        there.sync.round()
        here.sync.round()
        assert here.journal.unsent_count() == 0
        assert here.present(honest).reason is DeclineReason.OVER_TERMINAL_LIMIT  # uploaded, still undecided
        _reconcile(app)
        here.sync.round()  # the receipt of the settlement probe carries the server's decision
        (outcome,) = here.journal.settlements().values()
        assert outcome is SettlementOutcome.VOIDED  # the card's seq after the tear is another counter's state
        served = here.present(honest)
        assert served.status is TapStatus.ACCEPTED, served
        assert here.journal.exposure() == {Unit.PACKAGE: 1}  # the honest card's, nothing of the torn write
        here.sync.round()
        again = here.present(torn_card)  # no longer re-run as a recovery: served like any card
        assert again.status is TapStatus.ACCEPTED, again
        assert verify_journal_file(here.journal.path, cose_key(TERMINAL)).entries == len(here.journal.entries())
    finally:
        here.journal.close()
        there.journal.close()
