"""Group commit of concurrent small uploads (server.upload.GroupCommit, issue 21).

Batches that wait while another group is being stored are stored together in one transaction, yet
each keeps its own outcome: a conflict in one batch is reported for that batch only and the others
are stored and receipted; a batch whose store raises fails alone (the group is stored again one
batch per transaction); a failed COMMIT acknowledges no batch of the group. The group is formed
deterministically here: the first batch's ``after`` (run inside its transaction) holds its group open
until the next batches are queued behind it.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from server.db import WRITE, make_engine, make_sessionmaker
from server.models import TerminalStatus
from server.upload import Batch, EntryResult, GroupCommit, Outcome, UploadTerminal, verify_batch

_REFUSE_PG = ("CREATE OR REPLACE FUNCTION huma_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
              "$$ BEGIN RAISE EXCEPTION 'refused by the test trigger'; END $$")


def _key(t: Any) -> UploadTerminal:
    spki = t.private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return UploadTerminal(t.terminal_id, t.kid, spki, TerminalStatus.APPROVED)


def _verified(t: Any, messages: list[bytes]) -> tuple[UploadTerminal, list[EntryResult], list[Any]]:
    key = _key(t)
    rejected, verified = verify_batch(Batch(t.terminal_id, None, [base64.b64encode(m).decode() for m in messages]),
                                      key)
    assert not rejected
    return key, rejected, verified


@pytest.fixture
def sessions(app: Any, db_url: str) -> Iterator[Callable[[], Any]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _begin(session: Any) -> Callable[[], Any]:
    """As the upload route's write session: SQLite takes the write lock now, PostgreSQL at its first write."""
    def begin() -> Any:
        if session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={WRITE: True})
        return session
    return begin


def _one_group(sessions: Callable[[], Any], committer: GroupCommit,
               jobs: list[tuple[UploadTerminal, list[EntryResult], list[Any]]]) -> list[Any]:
    """Store ``jobs[0]`` alone while holding its transaction open until ``jobs[1:]`` are all queued, so
    those form the next group together. :returns: per job, its results or the exception it raised."""
    outcomes: list[Any] = [None] * len(jobs)
    inside, release = threading.Event(), threading.Event()

    def hold(_session: Any) -> None:
        inside.set()
        assert release.wait(30)

    def run(i: int) -> None:
        key, rejected, verified = jobs[i]
        with sessions() as s:
            try:
                outcomes[i] = committer.store(_begin(s), key, None, verified, rejected,
                                              after=hold if i == 0 else (lambda _s: None))[0]
            except Exception as exc:  # the test looks at it
                outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    threads[0].start()
    assert inside.wait(30)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while committer.waiting() < len(jobs) - 1:
        assert time.monotonic() < deadline, "the batches did not queue"
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(60)
    assert committer.groups == 2 and committer.largest == len(jobs) - 1, (committer.groups, committer.largest)
    return outcomes


def _stored(sessions: Callable[[], Any], terminal_id: str) -> list[int]:
    with sessions() as s:
        return list(s.execute(text("SELECT seq FROM journal_entries WHERE terminal_id = :t ORDER BY seq"),
                              {"t": terminal_id}).scalars())


def test_a_conflict_in_one_batch_leaves_the_other_of_its_group_stored(world, sessions):
    lead, bad, good = world.enrol("T-LEAD"), world.enrol("T-BAD"), world.enrol("T-GOOD")
    assert world.upload(bad, [bad.append().message]).status_code == 200
    forged = type(bad)(bad.terminal_id, bad.private_key, bad.kid)
    forged.append(amount=5)  # seq 1 again, other content: a conflict
    second = bad.append()  # seq 2, links to the stored seq 1
    committer = GroupCommit()
    outcomes = _one_group(sessions, committer, [
        _verified(lead, [lead.append().message]),
        _verified(bad, [forged.entries[0].message, second.message]),
        _verified(good, [good.append().message, good.append().message]),
    ])
    assert [r.outcome for r in outcomes[0]] == [Outcome.ACCEPTED]
    assert [r.outcome for r in outcomes[1]] == [Outcome.CONFLICT, Outcome.ACCEPTED]
    assert [r.outcome for r in outcomes[2]] == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert _stored(sessions, "T-GOOD") == [1, 2]
    assert _stored(sessions, "T-BAD") == [1, 2]
    with sessions() as s:
        assert s.execute(text("SELECT count(*) FROM journal_conflicts WHERE terminal_id = 'T-BAD'")).scalar() == 1


def test_a_retry_in_the_same_group_is_a_duplicate(world, sessions):
    lead, t = world.enrol("T-LEAD"), world.enrol("T-TWICE")
    messages = [t.append().message for _ in range(3)]
    committer = GroupCommit()
    outcomes = _one_group(sessions, committer, [
        _verified(lead, [lead.append().message]), _verified(t, messages), _verified(t, messages)])
    assert sorted(tuple(r.outcome for r in o) for o in outcomes[1:]) == [
        (Outcome.ACCEPTED,) * 3, (Outcome.DUPLICATE,) * 3]
    assert _stored(sessions, "T-TWICE") == [1, 2, 3]


@pytest.fixture
def refused(db_url: str, sessions: Callable[[], Any]) -> Iterator[Callable[[str], None]]:
    """Install a trigger refusing T-BAD's journal rows: ``refused("now")`` at the insert, ``refused("commit")``
    at COMMIT (PostgreSQL: a deferred constraint trigger; SQLite: a deferred foreign key); removed afterwards."""
    sqlite = db_url.startswith("sqlite")

    def install(when: str) -> None:
        with sessions() as s:
            if sqlite and when == "now":
                s.execute(text("CREATE TRIGGER huma_test_refuse BEFORE INSERT ON journal_entries "
                               "WHEN NEW.terminal_id = 'T-BAD' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
            elif sqlite:
                s.execute(text("CREATE TABLE huma_test_parent (id INTEGER PRIMARY KEY)"))
                s.execute(text("CREATE TABLE huma_test_child (parent INTEGER REFERENCES huma_test_parent (id) "
                               "DEFERRABLE INITIALLY DEFERRED)"))
                s.execute(text("CREATE TRIGGER huma_test_refuse AFTER INSERT ON journal_entries "
                               "WHEN NEW.terminal_id = 'T-BAD' BEGIN INSERT INTO huma_test_child VALUES (1); END"))
            else:
                s.execute(text(_REFUSE_PG))
                s.execute(text(("CREATE TRIGGER huma_test_refuse BEFORE INSERT ON journal_entries "
                                if when == "now" else
                                "CREATE CONSTRAINT TRIGGER huma_test_refuse AFTER INSERT ON journal_entries "
                                "DEFERRABLE INITIALLY DEFERRED ")
                               + "FOR EACH ROW WHEN (NEW.terminal_id = 'T-BAD') EXECUTE FUNCTION huma_test_refuse()"))
            s.commit()

    yield install
    if not sqlite:  # the session's PostgreSQL database outlives this test
        with sessions() as s:
            s.execute(text("DROP TRIGGER IF EXISTS huma_test_refuse ON journal_entries"))
            s.execute(text("DROP FUNCTION IF EXISTS huma_test_refuse()"))
            s.commit()


def test_a_batch_whose_store_fails_fails_alone(world, sessions, refused):
    lead, bad, good = world.enrol("T-LEAD"), world.enrol("T-BAD"), world.enrol("T-GOOD")
    refused("now")
    committer = GroupCommit()
    outcomes = _one_group(sessions, committer, [
        _verified(lead, [lead.append().message]),
        _verified(bad, [bad.append().message]),
        _verified(good, [good.append().message, good.append().message]),
    ])
    assert isinstance(outcomes[1], Exception) and "refused" in str(outcomes[1])
    assert [r.outcome for r in outcomes[2]] == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert _stored(sessions, "T-GOOD") == [1, 2]
    assert _stored(sessions, "T-BAD") == []


def test_a_failed_commit_acknowledges_no_batch_of_its_group(world, sessions, refused):
    lead, bad, good = world.enrol("T-LEAD"), world.enrol("T-BAD"), world.enrol("T-GOOD")
    refused("commit")
    committer = GroupCommit()
    outcomes = _one_group(sessions, committer, [
        _verified(lead, [lead.append().message]),
        _verified(bad, [bad.append().message]),
        _verified(good, [good.append().message]),
    ])
    assert isinstance(outcomes[1], Exception) and isinstance(outcomes[2], Exception)  # no results: no receipt
    assert _stored(sessions, "T-GOOD") == [] and _stored(sessions, "T-BAD") == []
    # The retry, alone, is stored (the counter's next sync).
    key, rejected, verified = _verified(good, [good.entries[0].message])
    with sessions() as s:
        again, _ = committer.store(_begin(s), key, None, verified, rejected, after=lambda _s: None)
    assert [r.outcome for r in again] == [Outcome.ACCEPTED]
    assert _stored(sessions, "T-GOOD") == [1]


def test_concurrent_uploads_over_http_each_get_their_receipt(app, world, live_server):
    """Many counters syncing at once through the real server: every request answered 200 with a
    receipt naming exactly its entries, every entry stored once."""
    from cardlib.records.statements import verify_receipt
    from server.extensions import db
    from server.receipts import receipt_signer

    terminals = [world.enrol(f"T-{n:02d}") for n in range(12)]
    plans = [[(t, [t.append().message for _ in range(2)]) for _ in range(3)] for t in terminals]
    answers: list[tuple[Any, list[bytes], int, bytes]] = []

    def sync(plan: list[tuple[Any, list[bytes]]]) -> None:
        import json

        for t, messages in plan:
            body = t.body(messages)
            status, _headers, data = live_server.post("/api/v1/journal/batches", body, t.headers(body))
            answers.append((t, messages, status, json.loads(data)["receipt"]))

    threads = [threading.Thread(target=sync, args=(p,)) for p in plans]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert len(answers) == 36
    public = receipt_signer(app).public_key
    for t, _messages, status, receipt in answers:
        assert status == 200
        got = verify_receipt(base64.b64decode(receipt), public)
        assert got.terminal_id == t.terminal_id
        assert [line.result for line in got.lines] == ["accepted", "accepted"]
    with app.app_context():
        rows = db.session.execute(text("SELECT terminal_id, count(*), count(DISTINCT seq) FROM journal_entries "
                                       "GROUP BY terminal_id")).all()
    assert sorted(rows) == [(t.terminal_id, 6, 6) for t in terminals]
    group = app.extensions["huma.group_commit"]
    # every upload went through the group commit or, finding nothing to share a commit with, straight to the
    # database (server.upload.store_extension_direct)
    assert group.batches + group.direct == 36 and group.batches > 0


def _scenario(world: Any, prefix: str) -> list[tuple[UploadTerminal, list[EntryResult], list[Any]]]:
    """Batches of several kinds, each of its own terminal (history uploaded first):
    a new chain; a retry of a stored batch; an extension forked from another seq 1 (its link to the
    stored predecessor broken); an extension whose second entry reuses a stored entry's seq."""
    new, retry, fork, clash = (world.enrol(f"{prefix}-{n}") for n in ("NEW", "RETRY", "FORK", "CLASH"))
    stored = [retry.append().message, retry.append().message]
    assert world.upload(retry, stored).status_code == 200
    assert world.upload(fork, [fork.append().message]).status_code == 200
    other = type(fork)(fork.terminal_id, fork.private_key, fork.kid)
    other.append(amount=9)
    assert world.upload(clash, [clash.append().message, clash.append().message]).status_code == 200
    clash.entries.pop()  # seq 2 again, other content, after the stored seq 1
    return [
        _verified(new, [new.append().message, new.append().message, new.append().message]),
        _verified(retry, stored),
        _verified(fork, [other.append().message, other.append().message]),
        _verified(clash, [clash.append(amount=3).message, clash.append().message]),
    ]


def test_a_group_classifies_every_batch_as_alone(world, sessions):
    """The group's one read-and-insert statement (PostgreSQL) gives each batch the results it gets alone."""
    alone = GroupCommit()
    expected = []
    for key, rejected, verified in _scenario(world, "A"):
        with sessions() as s:
            results, _ = alone.store(_begin(s), key, None, verified, rejected, after=lambda _s: None)
        expected.append([(r.outcome, r.seq, r.reason) for r in results])
    lead = world.enrol("T-LEAD")
    committer = GroupCommit()
    outcomes = _one_group(sessions, committer, [_verified(lead, [lead.append().message]), *_scenario(world, "G")])
    assert [[(r.outcome, r.seq, r.reason) for r in o] for o in outcomes[1:]] == expected
    assert expected[0] == [(Outcome.ACCEPTED, 1, None), (Outcome.ACCEPTED, 2, None), (Outcome.ACCEPTED, 3, None)]
    assert [o for o, _, _ in expected[1]] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    for prefix in ("A", "G"):
        assert _stored(sessions, f"{prefix}-NEW") == [1, 2, 3]
        assert _stored(sessions, f"{prefix}-RETRY") == [1, 2]
    assert _stored(sessions, "A-FORK") == _stored(sessions, "G-FORK")
    assert _stored(sessions, "A-CLASH") == _stored(sessions, "G-CLASH")


def test_the_padded_group_statement_inserts_only_the_batches(world, sessions):
    """PostgreSQL: the group's read-and-insert statement is padded to bucket sizes (so it is prepared
    once per size); its padding rows match no stored row and are never inserted, run after run."""
    from server.upload import _read_and_insert_pg_many, utcnow

    with sessions() as s:
        if s.get_bind().dialect.name != "postgresql":
            pytest.skip("PostgreSQL path")
    terminals = [world.enrol(f"T-PAD{i}") for i in range(3)]
    for round_ in range(7):  # past psycopg's prepare threshold: the prepared statement runs too
        batches = [(t.terminal_id, [t.append() for _ in range(1 + (i + round_) % 3)], None)
                   for i, t in enumerate(terminals)]
        with sessions() as s:
            before = s.execute(text("SELECT count(*) FROM journal_entries")).scalar_one()
            out = _read_and_insert_pg_many(s, batches, utcnow())
            s.commit()
            after = s.execute(text("SELECT count(*) FROM journal_entries")).scalar_one()
        assert after - before == sum(len(e) for _, e, _ in batches)  # 3 batches → 4, 3..9 rows → 4..16
        for (terminal_id, entries, _), (read, inserted) in zip(batches, out, strict=True):
            assert inserted == {e.entry_hash for e in entries}
            assert [r.terminal_id for r in read] == ([terminal_id] if round_ else [])
    for t in terminals:
        assert _stored(sessions, t.terminal_id) == list(range(1, len(t.entries) + 1))
