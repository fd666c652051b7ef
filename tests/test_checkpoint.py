"""End-of-shift checkpoints: the format (cardlib.records.checkpoint) and the counter's signing (terminal.checkpoint)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
import pytest

from cardlib.keys.signer import cose_key, sign1_with
from cardlib.records.checkpoint import (
    CHECKPOINT_AAD,
    Checkpoint,
    CheckpointError,
    FallbackTotal,
    ProgrammeTotal,
    b45decode,
    b45encode,
    encode_payload,
    from_qr_text,
    to_qr_text,
    verify_checkpoint,
)
from cardlib.records.claims import Unit
from cardlib.records.errors import BadSignature, UnknownKid
from cardlib.records.journal import JOURNAL_AAD, EntryKind
from terminal.checkpoint import shift_checkpoint
from terminal.clock import Clock
from terminal.journal_store import CardWrite, JournalStore
from tests.test_records_support import ISSUER, TERMINAL

KEYS = {TERMINAL.kid: cose_key(TERMINAL)}


# RFC 9285 §4.3 examples
@pytest.mark.parametrize(("raw", "text"), [(b"AB", "BB8"), (b"Hello!!", "%69 VD92EX0"), (b"base-45", "UJCLQE7W581"),
                                           (b"ietf!", "QED8WEX0"), (b"", "")])
def test_base45_matches_rfc_9285_examples(raw: bytes, text: str) -> None:
    assert b45encode(raw) == text
    assert b45decode(text) == raw


@pytest.mark.parametrize("bad", ["GGW", "A", "ab", "AB=", "::::"])
def test_base45_refuses_what_rfc_9285_refuses(bad: str) -> None:
    with pytest.raises(CheckpointError):
        b45decode(bad)


def sample(**overrides: object) -> Checkpoint:
    fields: dict[str, object] = {
        "terminal_id": "T-6271-0001", "boot_id": 3, "head_seq": 120, "head_hash": hashlib.sha256(b"head").digest(),
        "wall_ms": 1_790_000_000_000, "first_seq": 100,
        "totals": (ProgrammeTotal("food", "package", 12, 14), ProgrammeTotal("cash", "rupiah", 3, 750_000)),
        "declined": 2,
    }
    fields.update(overrides)
    return Checkpoint(**fields)  # type: ignore[arg-type]


def signed(c: Checkpoint, aad: bytes = CHECKPOINT_AAD) -> bytes:
    return sign1_with(TERMINAL, encode_payload(c), aad)


def test_a_signed_checkpoint_verifies_and_survives_the_qr_text() -> None:
    message = signed(sample())
    text = to_qr_text(message)
    assert text.startswith("HBCP1:") and set(text[6:]) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    got = verify_checkpoint(from_qr_text("  " + text + "\n"), KEYS)
    assert got.kid == TERMINAL.kid and got.message == message
    assert got.checkpoint == sample(totals=tuple(sorted(sample().totals)))


def test_a_version_1_checkpoint_still_verifies() -> None:
    """Slips printed before fallback totals (version 1: claims 1..9) stay evidence on the server."""
    old = sample(version=1)
    assert 10 not in old.to_claims()
    got = verify_checkpoint(signed(old), KEYS).checkpoint
    assert (got.version, got.fallback) == (1, ()) and got == sample(version=1, totals=tuple(sorted(old.totals)))


def test_every_failure_raises() -> None:
    message = signed(sample())
    with pytest.raises(BadSignature):  # a journal entry's context is not a checkpoint's
        verify_checkpoint(signed(sample(), JOURNAL_AAD), KEYS)
    with pytest.raises(UnknownKid):
        verify_checkpoint(sign1_with(ISSUER, encode_payload(sample()), CHECKPOINT_AAD), KEYS)
    flipped = bytearray(message)
    flipped[-1] ^= 1
    with pytest.raises(BadSignature):
        verify_checkpoint(bytes(flipped), KEYS)
    with pytest.raises(CheckpointError):
        from_qr_text("HBCP2:" + b45encode(message))
    not_canonical = cbor2.dumps(dict(reversed(list(sample().to_claims().items()))))
    with pytest.raises(CheckpointError):
        verify_checkpoint(sign1_with(TERMINAL, not_canonical, CHECKPOINT_AAD), KEYS)
    v1_with_fallback = {**sample(version=1).to_claims(), 10: []}
    for claims in ({1: 1}, {**sample().to_claims(), 5: b"short"}, {**sample().to_claims(), 1: 3},
                   {**sample(version=1).to_claims(), 1: 2}, v1_with_fallback, {**sample().to_claims(), 1: True},
                   {**sample().to_claims(), 10: [["qr", "food", "package", 1]]}, {**sample().to_claims(), 10: {}},
                   {**sample().to_claims(), 7: 121}, {**sample().to_claims(), 8: [["food", "package", -1, 0]]},
                   {**sample().to_claims(), 4: True}, [1, 2]):
        with pytest.raises(CheckpointError):
            verify_checkpoint(sign1_with(TERMINAL, cbor2.dumps(claims, canonical=True), CHECKPOINT_AAD), KEYS)
    with pytest.raises(CheckpointError):
        verify_checkpoint(b"\x00" * 3000, KEYS)


def test_the_counter_signs_its_head_and_the_shift_totals(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with_clock = {"terminal_id": "T-6271-0001", "signer": TERMINAL, "clock": Clock(force_synced=True)}
    first = JournalStore(path, **with_clock)  # type: ignore[arg-type]
    first.append(EntryKind.COMMIT, CardWrite(card_id="aa", programme="food", unit=Unit.PACKAGE, amount=5))
    first.close()  # an earlier boot: not in this shift
    journal = JournalStore(path, **with_clock)  # type: ignore[arg-type]
    try:
        boot_seq = journal.head[0]
        for amount in (1, 2):
            journal.append(EntryKind.COMMIT, CardWrite(card_id="bb", programme="food", unit=Unit.PACKAGE,
                                                       amount=amount))
        journal.append(EntryKind.FINISHED, CardWrite(card_id="cc", programme="cash", unit=Unit.RUPIAH,
                                                     amount=100_000))
        journal.append(EntryKind.PENDING, CardWrite(card_id="dd", programme="cash", unit=Unit.RUPIAH,
                                                    amount=50_000))
        journal.append(EntryKind.DECLINED, CardWrite(card_id="ee", programme="food", decline_reason="nothing_left"))
        journal.append(EntryKind.FALLBACK, CardWrite(card_id="ff", programme="food", unit=Unit.PACKAGE, amount=1,
                                                     fallback="qr", approved_by="clerk-ani"))
        got = shift_checkpoint(journal, TERMINAL, clock=lambda: 1_790_000_000.5)
        c = verify_checkpoint(got.message, KEYS).checkpoint
        assert (c.head_seq, c.head_hash) == journal.head
        assert c.head_hash == journal.entries(after_seq=c.head_seq - 1)[0].signed.entry_hash
        assert (c.boot_id, c.first_seq, c.wall_ms, c.declined) == (journal.boot_id, boot_seq, 1_790_000_000_500, 1)
        # the QR package is in the totals (as reconciliation counts it) and labelled apart (claim 10)
        assert c.totals == (ProgrammeTotal("cash", "rupiah", 1, 100_000), ProgrammeTotal("food", "package", 3, 4))
        assert c.fallback == (FallbackTotal("qr", "food", "package", 1, 1),) and c.version == 2
    finally:
        journal.close()


def test_the_slip_shows_the_fallback_part_labelled_apart() -> None:
    from terminal.screen.server import shift_slip

    c = sample(totals=(ProgrammeTotal("food", "package", 3, 4),),
               fallback=(FallbackTotal("qr", "food", "package", 1, 1),
                         FallbackTotal("manual", "food", "package", 1, 2)))
    message = signed(c)
    slip = shift_slip(1, verify_checkpoint(message, KEYS), "en").decode()
    assert slip.count("<tr class=fallback>") == 2
    assert "of which by household QR" in slip and "of which by supervisor entry" in slip
    assert "di antaranya lewat QR keluarga" in shift_slip(1, verify_checkpoint(message, KEYS), "id").decode()
