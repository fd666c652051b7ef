"""Journal upload: idempotency (SV-1, SV-2), per-entry results, bad input, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import func, select

from server.extensions import db
from server.models import JournalConflict, JournalEntryRow, RejectedEntry


def _count(app: Any, model: Any) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_upload_accepts_a_chain(app, world):
    t = world.enrol("T-001")
    msgs = [t.append().message for _ in range(5)]
    r = world.upload(t, msgs)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert [x["result"] for x in body["results"]] == ["accepted"] * 5
    assert [x["seq"] for x in body["results"]] == [1, 2, 3, 4, 5]
    assert _count(app, JournalEntryRow) == 5
    with app.app_context():
        row = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.seq == 3)).one()
        assert row.raw == msgs[2]
        assert row.wall_time.tzinfo is not None


def test_a_whole_second_compares_equal_to_the_same_instant(app, world):
    """A stored wall time at a whole second equals that instant in SQL (cycle starts,
    revocation times): on SQLite the upload wrote "… 17:00:00" where every other write
    has "… 17:00:00.000000", and as text the short form sorted before the long one."""
    import datetime as dt

    from sqlalchemy import text

    t = world.enrol("T-002")
    at = dt.datetime(2025, 12, 31, 17, 0, tzinfo=dt.timezone.utc)  # a cycle boundary, 00:00 WIB
    signed = t.append(wall_ms=int(at.timestamp() * 1000))
    assert world.upload(t, [signed.message]).status_code == 200
    with app.app_context():
        col = JournalEntryRow.wall_time
        assert db.session.scalar(select(func.count()).where(col >= at)) == 1
        assert db.session.scalar(select(func.count()).where(col == at)) == 1
        assert db.session.scalar(select(func.count()).where(col < at)) == 0
        if db.engine.dialect.name == "sqlite":
            stored = db.session.scalar(text("SELECT wall_time || '|' || received_at FROM journal_entries"))
            assert all(len(part) == 26 for part in stored.split("|")), stored


def _results(r: Any) -> list[str]:
    return [x["result"] for x in r.get_json()["results"]]


def test_SV_1_duplicate_upload_after_timeout(app, world):
    t = world.enrol("T-017")
    for seq in range(1, 1043):
        entry_id = bytes(15) + b"\xa1" if seq == 1041 else (bytes(15) + b"\xa2" if seq == 1042 else None)
        t.append(**({"entry_id": entry_id} if entry_id else {}))
    a1, a2 = t.entries[1040], t.entries[1041]
    assert (a1.entry.seq, a2.entry.seq) == (1041, 1042)

    # 1. posted, committed, response lost.
    body = t.body([a1.message], batch_id="b-1")
    first = world.client.post("/api/v1/journal/batches", data=body, headers=t.headers(body))
    assert first.status_code == 200 and _results(first) == ["accepted"]
    # 2. the very same body again: 200, "duplicate", still one row.
    again = world.client.post("/api/v1/journal/batches", data=body, headers=t.headers(body))
    assert again.status_code == 200 and _results(again) == ["duplicate"]
    assert _count(app, JournalEntryRow) == 1
    # 3. re-batched with the next entry.
    r = world.upload(t, [a1.message, a2.message], batch_id="b-2")
    assert r.status_code == 200 and _results(r) == ["duplicate", "accepted"]
    assert _count(app, JournalEntryRow) == 2
    # 4. …a1 again with a different amount: 409 for that entry, original kept, flagged.
    from cardlib.records.journal import JournalEntry, sign_entry

    forged = sign_entry(JournalEntry(**{**a1.entry.__dict__, "amount": 99}), t.private_key, t.kid)
    r = world.upload(t, [forged.message])
    assert r.status_code == 409
    assert r.get_json()["results"][0]["status"] == 409 and _results(r) == ["conflict"]
    assert r.get_json()["error"]["code"] == "entries_conflict"
    with app.app_context():
        kept = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.seq == 1041)).one()
        assert kept.raw == a1.message and kept.amount == 1
        conflict = db.session.scalars(select(JournalConflict)).one()
        assert conflict.flagged and conflict.raw == forged.message
        assert conflict.existing_entry_hash == a1.entry_hash
    # The conflicting upload repeated: still one conflict row.
    assert world.upload(t, [forged.message]).status_code == 409
    assert _count(app, JournalConflict) == 1


def test_same_seq_with_another_entry_id_is_a_conflict(app, world):
    t = world.enrol("T-002")
    original = t.append()
    assert world.upload(t, [original.message]).status_code == 200
    from cardlib.records.journal import GENESIS_HASH, JournalEntry, new_entry_id, sign_entry

    other = sign_entry(JournalEntry(**{**original.entry.__dict__, "entry_id": new_entry_id(),
                                       "prev_entry_hash": GENESIS_HASH}), t.private_key, t.kid)
    r = world.upload(t, [other.message])
    assert r.status_code == 409 and _results(r) == ["conflict"]
    assert _count(app, JournalEntryRow) == 1 and _count(app, JournalConflict) == 1


def test_entry_id_reused_at_another_seq_or_terminal_is_a_conflict(app, world):
    """An entry id already stored is a conflict wherever the newcomer sits: its own next
    seq with a valid link (found by the insert), a seq whose link is broken (found before
    it is called chain_broken), or another terminal's chain. The original is kept."""
    t, u = world.enrol("T-020"), world.enrol("T-021")
    first = t.append()
    assert _results(world.upload(t, [first.message])) == ["accepted"]
    reuse_linked = t.append(entry_id=first.entry.entry_id)  # seq 2, prev = hash(seq 1): link fine
    r = world.upload(t, [reuse_linked.message])
    assert r.status_code == 409 and _results(r) == ["conflict"]
    from cardlib.records.journal import JournalEntry, sign_entry

    third = t.append()
    assert _results(world.upload(t, [third.message])) == ["accepted"]  # seq 3 (seq 2 was refused)
    reuse_broken = sign_entry(JournalEntry(**{**third.entry.__dict__, "seq": 4, "entry_id": first.entry.entry_id,
                                              "prev_entry_hash": b"\x55" * 32}), t.private_key, t.kid)
    r = world.upload(t, [reuse_broken.message])
    assert _results(r) == ["conflict"]
    other = u.append(entry_id=first.entry.entry_id)
    r = world.upload(u, [other.message])
    assert _results(r) == ["conflict"]
    assert _count(app, JournalConflict) == 3
    with app.app_context():
        ids = db.session.scalars(select(JournalEntryRow.seq).where(
            JournalEntryRow.entry_id == first.entry.entry_id)).all()
    assert ids == [1]


def test_broken_link_with_a_fresh_entry_id_is_still_chain_broken(app, world):
    t = world.enrol("T-022")
    assert _results(world.upload(t, [t.append().message])) == ["accepted"]
    from cardlib.records.journal import JournalEntry, sign_entry

    bad = sign_entry(JournalEntry(**{**t.append().entry.__dict__, "prev_entry_hash": b"\x66" * 32}),
                     t.private_key, t.kid)
    r = world.upload(t, [bad.message])
    assert r.get_json()["results"][0]["reason"] == "chain_broken"
    assert _count(app, JournalConflict) == 0 and _count(app, RejectedEntry) == 1


def test_replayed_batch_stores_nothing_new(app, world):
    t = world.enrol("T-003")
    body = t.body([t.append().message for _ in range(4)])
    headers = t.headers(body)
    assert world.client.post("/api/v1/journal/batches", data=body, headers=headers).status_code == 200
    replay = world.client.post("/api/v1/journal/batches", data=body, headers=headers)
    assert replay.status_code == 200 and _results(replay) == ["duplicate"] * 4
    assert _count(app, JournalEntryRow) == 4


def test_bad_entry_signature_rejected_and_valid_neighbours_kept(app, world):
    t = world.enrol("T-004")
    msgs = [t.append().message for _ in range(3)]
    tampered = bytearray(msgs[1])
    tampered[-1] ^= 0x01  # last signature byte
    r = world.upload(t, [msgs[0], bytes(tampered), msgs[2]])
    assert r.status_code == 422
    body = r.get_json()
    assert body["error"]["code"] == "entries_rejected"
    assert _results(r) == ["accepted", "rejected", "accepted"]
    assert body["results"][1]["reason"] == "bad_signature"
    assert _count(app, JournalEntryRow) == 2 and _count(app, RejectedEntry) == 1
    # The genuine entry arrives later and closes the gap.
    r = world.upload(t, msgs)
    assert _results(r) == ["duplicate", "accepted", "duplicate"]


def test_broken_chain_rejected_with_reason(app, world):
    t = world.enrol("T-005")
    t.append()
    t.append(prev_entry_hash=b"\x55" * 32)  # seq 2 does not link to seq 1
    t.append()
    r = world.upload(t, [s.message for s in t.entries])
    assert r.status_code == 422
    res = r.get_json()["results"]
    assert [x["result"] for x in res] == ["accepted", "rejected", "accepted"]
    assert res[1]["reason"] == "chain_broken" and res[1]["seq"] == 2
    with app.app_context():
        assert db.session.scalars(select(RejectedEntry.reason)).all() == ["chain_broken"]


def test_chain_checked_against_stored_successor(app, world):
    t = world.enrol("T-006")
    for _ in range(3):
        t.append()
    assert world.upload(t, [t.entries[2].message]).status_code == 200  # seq 3 first
    from cardlib.records.journal import JournalEntry, sign_entry

    wrong2 = sign_entry(JournalEntry(**{**t.entries[1].entry.__dict__, "amount": 5}), t.private_key, t.kid)
    r = world.upload(t, [t.entries[0].message, wrong2.message])
    assert _results(r) == ["accepted", "rejected"]
    assert r.get_json()["results"][1]["reason"] == "chain_broken"
    assert _results(world.upload(t, [t.entries[1].message])) == ["accepted"]


def test_entry_signed_by_another_terminal_is_rejected(app, world):
    a, b = world.enrol("T-A"), world.enrol("T-B")
    foreign = b.append()
    r = world.upload(a, [foreign.message])
    assert r.status_code == 422 and r.get_json()["results"][0]["reason"] == "unknown_kid"
    from cardlib.records.journal import GENESIS_HASH, EntryKind, JournalEntry, new_entry_id, sign_entry

    claims_b = sign_entry(JournalEntry(entry_id=new_entry_id(), terminal_id="T-B", boot_id=1, seq=1,
                                       kind=EntryKind.BOOT, wall_ms=0, mono_ns=0, clock_synced=False,
                                       prev_entry_hash=GENESIS_HASH), a.private_key, a.kid)
    r = world.upload(a, [claims_b.message])
    assert r.get_json()["results"][0]["reason"] == "wrong_terminal"
    assert _count(app, JournalEntryRow) == 0


def test_undecodable_and_malformed_entries(app, world):
    t = world.enrol("T-007")
    body = json.dumps({"terminal_id": "T-007", "entries": ["***", base64.b64encode(b"\xa0").decode()]}).encode()
    r = world.client.post("/api/v1/journal/batches", data=body, headers=t.headers(body))
    assert r.status_code == 422
    assert [x["reason"] for x in r.get_json()["results"]] == ["undecodable", "malformed"]


def _post_raw(world, t, body: bytes, **headers: str) -> Any:
    h = {**t.headers(body), **headers}
    return world.client.post("/api/v1/journal/batches", data=body, headers=h)


def test_malformed_json_is_400(world):
    t = world.enrol("T-008")
    r = _post_raw(world, t, b'{"terminal_id": "T-008", "entries": [')
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "malformed_request"
    r = _post_raw(world, t, b'{"terminal_id": "T-008", "entries": [1, 2]}')
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "entries"
    r = _post_raw(world, t, b"[]", **{"Content-Type": "text/plain"})
    assert r.status_code == 400


def test_oversize_batches_are_413_with_the_limit(app, world):
    t = world.enrol("T-009")
    app.config["MAX_BATCH_ENTRIES"] = 3
    r = world.upload(t, [t.append().message for _ in range(4)])
    assert r.status_code == 413
    err = r.get_json()["error"]
    assert (err["code"], err["limit"], err["unit"]) == ("payload_too_large", 3, "entries")
    app.config["MAX_CONTENT_LENGTH"] = 1000
    r = world.upload(t, [e.message for e in t.entries[:3]] * 2)  # ~1.9 kB body
    assert r.status_code == 413 and r.get_json()["error"]["limit"] == 1000
    assert _count(app, JournalEntryRow) == 0


def test_unknown_terminal_and_bad_envelope_signature_are_401(app, world):
    t = world.enrol("T-010")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cardlib.keys.signer import derive_kid as key_id
    from tests.fixtures.db import SimTerminal

    stranger_key = ed25519.Ed25519PrivateKey.generate()
    stranger = SimTerminal("T-010", stranger_key, key_id(stranger_key.public_key()))
    body = stranger.body([stranger.append().message])
    r = world.client.post("/api/v1/journal/batches", data=body, headers=stranger.headers(body))
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unknown_terminal"

    body = t.body([t.append().message])
    headers = t.headers(body)
    tampered = body.replace(b'"T-010"', b'"T-010" ', 1)  # same JSON, other bytes
    r = world.client.post("/api/v1/journal/batches", data=tampered, headers=headers)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "bad_batch_signature"
    r = world.client.post("/api/v1/journal/batches", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "bad_batch_signature"
    assert _count(app, JournalEntryRow) == 0


def test_pending_and_revoked_terminals_are_refused(app, world):
    pending = world.enrol("T-011", approve=False)
    r = world.upload(pending, [pending.append().message])
    assert r.status_code == 403 and r.get_json()["error"]["reason"] == "terminal_not_approved"
    t = world.enrol("T-012")
    assert world.upload(t, [t.append().message]).status_code == 200
    assert world.client.post("/api/v1/terminals/T-012/revoke", headers=world.auth()).status_code == 200
    r = world.upload(t, [t.append().message])
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "terminal_revoked"
    assert _count(app, JournalEntryRow) == 1
